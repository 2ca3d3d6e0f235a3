// Fixed-width float vectors for the micro-kernels: one source for every instruction set.
//
// With GCC or Clang the vectors are the compilers' generic vector extensions, which they lower
// to the instruction set the enclosing function is compiled for (SSE2, AVX2+FMA, AVX-512F,
// NEON) and split when a vector is wider than the hardware's. Other compilers get a plain
// struct of lanes that the optimiser may vectorise. Every operation the kernels use is here.
// Compiled once per instruction set, inside that set's namespace (see isa_kernels.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

#include "bf16_convert.h"
#include "compiler.h"

#ifndef SPARCL_ISA_NS
#error "simd.h is compiled once per instruction set: include it through isa_kernels.h"
#endif

#if (defined(__GNUC__) || defined(__clang__)) && !defined(SPARCL_PORTABLE_VECTORS)
#define SPARCL_VECTOR_EXTENSIONS 1
// Vectors wider than the target's registers change the calling convention of non-inlined
// functions; every function taking vectors here is inlined, so the ABI note does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
#else
#define SPARCL_VECTOR_EXTENSIONS 0
#endif

namespace sparcl::SPARCL_ISA_NS::simd {

#if SPARCL_VECTOR_EXTENSIONS

template <int W>
struct VectorType;
// aligned(4) and may_alias: a vector can be read from and written to any float address, as
// the unaligned intrinsic types (__m256_u) are declared.
template <>
struct VectorType<4> {
  typedef float type __attribute__((vector_size(16), aligned(4), may_alias));
};
template <>
struct VectorType<8> {
  typedef float type __attribute__((vector_size(32), aligned(4), may_alias));
};
template <>
struct VectorType<16> {
  typedef float type __attribute__((vector_size(64), aligned(4), may_alias));
};

template <int W>
using Vec = typename VectorType<W>::type;

template <int W>
inline Vec<W> zero() {
  return Vec<W>{};
}

template <int W>
inline Vec<W> load(const float* p) {
  return *reinterpret_cast<const Vec<W>*>(p);
}

template <int W>
inline void store(float* p, const Vec<W>& v) {
  *reinterpret_cast<Vec<W>*>(p) = v;
}

// acc + a * b with a broadcast; contracted to one fused multiply-add where the target has one
// (the build passes -ffp-contract=fast).
template <int W>
inline Vec<W> multiply_add(float a, const Vec<W>& b, const Vec<W>& acc) {
  return acc + a * b;
}

// acc + a * b lane by lane (the dot-product tiles of the weight gradient on panels).
template <int W>
inline Vec<W> multiply_add(const Vec<W>& a, const Vec<W>& b, const Vec<W>& acc) {
  return acc + a * b;
}

template <int W>
inline Vec<W> add(const Vec<W>& a, const Vec<W>& b) {
  return a + b;
}

// The scalar a in every lane.
template <int W>
inline Vec<W> broadcast(float a) {
  return Vec<W>{} + a;
}

namespace shuffle_detail {
// Level H of a block transpose of rows a (row i) and b (row i + H): the lanes of a whose bit
// H is set trade places with the lanes of b whose bit H is clear.
template <int W, int H, size_t... L>
inline Vec<W> low_half(const Vec<W>& a, const Vec<W>& b, std::index_sequence<L...>) {
  return __builtin_shufflevector(a, b, ((L & H) == 0 ? int(L) : int(L) - H + W)...);
}
template <int W, int H, size_t... L>
inline Vec<W> high_half(const Vec<W>& a, const Vec<W>& b, std::index_sequence<L...>) {
  return __builtin_shufflevector(a, b, ((L & H) == 0 ? int(L) + H : int(L) + W)...);
}
template <int W, int H>
inline void transpose_levels(Vec<W> (&rows)[W]) {
  if constexpr (H >= 1) {
#pragma GCC unroll 16
    for (int i = 0; i < W; ++i) {
      if (i & H) continue;
      const Vec<W> a = rows[i], b = rows[i + H];
      rows[i] = low_half<W, H>(a, b, std::make_index_sequence<W>{});
      rows[i + H] = high_half<W, H>(a, b, std::make_index_sequence<W>{});
    }
    transpose_levels<W, H / 2>(rows);
  }
}
}  // namespace shuffle_detail

// Transposes the W x W matrix whose rows are rows[0 .. W), in place: log2(W) levels of W
// two-vector shuffles, the count of the hand-written SSE/AVX transposes.
template <int W>
inline void transpose(Vec<W> (&rows)[W]) {
  shuffle_detail::transpose_levels<W, W / 2>(rows);
}

// W floats rounded to bf16 exactly as bf16::from_float rounds them (ties to even, NaNs kept
// quiet), in integer lanes: the bf16 tiles' epilogue, which would otherwise cost as much as
// a block's products with one scalar rounding per output.
// Integer lanes (one specialisation per width: GCC drops a vector_size that depends on a
// template parameter).
template <int W>
struct BitLanes;
template <>
struct BitLanes<4> {
  typedef uint32_t words __attribute__((vector_size(16)));
  typedef uint16_t halves __attribute__((vector_size(8)));
};
template <>
struct BitLanes<8> {
  typedef uint32_t words __attribute__((vector_size(32)));
  typedef uint16_t halves __attribute__((vector_size(16)));
};
template <>
struct BitLanes<16> {
  typedef uint32_t words __attribute__((vector_size(64)));
  typedef uint16_t halves __attribute__((vector_size(32)));
};

template <int W>
inline void round_to_bf16(const float* in, uint16_t* out) {
  using Words = typename BitLanes<W>::words;
  using Halves = typename BitLanes<W>::halves;
  Words word;
  std::memcpy(&word, in, sizeof word);
  const Words nan = reinterpret_cast<Words>((word & 0x7fffffffu) > 0x7f800000u);
  const Words rounded = (word + 0x7fffu + ((word >> 16) & 1u)) >> 16;
  const Words quiet = (word >> 16) | 0x40u;
  const Halves half = __builtin_convertvector((quiet & nan) | (rounded & ~nan), Halves);
  std::memcpy(out, &half, sizeof half);
}

#else  // portable lanes

template <int W>
struct Vec {
  float lane[W];
};

template <int W>
inline Vec<W> zero() {
  Vec<W> v;
  for (int i = 0; i < W; ++i) v.lane[i] = 0.0f;
  return v;
}

template <int W>
inline Vec<W> load(const float* p) {
  Vec<W> v;
  for (int i = 0; i < W; ++i) v.lane[i] = p[i];
  return v;
}

template <int W>
inline void store(float* p, const Vec<W>& v) {
  for (int i = 0; i < W; ++i) p[i] = v.lane[i];
}

template <int W>
inline Vec<W> multiply_add(float a, const Vec<W>& b, const Vec<W>& acc) {
  Vec<W> r;
  for (int i = 0; i < W; ++i) r.lane[i] = acc.lane[i] + a * b.lane[i];
  return r;
}

template <int W>
inline Vec<W> multiply_add(const Vec<W>& a, const Vec<W>& b, const Vec<W>& acc) {
  Vec<W> r;
  for (int i = 0; i < W; ++i) r.lane[i] = acc.lane[i] + a.lane[i] * b.lane[i];
  return r;
}

template <int W>
inline Vec<W> add(const Vec<W>& a, const Vec<W>& b) {
  Vec<W> r;
  for (int i = 0; i < W; ++i) r.lane[i] = a.lane[i] + b.lane[i];
  return r;
}

template <int W>
inline Vec<W> broadcast(float a) {
  Vec<W> v;
  for (int i = 0; i < W; ++i) v.lane[i] = a;
  return v;
}

template <int W>
inline void transpose(Vec<W> (&rows)[W]) {
  for (int i = 0; i < W; ++i)
    for (int j = i + 1; j < W; ++j) std::swap(rows[i].lane[j], rows[j].lane[i]);
}

template <int W>
inline void round_to_bf16(const float* in, uint16_t* out) {
  for (int i = 0; i < W; ++i) out[i] = bf16::from_float(in[i]);
}

#endif

}  // namespace sparcl::SPARCL_ISA_NS::simd
