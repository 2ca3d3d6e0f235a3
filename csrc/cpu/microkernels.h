// Register-tiled micro-kernels shared by the linear and convolution kernels, written once over
// the vectors of simd.h and compiled once per instruction set (see isa_kernels.h).
//
// A tile is kTile rows x KV vectors of W floats: kTile * KV accumulators stay in registers
// beside KV loaded vectors and one broadcast scalar at a time. Each instruction set sets the
// tile for its register file: 6 x 2 vectors for SSE2/AVX2 (12 accumulators of 16 registers),
// 12 x 2 for AVX-512 (24 of its 32 zmm registers; with 6 rows a 16-float block side left 6
// accumulators, too few to cover the FMA latency: 12 rows measured 5-8 % faster on the conv
// passes and up to 1.4x on the linear weight gradient), 5 x 4 on NEON (20 accumulators + 4 +
// 5 of its 32 registers; 6 x 4 spills). W is chosen per call, at most the instruction set's.
#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "simd.h"

// The grouped tiles (pairs, quads, block pairs) shuffle the compilers' vector extensions,
// and the quads and block pairs exist only where vectors are 16 floats wide (AVX-512; the
// quads' broadcast is an intrinsic). Portable vectors keep the plain tiles.
#define SPARCL_PAIR_TILES SPARCL_VECTOR_EXTENSIONS
#define SPARCL_WIDE_GROUP_TILES (SPARCL_VECTOR_EXTENSIONS && SPARCL_ISA_WIDTH >= 16)

#if SPARCL_WIDE_GROUP_TILES
#include <immintrin.h>
#endif

// Fixed-trip loops over tile dimensions must be fully unrolled before GCC's scalar
// replacement runs, or the accumulator arrays live on the stack instead of in registers.
#define SPARCL_UNROLL _Pragma("GCC unroll 16")

