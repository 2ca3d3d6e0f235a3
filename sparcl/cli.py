"""``sparcl train`` / ``sparcl eval``: mammoth-shaped command line."""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from sparcl import allocator, memory
from sparcl.allocator import ALLOCATOR_CHOICES
from sparcl.config import TrainConfig, add_config_arguments, resolve_config, setting_kinds
from sparcl.data import MissingDataError, load_dataset
from sparcl.evaluate import evaluate
from sparcl.rundir import RunDir, RunLockedError, StorageError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparcl", description="SparCL continual learning")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a continual-learning run")
    add_config_arguments(train)
    train.add_argument("--resume", metavar="RUN_DIR", help="continue after its last complete task")
    train.add_argument(
        "--allocator",
        choices=ALLOCATOR_CHOICES,
        default="auto",
        help="memory allocator, preloaded by re-executing once before torch loads (auto: "
        "tcmalloc, then jemalloc, then glibc's malloc, which keeps freed memory)",
    )
    evaluation = commands.add_parser("eval", help="re-evaluate a saved checkpoint")
    evaluation.add_argument("--checkpoint", required=True, help="a checkpoints/task_<t>.pt file")
    evaluation.add_argument("--data_dir", "--data-dir", dest="data_dir")
    return parser


# Settings a resumed run may change: they do not alter what it computes.
RESUMABLE_CHANGES = frozenset({"quiet", "speedup_repeats", "data_dir"})


def _resumed_config(arguments: argparse.Namespace) -> TrainConfig:
    """The saved configuration of ``--resume``; flags that would change it are rejected."""
    saved = RunDir.read_config_of(arguments.resume)
    config = TrainConfig.from_dict(saved, f"--resume {arguments.resume}", ignore_other_methods=True)
    names = setting_kinds()
    given = {k: v for k, v in vars(arguments).items() if k in names}
    if getattr(arguments, "config", None):
        raise ValueError("--resume keeps the run's saved configuration; --config cannot be given")
    conflicts = [
        f"--{name} {value!r} (saved: {getattr(config, name)!r})"
        for name, value in given.items()
        if name not in RESUMABLE_CHANGES and getattr(config, name, None) != value
    ]
    if conflicts:
        raise ValueError(
            f"--resume {arguments.resume}: these flags differ from the run's saved "
            f"configuration: {', '.join(conflicts)}; start a new run to change them"
        )
    for name in RESUMABLE_CHANGES & given.keys():
        if saved.get(name) != given[name]:
            print(f"sparcl train: --resume with --{name} {given[name]!r}", file=sys.stderr)
            setattr(config, name, given[name])
    config.validate()
    return config


def _check_output_dir(output_dir: str) -> None:
    """Fail at start-up, naming the option, if run directories cannot be written there."""
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(f"--output_dir {output_dir!r} is not writable: {error}") from None


