"""Training precision: fp32, or bf16 autocast (``--precision bf16``).

Under ``bf16`` every forward of the network runs in ``torch.autocast`` on the network's device
with ``torch.bfloat16``: torch's dense convolutions and linear layers compute in bf16, the
parameters stay fp32 master weights, and the logits come back as fp32, so losses, the replay
buffer's logits and accuracies are computed in fp32 as in an fp32 run. The block-sparse ops
follow the autocast rules of sparcl_kernels.ops (on the CPU they run bf16 kernels where the
CPU has a bf16 dot-product instruction and compute in fp32 elsewhere; gradients reach the
fp32 ``values``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn

import sparcl_kernels as sk

PRECISIONS = ("fp32", "bf16")


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """The autocast region ``precision`` trains in on ``device`` (none for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
    if precision == "fp32":
        yield
        return
    with torch.autocast(device.type, dtype=torch.bfloat16):
        yield


def device_of(net: nn.Module) -> torch.device:
    """The device of ``net``'s first parameter (the CPU for a network without any)."""
    return next((p.device for p in net.parameters()), torch.device("cpu"))


def logits(net: nn.Module, inputs: torch.Tensor, precision: str) -> torch.Tensor:
    """``net(inputs)`` in ``precision``, returned as fp32."""
    with autocast(precision, device_of(net)):
        out = net(inputs)
    return out.float()


def warn_if_slow(precision: str, device: torch.device) -> None:
    """Warn when ``precision`` is bf16 on a CPU without a bf16 dot-product instruction: there
    torch's dense bf16 layers run without hardware support (a 2048x2048 linear's training step
    measured 128x slower than in fp32 on an AMD EPYC Zen 3, bench/RESULTS.md) and the sparse
    layers compute in fp32, so the run is slower than in fp32, not faster."""
    if precision != "bf16" or device.type != "cpu":
        return
    cpu = sk.backend_info()["backends"].get("cpu") or {}
    if cpu.get("bf16_dot_instruction"):
        return
    warnings.warn(
        "--precision bf16 on a CPU without a bf16 dot-product instruction (x86-64 AVX512_BF16, "
        "aarch64 FEAT_BF16): torch's dense bf16 layers run without hardware support, many "
        "times slower than fp32 (bench/RESULTS.md); use --precision fp32 on this CPU",
        stacklevel=2,
    )
