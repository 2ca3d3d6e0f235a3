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
//                             store_bf16(uint16_t*, Acc): rounded to nearest, ties to even
//   Operand                   W bf16 pairs (one per lane), from load_pairs(const uint32_t*)
//   Broadcast                 one bf16 pair in every lane, from broadcast(uint32_t)
//   dot(acc, broadcast, op)   acc[l] + first(b) * first(op[l]) + second(b) * second(op[l])
//
// A pair holds two consecutive elements of the dimension a pass sums over, so each pass reads
// one operand as pairs broadcast from memory and the other as vectors of packed pairs:
//   forward      kTile batch rows x outputs: x pairs along K broadcast, blocks packed
//                [bk / 2][bm] (bf16_pack_blocks);
//   input grad   kTile batch rows x inputs: grad_out pairs along M broadcast, blocks packed
//                [bm / 2][bk];
//   weight grad  kTile block rows x block columns, summed over batch pairs: the block rows of
//                grad_out and block columns of x that kept blocks read are packed in pairs
//                over the batch, per thread and chunk (pair_weight_gradient), panel by panel
//                ([used][pairs][bm or bk]: PairPanels), a zero row padding an odd batch.
// Work is split as in the fp32 kernels (partition.h).
#pragma once

#include "bf16_convert.h"
#include "block_sparse.h"
#include "block_sparse_conv.h"
#include "conv_kernels.h"
#include "conv_pixels.h"
#include "kernel_table.h"
#include "microkernels.h"
#include "panels.h"
#include "partition.h"

namespace sparcl::SPARCL_ISA_NS {
namespace detail {

// The panel tile (panels.h) over bf16 pairs: panel rows hold pairs of consecutive channels of
// kPanelVectors vectors of pixels, and each weight is a pair broadcast to every lane, so one
// pair dot product adds two products per pixel. panel_slab finds it by the group's type
// (the convolutions' padded panels with blocks narrower than a vector, as in fp32).
template <int W, int TM, int KV, bool Prefetch>
void panel_tile(const PanelGroupOf<uint32_t>& g, int32_t s0, int32_t s1, const PanelTile& tile,
                int64_t i0, const float* init, bool accumulate) {
  using D = pairdot::Dot<W>;
  typename D::Acc acc[TM][KV];
  const auto* in = reinterpret_cast<const uint32_t*>(tile.in);
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q) {
      if (accumulate) {
        acc[i][q] = D::load(tile.out + (i0 + i) * tile.out_ld + W * q);
      } else if (init) {
        float start[W];  // the Dot primitive has no fp32 broadcast
        std::fill_n(start, W, init[i0 + i]);
        acc[i][q] = D::load(start);
      } else {
        acc[i][q] = D::zero();
      }
    }
  }
  for (int32_t s = s0; s < s1; ++s) {
    const uint32_t* w = g.weights + block_at(g, s) * g.block_elems + i0;
    const uint32_t* rows = in + block_rows_offset(g, s, tile.in_ld);
    const uint32_t* next =
        Prefetch && s + 1 < s1 ? in + block_rows_offset(g, s + 1, tile.in_ld) : nullptr;
    for (int64_t p = 0; p < g.P; ++p) {
      if constexpr (Prefetch) {
        if (next) {
          SPARCL_UNROLL
          for (int q = 0; q < KV; ++q) __builtin_prefetch(next + p * tile.in_ld + W * q);
        }
      }
      typename D::Operand pv[KV];
      SPARCL_UNROLL
      for (int q = 0; q < KV; ++q) pv[q] = D::load_pairs(rows + p * tile.in_ld + W * q);
      SPARCL_UNROLL
      for (int i = 0; i < TM; ++i) {
        const auto wv = D::broadcast(w[p * g.ldw + i]);
        SPARCL_UNROLL
        for (int q = 0; q < KV; ++q) acc[i][q] = D::dot(acc[i][q], wv, pv[q]);
      }
    }
  }
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q) D::store(tile.out + (i0 + i) * tile.out_ld + W * q, acc[i][q]);
  }
}

}  // namespace detail

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

// PairRows that also ask the cache for the rows of a later block (detail::Lookahead).
struct LookaheadPairRows : PairRows {
  detail::Lookahead lookahead;
  SPARCL_INLINE void ahead(int32_t s) const {
    detail::prefetch_ahead(lookahead, s, a, lda, group, side);
  }
};

// acc[i][q] += sum over pairs p < P2 of pair(rows(j, i), p) . b[p * O + W q ...], rows
// I0 <= i < I1 of a tile. The rows' pointers are located here, per half of a tall tile: with
// all twelve live through the first half, GCC kept pointers in vector registers and spilled
// the loaded weight vectors, reloading one per dot product (the bf16 linear forward).
template <int W, int KV, int I0, int I1, int TN, typename Rows>
SPARCL_INLINE void pair_rows(const Rows& rows, int64_t j, const uint32_t* b, int64_t P2,
                             int64_t O, typename pairdot::Dot<W>::Acc (&acc)[TN][KV]) {
  using D = pairdot::Dot<W>;
  const uint16_t* a[I1 - I0];
  SPARCL_UNROLL
  for (int i = I0; i < I1; ++i) a[i - I0] = rows(j, i);
  for (int64_t p = 0; p < P2; ++p) {
    typename D::Operand bv[KV];
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q) bv[q] = D::load_pairs(b + p * O + W * q);
    SPARCL_UNROLL
    for (int i = I0; i < I1; ++i) {
      const auto av = D::broadcast(bf16::load_pair(a[i - I0] + 2 * p));
      SPARCL_UNROLL
      for (int q = 0; q < KV; ++q) acc[i][q] = D::dot(acc[i][q], av, bv[q]);
    }
  }
}

// The two groupings of pair_tile for one-vector tiles (grouped_pair_tile): how a block's pair
// rows are accumulated (Dot D, two accumulators per row) and folded into the row's output
// (Dot Out).
//
// QuadGroups: 16 lanes (W = 16) and an even P2, as detail::Pairs (microkernels.h) with pairs
// of pairs: each step broadcasts a row's pairs p and p + 1 into every lane pair and dots them
// with the block's pair rows p and p + 1 interleaved, so that one broadcast feeds two dot
// products (Zen 5: 16x16 blocks, a broadcast per vdpbf16ps held the passes near half the
// bf16 peak).
template <int W>
struct QuadGroups {
  using D = pairdot::Dot<W>;
  using Out = pairdot::Dot<W>;
  template <int I0, int I1, int TN, typename Rows>
  SPARCL_INLINE static void accumulate_rows(const Rows& rows, int64_t j, const uint32_t* b,
                                            int64_t P2, int64_t O,
                                            typename D::Acc (&acc)[TN][2]) {
    const uint16_t* a[I1 - I0];
    SPARCL_UNROLL
    for (int i = I0; i < I1; ++i) a[i - I0] = rows(j, i);
    for (int64_t p = 0; p < P2; p += 2) {
      const auto r0 = D::load_pairs(b + p * O), r1 = D::load_pairs(b + (p + 1) * O);
      const auto low = D::interleave_low(r0, r1), high = D::interleave_high(r0, r1);
      SPARCL_UNROLL
      for (int i = I0; i < I1; ++i) {
        uint64_t quad;
        __builtin_memcpy(&quad, a[i - I0] + 2 * p, sizeof quad);
        const auto av = D::broadcast_quad(quad);
        acc[i][0] = D::dot(acc[i][0], av, low);
        acc[i][1] = D::dot(acc[i][1], av, high);
      }
    }
  }
  SPARCL_INLINE static auto fold(typename D::Acc low, typename D::Acc high) {
    return D::fold_pairs(low, high);
  }
};

