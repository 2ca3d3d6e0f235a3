// How fast one core runs a register tile's inner loop from L1, by how many 512-bit
// multiply-adds each broadcast operand feeds: the question behind the pair and quad tiles of
// microkernels.h (16- and 8-wide blocks on AVX-512). Three loops of 12 rows, every operand in
// L1, one thread:
//   one    12 x 1 vectors: a broadcast (folded into the FMA) per multiply-add, the old
//          one-vector tile of 16-wide blocks;
//   pairs  12 x 2 vectors from a 64-bit pair broadcast, rows p and p + 1 interleaved: the
//          pair tile (pairs::accumulate_tile);
//   two    12 x 2 vectors from a 32-bit broadcast: the 32-wide blocks' tile.
// GFLOP/s of each against the FMA peak of one core (peak.h).
//
//   g++ -O3 -std=c++20 -ffp-contract=fast -fopenmp -Icsrc/cpu \
//       bench/native/broadcast_rate.cpp -o build/broadcast_rate && build/broadcast_rate
#include "isa_prelude.h"
#include "harness_isa.h"
#include "microkernels.h"
#include "peak.h"

#include <chrono>
#include <cstdio>
#include <vector>

using namespace sparcl::SPARCL_ISA_NS;
using V = simd::Vec<16>;

namespace {

constexpr int kRows = 12;
constexpr int kSteps = 16;  // p per block, as a 16x16 block

// a: kRows rows of kSteps operands; b: kSteps rows of 32 floats (two vectors).
template <int Mode>
__attribute__((noinline)) float run(const float* a, const float* b, long iterations) {
  V acc[kRows][2] = {};
  for (long it = 0; it < iterations; ++it) {
    if constexpr (Mode == 0) {
      for (int p = 0; p < kSteps; ++p) {
        const V bv = simd::load<16>(b + p * 32);
        SPARCL_UNROLL
        for (int i = 0; i < kRows; ++i)
          acc[i][0] = simd::multiply_add<16>(a[i * kSteps + p], bv, acc[i][0]);
      }
    } else if constexpr (Mode == 1) {
      for (int p = 0; p < kSteps; p += 2) {
        const V r0 = simd::load<16>(b + p * 32), r1 = simd::load<16>(b + (p + 1) * 32);
        const V low = detail::pairs::interleave_low(r0, r1);
        const V high = detail::pairs::interleave_high(r0, r1);
        SPARCL_UNROLL
        for (int i = 0; i < kRows; ++i) {
          const V av = detail::pairs::broadcast_pair(a + i * kSteps + p);
          acc[i][0] = simd::multiply_add<16>(av, low, acc[i][0]);
          acc[i][1] = simd::multiply_add<16>(av, high, acc[i][1]);
        }
      }
    } else {
      for (int p = 0; p < kSteps; ++p) {
        const V b0 = simd::load<16>(b + p * 32), b1 = simd::load<16>(b + p * 32 + 16);
        SPARCL_UNROLL
        for (int i = 0; i < kRows; ++i) {
          const float av = a[i * kSteps + p];
          acc[i][0] = simd::multiply_add<16>(av, b0, acc[i][0]);
          acc[i][1] = simd::multiply_add<16>(av, b1, acc[i][1]);
        }
      }
    }
    asm volatile("" ::: "memory");  // one block per iteration, as the tiles' block loop
  }
  float sum = 0;
  for (int i = 0; i < kRows; ++i)
    for (int l = 0; l < 16; ++l) sum += acc[i][0][l] + acc[i][1][l];
  return sum;
}

template <int Mode>
double gflops(const float* a, const float* b) {
  constexpr long kIterations = 2000000;
  // the pair loop covers kSteps p with kSteps / 2 steps of two multiply-adds per row
  const double fmas_per_iteration = kRows * kSteps * (Mode == 2 ? 2 : 1);
  double best = 0;
  for (int repeat = 0; repeat < 5; ++repeat) {
    const auto t0 = std::chrono::steady_clock::now();
    const float sink = run<Mode>(a, b, kIterations);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (sink == 12345.0f) std::printf(" ");
    best = std::max(best, kIterations * fmas_per_iteration * 32 / s / 1e9);
  }
  return best;
}

}  // namespace

int main() {
  std::vector<float> a(kRows * kSteps, 1e-3f), b(kSteps * 32, 1e-3f);
  const double peak = peak::fma_gflops(1, 0.3);
  const double one = gflops<0>(a.data(), b.data()), pairs = gflops<1>(a.data(), b.data()),
               two = gflops<2>(a.data(), b.data());
  std::printf("one core, L1: 12x1 one broadcast per FMA %.0f GFLOP/s (%.0f%%), 12x2 pair "
              "broadcast %.0f (%.0f%%), 12x2 one broadcast per two FMAs %.0f (%.0f%%); "
              "peak %.0f\n",
              one, one / peak * 100, pairs, pairs / peak * 100, two, two / peak * 100, peak);
}
