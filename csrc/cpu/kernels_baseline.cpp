// The kernels for the build target's own instruction set: SSE2 on x86-64 (every x86-64 CPU),
// NEON on aarch64, plain C++ anywhere else.
#include "isa_prelude.h"

#if defined(__aarch64__) || defined(_M_ARM64)
#define SPARCL_ISA_NS neon
#define SPARCL_ISA_WIDTH 4
#define SPARCL_TILE_ROWS 5  // 32 vector registers: 5 x 4 accumulators
#define SPARCL_MAX_VECTORS 4
#else
#define SPARCL_ISA_NS baseline
#define SPARCL_ISA_WIDTH 4
#define SPARCL_TILE_ROWS 6  // 16 vector registers on x86-64: 6 x 2 accumulators
#define SPARCL_MAX_VECTORS 2
#endif

#include "isa_kernels.h"
