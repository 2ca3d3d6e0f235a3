// Included first by every kernels_<isa>.cpp, before any instruction-set pragma: the headers
// whose inline functions all instruction sets share are compiled for the baseline only.
#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "bf16_convert.h"
#include "conv_pixels.h"
#include "kernel_table.h"
#include "probe_rate.h"

#define SPARCL_STRINGIFY_(x) #x
#define SPARCL_STRINGIFY(x) SPARCL_STRINGIFY_(x)

// x86-64 with GCC or Clang: one copy of the kernels per instruction set, chosen at run time.
// Elsewhere a single copy for the compiler's target (NEON on aarch64, portable otherwise).
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define SPARCL_X86_DISPATCH 1
#else
#define SPARCL_X86_DISPATCH 0
#endif