namespace sparcl::SPARCL_ISA_NS {
namespace detail {

constexpr int kTile = SPARCL_TILE_ROWS;          // tile height of every micro-kernel
constexpr int kMaxVectors = SPARCL_MAX_VECTORS;  // vectors per tile row

// Calls f(std::integral_constant<int, value>) for a run-time value in [1, N].
template <int N, typename F>
void with_constant(int value, const F& f) {
  if constexpr (N > 1) {
    if (value < N) return with_constant<N - 1>(value, f);
  }
  f(std::integral_constant<int, N>{});
}

// Widest vector (16, 8 or 4 floats, at most max_width) whose width divides `contiguous`, the
// length of the runs the micro-kernels load and store; 0 when no vector fits (portable loops).
inline int pick_width(int64_t contiguous, int max_width) {
  for (int width = 16; width >= 4; width /= 2)
    if (width <= max_width && contiguous % width == 0) return width;
  return 0;
}

// Calls f(std::integral_constant<int, W>) for a width from pick_width.
template <typename F>
void with_width(int width, const F& f) {
  switch (width) {
    case 16: return f(std::integral_constant<int, 16>{});
    case 8: return f(std::integral_constant<int, 8>{});
    default: return f(std::integral_constant<int, 4>{});
  }
}

// Runs body(t, threads) on `threads` OpenMP threads (inline when threads <= 1 or without
// OpenMP, in which case the kernels run single-threaded).
template <typename Body>
void run_parallel(int threads, const Body& body) {
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    body(omp_get_thread_num(), omp_get_num_threads());
    return;
  }
#endif
  (void)threads;
  body(0, 1);
}

// Waits for every thread of the enclosing run_parallel region.
inline void barrier() {
#ifdef _OPENMP
#pragma omp barrier
#endif
}

// The calling thread's reusable buffers. kZerosSlot is only ever read: grown with zeros, it
// stands for rows in the padding; the others are scratch, valid until their slot's next use.
enum WorkspaceSlot : int {
  kScratchSlot = 0,     // transposed blocks, weight-gradient partials
  kZerosSlot = 1,
  kPanelInSlot = 2,     // the operand panel of a batch-major pass (panels.h)
  kPanelOutSlot = 3,    // its output panel
  kAccumulatorSlot = 4,  // a panel weight gradient's vector accumulators (conv_kernels.h)
  kPaddedInputSlot = 5,  // the weight-gradient runs' zero-padded input (conv_kernels.h)
  kWorkspaceSlots = 6,
};

// A buffer owned by the calling thread, grown on demand and reused by later calls, so that
// steady-state training allocates nothing but outputs. It starts on a 64-byte line: panel
// rows are whole lines apart, and a vector load across two lines costs two (the dot-product
// tile of the panel weight gradient ran at 38-41 % of a core's peak in L1 from malloc's
// 16-byte alignment, 47-60 % from line-aligned panels).
inline float* thread_workspace(int64_t count, int slot) {
  constexpr int64_t kLineFloats = 64 / sizeof(float);
  static thread_local std::vector<float> buffers[kWorkspaceSlots];
  auto& buffer = buffers[slot];
  if (buffer.size() < static_cast<size_t>(count + kLineFloats))
    buffer.resize(count + kLineFloats, 0.0f);
  const auto address = reinterpret_cast<uintptr_t>(buffer.data());
  return buffer.data() + (kLineFloats - address / sizeof(float) % kLineFloats) % kLineFloats;
}

// The index counterpart of thread_workspace (per-call plans of block ids).
inline int32_t* index_workspace(int64_t count, int slot = 0) {
  static thread_local std::vector<int32_t> buffers[2];
  auto& buffer = buffers[slot];
  if (buffer.size() < static_cast<size_t>(count)) buffer.resize(count, 0);
  return buffer.data();
}

// values [nnz, bm, bk] -> values_t [nnz, bk, bm] for blocks [begin, end).
inline void transpose_blocks(const float* values, float* values_t, int64_t begin, int64_t end,
                             int64_t bm, int64_t bk) {
  for (int64_t j = begin; j < end; ++j) {
    const float* src = values + j * bm * bk;
    float* dst = values_t + j * bm * bk;
    for (int64_t m = 0; m < bm; ++m)
      for (int64_t k = 0; k < bk; ++k) dst[k * bm + m] = src[m * bk + k];
  }
}

// Output rows of a tile at a fixed stride (row i at base + i * ld).
struct StridedOut {
  float* base;
  int64_t ld;
  float* operator()(int i) const { return base + i * ld; }
};

// Output rows of a tile given one by one (e.g. the input pixels of one stride phase).
template <int N>
struct ListedOut {
  float* rows[N];
  float* operator()(int i) const { return rows[i]; }
};

// 512-bit tiles taller than this run their rows in two halves per block (accumulate_tile):
// 12 row pointers and a loop's own registers overflow the 16 general-purpose registers, and
// perf showed the rows reloaded from vector registers and the stack inside the inner loop.
// Each half-loop holds 6; the block's vectors are read twice, from L1. Zen 4, AVX-512, native
// A/Bs: 16x16 conv forwards 1.1-1.25x faster, 32x32 conv forward and input gradient 1.04-1.06x,
// the 2048x2048 linear forward and input gradient at N=256 1.1x. 256-bit tiles (8-wide
// blocks), bound by their loads rather than their multiply-adds, gained nothing and keep one
// loop.
constexpr int kHalfTileRows = 8;

// acc[i][q] += sum over p < P of a[i][p] * b[p * O + W q ...], rows I0 <= i < I1 of a tile.
template <int W, int KV, int I0, int I1, int TN>
SPARCL_INLINE void accumulate_rows(const float* const (&a)[TN], const float* b, int64_t P,
                                   int64_t O, simd::Vec<W> (&acc)[TN][KV]) {
  for (int64_t p = 0; p < P; ++p) {
    simd::Vec<W> bv[KV];
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q) bv[q] = simd::load<W>(b + p * O + W * q);
    SPARCL_UNROLL
    for (int i = I0; i < I1; ++i) {
      const float av = a[i][p];
      SPARCL_UNROLL
      for (int q = 0; q < KV; ++q) acc[i][q] = simd::multiply_add<W>(av, bv[q], acc[i][q]);
    }
  }
}

