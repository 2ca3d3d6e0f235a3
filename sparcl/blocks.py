"""Block sides per layer: an explicit side, or a rule that picks one for each layer.

The rules were chosen by the block-shape study (bench/bench_accuracy.py --study blocks: Split
Fashion-MNIST, ResNet-18 nf=32, SparCL-DER++ at 0.9, 5 paired seeds, bench/RESULTS.md):
``largest`` (the default) gives each layer the largest side in RULE_SIDES that divides it,
which at nf=32 and 64 is 32 everywhere: the fastest variant (3.4-3.5x its dense twin's step
on a Zen 4) whose Class-IL is not below the release's unstructured masks (+1.5 points,
95 % interval [-0.5, +3.4]). ``auto``, the earlier default, takes the largest side that keeps
at least MIN_KEPT_BLOCKS units stored, i.e. 8x8 and 16x16 blocks in narrow layers: 2.3 points
more accurate than 32x32 at 2.7-2.8x, which 16x16 blocks everywhere match in speed and beat
in accuracy.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from torch import nn

import sparcl_kernels as sk

if TYPE_CHECKING:
    from sparcl.config import TrainConfig

BLOCK_RULES = ("largest", "auto")  # --block_size values besides a side
RULE_SIDES = (32, 16, 8)  # the sides a rule picks from, largest first
MIN_KEPT_BLOCKS = 8  # auto: a side must leave at least this many stored units at the sparsity


def _unit_grid(module: nn.Module, side: int, block_taps: str) -> int:
    """Units (what a layout change keeps or drops) of ``module`` at block side ``side``."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        taps = 1 if block_taps == "all" else kh * kw
        return (module.out_channels // side) * (taps * module.in_channels // side)
    return (module.out_features // side) * (module.in_features // side)


def block_sides(
    net: nn.Module, config: TrainConfig, sparse_layers: tuple[str, ...], report: bool
) -> dict[str, int]:
    """The block side of every layer to make sparse; layers no side fits are left out.

    An explicit ``--block_size`` applies to every layer it divides. ``largest`` gives each
    layer the largest side in RULE_SIDES that divides it; ``auto`` the largest at which at
    least MIN_KEPT_BLOCKS units stay stored (a 32-channel conv has 9 blocks of 32x32 and
    would keep 1 at 90%; with ``--block_taps all`` a unit is a channel pair over all taps),
    or the smallest that divides when none keeps that many. A block size that fits none of
    the layers is an error (the run would be dense under a sparse label); one that leaves
    some layers dense says which, with ``report``.
    """
    rule = config.block_size in BLOCK_RULES
    candidates = RULE_SIDES if rule else (int(config.block_size),)
    modules = dict(net.named_modules())
    plans = {side: sk.nn.plan_sparsify(net, side, include=sparse_layers) for side in candidates}
    selected = [
        d.name for d in plans[candidates[0]] if d.reason not in ("not included", "excluded")
    ]
    sides, left_dense = {}, []
    for name in selected:
        fitting = [
            side for side in candidates if any(d.name == name and d.sparse for d in plans[side])
        ]
        if not fitting:
            reason = next(d.reason for d in plans[candidates[-1]] if d.name == name)
            left_dense.append(f"{name} ({reason})")
            continue
        if config.block_size != "auto":
            sides[name] = fitting[0]
            continue
        kept = [
            s
            for s in fitting
            if (1 - config.sparsity) * _unit_grid(modules[name], s, config.block_taps)
            >= MIN_KEPT_BLOCKS
        ]
        sides[name] = kept[0] if kept else fitting[-1]
    if not sides:
        raise ValueError(
            f"--block_size {config.block_size} fits none of the layers to make sparse: "
            + "; ".join(left_dense)
        )
    if left_dense and report:
        print(
            f"sparcl: --block_size {config.block_size} leaves {len(left_dense)} of "
            f"{len(selected)} layers dense: {'; '.join(left_dense)}",
            file=sys.stderr,
        )
    return sides
