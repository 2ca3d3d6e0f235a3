"""The realization ratio of a run: measured speedup over its dense twin / FLOP reduction.

FLOP counts promise a speedup; this measures the one delivered. At the end of a run the
trained network (a copy, so its statistics and gradients are untouched) and a dense network
of the same architecture each take forward + backward steps on the same batch, timed in
round-robin so that machine drift hits both alike; the medians give the measured speedup.
"""

from __future__ import annotations

import copy
import multiprocessing
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from sparcl import memory
from sparcl.flops import count_flops
from sparcl.precision import logits
from sparcl_kernels.measure import interleaved_medians


def _training_step(
    model: nn.Module, inputs: torch.Tensor, precision: str = "fp32"
) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=False)
        logits(model, inputs, precision).logsumexp(1).sum().backward()

    return step


def _step_peak_in_child(
    model_file: str, inputs_shape: tuple[int, ...], precision: str, queue
) -> None:
    model = torch.load(model_file, weights_only=False)
    inputs = torch.randn(*inputs_shape, generator=torch.Generator().manual_seed(0))
    before = memory.current_rss_mb()
    step = _training_step(model.train(), inputs, precision)
    for _ in range(3):
        step()
    queue.put(memory.peak_rss_mb() - before)


def step_peak_memory(
    model: nn.Module, inputs_shape: tuple[int, ...], precision: str = "fp32"
) -> float | None:
    """Peak memory (MB) a forward + backward step of ``model`` adds, in a fresh process.

    A process's peak only grows, so each network is measured in its own child (started with
    the parent's environment, hence the same allocator); None where memory cannot be read.
    """
    if memory.peak_rss_mb() is None:
        return None
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    with tempfile.TemporaryDirectory() as folder:
        model_file = str(Path(folder) / "model.pt")
        try:
            torch.save(model, model_file)
        except (pickle.PicklingError, AttributeError, TypeError):
            return None  # a model carrying unpicklable hooks (masked-dense layers)
        child = context.Process(
            target=_step_peak_in_child, args=(model_file, inputs_shape, precision, queue)
        )
        child.start()
        try:
            peak = queue.get(timeout=600)
        finally:
            child.join()
    return round(peak, 1)


def realization(
    net: nn.Module,
    dense_net: nn.Module,
    sample_shape: tuple[int, ...],
    gradient_density: float = 1.0,
    batch_size: int = 32,
    repeats: int = 5,
    measure_memory: bool = False,
    precision: str = "fp32",
) -> dict[str, float]:
    """Measured network-step speedup of ``net`` over ``dense_net`` and its realization ratio.

    The dense twin is timed in both memory formats (NCHW and channels-last) and the faster is
    the baseline, as a user would pick. ``gradient_density`` is the fraction of stored
    weight-gradient blocks DGM computes (it enters the FLOP reduction the measured speedup is
    compared with). With ``measure_memory``, each network's step also runs in a fresh
    process to measure the peak memory it adds (``step_peak_mb``). Both networks step in
    ``precision`` (sparcl.precision: bf16 runs under autocast).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    inputs = torch.randn(batch_size, *sample_shape, generator=torch.Generator().manual_seed(0))
    models = {
        "ours": copy.deepcopy(net).train(),
        "dense": copy.deepcopy(dense_net).train(),
        "dense channels_last": copy.deepcopy(dense_net).to(memory_format=torch.channels_last),
    }
    times = interleaved_medians(
        {name: _training_step(model.train(), inputs, precision) for name, model in models.items()},
        repeats=repeats,
        warmup=1,
    )
    best_dense = min(("dense", "dense channels_last"), key=times.__getitem__)
    step = count_flops(net, sample_shape).step(batch_size, gradient_density)
    reduction = step["dense_equivalent"] / step["actual"] if step["actual"] else 1.0
    speedup = times[best_dense] / times["ours"]
    result = {
        "step_seconds": round(times["ours"], 6),
        "dense_step_seconds": round(times[best_dense], 6),
        "dense_memory_format": "channels_last" if best_dense != "dense" else "contiguous",
        "measured_speedup": round(speedup, 4),
        "flop_reduction": round(reduction, 4),
        "realization_ratio": round(speedup / reduction, 4),
        "batch_size": batch_size,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "precision": precision,
    }
    if measure_memory:
        shape = (batch_size, *sample_shape)
        result["step_peak_mb"] = step_peak_memory(models["ours"], shape, precision)
        result["dense_step_peak_mb"] = step_peak_memory(models[best_dense], shape, precision)
    return result
