// The kernels for x86-64 AVX-512F (Skylake-SP and later, Zen 4): 16-float vectors, 12-row tiles.
// Compiled for that instruction set only; dispatch.cpp runs them only where the CPU has it.
#include "isa_prelude.h"

#if SPARCL_X86_DISPATCH
#define SPARCL_ISA_NS avx512
#define SPARCL_ISA_WIDTH 16
#define SPARCL_TILE_ROWS 12
#define SPARCL_MAX_VECTORS 2

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#endif

#include "isa_kernels.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // SPARCL_X86_DISPATCH
