"""The C++/OpenMP CPU backend (csrc/cpu), built by setup.py as ``sparcl_kernels._cpu``.

The extension holds one copy of the kernels per instruction set (x86-64: baseline SSE2, AVX2
+ FMA, AVX-512F; aarch64: NEON; elsewhere: portable C++) and uses the best one this CPU runs;
``$SPARCL_CPU_ISA`` forces one. Importing this module raises ``ImportError`` when the
extension was not built; the registry turns that into a visible fallback. Kernels run on as
many threads as ``torch.get_num_threads()``.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from torch.utils.weak import WeakIdKeyDictionary

from sparcl_kernels import _cpu
from sparcl_kernels.geometry import ConvGeometry
from sparcl_kernels.layout import BlockLayout

NAME = "cpu"
SUPPORTED_DTYPES = (torch.float32, torch.float64)
ISA_ENV_VAR = "SPARCL_CPU_ISA"
ISA_NAMES = ("baseline", "avx2", "avx512", "neon")
BF16_ENV_VAR = "SPARCL_CPU_BF16"
BF16_KERNEL_CHOICES = ("native", "emulated")


def supports_device(device: torch.device) -> bool:
    return device.type == "cpu"


def supports_block_size(block_size: tuple[int, int]) -> bool:
    return True  # any block size; the micro-kernels tile the block's sides


def select_isa(name: str | None = None, vector_width: int = 0, *, source: str = "isa") -> None:
    """Run the CPU kernels with instruction set ``name`` (None: the best this CPU runs).

    ``vector_width`` (4, 8 or 16 floats; 0 = the instruction set's own) caps the fp32 vector
    width; a width above the hardware's runs split vectors, which the tests use to cover the
    AVX-512 tiling on any CPU. Raises ``ValueError`` naming ``source`` when ``name`` is not an
    instruction set, is not compiled into this build, or this CPU cannot run it.
    """
    if name is not None and name not in ISA_NAMES:
        raise ValueError(f"{source} must be one of {ISA_NAMES}, got {name!r}")
    problem = _cpu.select_isa(name or "", vector_width)
    if problem:
        raise ValueError(f"{source}={name!r}: {problem}")


def select_bf16_kernels(name: str | None = None, *, source: str = "name") -> None:
    """Choose the bf16 kernels that CPU bf16 autocast runs the sparse layers with.

    ``None``: the pair dot-product instruction's kernels where the CPU has one (x86-64
    AVX512_BF16, aarch64 FEAT_BF16), else none (autocast then computes these ops in fp32, as
    with any op without bf16 kernels). ``"native"`` insists on the instruction. ``"emulated"``
    runs the same kernels with the pair product emulated in fp32 on any CPU: correct, but
    8-11x slower than the fp32 kernels on a Zen 3 (bench/RESULTS.md), for testing the bf16
    path where the instruction is missing. Raises
    ``ValueError`` naming ``source`` for another name or "native" without the instruction.
    """
    if name is not None and name not in BF16_KERNEL_CHOICES:
        raise ValueError(f"{source} must be one of {BF16_KERNEL_CHOICES}, got {name!r}")
    problem = _cpu.select_bf16_kernels(name or "")
    if problem:
        raise ValueError(f"{source}={name!r}: {problem}")


def bf16_kernels() -> str | None:
    """The bf16 kernels CPU bf16 autocast uses: "avx512bf16", "bfdot", "emulated" (only when
    selected), or None (the ops compute in fp32 under bf16 autocast)."""
    return _cpu.bf16_kernels() or None


def takes_bf16_autocast(block_size: tuple[int, int]) -> bool:
    """Whether a layer (linear or convolution) with ``block_size`` blocks runs bf16 kernels
    under CPU bf16 autocast (bf16 activations, fp32 master values and weight gradient)."""
    return bf16_kernels() is not None and bool(_cpu.bf16_blocks_fit(*block_size))


def describe() -> dict[str, Any]:
    return {
        "isa": _cpu.active_isa(),
        "vector_width": _cpu.active_vector_width(),
        "compiled_isas": _cpu.compiled_isas(),
        "supported_isas": _cpu.supported_isas(),
        "forced_isa": os.environ.get(ISA_ENV_VAR) or None,
        "openmp": _cpu.openmp(),
        "threads": torch.get_num_threads() if _cpu.openmp() else 1,
        # The kernels CPU bf16 autocast runs the sparse layers with, or None: then the ops
        # compute in fp32 under bf16 autocast.
        "bf16_kernels": bf16_kernels(),
        "forced_bf16_kernels": os.environ.get(BF16_ENV_VAR) or None,
        # The bf16 dot-product instruction of this CPU ("avx512bf16", "bfdot"), if any.
        "bf16_dot_instruction": _cpu.bf16_dot_instruction() or None,
    }


def fma_peak(threads: int | None = None, seconds: float = 0.3) -> float:
    """The measured fp32 multiply-add peak (GFLOP/s) of the instruction set in use, at its
    native vector width, on ``threads`` threads together (default: the kernels' thread count).

    Independent multiply-add chains in registers, after a warm-up, at their best of ten
    short timed runs, each thread timed by its own CPU time where the threads have a CPU each
    (so that time the OS gives to other work on a shared host does not lower the peak; wall
    time where they outnumber the CPUs): the limit a kernel's GFLOP/s on stored blocks is
    compared with. It takes about ``seconds`` (at least 0.01).
    """
    return float(_cpu.fma_peak(_probe_threads(threads), max(float(seconds), 0.01)))


def bf16_dot_peak(threads: int | None = None, seconds: float = 0.3) -> float:
    """The measured peak (GFLOP/s) of this CPU's bf16 pair dot-product instruction
    (``describe()["bf16_dot_instruction"]``: each fp32 lane adds two bf16 products per
    instruction) on ``threads`` threads together, as :func:`fma_peak` measures the fp32 one.

    Raises ``RuntimeError`` when the CPU has no such instruction (x86-64 without AVX512_BF16,
    aarch64 without FEAT_BF16).
    """
    if not _cpu.bf16_dot_instruction():
        raise RuntimeError(
            "this CPU has no bf16 dot-product instruction (x86-64 AVX512_BF16 or aarch64 "
            "FEAT_BF16), so there is no bf16 peak to measure"
        )
    return float(_cpu.bf16_dot_peak(_probe_threads(threads), max(float(seconds), 0.01)))


def _probe_threads(threads: int | None) -> int:
    """The peak probes' thread count: the kernels' own by default."""
    if threads is None:
        threads = torch.get_num_threads() if _cpu.openmp() else 1
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return int(threads)


select_isa(os.environ.get(ISA_ENV_VAR) or None, source=f"${ISA_ENV_VAR}")
select_bf16_kernels(os.environ.get(BF16_ENV_VAR) or None, source=f"${BF16_ENV_VAR}")

# bf16 activations with fp32 values: the mixed-precision passes of CPU bf16 autocast.
_BF16 = torch.bfloat16


def forward(
    x: torch.Tensor, values: torch.Tensor, layout: BlockLayout, bias: torch.Tensor | None
) -> torch.Tensor:
    bias = None if bias is None else bias.contiguous()
    if x.dtype == _BF16:
        bias = None if bias is None else bias.float()
        return _cpu.forward_bf16(x, packed_bf16_blocks(values, False), *layout.tensors(), bias)
    return _cpu.forward(x, values, *layout.tensors(), bias, transposed_blocks(values))


def grad_input(grad_out: torch.Tensor, values: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    if grad_out.dtype == _BF16:
        return _cpu.grad_input_bf16(grad_out, packed_bf16_blocks(values, True), *layout.tensors())
    return _cpu.grad_input(grad_out, values, *layout.tensors())


def grad_weight(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    layout: BlockLayout,
    grad_block_mask: torch.Tensor | None,
) -> torch.Tensor:
    mask = None if grad_block_mask is None else grad_block_mask.contiguous()
    if _BF16 in (x.dtype, grad_out.dtype):
        # The fp32 gradient of the fp32 master values.
        grad_out, x = grad_out.to(_BF16).contiguous(), x.to(_BF16).contiguous()
        return _cpu.grad_weight_bf16(grad_out, x, *layout.block_size, *layout.tensors(), mask)
    return _cpu.grad_weight(grad_out, x, *layout.block_size, *layout.tensors(), mask)


def conv_forward(
    x: torch.Tensor,
    values: torch.Tensor,
    layout: BlockLayout,
    bias: torch.Tensor | None,
    geometry: ConvGeometry,
) -> torch.Tensor:
    bias = None if bias is None else bias.contiguous()
    if x.dtype == _BF16:
        bias = None if bias is None else bias.float()
        packed = packed_bf16_blocks(values, False)
        return _cpu.conv_forward_bf16(x, packed, *layout.tensors(), bias, list(geometry))
    return _cpu.conv_forward(
        x, values, *layout.tensors(), bias, list(geometry), transposed_blocks(values)
    )


@functools.cache
def _derived_cache() -> WeakIdKeyDictionary:
    # values tensor -> {kind: ((its version, data pointer, shape), the derived copy)}. Weak
    # keys: an entry lives as long as the values it was made from.
    return WeakIdKeyDictionary()


def _derived_copy(values: torch.Tensor, kind: str, make) -> torch.Tensor:
    """``make(values.detach())``, kept between calls until ``values`` changes.

    The copy is remade whenever ``values._version`` moves (every in-place write through the
    tensor or its ``detach()``: optimizer steps, ``load_state_dict``, layout updates), its
    storage or shape changes. Writes through ``values.data`` bypass the version counter and
    are not seen: change parameters in place under ``torch.no_grad()`` instead, as torch's
    optimizers do.
    """
    try:
        key = (values._version, values.data_ptr(), tuple(values.shape))
    except RuntimeError:  # inference tensors have no version counter: no cache
        return make(values.detach())
    copies = _derived_cache().setdefault(values, {})
    found = copies.get(kind)
    if found is not None and found[0] == key:
        return found[1]
    copy = make(values.detach())
    copies[kind] = (key, copy)
    return copy


def transposed_blocks(values: torch.Tensor) -> torch.Tensor | None:
    """``values`` with every block transposed (``[nnz, bk, bm]``), which both forwards' fp32
    micro-kernels stream; kept between calls until ``values`` changes (see
    :func:`_derived_copy`). None for other dtypes (their kernels read ``values`` as it is).
    """
    if values.dtype != torch.float32:
        return None
    return _derived_copy(values, "transposed", lambda v: v.transpose(1, 2).contiguous())


def packed_bf16_blocks(values: torch.Tensor, along_rows: bool) -> torch.Tensor:
    """The fp32 master ``values`` rounded to bf16 and packed in the pairs the bf16 kernels
    multiply: along ``bk`` for the forward, along ``bm`` (``along_rows``) for the input
    gradient; made once per change of ``values`` (see :func:`_derived_copy`), not per call.
    Both packings are made together, from one read of ``values`` (a training step needs both;
    a forward-only user keeps the second, half the size of ``values``, unused)."""
    both = _derived_copy(
        values, "bf16 pairs", lambda v: _cpu.bf16_pack_blocks(v.float().contiguous())
    )
    return both[1] if along_rows else both[0]


def conv_grad_input(
    grad_out: torch.Tensor,
    values: torch.Tensor,
    layout: BlockLayout,
    geometry: ConvGeometry,
    in_hw: tuple[int, int],
) -> torch.Tensor:
    if grad_out.dtype == _BF16:
        packed = packed_bf16_blocks(values, True)
        return _cpu.conv_grad_input_bf16(
            grad_out, packed, *layout.tensors(), list(geometry), *in_hw
        )
    return _cpu.conv_grad_input(grad_out, values, *layout.tensors(), list(geometry), *in_hw)


def conv_grad_weight(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    layout: BlockLayout,
    grad_block_mask: torch.Tensor | None,
    geometry: ConvGeometry,
) -> torch.Tensor:
    mask = None if grad_block_mask is None else grad_block_mask.contiguous()
    if _BF16 in (x.dtype, grad_out.dtype):
        grad_out, x = grad_out.to(_BF16).contiguous(), x.to(_BF16).contiguous()
        return _cpu.conv_grad_weight_bf16(
            grad_out, x, *layout.block_size, *layout.tensors(), mask, list(geometry)
        )
    return _cpu.conv_grad_weight(
        grad_out, x, *layout.block_size, *layout.tensors(), mask, list(geometry)
    )
