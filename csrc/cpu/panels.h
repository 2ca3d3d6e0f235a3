// Batch-major panels: the layout in which blocks one vector wide (or narrower) keep the
// multiply-add units busy.
//
// The row-major tiles (accumulate_tile) hold kTile batch rows x the block's output side in
// vectors and broadcast one operand value per row and step. With one vector per row (bm == W
// in the forward, bk == W in the input gradient) that is one broadcast load per multiply-add;
// loads then bound the tile at 40-45 % of the FMA peak (measured with operands in L1 on an
// Ice Lake server, whatever the tile height), against 78-90 % for two vectors per row. In a
// panel the batch is the contiguous dimension, panel[d, n] = a[n, d], with n padded with zeros
// to whole vectors. A panel tile holds kRunRows rows of the block x kPanelVectors vectors of
// the batch, broadcasts weights (contiguous within a block) and loads panel rows:
// kRunRows + kPanelVectors loads for kRunRows * kPanelVectors multiply-adds whatever the
// block side, and full-width vectors for blocks narrower than one vector.
//
// The passes pack their operand into a panel and unpack the output panel (register
// transposes, O(batch x features) against O(batch x features x stored blocks per group)
// multiply-adds).
#pragma once

#include "microkernels.h"

namespace sparcl::SPARCL_ISA_NS {
namespace detail {

constexpr int kPanelVectors = kTile * kMaxVectors / kRunRows;  // batch vectors per tile row

// A panel of `features` rows x the batch padded to whole vectors, stored in batch tiles of
// kPanelVectors vectors: tile t holds columns [t * tile, t * tile + width(t)) of every row,
// rows width(t) floats apart, so that a block's panel rows are one contiguous run (rows a
// power-of-two batch apart would share a few L1 sets: measured 16 % of the peak at 1,024 rows
// against 46 % at 48 with a plain row-major panel).
struct PanelShape {
  int64_t features;
  int64_t count;   // batch rows
  int64_t padded;  // count rounded up to whole vectors
  int64_t tile;    // kPanelVectors * W