#if SPARCL_PAIR_TILES
// Pairs of p for one-vector tiles of 16 floats (16-wide blocks on AVX-512): a tile row of
// one vector takes one broadcast per multiply-add, and Zen 5's two 512-bit FMA pipes outrun
// its broadcasts (bench/native/broadcast_rate.cpp, one core, L1: such a loop 73-75 % of the
// peak, this one 86-88 %; conv passes with 16x16 blocks, native, alternated: forward
// 1.14-1.30x and input gradient 1.05-1.34x faster from 64 to 512 channels).
// Here a step broadcasts the row's pair (a[p], a[p + 1]) into every lane pair and multiplies
// two vectors of interleaved rows p and p + 1 of b: `low` holds the pairs of columns 4j and
// 4j + 1, `high` those of 4j + 2 and 4j + 3 in each 128-bit lane j (unpack order). Each lane
// pair sums separately, and the tile adds its halves once at the end (Pairs::fold).
namespace pairs {
using Vec16 = simd::Vec<16>;
typedef double PairVec __attribute__((vector_size(64), aligned(4), may_alias));

SPARCL_INLINE Vec16 broadcast_pair(const float* a) {
  double pair;
  __builtin_memcpy(&pair, a, sizeof pair);
  return reinterpret_cast<Vec16>(PairVec{pair, pair, pair, pair, pair, pair, pair, pair});
}

SPARCL_INLINE Vec16 interleave_low(const Vec16& r0, const Vec16& r1) {
  return __builtin_shufflevector(r0, r1, 0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13,
                                 29);
}
SPARCL_INLINE Vec16 interleave_high(const Vec16& r0, const Vec16& r1) {
  return __builtin_shufflevector(r0, r1, 2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30,
                                 15, 31);
}

}  // namespace pairs

// The group of grouped_tile for 16-wide blocks.
struct Pairs {
  using Vec16 = simd::Vec<16>;
  static constexpr int kOutputWidth = 16;

  template <int I0, int I1, int TN>
  SPARCL_INLINE static void accumulate_rows(const float* const (&a)[TN], const float* b,
                                            int64_t P, int64_t O, Vec16 (&acc)[TN][2]) {
    for (int64_t p = 0; p < P; p += 2) {
      const Vec16 r0 = simd::load<16>(b + p * O), r1 = simd::load<16>(b + (p + 1) * O);
      const Vec16 low = pairs::interleave_low(r0, r1), high = pairs::interleave_high(r0, r1);
      SPARCL_UNROLL
      for (int i = I0; i < I1; ++i) {
        const Vec16 av = pairs::broadcast_pair(a[i] + p);
        acc[i][0] = simd::multiply_add<16>(av, low, acc[i][0]);
        acc[i][1] = simd::multiply_add<16>(av, high, acc[i][1]);
      }
    }
  }

  // Columns 0..15 in order from the two accumulators' lane pairs.
  SPARCL_INLINE static Vec16 fold(const Vec16& low, const Vec16& high) {
    const Vec16 even = __builtin_shufflevector(low, high, 0, 2, 16, 18, 4, 6, 20, 22, 8, 10, 24,
                                               26, 12, 14, 28, 30);
    const Vec16 odd = __builtin_shufflevector(low, high, 1, 3, 17, 19, 5, 7, 21, 23, 9, 11, 25,
                                              27, 13, 15, 29, 31);
    return even + odd;
  }
};
#endif

// Quads of p for 8-float tiles on an instruction set with 16-float vectors (8-wide blocks on
// AVX-512): a half-width tile row runs its multiply-adds at half the 512-bit rate, with a
// broadcast each. Here a step broadcasts the row's quad a[p .. p + 3] into every 128-bit
// lane and multiplies two vectors holding rows p .. p + 3 of an 8-column block transposed
// (lane 4c + g: row p + g, column c; columns 0-3 in `low`, 4-7 in `high`), so that one
// broadcast feeds two full-width multiply-adds; the tile sums each lane quad at its store.
#if SPARCL_WIDE_GROUP_TILES
namespace quads {
using Vec16 = simd::Vec<16>;
// (an intrinsic: GCC turned the vector-extension forms into stores and a reload through
// the stack; the quads run only where vectors are 16 floats wide, i.e. AVX-512)
SPARCL_INLINE Vec16 broadcast_quad(const float* a) {
  return reinterpret_cast<Vec16>(_mm512_maskz_broadcast_f32x4(0xffff, _mm_loadu_ps(a)));
}

}  // namespace quads

// The group of grouped_tile for 8-wide blocks on 16-float vectors.
struct Quads {
  using Vec8 = simd::Vec<8>;
  using Vec16 = simd::Vec<16>;
  static constexpr int kOutputWidth = 8;

