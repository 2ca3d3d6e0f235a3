// The bf16 linear passes on x86-64 AVX512_BF16: vdpbf16ps multiplies 16 (zmm), 8 or 4 (ymm,
// xmm: AVX-512VL) bf16 pairs into fp32 lanes. Compiled for that instruction set only, in its
// own namespace; kernels_bf16.cpp runs it only where the CPU reports avx512bf16.
#include "isa_prelude.h"
#include "bf16_convert.h"

#if SPARCL_X86_DISPATCH
#include <immintrin.h>

#ifndef SPARCL_ISA_NS  // bench/native/ab_kernels.sh builds two copies side by side
#define SPARCL_ISA_NS avx512bf16
#endif
#define SPARCL_BF16_NAME "avx512bf16"
#define SPARCL_ISA_WIDTH 16
#define SPARCL_TILE_ROWS 12  // 32 zmm registers: 12 x 2 accumulators, as the fp32 AVX-512 tile
#define SPARCL_MAX_VECTORS 2

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512bf16,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512bf16,avx2,fma")
#endif

#include "simd.h"

namespace sparcl::SPARCL_ISA_NS::pairdot {

constexpr int kMaxWidth = 16;

template <int W>
struct Dot;

// store_bf16 rounds with vcvtneps2bf16: to nearest, ties to even, as bf16::from_float, but
// fp32 denormals (below 2^-126) become zero (torch's own bf16 kernels use the same
// instruction); one instruction where the lane arithmetic of simd::round_to_bf16 took about
// fourteen, in the epilogue of every tile.
template <>
struct Dot<16> {
  using Acc = __m512;
  using Operand = __m512bh;
  using Broadcast = __m512bh;
  static Acc zero() { return _mm512_setzero_ps(); }
  static Acc load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, Acc v) { _mm512_storeu_ps(p, v); }
  static void store_bf16(uint16_t* p, Acc v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(v));
  }
  static Operand load_pairs(const uint32_t* p) { return (__m512bh)_mm512_loadu_si512(p); }
  static Broadcast broadcast(uint32_t pair) {
    return (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
  }
  static Acc dot(Acc acc, Broadcast b, Operand op) { return _mm512_dpbf16_ps(acc, b, op); }
  // The quad tile's operations (bf16_linear::QuadGroups): two pairs in every lane pair, the
  // rows p and p + 1 of packed pairs interleaved lane by lane in each 128-bit lane, and the
  // lane pairs' sums in column order.
  static Broadcast broadcast_quad(uint64_t quad) {
    return (__m512bh)_mm512_set1_epi64(static_cast<long long>(quad));
  }
  // (vector shuffles: GCC 12's _mm512_unpacklo_epi32 trips -Wmaybe-uninitialized)
  static Operand interleave_low(Operand r0, Operand r1) {
    return (__m512bh)__builtin_shufflevector((__v16si)r0, (__v16si)r1, 0, 16, 1, 17, 4, 20, 5,
                                             21, 8, 24, 9, 25, 12, 28, 13, 29);
  }
  static Operand interleave_high(Operand r0, Operand r1) {
    return (__m512bh)__builtin_shufflevector((__v16si)r0, (__v16si)r1, 2, 18, 3, 19, 6, 22, 7,
                                             23, 10, 26, 11, 27, 14, 30, 15, 31);
  }
  static Acc fold_pairs(Acc low, Acc high) {
    return _mm512_add_ps(__builtin_shufflevector(low, high, 0, 2, 16, 18, 4, 6, 20, 22, 8, 10,
                                                 24, 26, 12, 14, 28, 30),
                         __builtin_shufflevector(low, high, 1, 3, 17, 19, 5, 7, 21, 23, 9, 11,
                                                 25, 27, 13, 15, 29, 31));
  }
  static Acc add(Acc a, Acc b) { return _mm512_add_ps(a, b); }
  // The octet tile's operations (bf16_linear::OctetGroups, 8-wide blocks): four pairs in every
  // 128-bit lane, four pair rows of an 8-column block transposed (lane 4c + g: pair row
  // p + g, column c; columns 0-3 from `low`, 4-7 from `high`) and the lane quads' sums.
  static Broadcast broadcast_octet(const uint16_t* a) {
    return (__m512bh)_mm512_maskz_broadcast_i32x4(
        0xffff, _mm_loadu_si128(reinterpret_cast<const __m128i*>(a)));
  }
  static Operand transpose_low(const uint32_t* rows) {
    const __m512i r01 = _mm512_loadu_si512(rows), r23 = _mm512_loadu_si512(rows + 16);
    return (__m512bh)__builtin_shufflevector((__v16si)r01, (__v16si)r23, 0, 8, 16, 24, 1, 9,
                                             17, 25, 2, 10, 18, 26, 3, 11, 19, 27);
  }
  static Operand transpose_high(const uint32_t* rows) {
    const __m512i r01 = _mm512_loadu_si512(rows), r23 = _mm512_loadu_si512(rows + 16);
    return (__m512bh)__builtin_shufflevector((__v16si)r01, (__v16si)r23, 4, 12, 20, 28, 5, 13,
                                             21, 29, 6, 14, 22, 30, 7, 15, 23, 31);
  }
  // The weight gradient's block pairs (bf16_linear::pair_outer_run_pairs_tile): two 8-pair
  // operands or 8-float results in the halves of one vector.
  static Operand join_pairs(const uint32_t* low, const uint32_t* high) {
    const auto lo = (__v8si)_mm256_loadu_si256(reinterpret_cast<const __m256i*>(low));
    const auto hi = (__v8si)_mm256_loadu_si256(reinterpret_cast<const __m256i*>(high));
    return (__m512bh)__builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                             13, 14, 15);
  }
  static Acc load_halves(const float* low, const float* high) {
    return __builtin_shufflevector(_mm256_loadu_ps(low), _mm256_loadu_ps(high), 0, 1, 2, 3, 4,
                                   5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  }
  static void store_low(float* low, Acc v) {
    _mm256_storeu_ps(low, __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7));
  }
  static void store_high(float* high, Acc v) {
    _mm256_storeu_ps(high, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
  }
  static __m256 fold_quads(Acc low, Acc high) {
    const __m512 halves = _mm512_add_ps(
        __builtin_shufflevector(low, high, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                28, 30),
        __builtin_shufflevector(low, high, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27,
                                29, 31));
    return _mm256_add_ps(__builtin_shufflevector(halves, halves, 0, 2, 4, 6, 8, 10, 12, 14),
                         __builtin_shufflevector(halves, halves, 1, 3, 5, 7, 9, 11, 13, 15));
  }
};

