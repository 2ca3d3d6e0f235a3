// Splitting work between threads by stored blocks, without allocating.
//
// Work items of the linear forward and input gradient are (chunk, group) pairs, where a group
// is a block row (forward) or block column (input gradient) and a chunk is a slice of the
// batch. Groups are cut into bands whose stored blocks fit in a slice of L2, and the items run
// band by band, chunk-major within a band: a chunk's operand rows stay cached while the band's
// groups read them, and the band's blocks stay cached across its chunks (both orders alone
// lose one of the two: group-major re-read the batch per group, chunk-major all the blocks per
// chunk). An item costs its group's stored-block count plus one (the output it writes even
// when empty), so threads get equal numbers of stored blocks however uneven the rows are.
// Compiled once per instruction set, inside its namespace (see isa_kernels.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "microkernels.h"

namespace sparcl::SPARCL_ISA_NS {

// Floats of L2 a band's blocks, and a chunk's operand rows, may each take (512 KB).
constexpr int64_t kCacheSliceFloats = 512 * 1024 / sizeof(float);

// 4-byte elements of one thread's weight-gradient chunk (its packed operand rows of a slice
// of the batch) while its blocks carry `accumulator_floats` of sums from chunk to chunk: an
// L2 slice, or twice the accumulators up to four slices. Each chunk loads and stores every
// accumulator once; where they are about as large as L2 (0.9 of 2048 features and more, or
// of 512 channels), L2-sized chunks held 16-32 batch rows, and those trips cost more than
// reading larger chunks from L3. (Zen 5, 2 threads, 2 MiB against 512 KiB chunks: fp32
// linear 2048x2048 8x8 blocks 1.1x at N = 2048 and from memory, 16x16 1.14x at N = 256,
// 4096x4096 1.25-1.33x, 768 and 1024 features within noise, one thread and the AVX2 copy
// 1.04-1.29x; bf16 linear 1.05-1.42x, bf16 conv at 512 channels 1.04-1.23x, but at 64 and
// 128 channels, whose accumulators are small, 0.83-0.98x: those keep L2 chunks. Larger
// chunks, 4 MiB shared by both cores, had run the bf16 products from L3 at a third of their
// in-cache speed whenever other machines' work on the host claimed the L3.)
inline int64_t weight_gradient_chunk_elems(int64_t accumulator_floats) {
  return std::clamp<int64_t>(2 * accumulator_floats, kCacheSliceFloats, 4 * kCacheSliceFloats);
}

// Batch rows (bf16: row pairs) per weight-gradient chunk of `rows` in all, `row_elems` packed
// 4-byte elements each, for blocks that carry `accumulator_floats`: within
// weight_gradient_chunk_elems, and at least 16, so that the tiles' accumulator loads and
// stores stay small beside their products.
inline int64_t weight_gradient_chunk_rows(int64_t rows, int64_t row_elems,
                                          int64_t accumulator_floats) {
  return std::clamp<int64_t>(
      weight_gradient_chunk_elems(accumulator_floats) / std::max<int64_t>(row_elems, 1), 16,
      std::max<int64_t>(rows, 1));
}

// Floats of stored blocks per band of a linear pass whose operand (the batch's input rows)
// is `operand_floats`. Bands keep their blocks in L2 while the chunks of the batch pass, at
// the price of reading the operand once per band; once it is larger than four slices it comes
// from memory each time, and one band, whose blocks come from L3 for every chunk instead,
// was faster (Zen 4, 2 threads, 0.9, native: 2048x2048 at N=2048 forward 1.2x and input
// gradient 1.25x with 32x32 blocks, 1.1-1.2x with 16x16 and 8x8; 768x3072 and 3072x768 at
// N=2048 1.0-1.2x), while at N=256 the bands won 768x3072's forward (1.15-1.3x).
inline int64_t linear_band_floats(int64_t operand_floats) {
  return operand_floats > 4 * kCacheSliceFloats ? std::numeric_limits<int64_t>::max()
                                                : kCacheSliceFloats;
}

// Cuts groups [0, groups) into bands of at most band_floats floats of stored blocks (a group
// larger than that is a band alone); writes the first group of each band, then `groups`, to
// band_starts (groups + 1 entries at most). Returns the number of bands.
inline int64_t make_bands(const int32_t* offsets, int64_t groups, int64_t block_elems,
                          int64_t band_floats, int32_t* band_starts) {
  int64_t bands = 0;
  int64_t start = 0;
  band_starts[0] = 0;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t floats = (static_cast<int64_t>(offsets[g + 1]) - offsets[start]) * block_elems;
    if (g > start && floats > band_floats) {
      band_starts[++bands] = static_cast<int32_t>(g);
      start = g;
    }
  }
  band_starts[++bands] = static_cast<int32_t>(groups);
  return bands;
}

