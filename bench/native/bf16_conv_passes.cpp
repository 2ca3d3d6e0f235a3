// The bf16 convolution kernels alone, without torch: forward, input gradient and weight
// gradient of one 3x3 pad-1 block-sparse convolution (random layout, exactly round(density x
// positions) blocks) on the AVX512_BF16 copy of the kernels, against the bf16 dot-product
// peak probe. Used for A/Bs of kernel changes between commits, like conv_passes.cpp.
//
//   g++ -O3 -std=c++20 -ffp-contract=fast -fopenmp -Icsrc/cpu bench/native/bf16_conv_passes.cpp \
//       csrc/cpu/kernels_bf16.cpp csrc/cpu/kernels_bf16_emulated.cpp \
//       csrc/cpu/kernels_bf16_bfdot.cpp -o build/bf16_conv_passes && \
//       build/bf16_conv_passes BLOCK CHANNELS SIZE BATCH THREADS [STRIDE [DENSITY]]
//
// With STRIDE 2 the input has 2 x SIZE pixels a side and half the channels (a ResNet stage's
// first conv). Needs a CPU with AVX512_BF16.
#include "kernels_bf16_avx512.cpp"
#include "harness.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>

namespace sparcl {
double bf16_dot_peak_gflops(int threads, double seconds);
}

using sparcl::BlockLayoutView;
using sparcl::ConvGeometry;

int main(int argc, char** argv) {
  const harness::ConvCase c(argc, argv, 32, 2);
  const int b = c.block, threads = c.threads;
  const int64_t C = c.channels, S = c.size, N = c.batch, stride = c.stride;
  const int64_t cin = c.in_channels, in = c.in_size;
  const ConvGeometry g = c.geometry();
  const harness::RandomLayout layout = c.layout();
  const BlockLayoutView L = layout.view();
  const int64_t nnz = L.nnz;
  const uint16_t half = 0x3f00, quarter = 0x3e80;
  std::vector<uint16_t> x(N * in * in * cin, half), y(N * S * S * C, quarter), dx(x.size());
  std::vector<uint32_t> packed(nnz * b * b / 2, sparcl::bf16::pair(quarter, quarter));
  std::vector<float> dw(nnz * b * b);
  const double flops = 2.0 * N * S * S * nnz * b * b;
  namespace conv = sparcl::avx512bf16::bf16_conv;
  const double f = harness::best_ms([&] {
    conv::forward(x.data(), packed.data(), nullptr, y.data(), L, g, threads);
  });
  const double d = harness::best_ms([&] { conv::grad_input(y.data(), packed.data(), dx.data(), L, g, threads); });
  const double w = harness::best_ms([&] {
    conv::grad_weight(y.data(), x.data(), nullptr, dw.data(), L, g, threads);
  });
  const double peak = sparcl::bf16_dot_peak_gflops(threads, 0.3);
  const auto pct = [&](double ms) { return flops / ms / 1e6 / peak * 100; };
  std::printf("bf16 b=%d C=%ld %ldx%ld s%ld N=%ld thr=%d nnz=%ld: fwd %.3f ms (%.0f%%) dx %.3f (%.0f%%) "
              "dw %.3f (%.0f%%) peak %.0f\n",
              b, C, S, S, stride, N, threads, nnz, f, pct(f), d, pct(d), w, pct(w), peak);
}
