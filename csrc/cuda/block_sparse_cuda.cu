// CUDA kernels of the three block-sparse passes (see block_sparse_cuda.h and plan.h).
//
// A program stages 64 x 16 and 16 x 64 operand tiles in shared memory per 16-deep step and
// accumulates a 64 x 64 fp32 output tile: on tensor cores (WMMA 16x16x16, one 16-row strip
// per warp) for fp16/bf16, with SIMT FMAs (8 x 4 outputs per thread) for fp32. Loads are
// bounds-checked and zero-filled, so batch tails and narrow blocks need no special cases.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <type_traits>

#include "block_sparse_cuda.h"
#include "plan.h"

namespace sparcl {
namespace cuda {
namespace {

constexpr int kLdA = kStep + 8;      // A tile [kTileRows][kLdA]
constexpr int kLdB = kTileCols + 8;  // B tile [kStep][kLdB]
constexpr int kLdC = kTileCols + 4;  // fp32 output staging tile [kTileRows][kLdC]
constexpr int kWarps = kThreads / 32;
static_assert(kWarps * 16 == kTileRows, "one 16-row WMMA strip per warp");

template <typename T>
struct Scalar;
template <>
struct Scalar<float> {
  static __device__ float load(float v) { return v; }
  static __device__ float store(float v) { return v; }
};
template <>
struct Scalar<__half> {
  static __device__ float load(__half v) { return __half2float(v); }
  static __device__ __half store(float v) { return __float2half_rn(v); }
};
template <>
struct Scalar<__nv_bfloat16> {
  static __device__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

template <typename T>
struct SharedTiles {
  T a[kTileRows * kLdA];
  T b[kStep * kLdB];
  float c[kTileRows * kLdC];
};
static_assert(sizeof(SharedTiles<float>) == shared_bytes(4), "plan.h's shared_bytes is stale");
static_assert(sizeof(SharedTiles<__half>) == shared_bytes(2), "plan.h's shared_bytes is stale");

// ------------------------------------------------------------------ tile arithmetic

// Tensor cores for 16-bit inputs: fp16 WMMA from sm_70, bf16 WMMA only from sm_80, so the
// device code compiled for older GPUs (sm_75) multiplies bf16 tiles with SIMT FMAs instead.
template <typename T>
constexpr bool use_tensor_cores() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  return std::is_same<T, __half>::value;
#else
  return !std::is_same<T, float>::value;
#endif
}

template <typename T, bool kTensorCores = use_tensor_cores<T>()>
struct TileMath;

template <typename T>
struct TileMath<T, true> {
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc[kTileCols / 16];

  __device__ void init() {
    for (int j = 0; j < kTileCols / 16; ++j) nvcuda::wmma::fill_fragment(acc[j], 0.0f);
  }

  __device__ void step(const SharedTiles<T>& s, int cols) {
    using namespace nvcuda;
    const int warp = static_cast<int>(threadIdx.x) / 32;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
    wmma::load_matrix_sync(a, s.a + warp * 16 * kLdA, kLdA);
    for (int j = 0; j < kTileCols / 16; ++j) {
      if (j * 16 >= cols) break;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
      wmma::load_matrix_sync(b, s.b + j * 16, kLdB);
      wmma::mma_sync(acc[j], a, b, acc[j]);
    }
  }

  __device__ void stage(SharedTiles<T>& s) {
    const int warp = static_cast<int>(threadIdx.x) / 32;
    for (int j = 0; j < kTileCols / 16; ++j) {
      nvcuda::wmma::store_matrix_sync(s.c + warp * 16 * kLdC + j * 16, acc[j], kLdC,
                                      nvcuda::wmma::mem_row_major);
    }
  }
};

template <typename T>
struct TileMath<T, false> {
  static constexpr int kRows = kTileRows * kTileCols / kThreads / 4;  // 8
  float acc[kRows][4];

