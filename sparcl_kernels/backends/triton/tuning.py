"""Meta-parameters of the Triton kernels: a shipped table, overridable by a tuned one.

Keys are ``(pass, block rows, block cols, dtype, batch bucket)``; values the kernel's
tile sizes plus ``num_warps``/``num_stages``. The shipped entries are rules of thumb for
Ampere/Hopper-class GPUs (tiles of 32-64 activation rows, 4 warps, 8 for 128-wide blocks)
and have NOT been tuned on a GPU by this project. ``bench/tune_triton.py`` times the
candidates on the GPU at hand and writes a JSON table; point ``$SPARCL_TRITON_TUNING`` at it
and its entries take precedence.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch

TUNING_ENV_VAR = "SPARCL_TRITON_TUNING"
PASSES = ("forward", "grad_input", "grad_weight")
BATCH_BUCKETS = (64, 512, 1 << 62)  # activation rows: small, medium, large


def batch_bucket(n: int) -> int:
    """The table's batch key for ``n`` activation rows."""
    return next(limit for limit in BATCH_BUCKETS if n <= limit)


def dtype_key(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def table_key(kind: str, block_size: tuple[int, int], dtype: torch.dtype, n: int) -> str:
    return f"{kind}:{block_size[0]}x{block_size[1]}:{dtype_key(dtype)}:{batch_bucket(n)}"


def shipped_meta(kind: str, block_size: tuple[int, int], n: int) -> dict[str, int]:
    """Rule-of-thumb meta-parameters (see the module docstring)."""
    bm, bk = block_size
    wide = max(bm, bk) >= 128
    block_n = 16 if n <= 16 else 32 if n <= 64 else 64
    if kind == "grad_weight":
        return {
            "TILE_M": min(bm, 64),
            "TILE_K": min(bk, 64),
            "BLOCK_N": 32 if n <= 64 else 64,
            # Rows reduced per segment: part of the arithmetic (segments are summed in order),
            # so it depends on nothing but n; whether segments run in parallel (SPLIT) does not
            # change a bit of the result.
            "SEGMENT": 1024,
            "num_warps": 4,
            "num_stages": 3,
        }
    reduced = bk if kind == "forward" else bm  # the block side the kernel reduces over
    return {
        "BLOCK_N": block_n,
        "CHUNK": min(reduced, 64),
        "GROUP": 8,
        "num_warps": 8 if wide else 4,
        "num_stages": 3,
    }


@functools.cache
def _load_table(path: str) -> dict[str, dict[str, int]]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"${TUNING_ENV_VAR} names {path!r}, which is not a file")
    table = json.loads(file.read_text())
    if not isinstance(table, dict):
        raise ValueError(f"{path}: a tuning table must be a JSON object of key -> parameters")
    return table


def meta_parameters(
    kind: str, block_size: tuple[int, int], dtype: torch.dtype, n: int
) -> dict[str, int]:
    """Meta-parameters for one launch: the tuned table's entry if any, else the shipped one."""
    path = os.environ.get(TUNING_ENV_VAR)
    if path:
        tuned = _load_table(path).get(table_key(kind, block_size, dtype, n))
        if tuned is not None:
            return dict(tuned)
    return shipped_meta(kind, block_size, n)


def tuning_source() -> str:
    return os.environ.get(TUNING_ENV_VAR) or "shipped rules of thumb (untuned)"
