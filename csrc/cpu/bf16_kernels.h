// The bf16 linear passes, written once over a pair dot product and compiled once per form of
// it: the AVX512_BF16 instruction (kernels_bf16_avx512.cpp), FEAT_BF16's bfdot
// (kernels_bf16_bfdot.cpp) and an emulation with fp32 multiply-adds (kernels_bf16_emulated.cpp:
// the same exact bf16 products, summed in fp32), which runs the same packing and tiling on
// every CPU.
//
// The including file defines SPARCL_ISA_NS, SPARCL_BF16_NAME (the table's name),
// SPARCL_TILE_ROWS and SPARCL_MAX_VECTORS as for the fp32 kernels (microkernels.h; the partition and workspace helpers are shared), and
// pairdot::Dot<W> for each width W it offers (at most pairdot::kMaxWidth fp32 lanes):
//   Acc                       W fp32 accumulators;   zero(), load(const float*), store(float*, Acc)
//   Operand                   W bf16 pairs (one per lane), from load_pairs(const uint32_t*)
//   Broadcast                 one bf16 pair in every lane, from broadcast(uint32_t)
//   dot(acc, broadcast, op)   acc[l] + first(b) * first(op[l]) + second(b) * second(op[l])
//
// A pair holds two consecutive elements of the dimension a pass sums over, so each pass reads
// one operand as pairs broadcast from memory and the other as vectors of packed pairs:
//   forward      kTile batch rows x outputs: x pairs along K broadcast, blocks packed
//                [bk / 2][bm] (bf16_pack_forward_blocks);
//   input grad   kTile batch rows x inputs: grad_out pairs along M broadcast, blocks packed
//                [bm / 2][bk];
//   weight grad  kTile block rows x block columns, summed over batch pairs: grad_out and x are
//                packed [n / 2][M] and [n / 2][K] chunk by chunk (L2-sized), a zero row padding
//                an odd batch.
// Work is split as in the fp32 kernels (partition.h).
#pragma once

#include "bf16_convert.h"
#include "block_sparse.h"
#include "kernel_table.h"
#include "microkernels.h"
#include "partition.h"

