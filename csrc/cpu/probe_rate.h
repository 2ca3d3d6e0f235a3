// How the peak probes (peak.h for fp32, kernels_bf16.cpp for the bf16 dot product) time their
// multiply-add chains. Instruction-set neutral: compiled for the baseline (isa_prelude.h).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <thread>
#include <vector>

#ifdef __linux__
#include <sched.h>
#endif

namespace sparcl {

// The probes' clock. Each thread's own CPU time where the threads have a CPU each: a shared
// host's other tenants once took half the machine for about a second, and a probe timed by
// the wall clock then read half the peak for a whole table (oneDNN's convolutions at 125 %
// of it); the time the OS gives to other work is not the arithmetic's limit. Wall time where
// the threads outnumber the CPUs this process may use (their own times would add up to more
// than the machine has), or where there is no per-thread clock.
class ProbeClock {
 public:
  explicit ProbeClock(int threads) : per_thread_(threads <= usable_cpus()) {}

  double now() const {
#ifdef CLOCK_THREAD_CPUTIME_ID
    if (per_thread_) {
      timespec t;
      if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t) == 0) return t.tv_sec + 1e-9 * t.tv_nsec;
    }
#endif
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  // The seconds of a run from the first `count` threads' own: their mean CPU time, or the
  // longest wall time (threads sharing a CPU take turns, and the run lasts as long as the
  // last of them).
  double of_run(const std::vector<double>& seconds, int count) const {
    double sum = 0.0, longest = 0.0;
    for (int t = 0; t < count; ++t) sum += seconds[t], longest = std::max(longest, seconds[t]);
    return per_thread_ ? sum / std::max(1, count) : longest;
  }

 private:
  static int usable_cpus() {
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
#endif
    return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }

  bool per_thread_;
};

// Chain steps per second on `threads` threads at their best over several short timed runs,
// about `seconds` in all after a warm-up that lets the cores reach their vector clock.
// `time_steps(threads, iterations)` returns the seconds (ProbeClock::of_run) the threads took
// for `iterations` steps each. The best run, not one long one: on a shared host a single
// 0.3 s run read 5-10 % below the best of ten 0.03 s runs whenever other tenants took cycles
// (Zen 5: 417 against 458, 441 against 466 GFLOP/s), while the passes a kernel table divides
// by the peak are medians of short calls, so tables had reported passes at 101-105 % of it.
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
