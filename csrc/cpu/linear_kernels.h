// CPU kernels for the three passes of a block-sparse linear layer, compiled once per
// instruction set (see isa_kernels.h).
//
// fp32 whose contiguous block side is a multiple of 4 runs the register-tiled micro-kernels
// (microkernels.h); everything else (fp64, narrow blocks) runs portable loops with the same
// work partition, so gradcheck in fp64 exercises the same indexing and threading.
//
// Micro-kernels (kTile rows x kMaxVectors vectors of W floats):
//   forward      kTile batch rows x outputs, broadcast x, stream W blocks transposed once
//                per call into a reused buffer (outputs contiguous);
//   input grad   kTile batch rows x inputs, broadcast grad_out, stream W rows;
//   weight grad  kTile block rows x block columns, broadcast grad_out, stream x; both read
//                from panels packed per thread and batch chunk (grad_weight_packed).
// Blocks whose output side is narrower than two vectors run the forward and input gradient
// over batch-major panels instead (panels.h): kRunRows block rows x kPanelVectors vectors of
// the batch, broadcast W, stream the panel.
#pragma once

#include <cstring>

#include "block_sparse.h"
#include "microkernels.h"
#include "panels.h"
#include "partition.h"

namespace sparcl::SPARCL_ISA_NS {
namespace linear {

using detail::kTile;
using detail::run_parallel;

// Batch rows per work item of the forward and input gradient: a multiple of the tile height,
// at most 8 tiles, and few enough that a chunk's operand rows (`row_elems` floats each) fit
// in a slice of L2 while a band of block rows (columns) reads them (see partition.h).
inline int64_t batch_chunk(int64_t row_elems) {
  const int64_t tiles = kCacheSliceFloats / std::max<int64_t>(row_elems, 1) / kTile;
  return kTile * std::clamp<int64_t>(tiles, 1, 8);
}

// Tile rows of a dense row-major operand: row i of block j is a + i * lda + group[j] * P.
struct DenseRows {
  const float* a;
  int64_t lda;
  const int32_t* group;
  int64_t P;
  template <int TN>
  void operator()(int64_t j, const float* (&rows)[TN]) const {
    const float* base = a + static_cast<int64_t>(group[j]) * P;
    SPARCL_UNROLL
    for (int i = 0; i < TN; ++i) rows[i] = base + i * lda;
  }
};

// DenseRows that also ask the cache for the rows of a later block (Lookahead).
struct LookaheadRows : DenseRows {
  detail::Lookahead lookahead;
  SPARCL_INLINE void ahead(int32_t s) const {
    detail::prefetch_ahead(lookahead, s, a, lda, group, P);
  }
};

// The operand rows of the tiles of a group's batch rows [0, count): plain, or looking ahead
// (LookaheadRows) where the operand is larger than kLookaheadBytes.
template <typename Slab>
void with_operand_rows(bool look_ahead, const float* a, int64_t lda, const int32_t* group,
                       int64_t P, const int32_t* ids, int32_t begin, int32_t end, int64_t count,
                       const Slab& slab) {
  if (!look_ahead)
    return slab([&](int64_t n) { return DenseRows{a + n * lda, lda, group, P}; });
  slab([&](int64_t n) {
    const auto rows_from = [&](int64_t first) {
      return static_cast<int>(std::clamp<int64_t>(count - first, 0, kTile));
    };
    return LookaheadRows{{a + n * lda, lda, group, P},
                         {ids, begin, end, rows_from(n), rows_from(n + kTile)}};
  });
}

// Vector width for the fp32 micro-kernels (0: portable loops). fp64 always runs the loops.
inline int simd_width(const float*, int64_t contiguous, int max_width) {
  return detail::pick_width(contiguous, max_width);
}
inline int simd_width(const double*, int64_t, int) { return 0; }

// ------------------------------------------------------------------ per-item bodies

// Forward for block row r and batch rows [n0, n1), from transposed blocks [nnz, bk, bm].
template <int W>
void forward_item(const float* x, const float* values_t, const float* bias, float* y, int64_t n0,
                  int64_t n1, int64_t r, const BlockLayoutView& L, bool look_ahead) {
  const int64_t K = L.cols(), M = L.rows();
  const int32_t sb = L.row_offsets[r], se = L.row_offsets[r + 1];
  const auto tile_out = [&](int64_t n) { return detail::StridedOut{y + (n0 + n) * M + r * L.bm, M}; };
  with_operand_rows(look_ahead, x + n0 * K, K, L.col_indices, L.bk, nullptr, sb, se, n1 - n0,
                    [&](const auto& tile_rows) {
                      detail::accumulate_slab<W>(n1 - n0, tile_rows, tile_out, values_t, L.bk,
                                                 L.bm, nullptr, sb, se,
                                                 bias ? bias + r * L.bm : nullptr);
                    });
}

template <typename T>
void forward_loops(const T* x, const T* values, const T* bias, T* y, int64_t n0, int64_t n1,
                   int64_t r, const BlockLayoutView& L) {
  const int64_t K = L.cols(), M = L.rows(), bm = L.bm, bk = L.bk;
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < bm; ++m) {
      T sum = bias ? bias[r * bm + m] : T(0);
      for (int32_t j = L.row_offsets[r]; j < L.row_offsets[r + 1]; ++j) {
        const T* xb = x + n * K + static_cast<int64_t>(L.col_indices[j]) * bk;
        const T* wb = values + (static_cast<int64_t>(j) * bm + m) * bk;
        for (int64_t kk = 0; kk < bk; ++kk) sum += xb[kk] * wb[kk];
      }
      y[n * M + r * bm + m] = sum;
    }
}

// Input gradient for block column c and batch rows [n0, n1).
template <int W>
void grad_input_item(const float* dy, const float* values, float* dx, int64_t n0, int64_t n1,
                     int64_t c, const BlockLayoutView& L, bool look_ahead) {
  const int64_t K = L.cols(), M = L.rows();
  const int32_t sb = L.transpose_offsets[c], se = L.transpose_offsets[c + 1];
  const auto tile_out = [&](int64_t n) { return detail::StridedOut{dx + (n0 + n) * K + c * L.bk, K}; };
  with_operand_rows(look_ahead, dy + n0 * M, M, L.row_indices, L.bm, L.transpose_block_ids, sb,
                    se, n1 - n0, [&](const auto& tile_rows) {
                      detail::accumulate_slab<W>(n1 - n0, tile_rows, tile_out, values, L.bm,
                                                 L.bk, L.transpose_block_ids, sb, se, nullptr);
                    });
}

template <typename T>
void grad_input_loops(const T* dy, const T* values, T* dx, int64_t n0, int64_t n1, int64_t c,
                      const BlockLayoutView& L) {
  const int64_t K = L.cols(), M = L.rows(), bm = L.bm, bk = L.bk;
  for (int64_t n = n0; n < n1; ++n) {
    T* out = dx + n * K + c * bk;
    std::fill(out, out + bk, T(0));
    for (int32_t s = L.transpose_offsets[c]; s < L.transpose_offsets[c + 1]; ++s) {
      const int64_t j = L.transpose_block_ids[s];
      const T* dyb = dy + n * M + static_cast<int64_t>(L.row_indices[j]) * bm;
      const T* wb = values + j * bm * bk;
      for (int64_t m = 0; m < bm; ++m)
        for (int64_t kk = 0; kk < bk; ++kk) out[kk] += dyb[m] * wb[m * bk + kk];
    }
  }
}

// The weight gradient's operands, chunk by chunk of the batch: the block rows of grad_out and
// block columns of x that a thread's blocks read (UsedPanels), packed panel by panel,
// [used panels][rows][side], so a block reads each operand as one contiguous run. (Read in
// place, the rows of a 2048-wide layer lie 8 KiB apart, all in the same L1 sets, and a chunk
// small enough for L2 left each block's accumulators a round trip to memory every 32 rows.)
struct ChunkPanels {
  float* data;
  int64_t rows;
  int64_t side;
  const int32_t* slot;  // UsedPanels::slot
  // Floats from one panel to the next: a cache line more than the panel, so that panels of a
  // power-of-two size (256 rows of a 16-wide block: 16 KiB) do not all start in the same
  // cache sets.
  int64_t stride() const { return panel_stride(rows, side); }
  // Offset of the panel of block row or column `group` from `data`.
  int64_t offset(int64_t group) const { return static_cast<int64_t>(slot[group]) * stride(); }
  const float* at(int64_t group) const { return data + offset(group); }
  static constexpr int64_t kLineFloats = 64 / sizeof(float);
  static int64_t panel_stride(int64_t rows, int64_t side) { return rows * side + kLineFloats; }
  // Floats of `panels` panels of `rows` rows.
  static int64_t floats(int64_t panels, int64_t rows, int64_t side) {
    return panels * panel_stride(rows, side);
  }
};

// Rows [r0, r0 + out.rows) of the used panels of a row-major [n, width] matrix into `out`,
// row by row (reading the matrix in order; panel by panel, its rows' strided reads made
// the pass 1.1-1.25x slower at N = 2048). Side: the panels' width when it is 8, 16 or 32,
// whose fixed-size copies the compiler inlines (a library call per 8-float run had taken
// 30 % of the 8x8 weight gradient at N = 2048); 0 for out.side at run time. With look_ahead
// (an operand past kLookaheadBytes) each row first asks for the used runs of the row two on:
// the weight gradient at N=2048, 32x32 and 8x8 blocks, 1.02-1.07x (Zen 5, 2 threads).
template <int Side>
void pack_chunk_rows(const float* a, int64_t width, int64_t r0, const UsedPanels& used,
                     const ChunkPanels& out, bool look_ahead) {
  constexpr int64_t kRowsAhead = 2;
  const int64_t side = Side ? Side : out.side, stride = out.stride();
  for (int64_t r = 0; r < out.rows; ++r) {
    const float* row = a + (r0 + r) * width;
    float* dst = out.data + r * side;
    if (look_ahead && r + kRowsAhead < out.rows)
      for (int64_t u = 0; u < used.count; ++u)
        detail::prefetch_rows(row + kRowsAhead * width + used.list[u] * side, 1, 0,
                              side * static_cast<int64_t>(sizeof(float)));
    for (int64_t u = 0; u < used.count; ++u)
      std::memcpy(dst + u * stride, row + used.list[u] * side, side * sizeof(float));
  }
}

inline void pack_chunk(const float* a, int64_t width, int64_t r0, const UsedPanels& used,
                       const ChunkPanels& out, bool look_ahead) {
  switch (out.side) {
    case 8: return pack_chunk_rows<8>(a, width, r0, used, out, look_ahead);
    case 16: return pack_chunk_rows<16>(a, width, r0, used, out, look_ahead);
    case 32: return pack_chunk_rows<32>(a, width, r0, used, out, look_ahead);
    default: return pack_chunk_rows<0>(a, width, r0, used, out, look_ahead);
  }
}

// The weight gradient of the kept blocks ids[0 .. count) (storage order) over the packed
// chunk: blocks one vector wide in runs of one block row sharing its grad_out rows (measured
// 1.2-1.6x on 8- and 16-wide blocks over one block per tile), others block by block; the
// first chunk stores, later ones add.
template <int W>
void grad_weight_chunk(const ChunkPanels& dy, const ChunkPanels& x, const int32_t* ids,
                       int64_t count, bool accumulate, float* dw, const BlockLayoutView& L) {
  const int64_t block_elems = L.bm * L.bk;
  for (int64_t i = 0; i < count;) {
    const int32_t row = L.row_indices[ids[i]];
    if (L.bk != W) {
      const detail::StridedRows rows{dy.at(row), L.bm, x.at(L.col_indices[ids[i]]), L.bk};
      detail::outer_product_block<W>(rows, dy.rows, L.bm, L.bk, accumulate,
                                     dw + ids[i] * block_elems);
      ++i;
      continue;
    }
    int blocks = 0;
    int64_t x_offset[detail::kMaxRunBlocks];
    float* out[detail::kMaxRunBlocks];
    for (; blocks < detail::kRunBlocksOf<W> && i < count && L.row_indices[ids[i]] == row; ++i) {
      x_offset[blocks] = x.offset(L.col_indices[ids[i]]);
      out[blocks++] = dw + ids[i] * block_elems;
    }
    const detail::StridedRunRows rows{dy.at(row), L.bm, x.data, L.bk, x_offset};
    detail::outer_product_blocks<W>(rows, blocks, dy.rows, L.bm, accumulate, out);
  }
}

// The fp32 weight-gradient pass: each thread takes an even share of the kept blocks (storage
// order) and runs the batch in chunks, packing for each the panels its blocks read. Every
// block still sums its rows in order, so results do not depend on the chunk size.
template <int W>
void grad_weight_packed(const float* dy, const float* x, const bool* grad_block_mask,
                        float* dw, int64_t n, const BlockLayoutView& L, int threads) {
  const int64_t block_elems = L.bm * L.bk, active = count_active(grad_block_mask, L.nnz);
  const bool dy_from_memory = past_lookahead_size<float>(n * L.rows());
  const bool x_from_memory = past_lookahead_size<float>(n * L.cols());
  run_parallel(threads, [&](int t, int nt) {
    zero_masked_share(grad_block_mask, L.nnz, block_elems, dw, t, nt);
    int64_t first, last;
    even_share(active, t, nt, &first, &last);
    int32_t* ids = detail::index_workspace(std::max<int64_t>(last - first, 1), 0);
    int64_t share = 0;
    for_active_share(grad_block_mask, L.nnz, active, t, nt,
                     [&](int64_t j) { ids[share++] = static_cast<int32_t>(j); });
    int32_t* storage = detail::index_workspace(2 * (L.block_rows + L.block_cols), 1);
    const UsedPanels rows = used_panels(ids, share, L.row_indices, L.block_rows, storage);
    const UsedPanels cols =
        used_panels(ids, share, L.col_indices, L.block_cols, storage + 2 * L.block_rows);
    const int64_t chunk =
        weight_gradient_chunk_rows(n, rows.count * L.bm + cols.count * L.bk, share * block_elems);
    const int64_t dy_floats = ChunkPanels::floats(rows.count, chunk, L.bm);
    float* panels = detail::thread_workspace(
        dy_floats + ChunkPanels::floats(cols.count, chunk, L.bk), detail::kPanelInSlot);
    // An empty batch still gives each block one (zero) pass.
    for (int64_t r0 = 0; r0 == 0 || r0 < n; r0 += chunk) {
      const int64_t count = std::min(n, r0 + chunk) - r0;
      const ChunkPanels dy_panels{panels, count, L.bm, rows.slot};
      const ChunkPanels x_panels{panels + dy_floats, count, L.bk, cols.slot};
      pack_chunk(dy, L.rows(), r0, rows, dy_panels, dy_from_memory);
      pack_chunk(x, L.cols(), r0, cols, x_panels, x_from_memory);
      grad_weight_chunk<W>(dy_panels, x_panels, ids, share, r0 > 0, dw, L);
    }
  });
}

template <typename T>
void grad_weight_loops(const T* dy, const T* x, T* dw, int64_t n, int64_t j,
                       const BlockLayoutView& L) {
  const int64_t K = L.cols(), M = L.rows(), bm = L.bm, bk = L.bk;
  const T* dyb = dy + static_cast<int64_t>(L.row_indices[j]) * bm;
  const T* xb = x + static_cast<int64_t>(L.col_indices[j]) * bk;
  T* out = dw + j * bm * bk;
  std::fill(out, out + bm * bk, T(0));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t m = 0; m < bm; ++m) {
      const T d = dyb[r * M + m];
      for (int64_t kk = 0; kk < bk; ++kk) out[m * bk + kk] += d * xb[r * K + kk];
    }
}