// OctetGroups: 8-wide blocks (W = 8, O = 8) where the pair dot product is 16 lanes wide, as
// detail::Quads (microkernels.h) with pairs: each step broadcasts a row's pairs p .. p + 3
// into every 128-bit lane and dots them with the block's pair rows p .. p + 3 transposed, two
// full-width dot products per broadcast instead of one half-width one.
template <int W>
struct OctetGroups {
  using D = pairdot::Dot<2 * W>;
  using Out = pairdot::Dot<W>;
  template <int I0, int I1, int TN, typename Rows>
  SPARCL_INLINE static void accumulate_rows(const Rows& rows, int64_t j, const uint32_t* b,
                                            int64_t P2, int64_t /*O = 8*/,
                                            typename D::Acc (&acc)[TN][2]) {
    const uint16_t* a[I1 - I0];
    SPARCL_UNROLL
    for (int i = I0; i < I1; ++i) a[i - I0] = rows(j, i);
    for (int64_t p = 0; p < P2; p += 4) {
      const auto low = D::transpose_low(b + p * 8), high = D::transpose_high(b + p * 8);
      SPARCL_UNROLL
      for (int i = I0; i < I1; ++i) {
        const auto av = D::broadcast_octet(a[i - I0] + 2 * p);
        acc[i][0] = D::dot(acc[i][0], av, low);
        acc[i][1] = D::dot(acc[i][1], av, high);
      }
    }
  }
  SPARCL_INLINE static auto fold(typename D::Acc low, typename D::Acc high) {
    return D::fold_quads(low, high);
  }
};

// pair_tile through Groups (QuadGroups or OctetGroups), as detail::grouped_tile.
template <typename Groups, int TN, typename Rows>
void grouped_pair_tile(const Rows& rows, const uint32_t* b, int64_t P2, int64_t O,
                       const int32_t* ids, int32_t sb, int32_t se, int64_t o0,
                       const float* init, uint16_t* const* out) {
  using D = typename Groups::D;
  using Out = typename Groups::Out;
  typename D::Acc acc[TN][2];
  SPARCL_UNROLL
  for (int i = 0; i < TN; ++i) acc[i][0] = acc[i][1] = D::zero();
  for (int32_t s = sb; s < se; ++s) {
    if constexpr (detail::LooksAhead<Rows>)
      if (o0 == 0) rows.ahead(s);
    const int64_t j = ids ? ids[s] : s;
    const uint32_t* bb = b + j * P2 * O + o0;
    if constexpr (TN > detail::kHalfTileRows) {
      Groups::template accumulate_rows<0, TN / 2>(rows, j, bb, P2, O, acc);
      Groups::template accumulate_rows<TN / 2, TN>(rows, j, bb, P2, O, acc);
    } else {
      Groups::template accumulate_rows<0, TN>(rows, j, bb, P2, O, acc);
    }
  }
  const auto start = init ? Out::load(init + o0) : Out::zero();
  SPARCL_UNROLL
  for (int i = 0; i < TN; ++i)
    Out::store_bf16(out[i] + o0, Out::add(start, Groups::fold(acc[i][0], acc[i][1])));
}

// One register tile of the forward and input gradient:
//   out[i][o0 + W q ...] = bf16(init[o0 + W q ...] + sum over s in [sb, se), p < P2 of
//       pair_i(j, p) . b_j[p, o0 + W q ...])
// with j = ids[s] (or s), pair_i(j, p) the p-th pair of row i's operand for block j and b_j
// the block's packed pairs [P2 x O].
template <int W, int TN, int KV, typename Rows>
void pair_tile(const Rows& rows, const uint32_t* b, int64_t P2, int64_t O,
               const int32_t* ids, int32_t sb, int32_t se, int64_t o0, const float* init,
               uint16_t* const* out) {
  if constexpr (W == 16 && KV == 1) {
    if (P2 % 2 == 0)
      return grouped_pair_tile<QuadGroups<W>, TN>(rows, b, P2, O, ids, sb, se, o0, init, out);
  }
  if constexpr (W == 8 && KV == 1 && pairdot::kMaxWidth >= 16) {
    if (O == 8 && P2 % 4 == 0)
      return grouped_pair_tile<OctetGroups<W>, TN>(rows, b, P2, O, ids, sb, se, o0, init, out);
  }
  using D = pairdot::Dot<W>;
  typename D::Acc acc[TN][KV];
  SPARCL_UNROLL
  for (int q = 0; q < KV; ++q) {
    const auto start = init ? D::load(init + o0 + W * q) : D::zero();
    SPARCL_UNROLL
    for (int i = 0; i < TN; ++i) acc[i][q] = start;
  }
  for (int32_t s = sb; s < se; ++s) {
    if constexpr (detail::LooksAhead<Rows>)
      if (o0 == 0) rows.ahead(s);
    const int64_t j = ids ? ids[s] : s;
    const uint32_t* bb = b + j * P2 * O + o0;
    if constexpr (W >= 16 && TN > detail::kHalfTileRows) {  // as accumulate_tile
      pair_rows<W, KV, 0, TN / 2>(rows, j, bb, P2, O, acc);
      pair_rows<W, KV, TN / 2, TN>(rows, j, bb, P2, O, acc);
    } else {
      pair_rows<W, KV, 0, TN>(rows, j, bb, P2, O, acc);
    }
  }
  SPARCL_UNROLL
  for (int i = 0; i < TN; ++i) {
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q) D::store_bf16(out[i] + o0 + W * q, acc[i][q]);
  }
}

// One tile of tn rows of one group (block row or column), every column [0, O) of it: out[i]
// is row i's output at the group's first column.
template <int W, typename Rows>
void pair_tiles(const Rows& tile_rows, int tn, const uint32_t* b, int64_t P2, int64_t O,
                const int32_t* ids, int32_t sb, int32_t se, const float* init,
                uint16_t* const* out) {
  for (int64_t o = 0; o < O; o += kMaxVectors * W) {
    const int kv = static_cast<int>(std::min<int64_t>(kMaxVectors, (O - o) / W));
    detail::with_constant<kTile>(tn, [&](auto TN) {
      detail::with_constant<kMaxVectors>(kv, [&](auto KV) {
        pair_tile<W, decltype(TN)::value, decltype(KV)::value>(tile_rows, b, P2, O, ids, sb,
                                                                se, o, init, out);
      });
    });
  }
}

// Output rows [0, count) x [0, O) of one group (block row or column), tile by tile, in
// order: make_tile(n, tn, out) gives the rows functor of the tile of rows n ... n + tn - 1
// and sets out[i] to row n + i's output (at the group's first column).
template <int W, typename MakeTile>
void pair_slab(int64_t count, const MakeTile& make_tile, const uint32_t* b, int64_t P2,
               int64_t O, const int32_t* ids, int32_t sb, int32_t se, const float* init) {
  for (int64_t n = 0; n < count; n += kTile) {
    const int tn = static_cast<int>(std::min<int64_t>(kTile, count - n));
    uint16_t* out[kTile];
    const auto tile_rows = make_tile(n, tn, out);
    pair_tiles<W>(tile_rows, tn, b, P2, O, ids, sb, se, init, out);
  }
}

