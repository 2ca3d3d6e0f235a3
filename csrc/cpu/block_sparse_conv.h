// Torch-free CPU kernels for a 2-D convolution with a block-sparse weight (implicit GEMM).
//
// Channels-last operands: x / grad_x [batch, in_h, in_w, channels], y / grad_out
// [batch, out_h, out_w, out_channels]. The layout describes the GEMM-view weight
// [out_channels, kernel_h * kernel_w * channels] (column = tap * channels + channel) with
// blocks of bm output channels x bk input channels at one tap; bk must divide channels.
#pragma once

#include <cstdint>

#include "block_sparse.h"

namespace sparcl {

struct ConvGeometry {
  int64_t batch, in_h, in_w, channels;
  int64_t out_h, out_w;
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w;
  int64_t pad_h, pad_w;
  int64_t dilation_h, dilation_w;
};

// values_t: as for block_sparse_forward (null: transposed per call).
template <typename T>
void block_sparse_conv_forward(const T* x, const T* values, const T* values_t, const T* bias,
                               T* y, const BlockLayoutView& layout,
                               const ConvGeometry& geometry, int threads);

template <typename T>
void block_sparse_conv_grad_input(const T* grad_out, const T* values, T* grad_x,
                                  const BlockLayoutView& layout, const ConvGeometry& geometry,
                                  int threads);

// Stored blocks with grad_block_mask false (when not null) get exact zeros and no work.
template <typename T>
void block_sparse_conv_grad_weight(const T* grad_out, const T* x, const bool* grad_block_mask,
                                   T* grad_values, const BlockLayoutView& layout,
                                   const ConvGeometry& geometry, int threads);

// bf16 operands (see block_sparse.h's bf16 section): x / grad_out / grad_x as bf16 bit
// patterns, blocks packed by bf16_pack_blocks (its forward and input-gradient pairs), bias and
// the weight gradient fp32.
void block_sparse_conv_forward_bf16(const uint16_t* x, const uint16_t* packed_forward,
                                    const float* bias, uint16_t* y, const BlockLayoutView& layout,
                                    const ConvGeometry& geometry, int threads);

void block_sparse_conv_grad_input_bf16(const uint16_t* grad_out, const uint16_t* packed_grad_input,
                                       uint16_t* grad_x, const BlockLayoutView& layout,
                                       const ConvGeometry& geometry, int threads);

void block_sparse_conv_grad_weight_bf16(const uint16_t* grad_out, const uint16_t* x,
                                        const bool* grad_block_mask, float* grad_values,
                                        const BlockLayoutView& layout,
                                        const ConvGeometry& geometry, int threads);

}  // namespace sparcl
