// AVX2+FMA register-tiled micro-kernels shared by the linear and convolution kernels.
#pragma once

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

// Fixed-trip loops over tile dimensions must be fully unrolled before GCC's scalar
// replacement runs, or the accumulator arrays live on the stack instead of in registers.
#define SPARCL_UNROLL _Pragma("GCC unroll 16")

namespace sparcl {
namespace detail {

constexpr int kTile = 6;  // tile height of every micro-kernel (12 accumulators at width 16)

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

// A buffer owned by the calling thread, grown on demand and reused by later calls, so that
// steady-state training allocates nothing but outputs.
inline float* thread_workspace(int64_t count, int slot) {
  static thread_local std::vector<float> buffers[2];
  auto& buffer = buffers[slot];
  if (buffer.size() < static_cast<size_t>(count)) buffer.resize(count, 0.0f);
  return buffer.data();
}

// values [nnz, bm, bk] -> values_t [nnz, bk, bm] for blocks [begin, end).
inline void transpose_blocks(const float* values, float* values_t, int64_t begin, int64_t end,
                             int64_t bm, int64_t bk) {
  for (int64_t j = begin; j < end; ++j) {
    const float* src = values + j * bm * bk;
    float* dst = values_t + j * bm * bk;
    for (int64_t m = 0; m < bm; ++m)
      for (int64_t k = 0; k < bk; ++k) dst[k * bm + m] = src[m * bk + k];
  }
}

// One register tile of the "stream the blocks of a group" passes:
//   out[i, o0 + 8q ...] (+)= init[o0 + 8q ...]
//       + sum over s in [sb, se), p < P of a_i(j)[p] * b_j[p, o0 + 8q ...]
// with j = ids[s] (or s when ids is null), b_j = b + j * P * O a [P x O] row-major block, and
// a_i(j) the P contiguous operand values of tile row i for block j, given by rows(j, a).
// Each step broadcasts TN scalars and loads KV vectors of b: at TN = 6, KV = 2 that is
// 12 FMAs per 8 loads with every accumulator in a register.
template <int TN, int KV, typename Rows>
void accumulate_tile(const Rows& rows, const float* b, int64_t P, int64_t O, const int32_t* ids,
                     int32_t sb, int32_t se, int64_t o0, const float* init, bool accumulate,
                     float* out, int64_t ldo) {
  __m256 acc[TN][KV];
  SPARCL_UNROLL
  for (int q = 0; q < KV; ++q) {
    const __m256 start = init ? _mm256_loadu_ps(init + o0 + 8 * q) : _mm256_setzero_ps();
    SPARCL_UNROLL
    for (int i = 0; i < TN; ++i)
      acc[i][q] = accumulate ? _mm256_loadu_ps(out + i * ldo + 8 * q) : start;
  }
  const float* a[TN];
  for (int32_t s = sb; s < se; ++s) {
    const int64_t j = ids ? ids[s] : s;
    rows(j, a);
    const float* bb = b + j * P * O + o0;
    for (int64_t p = 0; p < P; ++p) {
      __m256 bv[KV];
      SPARCL_UNROLL
      for (int q = 0; q < KV; ++q) bv[q] = _mm256_loadu_ps(bb + p * O + 8 * q);
      SPARCL_UNROLL
      for (int i = 0; i < TN; ++i) {
        const __m256 av = _mm256_broadcast_ss(a[i] + p);
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

// Output rows [0, count) x columns [0, O) (O a multiple of 8) of one group, tile by tile.
// tile_rows(n, tn) returns the Rows functor of the tile starting at output row n.
template <typename TileRows>
void accumulate_slab(int64_t count, const TileRows& tile_rows, const float* b, int64_t P,
                     int64_t O, const int32_t* ids, int32_t sb, int32_t se, const float* init,
                     bool accumulate, float* out, int64_t ldo) {
  for (int64_t n = 0; n < count; n += kTile) {
    const int tn = static_cast<int>(std::min<int64_t>(kTile, count - n));
    const auto rows = tile_rows(n);
    for (int64_t o = 0; o < O; o += 16) {
      float* tile_out = out + n * ldo + o;
      const bool wide = o + 16 <= O;
      switch (tn * 2 + wide) {
#define SPARCL_CASE(TN)                                                                   \
  case 2 * TN:                                                                            \
    accumulate_tile<TN, 1>(rows, b, P, O, ids, sb, se, o, init, accumulate, tile_out, ldo); \
    break;                                                                                \
  case 2 * TN + 1:                                                                        \
    accumulate_tile<TN, 2>(rows, b, P, O, ids, sb, se, o, init, accumulate, tile_out, ldo); \
    break;
        SPARCL_CASE(1) SPARCL_CASE(2) SPARCL_CASE(3) SPARCL_CASE(4) SPARCL_CASE(5) SPARCL_CASE(6)
#undef SPARCL_CASE
      }
    }
  }
}

// Row pairs of a weight-gradient block: r-th grad_out row and r-th input row, by stride.
struct StridedRows {
  const float* dy;
  int64_t lddy;
  const float* x;
  int64_t ldx;
  const float* dy_row(int64_t r) const { return dy + r * lddy; }
  const float* x_row(int64_t r) const { return x + r * ldx; }
};

// Row pairs given as pointer lists (gathered rows, e.g. one kernel tap of a convolution).
struct GatheredRows {
  const float* const* dy;
  const float* const* x;
  const float* dy_row(int64_t r) const { return dy[r]; }
  const float* x_row(int64_t r) const { return x[r]; }
};

// out[i, 8q ...] (+)= sum over r < count of dy_row(r)[m0 + i] * x_row(r)[k0 + 8q ...] for one
// TM x 8KV tile of a weight-gradient block.
template <int TM, int KV, typename Rows>
void outer_product_tile(const Rows& rows, int64_t count, int64_t m0, int64_t k0, bool accumulate,
                        float* out, int64_t ldo) {
  __m256 acc[TM][KV];
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q)
      acc[i][q] = accumulate ? _mm256_loadu_ps(out + i * ldo + 8 * q) : _mm256_setzero_ps();
  }
  for (int64_t r = 0; r < count; ++r) {
    const float* x_row = rows.x_row(r) + k0;
    const float* dy_row = rows.dy_row(r) + m0;
    __m256 xv[KV];
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q) xv[q] = _mm256_loadu_ps(x_row + 8 * q);
    SPARCL_UNROLL
    for (int i = 0; i < TM; ++i) {
      const __m256 d = _mm256_broadcast_ss(dy_row + i);
      SPARCL_UNROLL
      for (int q = 0; q < KV; ++q) acc[i][q] = _mm256_fmadd_ps(d, xv[q], acc[i][q]);
    }
  }
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q) _mm256_storeu_ps(out + i * ldo + 8 * q, acc[i][q]);
  }
}

// A whole bm x bk weight-gradient block (bk a multiple of 8) from `count` row pairs.
template <typename Rows>
void outer_product_block(const Rows& rows, int64_t count, int64_t bm, int64_t bk,
                         bool accumulate, float* out) {
  for (int64_t m = 0; m < bm; m += kTile) {
    const int tm = static_cast<int>(std::min<int64_t>(kTile, bm - m));
    for (int64_t k = 0; k < bk; k += 16) {
      const bool wide = k + 16 <= bk;
      float* tile_out = out + m * bk + k;
      switch (tm * 2 + wide) {
#define SPARCL_CASE(TM)                                                                     \
  case 2 * TM:                                                                              \
    outer_product_tile<TM, 1>(rows, count, m, k, accumulate, tile_out, bk);                 \
    break;                                                                                  \
  case 2 * TM + 1:                                                                          \
    outer_product_tile<TM, 2>(rows, count, m, k, accumulate, tile_out, bk);                 \
    break;
        SPARCL_CASE(1) SPARCL_CASE(2) SPARCL_CASE(3) SPARCL_CASE(4) SPARCL_CASE(5) SPARCL_CASE(6)
#undef SPARCL_CASE
      }
    }
  }
}

}  // namespace detail
}  // namespace sparcl
