// Memory-safety checks shared by the torch bindings of the CPU and CUDA kernels.
//
// The op layer (sparcl_kernels/ops.py) validates arguments for users once; the bindings keep
// only what stops a direct call from reading or writing out of bounds: index tensors and
// operands must be contiguous, of the right dtype and rank, on the kernels' device.
#pragma once

#include <torch/extension.h>

namespace sparcl::binding {

inline void check_index(const torch::Tensor& t, c10::DeviceType device, const char* name) {
  TORCH_CHECK(t.device().type() == device && t.scalar_type() == torch::kInt32 &&
                  t.is_contiguous() && t.dim() == 1,
              name, " must be a contiguous 1-D int32 ", c10::DeviceTypeName(device), " tensor");
}

// The five index tensors of a BlockLayout, in BlockLayout.tensors() order.
inline void check_layout_index(c10::DeviceType device, const torch::Tensor& row_offsets,
                               const torch::Tensor& col_indices,
                               const torch::Tensor& row_indices,
                               const torch::Tensor& transpose_offsets,
                               const torch::Tensor& transpose_block_ids) {
  check_index(row_offsets, device, "row_offsets");
  check_index(col_indices, device, "col_indices");
  check_index(row_indices, device, "row_indices");
  check_index(transpose_offsets, device, "transpose_offsets");
  check_index(transpose_block_ids, device, "transpose_block_ids");
  TORCH_CHECK(row_indices.numel() == col_indices.numel() &&
                  transpose_block_ids.numel() == col_indices.numel(),
              "the layout's index tensors disagree on the number of stored blocks");
}

// ``t`` is a contiguous ``dim``-D tensor on a ``device`` device, with the dtype and device of
// ``like``.
inline void check_operand(const torch::Tensor& t, const torch::Tensor& like,
                          c10::DeviceType device, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().type() == device && t.device() == like.device() && t.is_contiguous() &&
                  t.dim() == dim && t.scalar_type() == like.scalar_type(),
              name, " must be a contiguous ", dim, "-D tensor of dtype ", like.scalar_type(),
              " on ", like.device());
}

}  // namespace sparcl::binding