// The tile factory of a dense row-major operand and output: tile n's row i is row n + i of
// `a` and of `y`.
inline auto dense_tiles(const uint16_t* a, int64_t lda, const int32_t* group, int64_t side,
                        uint16_t* y, int64_t ldy) {
  return [=](int64_t n, int tn, uint16_t** out) {
    for (int i = 0; i < tn; ++i) out[i] = y + (n + i) * ldy;
    return PairRows{a + n * lda, lda, group, side};
  };
}

// dense_tiles whose rows also ask for a later block's (LookaheadPairRows): for the group's
// positions [begin, end) (position s holds block ids[s], or s) over rows [0, count).
inline auto lookahead_tiles(const uint16_t* a, int64_t lda, const int32_t* group, int64_t side,
                            uint16_t* y, int64_t ldy, const int32_t* ids, int32_t begin,
                            int32_t end, int64_t count) {
  return [=](int64_t n, int tn, uint16_t** out) {
    for (int i = 0; i < tn; ++i) out[i] = y + (n + i) * ldy;
    const int next = static_cast<int>(std::clamp<int64_t>(count - n - kTile, 0, kTile));
    return LookaheadPairRows{{a + n * lda, lda, group, side}, {ids, begin, end, tn, next}};
  };
}

// The rows of a group's tiles, plain or looking ahead (where the operand is larger than
// kPairLookaheadBytes), passed to slab(make_tile).
template <typename Slab>
void with_pair_tiles(bool look_ahead, const uint16_t* a, int64_t lda, const int32_t* group,
                     int64_t side, uint16_t* y, int64_t ldy, const int32_t* ids, int32_t begin,
                     int32_t end, int64_t count, const Slab& slab) {
  if (look_ahead)
    return slab(lookahead_tiles(a, lda, group, side, y, ldy, ids, begin, end, count));
  slab(dense_tiles(a, lda, group, side, y, ldy));
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
  const bool look_ahead = past_lookahead_size<uint16_t>(n * K);
  with_pair_width(width_for(L.bm), [&](auto W) {
    run_parallel(threads, [&](int t, int nt) {
      for_each_item(grid, n, rows, t, nt, [&](int64_t r, int64_t n0, int64_t n1) {
        const int32_t sb = L.row_offsets[r], se = L.row_offsets[r + 1];
        with_pair_tiles(look_ahead, x + n0 * K, K, L.col_indices, L.bk, y + n0 * M + r * L.bm,
                        M, nullptr, sb, se, n1 - n0, [&](const auto& make_tile) {
                          pair_slab<decltype(W)::value>(n1 - n0, make_tile, packed, L.bk / 2,
                                                        L.bm, nullptr, sb, se,
                                                        bias ? bias + r * L.bm : nullptr);
                        });
      });
    });
  });
}

void grad_input(const uint16_t* dy, const uint32_t* packed, uint16_t* dx, int64_t n,
                const BlockLayoutView& L, int threads) {
  if (n == 0 || L.block_cols == 0) return;
  const int64_t K = L.cols(), M = L.rows(), rows = batch_chunk(M);
  const ItemGrid grid = item_grid(L.transpose_offsets, L.block_cols, n, rows, L.bm * L.bk);
  const bool look_ahead = past_lookahead_size<uint16_t>(n * M);
  with_pair_width(width_for(L.bk), [&](auto W) {
    run_parallel(threads, [&](int t, int nt) {
      for_each_item(grid, n, rows, t, nt, [&](int64_t c, int64_t n0, int64_t n1) {
        const int32_t sb = L.transpose_offsets[c], se = L.transpose_offsets[c + 1];
        with_pair_tiles(look_ahead, dy + n0 * M, M, L.row_indices, L.bm,
                        dx + n0 * K + c * L.bk, K, L.transpose_block_ids, sb, se, n1 - n0,
                        [&](const auto& make_tile) {
                          pair_slab<decltype(W)::value>(n1 - n0, make_tile, packed, L.bm / 2,
                                                        L.bk, L.transpose_block_ids, sb, se,
                                                        nullptr);
                        });
      });
    });
  });
}

// ------------------------------------------------------------------ weight gradient

// The calling thread's row of `elems` zeros (bf16 or pairs), never written.
inline const uint16_t* zero_row(int64_t elems) {
  return reinterpret_cast<const uint16_t*>(detail::thread_workspace(elems / 2 + 1, detail::kZerosSlot));
}

// One operand's packed chunk: `count` pair rows of the used panels (`side` pairs wide, a block
// row or column), stored panel by panel, [used panels][count][side], so a block's pairs over
// the whole chunk are one contiguous run. (Row by row, the rows of wide layers lie a multiple
// of 4 KiB apart and a tile's loads all fall into the same few L1 sets.)
struct PairPanels {
  uint32_t* data;
  int64_t count;
  int64_t side;
  const int32_t* slot;  // per block row or column: its panel (UsedPanels::slot)
  int64_t stride;       // elements per pair row of a panel: `side`, or more where a panel
                        // holds several groups side by side
  const int32_t* inner = nullptr;  // per group: its first element in a pair row (else 0)
  // Pair row p of block row or column `group`.
  uint32_t* at(int64_t p, int64_t group) const {
    return data + (static_cast<int64_t>(slot[group]) * count + p) * stride +
           (inner ? inner[group] : 0);
  }
};

// How a weight-gradient pass lays out one operand's pairs in a chunk: `panels` panels of
// `stride` elements per pair row, group g (a block row of grad_out, a block column of x) at
// panel slot[g], from element inner[g] (nullptr: 0) of its pair rows.
struct PairLayout {
  const int32_t* slot;
  const int32_t* inner;
  int64_t panels;
  int64_t stride;
};

// Pair packing in whole vectors: one pair at a time cost about as much as the products it
// feeds. Runs of 16 pairs are one two-source shuffle (vpermt2w on AVX-512, zip1/zip2 on
// NEON); the widen, shift and or that the compiler made of the scalar form took four
// instructions per 16 pairs, and the packing is a third of a 64-channel bf16 conv weight
// gradient. Other runs (and the portable build) keep the scalar form.
template <int N>
inline void interleave_run(const uint16_t* __restrict first, const uint16_t* __restrict second,
                           int64_t count, uint32_t* __restrict out) {
#if SPARCL_VECTOR_EXTENSIONS
  if constexpr (N == 16) {
    typedef uint16_t Half __attribute__((vector_size(32), aligned(2)));
    typedef uint16_t Whole __attribute__((vector_size(64), aligned(4)));
    for (int64_t i = 0; i < count; i += 16) {
      Half a, b;
      __builtin_memcpy(&a, first + i, sizeof a);
      __builtin_memcpy(&b, second + i, sizeof b);
      const Whole pairs = __builtin_shufflevector(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5,
                                                  21, 6, 22, 7, 23, 8, 24, 9, 25, 10, 26, 11,
                                                  27, 12, 28, 13, 29, 14, 30, 15, 31);
      __builtin_memcpy(out + i, &pairs, sizeof pairs);  // little-endian: first in the low half
    }
    return;
  }
#endif
  for (int64_t i = 0; i < count; i += N) {
    SPARCL_UNROLL
    for (int k = 0; k < N; ++k)
      out[i + k] = static_cast<uint32_t>(first[i + k]) | (static_cast<uint32_t>(second[i + k]) << 16);
  }
}

// Calls f(std::integral_constant<int, N>) with the longest fixed run N (16, 8 or 4) that
// divides `count` (a multiple of 4): runs the compiler turns into whole vectors (a block side
// of 8 left a loop of unknown length mostly scalar).
template <typename F>
void with_interleave_run(int64_t count, const F& f) {
  if (count % 16 == 0) return f(std::integral_constant<int, 16>{});
  if (count % 8 == 0) return f(std::integral_constant<int, 8>{});
  f(std::integral_constant<int, 4>{});
}

