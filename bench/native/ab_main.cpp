// The driver of bench/native/ab_kernels.sh: rounds of (forward, input gradient, weight
// gradient), each pass timed on both variants in turn (the first one alternating), best of
// three calls per turn; prints each pass's median per variant, the median of the per-round
// ratios and the ratio of the two variants' fastest turns (old / new: above 1, new is faster).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "ab_buffers.h"

double run_old(ab::Buffers&, int pass, int reps);
double run_new(ab::Buffers&, int pass, int reps);

namespace {
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s ROUNDS BLOCK CHANNELS SIZE BATCH THREADS [STRIDE [DENSITY]]\n",
                 argv[0]);
    return 2;
  }
  const int rounds = std::max(1, std::atoi(argv[1]));
#ifdef AB_BF16
  constexpr bool bf16 = true;
#else
  constexpr bool bf16 = false;
#endif
  ab::Buffers buffers(argc - 1, argv + 1, bf16);
  const char* names[3] = {"fwd", "dx", "dw"};
  std::vector<double> times[2][3];
  for (int r = 0; r < rounds; ++r)
    for (int pass = 0; pass < 3; ++pass)
      for (int turn = 0; turn < 2; ++turn) {
        const int variant = (r + turn) % 2;
        times[variant][pass].push_back(variant ? run_new(buffers, pass, 3)
                                               : run_old(buffers, pass, 3));
      }
  std::printf("%s", buffers.linear ? "linear" : "conv");
  if (buffers.linear) std::printf(" -> %lld", static_cast<long long>(buffers.outputs));
  for (int i = 2; i < argc; ++i) std::printf(" %s", argv[i]);
  std::printf(" (ms old/new, median ratio, fastest ratio):");
  for (int pass = 0; pass < 3; ++pass) {
    std::vector<double> ratios;
    for (size_t i = 0; i < times[0][pass].size(); ++i)
      ratios.push_back(times[0][pass][i] / times[1][pass][i]);
    const double fastest_old = *std::min_element(times[0][pass].begin(), times[0][pass].end());
    const double fastest_new = *std::min_element(times[1][pass].begin(), times[1][pass].end());
    std::printf("  %s %.3f/%.3f %.3f %.3f", names[pass], median(times[0][pass]),
                median(times[1][pass]), median(ratios), fastest_old / fastest_new);
  }
  std::printf("\n");
}
