"""The training loop: tasks in order, epochs of batched steps, evaluation and checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import math
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

import sparcl_kernels as sk
from sparcl import allocator, faults, memory, precision
from sparcl.blocks import block_sides
from sparcl.config import TrainConfig
from sparcl.data import SplitData, augment, load_dataset, with_augmentation
from sparcl.distributed import Cluster
from sparcl.evaluate import evaluate
from sparcl.flops import count_flops
from sparcl.masking import attach_element_masks, unit_density
from sparcl.methods import ContinualMethod, method_class
from sparcl.metrics import average_accuracy, backward_transfer, forgetting
from sparcl.models import BLOCK_CONV_PATTERNS, MLP, resnet18
from sparcl.rundir import RunDir
from sparcl.speedup import realization

DEBUG_BATCHES = 2  # batches per epoch in --debug_mode
DEBUG_EVAL_EXAMPLES = 100  # test examples per task in --debug_mode


def build_network(config: TrainConfig, data: SplitData, report: bool = False) -> nn.Module:
    """The backbone, with its SparCL layers made block-sparse when the config asks for it.

    Raises ``ValueError`` when the block size fits none of those layers; with ``report``,
    says which ones it leaves dense.
    """
    protocol = data.protocol
    if config.backbone == "resnet18":
        net = resnet18(protocol.n_classes, config.nf, protocol.channels)
        sparse_layers = BLOCK_CONV_PATTERNS
    else:
        net = MLP(
            protocol.channels * protocol.image_size**2, protocol.n_classes, config.mlp_hidden_size
        )
        sparse_layers = ("body.*",)
    if config.sparse and config.granularity == "unstructured":
        attach_element_masks(net, config.sparsity, include=sparse_layers)
    elif config.sparse:
        sides = block_sides(net, config, sparse_layers, report)
        for side in sorted(set(sides.values()), reverse=True):
            include = [name for name, chosen in sides.items() if chosen == side]
            sk.sparsify(net, config.sparsity, side, include=include, block_taps=config.block_taps)
    return net


def layer_block_size(net: nn.Module) -> dict[str, list[int]]:
    """The block size of every block-sparse layer."""
    return {
        name: list(module.block_size)
        for name, module in net.named_modules()
        if isinstance(module, sk.nn.SparseLinear | sk.nn.SparseConv2d)
    }


def layer_block_taps(net: nn.Module) -> dict[str, str]:
    """The tap policy (``"each"`` or ``"all"``) of every block-sparse convolution."""
    return {
        name: module.block_taps
        for name, module in net.named_modules()
        if isinstance(module, sk.nn.SparseConv2d)
    }


def layer_sparsity(net: nn.Module) -> dict[str, float]:
    densities = {name: unit_density(module) for name, module in net.named_modules()}
    return {name: round(1.0 - d, 6) for name, d in densities.items() if d is not None}


class TrainingDiverged(RuntimeError):
    """The loss or the weights became non-finite: the run stops before anything is saved from
    that point on (no checkpoint of the task, no results.json)."""


def check_finite_loss(loss: float, task: int, epoch: int, step: int) -> None:
    """Raise :class:`TrainingDiverged` naming where, if ``loss`` (a step's) is inf or NaN."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"the loss became {loss} at task {task + 1}, epoch {epoch + 1}, step {step + 1}: "
            "training diverged (a learning rate too high for this model?)"
        )