struct ItemGrid {
  const int32_t* offsets;      // [groups + 1]: prefix sums of stored blocks per group
  int64_t groups;
  int64_t chunks;              // batch chunks
  const int32_t* band_starts;  // [bands + 1], from make_bands
  int64_t bands;

  int64_t items() const { return groups * chunks; }

  // Cost of groups [0, g) in one chunk. `offsets` may be a window of a longer prefix sum
  // (one stride phase's groups of an input-gradient plan), so costs count from offsets[0]:
  // counted from zero, a late phase's prefix costs all exceeded half the total and one
  // thread got every item (the bf16 stride-2 input gradient ran on one core for 3 phases of 4).
  int64_t group_cost(int64_t g) const {
    return static_cast<int64_t>(offsets[g]) - offsets[0] + g;
  }

  // The band, chunk and group of an item.
  void decode(int64_t item, int64_t* band, int64_t* chunk, int64_t* group) const {
    int64_t lo = 0, hi = bands - 1;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (chunks * band_starts[mid + 1] <= item) lo = mid + 1; else hi = mid;
    }
    const int64_t first = band_starts[lo], width = band_starts[lo + 1] - first;
    const int64_t local = item - chunks * first;
    *band = lo;
    *chunk = local / width;
    *group = first + local % width;
  }

  // Total cost of items [0, item).
  int64_t cost_before(int64_t item) const {
    if (item >= items()) return chunks * group_cost(groups);
    int64_t band, chunk, group;
    decode(item, &band, &chunk, &group);
    const int64_t first = band_starts[band], last = band_starts[band + 1];
    return chunks * group_cost(first) + chunk * (group_cost(last) - group_cost(first)) +
           group_cost(group) - group_cost(first);
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

// The (chunk, group) grid of `n` batch rows (or panel tiles) in chunks of `rows`, over groups
// (block rows of a forward, block columns of an input gradient) whose stored blocks `offsets`
// counts, in bands of band_floats floats of blocks; its bands live in a per-thread workspace
// of the calling thread.
inline ItemGrid item_grid(const int32_t* offsets, int64_t groups, int64_t n, int64_t rows,
                          int64_t block_elems, int64_t band_floats = kCacheSliceFloats) {
  int32_t* band_starts = detail::index_workspace(groups + 1, 1);
  const int64_t bands = make_bands(offsets, groups, block_elems, band_floats, band_starts);
  return {offsets, groups, (n + rows - 1) / rows, band_starts, bands};
}

// Runs item(group, n0, n1) for this thread's share of the (chunk, group) grid of `n` rows in
// chunks of `chunk_rows`, in the grid's band order.
template <typename Item>
void for_each_item(const ItemGrid& grid, int64_t n, int64_t chunk_rows, int t, int threads,
                   const Item& item) {
  const int64_t begin = grid.first_item(t, threads), end = grid.first_item(t + 1, threads);
  for (int64_t it = begin; it < end; ++it) {
    int64_t band, chunk, group;
    grid.decode(it, &band, &chunk, &group);
    const int64_t n0 = chunk * chunk_rows;
    item(group, n0, std::min(n, n0 + chunk_rows));
  }
}

// Contiguous share [begin, end) of `count` equally costly items for thread t.
inline void even_share(int64_t count, int t, int threads, int64_t* begin, int64_t* end) {
  *begin = count * t / threads;
  *end = count * (t + 1) / threads;
}

// values [nnz, bm, bk] transposed block by block into the calling thread's scratch workspace
// ([nnz, bk, bm]), on `threads` threads; valid until that slot's next use.
inline const float* transposed_blocks(const float* values, int64_t nnz, int64_t bm, int64_t bk,
                                      int threads) {
  float* values_t = detail::thread_workspace(nnz * bm * bk, detail::kScratchSlot);
  detail::run_parallel(threads, [&](int t, int nt) {
    int64_t begin, end;
    even_share(nnz, t, nt, &begin, &end);
    detail::transpose_blocks(values, values_t, begin, end, bm, bk);
  });
  return values_t;
}

// Bytes of a linear pass's operand (the batch rows its tiles read by blocks) above which its
// tiles ask for the rows of the block two positions ahead (detail::Lookahead). Past the
// caches each block's lines came from memory a block at a time: a block's loop is too long
// for the core to reach the next block's loads early. Zen 5, 2 threads, 32x32 blocks at 0.9
// (same binary, alternated): fp32 3072 -> 768 forward at N=4096 1.4x, 768 -> 3072 input
// gradient at N=2048 1.3x, 2048x2048 at N=2048 1.1-1.2x, AVX2 1.05-1.3x (16x16 blocks
// 1.3-1.9x); fp32 operands of 3-8 MiB gained nothing and lost up to 5 %, so fp32 looks ahead
// from 8 MiB (a quarter of that L3). bf16 tiles gained from 3 MiB (3072 -> 768 forward at
// N=1024 1.1-1.8x, at N=4096 2.9-3.0x; 2048x2048 at N=2048 1.5-1.9x) and look ahead from 2 MiB.
constexpr int64_t kLookaheadBytes = int64_t{8} << 20;
constexpr int64_t kPairLookaheadBytes = int64_t{2} << 20;

// Whether an operand of `elems` elements of T (float, or uint16_t for bf16) is past the size
// from which the passes look ahead.
template <typename T>
inline bool past_lookahead_size(int64_t elems) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 2, "fp32 or bf16 operands");
  const int64_t bytes = elems * static_cast<int64_t>(sizeof(T));
  return bytes > (sizeof(T) == 4 ? kLookaheadBytes : kPairLookaheadBytes);
}

