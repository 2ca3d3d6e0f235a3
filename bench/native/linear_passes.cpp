// The linear kernels alone, without torch: forward, input gradient and weight gradient of a
// block-sparse layer at density 0.1 (random layout, harness.h; 2048 x 2048 unless IN and OUT
// are given), and the panel transposes, on the AVX-512 copy of the kernels, against the FMA
// peak probe. Used for A/Bs of
// kernel changes between commits (build the file against each commit's csrc/cpu and run them
// alternately).
//
//   g++ -O3 -std=c++20 -ffp-contract=fast -fopenmp -Icsrc/cpu bench/native/linear_passes.cpp \
//       -o build/linear_passes && build/linear_passes BLOCK BATCH THREADS [IN OUT]
//
// -DHARNESS_AVX2 builds the AVX2 copy instead.
#include "isa_prelude.h"
#include "harness_isa.h"
#include "linear_kernels.h"
#include "peak.h"
#include "harness.h"
#include <chrono>
#include <cstdio>
#include <random>
using namespace sparcl::SPARCL_ISA_NS; using sparcl::BlockLayoutView; using sparcl::Execution;
int main(int argc, char** argv) {
  const int64_t K = argc > 5 ? atoi(argv[4]) : 2048, M = argc > 5 ? atoi(argv[5]) : 2048;
  const int64_t n = argc > 2 ? atoi(argv[2]) : 256; const int b = argc > 1 ? atoi(argv[1]) : 16;
  const int threads = argc > 3 ? atoi(argv[3]) : 1;
  const harness::RandomLayout layout(M / b, K / b, b, b, 0.1);
  const BlockLayoutView L = layout.view();
  const int64_t nnz = L.nnz;
  std::vector<float> x(n * K, 0.5f), v(nnz * b * b, 0.25f), vt(v), y(n * M), dx(n * K);
  const double flops = 2.0 * n * nnz * b * b;
  Execution ex{threads, SPARCL_ISA_WIDTH};
  double f = harness::best_ms([&] { linear::forward<float>(x.data(), v.data(), vt.data(), nullptr, y.data(), n, L, ex); });
  double g = harness::best_ms([&] { linear::grad_input<float>(y.data(), v.data(), dx.data(), n, L, ex); });
  std::vector<float> dw(v.size());
  double w = harness::best_ms([&] { linear::grad_weight<float>(y.data(), x.data(), nullptr, dw.data(), n, L, ex); });
  detail::PanelShape shape(K, n, SPARCL_ISA_WIDTH), out_shape(M, n, SPARCL_ISA_WIDTH);
  std::vector<float> panel(std::max(shape.size(), out_shape.size()));
  double pk = harness::best_ms([&] { detail::pack_panel<SPARCL_ISA_WIDTH>(x.data(), K, shape, 0, K, panel.data()); });
  double up = harness::best_ms([&] { detail::unpack_panel<SPARCL_ISA_WIDTH>(panel.data(), out_shape, 0, M, y.data(), M); });
  double peak = peak::fma_gflops(threads, 0.3);
  std::printf("b=%d n=%ld thr=%d nnz=%ld: fwd %.3f ms (%.0f%%) dx %.3f ms (%.0f%%) dw %.3f ms (%.0f%%) pack %.3f unpack %.3f  peak %.0f\n", b, n, threads, nnz,
              f, flops / f / 1e6 / peak * 100, g, flops / g / 1e6 / peak * 100, w, flops / w / 1e6 / peak * 100, pk, up, peak);
}
