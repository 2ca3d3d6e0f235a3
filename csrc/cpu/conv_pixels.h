// Pixel arithmetic of the channels-last implicit GEMM, shared by the fp32 (conv_kernels.h) and
// bf16 (bf16_kernels.h) convolution kernels. Included before any instruction-set pragma (see
// isa_prelude.h), so one baseline copy of these inline functions serves every copy.
#pragma once

#include <cstdint>

#include "block_sparse_conv.h"

namespace sparcl::conv_pixels {

struct Pixel {
  int64_t image, row, col;
};

inline Pixel pixel_of(int64_t index, int64_t height, int64_t width) {
  return {index / (height * width), (index / width) % height, index % width};
}

// Where tap `tap` of output pixel `p` reads the input, or -1 inside the padding.
inline int64_t input_pixel(const ConvGeometry& g, const Pixel& p, int64_t tap) {
  const int64_t ih = p.row * g.stride_h - g.pad_h + (tap / g.kernel_w) * g.dilation_h;
  const int64_t iw = p.col * g.stride_w - g.pad_w + (tap % g.kernel_w) * g.dilation_w;
  if (ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) return -1;
  return (p.image * g.in_h + ih) * g.in_w + iw;
}

// The output pixel whose tap `tap` reads input pixel `q`, or -1 if there is none.
inline int64_t output_pixel(const ConvGeometry& g, const Pixel& q, int64_t tap) {
  const int64_t oh_scaled = q.row + g.pad_h - (tap / g.kernel_w) * g.dilation_h;
  const int64_t ow_scaled = q.col + g.pad_w - (tap % g.kernel_w) * g.dilation_w;
  if (oh_scaled < 0 || ow_scaled < 0 || oh_scaled % g.stride_h || ow_scaled % g.stride_w)
    return -1;
  const int64_t oh = oh_scaled / g.stride_h, ow = ow_scaled / g.stride_w;
  if (oh >= g.out_h || ow >= g.out_w) return -1;
  return (q.image * g.out_h + oh) * g.out_w + ow;
}

}  // namespace sparcl::conv_pixels
