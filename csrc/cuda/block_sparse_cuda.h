// Torch-free C++ API of the CUDA block-sparse kernels: raw device pointers, sizes, a stream.
//
// Layout of the weight W [m, k]: nnz stored blocks [bm, bk] in block-row-major order (BSR:
// row_offsets [m / bm + 1], col_indices [nnz]), its row index (row_indices [nnz]) and its
// transpose index (transpose_offsets [k / bk + 1], transpose_block_ids [nnz]); all int32 and
// on the device. Activations are row-major. Inputs and outputs share one dtype; products
// accumulate in fp32 (tensor cores through WMMA for fp16/bf16, SIMT FMA for fp32).
// Every function returns cudaSuccess or the first error (including cudaErrorInvalidValue
// for a problem plan.h's check_problem rejects).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace sparcl {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct LayoutView {
  int64_t m, k;  // weight shape
  int bm, bk;    // block shape
  int64_t nnz;
  const int32_t* row_offsets;
  const int32_t* col_indices;
  const int32_t* row_indices;
  const int32_t* transpose_offsets;
  const int32_t* transpose_block_ids;
};

// y [batch, m] = x [batch, k] @ W^T (+ bias [m] when bias is not null).
cudaError_t forward(const void* x, const void* values, const void* bias, void* y, int64_t batch,
                    const LayoutView& layout, DType dtype, cudaStream_t stream);

// grad_x [batch, k] = grad_out [batch, m] @ W.
cudaError_t grad_input(const void* grad_out, const void* values, void* grad_x, int64_t batch,
                       const LayoutView& layout, DType dtype, cudaStream_t stream);

// grad_values[b] = grad_out[:, rows(b)]^T @ x[:, cols(b)] for every stored block b, exactly
// zero where grad_block_mask (device bool [nnz], or null for all blocks) is false: those
// blocks' programs skip the reduction, so the launch does not depend on the mask's contents.
cudaError_t grad_weight(const void* grad_out, const void* x, void* grad_values,
                        const bool* grad_block_mask, int64_t batch, const LayoutView& layout,
                        DType dtype, cudaStream_t stream);

}  // namespace cuda
}  // namespace sparcl
