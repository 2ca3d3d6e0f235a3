// One build of the CPU kernels for bench/native/ab_kernels.sh, compiled once per variant with
// its own csrc/cpu first on the include path and its own namespace (VARIANT_NS), behind one
// entry point (VARIANT_RUN). Both variants time the same buffers (ab_main.cpp owns them), so
// that only the code differs: timed in separate processes, the buffers' placement alone moved
// the same kernels by up to 15 %.
//
// -DAB_BF16 builds the AVX512_BF16 kernels (the variant's kernels_bf16_avx512.cpp), -DAB_AVX2
// the fp32 AVX2 kernels, neither the fp32 AVX-512 kernels.
#include "isa_prelude.h"
#define SPARCL_ISA_NS VARIANT_NS
#ifdef AB_BF16
#include "kernels_bf16_avx512.cpp"
#elif defined(AB_AVX2)
#define SPARCL_ISA_WIDTH 8
#define SPARCL_TILE_ROWS 6
#define SPARCL_MAX_VECTORS 2
#pragma GCC target("avx2,fma")
#else
#define SPARCL_ISA_WIDTH 16
#define SPARCL_TILE_ROWS 12
#define SPARCL_MAX_VECTORS 2
#pragma GCC target("avx512f,avx512vl,avx2,fma")
#endif
#ifndef AB_BF16
#include "conv_kernels.h"
#include "linear_kernels.h"
#endif
#include "ab_buffers.h"
#include "harness.h"

#include <algorithm>
#include <chrono>

// The fastest of `reps` calls of pass `pass` (0 forward, 1 input gradient, 2 weight
// gradient) on `b`, in milliseconds.
double VARIANT_RUN(ab::Buffers& b, int pass, int reps) {
  const harness::ConvCase& c = b.c;
  double best = 1e9;
  for (int r = 0; r < reps; ++r) {
    harness::evict_caches();
    const auto t0 = std::chrono::steady_clock::now();
#ifdef AB_BF16
    namespace conv = sparcl::VARIANT_NS::bf16_conv;
    namespace linear = sparcl::VARIANT_NS::bf16_linear;
    const auto* packed = reinterpret_cast<const uint32_t*>(b.w.data());
    const auto* x = reinterpret_cast<const uint16_t*>(b.x.data());
    auto* y = reinterpret_cast<uint16_t*>(b.y.data());
    auto* dx = reinterpret_cast<uint16_t*>(b.dx.data());
    float* dw = b.dw.data();
    if (b.linear) {
      if (pass == 0) linear::forward(x, packed, nullptr, y, b.n, b.L, c.threads);
      if (pass == 1) linear::grad_input(y, packed, dx, b.n, b.L, c.threads);
      if (pass == 2) linear::grad_weight(y, x, nullptr, dw, b.n, b.L, c.threads);
    } else {
      if (pass == 0) conv::forward(x, packed, nullptr, y, b.L, b.g, c.threads);
      if (pass == 1) conv::grad_input(y, packed, dx, b.L, b.g, c.threads);
      if (pass == 2) conv::grad_weight(y, x, nullptr, dw, b.L, b.g, c.threads);
    }
#else
    namespace conv = sparcl::VARIANT_NS::conv;
    namespace linear = sparcl::VARIANT_NS::linear;
    const sparcl::Execution ex{c.threads, SPARCL_ISA_WIDTH};
    const float *x = b.x.data(), *w = b.w.data(), *wt = b.wt.data();
    float* y = b.y.data();
    float* dx = b.dx.data();
    float* dw = b.dw.data();
    if (b.linear) {
      if (pass == 0) linear::forward<float>(x, w, wt, nullptr, y, b.n, b.L, ex);
      if (pass == 1) linear::grad_input<float>(y, w, dx, b.n, b.L, ex);
      if (pass == 2) linear::grad_weight<float>(y, x, nullptr, dw, b.n, b.L, ex);
    } else {
      if (pass == 0) conv::forward<float>(x, w, wt, nullptr, y, b.L, b.g, ex);
      if (pass == 1) conv::grad_input<float>(y, w, dx, b.L, b.g, ex);
      if (pass == 2) conv::grad_weight<float>(y, x, nullptr, dw, b.L, b.g, ex);
    }
#endif
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  return best;
}
