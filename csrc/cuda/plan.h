// Host-side planning of the CUDA kernels, in plain C++ shared with the kernels.
//
// Every pass computes output tiles C[rows x cols] += A[rows x 16] * B[16 x cols] over a
// sequence of 16-deep steps. A program (CUDA block) owns one tile:
//   forward      rows: a 64-row slice of the batch; cols: a <= 64-wide slice of block row r
//   grad_input   rows: a 64-row slice of the batch; cols: a <= 64-wide slice of block col c
//   grad_weight  rows/cols: a <= 64 x 64 tile of one stored block; the batch is reduced
// Programs are numbered on a 1-D grid (CUDA's x dimension takes 2^31 - 1 programs, y only
// 65535), and split into several launches when even that is too few.
//
// This header compiles with a plain C++17 compiler (unit-tested on the CPU) and with nvcc,
// where the decoding functions also run on the device.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#if defined(__CUDACC__)
#define SPARCL_HOST_DEVICE __host__ __device__
#else
#define SPARCL_HOST_DEVICE
#endif

namespace sparcl {
namespace cuda {

constexpr int kTileRows = 64;    // batch rows (or block rows for grad_weight) per program
constexpr int kTileCols = 64;    // output columns per program, at most
constexpr int kStep = 16;        // reduction depth of one step (a WMMA k-fragment)
constexpr int kThreads = 128;    // four warps: warp w owns tile rows [16 w, 16 w + 16)
constexpr int64_t kMaxProgramsPerLaunch = 2147483647;  // gridDim.x limit

enum class Pass : int { kForward = 0, kGradInput = 1, kGradWeight = 2 };

SPARCL_HOST_DEVICE constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

SPARCL_HOST_DEVICE constexpr int tile_width(int side) { return side < kTileCols ? side : kTileCols; }

// Which tile a program computes.
struct Tile {
  int64_t batch_tile;  // forward/grad_input: which 64-row slice of the batch (0 for grad_weight)
  int64_t group;       // block row (forward), block col (grad_input), stored block (weight)
  int row_slice;       // grad_weight: which tile_width(bm) slice of the block's rows
  int col_slice;       // which tile_width(...) slice of the output columns
};

struct PassPlan {
  Pass pass;
  int64_t batch_tiles;  // 1 for grad_weight
  int64_t groups;
  int row_slices;
  int col_slices;

  SPARCL_HOST_DEVICE int64_t programs() const {
    return batch_tiles * groups * row_slices * col_slices;
  }

  // Program order: batch tiles vary fastest, so the programs that run together share the
  // weight blocks of one group (read once from DRAM, then from L2).
  SPARCL_HOST_DEVICE Tile decode(int64_t program) const {
    Tile tile{};
    tile.batch_tile = program % batch_tiles;
    int64_t rest = program / batch_tiles;
    tile.col_slice = static_cast<int>(rest % col_slices);
    rest /= col_slices;
    tile.row_slice = static_cast<int>(rest % row_slices);
    tile.group = rest / row_slices;
    return tile;
  }
};

inline PassPlan plan_pass(Pass pass, int64_t batch, int64_t groups, int bm, int bk) {
  PassPlan plan{pass, 1, groups, 1, 1};
  switch (pass) {
    case Pass::kForward:
      plan.batch_tiles = ceil_div(batch, kTileRows);
      plan.col_slices = static_cast<int>(ceil_div(bm, kTileCols));
      break;
    case Pass::kGradInput:
      plan.batch_tiles = ceil_div(batch, kTileRows);
      plan.col_slices = static_cast<int>(ceil_div(bk, kTileCols));
      break;
    case Pass::kGradWeight:
      plan.row_slices = static_cast<int>(ceil_div(bm, kTileRows));
      plan.col_slices = static_cast<int>(ceil_div(bk, kTileCols));
      break;
  }
  return plan;
}

struct Launch {
  int64_t first_program;
  int64_t count;
};

// Consecutive launches covering programs [0, programs), each within the grid limit.
inline std::vector<Launch> split_launches(int64_t programs,
                                          int64_t limit = kMaxProgramsPerLaunch) {
  std::vector<Launch> launches;
  for (int64_t first = 0; first < programs; first += limit) {
    launches.push_back({first, programs - first < limit ? programs - first : limit});
  }
  return launches;
}

// Block sides the kernels take: multiples of the 16-deep step, up to 128.
constexpr bool supported_side(int side) { return side >= 16 && side <= 128 && side % 16 == 0; }

// Empty when the problem is valid, otherwise a message naming the bad argument.
inline std::string check_problem(int64_t batch, int64_t m, int64_t k, int bm, int bk) {
  if (!supported_side(bm) || !supported_side(bk)) {
    return "block size " + std::to_string(bm) + "x" + std::to_string(bk) +
           " is not supported: sides must be multiples of 16 up to 128";
  }
  if (batch < 0) return "batch must be >= 0, got " + std::to_string(batch);
  if (m % bm != 0) return "m = " + std::to_string(m) + " is not a multiple of bm";
  if (k % bk != 0) return "k = " + std::to_string(k) + " is not a multiple of bk";
  return {};
}

// Shared memory of one program: the A and B step tiles plus the fp32 output staging tile.
constexpr int64_t shared_bytes(int element_bytes) {
  return static_cast<int64_t>(kTileRows) * (kStep + 8) * element_bytes +
         static_cast<int64_t>(kStep) * (kTileCols + 8) * element_bytes +
         static_cast<int64_t>(kTileRows) * (kTileCols + 4) * 4;
}

}  // namespace cuda
}  // namespace sparcl
