"""Everything a first CUDA GPU should run, in one command that fits in ten minutes.

    make gpu-check   # = $GPU_PYTHON bench/gpu_check.py in a copy of the tree (Makefile)

Steps, each under its own time limit, each recorded in the report whatever its outcome:
building both extensions in place with this Python's torch (the CUDA one for this GPU's
architecture unless ``TORCH_CUDA_ARCH_LIST`` says otherwise), the GPU tests (``pytest -m
gpu``: every backend's conformance cases on CUDA tensors and the Triton/CUDA sweeps), the
CUDA kernels under ``compute-sanitizer`` (memcheck and racecheck) on small cases, a quick run
of the Triton tuner, and the GPU benchmark tables (cuBLAS vs Triton vs CUDA vs torch's BSR;
all three passes plus the masked weight gradient; 32x32 and 128x128 blocks; bf16 and fp32;
256 to 32K rows). The report is markdown, ready to paste into bench/RESULTS.md. Without a
CUDA GPU it stops at once with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_SECONDS = 570  # one 10-minute command, with room to write the report

# A small workload for compute-sanitizer: every CUDA pass, masked and unmasked, ragged shapes.
SANITIZER_CASES = """
import torch
from sparcl_kernels.backends import get_backend
from sparcl_kernels.layout import BlockLayout

cuda = get_backend("cuda")
for dtype in (torch.float32, torch.bfloat16):
    for block in ((16, 16), (32, 64), (48, 112)):
        layout = BlockLayout.from_block_mask(torch.rand(3, 4) < 0.6, block).to("cuda")
        m, k = layout.shape
        values = torch.randn(layout.nnz, *block, device="cuda", dtype=dtype)
        x = torch.randn(37, k, device="cuda", dtype=dtype)
        grad_out = torch.randn(37, m, device="cuda", dtype=dtype)
        mask = torch.rand(layout.nnz, device="cuda") < 0.5
        cuda.forward(x, values, layout, None)
        cuda.grad_input(grad_out, values, layout)
        cuda.grad_weight(grad_out, x, layout, None)
        cuda.grad_weight(grad_out, x, layout, mask)
torch.cuda.synchronize()
print("sanitizer workload done")
"""


def run_step(
    title: str, command: list[str], limit: float, env: dict[str, str] | None = None
) -> tuple[str, str]:
    """Run ``command``; (status line, last lines of its output) for the report."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=max(limit, 1.0), env=env
        )
        output, status = done.stdout + done.stderr, f"exit {done.returncode}"
    except subprocess.TimeoutExpired as error:
        output = (error.stdout or b"").decode() if isinstance(error.stdout, bytes) else ""
        status = f"stopped after its {limit:.0f} s limit"
    seconds = time.perf_counter() - start
    print(f"gpu-check: {title}: {status} ({seconds:.0f} s)", file=sys.stderr, flush=True)
    return f"{status}, {seconds:.0f} s", "\n".join(output.strip().splitlines()[-40:])


def build_extensions(python: str, arch: str) -> tuple[str, str, str]:
    """(title, status, output) of building both extensions in place with this Python's torch
    (incremental: ninja redoes only what changed)."""
    env = {**os.environ, "SPARCL_BUILD_CUDA": "1"}
    env.setdefault("TORCH_CUDA_ARCH_LIST", arch)
    title = f"build (CPU + CUDA extensions, TORCH_CUDA_ARCH_LIST={env['TORCH_CUDA_ARCH_LIST']})"
    command = [python, "setup.py", "--quiet", "build_ext", "--inplace"]
    return (title, *run_step(title, command, 300, env))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", default="bench/gpu_check.md", help="markdown report file")
    args = parser.parse_args()
    import torch  # after argument parsing, so that --help needs no torch

    if not torch.cuda.is_available():
        print(
            "make gpu-check needs a CUDA GPU: torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})",
            file=sys.stderr,
        )
        return 2
    deadline = time.perf_counter() + BUDGET_SECONDS
    python = sys.executable
    major, minor = torch.cuda.get_device_capability()
    built = build_extensions(python, f"{major}.{minor}")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    (work / "sanitizer_cases.py").write_text(SANITIZER_CASES)
    sanitizer = shutil.which("compute-sanitizer")
    steps: list[tuple[str, list[str] | None, float]] = [
        (
            "pytest -m gpu",
            [python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
            150,
        ),
    ]
    for tool in ("memcheck", "racecheck"):
        command = None
        if sanitizer:
            command = [sanitizer, "--tool", tool, "--error-exitcode", "1", python]
            command.append(str(work / "sanitizer_cases.py"))
        steps.append((f"compute-sanitizer {tool}", command, 45))
    steps.append(
        (
            "Triton tuner (quick)",
            [python, "bench/tune_triton.py", "--quick", "--output", str(work / "tuned.json")],
            60,
        )
    )
    for dtype in ("bfloat16", "float32"):
        for backend in ("triton", "cuda"):
            command = [python, "bench/bench_gpu.py", "--dtype", dtype, "--backend", backend]
            command += ["--shapes", "4096x4096", "--batches", "256", "2048", "32768"]
            command += ["--blocks", "32", "128", "--sparsities", "0.75", "0.9"]
            command += ["--repeats", "10", "--markdown", str(work / f"{backend}-{dtype}.md")]
            steps.append((f"benchmark {backend} {dtype}", command, 60))
    sections = [built]
    for title, command, limit in steps:
        remaining = deadline - time.perf_counter()
        if command is None:
            sections.append((title, "not run: compute-sanitizer is not on PATH", ""))
        elif remaining < 5:
            sections.append((title, "not run: the 10-minute budget was spent", ""))
        else:
            sections.append((title, *run_step(title, command, min(limit, remaining))))
    lines = [
        f"# gpu-check {datetime.date.today()} · {torch.cuda.get_device_name()} · "
        f"torch {torch.__version__} · CUDA {torch.version.cuda}",
        "",
    ]
    for title, status, output in sections:
        lines += [f"## {title}: {status}", ""]
        if output:
            lines += ["```", output, "```", ""]
    for table in sorted(work.glob("*.md")):
        lines += [f"## Table: {table.stem}", "", table.read_text(), ""]
    Path(args.report).write_text("\n".join(lines))
    print(f"gpu-check: report written to {args.report}", file=sys.stderr)
    failed = [title for title, status, _ in sections if not status.startswith("exit 0")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
