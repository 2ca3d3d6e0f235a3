// Thin torch binding of the CPU kernels: checks, output allocation, thread count.
// The op layer (sparcl_kernels/ops.py) has already validated arguments for users; these
// checks guard direct calls (see ../common/binding_checks.h).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "../common/binding_checks.h"
#include "block_sparse.h"
#include "block_sparse_conv.h"

namespace {

using torch::Tensor;

constexpr auto kDevice = c10::DeviceType::CPU;

void check_operand(const Tensor& t, const Tensor& like, const char* name, int64_t dim) {
  sparcl::binding::check_operand(t, like, kDevice, name, dim);
}

// An optional copy of values with every block transposed ([nnz, bk, bm]); its pointer, or
// null (the kernels then transpose per call).
template <typename T>
const T* transposed_values(const std::optional<Tensor>& values_t, const Tensor& values) {
  if (!values_t) return nullptr;
  check_operand(*values_t, values, "values_t", 3);
  TORCH_CHECK(values_t->size(0) == values.size(0) && values_t->size(1) == values.size(2) &&
                  values_t->size(2) == values.size(1),
              "values_t must be values with every block transposed: [nnz, bk, bm]");
  return values_t->data_ptr<T>();
}

sparcl::BlockLayoutView make_view(int64_t bm, int64_t bk, const Tensor& row_offsets,
                                  const Tensor& col_indices, const Tensor& row_indices,
                                  const Tensor& transpose_offsets,
                                  const Tensor& transpose_block_ids) {
  sparcl::binding::check_layout_index(kDevice, row_offsets, col_indices, row_indices,
                                      transpose_offsets, transpose_block_ids);
  TORCH_CHECK(bm > 0 && bk > 0, "block sizes must be positive");
  const int64_t nnz = col_indices.numel();
  // One read each (host memory): stops a values/layout mismatch from reading past values.
  TORCH_CHECK(row_offsets.data_ptr<int32_t>()[row_offsets.numel() - 1] == nnz &&
                  transpose_offsets.data_ptr<int32_t>()[transpose_offsets.numel() - 1] == nnz,
              "row_offsets and transpose_offsets must end at nnz = ", nnz);
  sparcl::binding::check_layout_contents(row_offsets, col_indices, row_indices, transpose_offsets,
                                         transpose_block_ids);
  return {row_offsets.numel() - 1,
          transpose_offsets.numel() - 1,
          bm,
          bk,
          col_indices.numel(),
          row_offsets.data_ptr<int32_t>(),
          col_indices.data_ptr<int32_t>(),
          row_indices.data_ptr<int32_t>(),
          transpose_offsets.data_ptr<int32_t>(),
          transpose_block_ids.data_ptr<int32_t>()};
}

Tensor forward(const Tensor& x, const Tensor& values, const Tensor& row_offsets,
               const Tensor& col_indices, const Tensor& row_indices,
               const Tensor& transpose_offsets, const Tensor& transpose_block_ids,
               const std::optional<Tensor>& bias, const std::optional<Tensor>& values_t) {
  sparcl::binding::check_values(values, col_indices.numel(), kDevice);
  const auto view = make_view(values.size(1), values.size(2), row_offsets, col_indices,
                              row_indices, transpose_offsets, transpose_block_ids);
  check_operand(x, values, "x", 2);
  TORCH_CHECK(x.size(1) == view.cols(), "x must have ", view.cols(), " columns");
  if (bias) {
    check_operand(*bias, values, "bias", 1);
    TORCH_CHECK(bias->numel() == view.rows(), "bias must have ", view.rows(), " entries");
  }
  Tensor y = torch::empty({x.size(0), view.rows()}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sparcl_cpu_forward", [&] {
    sparcl::block_sparse_forward<scalar_t>(
        x.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
        transposed_values<scalar_t>(values_t, values), bias ? bias->data_ptr<scalar_t>() : nullptr,
        y.data_ptr<scalar_t>(), x.size(0), view, at::get_num_threads());
  });
  return y;
}

