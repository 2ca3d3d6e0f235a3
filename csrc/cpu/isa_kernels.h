// The body of every kernels_<isa>.cpp: the whole kernel source, in namespace
// sparcl::SPARCL_ISA_NS, and that instruction set's kernel table.
//
// The including file defines SPARCL_ISA_NS (the namespace and table name), SPARCL_ISA_WIDTH
// (floats per vector register), SPARCL_TILE_ROWS and SPARCL_MAX_VECTORS (micro-kernel tile
// rows, and vectors per tile row),
// and selects the instruction set: a target pragma on x86-64, the compiler's default
// elsewhere. The standard and kernel_table.h headers are included before that pragma, so
// only this namespace is compiled for the instruction set.
#include "conv_kernels.h"
#include "linear_kernels.h"
#include "peak.h"

namespace sparcl::SPARCL_ISA_NS {

template <typename T>
constexpr KernelsOf<T> kernels_of() {
  return {&linear::forward<T>, &linear::grad_input<T>, &linear::grad_weight<T>,
          &conv::forward<T>,   &conv::grad_input<T>,   &conv::grad_weight<T>};
}

const KernelTable* kernel_table() {
  static const KernelTable table{SPARCL_STRINGIFY(SPARCL_ISA_NS), SPARCL_ISA_WIDTH,
                                 kernels_of<float>(), kernels_of<double>(),
                                 &peak::fma_gflops};
  return &table;
}

}  // namespace sparcl::SPARCL_ISA_NS