  __device__ int first_row() const { return (static_cast<int>(threadIdx.x) / 16) * kRows; }
  __device__ int first_col() const { return (static_cast<int>(threadIdx.x) % 16) * 4; }

  __device__ void init() {
    for (int i = 0; i < kRows; ++i)
      for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
  }

  __device__ void step(const SharedTiles<T>& s, int /*cols*/) {
    const int r0 = first_row(), c0 = first_col();
#pragma unroll 4
    for (int kk = 0; kk < kStep; ++kk) {
      float b[4];
      for (int j = 0; j < 4; ++j) b[j] = Scalar<T>::load(s.b[kk * kLdB + c0 + j]);
      for (int i = 0; i < kRows; ++i) {
        const float a = Scalar<T>::load(s.a[(r0 + i) * kLdA + kk]);
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a, b[j], acc[i][j]);
      }
    }
  }

  __device__ void stage(SharedTiles<T>& s) {
    const int r0 = first_row(), c0 = first_col();
    for (int i = 0; i < kRows; ++i)
      for (int j = 0; j < 4; ++j) s.c[(r0 + i) * kLdC + c0 + j] = acc[i][j];
  }
};

// ------------------------------------------------------------------ staging helpers

// Fill A [kTileRows x kStep] from element (row, kk) -> value or zero.
template <typename T, typename Source>
__device__ void fill_a(SharedTiles<T>& s, Source source) {
  for (int e = static_cast<int>(threadIdx.x); e < kTileRows * kStep; e += kThreads) {
    const int row = e / kStep, kk = e % kStep;
    s.a[row * kLdA + kk] = source(row, kk);
  }
}

// Fill B [kStep x kTileCols] from element (kk, col) -> value or zero.
template <typename T, typename Source>
__device__ void fill_b(SharedTiles<T>& s, Source source) {
  for (int e = static_cast<int>(threadIdx.x); e < kStep * kTileCols; e += kThreads) {
    const int kk = e / kTileCols, col = e % kTileCols;
    s.b[kk * kLdB + col] = source(kk, col);
  }
}

template <typename T>
__device__ T zero() {
  return Scalar<T>::store(0.0f);
}

// ------------------------------------------------------------------ kernels

template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const T* __restrict__ x, const T* __restrict__ values,
                   const T* __restrict__ bias, T* __restrict__ y, LayoutView layout,
                   int64_t batch, PassPlan plan, int64_t first_program) {
  __shared__ __align__(32) SharedTiles<T> s;
  const Tile tile = plan.decode(first_program + blockIdx.x);
  const int64_t n0 = tile.batch_tile * kTileRows;
  const int64_t block_row = tile.group;
  const int c0 = tile.col_slice * kTileCols;
  const int cols = min(kTileCols, layout.bm - c0);
  const int64_t block_elems = static_cast<int64_t>(layout.bm) * layout.bk;
  TileMath<T> math;
  math.init();
  const int32_t start = layout.row_offsets[block_row], end = layout.row_offsets[block_row + 1];
  for (int32_t p = start; p < end; ++p) {
    const T* block = values + p * block_elems;
    const int64_t x_col = static_cast<int64_t>(layout.col_indices[p]) * layout.bk;
    for (int kk0 = 0; kk0 < layout.bk; kk0 += kStep) {
      fill_a(s, [&](int row, int kk) {
        return n0 + row < batch ? x[(n0 + row) * layout.k + x_col + kk0 + kk] : zero<T>();
      });
      fill_b(s, [&](int kk, int col) {  // W^T: B[kk][col] = W[c0 + col][kk0 + kk]
        return col < cols ? block[static_cast<int64_t>(c0 + col) * layout.bk + kk0 + kk]
                          : zero<T>();
      });
      __syncthreads();
      math.step(s, cols);
      __syncthreads();
    }
  }
  math.stage(s);
  __syncthreads();
  for (int e = static_cast<int>(threadIdx.x); e < kTileRows * kTileCols; e += kThreads) {
    const int row = e / kTileCols, col = e % kTileCols;
    if (n0 + row >= batch || col >= cols) continue;
    const int64_t out_col = block_row * layout.bm + c0 + col;
    float value = s.c[row * kLdC + col];
    if (bias != nullptr) value += Scalar<T>::load(bias[out_col]);
    y[(n0 + row) * layout.m + out_col] = Scalar<T>::store(value);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    grad_input_kernel(const T* __restrict__ grad_out, const T* __restrict__ values,
                      T* __restrict__ grad_x, LayoutView layout, int64_t batch, PassPlan plan,
                      int64_t first_program) {
  __shared__ __align__(32) SharedTiles<T> s;
  const Tile tile = plan.decode(first_program + blockIdx.x);
  const int64_t n0 = tile.batch_tile * kTileRows;
  const int64_t block_col = tile.group;
  const int c0 = tile.col_slice * kTileCols;
  const int cols = min(kTileCols, layout.bk - c0);
  const int64_t block_elems = static_cast<int64_t>(layout.bm) * layout.bk;
  TileMath<T> math;
  math.init();
  const int32_t start = layout.transpose_offsets[block_col];
  const int32_t end = layout.transpose_offsets[block_col + 1];
  for (int32_t q = start; q < end; ++q) {
    const int32_t b = layout.transpose_block_ids[q];
    const T* block = values + b * block_elems;
    const int64_t dy_col = static_cast<int64_t>(layout.row_indices[b]) * layout.bm;
    for (int mm0 = 0; mm0 < layout.bm; mm0 += kStep) {
      fill_a(s, [&](int row, int kk) {
        return n0 + row < batch ? grad_out[(n0 + row) * layout.m + dy_col + mm0 + kk]
                                : zero<T>();
      });
      fill_b(s, [&](int kk, int col) {  // B[kk][col] = W[mm0 + kk][c0 + col]
        return col < cols ? block[static_cast<int64_t>(mm0 + kk) * layout.bk + c0 + col]
                          : zero<T>();
      });
      __syncthreads();
      math.step(s, cols);
      __syncthreads();
    }
  }
  math.stage(s);
  __syncthreads();
  for (int e = static_cast<int>(threadIdx.x); e < kTileRows * kTileCols; e += kThreads) {
    const int row = e / kTileCols, col = e % kTileCols;
    if (n0 + row >= batch || col >= cols) continue;
    grad_x[(n0 + row) * layout.k + block_col * layout.bk + c0 + col] =
        Scalar<T>::store(s.c[row * kLdC + col]);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    grad_weight_kernel(const T* __restrict__ grad_out, const T* __restrict__ x,
                       T* __restrict__ grad_values, const bool* __restrict__ grad_block_mask,
                       LayoutView layout, int64_t batch, PassPlan plan,
                       int64_t first_program) {
  __shared__ __align__(32) SharedTiles<T> s;
  const Tile tile = plan.decode(first_program + blockIdx.x);
  const int64_t b = tile.group;
  // A block the mask switches off reduces over no rows and stores zeros: the grid does not
  // depend on the mask, so the host never waits to list active blocks. The branch is uniform
  // over the thread block (one block per program), so the barriers below stay safe.
  const int64_t rows_used = grad_block_mask == nullptr || grad_block_mask[b] ? batch : 0;
  const int r0 = tile.row_slice * kTileRows, c0 = tile.col_slice * kTileCols;
  const int rows = min(kTileRows, layout.bm - r0), cols = min(kTileCols, layout.bk - c0);
  const int64_t dy_col = static_cast<int64_t>(layout.row_indices[b]) * layout.bm + r0;
  const int64_t x_col = static_cast<int64_t>(layout.col_indices[b]) * layout.bk + c0;
  TileMath<T> math;
  math.init();
  for (int64_t n0 = 0; n0 < rows_used; n0 += kStep) {
    fill_a(s, [&](int row, int kk) {  // A[row][kk] = grad_out[n0 + kk][dy_col + row]
      return row < rows && n0 + kk < batch ? grad_out[(n0 + kk) * layout.m + dy_col + row]
                                           : zero<T>();
    });
    fill_b(s, [&](int kk, int col) {
      return col < cols && n0 + kk < batch ? x[(n0 + kk) * layout.k + x_col + col] : zero<T>();
    });
    __syncthreads();
    math.step(s, cols);
    __syncthreads();
  }
  math.stage(s);
  __syncthreads();
  T* block = grad_values + b * layout.bm * layout.bk;
  for (int e = static_cast<int>(threadIdx.x); e < kTileRows * kTileCols; e += kThreads) {
    const int row = e / kTileCols, col = e % kTileCols;
    if (row >= rows || col >= cols) continue;
    block[static_cast<int64_t>(r0 + row) * layout.bk + c0 + col] =
        Scalar<T>::store(s.c[row * kLdC + col]);
  }
}

// ------------------------------------------------------------------ dispatch

bool valid(const LayoutView& layout, int64_t batch) {
  return check_problem(batch, layout.m, layout.k, layout.bm, layout.bk).empty();
}

template <typename Launcher>
cudaError_t for_dtype(DType dtype, Launcher launcher) {
  switch (dtype) {
    case DType::kFloat32:
      return launcher(static_cast<float*>(nullptr));
    case DType::kFloat16:
      return launcher(static_cast<__half*>(nullptr));
    case DType::kBFloat16:
      return launcher(static_cast<__nv_bfloat16*>(nullptr));
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t forward(const void* x, const void* values, const void* bias, void* y, int64_t batch,
                    const LayoutView& layout, DType dtype, cudaStream_t stream) {
  if (!valid(layout, batch)) return cudaErrorInvalidValue;
  const PassPlan plan = plan_pass(Pass::kForward, batch, layout.m / layout.bm, layout.bm,
                                  layout.bk);
  return for_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    for (const Launch& launch : split_launches(plan.programs())) {
      forward_kernel<T><<<static_cast<unsigned>(launch.count), kThreads, 0, stream>>>(
          static_cast<const T*>(x), static_cast<const T*>(values), static_cast<const T*>(bias),
          static_cast<T*>(y), layout, batch, plan, launch.first_program);
    }
    return cudaGetLastError();
  });
}

cudaError_t grad_input(const void* grad_out, const void* values, void* grad_x, int64_t batch,
                       const LayoutView& layout, DType dtype, cudaStream_t stream) {
  if (!valid(layout, batch)) return cudaErrorInvalidValue;
  const PassPlan plan = plan_pass(Pass::kGradInput, batch, layout.k / layout.bk, layout.bm,
                                  layout.bk);
  return for_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    for (const Launch& launch : split_launches(plan.programs())) {
      grad_input_kernel<T><<<static_cast<unsigned>(launch.count), kThreads, 0, stream>>>(
          static_cast<const T*>(grad_out), static_cast<const T*>(values),
          static_cast<T*>(grad_x), layout, batch, plan, launch.first_program);
    }
    return cudaGetLastError();
  });
}

cudaError_t grad_weight(const void* grad_out, const void* x, void* grad_values,
                        const bool* grad_block_mask, int64_t batch, const LayoutView& layout,
                        DType dtype, cudaStream_t stream) {
  if (!valid(layout, batch)) return cudaErrorInvalidValue;
  const PassPlan plan = plan_pass(Pass::kGradWeight, batch, layout.nnz, layout.bm, layout.bk);
  return for_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    for (const Launch& launch : split_launches(plan.programs())) {
      grad_weight_kernel<T><<<static_cast<unsigned>(launch.count), kThreads, 0, stream>>>(
          static_cast<const T*>(grad_out), static_cast<const T*>(x),
          static_cast<T*>(grad_values), grad_block_mask, layout, batch, plan,
          launch.first_program);
    }
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace sparcl
