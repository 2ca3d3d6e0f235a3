// The operands both variants of bench/native/ab_kernels.sh time: one 3x3 pad-1 convolution
// (harness::ConvCase's arguments) or, with AB_LINEAR set, a linear layer (CHANNELS input
// features, $AB_LINEAR output features or CHANNELS where it is not a number, SIZE batch
// rows), at the case's density. Elements are floats or, for the bf16
// kernels, bf16 values and pairs stored in the same float-sized slots.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "harness.h"

namespace ab {

struct Buffers {
  harness::ConvCase c;
  bool linear;
  int64_t n;  // linear batch rows
  int64_t outputs;  // linear output features
  sparcl::ConvGeometry g;
  harness::RandomLayout layout;
  sparcl::BlockLayoutView L;
  std::vector<float> x, y, dx, w, wt, dw;

  Buffers(int argc, char** argv, bool bf16)
      : c(argc, argv, 32, 2),
        linear(std::getenv("AB_LINEAR") != nullptr),
        n(linear ? c.size : 0),
        outputs(linear_outputs(c.channels)),
        g(c.geometry()),
        layout(linear ? harness::RandomLayout(outputs / c.block, c.channels / c.block,
                                              c.block, c.block, c.density)
                      : c.layout()),
        L(layout.view()) {
    const int64_t in = linear ? n * c.channels : c.batch * c.in_size * c.in_size * c.in_channels;
    const int64_t out = linear ? n * outputs : c.batch * c.size * c.size * c.channels;
    const int64_t weights = L.nnz * c.block * c.block;
    // bf16 operands take half a slot each: 0.5 and 0.25 in both halves.
    const float in_value = bf16 ? bits(0x3f003f00u) : 0.5f;
    const float out_value = bf16 ? bits(0x3e803e80u) : 0.25f;
    x.assign(bf16 ? (in + 1) / 2 : in, in_value);
    dx.assign(x.size(), 0.f);
    y.assign(bf16 ? (out + 1) / 2 : out, out_value);
    w.assign(bf16 ? weights / 2 : weights, out_value);
    wt = w;
    dw.assign(weights, 0.f);
  }

  static int64_t linear_outputs(int64_t channels) {
    const char* text = std::getenv("AB_LINEAR");
    const int64_t outputs = text ? std::atoll(text) : 0;
    return outputs > 1 ? outputs : channels;  // AB_LINEAR=1: square
  }

  static float bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
};

}  // namespace ab