  // b: the block's P x 8 rows, contiguous (O = 8).
  template <int I0, int I1, int TN>
  SPARCL_INLINE static void accumulate_rows(const float* const (&a)[TN], const float* b,
                                            int64_t P, int64_t /*O*/, Vec16 (&acc)[TN][2]) {
    for (int64_t p = 0; p < P; p += 4) {
      const Vec16 r01 = simd::load<16>(b + p * 8), r23 = simd::load<16>(b + p * 8 + 16);
      const Vec16 low = __builtin_shufflevector(r01, r23, 0, 8, 16, 24, 1, 9, 17, 25, 2, 10,
                                                18, 26, 3, 11, 19, 27);
      const Vec16 high = __builtin_shufflevector(r01, r23, 4, 12, 20, 28, 5, 13, 21, 29, 6, 14,
                                                 22, 30, 7, 15, 23, 31);
      SPARCL_UNROLL
      for (int i = I0; i < I1; ++i) {
        const Vec16 av = quads::broadcast_quad(a[i] + p);
        acc[i][0] = simd::multiply_add<16>(av, low, acc[i][0]);
        acc[i][1] = simd::multiply_add<16>(av, high, acc[i][1]);
      }
    }
  }

  // Column sums of the quads: lane c of the result adds lanes 4c .. 4c + 3 of low (c < 4) or
  // of high (c >= 4).
  SPARCL_INLINE static Vec8 fold(const Vec16& low, const Vec16& high) {
    const Vec16 halves = __builtin_shufflevector(low, high, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18,
                                                 20, 22, 24, 26, 28, 30) +
                         __builtin_shufflevector(low, high, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19,
                                                 21, 23, 25, 27, 29, 31);
    return __builtin_shufflevector(halves, halves, 0, 2, 4, 6, 8, 10, 12, 14) +
           __builtin_shufflevector(halves, halves, 1, 3, 5, 7, 9, 11, 13, 15);
  }
};
#endif

// Row functors that also ask the cache for the operand rows of a later block of the group
// define ahead(s), which the group tiles below call with each block's position s before its
// products (once per tile: with its first output vectors).
template <typename Rows>
concept LooksAhead = requires(const Rows& rows) { rows.ahead(int32_t{0}); };

// Which block's rows a looking-ahead tile asks for: the block kLookahead positions after s in
// the group's positions [begin, end), or past the end, one of the group's first blocks in the
// next tile. Position s holds block ids[s] (the input gradients' column order), or s.
struct Lookahead {
  static constexpr int32_t kLookahead = 2;
  const int32_t* ids;
  int32_t begin, end;
  int tile_rows, next_rows;  // rows of this tile and of the next (0: none)
  // The block `j` and the tile rows [first_row, first_row + rows) to ask for after position
  // s; false where there are none. (Values, not a callback: GCC deletes calls to a function
  // that only prefetches unless it inlines them, compiler.h.)
  SPARCL_INLINE bool target(int32_t s, int64_t* j, int* first_row, int* rows) const {
    int32_t t = s + kLookahead;
    *first_row = 0, *rows = tile_rows;
    if (t >= end) {
      t = begin + (t - end);
      if (t >= end || next_rows == 0) return false;
      *first_row = tile_rows, *rows = next_rows;
    }
    *j = ids ? ids[t] : t;
    return true;
  }
};

// Asks the cache (all levels) for `bytes` from `first` in each of `rows` rows row_bytes apart.
SPARCL_INLINE void prefetch_rows(const void* first, int rows, int64_t row_bytes,
                                 int64_t bytes) {
  const char* row = static_cast<const char*>(first);
  for (int i = 0; i < rows; ++i, row += row_bytes)
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(row + b, 0, 3);
}

// The ahead(s) of a row-major operand's tile rows (row i of block j at
// a + i * lda + group[j] * width): asks for the rows lookahead.target names.
template <typename T>
SPARCL_INLINE void prefetch_ahead(const Lookahead& lookahead, int32_t s, const T* a,
                                  int64_t lda, const int32_t* group, int64_t width) {
  int64_t j;
  int first_row, rows;
  if (!lookahead.target(s, &j, &first_row, &rows)) return;
  prefetch_rows(a + first_row * lda + static_cast<int64_t>(group[j]) * width, rows,
                lda * static_cast<int64_t>(sizeof(T)), width * static_cast<int64_t>(sizeof(T)));
}