def _train(arguments: argparse.Namespace) -> None:
    from sparcl.distributed import Cluster
    from sparcl.train import build_network, train  # the heavy imports only when training

    if arguments.resume:
        config = _resumed_config(arguments)
        run_path = Path(arguments.resume)
        if RunDir(run_path).finished():
            print(
                f"sparcl train: {run_path} has finished (its results.json is written): nothing "
                "to resume, and nothing was changed. Re-evaluate a checkpoint with `sparcl eval "
                "--checkpoint`, or start a new run.",
                file=sys.stderr,
            )
            return
        RunDir(run_path).check_writable()  # a read-only run fails now, not after a task
    else:
        config = resolve_config(arguments)
        _check_output_dir(config.output_dir)
    data = load_dataset(config.dataset, config.data_dir)  # missing data fails now, not mid-run
    build_network(config, data, report=True)  # a block size no layer takes fails now
    memory.load_torch_runtime()
    baseline_rss_mb = memory.current_rss_mb()  # torch runtime + data, before training
    cluster = Cluster.from_environment()  # torchrun: join the process group
    try:
        if not arguments.resume:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            name = f"{config.model}-{config.dataset}-s{config.seed}-{stamp}"
            created = RunDir.create_unique(config.output_dir, name) if cluster.is_main else None
            run_path = Path(cluster.broadcast_object(str(created)))
        if cluster.is_main:
            print("Configuration:\n" + yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
            print(
                f"Run directory: {run_path}"
                + (f" ({cluster.world_size} ranks)" if cluster.enabled else "")
            )
            print(f"Memory allocator: {allocator.describe()['name']}")
        run_dir = RunDir(run_path)
        results = train(
            config,
            run_dir,
            resume=bool(arguments.resume),
            data=data,
            cluster=cluster,
            baseline_rss_mb=baseline_rss_mb,
        )
        if cluster.is_main:
            _print_summary(config, results, run_dir)
    finally:
        cluster.close()


def _print_summary(config: TrainConfig, results: dict, run_dir: RunDir) -> None:
    rate = sum(results["task_samples_per_second"]) / len(results["task_samples_per_second"])
    if not config.sparse:
        compute = "dense"
    elif config.granularity == "unstructured":
        compute = "masked-dense (unstructured masks, dense compute)"
    else:
        layers = len(results["layer_sparsity"])
        compute = (
            f"block-sparse in {layers} layers on backend '{results['backend']['default']['cpu']}'"
        )
    speed = results.get("realization")
    measured = (
        f"; network step {speed['measured_speedup']:.2f}x dense at "
        f"{speed['flop_reduction']:.2f}x fewer FLOPs"
        if speed
        else ""
    )
    if speed and speed.get("step_peak_mb") is not None and speed.get("dense_step_peak_mb"):
        measured += (
            f", {speed['step_peak_mb']:.0f} MB step memory vs "
            f"{speed['dense_step_peak_mb']:.0f} MB dense"
        )
    peak = results["memory"]["training_peak_mb"]
    memory_note = f", training's own peak memory {peak:.0f} MB" if peak is not None else ""
    print(
        f"Final: Class-IL {results['average_class_il']:.2f} %, Task-IL "
        f"{results['average_task_il']:.2f} %, forgetting {results['forgetting_class_il']:.2f}, "
        f"{rate:.1f} samples/s, {compute}, {torch.get_num_threads()} threads{measured}"
        f"{memory_note} ({results['memory']['allocator']['name']}). "
        f"Results: {run_dir.path / 'results.json'}"
    )


def _evaluate(arguments: argparse.Namespace) -> None:
    from sparcl.train import build_network

    checkpoint = Path(arguments.checkpoint)
    if not checkpoint.is_file():
        raise ValueError(f"--checkpoint {checkpoint}: no such file")
    run_path = checkpoint.parent.parent
    if not (run_path / "config.yaml").is_file():
        raise ValueError(
            f"--checkpoint {checkpoint}: expected a checkpoint inside a run directory, "
            f"RUN/checkpoints/task_<t>.pt with RUN/config.yaml, but {run_path} has no config.yaml"
        )
    config = TrainConfig.from_dict(
        RunDir.read_config_of(run_path), f"run {run_path}", ignore_other_methods=True
    )
    if arguments.data_dir:
        config.data_dir = arguments.data_dir
    data = load_dataset(config.dataset, config.data_dir)
    torch.manual_seed(config.seed)
    net = build_network(config, data)
    try:
        state = torch.load(checkpoint, weights_only=True)
        seen = state["progress"]["next_task"]
        net.load_state_dict(state["net"])
    except (RuntimeError, KeyError, TypeError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"--checkpoint {checkpoint} does not fit the network that {run_path / 'config.yaml'} "
            f"describes (--backbone {config.backbone}, --nf {config.nf}, --sparsity "
            f"{config.sparsity}): {first}"
        ) from None
    class_il, task_il = evaluate(net, data, seen, precision=config.precision)
    print(
        f"Accuracy for {seen} task(s): [Class-IL]: {sum(class_il) / seen:.2f} % "
        f"[Task-IL]: {sum(task_il) / seen:.2f} %"
    )


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    try:
        if arguments.command == "train":
            _train(arguments)
        else:
            _evaluate(arguments)
    except (ValueError, MissingDataError) as error:
        print(f"sparcl {arguments.command}: error: {error}", file=sys.stderr)
        return 2
    except (StorageError, RunLockedError) as error:
        print(f"sparcl {arguments.command}: error: {error}", file=sys.stderr)
        return 1
    except RuntimeError as error:
        from sparcl.train import TrainingDiverged  # the heavy module is loaded by now

        if not isinstance(error, TrainingDiverged):
            raise
        print(
            f"sparcl {arguments.command}: error: {error}. The run stopped; the checkpoints of "
            "the tasks completed before are kept, and no results.json was written.",
            file=sys.stderr,
        )
        return 1
    return 0
