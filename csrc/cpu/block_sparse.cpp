// CPU kernels for the three passes of a block-sparse linear layer.
//
// fp32 with bk a multiple of 8 runs AVX2+FMA register-tiled micro-kernels; everything else
// (fp64, narrow blocks) runs portable loops with the same work partition, so gradcheck in
// fp64 exercises the same indexing and threading as the fast path.
//
// Micro-kernel shapes (16 ymm registers: 12 accumulators + operands):
//   forward      6 batch rows x 2 outputs, dot products along k (x and W rows are both
//                contiguous in k, so neither operand is repacked), one horizontal sum per
//                output at the end of the block row;
//   input grad   6 batch rows x 16 inputs, broadcast grad_out, stream W rows;
//   weight grad  6 block rows x 16 block columns, broadcast grad_out, stream x rows.
#include "block_sparse.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <type_traits>

#include "partition.h"

namespace sparcl {
namespace {

constexpr int64_t kBatchChunk = 48;  // batch rows per work item (a multiple of the tile height)
constexpr int kTile = 6;             // tile height of every micro-kernel

int64_t batch_chunks(int64_t n) { return (n + kBatchChunk - 1) / kBatchChunk; }

// Runs body(t, threads) on `threads` OpenMP threads (inline when threads <= 1).
template <typename Body>
void run_parallel(int threads, const Body& body) {
  if (threads <= 1) {
    body(0, 1);
    return;
  }
#pragma omp parallel num_threads(threads)
  body(omp_get_thread_num(), omp_get_num_threads());
}

// ------------------------------------------------------------------ AVX2 micro-kernels (fp32)

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// out[i * ldo + t] = bias[t] + sum over the row's blocks of dot(x row i, W row m + t).
template <int TN, int TM>
void forward_tile(const float* x, int64_t ldx, const float* values, int64_t bm, int64_t bk,
                  const int32_t* cols, int32_t jb, int32_t je, int64_t m, const float* bias,
                  float* out, int64_t ldo) {
  __m256 acc[TN][TM];
  for (int i = 0; i < TN; ++i)
    for (int t = 0; t < TM; ++t) acc[i][t] = _mm256_setzero_ps();
  for (int32_t j = jb; j < je; ++j) {
    const float* xb = x + static_cast<int64_t>(cols[j]) * bk;
    const float* wb = values + (static_cast<int64_t>(j) * bm + m) * bk;
    for (int64_t kk = 0; kk < bk; kk += 8) {
      __m256 w[TM];
      for (int t = 0; t < TM; ++t) w[t] = _mm256_loadu_ps(wb + t * bk + kk);
      for (int i = 0; i < TN; ++i) {
        const __m256 xv = _mm256_loadu_ps(xb + i * ldx + kk);
        for (int t = 0; t < TM; ++t) acc[i][t] = _mm256_fmadd_ps(xv, w[t], acc[i][t]);
      }
    }
  }
  for (int i = 0; i < TN; ++i)
    for (int t = 0; t < TM; ++t)
      out[i * ldo + t] = hsum(acc[i][t]) + (bias ? bias[t] : 0.0f);
}

template <int TM>
void forward_tile_rows(int tn, const float* x, int64_t ldx, const float* values, int64_t bm,
                       int64_t bk, const int32_t* cols, int32_t jb, int32_t je, int64_t m,
                       const float* bias, float* out, int64_t ldo) {
  switch (tn) {
#define SPARCL_CASE(TN)                                                                      \
  case TN:                                                                                   \
    forward_tile<TN, TM>(x, ldx, values, bm, bk, cols, jb, je, m, bias, out, ldo);           \
    break;
    SPARCL_CASE(1) SPARCL_CASE(2) SPARCL_CASE(3) SPARCL_CASE(4) SPARCL_CASE(5) SPARCL_CASE(6)
#undef SPARCL_CASE
  }
}

// out[i * ldo + 8q ...] = sum over blocks j of the column, rows m of
//   grad_out[i, row(j) * bm + m] * W_j[m, kk + 8q ...].
template <int TN, int KV>
void grad_input_tile(const float* dy, int64_t lddy, const float* values, int64_t bm,
                     int64_t bk, const int32_t* block_ids, const int32_t* rows, int32_t tb,
                     int32_t te, int64_t kk, float* out, int64_t ldo) {
  __m256 acc[TN][KV];
  for (int i = 0; i < TN; ++i)
    for (int q = 0; q < KV; ++q) acc[i][q] = _mm256_setzero_ps();
  for (int32_t s = tb; s < te; ++s) {
    const int64_t j = block_ids[s];
    const float* dyb = dy + static_cast<int64_t>(rows[j]) * bm;
    const float* wb = values + j * bm * bk + kk;
    for (int64_t m = 0; m < bm; ++m) {
      __m256 w[KV];
      for (int q = 0; q < KV; ++q) w[q] = _mm256_loadu_ps(wb + m * bk + 8 * q);
      for (int i = 0; i < TN; ++i) {
        const __m256 d = _mm256_broadcast_ss(dyb + i * lddy + m);
        for (int q = 0; q < KV; ++q) acc[i][q] = _mm256_fmadd_ps(d, w[q], acc[i][q]);
      }
    }
  }
  for (int i = 0; i < TN; ++i)
    for (int q = 0; q < KV; ++q) _mm256_storeu_ps(out + i * ldo + 8 * q, acc[i][q]);
}

template <int KV>
void grad_input_tile_rows(int tn, const float* dy, int64_t lddy, const float* values,
                          int64_t bm, int64_t bk, const int32_t* block_ids, const int32_t* rows,
                          int32_t tb, int32_t te, int64_t kk, float* out, int64_t ldo) {
  switch (tn) {
#define SPARCL_CASE(TN)                                                                      \
  case TN:                                                                                   \
    grad_input_tile<TN, KV>(dy, lddy, values, bm, bk, block_ids, rows, tb, te, kk, out, ldo); \
    break;
    SPARCL_CASE(1) SPARCL_CASE(2) SPARCL_CASE(3) SPARCL_CASE(4) SPARCL_CASE(5) SPARCL_CASE(6)
#undef SPARCL_CASE
  }
}

// out[i * bk + 8q ...] = sum over batch rows r of dy[r, i] * x[r, 8q ...] (one block tile).
template <int TM, int KV>
void grad_weight_tile(const float* dy, int64_t lddy, const float* x, int64_t ldx, int64_t n,
                      float* out, int64_t ldo) {
  __m256 acc[TM][KV];
  for (int i = 0; i < TM; ++i)
    for (int q = 0; q < KV; ++q) acc[i][q] = _mm256_setzero_ps();
  for (int64_t r = 0; r < n; ++r) {
    __m256 xv[KV];
    for (int q = 0; q < KV; ++q) xv[q] = _mm256_loadu_ps(x + r * ldx + 8 * q);
    for (int i = 0; i < TM; ++i) {
      const __m256 d = _mm256_broadcast_ss(dy + r * lddy + i);
      for (int q = 0; q < KV; ++q) acc[i][q] = _mm256_fmadd_ps(d, xv[q], acc[i][q]);
    }
  }
  for (int i = 0; i < TM; ++i)
    for (int q = 0; q < KV; ++q) _mm256_storeu_ps(out + i * ldo + 8 * q, acc[i][q]);
}

template <int KV>
void grad_weight_tile_rows(int tm, const float* dy, int64_t lddy, const float* x, int64_t ldx,
                           int64_t n, float* out, int64_t ldo) {
  switch (tm) {
#define SPARCL_CASE(TM)                                                                      \
  case TM:                                                                                   \
    grad_weight_tile<TM, KV>(dy, lddy, x, ldx, n, out, ldo);                                 \
    break;
    SPARCL_CASE(1) SPARCL_CASE(2) SPARCL_CASE(3) SPARCL_CASE(4) SPARCL_CASE(5) SPARCL_CASE(6)
#undef SPARCL_CASE
  }
}

// ------------------------------------------------------------------ per-item bodies

bool use_simd(const float*, int64_t bk) { return bk % 8 == 0; }
bool use_simd(const double*, int64_t) { return false; }

// Forward for block row r and batch rows [n0, n1).
void forward_item(const float* x, const float* values, const float* bias, float* y,
                  int64_t n0, int64_t n1, int64_t r, const BlockLayoutView& L) {
  const int64_t K = L.cols(), M = L.rows(), bm = L.bm, bk = L.bk;
  const int32_t jb = L.row_offsets[r], je = L.row_offsets[r + 1];
  const float* bias_r = bias ? bias + r * bm : nullptr;
  for (int64_t n = n0; n < n1; n += kTile) {
    const int tn = static_cast<int>(std::min<int64_t>(kTile, n1 - n));
    const float* xn = x + n * K;
    float* out = y + n * M + r * bm;
    int64_t m = 0;
    for (; m + 2 <= bm; m += 2)
      forward_tile_rows<2>(tn, xn, K, values, bm, bk, L.col_indices, jb, je, m,
                           bias_r ? bias_r + m : nullptr, out + m, M);
    if (m < bm)
      forward_tile_rows<1>(tn, xn, K, values, bm, bk, L.col_indices, jb, je, m,
                           bias_r ? bias_r + m : nullptr, out + m, M);
  }
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
  const int64_t K = L.cols(), M = L.rows(), bm = L.bm, bk = L.bk;
  const int32_t tb = L.transpose_offsets[c], te = L.transpose_offsets[c + 1];
  for (int64_t n = n0; n < n1; n += kTile) {
    const int tn = static_cast<int>(std::min<int64_t>(kTile, n1 - n));
    const float* dyn = dy + n * M;
    float* out = dx + n * K + c * bk;
    int64_t kk = 0;
    for (; kk + 16 <= bk; kk += 16)
      grad_input_tile_rows<2>(tn, dyn, M, values, bm, bk, L.transpose_block_ids,
                              L.row_indices, tb, te, kk, out + kk, K);
    if (kk < bk)
      grad_input_tile_rows<1>(tn, dyn, M, values, bm, bk, L.transpose_block_ids,
                              L.row_indices, tb, te, kk, out + kk, K);
  }
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

// Weight gradient of stored block j over the whole batch.
void grad_weight_block(const float* dy, const float* x, float* dw, int64_t n, int64_t j,
                       const BlockLayoutView& L) {
  const int64_t K = L.cols(), M = L.rows(), bm = L.bm, bk = L.bk;
  const float* dyb = dy + static_cast<int64_t>(L.row_indices[j]) * bm;
  const float* xb = x + static_cast<int64_t>(L.col_indices[j]) * bk;
  float* out = dw + j * bm * bk;
  for (int64_t m = 0; m < bm; m += kTile) {
    const int tm = static_cast<int>(std::min<int64_t>(kTile, bm - m));
    int64_t kk = 0;
    for (; kk + 16 <= bk; kk += 16)
      grad_weight_tile_rows<2>(tm, dyb + m, M, xb + kk, K, n, out + m * bk + kk, bk);
    if (kk < bk) grad_weight_tile_rows<1>(tm, dyb + m, M, xb + kk, K, n, out + m * bk + kk, bk);
  }
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
  const bool simd = use_simd(x, L.bk);
  run_parallel(threads, [&](int t, int nt) {
    for_each_item(grid, n, t, nt, [&](int64_t r, int64_t n0, int64_t n1) {
      if constexpr (std::is_same_v<T, float>) {
        if (simd) return forward_item(x, values, bias, y, n0, n1, r, L);
      }
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
  const int64_t block_elems = L.bm * L.bk;
  const bool simd = use_simd(x, L.bk);
  int64_t active = L.nnz;
  if (grad_block_mask) active = std::count(grad_block_mask, grad_block_mask + L.nnz, true);
  run_parallel(threads, [&](int t, int nt) {
    // Masked-off blocks: this thread's share of them is zero-filled, nothing is multiplied.
    int64_t begin, end;
    even_share(L.nnz, t, nt, &begin, &end);
    for (int64_t j = begin; j < end; ++j)
      if ((grad_block_mask && !grad_block_mask[j]) || n == 0)
        std::fill(grad_values + j * block_elems, grad_values + (j + 1) * block_elems, T(0));
    if (n == 0) return;
    // Active blocks: an equal count per thread, in storage order (shared rows stay cached).
    int64_t first, last;
    even_share(active, t, nt, &first, &last);
    int64_t rank = 0;
    for (int64_t j = 0; j < L.nnz && rank < last; ++j) {
      if (grad_block_mask && !grad_block_mask[j]) continue;
      if (rank++ < first) continue;
      if constexpr (std::is_same_v<T, float>) {
        if (simd) {
          grad_weight_block(grad_out, x, grad_values, n, j, L);
          continue;
        }
      }
      grad_weight_block<T>(grad_out, x, grad_values, n, j, L);
    }
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
