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
#include <vector>

#include "partition.h"

namespace sparcl {
namespace {

// Fixed-trip loops over tile dimensions must be fully unrolled before GCC's scalar
// replacement runs, or the accumulator arrays live on the stack instead of in registers.
#define SPARCL_UNROLL _Pragma("GCC unroll 16")

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

// One register tile of the two "stream the blocks of a group" passes:
//   out[i, o0 + 8q ...] = init[o0 + 8q ...]
//       + sum over s in [sb, se), p < P of a[i, group[j] * P + p] * b_j[p, o0 + 8q ...]
// with j = ids[s] (or s when ids is null) and b_j = b + j * P * O, a [P x O] row-major block.
//   forward:     a = x,        P = bk, O = bm, group = col_indices, b = values transposed;
//   input grad:  a = grad_out, P = bm, O = bk, group = row_indices, b = values,
//                ids = transpose_block_ids.
// Each step broadcasts TN scalars of `a` and loads KV vectors of `b`: 12 FMAs per 8 loads
// at TN = 6, KV = 2, all accumulators in registers.
template <int TN, int KV>
void accumulate_tile(const float* a, int64_t lda, const float* b, int64_t P, int64_t O,
                     const int32_t* ids, const int32_t* group, int32_t sb, int32_t se,
                     int64_t o0, const float* init, float* out, int64_t ldo) {
  __m256 acc[TN][KV];
  SPARCL_UNROLL
  for (int q = 0; q < KV; ++q) {
    const __m256 start = init ? _mm256_loadu_ps(init + o0 + 8 * q) : _mm256_setzero_ps();
    SPARCL_UNROLL
    for (int i = 0; i < TN; ++i) acc[i][q] = start;
  }
  for (int32_t s = sb; s < se; ++s) {
    const int64_t j = ids ? ids[s] : s;
    const float* ab = a + static_cast<int64_t>(group[j]) * P;
    const float* bb = b + j * P * O + o0;
    for (int64_t p = 0; p < P; ++p) {
      __m256 bv[KV];
      SPARCL_UNROLL
      for (int q = 0; q < KV; ++q) bv[q] = _mm256_loadu_ps(bb + p * O + 8 * q);
      SPARCL_UNROLL
      for (int i = 0; i < TN; ++i) {
        const __m256 av = _mm256_broadcast_ss(ab + i * lda + p);
        SPARCL_UNROLL
        for (int q = 0; q < KV; ++q) acc[i][q] = _mm256_fmadd_ps(av, bv[q], acc[i][q]);
      }
    }
  }
  SPARCL_UNROLL
  for (int i = 0; i < TN; ++i) {
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q) _mm256_storeu_ps(out + i * ldo + 8 * q, acc[i][q]);
  }
}

// Batch rows [0, rows) of one group's output slab [rows, O] (O a multiple of 8).
void accumulate_group(int64_t rows, const float* a, int64_t lda, const float* b, int64_t P,
                      int64_t O, const int32_t* ids, const int32_t* group, int32_t sb, int32_t se,
                      const float* init, float* out, int64_t ldo) {
  for (int64_t n = 0; n < rows; n += kTile) {
    const int tn = static_cast<int>(std::min<int64_t>(kTile, rows - n));
    for (int64_t o = 0; o < O; o += 16) {
      const bool wide = o + 16 <= O;
      switch (tn * 2 + wide) {
#define SPARCL_CASE(TN)                                                                       \
  case 2 * TN:                                                                                \
    accumulate_tile<TN, 1>(a + n * lda, lda, b, P, O, ids, group, sb, se, o, init,            \
                           out + n * ldo + o, ldo);                                           \
    break;                                                                                    \
  case 2 * TN + 1:                                                                            \
    accumulate_tile<TN, 2>(a + n * lda, lda, b, P, O, ids, group, sb, se, o, init,            \
                           out + n * ldo + o, ldo);                                           \
    break;
        SPARCL_CASE(1) SPARCL_CASE(2) SPARCL_CASE(3) SPARCL_CASE(4) SPARCL_CASE(5) SPARCL_CASE(6)
#undef SPARCL_CASE
      }
    }
  }
}

template <int TM, int KV>
void grad_weight_tile(const float* dy, int64_t lddy, const float* x, int64_t ldx, int64_t n,
                      float* out, int64_t ldo) {
  __m256 acc[TM][KV];
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i)
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q)
      acc[i][q] = _mm256_setzero_ps();
  for (int64_t r = 0; r < n; ++r) {
    __m256 xv[KV];
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q) xv[q] = _mm256_loadu_ps(x + r * ldx + 8 * q);
    SPARCL_UNROLL
    for (int i = 0; i < TM; ++i) {
      const __m256 d = _mm256_broadcast_ss(dy + r * lddy + i);
      SPARCL_UNROLL
      for (int q = 0; q < KV; ++q) acc[i][q] = _mm256_fmadd_ps(d, xv[q], acc[i][q]);
    }
  }
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i)
    SPARCL_UNROLL
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

// The fp32 micro-kernels store 8-wide vectors along the output's contiguous dimension.
bool use_simd(const float*, int64_t contiguous_width) { return contiguous_width % 8 == 0; }
bool use_simd(const double*, int64_t) { return false; }

// A buffer owned by the calling thread, grown on demand and reused by later calls, so that
// steady-state training allocates nothing but outputs.
float* transpose_workspace(int64_t count) {
  static thread_local std::vector<float> buffer;
  if (buffer.size() < static_cast<size_t>(count)) buffer.resize(count);
  return buffer.data();
}

void transpose_block(const float* values, float* values_t, int64_t j, int64_t bm, int64_t bk) {
  const float* src = values + j * bm * bk;
  float* dst = values_t + j * bm * bk;
  for (int64_t m = 0; m < bm; ++m)
    for (int64_t k = 0; k < bk; ++k) dst[k * bm + m] = src[m * bk + k];
}

// Forward for block row r and batch rows [n0, n1), from transposed blocks [nnz, bk, bm].
void forward_item(const float* x, const float* values_t, const float* bias, float* y,
                  int64_t n0, int64_t n1, int64_t r, const BlockLayoutView& L) {
  const int64_t K = L.cols(), M = L.rows();
  accumulate_group(n1 - n0, x + n0 * K, K, values_t, L.bk, L.bm, nullptr, L.col_indices,
                   L.row_offsets[r], L.row_offsets[r + 1], bias ? bias + r * L.bm : nullptr,
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
  accumulate_group(n1 - n0, dy + n0 * M, M, values, L.bm, L.bk, L.transpose_block_ids,
                   L.row_indices, L.transpose_offsets[c], L.transpose_offsets[c + 1], nullptr,
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
  if constexpr (std::is_same_v<T, float>) {
    if (L.bm % 8 == 0) {
      // The forward streams W transposed (outputs contiguous), so the blocks are transposed
      // once per call into a reused buffer: O(nnz) work next to O(n * nnz) multiply-adds.
      float* values_t = transpose_workspace(L.nnz * L.bm * L.bk);
      run_parallel(threads, [&](int t, int nt) {
        int64_t begin, end;
        even_share(L.nnz, t, nt, &begin, &end);
        for (int64_t j = begin; j < end; ++j) transpose_block(values, values_t, j, L.bm, L.bk);
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
