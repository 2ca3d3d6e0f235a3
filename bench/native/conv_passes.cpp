// The convolution kernels alone, without torch: forward, input gradient and weight gradient of
// one 3x3 stride-1 pad-1 block-sparse convolution at density 0.1 (random layout) on the AVX-512
// copy of the kernels, against the FMA peak probe: each pass's efficiency at a glance. Not for
// deciding kernel changes: GCC compiles a tile differently here than in the extension (the
// 16x16 blocks' pair tile ran at 0.69-0.73 ms here and 0.60 ms in the extension and in
// ab_kernels.sh, so a change that only matched the extension read 1.1x faster here); compare
// builds with bench/native/ab_kernels.sh or the extension itself.
//
//   g++ -O3 -std=c++20 -ffp-contract=fast -fopenmp -Icsrc/cpu bench/native/conv_passes.cpp \
//       -o build/conv_passes && build/conv_passes BLOCK CHANNELS SIZE BATCH THREADS [STRIDE [DENSITY]]
//
// With STRIDE 2 the input has 2 x SIZE pixels a side and half the channels (a ResNet stage's
// first conv). -DHARNESS_AVX2 builds the AVX2 copy instead.
#include "isa_prelude.h"
#include "harness_isa.h"
#include "conv_kernels.h"
#include "peak.h"
#include "harness.h"
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cmath>
#include <random>
using namespace sparcl::SPARCL_ISA_NS;
using sparcl::BlockLayoutView;
using sparcl::ConvGeometry;
using sparcl::Execution;

int main(int argc, char** argv) {
  const harness::ConvCase c(argc, argv, 8, 1);
  const int b = c.block, threads = c.threads;
  const int64_t C = c.channels, S = c.size, N = c.batch;
  const int64_t cin = c.in_channels, in = c.in_size;
  const ConvGeometry g = c.geometry();
  const harness::RandomLayout layout = c.layout();
  const BlockLayoutView L = layout.view();
  const int64_t nnz = L.nnz;
  std::vector<float> x(N * in * in * cin, 0.5f), v(nnz * b * b, 0.25f), vt(v), y(N * S * S * C),
      dx(x.size()), dw(v.size());
  const double flops = 2.0 * N * S * S * nnz * b * b;
  const Execution ex{threads, SPARCL_ISA_WIDTH};
  const double f = harness::best_ms([&] {
    conv::forward<float>(x.data(), v.data(), vt.data(), nullptr, y.data(), L, g, ex);
  });
  const double d = harness::best_ms([&] { conv::grad_input<float>(y.data(), v.data(), dx.data(), L, g, ex); });
  const double w = harness::best_ms([&] {
    conv::grad_weight<float>(y.data(), x.data(), nullptr, dw.data(), L, g, ex);
  });
  const double peak = peak::fma_gflops(threads, 0.3);
  const auto pct = [&](double ms) { return flops / ms / 1e6 / peak * 100; };
  std::printf("b=%d C=%ld %ldx%ld N=%ld thr=%d nnz=%ld: fwd %.3f ms (%.0f%%) dx %.3f (%.0f%%) "
              "dw %.3f (%.0f%%) peak %.0f\n",
              b, C, S, S, N, threads, nnz, f, pct(f), d, pct(d), w, pct(w), peak);
}
