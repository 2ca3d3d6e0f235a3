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
#include "partition.h"

namespace sparcl::SPARCL_ISA_NS {
namespace detail {

constexpr int kPanelVectors = kTile * kMaxVectors / kRunRows;  // batch vectors per tile row

// dst[i * ldd + k] = src[k * lds + i] for i, k < W: one W x W register transpose, the step
// every pack and unpack below takes.
template <int W>
inline void transpose_tile(const float* src, int64_t lds, float* dst, int64_t ldd) {
  simd::Vec<W> rows[W];
  SPARCL_UNROLL
  for (int i = 0; i < W; ++i) rows[i] = simd::load<W>(src + i * lds);
  simd::transpose<W>(rows);
  SPARCL_UNROLL
  for (int i = 0; i < W; ++i) simd::store<W>(dst + i * ldd, rows[i]);
}

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

// Whether W rows of a row-major matrix `ld` floats apart land in so few L1 sets (row strides
// a multiple of 2 KiB: every row in one or two sets) that transposing straight from or into
// them thrashes those sets. Such panels go through an L1 staging tile (row runs copied
// contiguously): on Zen 5 a 256 x 2048 unpack took 0.30 ms straight and 0.07 ms staged,
// the pack 0.14 and 0.06 (3072 features: 0.44 / 0.09 and 0.21 / 0.10 ms; 1536 and 1024
// alike); rows 3 KiB apart (768 features) ran 0.02 ms either way.
inline bool rows_share_sets(int64_t ld) { return ld * int64_t{sizeof(float)} % 2048 == 0; }

// Features per staging tile: W rows of them (plus a vector of padding per row) fill 17 KiB
// of L1 with 16-float vectors.
constexpr int64_t kStagedFeatures = 256;

// For each run of up to kStagedFeatures whole vectors of features in [d0, d1): body(d, stop).
template <int W, typename Body>
void for_each_staged_run(int64_t d0, int64_t d1, const Body& body) {
  const int64_t end = d0 + (d1 - d0) / W * W;
  for (int64_t d = d0; d < end; d += kStagedFeatures)
    body(d, std::min(end, d + kStagedFeatures));
}

// panel row d, batch n = a[n * lda + d] for d in [d0, d1) and n < count in batch tiles
// [t0, t1) (all of them by default); zero for the padding.
template <int W>
void pack_panel(const float* a, int64_t lda, const PanelShape& shape, int64_t d0, int64_t d1,
                float* panel, int64_t t0 = 0, int64_t t1 = -1) {
  constexpr int64_t lds = kStagedFeatures + W;
  float stage[W * lds];
  const bool staged = rows_share_sets(lda);
  for (int64_t t = t0; t < (t1 < 0 ? shape.tiles() : t1); ++t) {
    const int64_t first = t * shape.tile, width = shape.width(t);
    const int64_t full = std::clamp<int64_t>(shape.count - first, 0, width) / W * W;
    float* tile = panel + shape.offset(t);
    for_each_staged_run<W>(d0, d1, [&](int64_t d, int64_t stop) {
      for (int64_t n = 0; n < full; n += W) {
        const float* rows = a + (first + n) * lda;
        if (staged) {
          for (int64_t i = 0; i < W; ++i)
            std::copy(rows + i * lda + d, rows + i * lda + stop, stage + i * lds);
          for (int64_t e = d; e < stop; e += W)
            transpose_tile<W>(stage + (e - d), lds, tile + e * width + n, width);
        } else {
          for (int64_t e = d; e < stop; e += W)
            transpose_tile<W>(rows + e, lda, tile + e * width + n, width);
        }
      }
    });
    const int64_t d = d0 + (d1 - d0) / W * W;
    for (int64_t e = d0; e < d1; ++e)
      for (int64_t n = e < d ? full : 0; n < width; ++n)
        tile[e * width + n] = first + n < shape.count ? a[(first + n) * lda + e] : 0.0f;
  }
}

// out[n * ldo + d] = panel row d, batch n, for d in [d0, d1) and n < count in batch tiles
// [t0, t1) (all of them by default).
template <int W>
void unpack_panel(const float* panel, const PanelShape& shape, int64_t d0, int64_t d1,
                  float* out, int64_t ldo, int64_t t0 = 0, int64_t t1 = -1) {
  constexpr int64_t lds = kStagedFeatures + W;
  float stage[W * lds];
  const bool staged = rows_share_sets(ldo);
  for (int64_t t = t0; t < (t1 < 0 ? shape.tiles() : t1); ++t) {
    const int64_t first = t * shape.tile, width = shape.width(t);
    const int64_t valid = std::clamp<int64_t>(shape.count - first, 0, width);
    const int64_t full = valid / W * W;
    const float* tile = panel + shape.offset(t);
    for_each_staged_run<W>(d0, d1, [&](int64_t d, int64_t stop) {
      for (int64_t n = 0; n < full; n += W) {
        float* rows = out + (first + n) * ldo;
        if (staged) {
          for (int64_t e = d; e < stop; e += W)
            transpose_tile<W>(tile + e * width + n, width, stage + (e - d), lds);
          for (int64_t i = 0; i < W; ++i)
            std::copy(stage + i * lds, stage + i * lds + (stop - d), rows + i * ldo + d);
        } else {
          for (int64_t e = d; e < stop; e += W)
            transpose_tile<W>(tile + e * width + n, width, rows + e, ldo);
        }
      }
    });
    const int64_t d = d0 + (d1 - d0) / W * W;
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

// The stored blocks of one group (a block row of a forward, a block column or channel block of
// an input gradient). Block j's weight for step p and tile row i is
// weights[j * block_elems + p * ldw + i] (tile rows contiguous: forwards pass the transposed
// blocks, input gradients the blocks as stored); it reads panel rows offset_of[j] * P + p,
// shift[j] batch columns on (a convolution's tap; null: 0).
template <typename Weight>
struct PanelGroupOf {
  const Weight* weights;
  int64_t block_elems;
  int64_t ldw;
  int64_t P;
  const int32_t* ids;  // null: blocks sb .. se in storage order
  int32_t sb, se;
  const int32_t* offset_of;
  const int64_t* shift;
};
// fp32 weights; the bf16 kernels' panels hold pairs of bf16 channels and weights
// (PanelGroupOf<uint32_t>, their panel_tile in bf16_kernels.h).
using PanelGroup = PanelGroupOf<float>;

// The storage index of the group's block at position s.
template <typename Weight>
inline int64_t block_at(const PanelGroupOf<Weight>& g, int32_t s) {
  return g.ids ? g.ids[s] : s;
}

// Where, from a tile's first operand column, the panel rows of the group's block at position
// s start (rows in_ld elements apart).
template <typename Weight>
inline int64_t block_rows_offset(const PanelGroupOf<Weight>& g, int32_t s, int64_t in_ld) {
  const int64_t j = block_at(g, s);
  return static_cast<int64_t>(g.offset_of[j]) * g.P * in_ld + (g.shift ? g.shift[j] : 0);
}

// Where one batch tile of a pass reads and writes: its first column in the operand panel and
// in the output panel's first row of the group, the row strides, and its width in vectors.
struct PanelTile {
  const float* in;
  int64_t in_ld;
  float* out;
  int64_t out_ld;
  int vectors;
};

// Rows i0 .. i0 + TM of one batch tile of a group's output, over the group's blocks [s0, s1):
//   out[(i0 + i) * out_ld + W q ...] (+)= sum over those blocks j and p < P of
//       weight(j, p, i0 + i) * in[(offset_of[j] * P + p) * in_ld + shift[j] + W q ...]
// starting from out when `accumulate`, else from init[i0 + i] (or 0); a TM x KV-vector tile.
//
// With Prefetch, each block's steps also prefetch the next block's panel rows: where the
// block has a single row tile (a side of at most kRunRows) nothing else hides the L2 latency
// of the jump to the next block's rows (8x8 linear blocks measured 10-15 % faster with it;
// 16x16 blocks, two row tiles, 20 % slower from the extra loads; a run-time switch in the
// loop cost them 4-40 % too, hence the template parameter).
template <int W, int TM, int KV, bool Prefetch>
void panel_tile(const PanelGroup& g, int32_t s0, int32_t s1, const PanelTile& tile, int64_t i0,
                const float* init, bool accumulate) {
  using V = simd::Vec<W>;
  V acc[TM][KV];
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    const V start = init ? simd::broadcast<W>(init[i0 + i]) : simd::zero<W>();
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q)
      acc[i][q] = accumulate ? simd::load<W>(tile.out + (i0 + i) * tile.out_ld + W * q) : start;
  }
  for (int32_t s = s0; s < s1; ++s) {
    const float* w = g.weights + block_at(g, s) * g.block_elems + i0;
    const float* rows = tile.in + block_rows_offset(g, s, tile.in_ld);
    const float* next =
        Prefetch && s + 1 < s1 ? tile.in + block_rows_offset(g, s + 1, tile.in_ld) : nullptr;
    for (int64_t p = 0; p < g.P; ++p) {
      if constexpr (Prefetch) {
        if (next) {
          SPARCL_UNROLL
          for (int q = 0; q < KV; ++q) __builtin_prefetch(next + p * tile.in_ld + W * q);
        }
      }
      V pv[KV];
      SPARCL_UNROLL
      for (int q = 0; q < KV; ++q) pv[q] = simd::load<W>(rows + p * tile.in_ld + W * q);
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
    for (int q = 0; q < KV; ++q)
      simd::store<W>(tile.out + (i0 + i) * tile.out_ld + W * q, acc[i][q]);
  }
}

// Bytes of operands a batch tile's row tiles re-read from L1: the blocks of one step (their
// panel rows and weights) must fit beside the output tile, or a group of more blocks than that
// evicts them between its row tiles (measured 81 % of the peak with 4 blocks of 16x16 in L1,
// 61 % with 13).
constexpr int64_t kPanelStepBytes = 24 * 1024;

// Output rows [0, rows) of batch tiles [t0, t1) of one group (tile_at(t): the PanelTile of
// tile t), in steps of as many blocks as keep their operands in L1, the later steps adding to
// the output tile.
template <int W, typename Group, typename TileAt>
void panel_slab(const Group& g, int64_t rows, int64_t t0, int64_t t1, const TileAt& tile_at,
                const float* init) {
  const int64_t tile_columns = int64_t{kPanelVectors} * W;
  const int64_t block_bytes = (g.P * tile_columns + g.block_elems) * int64_t{sizeof(float)};
  const int32_t step = static_cast<int32_t>(std::max<int64_t>(1, kPanelStepBytes / block_bytes));
  const bool prefetch = rows <= kRunRows;
  for (int64_t t = t0; t < t1; ++t) {
    const PanelTile tile = tile_at(t);
    with_constant<kPanelVectors>(tile.vectors, [&](auto KV) {
      int32_t s0 = g.sb;
      do {  // at least once: a group without blocks still writes its initial values
        const int32_t s1 = std::min(g.se, s0 + step);
        for (int64_t i0 = 0; i0 < rows; i0 += kRunRows) {
          const int tm = static_cast<int>(std::min<int64_t>(kRunRows, rows - i0));
          with_constant<kRunRows>(tm, [&](auto TM) {
            constexpr int kTM = decltype(TM)::value, kKV = decltype(KV)::value;
            if (prefetch)
              panel_tile<W, kTM, kKV, true>(g, s0, s1, tile, i0, init, s0 != g.sb);
            else
              panel_tile<W, kTM, kKV, false>(g, s0, s1, tile, i0, init, s0 != g.sb);
          });
        }
        s0 = s1;
      } while (s0 < g.se);
    });
  }
}

// Multiply-adds per panel element packed or unpacked below which the transposes of a
// whole-batch panel (the linear passes) cost more than the panel tiles save. Measured on
// convolutions with 8x8 blocks at 0.9 over whole-batch panels (AVX-512, one thread): 29
// flops per element (32 channels) ran 10-15 % slower on panels, 58 (64 channels) either way,
// 115 (128 channels) 1.06-2x faster; the 2048 x 2048 linear layer at 0.9 has 205.
constexpr int64_t kPanelMinFlopsPerElement = 100;

// Whether a pass of `nnz` stored blocks of `block_elems` over panels of `features` operand
// and `outputs` output rows does enough work per packed element to pay for the transposes.
inline bool panels_pay(int64_t nnz, int64_t block_elems, int64_t features, int64_t outputs) {
  return 2 * nnz * block_elems >= kPanelMinFlopsPerElement * (features + outputs);
}

// Panel tiles per work item: as many as keep a chunk's panel rows (`features` of them, tiles
// of `tile` columns) in a slice of L2, at most 8.
inline int64_t panel_chunk(int64_t features, int64_t tile) {
  return std::clamp<int64_t>(kCacheSliceFloats / std::max<int64_t>(features, 1) / tile, 1, 8);
}

// A panel pass splits the batch between the threads from this many tiles a thread on.
constexpr int64_t kBatchSplitTiles = 2;

// The steps every panel pass takes on `threads` threads. With at least kBatchSplitTiles batch
// tiles a thread, each thread takes its share of the tiles and, chunk by chunk,
// pack(0, features, c0, c1) packs every feature of tiles [c0, c1), runs every group of
// `offsets` over them (group g's output rows [0, side) of tile t at tile_at(g, t) from
// group(g)'s blocks starting from init(g)) and unpack(0, outputs, c0, c1) unpacks them: no
// barrier, and no panel moves between cores. (Shared whole-batch panels, packed and
// unpacked by feature shares around the products, had run 2 threads at 1.35x one.) Fewer
// tiles: pack(d0, d1, 0, tiles) of the threads' shares of the features, then the (chunk of
// tiles, group) items (in bands of band_floats floats of blocks, see item_grid), then the
// outputs' unpack by shares likewise.
template <int W, typename Pack, typename Group, typename TileAt, typename Init, typename Unpack>
void run_panel_pass(int threads, int64_t features, int64_t outputs, int64_t tiles, int64_t side,
                    const int32_t* offsets, int64_t groups, int64_t block_elems,
                    int64_t band_floats, const Pack& pack,
                    const Group& group, const TileAt& tile_at, const Init& init,
                    const Unpack& unpack) {
  const int64_t chunk = panel_chunk(features, int64_t{kPanelVectors} * W);
  const bool split_batch = tiles >= kBatchSplitTiles * std::max(threads, 1);
  const ItemGrid grid = item_grid(offsets, groups, tiles, chunk, block_elems, band_floats);
  run_parallel(threads, [&](int t, int nt) {
    if (split_batch) {
      int64_t b0, b1;
      even_share(tiles, t, nt, &b0, &b1);
      for (int64_t c0 = b0; c0 < b1; c0 += chunk) {
        const int64_t c1 = std::min(b1, c0 + chunk);
        pack(0, features, c0, c1);
        for (int64_t g = 0; g < groups; ++g)
          panel_slab<W>(group(g), side, c0, c1,
                        [&](int64_t tile) { return tile_at(g, tile); }, init(g));
        unpack(0, outputs, c0, c1);
      }
      return;
    }
    share_features<W>(features, t, nt, [&](int64_t d0, int64_t d1) { pack(d0, d1, 0, tiles); });
    barrier();
    for_each_item(grid, tiles, chunk, t, nt, [&](int64_t g, int64_t t0, int64_t t1) {
      panel_slab<W>(group(g), side, t0, t1, [&](int64_t tile) { return tile_at(g, tile); },
                    init(g));
    });
    barrier();
    share_features<W>(outputs, t, nt,
                      [&](int64_t d0, int64_t d1) { unpack(d0, d1, 0, tiles); });
  });
}

// ------------------------------------------------------------------ zero-padded image panels
//
// A stride-1 convolution is a panel pass over its operand's zero-padded images, flattened:
// panel column (image * rows + r) * cols + c holds padded pixel (r, c), so a kernel tap is a
// constant shift of the column, and the output pixel (oh, ow) is column (image * rows + oh) *
// cols + ow of the same grid (the columns past the output image are computed and dropped).
// The passes pack and unpack the grid in chunks of whole rows (image * rows + r) that fit
// in L2.

struct PaddedGrid {
  int64_t batch, rows, cols;  // the padded images
  int64_t top, left;          // where the operand image starts in them
  int64_t height, width;      // the operand image

  int64_t positions() const { return batch * rows * cols; }
};

// Where the pixels of channels-last images lie: pixel (image, row, col) starts image *
// image_ld + row * row_ld + col * pixel_ld elements from the images' first pixel. Dense
// images, or one stride phase of them (every stride-th pixel of every stride-th row).
struct ImagePlacement {
  int64_t image_ld, row_ld, pixel_ld;
};

// Images height x width x channels; with strides, the pixels of one stride phase of them
// (from the phase's first pixel).
inline ImagePlacement dense_images(int64_t height, int64_t width, int64_t channels,
                                   int64_t stride_h = 1, int64_t stride_w = 1) {
  return {height * width * channels, stride_h * width * channels, stride_w * channels};
}

// Panel row stride for `columns` columns: whole cache lines, an odd number of them (rows a
// power of two of lines apart would share L1 sets).
inline int64_t panel_row_stride(int64_t columns) {
  const int64_t lines = (columns + 15) / 16;
  return (lines | 1) * 16;
}

// Zeroes the n floats of one panel row's padding columns (a few): with std::fill, GCC called
// memset twice per channel and grid row, 8 % of the 8x8-block passes on 32x32 images.
inline void zero_padding(float* p, int64_t n) {
  if (n > 3) {
    std::fill_n(p, n, 0.0f);
    return;
  }
  if (n > 0) p[0] = 0.0f;
  if (n > 1) p[1] = 0.0f;
  if (n > 2) p[2] = 0.0f;
}

// The widest register transpose (16, 8 or 4 floats, at most W) whose tiles an image row of
// `width` pixels holds whole; 0 for narrower rows. Rows under one W-wide tile (8x8 and 4x4
// images on AVX-512) had gone element by element.
inline int transpose_width(int64_t width, int W) {
  for (int tw = W; tw >= 4; tw /= 2)
    if (width >= tw) return tw;
  return 0;
}

// Panel rows [0, features) (row stride ld) of the padded grid rows [r0, r1) of `grid` (rows
// past the grid are zeros): column (r - r0) * grid.cols + c holds padded pixel c of row r;
// the columns past the rows, up to ld, are zeroed. The images are channels-last with
// `features` channels, at `place` from a.
template <int W>
void pack_padded_rows(const float* a, int64_t features, const PaddedGrid& grid,
                      const ImagePlacement& place, int64_t r0, int64_t r1, float* panel,
                      int64_t ld) {
  const int tw = transpose_width(grid.width, W);
  const int64_t full = tw ? grid.width / tw * tw : 0, vector_end = tw ? features / tw * tw : 0;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t image = r / grid.rows, row = r % grid.rows - grid.top;
    float* dst = panel + (r - r0) * grid.cols;
    if (image >= grid.batch || row < 0 || row >= grid.height) {
      for (int64_t e = 0; e < features; ++e) std::fill_n(dst + e * ld, grid.cols, 0.0f);
      continue;
    }
    const int64_t right = grid.cols - grid.left - grid.width;
    for (int64_t e = 0; e < features; ++e) {
      zero_padding(dst + e * ld, grid.left);
      zero_padding(dst + e * ld + grid.left + grid.width, right);
    }
    const float* src = a + image * place.image_ld + row * place.row_ld;
    const int64_t step = place.pixel_ld;
    // The next image row into L2 while this one is transposed: from memory, the transposes'
    // strided reads left the hardware prefetchers behind (8x8 blocks on AVX-512, 64 channels
    // at batch 32, caches evicted: each panel pass 1.05-1.17x faster).
    if (row + 1 < grid.height)
      for (int64_t c = 0; c < grid.width; ++c)
        for (int64_t e = 0; e < features; e += 64 / sizeof(float))
          __builtin_prefetch(src + place.row_ld + c * step + e, 0, 2);
    float* pixels = dst + grid.left;
    if (tw)
      with_width(tw, [&](auto width) {
        constexpr int T = decltype(width)::value;
        for (int64_t d = 0; d < vector_end; d += T)
          for (int64_t c = 0; c < full; c += T)
            transpose_tile<T>(src + c * step + d, step, pixels + d * ld + c, ld);
      });
    for (int64_t e = 0; e < features; ++e)
      for (int64_t c = e < vector_end ? full : 0; c < grid.width; ++c)
        pixels[e * ld + c] = src[c * step + e];
  }
  for (int64_t e = 0; e < features; ++e)
    std::fill(panel + e * ld + (r1 - r0) * grid.cols, panel + (e + 1) * ld, 0.0f);
}

// The inverse for an output grid (top = left = 0, height x width the output image): the
// channels-last images at `place` from out (`outputs` channels) at the pixels of grid rows
// [r0, r1) from panel rows [0, outputs) (row stride ld, column (r - r0) * grid.cols + c).
// Out is float, or uint16_t for bf16 images (each value rounded to nearest, ties to even).
template <int W, typename Out>
void unpack_padded_rows(const float* panel, int64_t ld, const PaddedGrid& grid, int64_t r0,
                        int64_t r1, Out* out, int64_t outputs, const ImagePlacement& place) {
  const int tw = transpose_width(grid.width, W);
  const int64_t full = tw ? grid.width / tw * tw : 0, vector_end = tw ? outputs / tw * tw : 0;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t image = r / grid.rows, row = r % grid.rows;
    if (row >= grid.height) continue;  // the padding rows of the operand grid
    const float* src = panel + (r - r0) * grid.cols;
    Out* dst = out + image * place.image_ld + row * place.row_ld;
    const int64_t step = place.pixel_ld;
    if (tw)
      with_width(tw, [&](auto width) {
        constexpr int T = decltype(width)::value;
        for (int64_t d = 0; d < vector_end; d += T)
          for (int64_t c = 0; c < full; c += T) {
            if constexpr (std::is_same_v<Out, float>) {
              transpose_tile<T>(src + d * ld + c, ld, dst + c * step + d, step);
            } else {
              alignas(64) float pixels[T * T];
              transpose_tile<T>(src + d * ld + c, ld, pixels, T);
              SPARCL_UNROLL
              for (int i = 0; i < T; ++i)
                simd::round_to_bf16<T>(pixels + i * T, dst + (c + i) * step + d);
            }
          }
      });
    for (int64_t e = 0; e < outputs; ++e)
      for (int64_t c = e < vector_end ? full : 0; c < grid.width; ++c) {
        if constexpr (std::is_same_v<Out, float>) dst[c * step + e] = src[e * ld + c];
        else dst[c * step + e] = bf16::from_float(src[e * ld + c]);
      }
  }
}

// The chunks of a pass over the padded grid `in_grid` of `a` (channels-last, `features`
// floats or 32-bit bf16 pairs a pixel, dense images) toward `outputs` output rows. The grid's
// rows are cut into chunks whose operand and output panels fit in L2 together; a thread
// packs a chunk (with the rows its taps reach past it, max_shift columns) and calls
// on_chunk(in_panel, in_ld, out_panel, out_ld, r0, r1) to compute and unpack grid rows
// [r0, r1), so no panel makes a round trip to memory (whole-batch panels of a 128-channel
// layer are megabytes: packing them ran at memory speed, a fifth of the pass).
template <int W, typename OnChunk>
void padded_chunks(const float* a, int64_t features, const PaddedGrid& in_grid,
                   int64_t max_shift, int64_t outputs, int threads, const OnChunk& on_chunk) {
  const ImagePlacement in_place = dense_images(in_grid.height, in_grid.width, features);
  const int64_t tile = int64_t{kPanelVectors} * W, cols = in_grid.cols;
  const int64_t grid_rows = in_grid.batch * in_grid.rows;
  // Operand rows a chunk reads past its own: the taps' reach and the last vector's overrun
  // (a chunk's last tile has only the vectors its columns need).
  const int64_t halo_rows = (max_shift + W + cols - 1) / cols;
  const int64_t chunk_rows = std::max<int64_t>(
      1, (kCacheSliceFloats / (features + outputs) - halo_rows * cols) / cols);
  const int64_t chunks = (grid_rows + chunk_rows - 1) / chunk_rows;
  const int64_t in_ld = panel_row_stride((chunk_rows + halo_rows) * cols);
  const int64_t out_ld = panel_row_stride((chunk_rows * cols + tile - 1) / tile * tile);
  run_parallel(threads, [&](int t, int nt) {
    float* in_panel = thread_workspace(features * in_ld, kPanelInSlot);
    float* out_panel = thread_workspace(outputs * out_ld, kPanelOutSlot);
    int64_t begin, end;
    even_share(chunks, t, nt, &begin, &end);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t r0 = chunk * chunk_rows, r1 = std::min(grid_rows, r0 + chunk_rows);
      pack_padded_rows<W>(a, features, in_grid, in_place, r0, r1 + halo_rows, in_panel, in_ld);
      on_chunk(static_cast<const float*>(in_panel), in_ld, out_panel, out_ld, r0, r1);
    }
  });
}

}  // namespace detail
}  // namespace sparcl::SPARCL_ISA_NS
