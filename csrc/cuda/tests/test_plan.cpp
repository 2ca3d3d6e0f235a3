// Unit tests of the CUDA kernels' host-side planning (plan.h), compiled with a plain C++
// compiler and run on the CPU by tests/test_cuda_sources.py.
#include <cstdio>
#include <cstdlib>
#include <set>
#include <tuple>

#include "../plan.h"

using namespace sparcl::cuda;

namespace {

int failures = 0;

void expect(bool ok, const char* what, int line) {
  if (!ok) {
    std::printf("FAILED line %d: %s\n", line, what);
    ++failures;
  }
}
#define EXPECT(condition) expect((condition), #condition, __LINE__)

// Every program decodes to a distinct in-range tile, and every tile is some program.
void decode_covers_every_tile_once(Pass pass, int64_t batch, int64_t groups, int bm, int bk) {
  const PassPlan plan = plan_pass(pass, batch, groups, bm, bk);
  std::set<std::tuple<int64_t, int64_t, int, int>> seen;
  for (int64_t p = 0; p < plan.programs(); ++p) {
    const Tile t = plan.decode(p);
    EXPECT(t.batch_tile >= 0 && t.batch_tile < plan.batch_tiles);
    EXPECT(t.group >= 0 && t.group < groups);
    EXPECT(t.row_slice >= 0 && t.row_slice < plan.row_slices);
    EXPECT(t.col_slice >= 0 && t.col_slice < plan.col_slices);
    seen.insert({t.batch_tile, t.group, t.row_slice, t.col_slice});
  }
  EXPECT(static_cast<int64_t>(seen.size()) == plan.programs());
  EXPECT(plan.programs() == plan.batch_tiles * groups * plan.row_slices * plan.col_slices);
}

}  // namespace

int main() {
  // Tile counts per pass.
  const PassPlan fwd = plan_pass(Pass::kForward, 130, 7, 128, 32);
  EXPECT(fwd.batch_tiles == 3 && fwd.col_slices == 2 && fwd.row_slices == 1);
  const PassPlan gin = plan_pass(Pass::kGradInput, 64, 5, 32, 96);
  EXPECT(gin.batch_tiles == 1 && gin.col_slices == 2);
  const PassPlan gw = plan_pass(Pass::kGradWeight, 100000, 11, 128, 16);
  EXPECT(gw.batch_tiles == 1 && gw.row_slices == 2 && gw.col_slices == 1 && gw.programs() == 22);
  EXPECT(plan_pass(Pass::kForward, 0, 4, 16, 16).programs() == 0);       // empty batch
  EXPECT(plan_pass(Pass::kGradWeight, 8, 0, 16, 16).programs() == 0);    // nothing active
  EXPECT(tile_width(16) == 16 && tile_width(128) == 64);

  // Batch tiles vary fastest, so neighbouring programs share a group's weight blocks.
  const PassPlan order = plan_pass(Pass::kForward, 256, 3, 64, 64);
  EXPECT(order.decode(0).group == 0 && order.decode(3).group == 0 && order.decode(4).group == 1);
  EXPECT(order.decode(5).batch_tile == 1);

  decode_covers_every_tile_once(Pass::kForward, 200, 5, 128, 16);
  decode_covers_every_tile_once(Pass::kGradInput, 65, 4, 16, 112);
  decode_covers_every_tile_once(Pass::kGradWeight, 1, 9, 96, 80);

  // Grid splitting at the program limit.
  EXPECT(split_launches(0).empty());
  const auto one = split_launches(kMaxProgramsPerLaunch);
  EXPECT(one.size() == 1 && one[0].count == kMaxProgramsPerLaunch);
  const auto three = split_launches(25, 10);
  EXPECT(three.size() == 3 && three[2].first_program == 20 && three[2].count == 5);
  int64_t covered = 0;
  for (const Launch& launch : split_launches(3 * kMaxProgramsPerLaunch + 7)) {
    EXPECT(launch.first_program == covered && launch.count <= kMaxProgramsPerLaunch);
    covered += launch.count;
  }
  EXPECT(covered == 3 * kMaxProgramsPerLaunch + 7);

  // Problem checks name the bad argument.
  EXPECT(check_problem(10, 64, 64, 16, 32).empty());
  EXPECT(check_problem(10, 64, 64, 8, 16).find("block size 8x16") != std::string::npos);
  EXPECT(check_problem(10, 64, 64, 16, 144).find("not supported") != std::string::npos);
  EXPECT(check_problem(-1, 64, 64, 16, 16).find("batch") != std::string::npos);
  EXPECT(check_problem(1, 40, 64, 16, 16).find("m = 40") != std::string::npos);
  EXPECT(check_problem(1, 64, 40, 16, 16).find("k = 40") != std::string::npos);

  // Shared memory stays under the 48 KiB a kernel gets without opting in.
  EXPECT(shared_bytes(4) <= 48 * 1024 && shared_bytes(2) <= 48 * 1024);

  if (failures == 0) std::printf("plan tests passed\n");
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