def check_finite_weights(net: nn.Module, task: int) -> None:
    """Raise :class:`TrainingDiverged` if a parameter or buffer holds inf or NaN."""
    bad = [
        name
        for name, tensor in net.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise TrainingDiverged(
            f"after task {task + 1}, {len(bad)} weight tensors hold inf or NaN "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
        )


@dataclass
class Progress:
    """Everything a run accumulates, and what a checkpoint must restore."""

    next_task: int = 0
    class_il: list[list[float]] = field(default_factory=list)
    task_il: list[list[float]] = field(default_factory=list)
    metrics_rows: list[dict] = field(default_factory=list)
    task_seconds: list[float] = field(default_factory=list)
    task_samples_per_second: list[float] = field(default_factory=list)
    gradient_density: float | None = None  # DGM: stored weight-gradient blocks computed
    training_flops: dict | None = None
    # Examples stepped on, and those a run without data removal would have stepped on.
    examples_stepped: int = 0
    examples_offered: int = 0
    data_fingerprint: list[str] = field(default_factory=list)  # per task, see fingerprint()


def data_stream(seed: int, *keys: object) -> torch.Generator:
    """A generator seeded by ``seed`` and ``keys`` alone (stable across runs and platforms)."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def fingerprint(indices: torch.Tensor, first_order: torch.Tensor) -> str:
    """A short hash of a task's training subset and its first epoch's order."""
    digest = hashlib.sha256(indices.to(torch.int64).numpy().tobytes())
    digest.update(first_order.to(torch.int64).numpy().tobytes())
    return digest.hexdigest()[:12]


def train_task(
    method: ContinualMethod,
    data: SplitData,
    task: int,
    config: TrainConfig,
    generator: torch.Generator,
    progress: Progress,
) -> tuple[float, int]:
    """All epochs of one task; returns (seconds, examples stepped on).

    The training subset, each epoch's order and each epoch's augmentation draw from their
    own streams, seeded by (seed, task, epoch) alone: every method sees the same data for a
    seed, however many steps DDR removes or replay consumes (``data_fingerprint`` checks it).
    ``generator`` serves the method (replay augmentation).
    """
    method.begin_task(task)
    indices = method.training_indices(data, task)
    if config.max_train_per_task:
        shuffled = torch.randperm(len(indices), generator=data_stream(config.seed, "subset", task))
        indices = indices[shuffled][: config.max_train_per_task]
    total_seconds, total_examples = 0.0, 0
    for epoch in range(config.n_epochs):
        method.begin_epoch(task, epoch)
        positions = method.epoch_positions(len(indices))  # DDR may have removed some
        order_stream = data_stream(config.seed, "order", task, epoch)
        order = positions[torch.randperm(len(positions), generator=order_stream)]
        if epoch == 0 and len(progress.data_fingerprint) == task:
            progress.data_fingerprint.append(fingerprint(indices, order))
        augment_stream = data_stream(config.seed, "augment", task, epoch)
        batches = list(order.split(config.batch_size))
        # Under torchrun every rank needs a non-empty shard of each batch.
        batches = [b for b in batches if len(b) >= method.cluster.world_size]
        offered = len(indices)  # what a run without data removal steps on this epoch
        if config.debug_mode:
            batches = batches[:DEBUG_BATCHES]
            offered = min(offered, DEBUG_BATCHES * config.batch_size)
        bar = tqdm(
            batches,
            desc=f"task {task + 1} epoch {epoch + 1}",
            leave=False,
            disable=True if config.quiet or not method.cluster.is_main else None,
        )
        losses, examples, start = [], 0, time.perf_counter()
        for step, batch_positions in enumerate(bar):
            batch = indices[batch_positions]
            raw, labels = data.train_images[batch], data.train_labels[batch]
            loss = method.observe(augment(raw, data.protocol, augment_stream), labels, raw, task)
            check_finite_loss(loss, task, epoch, step)  # before DDR, TDM or DGM act on it
            method.after_observe(batch_positions, labels)
            losses.append(loss)
            examples += len(batch)
            rate = examples / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss:.3f}", samples_per_s=f"{rate:.0f}")
        seconds = time.perf_counter() - start
        total_seconds += seconds
        total_examples += examples
        progress.examples_stepped += examples
        progress.examples_offered += offered
        progress.metrics_rows.append(
            {
                "task": task + 1,
                "epoch": epoch + 1,
                "loss": sum(losses) / max(len(losses), 1),
                "seconds": round(seconds, 4),
                "samples_per_second": round(examples / seconds, 2),
                "examples": examples,
            }
        )
        faults.crash_point("epoch-end")
    return total_seconds, total_examples


def _git_revision() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def training_flops(
    net: nn.Module, data: SplitData, method: ContinualMethod, density, progress: Progress
) -> dict:
    """Training FLOPs of the whole run (see sparcl.flops): ``actual``; ``dense_equivalent``,
    the same steps on dense layers; ``dense_run``, a dense run's own steps, which include the
    examples DDR removed (scaled by examples offered / stepped). ``reduction`` is
    ``dense_run / actual``: weight sparsity, DGM and DDR together, as the paper counts them."""
    protocol = data.protocol
    shape = (protocol.channels, protocol.image_size, protocol.image_size)
    totals = count_flops(net, shape).step(method.samples_forwarded, density or 1.0)
    stepped, offered = progress.examples_stepped, progress.examples_offered
    totals["dense_run"] = totals["dense_equivalent"] * (offered / stepped if stepped else 1.0)
    totals["reduction"] = totals["dense_run"] / totals["actual"] if totals["actual"] else 1.0
    totals["reduction_basis"] = "dense run's own step count (data removal counted as saved)"
    return totals


def measure_realization(
    config: TrainConfig, net: nn.Module, method: ContinualMethod, data: SplitData
) -> dict | None:
    """Measured speedup of the trained network over a dense twin, and its realization ratio."""
    if not config.sparse or not config.speedup_repeats:
        return None
    protocol = data.protocol
    dense_net = build_network(dataclasses.replace(config, sparsity=0.0), data)
    return realization(
        net,
        dense_net,
        (protocol.channels, protocol.image_size, protocol.image_size),
        gradient_density=method.step_gradient_density(),
        batch_size=config.batch_size,
        repeats=1 if config.debug_mode else config.speedup_repeats,
        measure_memory=not config.debug_mode,
        precision=config.precision,
    )


def build_results(
    config: TrainConfig, net: nn.Module, method: ContinualMethod, progress: Progress
) -> dict:
    return {
        "config": config.to_dict(),
        "class_il": progress.class_il,
        "task_il": progress.task_il,
        "average_class_il": average_accuracy(progress.class_il),
        "average_task_il": average_accuracy(progress.task_il),
        "forgetting_class_il": forgetting(progress.class_il),
        "forgetting_task_il": forgetting(progress.task_il),
        "bwt_class_il": backward_transfer(progress.class_il),
        "bwt_task_il": backward_transfer(progress.task_il),
        "task_seconds": progress.task_seconds,
        "task_samples_per_second": progress.task_samples_per_second,
        "layer_sparsity": layer_sparsity(net),
        "layer_block_size": layer_block_size(net),
        "layer_block_taps": layer_block_taps(net),
        "precision": config.precision,
        "gradient_density": progress.gradient_density,
        "training_flops": progress.training_flops,
        "data_fingerprint": progress.data_fingerprint,
        "training_seconds": round(sum(progress.task_seconds), 4),
        "backend": sk.backend_info(),
        "current_logit_masking": config.mask_current_logits,
        "augmentation": method.protocol.augmentation,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "sparcl_kernels": sk.__version__,
        },
        "seed": config.seed,
        "git_revision": _git_revision(),
        "host": socket.gethostname(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        **method.summary(),
    }


def checkpoint_state(net, method, generator, progress: Progress) -> dict:
    return {
        "net": net.state_dict(),
        "method": method.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "progress": progress.__dict__,
    }


def restore(state: dict, net, method, generator) -> Progress:
    net.load_state_dict(state["net"])
    method.load_state_dict(state["method"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return Progress(**state["progress"])


def build_method(
    config: TrainConfig,
    net: nn.Module,
    data: SplitData,
    generator: torch.Generator,
    cluster: Cluster | None = None,
) -> ContinualMethod:
    """The configured method over ``net``; ``generator`` draws its replay augmentation."""
    return method_class(config.model)(
        net=net,
        protocol=data.protocol,
        transform=lambda raw: augment(raw, data.protocol, generator),
        options=config.options,
        seed=config.seed,
        n_epochs=config.n_epochs,
        cluster=cluster,
        precision=config.precision,
    )


def finish_task(config, net, method, data, task: int, seconds: float, examples: int, progress):
    """Evaluate after ``task`` and record it in ``progress`` (on every rank alike)."""
    cluster = method.cluster
    cluster.check_consistent(net, f"at the end of task {task + 1}")
    limit = DEBUG_EVAL_EXAMPLES if config.debug_mode else 0
    class_il, task_il = evaluate(
        net, data, task + 1, limit=limit, cluster=cluster, precision=config.precision
    )
    progress.class_il.append(class_il)
    progress.task_il.append(task_il)
    progress.task_seconds.append(round(seconds, 4))
    progress.task_samples_per_second.append(round(examples / seconds, 2) if seconds else 0.0)
    progress.next_task = task + 1
    progress.gradient_density = method.gradient_density()
    progress.training_flops = training_flops(net, data, method, progress.gradient_density, progress)
    if cluster.is_main:
        print(
            f"Accuracy for {task + 1} task(s): [Class-IL]: {sum(class_il) / len(class_il):.2f} % "
            f"[Task-IL]: {sum(task_il) / len(task_il):.2f} %  "
            f"({progress.task_samples_per_second[-1]:.1f} samples/s)"
        )


def distributed_summary(cluster: Cluster) -> dict | None:
    if not cluster.enabled:
        return None
    sent = cluster.allreduce_bytes
    return {
        "world_size": cluster.world_size,
        "backend": cluster.backend,
        "allreduce_bytes_per_step": round(sum(sent) / len(sent)) if sent else 0,
    }


def memory_summary(baseline_rss_mb: float | None) -> dict:
    """Peak resident memory of this process and the part of it the training added above
    ``baseline_rss_mb`` (torch runtime + data), with the allocator that produced them."""
    peak = memory.peak_rss_mb()
    own = None if peak is None or baseline_rss_mb is None else peak - baseline_rss_mb
    return {
        "peak_rss_mb": None if peak is None else round(peak, 1),
        "baseline_rss_mb": None if baseline_rss_mb is None else round(baseline_rss_mb, 1),
        "training_peak_mb": None if own is None else round(own, 1),
        "allocator": allocator.describe(),
    }


def train(
    config: TrainConfig,
    run_dir: RunDir,
    resume: bool = False,
    data: SplitData | None = None,
    cluster: Cluster | None = None,
    baseline_rss_mb: float | None = None,
) -> dict:
    """Run (or resume) the whole class-incremental protocol; returns the results dict.

    Under torchrun pass the :class:`Cluster`; every rank calls this, rank 0 writes the files.
    ``baseline_rss_mb`` is the process's resident memory once torch and the data were loaded
    (measured here when not given): the training's own peak memory is counted above it.
    """
    cluster = cluster or Cluster()
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(config.seed)
    if data is None:
        data = load_dataset(config.dataset, config.data_dir)
    data = with_augmentation(data, config.augmentation)
    if baseline_rss_mb is None:
        memory.load_torch_runtime()
        baseline_rss_mb = memory.current_rss_mb()
    net = build_network(config, data)
    precision.warn_if_slow(config.precision, precision.device_of(net))
    if cluster.enabled:
        cluster.sync_batch_norm(net)  # BatchNorm over the global batch, as in one process
    cluster.broadcast_module(net)
    generator = torch.Generator().manual_seed(config.seed + 1)
    method = build_method(config, net, data, generator, cluster)
    with run_dir.lock() if cluster.is_main else contextlib.nullcontext():
        return _run_tasks(
            config, run_dir, resume, data, cluster, net, generator, method, baseline_rss_mb
        )


def _run_tasks(config, run_dir, resume, data, cluster, net, generator, method, baseline_rss_mb):
    """train()'s work once the run directory is locked."""
    progress = Progress()
    latest = run_dir.latest_checkpoint() if resume else None
    if latest is not None:
        progress = restore(latest[1], net, method, generator)
        if cluster.is_main:
            print(f"Resuming {run_dir.path} after task {progress.next_task}", file=sys.stderr)
    if cluster.is_main:
        run_dir.write_config(config.to_dict())
    for task in range(progress.next_task, data.protocol.n_tasks):
        seconds, examples = train_task(method, data, task, config, generator, progress)
        method.end_task(task)
        check_finite_weights(net, task)  # a checkpoint of NaN weights would resume into NaN
        finish_task(config, net, method, data, task, seconds, examples, progress)
        if cluster.is_main:
            run_dir.write_metrics(progress.metrics_rows)
            run_dir.save_checkpoint(task + 1, checkpoint_state(net, method, generator, progress))
        cluster.barrier()  # no rank runs ahead of the checkpoint it could be resumed from
    results = build_results(config, net, method, progress)
    results["distributed"] = distributed_summary(cluster)
    results["memory"] = memory_summary(baseline_rss_mb)
    if cluster.is_main:
        results["realization"] = measure_realization(config, net, method, data)
        run_dir.write_results(results)
        run_dir.write_plots(progress.class_il, progress.task_il)
    return results
