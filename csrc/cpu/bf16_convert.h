// bf16 <-> fp32 bit conversions shared by every bf16 kernel copy and the block packing.
// Included before any instruction-set pragma (see isa_prelude.h), so one baseline copy of
// these inline functions serves all.
#pragma once

#include <cstdint>
#include <cstring>

namespace sparcl::bf16 {

// The float whose top 16 bits are `bits` (exact: bf16 is fp32 with the low mantissa cut).
inline float to_float(uint16_t bits) {
  const uint32_t word = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &word, sizeof value);
  return value;
}

// `value` rounded to the nearest bf16, ties to even, as torch's .to(torch.bfloat16) rounds;
// NaNs stay NaNs (quiet).
inline uint16_t from_float(float value) {
  uint32_t word;
  std::memcpy(&word, &value, sizeof word);
  if ((word & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((word >> 16) | 0x40u);
  word += 0x7fffu + ((word >> 16) & 1u);
  return static_cast<uint16_t>(word >> 16);
}

// Two bf16 values as one 32-bit pair: `first` in the low half, the element the pair
// dot-product instructions multiply first (vdpbf16ps and bfdot lane order).
inline uint32_t pair(uint16_t first, uint16_t second) {
  return static_cast<uint32_t>(first) | (static_cast<uint32_t>(second) << 16);
}

// The pair starting at p (any 2-byte alignment).
inline uint32_t load_pair(const uint16_t* p) {
  uint32_t word;
  std::memcpy(&word, p, sizeof word);
  return word;
}

}  // namespace sparcl::bf16
