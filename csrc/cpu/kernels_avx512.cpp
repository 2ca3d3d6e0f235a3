// The kernels for x86-64 AVX-512F + VL (Skylake-SP and later, Zen 4): 16-float vectors, 12-row
// tiles. VL gives the half-width (8-float) tiles of 8-wide blocks all 32 registers: without
// it the 8 x 3 weight-gradient tile of 8x8 blocks spilled and ran 1.2-1.6x slower than the
// AVX2 copy. Compiled for that instruction set only; dispatch.cpp runs it only where the CPU
// has both.
#include "isa_prelude.h"

#if SPARCL_X86_DISPATCH
#define SPARCL_ISA_NS avx512
#define SPARCL_ISA_WIDTH 16
#define SPARCL_TILE_ROWS 12
#define SPARCL_MAX_VECTORS 2

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma")
#endif

#include "isa_kernels.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // SPARCL_X86_DISPATCH
