// Memory-safety checks shared by the torch bindings of the CPU and CUDA kernels.
//
// The op layer (sparcl_kernels/ops.py) validates arguments for users once; the bindings keep
// what stops a direct call (through the backend modules, or a user of them) from reading or
// writing out of bounds or computing on a misread tensor: every tensor argument must be
// contiguous (a transposed or expanded tensor would be read as if it were), of the right
// dtype, rank and sizes, on the kernels' device; the index tensors' ends must agree with nnz.
// SPARCL_CHECK_INDICES=1 also validates every index (O(nnz), a host copy on a GPU): a debug
// switch for layouts built by hand.
#pragma once

#include <torch/extension.h>

#include <cstdlib>
#include <string>

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
  TORCH_CHECK(row_offsets.numel() >= 1 && transpose_offsets.numel() >= 1,
              "row_offsets and transpose_offsets need at least one entry");
}

inline bool index_checks_enabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("SPARCL_CHECK_INDICES");
    return value != nullptr && std::string(value) != "" && std::string(value) != "0";
  }();
  return enabled;
}

// Every index of a layout in range and consistent (SPARCL_CHECK_INDICES=1 only).
inline void validate_layout_contents(const torch::Tensor& row_offsets_t,
                                     const torch::Tensor& col_indices_t,
                                     const torch::Tensor& row_indices_t,
                                     const torch::Tensor& transpose_offsets_t,
                                     const torch::Tensor& transpose_block_ids_t) {
  const auto host = [](const torch::Tensor& t) { return t.cpu().contiguous(); };
  const auto ro = host(row_offsets_t), ci = host(col_indices_t), ri = host(row_indices_t);
  const auto to = host(transpose_offsets_t), tb = host(transpose_block_ids_t);
  const int64_t rows = ro.numel() - 1, cols = to.numel() - 1, nnz = ci.numel();
  const int32_t* row_offsets = ro.data_ptr<int32_t>();
  const int32_t* col_indices = ci.data_ptr<int32_t>();
  const int32_t* row_indices = ri.data_ptr<int32_t>();
  const int32_t* transpose_offsets = to.data_ptr<int32_t>();
  const int32_t* transpose_ids = tb.data_ptr<int32_t>();
  TORCH_CHECK(row_offsets[0] == 0 && row_offsets[rows] == nnz,
              "row_offsets must run from 0 to nnz = ", nnz);
  TORCH_CHECK(transpose_offsets[0] == 0 && transpose_offsets[cols] == nnz,
              "transpose_offsets must run from 0 to nnz = ", nnz);
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(row_offsets[r] <= row_offsets[r + 1], "row_offsets must not decrease");
    for (int64_t b = row_offsets[r]; b < row_offsets[r + 1]; ++b) {
      TORCH_CHECK(row_indices[b] == r, "row_indices[", b, "] must be ", r);
      TORCH_CHECK(col_indices[b] >= 0 && col_indices[b] < cols, "col_indices[", b, "] = ",
                  col_indices[b], " is outside [0, ", cols, ")");
      TORCH_CHECK(b == row_offsets[r] || col_indices[b - 1] < col_indices[b],
                  "col_indices must increase within a block row");
    }
  }
  for (int64_t c = 0; c < cols; ++c) {
    TORCH_CHECK(transpose_offsets[c] <= transpose_offsets[c + 1],
                "transpose_offsets must not decrease");
    for (int64_t t = transpose_offsets[c]; t < transpose_offsets[c + 1]; ++t) {
      const int32_t id = transpose_ids[t];
      TORCH_CHECK(id >= 0 && id < nnz && col_indices[id] == c, "transpose_block_ids[", t,
                  "] = ", id, " is not a stored block of block column ", c);
    }
  }
}

inline void check_layout_contents(const torch::Tensor& row_offsets,
                                  const torch::Tensor& col_indices,
                                  const torch::Tensor& row_indices,
                                  const torch::Tensor& transpose_offsets,
                                  const torch::Tensor& transpose_block_ids) {
  if (index_checks_enabled())
    validate_layout_contents(row_offsets, col_indices, row_indices, transpose_offsets,
                             transpose_block_ids);
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

// ``values`` is a contiguous [nnz, bm, bk] tensor on a ``device`` device.
inline void check_values(const torch::Tensor& values, int64_t nnz, c10::DeviceType device) {
  TORCH_CHECK(values.device().type() == device && values.dim() == 3 && values.is_contiguous() &&
                  values.size(0) == nnz,
              "values must be a contiguous [nnz, bm, bk] ", c10::DeviceTypeName(device),
              " tensor with nnz = len(col_indices) = ", nnz);
}

// An optional gradient mask: a contiguous 1-D bool tensor of nnz entries on ``like``'s device.
inline void check_grad_block_mask(const std::optional<torch::Tensor>& mask, int64_t nnz,
                                  const torch::Tensor& like) {
  if (!mask) return;
  TORCH_CHECK(mask->scalar_type() == torch::kBool && mask->is_contiguous() && mask->dim() == 1 &&
                  mask->numel() == nnz && mask->device() == like.device(),
              "grad_block_mask must be a contiguous 1-D bool tensor of nnz = ", nnz,
              " entries on ", like.device());
}

}  // namespace sparcl::binding