namespace sparcl::SPARCL_ISA_NS {
namespace bf16_linear {

using detail::kMaxVectors;
using detail::kTile;
using detail::run_parallel;

// Rows of one tile: row i's pairs for block j start at rows(j, i) (uint16_t, even offset).
struct PairRows {
  const uint16_t* a;
  int64_t lda;
  const int32_t* group;
  int64_t side;
  const uint16_t* operator()(int64_t j, int i) const {
    return a + i * lda + static_cast<int64_t>(group[j]) * side;
  }
};

// One register tile of the forward and input gradient:
//   out row i [o0 + W q ...] = bf16(init[o0 + W q ...] + sum over s in [sb, se), p < P2 of
//       pair_i(j, p) . b_j[p, o0 + W q ...])
// with j = ids[s] (or s), pair_i(j, p) the p-th pair of row i's operand for block j and b_j
// the block's packed pairs [P2 x O].
template <int W, int TN, int KV>
void pair_tile(const PairRows& rows, const uint32_t* b, int64_t P2, int64_t O,
               const int32_t* ids, int32_t sb, int32_t se, int64_t o0, const float* init,
               uint16_t* out, int64_t ldo) {
  using D = pairdot::Dot<W>;
  typename D::Acc acc[TN][KV];
  SPARCL_UNROLL
  for (int q = 0; q < KV; ++q) {
    const auto start = init ? D::load(init + o0 + W * q) : D::zero();
    SPARCL_UNROLL
    for (int i = 0; i < TN; ++i) acc[i][q] = start;
  }
  for (int32_t s = sb; s < se; ++s) {
    const int64_t j = ids ? ids[s] : s;
    const uint16_t* a[TN];
    SPARCL_UNROLL
    for (int i = 0; i < TN; ++i) a[i] = rows(j, i);
    const uint32_t* bb = b + j * P2 * O + o0;
    for (int64_t p = 0; p < P2; ++p) {
      typename D::Operand bv[KV];
      SPARCL_UNROLL
      for (int q = 0; q < KV; ++q) bv[q] = D::load_pairs(bb + p * O + W * q);
      SPARCL_UNROLL
      for (int i = 0; i < TN; ++i) {
        const auto av = D::broadcast(bf16::load_pair(a[i] + 2 * p));
        SPARCL_UNROLL
        for (int q = 0; q < KV; ++q) acc[i][q] = D::dot(acc[i][q], av, bv[q]);
      }
    }
  }
  SPARCL_UNROLL
  for (int i = 0; i < TN; ++i) {
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q) {
      float lanes[W];
      D::store(lanes, acc[i][q]);
      uint16_t* row = out + i * ldo + o0 + W * q;
      for (int l = 0; l < W; ++l) row[l] = bf16::from_float(lanes[l]);
    }
  }
}

// Output rows [0, count) x [0, O) of one group (block row or column), tile by tile.
template <int W>
void pair_slab(int64_t count, const PairRows& rows, const uint32_t* b, int64_t P2, int64_t O,
               const int32_t* ids, int32_t sb, int32_t se, const float* init, uint16_t* out,
               int64_t ldo) {
  for (int64_t n = 0; n < count; n += kTile) {
    const int tn = static_cast<int>(std::min<int64_t>(kTile, count - n));
    const PairRows tile_rows{rows.a + n * rows.lda, rows.lda, rows.group, rows.side};
    for (int64_t o = 0; o < O; o += kMaxVectors * W) {
      const int kv = static_cast<int>(std::min<int64_t>(kMaxVectors, (O - o) / W));
      detail::with_constant<kTile>(tn, [&](auto TN) {
        detail::with_constant<kMaxVectors>(kv, [&](auto KV) {
          pair_tile<W, decltype(TN)::value, decltype(KV)::value>(
              tile_rows, b, P2, O, ids, sb, se, o, init, out + n * ldo, ldo);
        });
      });
    }
  }
}

// Widest vector of this pair dot product that divides `side` (block sides are multiples of 4).
inline int width_for(int64_t side) { return detail::pick_width(side, pairdot::kMaxWidth); }

template <typename F>
void with_pair_width(int width, const F& f) {
  if constexpr (pairdot::kMaxWidth >= 16) {
    if (width == 16) return f(std::integral_constant<int, 16>{});
  }
  if constexpr (pairdot::kMaxWidth >= 8) {
    if (width == 8) return f(std::integral_constant<int, 8>{});
  }
  f(std::integral_constant<int, 4>{});
}

// Batch rows per work item: operand rows of `row_elems` bf16 values within an L2 slice.
inline int64_t batch_chunk(int64_t row_elems) {
  const int64_t tiles = 2 * kCacheSliceFloats / std::max<int64_t>(row_elems, 1) / kTile;
  return kTile * std::clamp<int64_t>(tiles, 1, 8);
}

void forward(const uint16_t* x, const uint32_t* packed, const float* bias, uint16_t* y,
             int64_t n, const BlockLayoutView& L, int threads) {
  if (n == 0 || L.block_rows == 0) return;
  const int64_t K = L.cols(), M = L.rows(), rows = batch_chunk(K);
  const ItemGrid grid = item_grid(L.row_offsets, L.block_rows, n, rows, L.bm * L.bk);
  with_pair_width(width_for(L.bm), [&](auto W) {
    run_parallel(threads, [&](int t, int nt) {
      for_each_item(grid, n, rows, t, nt, [&](int64_t r, int64_t n0, int64_t n1) {
        pair_slab<decltype(W)::value>(n1 - n0, PairRows{x + n0 * K, K, L.col_indices, L.bk},
                                      packed, L.bk / 2, L.bm, nullptr, L.row_offsets[r],
                                      L.row_offsets[r + 1], bias ? bias + r * L.bm : nullptr,
                                      y + n0 * M + r * L.bm, M);
      });
    });
  });
}

void grad_input(const uint16_t* dy, const uint32_t* packed, uint16_t* dx, int64_t n,
                const BlockLayoutView& L, int threads) {
  if (n == 0 || L.block_cols == 0) return;
  const int64_t K = L.cols(), M = L.rows(), rows = batch_chunk(M);
  const ItemGrid grid = item_grid(L.transpose_offsets, L.block_cols, n, rows, L.bm * L.bk);
  with_pair_width(width_for(L.bk), [&](auto W) {
    run_parallel(threads, [&](int t, int nt) {
      for_each_item(grid, n, rows, t, nt, [&](int64_t c, int64_t n0, int64_t n1) {
        pair_slab<decltype(W)::value>(n1 - n0, PairRows{dy + n0 * M, M, L.row_indices, L.bm},
                                      packed, L.bm / 2, L.bk, L.transpose_block_ids,
                                      L.transpose_offsets[c], L.transpose_offsets[c + 1],
                                      nullptr, dx + n0 * K + c * L.bk, K);
      });
    });
  });
}

// ------------------------------------------------------------------ weight gradient

// Rows [p0, p1) of the pair-packed batch: packed[p][i] = (a[2p][i], a[2p + 1][i]) for the
// `width` columns of a [n, width] bf16 matrix, the row past an odd batch's end zero.
inline void pack_batch_pairs(const uint16_t* a, int64_t n, int64_t width, int64_t p0, int64_t p1,
                             int64_t chunk_first, uint32_t* packed) {
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t r = 2 * (chunk_first + p);
    const uint16_t* first = a + r * width;
    const uint16_t* second = r + 1 < n ? first + width : nullptr;
    uint32_t* out = packed + p * width;
    if (second) {
      for (int64_t i = 0; i < width; ++i) out[i] = bf16::pair(first[i], second[i]);
    } else {
      for (int64_t i = 0; i < width; ++i) out[i] = first[i];
    }
  }
}

