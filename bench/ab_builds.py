"""Two builds of the CPU kernels timed side by side in one process: the ResNet-18 SGD step.

On a shared VM the same binary's step moves by 10-20 % between processes minutes apart, more
than most kernel changes gain, so builds timed in separate runs cannot be ordered. Here this
checkout's extension and another build's ``_cpu`` module are both loaded, and the sparsified
ResNet-18 of bench_resnet.py takes its SGD steps with one, then the other, then dense
channels_last (the common baseline), round after round: both builds see the same load.

    git worktree add --detach /work/old <commit>
    (cd /work/old && python setup.py build_ext --inplace)
    python bench/ab_builds.py /work/old/sparcl_kernels/_cpu.cpython-311-x86_64-linux-gnu.so \\
        --configs 32:0.9 16:0.9 --precision fp32 --repeats 15

Only the compiled kernels differ: the Python side (ops, layers, the backend and its caches of
transposed and bf16-packed blocks) is this checkout's, so the other build must have the same
binding functions, taking the same arguments and packing blocks the same way.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from bench_resnet import BLOCK_CONVS, CifarResNet18, parse_config, sgd_step
from timing import emit, interleaved_medians

import sparcl_kernels as sk
from sparcl_kernels.backends import cpu as cpu_backend


def load_build(path: Path) -> ModuleType:
    """The ``_cpu`` extension module built at ``path``, loaded beside this checkout's."""
    if not path.is_file():
        raise SystemExit(f"ab_builds: no extension module at {path}")
    # Under the checkout's own name ("sparcl_kernels._cpu") CPython hands back the module it
    # has already loaded, whatever the path: the comparison would time one build twice. The
    # init function is found by the name's last part, so only the package part differs.
    spec = importlib.util.spec_from_file_location("other_build._cpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if module is cpu_backend._cpu or Path(module.__file__).resolve() != path.resolve():
        raise SystemExit(f"ab_builds: {path} loaded as this checkout's own module")
    ours = {name for name in dir(cpu_backend._cpu) if not name.startswith("_")}
    missing = sorted(ours - set(dir(module)))
    if missing:
        raise SystemExit(f"ab_builds: {path} lacks binding functions {missing}")
    return module


def with_kernels(module: ModuleType, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with the CPU backend calling ``module``'s kernels."""

    def run() -> object:
        cpu_backend._cpu = module
        return fn()

    return run


def comparison_table(
    other: ModuleType, configs: list[tuple[int, float]], batch: int, repeats: int, precision: str
) -> list[str]:
    ours = cpu_backend._cpu
    lines = [
        "| blocks | sparsity | dense channels_last ms | this build ms | other build ms "
        "| this vs dense | other vs dense | this build's speed / other's |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for block, sparsity in configs:
        torch.manual_seed(0)
        dense = CifarResNet18()
        x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
        cl = torch.channels_last
        sparse = sk.sparsify(dense, sparsity, block, include=BLOCK_CONVS, inplace=False)
        steps = {
            "dense": with_kernels(
                ours, sgd_step(dense.to(memory_format=cl), x.to(memory_format=cl), y, precision)
            ),
            "this": with_kernels(ours, sgd_step(copy.deepcopy(sparse), x, y, precision)),
            "other": with_kernels(other, sgd_step(copy.deepcopy(sparse), x, y, precision)),
        }
        try:
            t = {name: s * 1e3 for name, s in interleaved_medians(steps, repeats, 2).items()}
        finally:
            cpu_backend._cpu = ours
        lines.append(
            f"| {block}x{block} | {sparsity:g} | {t['dense']:.0f} | {t['this']:.1f} "
            f"| {t['other']:.1f} | {t['dense'] / t['this']:.2f}x "
            f"| {t['dense'] / t['other']:.2f}x | {t['other'] / t['this']:.3f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="the other build's _cpu extension module")
    parser.add_argument("--configs", nargs="+", default=["32:0.9", "16:0.9"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    other = load_build(args.other)
    lines = [
        f"{datetime.date.today()} · torch {torch.__version__} · {torch.get_num_threads()} "
        f"threads · batch {args.batch} · {args.precision} · medians of {args.repeats} rounds "
        f"of interleaved SGD steps · other build: {args.other}\n",
        *comparison_table(
            other,
            [parse_config(c) for c in args.configs],
            args.batch,
            args.repeats,
            args.precision,
        ),
    ]
    emit("\n".join(lines), args.markdown)


if __name__ == "__main__":
    main()
