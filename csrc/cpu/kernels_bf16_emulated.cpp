// The bf16 linear passes with the pair dot product emulated: each pair widened to two floats
// (exact) and multiplied in with two fp32 multiply-adds. On CPUs without AVX512_BF16 or
// FEAT_BF16 it tests the packing and tiling the instruction's copies share; it is no faster
// than the fp32 kernels, so the ops use it only when asked to (select_bf16_kernels).
// Compiled for the build's baseline instruction set.
#include "isa_prelude.h"
#include "bf16_convert.h"

#define SPARCL_ISA_NS bf16emulated
#define SPARCL_BF16_NAME "emulated"
#define SPARCL_ISA_WIDTH 4
#define SPARCL_TILE_ROWS 6
#define SPARCL_MAX_VECTORS 2

#include "simd.h"

namespace sparcl::SPARCL_ISA_NS::pairdot {

constexpr int kMaxWidth = 8;

template <int W>
struct Dot {
  using Acc = simd::Vec<W>;
  struct Operand {
    Acc first, second;
  };
  struct Broadcast {
    float first, second;
  };
  static SPARCL_INLINE Acc zero() { return simd::zero<W>(); }
  static SPARCL_INLINE Acc load(const float* p) { return simd::load<W>(p); }
  static SPARCL_INLINE void store(float* p, const Acc& v) { simd::store<W>(p, v); }
  static SPARCL_INLINE void store_bf16(uint16_t* p, const Acc& v) {
    float lanes[W];
    simd::store<W>(lanes, v);
    simd::round_to_bf16<W>(lanes, p);
  }
  static SPARCL_INLINE Operand load_pairs(const uint32_t* pairs) {
    float first[W], second[W];
    for (int l = 0; l < W; ++l) {
      first[l] = bf16::to_float(static_cast<uint16_t>(pairs[l]));
      second[l] = bf16::to_float(static_cast<uint16_t>(pairs[l] >> 16));
    }
    return {simd::load<W>(first), simd::load<W>(second)};
  }
  static SPARCL_INLINE Broadcast broadcast(uint32_t pair) {
    return {bf16::to_float(static_cast<uint16_t>(pair)),
            bf16::to_float(static_cast<uint16_t>(pair >> 16))};
  }
  static SPARCL_INLINE Acc dot(const Acc& acc, const Broadcast& b, const Operand& op) {
    return simd::multiply_add<W>(b.second, op.second, simd::multiply_add<W>(b.first, op.first, acc));
  }
};

}  // namespace sparcl::SPARCL_ISA_NS::pairdot

#include "bf16_kernels.h"