// out[i, W q ...] (+)= sum over pairs p < count of dy[p][m0 + i] . x[p][k0 + W q ...] for one
// TM x KV-vector tile of a block (fp32 out, row stride ldo).
template <int W, int TM, int KV>
void pair_outer_tile(const uint32_t* dy, int64_t lddy, const uint32_t* x, int64_t ldx,
                     int64_t count, bool accumulate, float* out, int64_t ldo) {
  using D = pairdot::Dot<W>;
  typename D::Acc acc[TM][KV];
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q) acc[i][q] = accumulate ? D::load(out + i * ldo + W * q) : D::zero();
  }
  for (int64_t p = 0; p < count; ++p) {
    typename D::Operand xv[KV];
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q) xv[q] = D::load_pairs(x + p * ldx + W * q);
    SPARCL_UNROLL
    for (int i = 0; i < TM; ++i) {
      const auto d = D::broadcast(dy[p * lddy + i]);
      SPARCL_UNROLL
      for (int q = 0; q < KV; ++q) acc[i][q] = D::dot(acc[i][q], d, xv[q]);
    }
  }
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q) D::store(out + i * ldo + W * q, acc[i][q]);
  }
}

// Block j's gradient from `count` packed batch pairs.
template <int W>
void pair_outer_block(const uint32_t* dy_pairs, const uint32_t* x_pairs, int64_t count,
                      bool accumulate, int64_t j, const BlockLayoutView& L, float* dw) {
  const int64_t M = L.rows(), K = L.cols(), bm = L.bm, bk = L.bk;
  const uint32_t* dy = dy_pairs + static_cast<int64_t>(L.row_indices[j]) * bm;
  const uint32_t* x = x_pairs + static_cast<int64_t>(L.col_indices[j]) * bk;
  float* out = dw + j * bm * bk;
  for (int64_t m = 0; m < bm; m += kTile) {
    const int tm = static_cast<int>(std::min<int64_t>(kTile, bm - m));
    for (int64_t k = 0; k < bk; k += kMaxVectors * W) {
      const int kv = static_cast<int>(std::min<int64_t>(kMaxVectors, (bk - k) / W));
      detail::with_constant<kTile>(tm, [&](auto TM) {
        detail::with_constant<kMaxVectors>(kv, [&](auto KV) {
          pair_outer_tile<W, decltype(TM)::value, decltype(KV)::value>(
              dy + m, M, x + k, K, count, accumulate, out + m * bk + k, bk);
        });
      });
    }
  }
}

// Batch pairs per chunk: both operands' packed rows (M + K pairs each) within L2, at least 8.
inline int64_t pair_chunk(int64_t pairs, int64_t row_pairs) {
  const int64_t budget = 512 * 1024 / static_cast<int64_t>(sizeof(uint32_t));
  return std::clamp<int64_t>(budget / std::max<int64_t>(row_pairs, 1), 8,
                             std::max<int64_t>(pairs, 1));
}

void grad_weight(const uint16_t* dy, const uint16_t* x, const bool* grad_block_mask, float* dw,
                 int64_t n, const BlockLayoutView& L, int threads) {
  const int64_t M = L.rows(), K = L.cols(), block_elems = L.bm * L.bk;
  const int64_t pairs = (n + 1) / 2, chunk = pair_chunk(pairs, M + K);
  // Both packed chunks live in the calling thread's workspace, which every thread reads.
  uint32_t* dy_pairs = reinterpret_cast<uint32_t*>(
      detail::thread_workspace(chunk * (M + K), detail::kPanelInSlot));
  uint32_t* x_pairs = dy_pairs + chunk * M;
  const int64_t active = count_active(grad_block_mask, L.nnz);
  with_pair_width(width_for(L.bk), [&](auto W) {
    run_parallel(threads, [&](int t, int nt) {
      zero_masked_share(grad_block_mask, L.nnz, block_elems, dw, t, nt);
      // An empty batch still gives every kept block one (zero) pass.
      for (int64_t c0 = 0; c0 < std::max<int64_t>(pairs, 1); c0 += chunk) {
        const int64_t count = std::min(pairs, c0 + chunk) - c0;
        int64_t p0, p1;
        even_share(count, t, nt, &p0, &p1);
        pack_batch_pairs(dy, n, M, p0, p1, c0, dy_pairs);
        pack_batch_pairs(x, n, K, p0, p1, c0, x_pairs);
        detail::barrier();
        for_active_share(grad_block_mask, L.nnz, active, t, nt, [&](int64_t j) {
          pair_outer_block<decltype(W)::value>(dy_pairs, x_pairs, count, c0 > 0, j, L, dw);
        });
        detail::barrier();  // the next chunk overwrites the packed rows
      }
    });
  });
}

}  // namespace bf16_linear

const Bf16KernelTable* bf16_kernel_table() {
  static const Bf16KernelTable table{SPARCL_BF16_NAME, &bf16_linear::forward,
                                     &bf16_linear::grad_input, &bf16_linear::grad_weight};
  return &table;
}

}  // namespace sparcl::SPARCL_ISA_NS