// out[i] = (first[i], second[i]) as pairs, i < count (a multiple of 4).
inline void interleave_pairs(const uint16_t* first, const uint16_t* second, int64_t count,
                             uint32_t* out) {
  with_interleave_run(count, [&](auto run) {
    interleave_run<decltype(run)::value>(first, second, count, out);
  });
}

// Pair row p of the used panels of a [n, width] bf16 matrix: (a[2r][c], a[2r + 1][c]) for
// r = `row_pair`, the row past an odd batch's end read from `zeros`.
inline void pack_row_pair(const uint16_t* a, int64_t n, int64_t width, const UsedPanels& used,
                          const uint16_t* zeros, int64_t row_pair, const PairPanels& out,
                          int64_t p) {
  const int64_t r = 2 * row_pair;
  const uint16_t* first = a + r * width;
  const uint16_t* second = r + 1 < n ? first + width : nullptr;
  if (out.inner) {  // one panel of whole rows (group_layout)
    interleave_pairs(first, second ? second : zeros, width, out.data + p * out.stride);
    return;
  }
  for (int64_t u = 0; u < used.count; ++u) {
    const int64_t group = used.list[u], c = group * out.side;
    interleave_pairs(first + c, second ? second + c : zeros, out.side, out.at(p, group));
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

// Block j's gradient over the chunk's packed batch pairs (panels of bm and bk pairs), stored
// to (or, with `accumulate`, added to) the bm x bk `out`.
template <int W>
void pair_outer_block(const PairPanels& dy_pairs, const PairPanels& x_pairs, bool accumulate,
                      int64_t j, const BlockLayoutView& L, float* out) {
  const int64_t bm = L.bm, bk = L.bk, count = dy_pairs.count;
  const uint32_t* dy = dy_pairs.at(0, L.row_indices[j]);
  const uint32_t* x = x_pairs.at(0, L.col_indices[j]);
  for (int64_t m = 0; m < bm; m += kTile) {
    const int tm = static_cast<int>(std::min<int64_t>(kTile, bm - m));
    for (int64_t k = 0; k < bk; k += kMaxVectors * W) {
      const int kv = static_cast<int>(std::min<int64_t>(kMaxVectors, (bk - k) / W));
      detail::with_constant<kTile>(tm, [&](auto TM) {
        detail::with_constant<kMaxVectors>(kv, [&](auto KV) {
          pair_outer_tile<W, decltype(TM)::value, decltype(KV)::value>(
              dy + m, dy_pairs.stride, x + k, x_pairs.stride, count, accumulate,
              out + m * bk + k, bk);
        });
      });
    }
  }
}

// The narrow-block form of pair_outer_tile, for blocks one vector wide (bk == W) that share
// a block row: each broadcast grad_out pair feeds one vector of each of KB blocks, not one
// vector of one block (which stalled on the broadcasts at 18 % of the dot-product peak for
// 16x16 blocks). Block b's pairs are x[b] (row stride ldx); its result goes to out[b].
template <int W, int TM, int KB>
void pair_outer_run_tile(const uint32_t* dy, int64_t lddy, const uint32_t* const* x,
                         int64_t ldx, int64_t count, int64_t m0, bool accumulate,
                         float* const* out) {
  using D = pairdot::Dot<W>;
  typename D::Acc acc[TM][KB];
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    SPARCL_UNROLL
    for (int b = 0; b < KB; ++b)
      acc[i][b] = accumulate ? D::load(out[b] + (m0 + i) * W) : D::zero();
  }
  for (int64_t p = 0; p < count; ++p) {
    typename D::Operand xv[KB];
    SPARCL_UNROLL
    for (int b = 0; b < KB; ++b) xv[b] = D::load_pairs(x[b] + p * ldx);
    SPARCL_UNROLL
    for (int i = 0; i < TM; ++i) {
      const auto d = D::broadcast(dy[p * lddy + m0 + i]);
      SPARCL_UNROLL
      for (int b = 0; b < KB; ++b) acc[i][b] = D::dot(acc[i][b], d, xv[b]);
    }
  }
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    SPARCL_UNROLL
    for (int b = 0; b < KB; ++b) D::store(out[b] + (m0 + i) * W, acc[i][b]);
  }
}

// Blocks 8 wide where the pair dot product is 16 lanes wide run in pairs (as the fp32
// detail::outer_product_tile_block_pairs): runs of up to twice as many blocks.
constexpr bool kPairedNarrowRuns = pairdot::kMaxWidth >= 16;
template <int W>
constexpr int kPairRunBlocks = kPairedNarrowRuns && W == 8 ? 2 * detail::kRunBlocks
                                                           : detail::kRunBlocks;
constexpr int kMaxPairRunBlocks = kPairedNarrowRuns ? 2 * detail::kRunBlocks
                                                    : detail::kRunBlocks;

// pair_outer_run_tile for 8-wide blocks on 16-lane dot products: blocks 2q and 2q + 1 share
// vector q (low and high half), full-width dot products per broadcast grad_out pair. A
// missing block 2q + 1 (odd `blocks`) repeats block 2q's pairs and is not stored.
template <int W, int TM, int KP>
void pair_outer_run_pairs_tile(const uint32_t* dy, int64_t lddy, const uint32_t* const* x,
                               int64_t ldx, int blocks, int64_t count, int64_t m0,
                               bool accumulate, float* const* out) {
  using D = pairdot::Dot<2 * W>;
  int second[KP];
  SPARCL_UNROLL
  for (int q = 0; q < KP; ++q) second[q] = 2 * q + 1 < blocks ? 2 * q + 1 : 2 * q;
  typename D::Acc acc[TM][KP];
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    SPARCL_UNROLL
    for (int q = 0; q < KP; ++q)
      acc[i][q] = accumulate ? D::load_halves(out[2 * q] + (m0 + i) * W,
                                              out[second[q]] + (m0 + i) * W)
                             : D::zero();
  }
  for (int64_t p = 0; p < count; ++p) {
    typename D::Operand xv[KP];
    SPARCL_UNROLL
    for (int q = 0; q < KP; ++q)
      xv[q] = D::join_pairs(x[2 * q] + p * ldx, x[second[q]] + p * ldx);
    SPARCL_UNROLL
    for (int i = 0; i < TM; ++i) {
      const auto d = D::broadcast(dy[p * lddy + m0 + i]);
      SPARCL_UNROLL
      for (int q = 0; q < KP; ++q) acc[i][q] = D::dot(acc[i][q], d, xv[q]);
    }
  }
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    SPARCL_UNROLL
    for (int q = 0; q < KP; ++q) {
      D::store_low(out[2 * q] + (m0 + i) * W, acc[i][q]);
      if (second[q] != 2 * q) D::store_high(out[second[q]] + (m0 + i) * W, acc[i][q]);
    }
  }
}

