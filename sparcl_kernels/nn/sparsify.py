"""sparsify(): swap a model's eligible Linear / Conv2d layers for block-sparse ones."""

from __future__ import annotations

import copy
import fnmatch
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sparcl_kernels.layout import as_block_size
from sparcl_kernels.nn.conv import SparseConv2d, check_block_taps
from sparcl_kernels.nn.linear import SparseLinear

logger = logging.getLogger("sparcl_kernels")

Selector = Iterable[str] | Callable[[str, nn.Module], bool] | None


@dataclass(frozen=True)
class SparsifyDecision:
    """What :func:`sparsify` does with one Linear/Conv2d module, and why."""

    name: str
    kind: str
    sparse: bool
    reason: str


def _selected(selector: Selector, name: str, module: nn.Module) -> bool:
    if callable(selector):
        return bool(selector(name, module))
    if isinstance(selector, str):  # one pattern, not an iterable of one-letter patterns
        selector = (selector,)
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in selector)


def _shared_weights(model: nn.Module) -> dict[int, list[str]]:
    """Module names per weight tensor that more than one module holds (tied weights)."""
    holders: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter):
            holders.setdefault(id(weight), []).append(name)
    return {key: names for key, names in holders.items() if len(names) > 1}


def _ineligibility(module: nn.Module, block_size: tuple[int, int]) -> str | None:
    bm, bk = block_size
    if isinstance(module, nn.Linear):
        rows, cols = module.out_features, module.in_features
    else:
        if module.groups != 1:
            return f"groups={module.groups} (only groups=1 is supported)"
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return "padding must be explicit zero padding"
        rows, cols = module.out_channels, module.in_channels
    if rows % bm or cols % bk:
        return f"shape ({rows} out, {cols} in) not divisible by block size {block_size}"
    return None


def plan_sparsify(
    model: nn.Module,
    block_size: int | Sequence[int] = (32, 32),
    include: Selector = None,
    exclude: Selector = None,
) -> list[SparsifyDecision]:
    """The decision :func:`sparsify` would take for every Linear and Conv2d in ``model``.

    ``include`` / ``exclude`` are glob patterns over qualified module names (``"layer*.conv*"``)
    or a callable ``(name, module) -> bool``. A module is swapped if it is included (everything
    is when ``include`` is None), not excluded, and its shape fits the block size.
    """
    block = as_block_size(block_size)
    shared = _shared_weights(model)
    decisions = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | nn.Conv2d) or isinstance(
            module, SparseLinear | SparseConv2d
        ):
            continue
        kind = type(module).__name__
        if include is not None and not _selected(include, name, module):
            decisions.append(SparsifyDecision(name, kind, False, "not included"))
        elif exclude is not None and _selected(exclude, name, module):
            decisions.append(SparsifyDecision(name, kind, False, "excluded"))
        elif id(module.weight) in shared:
            others = [n for n in shared[id(module.weight)] if n != name]
            reason = (
                f"weight tied to {', '.join(others)} (one block-sparse values tensor per layer)"
            )
            decisions.append(SparsifyDecision(name, kind, False, reason))
        elif (problem := _ineligibility(module, block)) is not None:
            decisions.append(SparsifyDecision(name, kind, False, problem))
        else:
            decisions.append(SparsifyDecision(name, kind, True, "sparse"))
    return decisions


def sparsify(
    model: nn.Module,
    sparsity: float = 0.9,
    block_size: int | Sequence[int] = (32, 32),
    include: Selector = None,
    exclude: Selector = None,
    inplace: bool = True,
    memory_format: torch.memory_format | None = torch.channels_last,
    block_taps: str = "each",
) -> nn.Module:
    """Replace eligible ``nn.Linear`` / ``nn.Conv2d`` modules with block-sparse equivalents.

    Each swapped layer keeps the largest-norm blocks of its current weight. Modules left dense
    are logged with the reason (``plan_sparsify`` returns the same decisions as data).
    When a convolution was swapped, the model is converted to ``memory_format``
    (``model.to(memory_format=...)``; ``None`` leaves it as it is): channels-last by default,
    because the block-sparse convolutions compute in channels-last, so a channels-last model
    runs them without layout copies and its dense convolutions, BatchNorm and element-wise
    ops stay in one format (NCHW inputs need no change: the first channels-last convolution
    switches the activations over). Returns the model (a modified deep copy when ``inplace``
    is False). ``block_taps`` is the convolutions' unit (:class:`SparseConv2d`): ``"each"``
    tap's block, or ``"all"`` taps of a channel block together.
    """
    check_block_taps(block_taps)
    if not inplace:
        model = copy.deepcopy(model)
    decisions = plan_sparsify(model, block_size, include, exclude)
    modules = dict(model.named_modules())
    for decision in decisions:
        if not decision.sparse:
            logger.info(
                "sparsify: %s (%s) stays dense: %s", decision.name, decision.kind, decision.reason
            )
            continue
        module = modules[decision.name]
        if isinstance(module, nn.Linear):
            replacement = SparseLinear.from_dense(module, sparsity, block_size)
        else:
            replacement = SparseConv2d.from_dense(module, sparsity, block_size, block_taps)
        parent_name, _, child_name = decision.name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child_name, replacement)
        logger.info("sparsify: %s (%s) -> block-sparse", decision.name, decision.kind)
    swapped_conv = any(d.sparse and isinstance(modules[d.name], nn.Conv2d) for d in decisions)
    if swapped_conv and memory_format is not None:
        model.to(memory_format=memory_format)
    return model