// Whether a forward (side = bm) or input gradient (side = bk) runs over batch-major panels:
// the row-major tile of a side under two vectors is bound by its broadcasts, a batch of less
// than one panel tile would be mostly padding, and a sparse enough layer would spend more on
// the transposes than the tiles save. (16x16 blocks on AVX-512 have pair tiles, two
// multiply-adds per broadcast, that skip the transposes; against the panels split by batch
// tiles they ran 0.91-1.06x, mean 0.97x, over 768-4096 features at 256 and 2048 rows, back to
// back and from memory, Zen 5: not worth a second rule.)
inline bool use_panels(int64_t side, int64_t n, int width, const BlockLayoutView& L) {
  return side < 2 * width && n >= detail::kPanelVectors * width &&
         detail::panels_pay(L.nnz, L.bm * L.bk, L.rows(), L.cols());
}

// One batch-major pass of a linear layer: out[n, outputs] from a[n, features] for the groups
// of `offsets` (group g's output rows at g * side; group(g) its PanelGroup, init(g) its
// initial values or null), over panels in batch tiles (PanelShape).
template <int W, typename Group, typename Init>
void panel_pass(const float* a, int64_t features, float* out, int64_t outputs, int64_t n,
                int64_t side, const int32_t* offsets, int64_t groups, int64_t block_elems,
                int threads, const Group& group, const Init& init) {
  const detail::PanelShape in_shape(features, n, W), out_shape(outputs, n, W);
  float* in_panel = detail::thread_workspace(in_shape.size(), detail::kPanelInSlot);
  float* out_panel = detail::thread_workspace(out_shape.size(), detail::kPanelOutSlot);
  detail::run_panel_pass<W>(
      threads, features, outputs, in_shape.tiles(), side, offsets, groups, block_elems,
      linear_band_floats(n * features),
      [&](int64_t d0, int64_t d1, int64_t t0, int64_t t1) {
        detail::pack_panel<W>(a, features, in_shape, d0, d1, in_panel, t0, t1);
      },
      group,
      [&](int64_t g, int64_t tile) {
        const int64_t width = in_shape.width(tile);
        return detail::PanelTile{in_panel + in_shape.offset(tile), width,
                                 out_panel + out_shape.offset(tile) + g * side * width, width,
                                 static_cast<int>(width / W)};
      },
      init,
      [&](int64_t d0, int64_t d1, int64_t t0, int64_t t1) {
        detail::unpack_panel<W>(out_panel, out_shape, d0, d1, out, outputs, t0, t1);
      });
}

