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

``--study blocks`` is the block-shape study (issue 28): dense DER++, the release's unstructured
masks, per-tap blocks 8/16/32, all-taps blocks 16/32 and ``--block_size auto`` at 0.9, ResNet-18
nf=32, paired against the unstructured variant. Its speed side is measured apart, on a quiet
machine: ``--speed`` times each variant's trained network (its final checkpoint, seed
``--speed_seed``) against its dense twin in one process, interleaved (sparcl.speedup), and
writes --speed_csv; the tables and the plot (accuracy against step speedup) read it.

    python bench/bench_accuracy.py --study blocks --seeds 0 1 2 3 4 \\
        --csv bench/block_study.csv --markdown bench/block_study.md
    python bench/bench_accuracy.py --study blocks --speed --speed_csv bench/block_study_speed.csv

``--study precision`` (issue 27) pairs block-sparse SparCL-DER++ at 0.9 in fp32 with the same
run under CPU bf16 autocast (``--block_size`` picks the blocks), on the blocks study's network
and budget:

    python bench/bench_accuracy.py --study precision --seeds 0 1 2 3 4 \\
        --csv bench/precision_study.csv --markdown bench/precision_study.md
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
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
UNSTRUCTURED = "SparCL-DER++ masked-dense"  # what the block-shape study pairs with
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


def block_variants() -> dict[str, dict]:
    """The block-shape study's variants: block side and tap policy against the release."""
    sparcl = {"model": "sparcl-derpp", "sparsity": 0.9}
    table = {
        "dense DER++": {"model": "derpp"},
        UNSTRUCTURED: {**sparcl, "granularity": "unstructured"},
    }
    for side in (8, 16, 32):
        table[f"per-tap {side}x{side}"] = {**sparcl, "block_size": str(side)}
    for side in (16, 32):
        table[f"all-taps {side}x{side}"] = {**sparcl, "block_size": str(side), "block_taps": "all"}
    table["auto (per-tap)"] = {**sparcl, "block_size": "auto"}
    return table


FP32, BF16 = "SparCL-DER++ fp32", "SparCL-DER++ bf16"  # the precision study's pair


def precision_variants(block_size: str) -> dict[str, dict]:
    """The bf16 study (issue 27): block-sparse SparCL-DER++ at 0.9 in fp32 and with every
    forward under CPU bf16 autocast (bf16 kernels where the CPU has the instruction)."""
    sparcl = {"model": "sparcl-derpp", "sparsity": 0.9, "block_size": block_size}
    return {FP32: sparcl, BF16: {**sparcl, "precision": "bf16"}}


def study_variants(args: argparse.Namespace) -> dict[str, dict]:
    if args.study == "blocks":
        return block_variants()
    if args.study == "precision":
        return precision_variants(args.block_size)
    return variants(args.sparsities)


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