// The tile of Pairs and Quads (Group): two accumulators per row, each block's rows
// accumulated by Group::accumulate_rows (in two half-loops on tall tiles, as accumulate_tile),
// the lane groups folded into the row's output vector at the store.
template <typename Group, int TN, typename Rows, typename Out>
void grouped_tile(const Rows& rows, const float* b, int64_t P, int64_t O, const int32_t* ids,
                  int32_t sb, int32_t se, int64_t o0, const float* init, const Out& out) {
  using Vec16 = simd::Vec<16>;
  Vec16 acc[TN][2];
  SPARCL_UNROLL
  for (int i = 0; i < TN; ++i) acc[i][0] = acc[i][1] = simd::zero<16>();
  const float* a[TN];
  for (int32_t s = sb; s < se; ++s) {
    if constexpr (LooksAhead<Rows>)
      if (o0 == 0) rows.ahead(s);
    const int64_t j = ids ? ids[s] : s;
    rows(j, a);
    const float* bb = b + j * P * O + o0;
    if constexpr (TN > kHalfTileRows) {
      Group::template accumulate_rows<0, TN / 2>(a, bb, P, O, acc);
      Group::template accumulate_rows<TN / 2, TN>(a, bb, P, O, acc);
    } else {
      Group::template accumulate_rows<0, TN>(a, bb, P, O, acc);
    }
  }
  constexpr int R = Group::kOutputWidth;
  const simd::Vec<R> start = init ? simd::load<R>(init + o0) : simd::zero<R>();
  SPARCL_UNROLL
  for (int i = 0; i < TN; ++i)
    simd::store<R>(out(i) + o0, start + Group::fold(acc[i][0], acc[i][1]));
}

// One register tile of the "stream the blocks of a group" passes:
//   out(i)[o0 + W q ...] = init[o0 + W q ...]
//       + sum over s in [sb, se), p < P of a_i(j)[p] * b_j[p, o0 + W q ...]
// with j = ids[s] (or s when ids is null), b_j = b + j * P * O a [P x O] row-major block, and
// a_i(j) the P contiguous operand values of tile row i for block j, given by rows(j, a).
// Each step broadcasts TN scalars and loads KV vectors of b for TN * KV multiply-adds.
template <int W, int TN, int KV, typename Rows, typename Out>
void accumulate_tile(const Rows& rows, const float* b, int64_t P, int64_t O, const int32_t* ids,
                     int32_t sb, int32_t se, int64_t o0, const float* init, const Out& out) {
#if SPARCL_PAIR_TILES
  if constexpr (W == 16 && KV == 1) {
    if (P % 2 == 0) return grouped_tile<Pairs, TN>(rows, b, P, O, ids, sb, se, o0, init, out);
  }
#endif
#if SPARCL_WIDE_GROUP_TILES
  if constexpr (W == 8 && KV == 1) {
    if (O == 8 && P % 4 == 0)
      return grouped_tile<Quads, TN>(rows, b, P, O, ids, sb, se, o0, init, out);
  }
#endif
  using V = simd::Vec<W>;
  V acc[TN][KV];
  SPARCL_UNROLL
  for (int q = 0; q < KV; ++q) {
    const V start = init ? simd::load<W>(init + o0 + W * q) : simd::zero<W>();
    SPARCL_UNROLL
    for (int i = 0; i < TN; ++i) acc[i][q] = start;
  }
  const float* a[TN];
  for (int32_t s = sb; s < se; ++s) {
    if constexpr (LooksAhead<Rows>)
      if (o0 == 0) rows.ahead(s);
    const int64_t j = ids ? ids[s] : s;
    rows(j, a);
    const float* bb = b + j * P * O + o0;
    if constexpr (W >= 16 && TN > kHalfTileRows) {
      accumulate_rows<W, KV, 0, TN / 2>(a, bb, P, O, acc);
      accumulate_rows<W, KV, TN / 2, TN>(a, bb, P, O, acc);
    } else {
      accumulate_rows<W, KV, 0, TN>(a, bb, P, O, acc);
    }
  }
  SPARCL_UNROLL
  for (int i = 0; i < TN; ++i) {
    float* row = out(i) + o0;
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q) simd::store<W>(row + W * q, acc[i][q]);
  }
}