// Up to kPairRunBlocks<W> blocks one vector wide of one block row over the chunk's pairs
// (pair_outer_run_tile); `dy` is the block row's packed pairs (row stride lddy), x[b] block
// b's (row stride ldx).
template <int W>
void pair_outer_run(const uint32_t* dy, int64_t lddy, const uint32_t* const* x, int64_t ldx,
                    int blocks, int64_t count, int64_t bm, bool accumulate, float* const* out) {
  for (int64_t m = 0; m < bm; m += detail::kRunRows) {
    const int tm = static_cast<int>(std::min<int64_t>(detail::kRunRows, bm - m));
    if constexpr (kPairedNarrowRuns && W == 8) {
      detail::with_constant<detail::kRunRows>(tm, [&](auto TM) {
        detail::with_constant<detail::kRunBlocks>((blocks + 1) / 2, [&](auto KP) {
          pair_outer_run_pairs_tile<W, decltype(TM)::value, decltype(KP)::value>(
              dy, lddy, x, ldx, blocks, count, m, accumulate, out);
        });
      });
      continue;
    }
    detail::with_constant<detail::kRunRows>(tm, [&](auto TM) {
      detail::with_constant<detail::kRunBlocks>(blocks, [&](auto KB) {
        pair_outer_run_tile<W, decltype(TM)::value, decltype(KB)::value>(
            dy, lddy, x, ldx, count, m, accumulate, out);
      });
    });
  }
}

// Ints per block column a weight-gradient pass lends its pack (UsedOperands::scratch).
constexpr int64_t kColumnScratch = 6;

// Whether groups of `side` elements of a weight-gradient operand (block rows of grad_out,
// block columns of x) pack as whole rows of `width` rather than group by group: one
// interleave per pair and group cost as much as the products with 8-wide blocks. Whole rows
// where the groups are at most kWholeRowMaxSide wide, the rows at most kWholeRowMaxWidth
// long and the used groups hold more than half of what whole rows pack (`used_elems` of
// `whole_elems`). (Zen 5, AVX512_BF16, conv weight gradient at batch 32 and 0.9, x as tap
// panels alone, alternated native runs: 8x8 blocks 1.21-1.27x at 64 channels, 1.34-1.40x at
// 128; 16x16 blocks 1.07-1.09x at 128, 1.0x at 64 where they cover less; 32x32 blocks
// 0.89-0.94x and 512 channels on 4x4 images 0.96-1.01x, where groups stay.)
constexpr int64_t kWholeRowMaxSide = 16, kWholeRowMaxWidth = 256;

inline bool packs_whole_rows(int64_t used_elems, int64_t whole_elems, int64_t side,
                             int64_t width) {
  return used_elems > 0 && side <= kWholeRowMaxSide && width <= kWholeRowMaxWidth &&
         2 * used_elems > whole_elems;
}

// The pairs of a matrix's `used` groups of `side` elements (block rows of grad_out, or block
// columns of a linear's x) in rows of `width`: whole rows (one panel, group c from element
// c * side; its tables in `tables`, 2 ints per group) where packs_whole_rows says, else a
// panel per used group.
inline PairLayout group_layout(const UsedPanels& used, int64_t side, int64_t width,
                               int32_t* tables) {
  const int64_t groups = width / side;
  if (!packs_whole_rows(used.count * side, width, side, width))
    return {used.slot, nullptr, used.count, side};
  int32_t* slot = tables;
  int32_t* inner = tables + groups;
  for (int64_t c = 0; c < groups; ++c) slot[c] = 0, inner[c] = static_cast<int32_t>(c * side);
  return {slot, inner, 1, width};
}

// What a thread packs per chunk: the block rows of grad_out and block columns of x that its
// blocks read (UsedPanels).
struct UsedOperands {
  UsedPanels rows;
  UsedPanels cols;
  int32_t* scratch;  // kColumnScratch ints per block column, for the pack's tables
};

// Each thread takes batch pairs from this many per thread on its own share of the pairs (all
// kept blocks, partial sums added up at the end); below, all pairs for its share of the blocks.
constexpr int64_t kMinPairsPerThread = 64;

// The weight-gradient pass over `pairs` batch pairs. Every thread packs and reads only its own
// chunks, in its own L2, with no barrier between chunks: with enough pairs each thread sums all
// kept blocks over its share of the pairs, the first into dw and the others into partials
// that are added to dw at the end (in thread order: deterministic for a thread count);
// otherwise each thread sums its share of the kept blocks over all pairs. Per chunk of its
// pairs a thread calls pack(first, count, used, dy_pairs, x_pairs, zeros): pairs [first,
// first + count) into PairPanels of its used block rows and columns (grad_out's laid out by
// group_layout, x's as describe_x(used) says: PairLayouts, once per thread), `zeros` a zero
// row as long as a block side, a grad_out row or `zero_elems`, whichever is longest (all a
// pack reads of it).
template <typename DescribeX, typename Pack>
void pair_weight_gradient(const bool* grad_block_mask, float* dw, int64_t pairs,
                          const BlockLayoutView& L, int threads, int64_t zero_elems,
                          const DescribeX& describe_x, const Pack& pack) {
  const int64_t block_elems = L.bm * L.bk, active = count_active(grad_block_mask, L.nnz);
  int32_t* ids = detail::index_workspace(active + 1, 0);  // kept blocks, in storage order
  for (int64_t j = 0, a = 0; j < L.nnz; ++j)
    if (!grad_block_mask || grad_block_mask[j]) ids[a++] = static_cast<int32_t>(j);
  std::vector<float*> partials(std::max(threads, 1), nullptr);
  // What a pack reads of a zero row: a block side, a whole grad_out row, or zero_elems.
  const int64_t side = std::max({L.bm, L.bk, L.rows(), zero_elems});
  with_pair_width(width_for(L.bk), [&](auto width) {
    constexpr int W = decltype(width)::value;
    run_parallel(threads, [&](int t, int nt) {
      zero_masked_share(grad_block_mask, L.nnz, block_elems, dw, t, nt);
      const int pair_splits = pairs >= kMinPairsPerThread * nt ? nt : 1;
      const int block_splits = nt / pair_splits;  // one of the two is 1
      const int ps = t / block_splits, bs = t % block_splits;
      int64_t q0, q1, a0, a1;
      even_share(pairs, ps, pair_splits, &q0, &q1);
      even_share(active, bs, block_splits, &a0, &a1);
      const int64_t groups = L.block_rows + L.block_cols;
      int32_t* storage = detail::index_workspace(
          4 * L.block_rows + (2 + kColumnScratch) * L.block_cols, 1);
      const UsedOperands used{
          used_panels(ids + a0, a1 - a0, L.row_indices, L.block_rows, storage),
          used_panels(ids + a0, a1 - a0, L.col_indices, L.block_cols,
                      storage + 2 * L.block_rows),
          storage + 2 * groups};
      const PairLayout x_layout = describe_x(used);
      const PairLayout dy_layout = group_layout(
          used.rows, L.bm, L.rows(), storage + 2 * groups + kColumnScratch * L.block_cols);
      const int64_t dy_width = dy_layout.panels * dy_layout.stride;
      const int64_t x_width = x_layout.panels * x_layout.stride;
      const int64_t chunk =
          weight_gradient_chunk_rows(q1 - q0, dy_width + x_width, (a1 - a0) * block_elems);
      uint32_t* dy_pairs = reinterpret_cast<uint32_t*>(
          detail::thread_workspace(chunk * (dy_width + x_width), detail::kPanelInSlot));
      uint32_t* x_pairs = dy_pairs + chunk * dy_width;
      float* partial = nullptr;
      if (ps > 0)
        partials[t] = partial = detail::thread_workspace((a1 - a0) * block_elems,
                                                         detail::kAccumulatorSlot);
      const uint16_t* zeros = zero_row(side);
      // An empty share of pairs still gives each of its blocks one (zero) pass.
      for (int64_t c0 = q0; c0 == q0 || c0 < q1; c0 += chunk) {
        const int64_t count = std::min(q1, c0 + chunk) - c0;
        const PairPanels dy_panels{dy_pairs,       count,          L.bm,
                                   dy_layout.slot, dy_layout.stride, dy_layout.inner};
        const PairPanels x_panels{x_pairs,      count,          L.bk,
                                  x_layout.slot, x_layout.stride, x_layout.inner};
        pack(c0, count, used, dy_panels, x_panels, zeros);
        const auto out_of = [&](int64_t a) {
          return partial ? partial + (a - a0) * block_elems : dw + ids[a] * block_elems;
        };
        for (int64_t a = a0; a < a1;) {
          if (L.bk != W) {
            pair_outer_block<W>(dy_panels, x_panels, c0 > q0, ids[a], L, out_of(a));
            ++a;
            continue;
          }
          // A run of blocks of one block row (consecutive in storage order).
          const int32_t row = L.row_indices[ids[a]];
          int blocks = 0;
          const uint32_t* x[kMaxPairRunBlocks];
          float* out[kMaxPairRunBlocks];
          for (; blocks < kPairRunBlocks<W> && a < a1 && L.row_indices[ids[a]] == row; ++a) {
            x[blocks] = x_panels.at(0, L.col_indices[ids[a]]);
            out[blocks++] = out_of(a);
          }
          pair_outer_run<W>(dy_panels.at(0, row), dy_panels.stride, x, x_panels.stride, blocks,
                            count, L.bm, c0 > q0, out);
        }
      }
      if (pair_splits == 1) return;
      detail::barrier();
      // The threads of this block share add the partials of its blocks, each its own part.
      int64_t r0, r1;
      even_share(a1 - a0, ps, pair_splits, &r0, &r1);
      for (int64_t a = a0 + r0; a < a0 + r1; ++a) {
        float* out = dw + ids[a] * block_elems;
        for (int s = 1; s < pair_splits; ++s) {
          const float* part = partials[s * block_splits + bs] + (a - a0) * block_elems;
          for (int64_t e = 0; e < block_elems; ++e) out[e] += part[e];
        }
      }
    });
  });
}