def tables(rows: list[dict], args: argparse.Namespace, speed: dict[str, dict]) -> str:
    by_variant: dict[str, dict[int, dict]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], {})[row["seed"]] = row
    seeds = sorted({row["seed"] for row in rows})
    blocks = {"blocks": "block shape per variant", "precision": f"block size {args.block_size}"}
    blocks = blocks.get(args.study, "block size auto")
    lines = [
        f"{datetime.date.today()} · torch {torch.__version__} · {torch.get_num_threads()} "
        f"threads · ResNet-18 nf={args.nf}, Split Fashion-MNIST 5 tasks, "
        f"{args.max_train_per_task} training images per task, {args.n_epochs} epochs, batch 32, "
        f"buffer {args.buffer_size}, DER++ alpha 0.2 beta 0.5, current-task logit masking, "
        f"{blocks}, SparCL schedule scaled to {args.n_epochs} epochs · seeds {seeds}\n",
        "| variant | Class-IL % | Task-IL % | forgetting (Class-IL) | FLOP reduction | "
        "training s | step speedup vs dense twin |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, per_seed in by_variant.items():
        runs = list(per_seed.values())
        cells = [mean_std([r[m] for r in runs]) for m in METRICS]
        flops = statistics.mean(r["flop_reduction"] for r in runs)
        seconds = statistics.mean(r["training_seconds"] for r in runs)
        measured = f"{float(speed[name]['measured_speedup']):.2f}x" if name in speed else "-"
        lines.append(
            f"| {name} | {' | '.join(cells)} | {flops:.2f}x | {seconds:.0f} | {measured} |"
        )
    if speed:
        first = next(iter(speed.values()))
        lines.append(
            f"\nStep speedup: one training step of the variant's trained network (seed "
            f"{first['seed']}) against its dense twin in its faster memory format, timed "
            f"interleaved in one process on {first['cpu']}, {first['threads']} threads, "
            f"batch 32 (`--speed`)."
        )
    lines += [
        "",
        "Paired differences (first minus second, same seed and data), mean [95% t-interval]:",
        "",
        "| comparison | Class-IL points | Task-IL points |",
        "|---|---|---|",
    ]
    for first, second in comparisons(list(by_variant), args.study):
        common = sorted(set(by_variant[first]) & set(by_variant[second]))
        cells = [
            paired_interval([by_variant[first][s][m] - by_variant[second][s][m] for s in common])
            for m in METRICS[:2]
        ]
        lines.append(f"| {first} minus {second} | {' | '.join(cells)} |")
    return "\n".join(lines)


def comparisons(names: list[str], study: str) -> list[tuple[str, str]]:
    if study == "blocks":  # every variant against the release's masks
        return [(name, UNSTRUCTURED) for name in names if name != UNSTRUCTURED]
    if study == "precision":
        return [(BF16, FP32)] if {BF16, FP32} <= set(names) else []
    pairs = [(FULL, UNSTRUCTURED), (FULL, "dense DER++")]
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


def pareto_plot(rows: list[dict], speed: dict[str, dict], target: str) -> None:
    """Class-IL (mean, 95% interval of the paired difference to the unstructured variant)
    against the measured step speedup: the accuracy-versus-wall-clock front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = {r["seed"]: r["average_class_il"] for r in rows if r["variant"] == UNSTRUCTURED}
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["variant"] for r in rows):
        if name not in speed:
            continue
        runs = [r for r in rows if r["variant"] == name]
        mean = statistics.mean(r["average_class_il"] for r in runs)
        diffs = [r["average_class_il"] - base[r["seed"]] for r in runs if r["seed"] in base]
        half = 0.0
        if len(diffs) > 1:
            half = T95[len(diffs) - 1] * statistics.stdev(diffs) / len(diffs) ** 0.5
        x = float(speed[name]["measured_speedup"])
        axis.errorbar(x, mean, yerr=half, fmt="o", capsize=4)
        axis.annotate(name, (x, mean), textcoords="offset points", xytext=(5, 4), fontsize=8)
    seeds = len({r["seed"] for r in rows})
    axis.set(
        xlabel="training-step speedup over the dense twin (measured)",
        ylabel="average Class-IL after 5 tasks (%)",
        title=f"Split Fashion-MNIST, {seeds} paired seed(s); bars: 95% paired interval",
    )
    axis.grid(alpha=0.3)
    axis.margins(x=0.15)  # room for the labels of the outermost points
    figure.tight_layout()
    figure.savefig(target, dpi=100)
    plt.close(figure)


def variant_config(args: argparse.Namespace, name: str, overrides: dict, seed: int):
    settings = {**base_settings(args), "seed": seed, **overrides}
    config = TrainConfig.from_dict(settings, name, ignore_other_methods=True)
    config.validate()
    path = Path(args.output_dir) / f"{name.replace(' ', '_').replace(',', '')}-s{seed}"
    return config, path


# Where each study keeps its runs. The block and precision studies' finished runs are committed
# (results, trained layouts; not the checkpoints), so that they resume across sessions and
# machines.
OUTPUT_DIRS = {
    "ablations": "runs/accuracy-study",
    "blocks": "bench/block-study",
    "precision": "bench/precision-study",
}

LAYOUTS = "trained_layouts.pt"  # a finished run's block masks (committed; checkpoints are not)


def keep_trained_layouts(path: Path) -> None:
    """Saves the block masks of a finished run's network beside its results: its step time
    depends on them only, and they are small enough to commit with the study."""
    if (path / LAYOUTS).exists():
        return
    found = RunDir(path).latest_checkpoint()
    if found is not None:
        masks = {k: v for k, v in found[1]["net"].items() if k.endswith(".block_mask")}
        torch.save(masks, path / LAYOUTS)


def trained_network(config: TrainConfig, path: Path, data) -> torch.nn.Module | None:
    """The variant's network with its trained layouts (None when the run has not finished)."""
    from sparcl.train import build_network

    if not (path / "results.json").exists():
        return None
    net = build_network(config, data)
    if (path / LAYOUTS).exists():  # the values do not change a step's time, the layout does
        masks = torch.load(path / LAYOUTS)
        for name, module in net.named_modules():
            if f"{name}.block_mask" in masks:
                module.set_block_mask(masks[f"{name}.block_mask"], optimizer=None)
        return net
    found = RunDir(path).latest_checkpoint()
    if found is None:
        return None
    net.load_state_dict(found[1]["net"])
    return net


def measure_speed(args: argparse.Namespace, data) -> None:
    """Each variant's trained network against its dense twin, on a quiet machine."""
    from sparcl.speedup import realization
    from sparcl.train import build_network
    from sparcl_kernels.measure import cpu_model

    rows = []
    for name, overrides in study_variants(args).items():
        config, path = variant_config(args, name, overrides, args.speed_seed)
        net = trained_network(config, path, data)
        if net is None:
            print(f"{name}: no finished run at {path}, skipped", flush=True)
            continue
        dense = build_network(dataclasses.replace(config, sparsity=0.0), data)
        protocol = data.protocol
        shape = (protocol.channels, protocol.image_size, protocol.image_size)
        # Channels-last, as sparsify leaves block-sparse networks: dense and masked-dense
        # variants then run in the format their dense twin is fastest in on these CPUs.
        net = net.to(memory_format=torch.channels_last)
        measured = realization(net, dense, shape, batch_size=32, repeats=args.speed_repeats)
        rows.append(
            {
                "variant": name,
                "seed": args.speed_seed,
                **measured,
                "cpu": cpu_model(),
                "threads": torch.get_num_threads(),
            }
        )
        print(f"{name}: {measured['measured_speedup']:.2f}x", flush=True)
        write_csv(rows, args.speed_csv)


def write_csv(rows: list[dict], target: str | None) -> None:
    if target and rows:  # after every run, so that a crash loses nothing already measured
        with open(target, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def read_rows(target: str | None) -> list[dict]:
    """The per-run rows already in ``target`` (numbers as numbers), or none."""
    if not target or not Path(target).exists():
        return []
    with open(target, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["seed"] = int(row["seed"])
        for key in (*METRICS, "flop_reduction", "gradient_density", "training_seconds"):
            row[key] = float(row[key]) if row.get(key) not in (None, "") else None
    return rows


def merge_rows(earlier: list[dict], fresh: list[dict]) -> list[dict]:
    """``earlier`` rows without the (variant, seed) runs ``fresh`` redid, then ``fresh``: a run
    over some seeds keeps the summary of the others (it once overwrote seed 0 with seed 1)."""
    redone = {(row["variant"], row["seed"]) for row in fresh}
    kept = [row for row in earlier if (row["variant"], row["seed"]) not in redone]
    return sorted(kept + fresh, key=lambda row: row["seed"])


def read_speed(target: str | None) -> dict[str, dict]:
    if not target or not Path(target).exists():
        return {}
    with open(target, newline="") as handle:
        return {row["variant"]: row for row in csv.DictReader(handle)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=tuple(OUTPUT_DIRS), default="ablations")
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.9])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument(
        "--nf", type=int, help="default 16; the blocks and precision studies: 32 (the main job's)"
    )
    parser.add_argument(
        "--block_size", default=TrainConfig.block_size, help="the precision study's blocks"
    )
    parser.add_argument("--n_epochs", type=int, default=10)
    parser.add_argument("--max_train_per_task", type=int, default=1000)
    parser.add_argument("--buffer_size", type=int, default=200)
    parser.add_argument("--data_dir")
    parser.add_argument("--output_dir", help="default: per study, see OUTPUT_DIRS")
    parser.add_argument("--csv", help="per-run summary (committed with the tables)")
    parser.add_argument("--markdown")
    parser.add_argument("--plot")
    parser.add_argument("--speed", action="store_true", help="time the trained networks only")
    parser.add_argument("--speed_seed", type=int, default=0)
    parser.add_argument("--speed_repeats", type=int, default=7)
    parser.add_argument("--speed_csv", help="step speedups (written by --speed, read by tables)")
    args = parser.parse_args()
    blocks = args.study == "blocks"
    args.nf = args.nf or (16 if args.study == "ablations" else 32)
    args.output_dir = args.output_dir or OUTPUT_DIRS[args.study]
    data = load_dataset("seq-fmnist", args.data_dir)
    if args.speed:
        measure_speed(args, data)
        return
    earlier, rows = read_rows(args.csv), []
    for seed in args.seeds:
        for name, overrides in study_variants(args).items():
            config, path = variant_config(args, name, overrides, seed)
            print(f"{name}, seed {seed} -> {path}", flush=True)
            rows.append(summary_row(name, seed, run_once(config, path, data)))
            if seed == args.speed_seed:
                keep_trained_layouts(path)
            write_csv(merge_rows(earlier, rows), args.csv)
    rows = merge_rows(earlier, rows)
    check_pairing(rows)
    speed = read_speed(args.speed_csv)
    emit(tables(rows, args, speed), args.markdown)
    if args.plot:
        if blocks and speed:
            pareto_plot(rows, speed, args.plot)
        else:
            plot(rows, args.plot)


if __name__ == "__main__":
    main()
