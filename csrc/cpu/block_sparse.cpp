// CPU kernels for the three passes of a block-sparse linear layer.
//
// fp32 with bk a multiple of 8 runs AVX2+FMA register-tiled micro-kernels; everything else
// (fp64, narrow blocks) runs portable loops with the same work partition, so gradcheck in
// fp64 exercises the same indexing and threading as the fast path.
//
// Micro-kernels (microkernels.h; 16 ymm registers: 12 accumulators + operands):
//   forward      6 batch rows x 16 outputs, broadcast x, stream W blocks transposed once
//                per call into a reused buffer (outputs contiguous);
//   input grad   6 batch rows x 16 inputs, broadcast grad_out, stream W rows;
//   weight grad  6 block rows x 16 block columns, broadcast grad_out, stream x rows.
#include "block_sparse.h"

#include <algorithm>
#include <type_traits>

#include "microkernels.h"
#include "partition.h"

namespace sparcl {
namespace {

using detail::kTile;
using detail::run_parallel;

constexpr int64_t kBatchChunk = 48;  // batch rows per work item (a multiple of the tile height)

int64_t batch_chunks(int64_t n) { return (n + kBatchChunk - 1) / kBatchChunk; }

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

// ------------------------------------------------------------------ per-item bodies

// The fp32 micro-kernels store 8-wide vectors along the output's contiguous dimension.
bool use_simd(const float*, int64_t contiguous_width) { return contiguous_width % 8 == 0; }
bool use_simd(const double*, int64_t) { return false; }


// Forward for block row r and batch rows [n0, n1), from transposed blocks [nnz, bk, bm].
void forward_item(const float* x, const float* values_t, const float* bias, float* y,
                  int64_t n0, int64_t n1, int64_t r, const BlockLayoutView& L) {
  const int64_t K = L.cols(), M = L.rows();
  const float* xs = x + n0 * K;
  const auto tile_rows = [&](int64_t n) { return DenseRows{xs + n * K, K, L.col_indices, L.bk}; };
  detail::accumulate_slab(n1 - n0, tile_rows, values_t, L.bk, L.bm, nullptr, L.row_offsets[r],
                          L.row_offsets[r + 1], bias ? bias + r * L.bm : nullptr, false,
                          y + n0 * M + r * L.bm, M);
}

template <typename T>
void forward_item(const T* x, const T* values, const T* bias, T* y, int64_t n0, int64_t n1,
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
void grad_input_item(const float* dy, const float* values, float* dx, int64_t n0, int64_t n1,
                     int64_t c, const BlockLayoutView& L) {
  const int64_t K = L.cols(), M = L.rows();
  const float* dys = dy + n0 * M;
  const auto tile_rows = [&](int64_t n) { return DenseRows{dys + n * M, M, L.row_indices, L.bm}; };
  detail::accumulate_slab(n1 - n0, tile_rows, values, L.bm, L.bk, L.transpose_block_ids,
                          L.transpose_offsets[c], L.transpose_offsets[c + 1], nullptr, false,
                          dx + n0 * K + c * L.bk, K);
}

template <typename T>
void grad_input_item(const T* dy, const T* values, T* dx, int64_t n0, int64_t n1, int64_t c,
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

// Weight gradient of stored block j over the whole batch (strided rows: no pointer lists).
void grad_weight_block(const float* dy, const float* x, float* dw, int64_t n, int64_t j,
                       const BlockLayoutView& L) {
  const detail::StridedRows rows{dy + static_cast<int64_t>(L.row_indices[j]) * L.bm, L.rows(),
                                 x + static_cast<int64_t>(L.col_indices[j]) * L.bk, L.cols()};
  detail::outer_product_block(rows, n, L.bm, L.bk, false, dw + j * L.bm * L.bk);
}

template <typename T>
void grad_weight_block(const T* dy, const T* x, T* dw, int64_t n, int64_t j,
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

// Runs item(group, n0, n1) for this thread's share of the (group, batch chunk) grid.
template <typename Item>
void for_each_item(const ItemGrid& grid, int64_t n, int t, int threads, const Item& item) {
  const int64_t begin = grid.first_item(t, threads), end = grid.first_item(t + 1, threads);
  for (int64_t it = begin; it < end; ++it) {
    const int64_t group = it / grid.chunks, chunk = it % grid.chunks;
    const int64_t n0 = chunk * kBatchChunk;
    item(group, n0, std::min(n, n0 + kBatchChunk));
  }
}

}  // namespace

template <typename T>
void block_sparse_forward(const T* x, const T* values, const T* bias, T* y, int64_t n,
                          const BlockLayoutView& L, int threads) {
  if (n == 0 || L.block_rows == 0) return;
  const ItemGrid grid{L.row_offsets, L.block_rows, batch_chunks(n)};
  if constexpr (std::is_same_v<T, float>) {
    if (L.bm % 8 == 0) {
      // The forward streams W transposed (outputs contiguous), so the blocks are transposed
      // once per call into a reused buffer: O(nnz) work next to O(n * nnz) multiply-adds.
      float* values_t = detail::thread_workspace(L.nnz * L.bm * L.bk, 0);
      run_parallel(threads, [&](int t, int nt) {
        int64_t begin, end;
        even_share(L.nnz, t, nt, &begin, &end);
        detail::transpose_blocks(values, values_t, begin, end, L.bm, L.bk);
#pragma omp barrier
        for_each_item(grid, n, t, nt, [&](int64_t r, int64_t n0, int64_t n1) {
          forward_item(x, values_t, bias, y, n0, n1, r, L);
        });
      });
      return;
    }
  }
  run_parallel(threads, [&](int t, int nt) {
    for_each_item(grid, n, t, nt, [&](int64_t r, int64_t n0, int64_t n1) {
      forward_item<T>(x, values, bias, y, n0, n1, r, L);
    });
  });
}

template <typename T>
void block_sparse_grad_input(const T* grad_out, const T* values, T* grad_x, int64_t n,
                             const BlockLayoutView& L, int threads) {
  if (n == 0 || L.block_cols == 0) return;
  const ItemGrid grid{L.transpose_offsets, L.block_cols, batch_chunks(n)};
  const bool simd = use_simd(grad_out, L.bk);
  run_parallel(threads, [&](int t, int nt) {
    for_each_item(grid, n, t, nt, [&](int64_t c, int64_t n0, int64_t n1) {
      if constexpr (std::is_same_v<T, float>) {
        if (simd) return grad_input_item(grad_out, values, grad_x, n0, n1, c, L);
      }
      grad_input_item<T>(grad_out, values, grad_x, n0, n1, c, L);
    });
  });
}

template <typename T>
void block_sparse_grad_weight(const T* grad_out, const T* x, const bool* grad_block_mask,
                              T* grad_values, int64_t n, const BlockLayoutView& L,
                              int threads) {
  // With an empty batch every block computes to zero through the same kernels.
  const bool simd = use_simd(x, L.bk);
  const int64_t active = count_active(grad_block_mask, L.nnz);
  run_parallel(threads, [&](int t, int nt) {
    weight_gradient_share(grad_block_mask, L.nnz, active, L.bm * L.bk, grad_values, t, nt,
                          [&](int64_t j) {
                            if constexpr (std::is_same_v<T, float>) {
                              if (simd) return grad_weight_block(grad_out, x, grad_values, n, j, L);
                            }
                            grad_weight_block<T>(grad_out, x, grad_values, n, j, L);
                          });
  });
}

const char* simd_name() { return "avx2+fma"; }

#define SPARCL_INSTANTIATE(T)                                                                \
  template void block_sparse_forward<T>(const T*, const T*, const T*, T*, int64_t,           \
                                        const BlockLayoutView&, int);                        \
  template void block_sparse_grad_input<T>(const T*, const T*, T*, int64_t,                  \
                                           const BlockLayoutView&, int);                     \
  template void block_sparse_grad_weight<T>(const T*, const T*, const bool*, T*, int64_t,    \
                                            const BlockLayoutView&, int);
SPARCL_INSTANTIATE(float)
SPARCL_INSTANTIATE(double)
#undef SPARCL_INSTANTIATE

}  // namespace sparcl