void grad_weight(const uint16_t* dy, const uint16_t* x, const bool* grad_block_mask, float* dw,
                 int64_t n, const BlockLayoutView& L, int threads) {
  pair_weight_gradient(grad_block_mask, dw, (n + 1) / 2, L, threads, L.cols(),
                       [&](const UsedOperands& used) {
                         return group_layout(used.cols, L.bk, L.cols(), used.scratch);
                       },
                       [&](int64_t first, int64_t count, const UsedOperands& used,
                           const PairPanels& dy_pairs, const PairPanels& x_pairs,
                           const uint16_t* zeros) {
                         for (int64_t p = 0; p < count; ++p) {
                           pack_row_pair(dy, n, L.rows(), used.rows, zeros, first + p, dy_pairs,
                                         p);
                           pack_row_pair(x, n, L.cols(), used.cols, zeros, first + p, x_pairs, p);
                         }
                       });
}

}  // namespace bf16_linear

// ------------------------------------------------------------------ convolution
//
// The implicit GEMM of conv_kernels.h with the linear pair tiles: the forward's tile rows are
// output pixels, each block's pairs read from the input pixel its tap reaches (a zero row in
// the padding); the input gradient's rows are the input pixels of one stride phase
// (conv_pixels::GradInputPlan), each block's pairs read from the output pixel that reaches
// it through the block's tap (a zero row at the borders), so a strided convolution spends no
// products on taps that reach no output pixel; the weight gradient packs, for output-pixel
// pairs, the columns of the patch matrix ([pairs][taps * C]) that kept blocks read, and runs
// the linear tile over them.
namespace bf16_conv {

using bf16_linear::width_for;
using bf16_linear::with_pair_width;
using bf16_linear::zero_row;
using detail::kTile;
using detail::run_parallel;

using conv_pixels::GradInputPlan;
using conv_pixels::input_pixel;
using conv_pixels::phase_extent;
using conv_pixels::Pixel;
using conv_pixels::pixel_of;
using conv_pixels::PixelWalk;

// Forward tile rows in the form pair_tile takes (one row at a time): conv_pixels::TapRows.
using ForwardPairRows = conv_pixels::TapRows<uint16_t, kTile>;
struct ForwardTile : ForwardPairRows {
  const uint16_t* operator()(int64_t j, int i) const { return at(j, i); }
};

// Input-gradient tile rows in the form pair_tile takes: conv_pixels::PhaseRows.
struct PhasePairRows : conv_pixels::PhaseRows<uint16_t, kTile> {
  const uint16_t* operator()(int64_t j, int i) const { return at(j, i); }
};

// Whether a forward (bm) or input gradient (bk) with blocks of that side along its output
// runs on the fp32 kernels' padded panels (conv::forward_panels, conv::grad_input_panels),
// over pairs: blocks narrower than the widest pair dot product, whose pixel-major tiles
// broadcast one pair per dot product, by the fp32 rule (conv::narrow_panels) with the
// forward's threshold for blocks half as wide as the dot product, which have the octet tiles
// (OctetGroups), and the input gradient's otherwise. Zen 4, 8x8 blocks, batch 32, native,
// padding not yet shared: forward 1.6x faster at 32x32 and 16x16 images, 1.2x slower at 4x4;
// input gradient 1.5-1.7x, strided 1.7-2x. Zen 5, padding shared, in-process A/B (bench/
// native/ab_kernels.sh), panels against octet tiles for the forward on 8x8 images: 0.81x at
// 64 channels, 1.03x at 128, 1.07-1.09x at 256, 1.29x at 512; the input gradient on 4x4
// images: 0.90x at 256 channels (29 blocks a group), 1.32x at 512, so it counts its blocks
// at half against the fp32 bar.
inline bool pair_panels(int64_t side, const ConvGeometry& g, bool forward, double group_blocks) {
  const bool octet_tiles = forward && 2 * side == pairdot::kMaxWidth;
  return side < pairdot::kMaxWidth &&
         conv::narrow_panels(g, octet_tiles, forward ? group_blocks : group_blocks / 2) &&
         (!forward || conv::padded_panels_fit(g));
}

void forward(const uint16_t* x, const uint32_t* packed, const float* bias, uint16_t* y,
             const BlockLayoutView& L, const ConvGeometry& g, int threads) {
  const int64_t pixels = g.batch * g.out_h * g.out_w, cout = L.rows();
  if (pixels == 0 || L.block_rows == 0) return;
  if (pair_panels(L.bm, g, true, conv::mean_group_blocks(L.nnz, L.block_rows))) {
    conv::forward_panels<pairdot::kMaxWidth>(x, packed, bias, y, L, g, threads);
    return;
  }
  int32_t* storage = detail::index_workspace(conv_pixels::block_taps_ints(L.nnz), 0);
  const conv_pixels::BlockTaps taps = conv_pixels::block_taps(L, g, storage);
  const uint16_t* zeros = zero_row(g.channels);
  with_pair_width(width_for(L.bm), [&](auto W) {
    run_parallel(threads, [&](int t, int nt) {
      // As the fp32 forward: each thread takes a contiguous range of output pixels, and each
      // tile, located (and tabulated at the border) once, runs every block row. Items of one
      // block row had each located their tiles again: with 16x16 blocks on 16x16 images that
      // took a third of the pass.
      int64_t begin, stop;
      conv::pixel_share(pixels, t, nt, &begin, &stop);
      ForwardTile tile;
      tile.x = x, tile.zeros = zeros, tile.g = &g, tile.taps = &taps;
      ForwardTile::Walk walk = ForwardTile::walk_from(begin, g);
      for (int64_t p0 = begin; p0 < stop; p0 += kTile) {
        const int tn = static_cast<int>(std::min<int64_t>(kTile, stop - p0));
        tile.locate_tile(walk, tn);
        tile.tabulate(tn, taps.used);
        tile.prefetch_ahead(tn, kTile);
        conv_pixels::prefetch_bytes(reinterpret_cast<uintptr_t>(y + (p0 + kTile) * cout),
                                    kTile * cout * static_cast<int64_t>(sizeof(uint16_t)));
        for (int64_t r = 0; r < L.block_rows; ++r) {
          uint16_t* out[kTile];
          for (int i = 0; i < tn; ++i) out[i] = y + (p0 + i) * cout + r * L.bm;
          bf16_linear::pair_tiles<decltype(W)::value>(
              tile, tn, packed, L.bk / 2, L.bm, nullptr, L.row_offsets[r], L.row_offsets[r + 1],
              bias ? bias + r * L.bm : nullptr, out);
        }
      }
    });
  });
}

void grad_input(const uint16_t* dy, const uint32_t* packed, uint16_t* dx,
                const BlockLayoutView& L, const ConvGeometry& g, int threads) {
  const int64_t channel_blocks = g.channels / L.bk, cout = L.rows();
  if (g.batch * g.in_h * g.in_w == 0 || channel_blocks == 0) return;
  if (pair_panels(L.bk, g, false, conv::mean_group_blocks(L.nnz, channel_blocks))) {
    conv::grad_input_panels<pairdot::kMaxWidth>(dy, packed, dx, L, g, threads);
    return;
  }
  const GradInputPlan plan =
      conv_pixels::plan_grad_input(L, g, detail::index_workspace(conv_pixels::plan_ints(L, g), 0));
  const uint16_t* zeros = zero_row(cout);
  with_pair_width(width_for(L.bk), [&](auto W) {
    run_parallel(threads, [&](int t, int nt) {
      PhasePairRows tile;
      tile.dy = dy, tile.zeros = zeros, tile.g = &g, tile.plan = &plan;
      tile.row_indices = L.row_indices, tile.bm = L.bm, tile.cout = cout;
      conv::walk_phase_tiles(tile, dx, plan, g, channel_blocks, t, nt,
                             [&](int64_t phase, int tn, uint16_t* const* pixel) {
        const int32_t* offsets = plan.group_offsets + phase * channel_blocks;
        for (int64_t cb = 0; cb < channel_blocks; ++cb) {
          uint16_t* out[kTile];
          for (int i = 0; i < tn; ++i) out[i] = pixel[i] + cb * L.bk;
          bf16_linear::pair_tiles<decltype(W)::value>(tile, tn, packed, L.bm / 2, L.bk,
                                                      plan.group_blocks, offsets[cb],
                                                      offsets[cb + 1], nullptr, out);
        }
      });
    });
  });
}

// The used block columns of the patch matrix, each as its channel offset and the slot of its
// tap among the used taps, and each used tap's row and column offsets: worked out once per
// chunk, so that packing divides nothing (two divisions per column and pair had cost more
// than the products).
struct PatchColumns {
  const int32_t* list;      // UsedPanels::list
  int64_t count;
  const int32_t* channel;   // per used column
  const int32_t* tap_slot;  // per used column: its tap in tap_row / tap_col
  int64_t taps;             // used taps
  const int32_t* tap_row;
  const int32_t* tap_col;
  int64_t min_row, max_row, min_col, max_col;  // extreme shifts of the used taps

