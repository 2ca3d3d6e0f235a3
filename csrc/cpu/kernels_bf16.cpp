// The bf16 pair dot-product instructions: run-time detection, the peak probe that bf16
// kernel tables are judged against (beside the fp32 one, peak.h), the choice between the
// instruction's kernels and the emulated ones (bf16_kernels.h), block packing and the bf16
// entry points.
//
// x86-64: AVX512_BF16's vdpbf16ps (Zen 4/5, Cooper Lake, Sapphire Rapids and later); aarch64:
// FEAT_BF16's bfdot (Neoverse V1/V2/N2, Graviton 3/4, Apple M2, Cortex-A710 and later). Each
// fp32 lane adds two bf16 products per instruction, so the peak is twice the fp32 FMA rate
// where the instruction issues at the FMA's rate. The functions using them carry a target
// attribute, so the rest of the build still runs on cores without them.
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bf16_convert.h"
#include "block_sparse.h"
#include "block_sparse_conv.h"
#include "kernel_table.h"
#include "probe_rate.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SPARCL_BF16_X86 1
#elif defined(__aarch64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#include <arm_neon.h>
#include <sys/auxv.h>
#define SPARCL_BF16_ARM 1
#ifndef HWCAP2_BF16
#define HWCAP2_BF16 (1 << 14)  // linux/arch/arm64/include/uapi/asm/hwcap.h
#endif
#endif

namespace sparcl {
namespace {

// Independent accumulator chains per thread: enough to cover the instruction's latency times
// its issue ports on current cores (5-6 cycles x 2), few enough to stay in 32 registers.
constexpr int kChains = 16;
// bf16 bits of 2^-10: products of 2^-20 keep every accumulator far from overflow and denormals.
constexpr uint16_t kSmallBf16 = 0x3A80;

#if SPARCL_BF16_X86
}  // namespace

// Its own namespace: the functions compiled for AVX512_BF16 run only where the CPU reports
// it, which tests/test_cpu_backend.py checks by name in the binary.
namespace avx512bf16 {
__attribute__((target("avx512f,avx512bf16"))) float dot_chains(int64_t iterations) {
  const __m512bh a = (__m512bh)_mm512_set1_epi16(static_cast<short>(kSmallBf16));
  __m512 acc[kChains];
#pragma GCC unroll 16
  for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(static_cast<float>(c));
  for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_dpbf16_ps(acc[c], a, a);
  }
  __m512 sum = acc[0];
  for (int c = 1; c < kChains; ++c) sum = _mm512_add_ps(sum, acc[c]);
  float lanes[16];
  _mm512_storeu_ps(lanes, sum);
  float total = 0.0f;
  for (float lane : lanes) total += lane;
  return total;
}
}  // namespace avx512bf16

namespace {
using avx512bf16::dot_chains;
constexpr int kLanes = 16;

bool has_dot_instruction() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
}
constexpr const char* kInstruction = "avx512bf16";
#elif SPARCL_BF16_ARM
__attribute__((target("arch=armv8.2-a+bf16"))) float dot_chains(int64_t iterations) {
  const bfloat16x8_t a = vreinterpretq_bf16_u16(vdupq_n_u16(kSmallBf16));
  float32x4_t acc[kChains];
#pragma GCC unroll 16
  for (int c = 0; c < kChains; ++c) acc[c] = vdupq_n_f32(static_cast<float>(c));
  for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = vbfdotq_f32(acc[c], a, a);
  }
  float32x4_t sum = acc[0];
  for (int c = 1; c < kChains; ++c) sum = vaddq_f32(sum, acc[c]);
  return vaddvq_f32(sum);
}
constexpr int kLanes = 4;

bool has_dot_instruction() { return (getauxval(AT_HWCAP2) & HWCAP2_BF16) != 0; }
constexpr const char* kInstruction = "bfdot";
#else
float dot_chains(int64_t) { return 0.0f; }
constexpr int kLanes = 0;
bool has_dot_instruction() { return false; }
constexpr const char* kInstruction = "";
#endif

// Seconds (ProbeClock::of_run) for each of `threads` threads to run
// `iterations` steps of its chains.
double time_chains(int threads, int64_t iterations) {
  const ProbeClock clock(threads);
  std::vector<double> seconds(threads, 0.0);
  int ran = 1;
  volatile float sink = 0.0f;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num();
    if (t == 0) ran = omp_get_num_threads();
#else
    const int t = 0;
#endif
    const double start = clock.now();
    const float value = dot_chains(iterations);
    seconds[t] = clock.now() - start;
    if (value == 12345.0f) sink = value;  // never true; keeps the result alive
  }
  const double elapsed = clock.of_run(seconds, ran);
  return sink == 12345.0f ? elapsed + 1.0 : elapsed;
}

// The instruction's kernel table, or null where this build has none.
const Bf16KernelTable* native_table() {
#if SPARCL_BF16_X86
  return avx512bf16::bf16_kernel_table();
#elif SPARCL_BF16_ARM
  return bfdot::bf16_kernel_table();
#else
  return nullptr;
#endif
}

