"""``sparcl train`` / ``sparcl eval``: mammoth-shaped command line."""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch
import yaml

from sparcl import allocator, memory
from sparcl.allocator import ALLOCATOR_CHOICES
from sparcl.config import TrainConfig, add_config_arguments, resolve_config
from sparcl.data import MissingDataError, load_dataset
from sparcl.evaluate import evaluate
from sparcl.rundir import RunDir


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


def _train(arguments: argparse.Namespace) -> None:
    from sparcl.distributed import Cluster
    from sparcl.train import train  # the heavy imports only when training

    if arguments.resume:
        config = TrainConfig(**RunDir.read_config_of(arguments.resume))
        config.validate()
        run_path = Path(arguments.resume)
    else:
        config = resolve_config(arguments)
    data = load_dataset(config.dataset, config.data_dir)  # missing data fails now, not mid-run
    baseline_rss_mb = memory.current_rss_mb()  # torch runtime + data, before training
    cluster = Cluster.from_environment()  # torchrun: join the process group
    try:
        if not arguments.resume:
            stamp = cluster.broadcast_object(datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
            name = f"{config.model}-{config.dataset}-s{config.seed}-{stamp}"
            run_path = Path(config.output_dir) / name
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
        compute = f"block-sparse on backend '{results['backend']['default']['cpu']}'"
    speed = results.get("realization")
    measured = (
        f"; network step {speed['measured_speedup']:.2f}x dense at "
        f"{speed['flop_reduction']:.2f}x fewer FLOPs"
        if speed
        else ""
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
    config = TrainConfig(**RunDir.read_config_of(checkpoint.parent.parent))
    if arguments.data_dir:
        config.data_dir = arguments.data_dir
    data = load_dataset(config.dataset, config.data_dir)
    torch.manual_seed(config.seed)
    net = build_network(config, data)
    state = torch.load(checkpoint, weights_only=True)
    net.load_state_dict(state["net"])
    seen = state["progress"]["next_task"]
    class_il, task_il = evaluate(net, data, seen)
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
    return 0