// Number of blocks the weight gradient computes: all nnz without a mask.
inline int64_t count_active(const bool* grad_block_mask, int64_t nnz) {
  return grad_block_mask ? std::count(grad_block_mask, grad_block_mask + nnz, true) : nnz;
}

// Calls f(j) for thread t's equal share of the `active` blocks the mask keeps, in storage
// order so that blocks sharing rows stay cached.
template <typename F>
void for_active_share(const bool* grad_block_mask, int64_t nnz, int64_t active, int t,
                      int threads, const F& f) {
  int64_t first, last;
  even_share(active, t, threads, &first, &last);
  int64_t rank = 0;
  for (int64_t j = 0; j < nnz && rank < last; ++j) {
    if (grad_block_mask && !grad_block_mask[j]) continue;
    if (rank++ >= first) f(j);
  }
}

// Zero-fills thread t's even share of the blocks the mask switches off (no products for them).
template <typename T>
void zero_masked_share(const bool* grad_block_mask, int64_t nnz, int64_t block_elems,
                       T* grad_values, int t, int threads) {
  if (!grad_block_mask) return;
  int64_t begin, end;
  even_share(nnz, t, threads, &begin, &end);
  for (int64_t j = begin; j < end; ++j)
    if (!grad_block_mask[j]) std::fill_n(grad_values + j * block_elems, block_elems, T(0));
}

// A whole weight-gradient pass on `threads` threads: compute(j) for every block the mask
// keeps, exact zeros for the others.
template <typename T, typename Compute>
void weight_gradient_pass(const bool* grad_block_mask, int64_t nnz, int64_t block_elems,
                          T* grad_values, int threads, const Compute& compute) {
  const int64_t active = count_active(grad_block_mask, nnz);
  detail::run_parallel(threads, [&](int t, int nt) {
    zero_masked_share(grad_block_mask, nnz, block_elems, grad_values, t, nt);
    for_active_share(grad_block_mask, nnz, active, t, nt, compute);
  });
}

// The block rows (of grad_out) and block columns (of x or the patch matrix) that the blocks
// of a packed weight-gradient pass read: only those are packed. A sparse convolution's
// blocks reach a few of its taps x channel blocks (the 64-channel layers of a ResNet at 0.9
// read 4 of 18 block columns of the 9x larger patch matrix; packing every column cost 4-8x
// the products), a thread's share of a linear layer's blocks about half the block rows.
struct UsedPanels {
  const int32_t* slot;  // per block row or column: its panel in the packed chunk, or -1
  const int32_t* list;  // the used ones, in increasing order
  int64_t count;
};

// Marks the rows (`of` = L.row_indices) or columns (L.col_indices) of blocks ids[0 .. count),
// in `storage` (2 * groups ints).
inline UsedPanels used_panels(const int32_t* ids, int64_t count, const int32_t* of,
                              int64_t groups, int32_t* storage) {
  int32_t* slot = storage;
  int32_t* list = storage + groups;
  std::fill_n(slot, groups, -1);
  for (int64_t a = 0; a < count; ++a) slot[of[ids[a]]] = 0;
  int64_t used = 0;
  for (int64_t group = 0; group < groups; ++group)
    if (slot[group] == 0) slot[group] = static_cast<int32_t>(used), list[used++] = group;
  return {slot, list, used};
}

}  // namespace sparcl::SPARCL_ISA_NS