  // Whether every used tap of the input pixel at (row, col) lies inside the input.
  bool inside(const ConvGeometry& g, int64_t row, int64_t col) const {
    return row + min_row >= 0 && row + max_row < g.in_h && col + min_col >= 0 &&
           col + max_col < g.in_w;
  }
};

// `scratch` holds 4 ints per block column.
inline PatchColumns patch_columns(const UsedPanels& used, const ConvGeometry& g,
                                  int64_t bk, int32_t* scratch) {
  int32_t *channel = scratch, *tap_slot = channel + used.count;
  int32_t *tap_row = tap_slot + used.count, *tap_col = tap_row + used.count;
  const int64_t channel_blocks = g.channels / bk;
  int64_t taps = 0, last_tap = -1;
  for (int64_t u = 0; u < used.count; ++u) {  // the used columns come in tap order
    const int64_t column = used.list[u], t = column / channel_blocks;
    if (t != last_tap) {
      tap_row[taps] = static_cast<int32_t>(conv_pixels::tap_row_shift(g, t));
      tap_col[taps] = static_cast<int32_t>(conv_pixels::tap_col_shift(g, t));
      ++taps, last_tap = t;
    }
    channel[u] = static_cast<int32_t>((column % channel_blocks) * bk);
    tap_slot[u] = static_cast<int32_t>(taps - 1);
  }
  const auto [min_row, max_row] = std::minmax_element(tap_row, tap_row + taps);
  const auto [min_col, max_col] = std::minmax_element(tap_col, tap_col + taps);
  return {used.list, used.count, channel, tap_slot, taps, tap_row, tap_col,
          taps ? *min_row : 0, taps ? *max_row : 0, taps ? *min_col : 0, taps ? *max_col : 0};
}

// x's row at input pixel (row, col) of `image`, or `zeros` (a row of g.channels zeros) in the
// padding.
inline const uint16_t* input_row(const uint16_t* x, const ConvGeometry& g, int64_t image,
                                 int64_t row, int64_t col, const uint16_t* zeros) {
  const bool inside = row >= 0 && row < g.in_h && col >= 0 && col < g.in_w;
  return inside ? x + ((image * g.in_h + row) * g.in_w + col) * g.channels : zeros;
}

// One used column's pairs over the chunk: pair p is (first[p][c + i], second[p][c + i]) for
// i < side, N at a time, p < count, into out (pair row p at out + p * side).
template <int N>
void pack_column_pairs(const uint16_t* const* first, const uint16_t* const* second, int64_t c,
                       int64_t count, int64_t side, uint32_t* out) {
  for (int64_t p = 0; p < count; ++p)
    bf16_linear::interleave_run<N>(first[p] + c, second[p] + c, side, out + p * side);
}

// The chunk's pairs [first, first + count) of the patch matrix's used columns, column by
// column: first each pair's two input rows at every used tap (a table of pointers, `zeros`
// in the padding and past an odd batch's end), then each column's pairs as one run of
// fixed-width interleaves. (Pair by pair and column by column, the per-column set-up of
// 8-wide blocks cost twice the products: 8x8 blocks, 64 channels at 32x32 images.)
inline void pack_patch_pairs(const uint16_t* x, const ConvGeometry& g, int64_t pixels,
                             int64_t first, int64_t count, const PatchColumns& cols,
                             const uint16_t* zeros, const bf16_linear::PairPanels& patches) {
  const uint16_t** rows = reinterpret_cast<const uint16_t**>(detail::thread_workspace(
      2 * cols.taps * count * int64_t{sizeof(void*) / sizeof(float)}, detail::kPanelOutSlot));
  PixelWalk walk(2 * first, g.out_h, g.out_w);  // first < pairs: a pixel
  for (int64_t p = 0; p < count; ++p) {
    const Pixel a = walk.next(), b = walk.next();
    const bool second = 2 * (first + p) + 1 < pixels;
    const int64_t ah = a.row * g.stride_h, aw = a.col * g.stride_w;
    const int64_t bh = b.row * g.stride_h, bw = b.col * g.stride_w;
    // Pixels whose used taps all land inside the input (most) find each tap's row by one
    // addition to their own offset (which itself may lie in the padding), as TapRows.
    const bool a_inside = cols.inside(g, ah, aw), b_inside = second && cols.inside(g, bh, bw);
    const int64_t a_at = ((a.image * g.in_h + ah) * g.in_w + aw) * g.channels;
    const int64_t b_at = ((b.image * g.in_h + bh) * g.in_w + bw) * g.channels;
    for (int64_t s = 0; s < cols.taps; ++s) {
      const int64_t r = cols.tap_row[s], c = cols.tap_col[s];
      const int64_t shift = (r * g.in_w + c) * g.channels;
      rows[2 * s * count + p] =
          a_inside ? x + (a_at + shift) : input_row(x, g, a.image, ah + r, aw + c, zeros);
      rows[(2 * s + 1) * count + p] =
          b_inside ? x + (b_at + shift)
                   : second ? input_row(x, g, b.image, bh + r, bw + c, zeros) : zeros;
    }
  }
  if (patches.inner) {  // tap panels: each used tap's pairs of whole input rows
    for (int64_t s = 0; s < cols.taps; ++s) {
      const uint16_t* const* tap_rows = rows + 2 * s * count;
      uint32_t* out = patches.data + s * count * patches.stride;
      bf16_linear::with_interleave_run(patches.stride, [&](auto run) {
        pack_column_pairs<decltype(run)::value>(tap_rows, tap_rows + count, 0, count,
                                                patches.stride, out);
      });
    }
    return;
  }
  const int64_t side = patches.side;
  for (int64_t u = 0; u < cols.count; ++u) {
    const uint16_t* const* tap_rows = rows + 2 * cols.tap_slot[u] * count;
    uint32_t* out = patches.at(0, cols.list[u]);
    const int64_t c = cols.channel[u];
    bf16_linear::with_interleave_run(side, [&](auto run) {
      pack_column_pairs<decltype(run)::value>(tap_rows, tap_rows + count, c, count, side, out);
    });
  }
}

// How the weight gradient packs the chunk's patch pairs of the `used` columns: tap panels
// (every channel of each used tap, one interleave per pixel pair and tap) where
// packs_whole_rows says so of the used taps' input rows, else a panel per column (the tap
// panels' tables in scratch + 4 * block_cols, after patch_columns's).
inline bf16_linear::PairLayout patch_layout(const bf16_linear::UsedOperands& used,
                                            const ConvGeometry& g, const BlockLayoutView& L) {
  const PatchColumns cols = patch_columns(used.cols, g, L.bk, used.scratch);
  if (!bf16_linear::packs_whole_rows(cols.count * L.bk, cols.taps * g.channels, L.bk,
                                     g.channels))
    return {used.cols.slot, nullptr, used.cols.count, L.bk};
  int32_t* slot = used.scratch + 4 * L.block_cols;
  int32_t* inner = slot + L.block_cols;
  for (int64_t u = 0; u < cols.count; ++u) {
    slot[cols.list[u]] = cols.tap_slot[u];
    inner[cols.list[u]] = cols.channel[u];
  }
  return {slot, inner, cols.taps, g.channels};
}

void grad_weight(const uint16_t* dy, const uint16_t* x, const bool* grad_block_mask, float* dw,
                 const BlockLayoutView& L, const ConvGeometry& g, int threads) {
  const int64_t pixels = g.batch * g.out_h * g.out_w;
  bf16_linear::pair_weight_gradient(
      grad_block_mask, dw, (pixels + 1) / 2, L, threads, g.channels,
      [&](const bf16_linear::UsedOperands& used) { return patch_layout(used, g, L); },
      [&](int64_t first, int64_t count, const bf16_linear::UsedOperands& used,
          const bf16_linear::PairPanels& dy_pairs, const bf16_linear::PairPanels& patch_pairs,
          const uint16_t* zeros) {
        if (count == 0) return;
        for (int64_t p = 0; p < count; ++p)
          bf16_linear::pack_row_pair(dy, pixels, L.rows(), used.rows, zeros, first + p,
                                     dy_pairs, p);
        const PatchColumns cols = patch_columns(used.cols, g, L.bk, used.scratch);
        pack_patch_pairs(x, g, pixels, first, count, cols, zeros, patch_pairs);
      });
}

}  // namespace bf16_conv

