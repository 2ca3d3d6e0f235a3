// The instruction set's multiply-add peak, measured: the physical limit every kernel table is
// judged against (GFLOP/s on stored blocks / this), compiled once per instruction set.
//
// Each thread runs kChains independent dependency chains of acc = a + m * acc over vectors of
// the set's native width: enough chains to cover the multiply-add latency times the number of
// FMA ports of current cores (4 cycles x 2 ports = 8 in flight), few enough to stay in
// registers (AVX2 has 16 ymm: 12 there) and within SPARCL_UNROLL (16) so that GCC keeps the
// chains in registers.
#pragma once

#include "microkernels.h"

namespace sparcl::SPARCL_ISA_NS {
namespace peak {

constexpr int kChains = SPARCL_ISA_WIDTH >= 16 ? 16 : (SPARCL_ISA_WIDTH == 8 ? 12 : 10);

// Runs `iterations` steps of every chain; returns a value that depends on all of them so the
// compiler cannot drop the loop.
template <int W>
float chains(int64_t iterations, float seed) {
  using V = simd::Vec<W>;
  float lanes[W];
  for (int lane = 0; lane < W; ++lane) lanes[lane] = 1e-3f * seed;
  const V add = simd::load<W>(lanes);
  const float m = 1.0f - 1e-7f * seed;  // |m| < 1 and a small add: no overflow, no denormals
  V acc[kChains];
  SPARCL_UNROLL
  for (int c = 0; c < kChains; ++c) acc[c] = add;
  for (int64_t it = 0; it < iterations; ++it) {
    SPARCL_UNROLL
    for (int c = 0; c < kChains; ++c) acc[c] = simd::multiply_add<W>(m, acc[c], add);
  }
  float sum = 0.0f;
  for (int c = 0; c < kChains; ++c) {
    simd::store<W>(lanes, acc[c]);
    for (int lane = 0; lane < W; ++lane) sum += lanes[lane];
  }
  return sum;
}

// Seconds (ProbeClock::of_run) for each of `threads` threads to run
// `iterations` steps of its chains.
inline double time_chains(int threads, int64_t iterations) {
  const ProbeClock clock(threads);
  std::vector<double> seconds(threads, 0.0);
  int ran = 1;
  volatile float sink = 0.0f;
  detail::run_parallel(threads, [&](int t, int nt) {
    const double start = clock.now();
    const float value = chains<SPARCL_ISA_WIDTH>(iterations, 1.0f + static_cast<float>(t));
    seconds[t] = clock.now() - start;
    if (t == 0) ran = nt;
    if (value == 12345.0f) sink = value;  // never true; keeps the result alive
  });
  return clock.of_run(seconds, ran);
}

// GFLOP/s of the chains on `threads` threads together (2 flops per lane per multiply-add), at
// their best over about `seconds` (probe_rate.h).
inline double fma_gflops(int threads, double seconds) {
  const double steps = best_steps_per_second(&time_chains, threads, seconds);
  return 2.0 * SPARCL_ISA_WIDTH * kChains * threads * steps * 1e-9;
}

}  // namespace peak
}  // namespace sparcl::SPARCL_ISA_NS
