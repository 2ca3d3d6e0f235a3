// The kernels of one instruction set, as a table of function pointers (torch-free).
//
// The same kernel source is compiled once per instruction set (kernels_<isa>.cpp), each copy
// in its own namespace so that no function compiled for one set can be linked into another's
// callers; dispatch.cpp picks the table the CPU can run.
#pragma once

#include <cstdint>

#include "block_sparse.h"
#include "block_sparse_conv.h"

namespace sparcl {

// How a kernel runs: its thread count, and the widest vector (in floats: 4, 8 or 16) its
// fp32 micro-kernels may use (the instruction set's own width unless a test narrows or
// widens it).
struct Execution {
  int threads;
  int max_width;
};

template <typename T>
struct KernelsOf {
  void (*forward)(const T*, const T*, const T*, const T*, T*, int64_t, const BlockLayoutView&,
                  const Execution&);
  void (*grad_input)(const T*, const T*, T*, int64_t, const BlockLayoutView&, const Execution&);
  void (*grad_weight)(const T*, const T*, const bool*, T*, int64_t, const BlockLayoutView&,
                      const Execution&);
  void (*conv_forward)(const T*, const T*, const T*, const T*, T*, const BlockLayoutView&,
                       const ConvGeometry&, const Execution&);
  void (*conv_grad_input)(const T*, const T*, T*, const BlockLayoutView&, const ConvGeometry&,
                          const Execution&);
  void (*conv_grad_weight)(const T*, const T*, const bool*, T*, const BlockLayoutView&,
                           const ConvGeometry&, const Execution&);
};

struct KernelTable {
  const char* isa;   // "baseline", "avx2", "avx512" or "neon"
  int native_width;  // floats per hardware vector register
  KernelsOf<float> f32;
  KernelsOf<double> f64;
  // Measured fp32 multiply-add peak of this instruction set in GFLOP/s: (threads, seconds).
  double (*fma_gflops)(int, double);
};

// The bf16 linear and convolution passes of one pair dot product (block_sparse.h's bf16 section; packed
// blocks as 32-bit pairs).
struct Bf16KernelTable {
  const char* name;  // "avx512bf16", "bfdot" or "emulated"
  void (*forward)(const uint16_t*, const uint32_t*, const float*, uint16_t*, int64_t,
                  const BlockLayoutView&, int);
  void (*grad_input)(const uint16_t*, const uint32_t*, uint16_t*, int64_t,
                     const BlockLayoutView&, int);
  void (*grad_weight)(const uint16_t*, const uint16_t*, const bool*, float*, int64_t,
                      const BlockLayoutView&, int);
  void (*conv_forward)(const uint16_t*, const uint32_t*, const float*, uint16_t*,
                       const BlockLayoutView&, const ConvGeometry&, int);
  void (*conv_grad_input)(const uint16_t*, const uint32_t*, uint16_t*, const BlockLayoutView&,
                          const ConvGeometry&, int);
  void (*conv_grad_weight)(const uint16_t*, const uint16_t*, const bool*, float*,
                           const BlockLayoutView&, const ConvGeometry&, int);
  // fp32 blocks [nnz, bm, bk] -> both packings (bf16_pack_blocks in block_sparse.h).
  void (*pack_blocks)(const float*, uint16_t*, uint16_t*, int64_t, int64_t, int64_t, int);
};

// The table of each instruction set compiled into this build (null where not compiled).
namespace baseline { const KernelTable* kernel_table(); }
namespace avx2 { const KernelTable* kernel_table(); }
namespace avx512 { const KernelTable* kernel_table(); }
namespace neon { const KernelTable* kernel_table(); }
namespace avx512bf16 { const Bf16KernelTable* bf16_kernel_table(); }
namespace bfdot { const Bf16KernelTable* bf16_kernel_table(); }
namespace bf16emulated { const Bf16KernelTable* bf16_kernel_table(); }

}  // namespace sparcl