// Output rows [0, count) x columns [0, O) (O a multiple of W) of one group, tile by tile.
// tile_rows(n) and then tile_out(n) return the operand-row and output-row functors of the
// tile starting at row n.
template <int W, typename TileRows, typename TileOut>
void accumulate_slab(int64_t count, const TileRows& tile_rows, const TileOut& tile_out,
                     const float* b, int64_t P, int64_t O, const int32_t* ids, int32_t sb,
                     int32_t se, const float* init) {
  for (int64_t n = 0; n < count; n += kTile) {
    const int tn = static_cast<int>(std::min<int64_t>(kTile, count - n));
    const auto& rows = tile_rows(n);  // a reference where the functor is large
    const auto out = tile_out(n);
    for (int64_t o = 0; o < O; o += kMaxVectors * W) {
      const int kv = static_cast<int>(std::min<int64_t>(kMaxVectors, (O - o) / W));
      with_constant<kTile>(tn, [&](auto TN) {
        with_constant<kMaxVectors>(kv, [&](auto KV) {
          accumulate_tile<W, decltype(TN)::value, decltype(KV)::value>(rows, b, P, O, ids, sb,
                                                                       se, o, init, out);
        });
      });
    }
  }
}

// Row pairs of a weight-gradient block: r-th grad_out row and r-th input row, by stride.
struct StridedRows {
  const float* dy;
  int64_t lddy;
  const float* x;
  int64_t ldx;
  const float* dy_row(int64_t r) const { return dy + r * lddy; }
  const float* x_row(int64_t r) const { return x + r * ldx; }
};

// Row pairs given as pointer lists (gathered rows, e.g. one kernel tap of a convolution).
struct GatheredRows {
  const float* const* dy;
  const float* const* x;
  const float* dy_row(int64_t r) const { return dy[r]; }
  const float* x_row(int64_t r) const { return x[r]; }
};

// GatheredRows that also prefetch the rows of the slice to come (next_dy, next_x: next_count
// pointers, dy_bytes and x_bytes from each), row r's while the first tile passes row r: the
// gathered rows of a convolution's weight gradient come from memory in a training step
// (the input saved in the forward), and the hardware prefetchers fell behind them.
struct PrefetchingGatheredRows : GatheredRows {
  const float* const* next_dy;
  const float* const* next_x;
  int64_t next_count, dy_bytes, x_bytes;
  SPARCL_INLINE void prefetch(int64_t r) const {
    if (r >= next_count) return;
    prefetch_rows(next_dy[r], 1, 0, dy_bytes);
    prefetch_rows(next_x[r], 1, 0, x_bytes);
  }
};

// out[i, W q ...] (+)= sum over r < count of dy_row(r)[m0 + i] * x_row(r)[k0 + W q ...] for
// one TM x KV-vector tile of a weight-gradient block.
template <int W, int TM, int KV, typename Rows>
void outer_product_tile(const Rows& rows, int64_t count, int64_t m0, int64_t k0, bool accumulate,
                        float* out, int64_t ldo) {
  using V = simd::Vec<W>;
  V acc[TM][KV];
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q)
      acc[i][q] = accumulate ? simd::load<W>(out + i * ldo + W * q) : simd::zero<W>();
  }
  constexpr bool prefetching = requires { rows.prefetch(int64_t{0}); };
  const bool first_tile = m0 == 0 && k0 == 0;
  for (int64_t r = 0; r < count; ++r) {
    if constexpr (prefetching)
      if (first_tile) rows.prefetch(r);
    const float* x_row = rows.x_row(r) + k0;
    const float* dy_row = opaque_pointer(rows.dy_row(r) + m0);
    V xv[KV];
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q) xv[q] = simd::load<W>(x_row + W * q);
    SPARCL_UNROLL
    for (int i = 0; i < TM; ++i) {
      const float d = dy_row[i];
      SPARCL_UNROLL
      for (int q = 0; q < KV; ++q) acc[i][q] = simd::multiply_add<W>(d, xv[q], acc[i][q]);
    }
  }
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q) simd::store<W>(out + i * ldo + W * q, acc[i][q]);
  }
}

