// The bf16 linear passes on aarch64 FEAT_BF16: bfdot multiplies four bf16 pairs into the fp32
// lanes of a q register. Compiled for armv8.2-a+bf16 only; kernels_bf16.cpp runs it only
// where the kernel reports HWCAP2_BF16, so the NEON build still runs on cores without it.
#include "isa_prelude.h"
#include "bf16_convert.h"

#if defined(__aarch64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#include <arm_neon.h>

#define SPARCL_ISA_NS bfdot
#define SPARCL_BF16_NAME "bfdot"
#define SPARCL_ISA_WIDTH 4
#define SPARCL_TILE_ROWS 5  // 32 vector registers: 5 x 4 accumulators, as the NEON fp32 tile
#define SPARCL_MAX_VECTORS 4

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("arch=armv8.2-a+bf16"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+bf16")
#endif

#include "simd.h"

namespace sparcl::SPARCL_ISA_NS::pairdot {

constexpr int kMaxWidth = 4;

template <int W>
struct Dot {
  static_assert(W == 4, "bfdot tiles are one q register (4 fp32 lanes) wide");
  using Acc = float32x4_t;
  using Operand = bfloat16x8_t;
  using Broadcast = bfloat16x8_t;
  static Acc zero() { return vdupq_n_f32(0.0f); }
  static Acc load(const float* p) { return vld1q_f32(p); }
  static void store(float* p, Acc v) { vst1q_f32(p, v); }
  static void store_bf16(uint16_t* p, Acc v) {
    vst1_bf16(reinterpret_cast<bfloat16_t*>(p), vcvt_bf16_f32(v));
  }
  static Operand load_pairs(const uint32_t* p) { return vreinterpretq_bf16_u32(vld1q_u32(p)); }
  static Broadcast broadcast(uint32_t pair) { return vreinterpretq_bf16_u32(vdupq_n_u32(pair)); }
  static Acc dot(Acc acc, Broadcast b, Operand op) { return vbfdotq_f32(acc, b, op); }
};

}  // namespace sparcl::SPARCL_ISA_NS::pairdot

#include "bf16_kernels.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