Tensor grad_input(const Tensor& grad_out, const Tensor& values, const Tensor& row_offsets,
                  const Tensor& col_indices, const Tensor& row_indices,
                  const Tensor& transpose_offsets, const Tensor& transpose_block_ids) {
  sparcl::binding::check_values(values, col_indices.numel(), kDevice);
  const auto view = make_view(values.size(1), values.size(2), row_offsets, col_indices,
                              row_indices, transpose_offsets, transpose_block_ids);
  check_operand(grad_out, values, "grad_out", 2);
  TORCH_CHECK(grad_out.size(1) == view.rows(), "grad_out must have ", view.rows(), " columns");
  Tensor grad_x = torch::empty({grad_out.size(0), view.cols()}, grad_out.options());
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "sparcl_cpu_grad_input", [&] {
    sparcl::block_sparse_grad_input<scalar_t>(
        grad_out.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(),
        grad_out.size(0), view, at::get_num_threads());
  });
  return grad_x;
}

Tensor grad_weight(const Tensor& grad_out, const Tensor& x, int64_t bm, int64_t bk,
                   const Tensor& row_offsets, const Tensor& col_indices, const Tensor& row_indices,
                   const Tensor& transpose_offsets, const Tensor& transpose_block_ids,
                   const std::optional<Tensor>& grad_block_mask) {
  const auto view = make_view(bm, bk, row_offsets, col_indices, row_indices, transpose_offsets,
                              transpose_block_ids);
  check_operand(x, x, "x", 2);
  check_operand(grad_out, x, "grad_out", 2);
  TORCH_CHECK(x.size(1) == view.cols() && grad_out.size(1) == view.rows() &&
                  x.size(0) == grad_out.size(0),
              "x and grad_out shapes do not match the layout");
  sparcl::binding::check_grad_block_mask(grad_block_mask, view.nnz, x);
  Tensor grad_values = torch::empty({view.nnz, view.bm, view.bk}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sparcl_cpu_grad_weight", [&] {
    sparcl::block_sparse_grad_weight<scalar_t>(
        grad_out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
        grad_block_mask ? grad_block_mask->data_ptr<bool>() : nullptr,
        grad_values.data_ptr<scalar_t>(), x.size(0), view, at::get_num_threads());
  });
  return grad_values;
}

// geometry = [kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w]
sparcl::ConvGeometry make_geometry(const std::vector<int64_t>& geometry, int64_t batch,
                                   int64_t in_h, int64_t in_w, int64_t channels) {
  TORCH_CHECK(geometry.size() == 8, "geometry must have 8 entries");
  sparcl::ConvGeometry g{batch, in_h, in_w, channels, 0, 0, geometry[0], geometry[1],
                         geometry[2], geometry[3], geometry[4], geometry[5], geometry[6],
                         geometry[7]};
  TORCH_CHECK(g.kernel_h > 0 && g.kernel_w > 0 && g.stride_h > 0 && g.stride_w > 0 &&
                  g.pad_h >= 0 && g.pad_w >= 0 && g.dilation_h > 0 && g.dilation_w > 0,
              "invalid convolution geometry");
  g.out_h = (in_h + 2 * g.pad_h - g.dilation_h * (g.kernel_h - 1) - 1) / g.stride_h + 1;
  g.out_w = (in_w + 2 * g.pad_w - g.dilation_w * (g.kernel_w - 1) - 1) / g.stride_w + 1;
  TORCH_CHECK(g.out_h > 0 && g.out_w > 0, "convolution output would be empty");
  return g;
}

// grad_out is [batch, out_h, out_w, out_channels] of the convolution.
void check_conv_grad_out(const Tensor& grad_out, const sparcl::BlockLayoutView& view,
                         const sparcl::ConvGeometry& g) {
  TORCH_CHECK(grad_out.size(0) == g.batch && grad_out.size(1) == g.out_h &&
                  grad_out.size(2) == g.out_w && grad_out.size(3) == view.rows(),
              "grad_out shape does not match the convolution");
}

void check_conv_layout(const sparcl::BlockLayoutView& view, const sparcl::ConvGeometry& g) {
  TORCH_CHECK(g.channels % view.bk == 0, "bk must divide the input channels");
  TORCH_CHECK(view.cols() == g.kernel_h * g.kernel_w * g.channels,
              "layout columns must equal kernel_h * kernel_w * channels");
}