// The instruction's table where the CPU has it; null (none chosen) elsewhere.
const Bf16KernelTable* default_table() {
  return has_dot_instruction() ? native_table() : nullptr;
}

std::mutex table_mutex;
bool chosen = false;
const Bf16KernelTable* chosen_table = nullptr;

const Bf16KernelTable* chosen_kernels() {
  std::lock_guard<std::mutex> lock(table_mutex);
  if (!chosen) {
    chosen_table = default_table();
    chosen = true;
  }
  return chosen_table;
}

// The kernels the entry points run: the chosen ones, else the emulation (always correct).
const Bf16KernelTable* table() {
  const Bf16KernelTable* kernels = chosen_kernels();
  return kernels ? kernels : bf16emulated::bf16_kernel_table();
}

const uint32_t* as_pairs(const uint16_t* packed) {
  return reinterpret_cast<const uint32_t*>(packed);
}

}  // namespace

std::string bf16_dot_instruction() { return has_dot_instruction() ? kInstruction : ""; }

bool bf16_blocks_fit(int64_t bm, int64_t bk) { return bm % 4 == 0 && bk % 4 == 0; }

std::string bf16_kernels() {
  const Bf16KernelTable* kernels = chosen_kernels();
  return kernels ? kernels->name : "";
}

std::string select_bf16_kernels(const std::string& name) {
  const Bf16KernelTable* next = nullptr;
  if (name.empty()) {
    next = default_table();
  } else if (name == "emulated") {
    next = bf16emulated::bf16_kernel_table();
  } else if (name == "native") {
    if (!has_dot_instruction())
      return "this CPU has no bf16 dot-product instruction (x86-64 AVX512_BF16 or aarch64 "
             "FEAT_BF16)";
    next = native_table();
  } else {
    return "bf16 kernels must be 'native', 'emulated' or '' (the best), got '" + name + "'";
  }
  std::lock_guard<std::mutex> lock(table_mutex);
  chosen_table = next;
  chosen = true;
  return "";
}

void bf16_pack_blocks(const float* values, uint16_t* packed_forward,
                      uint16_t* packed_grad_input, int64_t nnz, int64_t bm, int64_t bk,
                      int threads) {
  table()->pack_blocks(values, packed_forward, packed_grad_input, nnz, bm, bk, threads);
}

void block_sparse_forward_bf16(const uint16_t* x, const uint16_t* packed_forward,
                               const float* bias, uint16_t* y, int64_t n,
                               const BlockLayoutView& layout, int threads) {
  table()->forward(x, as_pairs(packed_forward), bias, y, n, layout, threads);
}

void block_sparse_grad_input_bf16(const uint16_t* grad_out, const uint16_t* packed_grad_input,
                                  uint16_t* grad_x, int64_t n, const BlockLayoutView& layout,
                                  int threads) {
  table()->grad_input(grad_out, as_pairs(packed_grad_input), grad_x, n, layout, threads);
}

void block_sparse_grad_weight_bf16(const uint16_t* grad_out, const uint16_t* x,
                                   const bool* grad_block_mask, float* grad_values, int64_t n,
                                   const BlockLayoutView& layout, int threads) {
  table()->grad_weight(grad_out, x, grad_block_mask, grad_values, n, layout, threads);
}

void block_sparse_conv_forward_bf16(const uint16_t* x, const uint16_t* packed_forward,
                                    const float* bias, uint16_t* y, const BlockLayoutView& layout,
                                    const ConvGeometry& geometry, int threads) {
  table()->conv_forward(x, as_pairs(packed_forward), bias, y, layout, geometry, threads);
}

void block_sparse_conv_grad_input_bf16(const uint16_t* grad_out, const uint16_t* packed_grad_input,
                                       uint16_t* grad_x, const BlockLayoutView& layout,
                                       const ConvGeometry& geometry, int threads) {
  table()->conv_grad_input(grad_out, as_pairs(packed_grad_input), grad_x, layout, geometry,
                           threads);
}

void block_sparse_conv_grad_weight_bf16(const uint16_t* grad_out, const uint16_t* x,
                                        const bool* grad_block_mask, float* grad_values,
                                        const BlockLayoutView& layout,
                                        const ConvGeometry& geometry, int threads) {
  table()->conv_grad_weight(grad_out, x, grad_block_mask, grad_values, layout, geometry,
                            threads);
}

double bf16_dot_peak_gflops(int threads, double seconds) {
  if (!has_dot_instruction()) return 0.0;
#ifndef _OPENMP
  threads = 1;
#endif
  const double steps = best_steps_per_second(&time_chains, threads, seconds);
  // Two multiply-adds (four flops) per fp32 lane per instruction.
  return 4.0 * kLanes * kChains * threads * steps * 1e-9;
}

}  // namespace sparcl
