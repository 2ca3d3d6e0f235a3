// The operands both variants of bench/native/ab_kernels.sh time: one 3x3 pad-1 convolution
// (harness::ConvCase's arguments) or, with AB_LINEAR set, a linear layer (CHANNELS input
// features, $AB_LINEAR output features or CHANNELS where it is not a number, SIZE batch
// rows), at the case's density. Elements are floats or, for the bf16
// kernels, bf16 values and pairs stored in the same float-sized slots. Every buffer starts on
// a page, as torch's large tensors do (the kernels' cache-set conflicts depend on where the
// operands lie relative to each other), plus $AB_OFFSETS bytes: "X,Y" moves x (and dx) by X
// and y by Y.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <utility>
#include <vector>

#include "harness.h"

namespace ab {

// Floats starting `offset` bytes past a page boundary.
class PlacedFloats {
 public:
  void assign(size_t count, float value, int64_t offset) {
    constexpr size_t kPageFloats = 4096 / sizeof(float);
    storage_.assign(count + 2 * kPageFloats + static_cast<size_t>(offset) / sizeof(float), 0.f);
    const auto address = reinterpret_cast<uintptr_t>(storage_.data());
    const size_t skip = (kPageFloats - address / sizeof(float) % kPageFloats) % kPageFloats;
    data_ = storage_.data() + skip + offset / static_cast<int64_t>(sizeof(float));
    size_ = count;
    std::fill_n(data_, count, value);
  }
  float* data() { return data_; }
  const float* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  std::vector<float> storage_;
  float* data_ = nullptr;
  size_t size_ = 0;
};

// Byte offsets of x and y from a page ($AB_OFFSETS, "X,Y"; 0,0 when unset).
inline std::pair<int64_t, int64_t> placement_offsets() {
  const char* text = std::getenv("AB_OFFSETS");
  long long x = 0, y = 0;
  if (text) std::sscanf(text, "%lld,%lld", &x, &y);
  return {x / 4 * 4, y / 4 * 4};
}

struct Buffers {
  harness::ConvCase c;
  bool linear;
  int64_t n;  // linear batch rows
  int64_t outputs;  // linear output features
  sparcl::ConvGeometry g;
  harness::RandomLayout layout;
  sparcl::BlockLayoutView L;
  PlacedFloats x, y, dx, w, wt, dw;

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
    const auto [x_offset, y_offset] = placement_offsets();
    x.assign(bf16 ? (in + 1) / 2 : in, in_value, x_offset);
    dx.assign(x.size(), 0.f, x_offset);
    y.assign(bf16 ? (out + 1) / 2 : out, out_value, y_offset);
    w.assign(bf16 ? weights / 2 : weights, out_value, 0);
    wt.assign(w.size(), out_value, 0);
    dw.assign(weights, 0.f, 0);
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