// The narrow-block form of outer_product_tile, for blocks one vector wide (bk == W) that
// share a block row: each tile row's broadcast of grad_out feeds one vector of each of KV
// blocks (not KV vectors of one block), so a 16-wide AVX-512 block reuses each broadcast as
// often as a 32-wide one, or more (see kRunBlocks). Row pair r is rows.dy_row(r) (the block
// row's grad_out values) and rows.x_row(q, r) (block q's input values); block q writes
// out[q].
template <int W, int TM, int KV, typename Rows>
void outer_product_tile_blocks(const Rows& rows, int64_t count, int64_t m0, bool accumulate,
                               float* const* out) {
  using V = simd::Vec<W>;
  V acc[TM][KV];
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q)
      acc[i][q] = accumulate ? simd::load<W>(out[q] + (m0 + i) * W) : simd::zero<W>();
  }
  for (int64_t r = 0; r < count; ++r) {
    const float* dy_row = opaque_pointer(rows.dy_row(r) + m0);
    V xv[KV];
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q) xv[q] = simd::load<W>(rows.x_row(q, r));
    SPARCL_UNROLL
    for (int i = 0; i < TM; ++i) {
      const float d = dy_row[i];
      SPARCL_UNROLL
      for (int q = 0; q < KV; ++q) acc[i][q] = simd::multiply_add<W>(d, xv[q], acc[i][q]);
    }
  }
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    SPARCL_UNROLL
    for (int q = 0; q < KV; ++q) simd::store<W>(out[q] + (m0 + i) * W, acc[i][q]);
  }
}

// Rows and blocks of a narrow-block tile: at most the wide tile's kTile x kMaxVectors
// accumulator registers, in rows that divide the power-of-two block sides (8 where 24
// accumulators fit: AVX-512 takes 8 rows x 3 blocks; else 4), at most 4 blocks.
constexpr int kRunRows = kTile * kMaxVectors >= 24 ? 8 : 4;
constexpr int kRunBlocks = std::min(4, kTile * kMaxVectors / kRunRows);
// Blocks 8 wide where vectors hold 16 floats (AVX-512) run in pairs, one block per half
// vector (outer_product_tile_block_pairs): runs of up to twice as many blocks.
constexpr bool kPairedNarrowRuns = SPARCL_WIDE_GROUP_TILES;
template <int W>
constexpr int kRunBlocksOf = kPairedNarrowRuns && W == 8 ? 2 * kRunBlocks : kRunBlocks;
constexpr int kMaxRunBlocks = kPairedNarrowRuns ? 2 * kRunBlocks : kRunBlocks;

// Row pairs of a run of blocks by stride: grad_out row r at dy + r * lddy, block q's input
// row at x + r * ldx + x_offset[q].
struct StridedRunRows {
  const float* dy;
  int64_t lddy;
  const float* x;
  int64_t ldx;
  const int64_t* x_offset;
  const float* dy_row(int64_t r) const { return dy + r * lddy; }
  const float* x_row(int q, int64_t r) const { return x + r * ldx + x_offset[q]; }
};

// Row pairs of a run of blocks as pointer lists (gathered rows of a convolution).
template <int Rows>
struct GatheredRunRows {
  const float* const* dy;
  const float* const (*x)[Rows];
  const float* dy_row(int64_t r) const { return dy[r]; }
  const float* x_row(int q, int64_t r) const { return x[q][r]; }
};

// The same with block q's input row at a fixed shift from the pixel's row x[r] (zero-padded
// input images).
struct ShiftedRunRows {
  const float* const* dy;
  const float* const* x;
  const int64_t* shift;
  const float* dy_row(int64_t r) const { return dy[r]; }
  const float* x_row(int q, int64_t r) const { return x[r] + shift[q]; }
};

