"""The paired accuracy study: dense DER++, SparCL-DER++ masked-dense (the release's way) and
SparCL-DER++ block-sparse (the fast path), with ablations of TDM, DDR and DGM, on all five
tasks of Split Fashion-MNIST.

Every variant of a seed sees the same data (the same training subset, epoch orders and
augmentation: results.json's data_fingerprint, checked here), so variants are compared by
paired differences per seed, with 95% t-intervals. Runs go seed by seed, all variants of a
seed in turn, so that machine drift spreads over every variant alike. Each run keeps its run
directory under --output_dir and a finished run is reused, so an interrupted study resumes
where it stopped; the per-run summary goes to --csv and the tables to --markdown.

    python bench/bench_accuracy.py --seeds 0 1 2 3 4 --markdown /tmp/acc.md \\
        --csv bench/accuracy_study.csv --plot bench/accuracy.png
"""

from __future__ import annotations

import argparse
import csv
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

FULL = "SparCL-DER++ block"  # the variant the ablations and the masked-dense twin pair with
METRICS = ("average_class_il", "average_task_il", "forgetting_class_il")
# Two-sided 95% Student t quantiles by degrees of freedom (n seeds - 1).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def variants(sparsities: list[float]) -> dict[str, dict]:
    """Name -> the settings that make each variant (over base_settings)."""
    table = {"dense DER++": {"model": "derpp"}}
    for sparsity in sparsities:
        suffix = "" if sparsity == 0.9 else f" {sparsity:g}"
        for granularity, label in (("unstructured", "masked-dense"), ("block", "block")):
            table[f"SparCL-DER++ {label}{suffix}"] = {
                "model": "sparcl-derpp",
                "sparsity": sparsity,
                "granularity": granularity,
            }
    full = table[FULL]
    table[f"{FULL}, no TDM (static mask)"] = {**full, "tdm_p_inter": 0.0, "tdm_p_intra": 0.0}
    table[f"{FULL}, no DDR"] = {**full, "ddr_fraction": 0.0}
    table[f"{FULL}, no DGM"] = {**full, "dgm_keep": 1.0}
    return table


def base_settings(args: argparse.Namespace) -> dict:
    """Settings every variant shares (SparCL's apply to the SparCL variants only): the
    DER++ entry of --config best, current-task logit masking for all (the release's SparCL
    default; on for dense too so that it is not what the pairs measure), SparCL's paper
    schedule mapped onto n_epochs."""
    return {
        "dataset": "seq-fmnist",
        "nf": args.nf,
        "n_epochs": args.n_epochs,
        "max_train_per_task": args.max_train_per_task,
        "buffer_size": args.buffer_size,
        "lr": 0.03,
        "alpha": 0.2,
        "beta": 0.5,
        "mask_current_logits": True,
        "schedule": "scaled",
        "data_dir": args.data_dir,
        "quiet": True,
        "speedup_repeats": 0,  # speed is bench_sparcl.py's job, on a quiet machine
    }


def run_once(config: TrainConfig, path: Path, data) -> dict:
    results_file = path / "results.json"
    if results_file.exists():
        return json.loads(results_file.read_text())
    resume = (path / "checkpoints" / "latest.txt").exists()
    return train(config, RunDir(path), resume=resume, data=data)


def summary_row(name: str, seed: int, results: dict) -> dict:
    return {
        "variant": name,
        "seed": seed,
        **{metric: round(results[metric], 3) for metric in METRICS},
        "flop_reduction": round(results["training_flops"]["reduction"], 3),
        "gradient_density": results["gradient_density"],
        "training_seconds": results["training_seconds"],
        "data_fingerprint": ",".join(results["data_fingerprint"]),
    }


def mean_std(values: list[float]) -> str:
    spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.2f}{spread}"


def paired_interval(differences: list[float]) -> str:
    """Mean paired difference with its 95% t-interval."""
    mean = statistics.mean(differences)
    if len(differences) < 2:
        return f"{mean:+.2f} (one seed)"
    half = T95[len(differences) - 1] * statistics.stdev(differences) / len(differences) ** 0.5
    return f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"


