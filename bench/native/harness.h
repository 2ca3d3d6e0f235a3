// What the torch-free kernel harnesses share: a best-of timer and a random block layout with
// an exact number of stored blocks.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <cstdlib>

#include "block_sparse.h"
#include "block_sparse_conv.h"

namespace harness {

// With HARNESS_COLD set, 64 MiB are rewritten before each timed run, so that the operands come
// from memory as in a training step (where other layers ran in between), not from L2/L3.
// HARNESS_COLD=N (N > 1) writes N MiB instead: 4 leaves the operands in L3 but not in L2.
// Every thread rewrites its share of every line, as bench/timing.py's cache_evictor does
// (torch's add_): the caches of both cores are left full of dirty lines, which each line a
// kernel then reads must first write back. The single-threaded sweep of one byte per line
// used before left one core's caches clean: the 2048x2048 linear forward (N=256) read 1.2x
// slower from memory than warm with it, 1.35x with this one, 1.75x after torch's rewrite in
// Python (Zen 5, one afternoon).
inline void evict_caches() {
  static const char* cold = std::getenv("HARNESS_COLD");
  if (!cold) return;
  static const size_t mib = std::atoi(cold) > 1 ? static_cast<size_t>(std::atoi(cold)) : 64;
  static std::vector<float> sweep((mib << 20) / sizeof(float));
  const int64_t count = static_cast<int64_t>(sweep.size());
  float* data = sweep.data();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) data[i] += 1.f;
}

// The fastest of `reps` runs of f, in milliseconds.
template <typename F>
double best_ms(F f, int reps = 9) {
  double best = 1e9;
  for (int t = 0; t < reps; ++t) {
    evict_caches();
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best * 1e3;
}

// A block_rows x block_cols grid of bm x bk blocks keeping exactly round(density x positions)
// of them (at least one), drawn with a fixed seed, as from_dense keeps a count.
class RandomLayout {
 public:
  RandomLayout(int64_t block_rows, int64_t block_cols, int64_t bm, int64_t bk, double density)
      : rows_(block_rows), cols_(block_cols), bm_(bm), bk_(bk) {
    std::mt19937 rng(0);
    std::vector<int64_t> order(rows_ * cols_);
    for (int64_t i = 0; i < rows_ * cols_; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<char> kept(rows_ * cols_, 0);
    const int64_t want = std::max<int64_t>(1, std::llround(density * rows_ * cols_));
    for (int64_t i = 0; i < want && i < rows_ * cols_; ++i) kept[order[i]] = 1;
    offsets_.assign(rows_ + 1, 0);
    for (int64_t r = 0; r < rows_; ++r) {
      for (int64_t c = 0; c < cols_; ++c)
        if (kept[r * cols_ + c]) columns_.push_back(c), row_of_.push_back(r);
      offsets_[r + 1] = static_cast<int32_t>(columns_.size());
    }
    const int64_t nnz = columns_.size();
    transpose_offsets_.assign(cols_ + 1, 0);
    transpose_ids_.resize(nnz);
    for (const auto c : columns_) transpose_offsets_[c + 1]++;
    for (int64_t c = 0; c < cols_; ++c) transpose_offsets_[c + 1] += transpose_offsets_[c];
    std::vector<int32_t> next(transpose_offsets_.begin(), transpose_offsets_.end() - 1);
    for (int64_t j = 0; j < nnz; ++j) transpose_ids_[next[columns_[j]]++] = j;
  }

  int64_t nnz() const { return static_cast<int64_t>(columns_.size()); }

  sparcl::BlockLayoutView view() const {
    return {rows_,           cols_,           bm_,
            bk_,             nnz(),           offsets_.data(),
            columns_.data(), row_of_.data(),  transpose_offsets_.data(),
            transpose_ids_.data()};
  }

 private:
  int64_t rows_, cols_, bm_, bk_;
  std::vector<int32_t> offsets_, columns_, row_of_, transpose_offsets_, transpose_ids_;
};

// A ResNet-like 3x3 pad-1 conv from the command line: BLOCK CHANNELS SIZE BATCH THREADS
// [STRIDE [DENSITY]]. With STRIDE 2 the input has 2 x SIZE pixels a side and half the channels
// (a ResNet stage's first conv).
struct ConvCase {
  int block;
  int64_t channels, size, batch;
  int threads;
  int64_t stride, in_channels, in_size;
  double density;

  ConvCase(int argc, char** argv, int default_block, int default_threads) {
    block = argc > 1 ? std::atoi(argv[1]) : default_block;
    channels = argc > 2 ? std::atoi(argv[2]) : 64;
    size = argc > 3 ? std::atoi(argv[3]) : 32;
    batch = argc > 4 ? std::atoi(argv[4]) : 32;
    threads = argc > 5 ? std::atoi(argv[5]) : default_threads;
    stride = argc > 6 ? std::atoi(argv[6]) : 1;
    density = argc > 7 ? std::atof(argv[7]) : 0.1;
    in_channels = channels / stride;
    in_size = size * stride;
  }

  sparcl::ConvGeometry geometry() const {
    return {batch, in_size, in_size, in_channels, size, size, 3, 3, stride, stride, 1, 1, 1, 1};
  }

  RandomLayout layout() const {
    return RandomLayout(channels / block, 9 * in_channels / block, block, block, density);
  }
};

}  // namespace harness