Tensor conv_forward(const Tensor& x, const Tensor& values, const Tensor& row_offsets,
                    const Tensor& col_indices, const Tensor& row_indices,
                    const Tensor& transpose_offsets, const Tensor& transpose_block_ids,
                    const std::optional<Tensor>& bias, const std::vector<int64_t>& geometry,
                    const std::optional<Tensor>& values_t) {
  sparcl::binding::check_values(values, col_indices.numel(), kDevice);
  const auto view = make_view(values.size(1), values.size(2), row_offsets, col_indices,
                              row_indices, transpose_offsets, transpose_block_ids);
  check_operand(x, values, "x", 4);
  const auto g = make_geometry(geometry, x.size(0), x.size(1), x.size(2), x.size(3));
  check_conv_layout(view, g);
  if (bias) {
    check_operand(*bias, values, "bias", 1);
    TORCH_CHECK(bias->numel() == view.rows(), "bias must have ", view.rows(), " entries");
  }
  Tensor y = torch::empty({g.batch, g.out_h, g.out_w, view.rows()}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sparcl_cpu_conv_forward", [&] {
    sparcl::block_sparse_conv_forward<scalar_t>(
        x.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
        transposed_values<scalar_t>(values_t, values), bias ? bias->data_ptr<scalar_t>() : nullptr,
        y.data_ptr<scalar_t>(), view, g, at::get_num_threads());
  });
  return y;
}

Tensor conv_grad_input(const Tensor& grad_out, const Tensor& values, const Tensor& row_offsets,
                       const Tensor& col_indices, const Tensor& row_indices,
                       const Tensor& transpose_offsets, const Tensor& transpose_block_ids,
                       const std::vector<int64_t>& geometry, int64_t in_h, int64_t in_w) {
  sparcl::binding::check_values(values, col_indices.numel(), kDevice);
  const auto view = make_view(values.size(1), values.size(2), row_offsets, col_indices,
                              row_indices, transpose_offsets, transpose_block_ids);
  check_operand(grad_out, values, "grad_out", 4);
  const int64_t taps = geometry.size() == 8 ? geometry[0] * geometry[1] : 1;
  const auto g = make_geometry(geometry, grad_out.size(0), in_h, in_w, view.cols() / taps);
  check_conv_layout(view, g);
  check_conv_grad_out(grad_out, view, g);
  Tensor grad_x = torch::empty({g.batch, in_h, in_w, g.channels}, grad_out.options());
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "sparcl_cpu_conv_grad_input", [&] {
    sparcl::block_sparse_conv_grad_input<scalar_t>(grad_out.data_ptr<scalar_t>(),
                                                   values.data_ptr<scalar_t>(),
                                                   grad_x.data_ptr<scalar_t>(), view, g,
                                                   at::get_num_threads());
  });
  return grad_x;
}

Tensor conv_grad_weight(const Tensor& grad_out, const Tensor& x, int64_t bm, int64_t bk,
                        const Tensor& row_offsets, const Tensor& col_indices,
                        const Tensor& row_indices, const Tensor& transpose_offsets,
                        const Tensor& transpose_block_ids,
                        const std::optional<Tensor>& grad_block_mask,
                        const std::vector<int64_t>& geometry) {
  const auto view = make_view(bm, bk, row_offsets, col_indices, row_indices, transpose_offsets,
                              transpose_block_ids);
  check_operand(x, x, "x", 4);
  check_operand(grad_out, x, "grad_out", 4);
  const auto g = make_geometry(geometry, x.size(0), x.size(1), x.size(2), x.size(3));
  check_conv_layout(view, g);
  check_conv_grad_out(grad_out, view, g);
  sparcl::binding::check_grad_block_mask(grad_block_mask, view.nnz, x);
  Tensor grad_values = torch::empty({view.nnz, view.bm, view.bk}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sparcl_cpu_conv_grad_weight", [&] {
    sparcl::block_sparse_conv_grad_weight<scalar_t>(
        grad_out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
        grad_block_mask ? grad_block_mask->data_ptr<bool>() : nullptr,
        grad_values.data_ptr<scalar_t>(), view, g, at::get_num_threads());
  });
  return grad_values;
}

// ------------------------------------------------------------------ bf16 linear passes

void check_bf16(const Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kBFloat16 && t.is_contiguous() &&
                  t.dim() == dim,
              name, " must be a contiguous ", dim, "-D bfloat16 CPU tensor");
}

const uint16_t* bf16_data(const Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>());
}