  PanelShape(int64_t features_, int64_t count_, int W)
      : features(features_),
        count(count_),
        padded((count_ + W - 1) / W * W),
        tile(int64_t{kPanelVectors} * W) {}
  int64_t tiles() const { return (padded + tile - 1) / tile; }
  int64_t width(int64_t t) const { return std::min(tile, padded - t * tile); }
  int64_t offset(int64_t t) const { return t * tile * features; }
  int64_t size() const { return padded * features; }
};

// panel row d, batch n = a[n * lda + d] for d in [d0, d1) and n < count; zero for the padding.
template <int W>
void pack_panel(const float* a, int64_t lda, const PanelShape& shape, int64_t d0, int64_t d1,
                float* panel) {
  using V = simd::Vec<W>;
  for (int64_t t = 0; t < shape.tiles(); ++t) {
    const int64_t first = t * shape.tile, width = shape.width(t);
    const int64_t full = std::clamp<int64_t>(shape.count - first, 0, width) / W * W;
    float* tile = panel + shape.offset(t);
    int64_t d = d0;
    for (; d + W <= d1; d += W) {
      for (int64_t n = 0; n < full; n += W) {
        V rows[W];
        SPARCL_UNROLL
        for (int i = 0; i < W; ++i) rows[i] = simd::load<W>(a + (first + n + i) * lda + d);
        simd::transpose<W>(rows);
        SPARCL_UNROLL
        for (int i = 0; i < W; ++i) simd::store<W>(tile + (d + i) * width + n, rows[i]);
      }
    }
    for (int64_t e = d0; e < d1; ++e)
      for (int64_t n = e < d ? full : 0; n < width; ++n)
        tile[e * width + n] = first + n < shape.count ? a[(first + n) * lda + e] : 0.0f;
  }
}

// out[n * ldo + d] = panel row d, batch n, for d in [d0, d1) and n < count.
template <int W>
void unpack_panel(const float* panel, const PanelShape& shape, int64_t d0, int64_t d1,
                  float* out, int64_t ldo) {
  using V = simd::Vec<W>;
  for (int64_t t = 0; t < shape.tiles(); ++t) {
    const int64_t first = t * shape.tile, width = shape.width(t);
    const int64_t valid = std::clamp<int64_t>(shape.count - first, 0, width);
    const int64_t full = valid / W * W;
    const float* tile = panel + shape.offset(t);
    int64_t d = d0;
    for (; d + W <= d1; d += W) {
      for (int64_t n = 0; n < full; n += W) {
        V rows[W];
        SPARCL_UNROLL
        for (int i = 0; i < W; ++i) rows[i] = simd::load<W>(tile + (d + i) * width + n);
        simd::transpose<W>(rows);
        SPARCL_UNROLL
        for (int i = 0; i < W; ++i) simd::store<W>(out + (first + n + i) * ldo + d, rows[i]);
      }
    }
    for (int64_t e = d0; e < d1; ++e)
      for (int64_t n = e < d ? full : 0; n < valid; ++n)
        out[(first + n) * ldo + e] = tile[e * width + n];
  }
}

// Packs or unpacks features [0, features) on the threads of the enclosing parallel region,
// W features per share unit (whole transposes).
template <int W, typename Body>
void share_features(int64_t features, int t, int threads, const Body& body) {
  const int64_t units = (features + W - 1) / W;
  const int64_t begin = units * t / threads, end = units * (t + 1) / threads;
  body(begin * W, std::min(features, end * W));
}

// The stored blocks of one group (a block row of the forward, a block column of the input
// gradient) and the panel they read. Block j's weight for step p and tile row i is
// weights[j * block_elems + p * ldw + i] (tile rows contiguous: the forward passes the
// transposed blocks, the input gradient the blocks as stored); its panel rows are rows
// offset_of[j] * P + p of the panel.
struct PanelGroup {
  const float* weights;
  int64_t block_elems;
  int64_t ldw;
  int64_t P;
  const int32_t* ids;  // null: blocks sb .. se in storage order
  int32_t sb, se;
  const int32_t* offset_of;
  const float* panel;
};

// Rows i0 .. i0 + TM of one batch tile of a group's output panel (`out`, rows `ld` floats
// apart, as the operand tile `in`), over the group's blocks [s0, s1):
//   out[(i0 + i) * ld + W q ...] (+)= sum over those blocks j and p < P of
//       weight(j, p, i0 + i) * in[(offset_of[j] * P + p) * ld + W q ...]
// starting from out when `accumulate`, else from init[i0 + i] (or 0); a TM x KV-vector tile.
template <int W, int TM, int KV>
void panel_tile(const PanelGroup& g, int32_t s0, int32_t s1, const float* in, int64_t ld,
                int64_t i0, const float* init, bool accumulate, float* out) {
  using V = simd::Vec<W>;
  V acc[TM][KV];
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    const V start = init ? simd::broadcast<W>(init[i0 + i]) : simd::zero<W>();
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q)
      acc[i][q] = accumulate ? simd::load<W>(out + (i0 + i) * ld + W * q) : start;
  }
  for (int32_t s = s0; s < s1; ++s) {
    const int64_t j = g.ids ? g.ids[s] : s;
    const float* w = g.weights + j * g.block_elems + i0;
    const float* rows = in + static_cast<int64_t>(g.offset_of[j]) * g.P * ld;
    for (int64_t p = 0; p < g.P; ++p) {
      V pv[KV];
      SPARCL_UNROLL
      for (int q = 0; q < KV; ++q) pv[q] = simd::load<W>(rows + p * ld + W * q);
      SPARCL_UNROLL
      for (int i = 0; i < TM; ++i) {
        const float wv = w[p * g.ldw + i];
        SPARCL_UNROLL
        for (int q = 0; q < KV; ++q) acc[i][q] = simd::multiply_add<W>(wv, pv[q], acc[i][q]);
      }
    }
  }
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q) simd::store<W>(out + (i0 + i) * ld + W * q, acc[i][q]);
  }
}

// Bytes of operands a batch tile's row tiles re-read from L1: the blocks of one step (their
// panel rows and weights) must fit beside the output tile, or a group of more blocks than that
// evicts them between its row tiles (measured 81 % of the peak with 4 blocks of 16x16 in L1,
// 61 % with 13).
constexpr int64_t kPanelStepBytes = 24 * 1024;

// Output rows [first_row, first_row + rows) of batch tiles [t0, t1) for one group, in steps of
// as many blocks as keep their operands in L1, the later steps adding to the output tile.
template <int W>
void panel_slab(const PanelGroup& g, const PanelShape& in_shape, const PanelShape& out_shape,
                int64_t first_row, int64_t rows, int64_t t0, int64_t t1, const float* init,
                float* out_panel) {
  const int64_t block_bytes = (g.P * in_shape.tile + g.block_elems) * int64_t{sizeof(float)};
  const int32_t step = static_cast<int32_t>(std::max<int64_t>(1, kPanelStepBytes / block_bytes));
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t width = in_shape.width(t);
    const float* in = g.panel + in_shape.offset(t);
    float* out = out_panel + out_shape.offset(t) + first_row * width;
    with_constant<kPanelVectors>(static_cast<int>(width / W), [&](auto KV) {
      int32_t s0 = g.sb;
      do {  // at least once: a group without blocks still writes its initial values
        const int32_t s1 = std::min(g.se, s0 + step);
        for (int64_t i0 = 0; i0 < rows; i0 += kRunRows) {
          const int tm = static_cast<int>(std::min<int64_t>(kRunRows, rows - i0));
          with_constant<kRunRows>(tm, [&](auto TM) {
            panel_tile<W, decltype(TM)::value, decltype(KV)::value>(g, s0, s1, in, width, i0,
                                                                     init, s0 != g.sb, out);
          });
        }
        s0 = s1;
      } while (s0 < g.se);
    });
  }
}

}  // namespace detail
}  // namespace sparcl::SPARCL_ISA_NS
