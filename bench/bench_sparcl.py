"""End-to-end training speed: dense DER++ vs SparCL-DER++ on the block-sparse fast path.

Full DER++ steps (current batch + two buffer batches, forward + backward + SGD step) of a
CIFAR-stem ResNet-18 (nf=64) on Split Fashion-MNIST images, batch 32, with SparCL's TDM/DGM
machinery active (DGM refreshing every 30 steps, so most timed steps are masked ones, as in
steady state). Variants are timed interleaved in one process (medians); FLOPs come from
sparcl.flops, and the realization ratio is measured speedup / FLOP reduction. Peak RSS is
that of a fresh process per variant that loads the data and takes three steps, once per
memory allocator: glibc's default keeps freed heap memory, so its peak RSS shows the
allocator's high-water mark more than the live tensors; tcmalloc and jemalloc (Debian's
libtcmalloc-minimal4 / libjemalloc2, preloaded into the child where installed) track them.
The timings run under this process's own allocator, named in the table's header: preload
tcmalloc to time what `sparcl train` runs with (it preloads tcmalloc by default).

    LD_PRELOAD=libtcmalloc_minimal.so.4 python bench/bench_sparcl.py --repeats 6
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes.util
import datetime
import multiprocessing
import os

import torch
from timing import (
    breakdown_table,
    current_rss_mb,
    emit,
    interleaved_medians,
    peak_rss_mb,
    profiled_ops,
)

import sparcl_kernels as sk
from sparcl.allocator import describe as describe_allocator
from sparcl.allocator import environment_for
from sparcl.data import augment, load_dataset
from sparcl.flops import count_flops
from sparcl.masking import attach_element_masks
from sparcl.memory import load_torch_runtime
from sparcl.methods.derpp import Derpp, DerppOptions
from sparcl.methods.sparcl import SparclDerpp, SparclDerppOptions
from sparcl.models import BLOCK_CONV_PATTERNS, resnet18

# DER++ as in the paper's Fashion-MNIST runs; SparCL adds its own defaults.
SETTINGS = {"lr": 0.03, "buffer_size": 500, "minibatch_size": 32, "alpha": 0.1, "beta": 0.5}
SETTINGS["mask_current_logits"] = True


def make_method(kind: str, sparsity: float, data, nf: int):
    torch.manual_seed(0)
    protocol = data.protocol
    net = resnet18(protocol.n_classes, nf, protocol.channels)
    generator = torch.Generator().manual_seed(1)

    def transform(raw):
        return augment(raw, protocol, generator)

    if kind in ("dense", "dense-channels-last"):
        if kind == "dense-channels-last":
            net.to(memory_format=torch.channels_last)
        method = Derpp(net, protocol, transform, DerppOptions(**SETTINGS))
    else:
        if kind == "unstructured":  # the release's way: element masks on dense convs
            attach_element_masks(net, sparsity, include=BLOCK_CONV_PATTERNS)
        else:
            sk.sparsify(net, sparsity, 32, include=BLOCK_CONV_PATTERNS)
        method = SparclDerpp(net, protocol, transform, SparclDerppOptions(**SETTINGS))
        method.begin_epoch(0, 0)  # TDM's inter-task grow, as at the start of a task
    method.begin_task(0)
    # A buffer to replay from, as in every step after the first few.
    raw = data.train_images[:500]
    method.buffer.add(raw, data.train_labels[:500], torch.zeros(500, protocol.n_classes), 0)
    return method


def _steps_peak_rss(kind: str, sparsity: float, nf: int, data_dir, queue) -> None:
    data = load_dataset("seq-fmnist", data_dir)
    load_torch_runtime()
    baseline = current_rss_mb()  # torch runtime + data: what every variant pays alike
    method = make_method(kind, sparsity, data, nf)
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        index = torch.randint(0, len(data.train_labels), (32,), generator=generator)
        raw = data.train_images[index]
        method.observe(augment(raw, data.protocol, generator), data.train_labels[index], raw, 0)
    queue.put((peak_rss_mb(), peak_rss_mb() - baseline))


# Allocators compared for peak memory -> the shared library to preload (None: the C
# library's own malloc).
ALLOCATOR_LIBRARIES = {"glibc": None, "tcmalloc": "tcmalloc_minimal", "jemalloc": "jemalloc"}


def allocator_preload(allocator: str) -> str | None:
    """The installed library file for ``allocator`` ("" if it is not installed)."""
    library = ALLOCATOR_LIBRARIES[allocator]
    return None if library is None else ctypes.util.find_library(library) or ""


@contextlib.contextmanager
def preloaded(library: str | None):
    """LD_PRELOAD ``library`` for the processes started inside (spawn copies the environment);
    None: glibc's malloc, with any inherited allocator preload removed."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environment_for(library, saved))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def peak_memory(
    kind: str, sparsity: float, nf: int, data_dir, allocator: str = "glibc"
) -> tuple[float, float]:
    """Peak RSS (MB) of a fresh process that loads the data and takes three steps, and the
    part of it above the process's RSS once the data was loaded (the training's own)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_steps_peak_rss, args=(kind, sparsity, nf, data_dir, queue))
    with preloaded(allocator_preload(allocator)):
        process.start()
    peak = queue.get()
    process.join()
    return peak


def memory_table(names_kinds: dict[str, tuple[str, float]], args) -> str:
    """Peak RSS and the training's own MB per variant and allocator, % of dense alongside."""
    allocators = [a for a in args.allocators if allocator_preload(a) != ""]
    header = " | ".join(f"{a} peak RSS MB | {a} training's own MB" for a in allocators)
    lines = [f"| variant | {header} |", "|---" * (1 + 2 * len(allocators)) + "|"]
    peaks = {
        (name, allocator): peak_memory(kind, sparsity, args.nf, args.data_dir, allocator)
        for name, (kind, sparsity) in names_kinds.items()
        for allocator in allocators
    }
    for name in names_kinds:
        cells = []
        for allocator in allocators:
            peak, own = peaks[name, allocator]
            dense_peak, dense_own = peaks["dense DER++", allocator]
            cells += [f"{peak:.0f} ({peak / dense_peak:.0%})", f"{own:.0f} ({own / dense_own:.0%})"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.75, 0.9, 0.95])
    parser.add_argument("--nf", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--data_dir")
    parser.add_argument(
        "--allocators",
        nargs="+",
        choices=list(ALLOCATOR_LIBRARIES),
        default=list(ALLOCATOR_LIBRARIES),
        help="allocators to measure peak memory under (those not installed are skipped)",
    )
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--profile", action="store_true", help="add where each step's time goes, by op category"
    )
    parser.add_argument("--markdown")
    args = parser.parse_args()
    data = load_dataset("seq-fmnist", args.data_dir)
    protocol = data.protocol
    generator = torch.Generator().manual_seed(2)
    batches = [
        torch.randint(0, len(data.train_labels), (32,), generator=generator) for _ in range(64)
    ]

    variants = {
        "dense DER++": make_method("dense", 0.0, data, args.nf),
        "dense DER++ channels_last": make_method("dense-channels-last", 0.0, data, args.nf),
    }
    kinds = [(kind, s) for s in args.sparsities for kind in ("unstructured", "block")]
    for kind, sparsity in kinds:
        variants[f"SparCL-DER++ {kind} {sparsity:g}"] = make_method(kind, sparsity, data, args.nf)

    def stepper(method):
        counter = iter(range(10**9))

        def step():
            index = batches[next(counter) % len(batches)]
            raw = data.train_images[index]
            method.observe(augment(raw, protocol, generator), data.train_labels[index], raw, 0)

        return step

    times = interleaved_medians({n: stepper(m) for n, m in variants.items()}, args.repeats, 2)
    shape = (protocol.channels, protocol.image_size, protocol.image_size)
    lines = [
        f"{datetime.date.today()} · torch {torch.__version__} · {torch.get_num_threads()} threads"
        f" · ResNet-18 nf={args.nf}, 28x28x1, batch 32 + 2 x 32 replay · medians of "
        f"{args.repeats} interleaved steps · fp32 · allocator {describe_allocator()['name']}\n",
        "| variant | step ms | speedup vs best dense | FLOP reduction | realization ratio |",
        "|---|---|---|---|---|",
    ]
    # The baseline is the faster dense memory format in this run.
    dense_time = min(times["dense DER++"], times["dense DER++ channels_last"])
    for name, method in variants.items():
        density = method.gradient_density() or 1.0
        step_flops = count_flops(method.net, shape).step(96, density)
        reduction = step_flops["dense_equivalent"] / step_flops["actual"]
        speedup = dense_time / times[name]
        lines.append(
            f"| {name} | {times[name] * 1e3:.0f} | {speedup:.2f}x | {reduction:.2f}x | "
            f"{speedup / reduction:.0%} |"
        )
    if args.profile:
        profiled = ["dense DER++ channels_last"]
        profiled += [f"SparCL-DER++ block {s:g}" for s in args.sparsities]
        lines += ["", "Where the step's time goes (torch.profiler, 3 steps, self CPU time):", ""]
        lines += breakdown_table({n: profiled_ops(stepper(variants[n])) for n in profiled})
    if args.memory:
        names_kinds = {"dense DER++": ("dense", 0.0)}
        names_kinds.update({f"SparCL-DER++ {k} {s:g}": (k, s) for k, s in kinds})
        lines += ["", "Peak memory, a fresh process per variant and allocator:", ""]
        lines.append(memory_table(names_kinds, args))
    emit("\n".join(lines), args.markdown)


if __name__ == "__main__":
    main()
