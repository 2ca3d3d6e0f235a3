// The linear kernels alone, without torch: forward and input gradient of a 2048 x 2048
// block-sparse layer at density 0.1 (random layout), and the panel transposes, on the AVX-512
// copy of the kernels, against the FMA peak probe. Used for A/Bs of kernel changes between
// commits (build the file against each commit's csrc/cpu and run them alternately).
//
//   g++ -O3 -std=c++20 -ffp-contract=fast -fopenmp -Icsrc/cpu bench/native/linear_passes.cpp \
//       -o build/linear_passes && build/linear_passes BLOCK BATCH THREADS
#include "isa_prelude.h"
#define SPARCL_ISA_NS avx512
#define SPARCL_ISA_WIDTH 16
#define SPARCL_TILE_ROWS 12
#define SPARCL_MAX_VECTORS 2
#pragma GCC target("avx512f,avx2,fma")
#include "linear_kernels.h"
#include "peak.h"
#include <chrono>
#include <cstdio>
#include <random>
using namespace sparcl::avx512; using sparcl::BlockLayoutView; using sparcl::Execution;
template <typename F> double best_ms(F f, int reps = 15) {
  double best = 1e9;
  for (int t = 0; t < reps; ++t) { auto t0 = std::chrono::steady_clock::now(); f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()); }
  return best * 1e3;
}
int main(int argc, char** argv) {
  const int64_t K = 2048, M = 2048, n = argc > 2 ? atoi(argv[2]) : 256; const int b = argc > 1 ? atoi(argv[1]) : 16;
  const int threads = argc > 3 ? atoi(argv[3]) : 1;
  std::mt19937 rng(0); std::bernoulli_distribution keep(0.1);
  const int64_t br = M / b, bc = K / b;
  std::vector<int32_t> ro(br + 1), ci, ri; ro[0] = 0;
  for (int64_t r = 0; r < br; ++r) { for (int64_t c = 0; c < bc; ++c) if (keep(rng)) { ci.push_back(c); ri.push_back(r); } ro[r + 1] = ci.size(); }
  const int64_t nnz = ci.size();
  std::vector<int32_t> to(bc + 1, 0), tid(nnz);
  for (auto c : ci) to[c + 1]++; for (int64_t c = 0; c < bc; ++c) to[c + 1] += to[c];
  { std::vector<int32_t> pos(to.begin(), to.end() - 1); for (int64_t j = 0; j < nnz; ++j) tid[pos[ci[j]]++] = j; }
  BlockLayoutView L{br, bc, b, b, nnz, ro.data(), ci.data(), ri.data(), to.data(), tid.data()};
  std::vector<float> x(n * K, 0.5f), v(nnz * b * b, 0.25f), vt(v), y(n * M), dx(n * K);
  const double flops = 2.0 * n * nnz * b * b;
  Execution ex{threads, 16};
  double f = best_ms([&] { linear::forward<float>(x.data(), v.data(), vt.data(), nullptr, y.data(), n, L, ex); });
  double g = best_ms([&] { linear::grad_input<float>(y.data(), v.data(), dx.data(), n, L, ex); });
  std::vector<float> dw(v.size());
  double w = best_ms([&] { linear::grad_weight<float>(y.data(), x.data(), nullptr, dw.data(), n, L, ex); });
  detail::PanelShape shape(K, n, 16);
  std::vector<float> panel(shape.size());
  double pk = best_ms([&] { detail::pack_panel<16>(x.data(), K, shape, 0, K, panel.data()); });
  double up = best_ms([&] { detail::unpack_panel<16>(panel.data(), shape, 0, M, y.data(), M); });
  double peak = peak::fma_gflops(threads, 0.3);
  std::printf("b=%d n=%ld thr=%d nnz=%ld: fwd %.3f ms (%.0f%%) dx %.3f ms (%.0f%%) dw %.3f ms (%.0f%%) pack %.3f unpack %.3f  peak %.0f\n", b, n, threads, nnz,
              f, flops / f / 1e6 / peak * 100, g, flops / g / 1e6 / peak * 100, w, flops / w / 1e6 / peak * 100, pk, up, peak);
}