def tables(rows: list[dict], args: argparse.Namespace) -> str:
    by_variant: dict[str, dict[int, dict]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], {})[row["seed"]] = row
    seeds = sorted({row["seed"] for row in rows})
    lines = [
        f"{datetime.date.today()} · torch {torch.__version__} · {torch.get_num_threads()} "
        f"threads · ResNet-18 nf={args.nf}, Split Fashion-MNIST 5 tasks, "
        f"{args.max_train_per_task} training images per task, {args.n_epochs} epochs, batch 32, "
        f"buffer {args.buffer_size}, DER++ alpha 0.2 beta 0.5, current-task logit masking, "
        f"block size auto, SparCL schedule scaled to {args.n_epochs} epochs · seeds {seeds}\n",
        "| variant | Class-IL % | Task-IL % | forgetting (Class-IL) | FLOP reduction | "
        "training s |",
        "|---|---|---|---|---|---|",
    ]
    for name, per_seed in by_variant.items():
        runs = list(per_seed.values())
        cells = [mean_std([r[m] for r in runs]) for m in METRICS]
        flops = statistics.mean(r["flop_reduction"] for r in runs)
        seconds = statistics.mean(r["training_seconds"] for r in runs)
        lines.append(f"| {name} | {' | '.join(cells)} | {flops:.2f}x | {seconds:.0f} |")
    lines += [
        "",
        "Paired differences (first minus second, same seed and data), mean [95% t-interval]:",
        "",
        "| comparison | Class-IL points | Task-IL points |",
        "|---|---|---|",
    ]
    for first, second in comparisons(list(by_variant)):
        common = sorted(set(by_variant[first]) & set(by_variant[second]))
        cells = [
            paired_interval([by_variant[first][s][m] - by_variant[second][s][m] for s in common])
            for m in METRICS[:2]
        ]
        lines.append(f"| {first} minus {second} | {' | '.join(cells)} |")
    return "\n".join(lines)


def comparisons(names: list[str]) -> list[tuple[str, str]]:
    pairs = [(FULL, "SparCL-DER++ masked-dense"), (FULL, "dense DER++")]
    pairs += [(name, FULL) for name in names if name.startswith(f"{FULL},")]
    pairs += [
        (name, name.replace("block", "masked-dense"))
        for name in names
        if name.startswith(FULL + " ") and "," not in name
    ]
    return [(a, b) for a, b in pairs if a in names and b in names]


def check_pairing(rows: list[dict]) -> None:
    """Every variant of a seed trained on the same data (else the pairs mean nothing)."""
    for seed in {row["seed"] for row in rows}:
        prints = {row["data_fingerprint"] for row in rows if row["seed"] == seed}
        if len(prints) != 1:
            raise RuntimeError(f"seed {seed}: variants saw different data ({prints})")


def plot(rows: list[dict], target: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(row["variant"] for row in rows))
    figure, axis = plt.subplots(figsize=(11, 4.5))
    width = 0.38
    for offset, key, label in ((-width / 2, "average_class_il", "Class-IL"),
                               (width / 2, "average_task_il", "Task-IL")):  # fmt: skip
        values = [[r[key] for r in rows if r["variant"] == n] for n in names]
        means = [statistics.mean(v) for v in values]
        spreads = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        positions = [i + offset for i in range(len(names))]
        bars = axis.bar(positions, means, width, yerr=spreads, capsize=3, label=label)
        axis.bar_label(bars, fmt="%.1f", fontsize=7)
    labels = [n.replace("SparCL-DER++ ", "SparCL\n").replace(", ", "\n") for n in names]
    axis.set_xticks(range(len(names)), labels, fontsize=8)
    seeds = len({row["seed"] for row in rows})
    title = f"Split Fashion-MNIST, mean ± std over {seeds} paired seed(s)"
    axis.set(ylabel="average accuracy after 5 tasks (%)", ylim=(0, 105), title=title)
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(target, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.9])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--nf", type=int, default=16)
    parser.add_argument("--n_epochs", type=int, default=10)
    parser.add_argument("--max_train_per_task", type=int, default=1000)
    parser.add_argument("--buffer_size", type=int, default=200)
    parser.add_argument("--data_dir")
    parser.add_argument("--output_dir", default="runs/accuracy-study")
    parser.add_argument("--csv", help="per-run summary (committed with the tables)")
    parser.add_argument("--markdown")
    parser.add_argument("--plot")
    args = parser.parse_args()
    data = load_dataset("seq-fmnist", args.data_dir)
    rows = []
    for seed in args.seeds:
        for name, overrides in variants(args.sparsities).items():
            settings = {**base_settings(args), "seed": seed, **overrides}
            config = TrainConfig.from_dict(settings, name, ignore_other_methods=True)
            config.validate()
            path = Path(args.output_dir) / f"{name.replace(' ', '_').replace(',', '')}-s{seed}"
            print(f"{name}, seed {seed} -> {path}", flush=True)
            rows.append(summary_row(name, seed, run_once(config, path, data)))
            if args.csv:  # after every run, so that a crash loses nothing already measured
                with open(args.csv, "w", newline="") as handle:
                    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                    writer.writeheader()
                    writer.writerows(rows)
    check_pairing(rows)
    emit(tables(rows, args), args.markdown)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
