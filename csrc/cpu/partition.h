// Splitting work between threads by stored blocks, without allocating.
//
// Work items are (group, chunk) pairs in group-major order, where a group is a block row
// (forward) or block column (input gradient) and a chunk is a slice of the batch. An item
// costs its group's stored-block count plus one (the output it writes even when empty), so
// threads get equal numbers of stored blocks however uneven the rows are.
#pragma once

#include <algorithm>
#include <cstdint>

namespace sparcl {

struct ItemGrid {
  const int32_t* offsets;  // [groups + 1]: prefix sums of stored blocks per group
  int64_t groups;
  int64_t chunks;          // batch chunks per group

  int64_t items() const { return groups * chunks; }

  // Total cost of items [0, item).
  int64_t cost_before(int64_t item) const {
    const int64_t g = item / chunks, c = item % chunks;
    int64_t cost = (static_cast<int64_t>(offsets[g]) + g) * chunks;
    if (c > 0) cost += c * (static_cast<int64_t>(offsets[g + 1] - offsets[g]) + 1);
    return cost;
  }

  // First item of thread `t` of `threads`: the first item whose prefix cost reaches t/threads
  // of the total. Thread t owns [first_item(t), first_item(t + 1)).
  int64_t first_item(int t, int threads) const {
    const int64_t target = cost_before(items()) * t / threads;
    int64_t lo = 0, hi = items();
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (cost_before(mid) < target) lo = mid + 1; else hi = mid;
    }
    return lo;
  }
};

// Contiguous share [begin, end) of `count` equally costly items for thread t.
inline void even_share(int64_t count, int t, int threads, int64_t* begin, int64_t* end) {
  *begin = count * t / threads;
  *end = count * (t + 1) / threads;
}

}  // namespace sparcl
