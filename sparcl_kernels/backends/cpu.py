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


def describe() -> dict[str, Any]:
    return {
        "isa": _cpu.active_isa(),
        "vector_width": _cpu.active_vector_width(),
        "compiled_isas": _cpu.compiled_isas(),
        "supported_isas": _cpu.supported_isas(),
        "forced_isa": os.environ.get(ISA_ENV_VAR) or None,
        "openmp": _cpu.openmp(),
        "threads": torch.get_num_threads() if _cpu.openmp() else 1,
        # No bf16 kernels yet: under CPU bf16 autocast the ops compute in fp32 (ops.py).
        "bf16_kernels": False,
        # The bf16 dot-product instruction of this CPU ("avx512bf16", "bfdot"), if any.
        "bf16_dot_instruction": _cpu.bf16_dot_instruction() or None,
    }


def fma_peak(threads: int | None = None, seconds: float = 0.3) -> float:
    """The measured fp32 multiply-add peak (GFLOP/s) of the instruction set in use, at its
    native vector width, on ``threads`` threads together (default: the kernels' thread count).

    Independent multiply-add chains in registers, after a warm-up: the limit a kernel's
    GFLOP/s on stored blocks is compared with. It takes about ``seconds`` (at least 0.01).
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


def forward(
    x: torch.Tensor, values: torch.Tensor, layout: BlockLayout, bias: torch.Tensor | None
) -> torch.Tensor:
    bias = None if bias is None else bias.contiguous()
    return _cpu.forward(x, values, *layout.tensors(), bias, transposed_blocks(values))


def grad_input(grad_out: torch.Tensor, values: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    return _cpu.grad_input(grad_out, values, *layout.tensors())


def grad_weight(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    layout: BlockLayout,
    grad_block_mask: torch.Tensor | None,
) -> torch.Tensor:
    mask = None if grad_block_mask is None else grad_block_mask.contiguous()
    return _cpu.grad_weight(grad_out, x, *layout.block_size, *layout.tensors(), mask)


def conv_forward(
    x: torch.Tensor,
    values: torch.Tensor,
    layout: BlockLayout,
    bias: torch.Tensor | None,
    geometry: ConvGeometry,
) -> torch.Tensor:
    bias = None if bias is None else bias.contiguous()
    return _cpu.conv_forward(
        x, values, *layout.tensors(), bias, list(geometry), transposed_blocks(values)
    )


@functools.cache
def _transposed_cache() -> WeakIdKeyDictionary:
    # values tensor -> (its version, data pointer, shape, dtype; the transposed copy). Weak
    # keys: an entry lives as long as the values it was made from.
    return WeakIdKeyDictionary()


def transposed_blocks(values: torch.Tensor) -> torch.Tensor | None:
    """``values`` with every block transposed (``[nnz, bk, bm]``), which both forwards' fp32
    micro-kernels stream; kept between calls until ``values`` changes.

    The copy is remade whenever ``values._version`` moves (every in-place write through the
    tensor or its ``detach()``: optimizer steps, ``load_state_dict``, layout updates), its
    storage or shape changes. Writes through ``values.data`` bypass the version counter and
    are not seen: change parameters in place under ``torch.no_grad()`` instead, as torch's
    optimizers do. None for other dtypes (their kernels read ``values`` as it is).
    """
    if values.dtype != torch.float32:
        return None
    try:
        key = (values._version, values.data_ptr(), tuple(values.shape))
    except RuntimeError:  # inference tensors have no version counter: no cache
        return values.detach().transpose(1, 2).contiguous()
    cache = _transposed_cache()
    found = cache.get(values)
    if found is not None and found[0] == key:
        return found[1]
    copy = values.detach().transpose(1, 2).contiguous()
    cache[values] = (key, copy)
    return copy


def conv_grad_input(
    grad_out: torch.Tensor,
    values: torch.Tensor,
    layout: BlockLayout,
    geometry: ConvGeometry,
    in_hw: tuple[int, int],
) -> torch.Tensor:
    return _cpu.conv_grad_input(grad_out, values, *layout.tensors(), list(geometry), *in_hw)


def conv_grad_weight(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    layout: BlockLayout,
    grad_block_mask: torch.Tensor | None,
    geometry: ConvGeometry,
) -> torch.Tensor:
    mask = None if grad_block_mask is None else grad_block_mask.contiguous()
    return _cpu.conv_grad_weight(
        grad_out, x, *layout.block_size, *layout.tensors(), mask, list(geometry)
    )
