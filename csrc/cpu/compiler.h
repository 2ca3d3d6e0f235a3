// Compiler attributes shared by the baseline helpers (conv_pixels.h) and every instruction
// set's copy of the kernels (simd.h).
#pragma once

// Inlined whatever the optimiser's budget says. Register-tile helpers need it (the tile's
// accumulators must stay in registers, and where GCC inlined them on its own the tile's
// inner loop came out slower), and so do prefetch helpers: GCC judges a function that only
// prefetches free of side effects and deletes calls to it that it did not inline.
#if defined(__GNUC__) || defined(__clang__)
#define SPARCL_INLINE inline __attribute__((always_inline))
#else
#define SPARCL_INLINE inline
#endif

// Makes the compiler treat `p` as computed at run time here, so that a tile's loads at fixed
// offsets from it use immediate displacements: otherwise GCC may keep base + offset_i for
// each of a tile's rows as loop invariants, more than the free registers hold, and reload
// them from the stack in the inner loop (the conv weight gradient's 12-row tile did, 8 loads
// per pixel).
template <typename T>
inline T* opaque_pointer(T* p) {
#if defined(__GNUC__) || defined(__clang__)
  __asm__("" : "+r"(p));
#endif
  return p;
}
