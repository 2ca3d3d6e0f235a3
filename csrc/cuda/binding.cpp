// Thin torch binding of the torch-free CUDA kernels (built by setup.py only where torch has
// CUDA): checks, output allocation, the current stream. The op layer has validated arguments
// for users; these checks guard direct calls.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "../common/binding_checks.h"
#include "block_sparse_cuda.h"
#include "plan.h"

namespace {

using torch::Tensor;
namespace sc = sparcl::cuda;

sc::DType dtype_of(const Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32:
      return sc::DType::kFloat32;
    case torch::kFloat16:
      return sc::DType::kFloat16;
    case torch::kBFloat16:
      return sc::DType::kBFloat16;
    default:
      TORCH_CHECK(false, "cuda backend supports float32, float16 and bfloat16, got ",
                  t.scalar_type());
  }
}

constexpr auto kDevice = c10::DeviceType::CUDA;

void check_operand(const Tensor& t, const Tensor& like, const char* name, int64_t dim) {
  sparcl::binding::check_operand(t, like, kDevice, name, dim);
}

sc::LayoutView make_view(int64_t bm, int64_t bk, const Tensor& row_offsets,
                         const Tensor& col_indices, const Tensor& row_indices,
                         const Tensor& transpose_offsets, const Tensor& transpose_block_ids) {
  sparcl::binding::check_layout_index(kDevice, row_offsets, col_indices, row_indices,
                                      transpose_offsets, transpose_block_ids);
  sparcl::binding::check_layout_contents(row_offsets, col_indices, row_indices, transpose_offsets,
                                         transpose_block_ids);
  const int64_t m = (row_offsets.numel() - 1) * bm, k = (transpose_offsets.numel() - 1) * bk;
  const std::string problem = sc::check_problem(0, m, k, static_cast<int>(bm),
                                                static_cast<int>(bk));
  TORCH_CHECK(problem.empty(), problem);
  return {m,
          k,
          static_cast<int>(bm),
          static_cast<int>(bk),
          col_indices.numel(),
          row_offsets.data_ptr<int32_t>(),
          col_indices.data_ptr<int32_t>(),
          row_indices.data_ptr<int32_t>(),
          transpose_offsets.data_ptr<int32_t>(),
          transpose_block_ids.data_ptr<int32_t>()};
}

void check_cuda(cudaError_t error, const char* pass) {
  TORCH_CHECK(error == cudaSuccess, "sparcl cuda ", pass, ": ", cudaGetErrorString(error));
}

Tensor forward(const Tensor& x, const Tensor& values, const Tensor& row_offsets,
               const Tensor& col_indices, const Tensor& row_indices,
               const Tensor& transpose_offsets, const Tensor& transpose_block_ids,
               const std::optional<Tensor>& bias) {
  sparcl::binding::check_values(values, col_indices.numel(), kDevice);
  const c10::cuda::CUDAGuard guard(values.device());
  const auto view = make_view(values.size(1), values.size(2), row_offsets, col_indices,
                              row_indices, transpose_offsets, transpose_block_ids);
  check_operand(x, values, "x", 2);
  TORCH_CHECK(x.size(1) == view.k, "x must have ", view.k, " columns");
  if (bias) {
    check_operand(*bias, values, "bias", 1);
    TORCH_CHECK(bias->numel() == view.m, "bias must have ", view.m, " entries");
  }
  Tensor y = torch::empty({x.size(0), view.m}, x.options());
  check_cuda(sc::forward(x.data_ptr(), values.data_ptr(), bias ? bias->data_ptr() : nullptr,
                         y.data_ptr(), x.size(0), view, dtype_of(x),
                         c10::cuda::getCurrentCUDAStream().stream()),
             "forward");
  return y;
}

Tensor grad_input(const Tensor& grad_out, const Tensor& values, const Tensor& row_offsets,
                  const Tensor& col_indices, const Tensor& row_indices,
                  const Tensor& transpose_offsets, const Tensor& transpose_block_ids) {
  sparcl::binding::check_values(values, col_indices.numel(), kDevice);
  const c10::cuda::CUDAGuard guard(values.device());
  const auto view = make_view(values.size(1), values.size(2), row_offsets, col_indices,
                              row_indices, transpose_offsets, transpose_block_ids);
  check_operand(grad_out, values, "grad_out", 2);
  TORCH_CHECK(grad_out.size(1) == view.m, "grad_out must have ", view.m, " columns");
  Tensor grad_x = torch::empty({grad_out.size(0), view.k}, grad_out.options());
  check_cuda(sc::grad_input(grad_out.data_ptr(), values.data_ptr(), grad_x.data_ptr(),
                            grad_out.size(0), view, dtype_of(grad_out),
                            c10::cuda::getCurrentCUDAStream().stream()),
             "grad_input");
  return grad_x;
}

Tensor grad_weight(const Tensor& grad_out, const Tensor& x, const Tensor& row_offsets,
                   const Tensor& col_indices, const Tensor& row_indices,
                   const Tensor& transpose_offsets, const Tensor& transpose_block_ids,
                   const std::optional<Tensor>& grad_block_mask, int64_t bm, int64_t bk) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto view = make_view(bm, bk, row_offsets, col_indices, row_indices, transpose_offsets,
                              transpose_block_ids);
  check_operand(x, x, "x", 2);
  check_operand(grad_out, x, "grad_out", 2);
  TORCH_CHECK(x.size(1) == view.k && grad_out.size(1) == view.m && x.size(0) == grad_out.size(0),
              "x must be [N, ", view.k, "] and grad_out [N, ", view.m, "]");
  const bool* mask = nullptr;
  sparcl::binding::check_grad_block_mask(grad_block_mask, view.nnz, x);
  if (grad_block_mask) mask = grad_block_mask->data_ptr<bool>();
  Tensor grad_values = torch::empty({view.nnz, bm, bk}, x.options());
  check_cuda(sc::grad_weight(grad_out.data_ptr(), x.data_ptr(), grad_values.data_ptr(), mask,
                             x.size(0), view, dtype_of(x),
                             c10::cuda::getCurrentCUDAStream().stream()),
             "grad_weight");
  return grad_values;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sparcl_kernels CUDA kernels (WMMA for fp16/bf16, SIMT fp32)";
  m.def("forward", &forward);
  m.def("grad_input", &grad_input);
  m.def("grad_weight", &grad_weight);
}
