"""Bytes all-reduced per training step under torchrun: dense DER++ vs block-sparse SparCL-DER++.

Runs short 2-rank gloo trainings (debug mode: 3 steps per epoch) of the CIFAR-stem ResNet-18
on Split Fashion-MNIST and reads the bytes that the gradient all-reduce actually sent (counted
by sparcl.distributed per step) from each run's results.json.

    python bench/bench_distributed.py --markdown /tmp/dist.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from timing import emit


def run(model: str, sparsity: float, nf: int, ranks: int, data_dir: str | None) -> dict:
    with tempfile.TemporaryDirectory() as output:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={ranks}", "-m", "sparcl", "train", "--model", model,
            "--nf", str(nf), "--sparsity", str(sparsity), "--block_size", "32",
            "--n_epochs", "1", "--debug_mode", "1", "--quiet", "--output_dir", output,
        ]  # fmt: skip
        if data_dir:
            command += ["--data_dir", data_dir]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(command, check=True, env=env, capture_output=True)
        (results,) = Path(output).glob("*/results.json")
        return json.loads(results.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nf", type=int, default=64)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.95])
    parser.add_argument("--data_dir")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    rows = {"dense DER++": run("derpp", 0.0, args.nf, args.ranks, args.data_dir)}
    for sparsity in args.sparsities:
        rows[f"SparCL-DER++ block {sparsity:g}"] = run(
            "sparcl-derpp", sparsity, args.nf, args.ranks, args.data_dir
        )
    dense = rows["dense DER++"]["distributed"]["allreduce_bytes_per_step"]
    lines = [
        f"{datetime.date.today()} · torch {torch.__version__} · {args.ranks} gloo ranks on one "
        f"machine · ResNet-18 nf={args.nf} · fp32 gradients, one flat all-reduce per step\n",
        "| variant | MB all-reduced per step | vs dense |",
        "|---|---|---|",
    ]
    for name, results in rows.items():
        sent = results["distributed"]["allreduce_bytes_per_step"]
        lines.append(f"| {name} | {sent / 1e6:.2f} | {sent / dense:.1%} |")
    emit("\n".join(lines), args.markdown)


if __name__ == "__main__":
    main()