#if SPARCL_WIDE_GROUP_TILES
// outer_product_tile_blocks for 8-wide blocks on 16-float vectors: blocks 2q and 2q + 1 share
// vector q (low and high half), so each broadcast of grad_out feeds full-width multiply-adds
// (Zen 5, 8x8 blocks: 256-bit ones run at half its 512-bit rate). A missing block 2q + 1
// (odd `blocks`) repeats block 2q's rows in the high half and is not stored.
template <int TM, int KP, typename Rows>
void outer_product_tile_block_pairs(const Rows& rows, int blocks, int64_t count, int64_t m0,
                                    bool accumulate, float* const* out) {
  using V = simd::Vec<16>;
  using Half = simd::Vec<8>;
  const auto join = [](const Half& low, const Half& high) -> V {
    return __builtin_shufflevector(low, high, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                                   15);
  };
  int second[KP];  // the block in vector q's high half
  SPARCL_UNROLL
  for (int q = 0; q < KP; ++q) second[q] = 2 * q + 1 < blocks ? 2 * q + 1 : 2 * q;
  V acc[TM][KP];
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    SPARCL_UNROLL
    for (int q = 0; q < KP; ++q)
      acc[i][q] = accumulate ? join(simd::load<8>(out[2 * q] + (m0 + i) * 8),
                                    simd::load<8>(out[second[q]] + (m0 + i) * 8))
                             : simd::zero<16>();
  }
  for (int64_t r = 0; r < count; ++r) {
    const float* dy_row = opaque_pointer(rows.dy_row(r) + m0);
    V xv[KP];
    SPARCL_UNROLL
    for (int q = 0; q < KP; ++q)
      xv[q] = join(simd::load<8>(rows.x_row(2 * q, r)), simd::load<8>(rows.x_row(second[q], r)));
    SPARCL_UNROLL
    for (int i = 0; i < TM; ++i) {
      const float d = dy_row[i];
      SPARCL_UNROLL
      for (int q = 0; q < KP; ++q) acc[i][q] = simd::multiply_add<16>(d, xv[q], acc[i][q]);
    }
  }
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    SPARCL_UNROLL
    for (int q = 0; q < KP; ++q) {
      simd::store<8>(out[2 * q] + (m0 + i) * 8,
                     __builtin_shufflevector(acc[i][q], acc[i][q], 0, 1, 2, 3, 4, 5, 6, 7));
      if (second[q] != 2 * q)
        simd::store<8>(out[second[q]] + (m0 + i) * 8,
                       __builtin_shufflevector(acc[i][q], acc[i][q], 8, 9, 10, 11, 12, 13, 14,
                                               15));
    }
  }
}
#endif

// Up to kRunBlocksOf<W> whole bm x W blocks of one block row from `count` row pairs (see
// outer_product_tile_blocks); block q's result goes to out[q].
template <int W, typename Rows>
void outer_product_blocks(const Rows& rows, int blocks, int64_t count, int64_t bm,
                          bool accumulate, float* const* out) {
  for (int64_t m = 0; m < bm; m += kRunRows) {
    const int tm = static_cast<int>(std::min<int64_t>(kRunRows, bm - m));
#if SPARCL_WIDE_GROUP_TILES
    if constexpr (W == 8) {
      with_constant<kRunRows>(tm, [&](auto TM) {
        with_constant<kRunBlocks>((blocks + 1) / 2, [&](auto KP) {
          outer_product_tile_block_pairs<decltype(TM)::value, decltype(KP)::value>(
              rows, blocks, count, m, accumulate, out);
        });
      });
      continue;
    }
#endif
    with_constant<kRunRows>(tm, [&](auto TM) {
      with_constant<kRunBlocks>(blocks, [&](auto KV) {
        outer_product_tile_blocks<W, decltype(TM)::value, decltype(KV)::value>(
            rows, count, m, accumulate, out);
      });
    });
  }
}

// A whole bm x bk weight-gradient block (bk a multiple of W) from `count` row pairs.
template <int W, typename Rows>
void outer_product_block(const Rows& rows, int64_t count, int64_t bm, int64_t bk,
                         bool accumulate, float* out) {
  for (int64_t m = 0; m < bm; m += kTile) {
    const int tm = static_cast<int>(std::min<int64_t>(kTile, bm - m));
    for (int64_t k = 0; k < bk; k += kMaxVectors * W) {
      const int kv = static_cast<int>(std::min<int64_t>(kMaxVectors, (bk - k) / W));
      float* tile_out = out + m * bk + k;
      with_constant<kTile>(tm, [&](auto TM) {
        with_constant<kMaxVectors>(kv, [&](auto KV) {
          outer_product_tile<W, decltype(TM)::value, decltype(KV)::value>(rows, count, m, k, accumulate, tile_out, bk);
        });
      });
    }
  }
}

}  // namespace detail
}  // namespace sparcl::SPARCL_ISA_NS