uint16_t* bf16_data(Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

void check_bias_fp32(const std::optional<Tensor>& bias, int64_t rows) {
  if (!bias) return;
  TORCH_CHECK(bias->device().is_cpu() && bias->scalar_type() == torch::kFloat32 &&
                  bias->is_contiguous() && bias->dim() == 1 && bias->numel() == rows,
              "bias must be a contiguous float32 CPU tensor of ", rows, " entries");
}

// values [nnz, bm, bk] (fp32) as bf16 pairs both ways, from one read of the values:
// ([nnz, bk / 2, bm, 2] for the forward, [nnz, bm / 2, bk, 2] for the input gradient).
std::tuple<Tensor, Tensor> bf16_pack_blocks(const Tensor& values) {
  TORCH_CHECK(values.device().is_cpu() && values.scalar_type() == torch::kFloat32 &&
                  values.is_contiguous() && values.dim() == 3,
              "values must be a contiguous [nnz, bm, bk] float32 CPU tensor");
  const int64_t nnz = values.size(0), bm = values.size(1), bk = values.size(2);
  TORCH_CHECK(sparcl::bf16_blocks_fit(bm, bk), "bf16 kernels need block sides that are "
              "multiples of 4, got ", bm, "x", bk);
  const auto options = values.options().dtype(torch::kBFloat16);
  Tensor forward = torch::empty({nnz, bk / 2, bm, 2}, options);
  Tensor grad_input = torch::empty({nnz, bm / 2, bk, 2}, options);
  sparcl::bf16_pack_blocks(values.data_ptr<float>(), bf16_data(forward), bf16_data(grad_input),
                           nnz, bm, bk, at::get_num_threads());
  return {forward, grad_input};
}

// The layout of packed blocks [nnz, pairs, width, 2], whose pairs run along bm (along_rows)
// or bk.
sparcl::BlockLayoutView packed_view(const Tensor& packed, bool along_rows,
                                    const Tensor& row_offsets, const Tensor& col_indices,
                                    const Tensor& row_indices, const Tensor& transpose_offsets,
                                    const Tensor& transpose_block_ids) {
  check_bf16(packed, "packed", 4);
  TORCH_CHECK(packed.size(0) == col_indices.numel() && packed.size(3) == 2,
              "packed must be [nnz, pairs, width, 2] with nnz = len(col_indices) = ",
              col_indices.numel());
  const int64_t paired = 2 * packed.size(1), other = packed.size(2);
  TORCH_CHECK(sparcl::bf16_blocks_fit(paired, other), "packed blocks must have sides that are "
              "multiples of 4");
  return make_view(along_rows ? paired : other, along_rows ? other : paired, row_offsets,
                   col_indices, row_indices, transpose_offsets, transpose_block_ids);
}

Tensor forward_bf16(const Tensor& x, const Tensor& packed, const Tensor& row_offsets,
                    const Tensor& col_indices, const Tensor& row_indices,
                    const Tensor& transpose_offsets, const Tensor& transpose_block_ids,
                    const std::optional<Tensor>& bias) {
  const auto view = packed_view(packed, false, row_offsets, col_indices, row_indices,
                                transpose_offsets, transpose_block_ids);
  check_bf16(x, "x", 2);
  TORCH_CHECK(x.size(1) == view.cols(), "x must have ", view.cols(), " columns");
  check_bias_fp32(bias, view.rows());
  Tensor y = torch::empty({x.size(0), view.rows()}, x.options());
  sparcl::block_sparse_forward_bf16(bf16_data(x), bf16_data(packed),
                                    bias ? bias->data_ptr<float>() : nullptr, bf16_data(y),
                                    x.size(0), view, at::get_num_threads());
  return y;
}

Tensor grad_input_bf16(const Tensor& grad_out, const Tensor& packed, const Tensor& row_offsets,
                       const Tensor& col_indices, const Tensor& row_indices,
                       const Tensor& transpose_offsets, const Tensor& transpose_block_ids) {
  const auto view = packed_view(packed, true, row_offsets, col_indices, row_indices,
                                transpose_offsets, transpose_block_ids);
  check_bf16(grad_out, "grad_out", 2);
  TORCH_CHECK(grad_out.size(1) == view.rows(), "grad_out must have ", view.rows(), " columns");
  Tensor grad_x = torch::empty({grad_out.size(0), view.cols()}, grad_out.options());
  sparcl::block_sparse_grad_input_bf16(bf16_data(grad_out), bf16_data(packed), bf16_data(grad_x),
                                       grad_out.size(0), view, at::get_num_threads());
  return grad_x;
}

Tensor grad_weight_bf16(const Tensor& grad_out, const Tensor& x, int64_t bm, int64_t bk,
                        const Tensor& row_offsets, const Tensor& col_indices,
                        const Tensor& row_indices, const Tensor& transpose_offsets,
                        const Tensor& transpose_block_ids,
                        const std::optional<Tensor>& grad_block_mask) {
  TORCH_CHECK(sparcl::bf16_blocks_fit(bm, bk), "bf16 kernels need block sides that are "
              "multiples of 4, got ", bm, "x", bk);
  const auto view = make_view(bm, bk, row_offsets, col_indices, row_indices, transpose_offsets,
                              transpose_block_ids);
  check_bf16(x, "x", 2);
  check_bf16(grad_out, "grad_out", 2);
  TORCH_CHECK(x.size(1) == view.cols() && grad_out.size(1) == view.rows() &&
                  x.size(0) == grad_out.size(0),
              "x and grad_out shapes do not match the layout");
  sparcl::binding::check_grad_block_mask(grad_block_mask, view.nnz, x);
  Tensor grad_values = torch::empty({view.nnz, bm, bk}, x.options().dtype(torch::kFloat32));
  sparcl::block_sparse_grad_weight_bf16(
      bf16_data(grad_out), bf16_data(x),
      grad_block_mask ? grad_block_mask->data_ptr<bool>() : nullptr,
      grad_values.data_ptr<float>(), x.size(0), view, at::get_num_threads());
  return grad_values;
}

Tensor conv_forward_bf16(const Tensor& x, const Tensor& packed, const Tensor& row_offsets,
                         const Tensor& col_indices, const Tensor& row_indices,
                         const Tensor& transpose_offsets, const Tensor& transpose_block_ids,
                         const std::optional<Tensor>& bias, const std::vector<int64_t>& geometry) {
  const auto view = packed_view(packed, false, row_offsets, col_indices, row_indices,
                                transpose_offsets, transpose_block_ids);
  check_bf16(x, "x", 4);
  const auto g = make_geometry(geometry, x.size(0), x.size(1), x.size(2), x.size(3));
  check_conv_layout(view, g);
  check_bias_fp32(bias, view.rows());
  Tensor y = torch::empty({g.batch, g.out_h, g.out_w, view.rows()}, x.options());
  sparcl::block_sparse_conv_forward_bf16(bf16_data(x), bf16_data(packed),
                                         bias ? bias->data_ptr<float>() : nullptr, bf16_data(y),
                                         view, g, at::get_num_threads());
  return y;
}

Tensor conv_grad_input_bf16(const Tensor& grad_out, const Tensor& packed,
                            const Tensor& row_offsets, const Tensor& col_indices,
                            const Tensor& row_indices, const Tensor& transpose_offsets,
                            const Tensor& transpose_block_ids,
                            const std::vector<int64_t>& geometry, int64_t in_h, int64_t in_w) {
  const auto view = packed_view(packed, true, row_offsets, col_indices, row_indices,
                                transpose_offsets, transpose_block_ids);
  check_bf16(grad_out, "grad_out", 4);
  const int64_t taps = geometry.size() == 8 ? geometry[0] * geometry[1] : 1;
  const auto g = make_geometry(geometry, grad_out.size(0), in_h, in_w, view.cols() / taps);
  check_conv_layout(view, g);
  check_conv_grad_out(grad_out, view, g);
  Tensor grad_x = torch::empty({g.batch, in_h, in_w, g.channels}, grad_out.options());
  sparcl::block_sparse_conv_grad_input_bf16(bf16_data(grad_out), bf16_data(packed),
                                            bf16_data(grad_x), view, g, at::get_num_threads());
  return grad_x;
}

Tensor conv_grad_weight_bf16(const Tensor& grad_out, const Tensor& x, int64_t bm, int64_t bk,
                             const Tensor& row_offsets, const Tensor& col_indices,
                             const Tensor& row_indices, const Tensor& transpose_offsets,
                             const Tensor& transpose_block_ids,
                             const std::optional<Tensor>& grad_block_mask,
                             const std::vector<int64_t>& geometry) {
  TORCH_CHECK(sparcl::bf16_blocks_fit(bm, bk), "bf16 kernels need block sides that are "
              "multiples of 4, got ", bm, "x", bk);
  const auto view = make_view(bm, bk, row_offsets, col_indices, row_indices, transpose_offsets,
                              transpose_block_ids);
  check_bf16(x, "x", 4);
  check_bf16(grad_out, "grad_out", 4);
  const auto g = make_geometry(geometry, x.size(0), x.size(1), x.size(2), x.size(3));
  check_conv_layout(view, g);
  check_conv_grad_out(grad_out, view, g);
  sparcl::binding::check_grad_block_mask(grad_block_mask, view.nnz, x);
  Tensor grad_values = torch::empty({view.nnz, bm, bk}, x.options().dtype(torch::kFloat32));
  sparcl::block_sparse_conv_grad_weight_bf16(
      bf16_data(grad_out), bf16_data(x),
      grad_block_mask ? grad_block_mask->data_ptr<bool>() : nullptr,
      grad_values.data_ptr<float>(), view, g, at::get_num_threads());
  return grad_values;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sparcl_kernels CPU kernels (C++/OpenMP, one copy per instruction set)";
  m.def("forward", &forward, "y = x @ W.T + bias");
  m.def("grad_input", &grad_input, "grad_x = grad_out @ W");
  m.def("grad_weight", &grad_weight, "grad of the stored blocks, skipping masked-off ones");
  m.def("conv_forward", &conv_forward, "channels-last implicit-GEMM convolution");
  m.def("conv_grad_input", &conv_grad_input, "input gradient of conv_forward");
  m.def("conv_grad_weight", &conv_grad_weight, "stored-block weight gradient of conv_forward");
  m.def("compiled_isas", &sparcl::compiled_isas, "instruction sets compiled into this build");
  m.def("supported_isas", &sparcl::supported_isas, "compiled instruction sets this CPU runs");
  m.def("select_isa", &sparcl::select_isa, "use an instruction set ('' = best) and vector width "
        "(0 = its own); returns '' or why it cannot", pybind11::arg("name"),
        pybind11::arg("max_width") = 0);
  m.def("active_isa", &sparcl::active_isa, "instruction set in use");
  m.def("active_vector_width", &sparcl::active_vector_width, "fp32 vector width in use (floats)");
  m.def("openmp", &sparcl::built_with_openmp, "whether the kernels were built with OpenMP");
  m.def("fma_peak", &sparcl::fma_peak_gflops, "measured fp32 multiply-add GFLOP/s of the ISA "
        "in use on `threads` threads", pybind11::arg("threads"), pybind11::arg("seconds") = 0.3);
  m.def("bf16_dot_instruction", &sparcl::bf16_dot_instruction,
        "the bf16 pair dot-product instruction this CPU has ('avx512bf16', 'bfdot') or ''");
  m.def("bf16_kernels", &sparcl::bf16_kernels,
        "bf16 kernels in use: 'avx512bf16', 'bfdot' or 'emulated'");
  m.def("select_bf16_kernels", &sparcl::select_bf16_kernels, "use 'native', 'emulated' or '' "
        "(the best) bf16 kernels; returns '' or why it cannot", pybind11::arg("name"));
  m.def("bf16_blocks_fit", &sparcl::bf16_blocks_fit, "whether bf16 kernels take bm x bk blocks");
  m.def("bf16_pack_blocks", &bf16_pack_blocks, "fp32 blocks as bf16 pairs along bk (forward) "
        "and along bm (input gradient), from one read", pybind11::arg("values"));
  m.def("forward_bf16", &forward_bf16, "y = x @ W.T + bias with bf16 operands");
  m.def("grad_input_bf16", &grad_input_bf16, "grad_x = grad_out @ W with bf16 operands");
  m.def("grad_weight_bf16", &grad_weight_bf16, "fp32 stored-block gradient of bf16 operands");
  m.def("conv_forward_bf16", &conv_forward_bf16, "channels-last convolution, bf16 operands");
  m.def("conv_grad_input_bf16", &conv_grad_input_bf16, "input gradient of conv_forward_bf16");
  m.def("conv_grad_weight_bf16", &conv_grad_weight_bf16,
        "fp32 stored-block gradient of conv_forward_bf16");
  m.def("bf16_dot_peak", &sparcl::bf16_dot_peak_gflops, "measured GFLOP/s of that instruction "
        "on `threads` threads (0 without one)", pybind11::arg("threads"),
        pybind11::arg("seconds") = 0.3);
}
