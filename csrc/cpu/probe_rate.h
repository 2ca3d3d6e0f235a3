// How the peak probes (peak.h for fp32, kernels_bf16.cpp for the bf16 dot product) time their
// multiply-add chains. Instruction-set neutral: compiled for the baseline (isa_prelude.h).
#pragma once

#include <algorithm>
#include <cstdint>

namespace sparcl {

// Chain steps per second on `threads` threads at their best over several short timed runs,
// about `seconds` in all after a warm-up that lets the cores reach their vector clock.
// `time_steps(threads, iterations)` returns the seconds the threads took for `iterations`
// steps each. The best run, not one long one: on a shared host a single 0.3 s run read 5-10 %
// below the best of ten 0.03 s runs whenever other tenants took cycles (Zen 5: 417 against
// 458, 441 against 466 GFLOP/s), while the passes a kernel table divides by the peak are
// medians of short calls, so tables had reported passes at 101-105 % of the probe.
inline double best_steps_per_second(double (*time_steps)(int, int64_t), int threads,
                                    double seconds) {
  constexpr int kRuns = 10;
  const double slice = seconds / kRuns;
  int64_t iterations = int64_t{1} << 12;
  time_steps(threads, iterations);  // warm-up
  while (time_steps(threads, iterations) < slice / 2 && iterations < (int64_t{1} << 40))
    iterations *= 2;
  double best = 0.0;
  for (int run = 0; run < kRuns; ++run)
    best = std::max(best, static_cast<double>(iterations) / time_steps(threads, iterations));
  return best;
}

}  // namespace sparcl