// ------------------------------------------------------------------ the blocks' packing

namespace bf16_pack {

// `count` floats rounded to bf16 as bf16::from_float does, in a form the compiler vectorises
// (no branch; per element, scalar, the packing had cost 1.2-1.3 ms of a 42-46 ms bf16 step).
inline void round_to_bf16(const float* values, int64_t count, uint16_t* out) {
  for (int64_t e = 0; e < count; ++e) {
    uint32_t word;
    std::memcpy(&word, values + e, sizeof word);
    const uint32_t rounded = (word + 0x7fffu + ((word >> 16) & 1u)) >> 16;
    const uint32_t quiet_nan = (word >> 16) | 0x40u;
    out[e] = static_cast<uint16_t>((word & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
  }
}

// Block `block` [bm, bk] rounded once into `scratch`, then written as pairs both ways:
// forward[p][i] = (b(i, 2p), b(i, 2p + 1)) and grad_input[p][i] = (b(2p, i), b(2p + 1, i)), b
// the rounded block: the fp32 values are read once for both.
inline void pack_block(const float* block, uint16_t* scratch, int64_t bm, int64_t bk,
                       uint32_t* forward, uint32_t* grad_input) {
  round_to_bf16(block, bm * bk, scratch);
  for (int64_t p = 0; p < bk / 2; ++p)
    for (int64_t i = 0; i < bm; ++i) forward[p * bm + i] = bf16::load_pair(scratch + i * bk + 2 * p);
  for (int64_t p = 0; p < bm / 2; ++p) {
    const uint16_t* first = scratch + 2 * p * bk;
    for (int64_t i = 0; i < bk; ++i) grad_input[p * bk + i] = bf16::pair(first[i], first[bk + i]);
  }
}

void pack_blocks(const float* values, uint16_t* packed_forward, uint16_t* packed_grad_input,
                 int64_t nnz, int64_t bm, int64_t bk, int threads) {
  const int64_t block_elems = bm * bk;
  detail::run_parallel(threads, [&](int t, int nt) {
    uint16_t* scratch = reinterpret_cast<uint16_t*>(
        detail::thread_workspace((block_elems + 1) / 2, detail::kScratchSlot));
    int64_t begin, end;
    even_share(nnz, t, nt, &begin, &end);
    for (int64_t j = begin; j < end; ++j)
      pack_block(values + j * block_elems, scratch, bm, bk,
                 reinterpret_cast<uint32_t*>(packed_forward + j * block_elems),
                 reinterpret_cast<uint32_t*>(packed_grad_input + j * block_elems));
  });
}

}  // namespace bf16_pack

const Bf16KernelTable* bf16_kernel_table() {
  static const Bf16KernelTable table{SPARCL_BF16_NAME,        &bf16_linear::forward,
                                     &bf16_linear::grad_input, &bf16_linear::grad_weight,
                                     &bf16_conv::forward,      &bf16_conv::grad_input,
                                     &bf16_conv::grad_weight,  &bf16_pack::pack_blocks};
  return &table;
}

}  // namespace sparcl::SPARCL_ISA_NS
