// The instruction set a native harness compiles the fp32 kernels for: the AVX-512 copy, or
// the AVX2 copy with -DHARNESS_AVX2 (each as csrc/cpu/kernels_<isa>.cpp sets it up). Include
// after isa_prelude.h and before the kernel headers.
#pragma once

#ifdef HARNESS_AVX2
#define SPARCL_ISA_NS avx2
#define SPARCL_ISA_WIDTH 8
#define SPARCL_TILE_ROWS 6
#define SPARCL_MAX_VECTORS 2
#pragma GCC target("avx2,fma")
#else
#define SPARCL_ISA_NS avx512
#define SPARCL_ISA_WIDTH 16
#define SPARCL_TILE_ROWS 12
#define SPARCL_MAX_VECTORS 2
#pragma GCC target("avx512f,avx512vl,avx2,fma")
#endif