template <>
struct Dot<8> {
  using Acc = __m256;
  using Operand = __m256bh;
  using Broadcast = __m256bh;
  static Acc zero() { return _mm256_setzero_ps(); }
  static Acc load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, Acc v) { _mm256_storeu_ps(p, v); }
  static void store_bf16(uint16_t* p, Acc v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), (__m128i)_mm256_cvtneps_pbh(v));
  }
  static Operand load_pairs(const uint32_t* p) {
    return (__m256bh)_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static Broadcast broadcast(uint32_t pair) {
    return (__m256bh)_mm256_set1_epi32(static_cast<int>(pair));
  }
  static Acc dot(Acc acc, Broadcast b, Operand op) { return _mm256_dpbf16_ps(acc, b, op); }
  static Acc add(Acc a, Acc b) { return _mm256_add_ps(a, b); }
};

template <>
struct Dot<4> {
  using Acc = __m128;
  using Operand = __m128bh;
  using Broadcast = __m128bh;
  static Acc zero() { return _mm_setzero_ps(); }
  static Acc load(const float* p) { return _mm_loadu_ps(p); }
  static void store(float* p, Acc v) { _mm_storeu_ps(p, v); }
  static void store_bf16(uint16_t* p, Acc v) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), (__m128i)_mm_cvtneps_pbh(v));
  }
  static Operand load_pairs(const uint32_t* p) {
    return (__m128bh)_mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  }
  static Broadcast broadcast(uint32_t pair) {
    return (__m128bh)_mm_set1_epi32(static_cast<int>(pair));
  }
  static Acc dot(Acc acc, Broadcast b, Operand op) { return _mm_dpbf16_ps(acc, b, op); }
};

}  // namespace sparcl::SPARCL_ISA_NS::pairdot

#include "bf16_kernels.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // SPARCL_X86_DISPATCH