// ------------------------------------------------------------------ passes

template <typename T>
void forward(const T* x, const T* values, const T* values_t, const T* bias, T* y, int64_t n,
             const BlockLayoutView& L, const Execution& exec) {
  if (n == 0 || L.block_rows == 0) return;
  const int64_t rows = batch_chunk(L.cols());
  const ItemGrid grid = item_grid(L.row_offsets, L.block_rows, n, rows, L.bm * L.bk,
                                  linear_band_floats(n * L.cols()));
  if constexpr (std::is_same_v<T, float>) {
    if (use_panels(L.bm, n, exec.max_width, L)) {
      const float* blocks_t =
          values_t ? values_t : transposed_blocks(values, L.nnz, L.bm, L.bk, exec.threads);
      return detail::with_width(exec.max_width, [&](auto W) {
        panel_pass<decltype(W)::value>(
            x, L.cols(), y, L.rows(), n, L.bm, L.row_offsets, L.block_rows, L.bm * L.bk,
            exec.threads,
            [&](int64_t r) {
              return detail::PanelGroup{
                  blocks_t,         L.bm * L.bk,          L.bm,          L.bk,   nullptr,
                  L.row_offsets[r], L.row_offsets[r + 1], L.col_indices, nullptr};
            },
            [&](int64_t r) { return bias ? bias + r * L.bm : nullptr; });
      });
    }
    if (const int width = simd_width(x, L.bm, exec.max_width)) {
      // The forward streams W transposed (outputs contiguous): the caller's copy, or one
      // made here into a reused buffer (O(nnz) work, measured 5-7 % of a 32x32 forward at
      // N=256).
      const float* blocks_t =
          values_t ? values_t : transposed_blocks(values, L.nnz, L.bm, L.bk, exec.threads);
      const bool look_ahead = past_lookahead_size<float>(n * L.cols());
      detail::with_width(width, [&](auto W) {
        run_parallel(exec.threads, [&](int t, int nt) {
          for_each_item(grid, n, rows, t, nt, [&](int64_t r, int64_t n0, int64_t n1) {
            forward_item<decltype(W)::value>(x, blocks_t, bias, y, n0, n1, r, L, look_ahead);
          });
        });
      });
      return;
    }
  }
  run_parallel(exec.threads, [&](int t, int nt) {
    for_each_item(grid, n, rows, t, nt, [&](int64_t r, int64_t n0, int64_t n1) {
      forward_loops<T>(x, values, bias, y, n0, n1, r, L);
    });
  });
}

