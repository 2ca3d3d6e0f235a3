"""The CUDA backend without a GPU: its host-side planning runs as a C++ unit test, every
``.cu`` compiles with nvcc for sm_75, sm_80 and sm_90 with warnings as errors, and the torch binding
compiles against torch's headers. On a GPU, tests marked ``gpu`` compare it with the reference.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from sparcl_kernels import toolchain

CUDA_DIR = Path(__file__).resolve().parent.parent / "csrc" / "cuda"
CU_SOURCES = sorted(CUDA_DIR.glob("*.cu"))


def _run(command: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{output}"
    return output


CUDA_HOME = toolchain.find_cuda_home()
STD = f"-std={toolchain.CXX_STANDARD}"


def _nvcc() -> str | None:
    candidate = CUDA_HOME / "bin" / "nvcc" if CUDA_HOME else None
    if candidate is not None and candidate.is_file():
        return str(candidate)
    return shutil.which("nvcc")


def test_cuda_sources_exist():
    assert CU_SOURCES, "csrc/cuda has no .cu sources"


def test_plan_unit_tests_pass_on_the_cpu(tmp_path):
    compiler = shutil.which("c++") or shutil.which("g++")
    assert compiler, "a C++ compiler is needed (it also builds the CPU extension)"
    binary = tmp_path / "test_plan"
    source = CUDA_DIR / "tests" / "test_plan.cpp"
    _run([compiler, STD, "-Wall", "-Wextra", "-Werror", str(source), "-o", str(binary)])
    assert "plan tests passed" in _run([str(binary)])


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not installed")
@pytest.mark.parametrize("source", CU_SOURCES, ids=[p.name for p in CU_SOURCES])
def test_cu_sources_compile_for_sm75_sm80_and_sm90_with_warnings_as_errors(source, tmp_path):
    _run(
        [
            _nvcc(),
            "-c",
            str(source),
            "-o",
            str(tmp_path / "out.o"),
            STD,
            "-O3",
            "-gencode=arch=compute_75,code=sm_75",  # Turing: bf16 without tensor cores
            "-gencode=arch=compute_80,code=sm_80",
            "-gencode=arch=compute_90,code=sm_90",
            "-Werror",
            "all-warnings",
            "-Xcompiler=-Wall,-Wextra,-Werror",
        ]
    )


def test_binding_compiles_against_torch_headers(tmp_path):
    """The binding is built only where torch has CUDA; check its C++ against torch's API here.

    The CPU wheel ships the c10/ATen CUDA headers but not one generated header; an empty
    stand-in is enough for a syntax check there (a CUDA build of torch has the real one).
    """
    from torch.utils.cpp_extension import include_paths

    compiler = shutil.which("c++") or shutil.which("g++")
    if CUDA_HOME is None or not (CUDA_HOME / "include" / "cuda_runtime.h").is_file():
        pytest.skip("CUDA headers not installed")
    system = [*include_paths(), sysconfig.get_paths()["include"], CUDA_HOME / "include"]
    macros = Path("c10") / "cuda" / "impl" / "cuda_cmake_macros.h"
    if not any((Path(path) / macros).is_file() for path in include_paths()):
        (tmp_path / macros).parent.mkdir(parents=True)
        (tmp_path / macros).write_text("#pragma once\n")
        system.insert(0, tmp_path)
    _run(
        [
            compiler,
            STD,
            "-fsyntax-only",
            "-Wall",
            "-Wextra",
            "-Werror",
            *(f"-isystem{path}" for path in system),
            "-DTORCH_EXTENSION_NAME=_cuda",
            str(CUDA_DIR / "binding.cpp"),
        ]
    )


# ---------------------------------------------------------------- on a GPU


def _cuda_backend():
    from sparcl_kernels.backends import BackendUnavailableError, get_backend

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    try:
        return get_backend("cuda")
    except BackendUnavailableError as error:
        pytest.fail(f"torch has CUDA but the cuda backend did not build: {error}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_size", [(16, 16), (32, 64), (64, 64), (128, 128), (48, 112)])
@pytest.mark.parametrize("n", [1, 100, 4097])
def test_gpu_cuda_backend_matches_reference(dtype, block_size, n):
    from sparcl_kernels.backends import reference
    from sparcl_kernels.layout import BlockLayout

    backend = _cuda_backend()
    generator = torch.Generator().manual_seed(0)
    layout = BlockLayout.from_block_mask(torch.rand(6, 5, generator=generator) < 0.4, block_size)
    layout = layout.to("cuda")
    m, k = layout.shape
    values = torch.randn(layout.nnz, *block_size, generator=generator).cuda().to(dtype)
    x = torch.randn(n, k, generator=generator).cuda().to(dtype)
    grad_out = torch.randn(n, m, generator=generator).cuda().to(dtype)
    bias = torch.randn(m, generator=generator).cuda().to(dtype)
    mask = (torch.rand(layout.nnz, generator=generator) < 0.5).cuda()
    f = [t.float() for t in (values, x, grad_out, bias)]
    pairs = [
        (backend.forward(x, values, layout, bias), reference.forward(f[1], f[0], layout, f[3])),
        (backend.grad_input(grad_out, values, layout), reference.grad_input(f[2], f[0], layout)),
        (
            backend.grad_weight(grad_out, x, layout, mask),
            reference.grad_weight(f[2], f[1], layout, mask),
        ),
    ]
    eps = 1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps
    for ours, expected in pairs:
        torch.testing.assert_close(
            ours.float(), expected, atol=8 * eps * n**0.5 + 1e-4, rtol=8 * eps
        )
    assert torch.all(pairs[2][0][~mask] == 0)


# ---------------------------------------------------------------- make gpu-check


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal happens without a GPU")
def test_gpu_check_stops_at_once_without_a_cuda_gpu(tmp_path):
    root = CUDA_DIR.parent.parent
    planned = subprocess.run(["make", "-n", "gpu-check"], cwd=root, capture_output=True, text=True)
    assert "bench/gpu_check.py" in planned.stdout, planned.stdout + planned.stderr
    report = tmp_path / "report.md"
    result = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--report", str(report)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "needs a CUDA GPU" in result.stderr
    assert not report.exists()
