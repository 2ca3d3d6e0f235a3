"""Triton kernels of the three block-sparse passes; no autograd, no argument checks.

Layout: ``W [M, K]`` in blocks ``[BM, BK]`` (BSR: ``row_offsets``, ``col_indices``; the
transpose index lists each block column's blocks). Activations are row-major ``[N, *]``.
Every kernel accumulates in fp32 and stores in the output's dtype. ``pid_offset`` lets a
launcher split a grid that exceeds the hardware's program-count limit into several launches.
``UPCAST`` converts tiles to fp32 before ``tl.dot``: Triton's interpreter stores bf16 as raw
uint16 and would multiply the bit patterns; on a GPU it is off and bf16 goes to tensor cores.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _grouped_tile(pid, n_tiles_n, n_tiles_other, GROUP: tl.constexpr):
    """(activation tile, block row/column) of a program, grouped for L2 reuse.

    ``GROUP`` consecutive activation tiles sweep all block rows together, so the weight
    blocks of a block row are read by programs that run at about the same time.
    """
    per_group = GROUP * n_tiles_other
    first_n = (pid // per_group) * GROUP
    group_size = tl.minimum(n_tiles_n - first_n, GROUP)
    local = pid % per_group
    return first_n + local % group_size, local // group_size


@triton.jit
def _x_tile(
    x_ptr, rows, row_ok, x_first, cols, k,
    H, W, C, OH, OW, KW, SH, SW, PH, PW, DH, DW, GATHER: tl.constexpr,
):  # fmt: skip
    """The ``[rows, cols]`` operand tile a weight block column starting at ``x_first`` reads.

    Linear (``GATHER`` off): rows of ``x [N, k]``. Convolution: ``rows`` are output pixels
    of ``[N, OH, OW]`` and the tile gathers, from channels-last ``x [N, H, W, C]``, the input
    pixels that the block's kernel tap reads (zero in the padding): an implicit GEMM, no
    patch matrix. ``x_first // C`` is the tap, ``x_first % C`` the first channel.
    """
    if GATHER:
        tap = x_first // C
        channels = x_first % C + cols
        image = rows // (OH * OW)
        pixel = rows % (OH * OW)
        ih = (pixel // OW) * SH - PH + (tap // KW) * DH
        iw = (pixel % OW) * SW - PW + (tap % KW) * DW
        ok = row_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        source = ((image * H + ih) * W + iw) * C
        tile = tl.load(x_ptr + source[:, None] + channels[None, :], mask=ok[:, None], other=0.0)
    else:
        source = rows[:, None] * k + (x_first + cols)[None, :]
        tile = tl.load(x_ptr + source, mask=row_ok[:, None], other=0.0)
    return tile


@triton.jit
def forward_kernel(
    x_ptr,
    values_ptr,
    bias_ptr,
    y_ptr,
    row_offsets_ptr,
    col_indices_ptr,
    n,
    k,
    m,
    n_block_rows,
    H, W, C, OH, OW, KW, SH, SW, PH, PW, DH, DW,  # convolution geometry (GATHER)
    pid_offset,
    BM: tl.constexpr,
    BK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr,
    GROUP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    GATHER: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):  # fmt: skip
    """``y[:, r] = sum over stored blocks (r, c) of X[:, c] @ W[r, c].T (+ bias)``.

    ``X`` is ``x [n, k]``, or with ``GATHER`` the implicit patch matrix of a convolution
    (``n`` output pixels; see ``_x_tile``).
    """
    pid = tl.program_id(0).to(tl.int64) + pid_offset
    tile_n, block_row = _grouped_tile(pid, tl.cdiv(n, BLOCK_N), n_block_rows, GROUP)
    rows = (tile_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    row_ok = rows < n
    out_cols = tl.arange(0, BM)
    inner = tl.arange(0, CHUNK)
    acc = tl.zeros((BLOCK_N, BM), dtype=tl.float32)
    # 64-bit loop bounds make the block offsets below 64-bit (nnz * BM * BK may pass 2^31).
    start = tl.load(row_offsets_ptr + block_row).to(tl.int64)
    end = tl.load(row_offsets_ptr + block_row + 1).to(tl.int64)
    for p in range(start, end):
        col = tl.load(col_indices_ptr + p).to(tl.int64)
        block = values_ptr + p * (BM * BK)
        for kk in tl.static_range(0, BK, CHUNK):
            x_tile = _x_tile(
                x_ptr, rows, row_ok, col * BK + kk, inner, k,
                H, W, C, OH, OW, KW, SH, SW, PH, PW, DH, DW, GATHER,
            )  # fmt: skip
            w_tile = tl.load(block + out_cols[:, None] * BK + (kk + inner)[None, :])
            if UPCAST:
                x_tile, w_tile = x_tile.to(tl.float32), w_tile.to(tl.float32)
            acc += tl.dot(x_tile, tl.trans(w_tile), input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + block_row * BM + out_cols)[None, :].to(tl.float32)
    target = y_ptr + rows[:, None] * m + (block_row * BM + out_cols)[None, :]
    tl.store(target, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def grad_input_kernel(
    grad_out_ptr,
    values_ptr,
    grad_x_ptr,
    transpose_offsets_ptr,
    transpose_block_ids_ptr,
    row_indices_ptr,
    n,
    k,
    m,
    n_block_cols,
    pid_offset,
    BM: tl.constexpr,
    BK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr,
    GROUP: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """``dx[:, c] = sum over stored blocks (r, c) of dy[:, r] @ W[r, c]``."""
    pid = tl.program_id(0) + pid_offset
    tile_n, block_col = _grouped_tile(pid, tl.cdiv(n, BLOCK_N), n_block_cols, GROUP)
    rows = (tile_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    row_ok = rows < n
    out_cols = tl.arange(0, BK)
    inner = tl.arange(0, CHUNK)
    acc = tl.zeros((BLOCK_N, BK), dtype=tl.float32)
    start = tl.load(transpose_offsets_ptr + block_col)
    end = tl.load(transpose_offsets_ptr + block_col + 1)
    for q in range(start, end):
        block_id = tl.load(transpose_block_ids_ptr + q).to(tl.int64)
        block_row = tl.load(row_indices_ptr + block_id).to(tl.int64)
        block = values_ptr + block_id * (BM * BK)
        for mm in tl.static_range(0, BM, CHUNK):
            dy_tile = tl.load(
                grad_out_ptr + rows[:, None] * m + (block_row * BM + mm + inner)[None, :],
                mask=row_ok[:, None],
                other=0.0,
            )
            w_tile = tl.load(block + (mm + inner)[:, None] * BK + out_cols[None, :])
            if UPCAST:
                dy_tile, w_tile = dy_tile.to(tl.float32), w_tile.to(tl.float32)
            acc += tl.dot(dy_tile, w_tile, input_precision=PRECISION)
    target = grad_x_ptr + rows[:, None] * k + (block_col * BK + out_cols)[None, :]
    tl.store(target, acc.to(grad_x_ptr.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _segment_product(
    grad_out_ptr, x_ptr, dy_cols, x_first, sub_k, lo, hi, k, m,
    H, W, C, OH, OW, KW, SH, SW, PH, PW, DH, DW, GATHER: tl.constexpr,
    TILE_M: tl.constexpr, TILE_K: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """``dy[lo:hi, dy_cols].T @ X[lo:hi, block cols]`` in fp32, ``BLOCK_N`` rows at a time."""
    acc = tl.zeros((TILE_M, TILE_K), dtype=tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        row_ok = rows < hi
        dy_tile = tl.load(
            grad_out_ptr + rows[:, None] * m + dy_cols[None, :], mask=row_ok[:, None], other=0.0
        )
        x_tile = _x_tile(
            x_ptr, rows, row_ok, x_first, sub_k, k,
            H, W, C, OH, OW, KW, SH, SW, PH, PW, DH, DW, GATHER,
        )  # fmt: skip
        if UPCAST:
            dy_tile, x_tile = dy_tile.to(tl.float32), x_tile.to(tl.float32)
        acc += tl.dot(tl.trans(dy_tile), x_tile, input_precision=PRECISION)
    return acc


@triton.jit
def grad_weight_kernel(
    grad_out_ptr,
    x_ptr,
    out_ptr,
    mask_ptr,
    row_indices_ptr,
    col_indices_ptr,
    n,
    k,
    m,
    n_segments,
    segment_stride,
    H, W, C, OH, OW, KW, SH, SW, PH, PW, DH, DW,  # convolution geometry (GATHER)
    pid_offset,
    BM: tl.constexpr,
    BK: tl.constexpr,
    TILE_M: tl.constexpr,
    TILE_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SEGMENT: tl.constexpr,
    SPLIT: tl.constexpr,
    HAS_MASK: tl.constexpr,
    GATHER: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):  # fmt: skip
    """``dW[b] = dy[:, r(b)].T @ X[:, c(b)]`` of every stored block, one tile per program.

    ``X`` is ``x`` (linear) or, with ``GATHER``, the convolution's implicit patch matrix
    (see ``_x_tile``); ``n`` rows (output pixels for a convolution).
    The rows are reduced in ``SEGMENT``-row segments, each summed ``BLOCK_N`` rows at a time
    and the segments' sums added in order. Without ``SPLIT`` a program runs over all
    segments and writes its tile of ``dW`` (``out_ptr`` in the values' dtype); with ``SPLIT``
    one program per (tile, segment) writes its segment's fp32 sum to ``out_ptr``
    ``[n_segments, nnz, BM, BK]`` (``segment_stride = nnz * BM * BK``), which
    ``sum_segments_kernel`` then adds in the same order: the result does not depend on the
    split, bit for bit, and needs no atomics.
    Blocks switched off in ``mask_ptr`` (``HAS_MASK``) reduce over no rows and store exact
    zeros, so the grid does not depend on the mask (no host synchronisation to build it).
    """
    pid = tl.program_id(0).to(tl.int64) + pid_offset
    tiles_m: tl.constexpr = BM // TILE_M
    tiles_k: tl.constexpr = BK // TILE_K
    segment = pid % n_segments if SPLIT else 0
    rest = pid // n_segments if SPLIT else pid
    block_id = rest // (tiles_m * tiles_k)
    tile = rest % (tiles_m * tiles_k)
    sub_m = (tile // tiles_k) * TILE_M + tl.arange(0, TILE_M)
    sub_k = (tile % tiles_k) * TILE_K + tl.arange(0, TILE_K)
    dy_cols = tl.load(row_indices_ptr + block_id).to(tl.int64) * BM + sub_m
    x_first = tl.load(col_indices_ptr + block_id).to(tl.int64) * BK
    rows_used = n
    if HAS_MASK:
        rows_used = tl.where(tl.load(mask_ptr + block_id) != 0, n, 0)
    tile_offsets = block_id * (BM * BK) + sub_m[:, None] * BK + sub_k[None, :]
    if SPLIT:
        lo = segment * SEGMENT
        hi = tl.minimum(lo + SEGMENT, rows_used)
        acc = _segment_product(
            grad_out_ptr, x_ptr, dy_cols, x_first, sub_k, lo, hi, k, m,
            H, W, C, OH, OW, KW, SH, SW, PH, PW, DH, DW, GATHER,
            TILE_M, TILE_K, BLOCK_N, PRECISION, UPCAST,
        )  # fmt: skip
        tl.store(out_ptr + segment * segment_stride + tile_offsets, acc)
    else:
        acc = tl.zeros((TILE_M, TILE_K), dtype=tl.float32)
        for lo in range(0, rows_used, SEGMENT):
            acc += _segment_product(
                grad_out_ptr, x_ptr, dy_cols, x_first, sub_k, lo,
                tl.minimum(lo + SEGMENT, rows_used), k, m,
                H, W, C, OH, OW, KW, SH, SW, PH, PW, DH, DW, GATHER,
                TILE_M, TILE_K, BLOCK_N, PRECISION, UPCAST,
            )  # fmt: skip
        tl.store(out_ptr + tile_offsets, acc.to(out_ptr.dtype.element_ty))


@triton.jit
def conv_grad_input_kernel(
    grad_out_ptr, values_ptr, grad_x_ptr,
    transpose_offsets_ptr, transpose_block_ids_ptr, row_indices_ptr,
    n_pixels, m, channel_groups, taps,
    H, W, C, OH, OW, KW, SH, SW, PH, PW, DH, DW,
    pid_offset,
    BM: tl.constexpr, BK: tl.constexpr, BLOCK_N: tl.constexpr, GROUP: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """Channels-last ``dx [N, H, W, C]``, one tile of input pixels x ``BK`` channels per
    program, summing every tap's stored blocks: the output pixel a tap maps an input pixel
    to exists only on the stride's grid and inside the output (else the term is zero). Each
    element of ``dx`` is written once, by one program: no atomics, no zero-fill."""
    pid = tl.program_id(0).to(tl.int64) + pid_offset
    tile_n, group = _grouped_tile(pid, tl.cdiv(n_pixels, BLOCK_N), channel_groups, GROUP)
    rows = (tile_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    row_ok = rows < n_pixels
    image = rows // (H * W)
    ih = (rows % (H * W)) // W
    iw = rows % W
    out_rows = tl.arange(0, BM)
    channels = tl.arange(0, BK)
    acc = tl.zeros((BLOCK_N, BK), dtype=tl.float32)
    for tap in range(0, taps):
        reach_h = ih + PH - (tap // KW) * DH
        reach_w = iw + PW - (tap % KW) * DW
        oh = reach_h // SH
        ow = reach_w // SW
        ok = row_ok & (reach_h >= 0) & (reach_w >= 0) & (reach_h % SH == 0)
        ok = ok & (reach_w % SW == 0) & (oh < OH) & (ow < OW)
        source = ((image * OH + oh) * OW + ow) * m
        column = tap * channel_groups + group
        start = tl.load(transpose_offsets_ptr + column)
        end = tl.load(transpose_offsets_ptr + column + 1)
        for q in range(start, end):
            block_id = tl.load(transpose_block_ids_ptr + q).to(tl.int64)
            block_row = tl.load(row_indices_ptr + block_id).to(tl.int64)
            dy_tile = tl.load(
                grad_out_ptr + source[:, None] + (block_row * BM + out_rows)[None, :],
                mask=ok[:, None],
                other=0.0,
            )
            w_tile = tl.load(
                values_ptr + block_id * (BM * BK) + out_rows[:, None] * BK + channels[None, :]
            )
            if UPCAST:
                dy_tile, w_tile = dy_tile.to(tl.float32), w_tile.to(tl.float32)
            acc += tl.dot(dy_tile, w_tile, input_precision=PRECISION)
    target = grad_x_ptr + rows[:, None] * C + (group * BK + channels)[None, :]
    tl.store(target, acc.to(grad_x_ptr.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def sum_segments_kernel(
    partials_ptr, out_ptr, total, n_segments, pid_offset, RBLOCK: tl.constexpr
):  # fmt: skip
    """``out = sum over s of partials[s]`` (``[n_segments, total]`` fp32), s in order."""
    pid = tl.program_id(0).to(tl.int64) + pid_offset
    offsets = pid * RBLOCK + tl.arange(0, RBLOCK)
    inside = offsets < total
    acc = tl.zeros((RBLOCK,), dtype=tl.float32)
    for segment in range(0, n_segments):
        acc += tl.load(partials_ptr + segment * total + offsets, mask=inside, other=0.0)
    tl.store(out_ptr + offsets, acc.to(out_ptr.dtype.element_ty), mask=inside)