template <typename T>
void grad_input(const T* grad_out, const T* values, T* grad_x, int64_t n,
                const BlockLayoutView& L, const Execution& exec) {
  if (n == 0 || L.block_cols == 0) return;
  const int64_t rows = batch_chunk(L.rows());
  const ItemGrid grid = item_grid(L.transpose_offsets, L.block_cols, n, rows, L.bm * L.bk,
                                  linear_band_floats(n * L.rows()));
  if constexpr (std::is_same_v<T, float>) {
    if (use_panels(L.bk, n, exec.max_width, L)) {
      return detail::with_width(exec.max_width, [&](auto W) {
        panel_pass<decltype(W)::value>(
            grad_out, L.rows(), grad_x, L.cols(), n, L.bk, L.transpose_offsets, L.block_cols,
            L.bm * L.bk, exec.threads,
            [&](int64_t c) {
              return detail::PanelGroup{values,
                                        L.bm * L.bk,
                                        L.bk,
                                        L.bm,
                                        L.transpose_block_ids,
                                        L.transpose_offsets[c],
                                        L.transpose_offsets[c + 1],
                                        L.row_indices,
                                        nullptr};
            },
            [](int64_t) -> const float* { return nullptr; });
      });
    }
    if (const int width = simd_width(grad_out, L.bk, exec.max_width)) {
      const bool look_ahead = past_lookahead_size<float>(n * L.rows());
      detail::with_width(width, [&](auto W) {
        run_parallel(exec.threads, [&](int t, int nt) {
          for_each_item(grid, n, rows, t, nt, [&](int64_t c, int64_t n0, int64_t n1) {
            grad_input_item<decltype(W)::value>(grad_out, values, grad_x, n0, n1, c, L,
                                                look_ahead);
          });
        });
      });
      return;
    }
  }
  run_parallel(exec.threads, [&](int t, int nt) {
    for_each_item(grid, n, rows, t, nt, [&](int64_t c, int64_t n0, int64_t n1) {
      grad_input_loops<T>(grad_out, values, grad_x, n0, n1, c, L);
    });
  });
}

template <typename T>
void grad_weight(const T* grad_out, const T* x, const bool* grad_block_mask, T* grad_values,
                 int64_t n, const BlockLayoutView& L, const Execution& exec) {
  // With an empty batch every block computes to zero through the same kernels.
  if constexpr (std::is_same_v<T, float>) {
    if (const int width = simd_width(x, L.bk, exec.max_width)) {
      return detail::with_width(width, [&](auto W) {
        grad_weight_packed<decltype(W)::value>(grad_out, x, grad_block_mask, grad_values, n, L,
                                               exec.threads);
      });
    }
  }
  weight_gradient_pass(grad_block_mask, L.nnz, L.bm * L.bk, grad_values, exec.threads,
                       [&](int64_t j) { grad_weight_loops<T>(grad_out, x, grad_values, n, j, L); });
}

}  // namespace linear
}  // namespace sparcl::SPARCL_ISA_NS
