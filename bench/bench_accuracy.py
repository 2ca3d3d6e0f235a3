"""Accuracy side by side: dense DER++, SparCL-DER++ masked-dense (the release's way) and
SparCL-DER++ block-sparse on the fast path, all five tasks of Split Fashion-MNIST.

Every variant runs the same schedule with the same seed and data order; SparCL's
TDM/DDR epoch schedule is scaled down to the short run (stated in the table header). Wall
times are left to bench_sparcl.py: a sweep this long shares the machine with other work.
Each run keeps its own run directory (results.json, checkpoints) under --output_dir, and a
finished run is reused when the script is started again, so an interrupted sweep resumes.

    python bench/bench_accuracy.py --sparsities 0.9 --seeds 0 --markdown /tmp/acc.md \\
        --plot bench/accuracy.png
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
from pathlib import Path

import torch
from timing import emit

from sparcl.config import TrainConfig
from sparcl.data import load_dataset
from sparcl.rundir import RunDir
from sparcl.train import train


def variants(sparsities: list[float]) -> dict[str, dict]:
    """Name -> config overrides of each compared variant."""
    table = {"dense DER++": {"model": "derpp"}}
    for sparsity in sparsities:
        for granularity in ("unstructured", "block"):
            table[f"SparCL-DER++ {granularity} {sparsity:g}"] = {
                "model": "sparcl-derpp",
                "sparsity": sparsity,
                "granularity": granularity,
            }
    return table


def base_settings(args: argparse.Namespace) -> dict:
    """Settings every variant shares (SparCL's apply to the SparCL variants only)."""
    return dict(
        dataset="seq-fmnist",
        nf=args.nf,
        n_epochs=args.n_epochs,
        max_train_per_task=args.max_train_per_task,
        buffer_size=500,
        alpha=0.1,
        beta=0.5,
        mask_current_logits=True,
        block_size=32,
        data_dir=args.data_dir,
        quiet=True,
        speedup_repeats=0,  # speed is bench_sparcl.py's job, on a quiet machine
        # SparCL's 50-epoch schedule (TDM every 5 epochs, DDR at 5..20) squeezed into n_epochs.
        tdm_delta_k=2,
        tdm_frozen_epoch=args.n_epochs,
        ddr_epochs=(1, 2, 3),
        dgm_interval=10,
    )


def run_once(config: TrainConfig, path: Path, data) -> dict:
    results_file = path / "results.json"
    if results_file.exists():
        return json.loads(results_file.read_text())
    resume = (path / "checkpoints" / "latest.txt").exists()
    return train(config, RunDir(path), resume=resume, data=data)


def plot(rows: dict[str, list[dict]], target: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    figure, axis = plt.subplots(figsize=(8, 4))
    width = 0.38
    for offset, key, label in ((-width / 2, "average_class_il", "Class-IL"),
                               (width / 2, "average_task_il", "Task-IL")):  # fmt: skip
        means = [statistics.mean(r[key] for r in rows[n]) for n in names]
        spreads = [statistics.stdev(r[key] for r in rows[n]) if len(rows[n]) > 1 else 0.0
                   for n in names]  # fmt: skip
        positions = [i + offset for i in range(len(names))]
        bars = axis.bar(positions, means, width, yerr=spreads, capsize=3, label=label)
        axis.bar_label(bars, fmt="%.1f", fontsize=8)
    axis.set_xticks(range(len(names)), [n.replace("SparCL-DER++ ", "SparCL\n") for n in names])
    seeds = len(next(iter(rows.values())))
    title = f"Split Fashion-MNIST, mean ± std over {seeds} seed(s)"
    axis.set(ylabel="average accuracy after 5 tasks (%)", ylim=(0, 105), title=title)
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(target, dpi=100)
    plt.close(figure)


def table(rows: dict[str, list[dict]], args: argparse.Namespace) -> str:
    lines = [
        f"{datetime.date.today()} · torch {torch.__version__} · {torch.get_num_threads()} threads"
        f" · ResNet-18 nf={args.nf}, {args.max_train_per_task} training images per task, "
        f"{args.n_epochs} epochs, batch 32, buffer 500, seeds {args.seeds} · TDM every 2 epochs,"
        " DDR at epochs 1-3, DGM keep 0.8 refreshed every 10 steps\n",
        "| variant | Class-IL % | Task-IL % | forgetting (Class-IL) | FLOP reduction |",
        "|---|---|---|---|---|",
    ]

    def mean(values) -> str:
        values = list(values)
        spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.2f}{spread}"

    for name, results in rows.items():
        flops = [r["training_flops"]["reduction"] for r in results]
        lines.append(
            f"| {name} | {mean(r['average_class_il'] for r in results)} "
            f"| {mean(r['average_task_il'] for r in results)} "
            f"| {mean(r['forgetting_class_il'] for r in results)} "
            f"| {statistics.mean(flops):.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.9])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--nf", type=int, default=32)
    parser.add_argument("--n_epochs", type=int, default=5)
    parser.add_argument("--max_train_per_task", type=int, default=600)
    parser.add_argument("--data_dir")
    parser.add_argument("--output_dir", default="runs/accuracy")
    parser.add_argument("--markdown")
    parser.add_argument("--plot")
    args = parser.parse_args()
    data = load_dataset("seq-fmnist", args.data_dir)
    rows: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for name, overrides in variants(args.sparsities).items():
            settings = {**base_settings(args), "seed": seed, **overrides}
            config = TrainConfig.from_dict(settings, name, ignore_other_methods=True)
            config.validate()
            path = Path(args.output_dir) / f"{name.replace(' ', '_')}-s{seed}"
            print(f"{name}, seed {seed} -> {path}", flush=True)
            rows.setdefault(name, []).append(run_once(config, path, data))
    emit(table(rows, args), args.markdown)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
