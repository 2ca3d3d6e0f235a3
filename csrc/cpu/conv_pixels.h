// Pixel arithmetic of the channels-last implicit GEMM, shared by the fp32 (conv_kernels.h) and
// bf16 (bf16_kernels.h) convolution kernels. Included before any instruction-set pragma (see
// isa_prelude.h), so one baseline copy of these inline functions serves every copy.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "block_sparse_conv.h"
#include "compiler.h"

namespace sparcl::conv_pixels {

struct Pixel {
  int64_t image, row, col;
};

inline Pixel pixel_of(int64_t index, int64_t height, int64_t width) {
  return {index / (height * width), (index / width) % height, index % width};
}

// Elements an array's index moves per column, row and image of a pixel grid.
struct GridSteps {
  int64_t col, row, image;
};

// Consecutive pixels from `index` on, without the three integer divisions of pixel_of per
// pixel: at a few blocks per tile those cost as much as the tile's multiply-adds. With K
// GridSteps it also carries each pixel's index into K arrays, by additions: locating each
// tile row anew took three multiplications per array, and the tile set-up as a whole a third
// of a 32-channel forward with one stored block (perf).
template <int K = 0>
class PixelWalk {
 public:
  PixelWalk(int64_t index, int64_t height, int64_t width,
            const std::array<GridSteps, K>& steps = {})
      : pixel_(pixel_of(index, height, width)), height_(height), width_(width), steps_(steps) {
    for (int k = 0; k < K; ++k) {
      image_at_[k] = pixel_.image * steps[k].image;
      row_at_[k] = image_at_[k] + pixel_.row * steps[k].row;
      at_[k] = row_at_[k] + pixel_.col * steps[k].col;
    }
  }

  // The current pixel's index into array k.
  int64_t at(int k) const { return at_[k]; }

  // The current pixel; the walk moves on to the next one.
  Pixel next() {
    const Pixel current = pixel_;
    for (int k = 0; k < K; ++k) at_[k] += steps_[k].col;
    if (++pixel_.col == width_) {
      pixel_.col = 0;
      if (++pixel_.row == height_) {
        pixel_.row = 0, ++pixel_.image;
        for (int k = 0; k < K; ++k) row_at_[k] = image_at_[k] += steps_[k].image;
      } else {
        for (int k = 0; k < K; ++k) row_at_[k] += steps_[k].row;
      }
      for (int k = 0; k < K; ++k) at_[k] = row_at_[k];
    }
    return current;
  }

 private:
  Pixel pixel_;
  int64_t height_, width_;
  std::array<GridSteps, K> steps_;
  int64_t image_at_[K > 0 ? K : 1], row_at_[K > 0 ? K : 1], at_[K > 0 ? K : 1];
};

// Kernels of at most this many taps (3x3 and smaller) get per-tile tap tables: a tile with
// a pixel on the image border looks up the rows of each tap (or shift) once instead of
// testing every row of every block, which cost as much as the multiply-adds of blocks one
// vector wide on images of 8x8 and less, where no 12-pixel tile is clear of the border.
constexpr int kTableTaps = 9;

// Kernel tap `tap`'s row and column shift from an output pixel's scaled position
// (oh * stride_h, ow * stride_w) to the input pixel it reads.
inline int32_t tap_row_shift(const ConvGeometry& g, int64_t tap) {
  return static_cast<int32_t>((tap / g.kernel_w) * g.dilation_h - g.pad_h);
}
inline int32_t tap_col_shift(const ConvGeometry& g, int64_t tap) {
  return static_cast<int32_t>((tap % g.kernel_w) * g.dilation_w - g.pad_w);
}

// Row (r, c) of image `image` of a height x width grid of pixels of `ld` elements at `data`,
// or `zeros` outside the grid.
template <typename T>
inline const T* grid_row(const T* data, const T* zeros, int64_t image, int64_t r, int64_t c,
                         int64_t height, int64_t width, int64_t ld) {
  const bool inside = r >= 0 && r < height && c >= 0 && c < width;
  return inside ? data + ((image * height + r) * width + c) * ld : zeros;
}

// Rows [0, count) of a border tile's table under one shift: base[i] (a pixel of a height x
// width grid of `ld`-element pixels, at grid position (row[i], col[i])) moved `dr` rows and `dc`
// columns, or `zeros` where that leaves the grid. From the located bases, with no
// multiplication per row (grid_row's three per row and shift were part of the third of a
// 32-channel forward that perf found outside the multiply-add tiles; 64-channel forwards and
// input gradients 1.02-1.16x faster without them, Zen 5).
template <typename T>
SPARCL_INLINE void shifted_rows(const T* const* base, const int64_t* row, const int64_t* col,
                                int count, int64_t dr, int64_t dc, int64_t height, int64_t width,
                                int64_t ld, const T* zeros, const T** out) {
  const uintptr_t shift = static_cast<uintptr_t>((dr * width + dc) * ld) * sizeof(T);
  for (int i = 0; i < count; ++i) {
    const bool inside = static_cast<uint64_t>(row[i] + dr) < static_cast<uint64_t>(height) &&
                        static_cast<uint64_t>(col[i] + dc) < static_cast<uint64_t>(width);
    out[i] = inside ? reinterpret_cast<const T*>(reinterpret_cast<uintptr_t>(base[i]) + shift)
                    : zeros;
  }
}

// Asks the cache for `bytes` from `address` on, line by line. Addresses are computed as
// integers: the ranges may run past the operand (prefetches never fault).
SPARCL_INLINE void prefetch_bytes(uintptr_t address, int64_t bytes) {
  constexpr int64_t kLine = 64;
  for (int64_t b = 0; b < bytes; b += kLine)
    __builtin_prefetch(reinterpret_cast<const void*>(address + static_cast<uintptr_t>(b)), 0, 2);
}

// Asks the cache for the rows a later tile writes: `count` rows of `bytes`, each `shift`
// elements past out[i]. A pass writes each output line once, so without it the tile's stores
// wait on one line fill after another once the activations have left the caches (a 64-channel
// forward at batch 32 from memory: 1.2x faster).
template <typename T>
SPARCL_INLINE void prefetch_output(T* const* out, int count, int64_t shift, int64_t bytes) {
  for (int i = 0; i < count; ++i)
    prefetch_bytes(reinterpret_cast<uintptr_t>(out[i]) + static_cast<uintptr_t>(shift) *
                                                              static_cast<uintptr_t>(sizeof(T)),
                   bytes);
}

// Positions p of a grid dimension of `extent` for which p + min_shift .. p + max_shift all lie
// inside it are those with 0 <= p + min_shift < the returned span: one unsigned compare per
// pixel. Clamped at 0: shifts wider apart than the grid leave no position inside.
inline uint64_t inside_span(int64_t extent, int64_t min_shift, int64_t max_shift) {
  return static_cast<uint64_t>(std::max<int64_t>(0, extent - (max_shift - min_shift)));
}

// Where each stored block reads the input, relative to an output pixel (oh, ow): row
// oh * stride_h + row[j], column ow * stride_w + col[j], channels channel[j] ... + bk, which
// is `offset[j]` elements from the input row of (oh * stride_h, ow * stride_w) when both lie
// inside the input. Computed once per call so that the row functors do no division.
struct BlockTaps {
  const int32_t* row;
  const int32_t* col;
  const int32_t* channel;
  const int32_t* tap;  // the block's kernel tap
  const int64_t* offset;
  // With at most kTableTaps kernel taps (else `tabled` is false): each tap's row and column
  // shift, and which taps some block uses.
  bool tabled;
  int taps;
  uint32_t used;  // bit t: some block reads tap t
  int32_t tap_row[kTableTaps], tap_col[kTableTaps];
  // The extreme row and column shifts over the stored blocks (0 without blocks): a tile is
  // interior when the taps its blocks use land inside the input, not every tap of the kernel.
  int32_t min_row = 0, max_row = 0, min_col = 0, max_col = 0;

  // The taps blocks [begin, end) read (for TapRows::tabulate).
  uint32_t used_by(int64_t begin, int64_t end) const {
    uint32_t bits = 0;
    if (tabled)
      for (int64_t j = begin; j < end; ++j) bits |= 1u << tap[j];
    return bits;
  }
};

// int32 entries of block_taps' storage.
inline int64_t block_taps_ints(int64_t nnz) { return 6 * nnz + 2; }

inline BlockTaps block_taps(const BlockLayoutView& L, const ConvGeometry& g, int32_t* storage) {
  int32_t *row = storage, *col = storage + L.nnz, *channel = storage + 2 * L.nnz;
  int32_t* tap_of = storage + 3 * L.nnz;
  int64_t* offset = reinterpret_cast<int64_t*>(storage + ((4 * L.nnz + 1) & ~int64_t{1}));
  const int64_t taps = g.kernel_h * g.kernel_w;
  BlockTaps result{row, col, channel, tap_of, offset, taps <= kTableTaps,
                   static_cast<int>(taps), 0u, {}, {}};
  for (int64_t t = 0; t < std::min<int64_t>(taps, kTableTaps); ++t) {
    result.tap_row[t] = tap_row_shift(g, t);
    result.tap_col[t] = tap_col_shift(g, t);
  }
  for (int64_t j = 0; j < L.nnz; ++j) {
    const int64_t column = static_cast<int64_t>(L.col_indices[j]) * L.bk;
    const int64_t tap = column / g.channels;
    row[j] = tap_row_shift(g, tap);
    col[j] = tap_col_shift(g, tap);
    channel[j] = static_cast<int32_t>(column % g.channels);
    tap_of[j] = static_cast<int32_t>(tap);
    offset[j] = (row[j] * g.in_w + col[j]) * g.channels + channel[j];
    if (result.tabled) result.used |= 1u << tap;
    if (j == 0 || row[j] < result.min_row) result.min_row = row[j];
    if (j == 0 || row[j] > result.max_row) result.max_row = row[j];
    if (j == 0 || col[j] < result.min_col) result.min_col = col[j];
    if (j == 0 || col[j] > result.max_col) result.max_col = col[j];
  }
  return result;
}

// The forward's operand rows of up to N output pixels (a tile), of x with element type T:
// row i of block j is x at the input pixel block j's tap reaches from pixel i, at the block's
// first channel, or `zeros` (at least `channels` long) inside the padding. A tile whose
// pixels see every tap inside the input (most of them) takes one addition per row and block;
// the others one too after `tabulate`, where the kernel is small enough for a table.
template <typename T, int N>
struct TapRows {
  const T* x;
  const T* zeros;
  const ConvGeometry* g;
  const BlockTaps* taps;
  bool interior;        // every stored block's tap of every pixel lands inside the input
  int64_t image[N];
  int64_t row[N];        // oh * stride_h
  int64_t col[N];        // ow * stride_w
  const T* base[N];      // x at (image, oh * stride_h, ow * stride_w), when interior
  const T* table[kTableTaps][N];  // after tabulate: x at each used tap's pixel, channel 0

  const T* at(int64_t j, int i) const {
    if (interior) return base[i] + taps->offset[j];
    if (taps->tabled) return table[taps->tap[j]][i] + taps->channel[j];
    return grid_row(x + taps->channel[j], zeros, image[i], row[i] + taps->row[j],
                    col[i] + taps->col[j], g->in_h, g->in_w, g->channels);
  }

  // The walk over output pixels locate_tile takes: x's index of each pixel's (oh * stride_h,
  // ow * stride_w), oh * stride_h and ow * stride_w.
  using Walk = PixelWalk<3>;
  static Walk walk_from(int64_t pixel, const ConvGeometry& g) {
    const int64_t ld = g.channels;
    return Walk(pixel, g.out_h, g.out_w,
                {GridSteps{g.stride_w * ld, g.stride_h * g.in_w * ld, g.in_h * g.in_w * ld},
                 GridSteps{0, g.stride_h, 0}, GridSteps{g.stride_w, 0, 0}});
  }

  // Sets the tile's rows to the next `count` output pixels of `walk`, and `interior` to
  // whether the taps of the stored blocks land inside the input for all of them.
  void locate_tile(Walk& walk, int count) {
    // In locals: the stores to the rows would otherwise make the compiler reload g's fields
    // for every pixel.
    const T* const input = x;
    const int64_t low_h = taps->min_row, low_w = taps->min_col;
    const uint64_t span_h = inside_span(g->in_h, low_h, taps->max_row);
    const uint64_t span_w = inside_span(g->in_w, low_w, taps->max_col);
    bool inside = true;
    for (int i = 0; i < count; ++i) {
      const int64_t r = walk.at(1), c = walk.at(2);
      base[i] = input + walk.at(0);
      row[i] = r, col[i] = c;
      image[i] = walk.next().image;
      inside &= (static_cast<uint64_t>(r + low_h) < span_h) &
                (static_cast<uint64_t>(c + low_w) < span_w);
    }
    interior = inside;
  }

  // After rows [0, count) are located: prefetches what the tile `ahead` output pixels
  // further along each row reads, in the kernel rows the previous output row did not read
  // (the last one at stride 1), the stride's columns of every channel. Where the activations
  // come from memory the hardware prefetchers fell behind the tile's image rows.
  SPARCL_INLINE void prefetch_ahead(int count, int64_t ahead) const {
    const int64_t ld = g->channels * static_cast<int64_t>(sizeof(T));
    const int64_t row_bytes = g->in_w * ld;
    const int64_t fresh_rows = (g->stride_h + g->dilation_h - 1) / g->dilation_h;
    const int64_t first = g->kernel_h - std::min(g->kernel_h, fresh_rows);
    const int64_t shift = (ahead * g->stride_w - g->pad_w) * ld +
                          (first * g->dilation_h - g->pad_h) * row_bytes;
    for (int i = 0; i < count; ++i) {
      uintptr_t address = reinterpret_cast<uintptr_t>(base[i]) + static_cast<uintptr_t>(shift);
      for (int64_t r = first; r < g->kernel_h; ++r, address += g->dilation_h * row_bytes)
        prefetch_bytes(address, g->stride_w * ld);
    }
  }

  // After rows [0, count) are located: the table of a border tile, for the taps in `used`
  // (bit t: tap t; those of the blocks the tile multiplies).
  void tabulate(int count, uint32_t used) {
    if (interior || !taps->tabled) return;
    for (int t = 0; t < taps->taps; ++t)
      if (used >> t & 1u)
        shifted_rows(base, row, col, count, taps->tap_row[t], taps->tap_col[t], g->in_h,
                     g->in_w, g->channels, zeros, table[t]);
  }
};

// Where tap `tap` of output pixel `p` reads the input, or -1 inside the padding.
inline int64_t input_pixel(const ConvGeometry& g, const Pixel& p, int64_t tap) {
  const int64_t ih = p.row * g.stride_h - g.pad_h + (tap / g.kernel_w) * g.dilation_h;
  const int64_t iw = p.col * g.stride_w - g.pad_w + (tap % g.kernel_w) * g.dilation_w;
  if (ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) return -1;
  return (p.image * g.in_h + ih) * g.in_w + iw;
}

// The output pixel whose tap `tap` reads input pixel `q`, or -1 if there is none.
inline int64_t output_pixel(const ConvGeometry& g, const Pixel& q, int64_t tap) {
  const int64_t oh_scaled = q.row + g.pad_h - (tap / g.kernel_w) * g.dilation_h;
  const int64_t ow_scaled = q.col + g.pad_w - (tap % g.kernel_w) * g.dilation_w;
  if (oh_scaled < 0 || ow_scaled < 0 || oh_scaled % g.stride_h || ow_scaled % g.stride_w)
    return -1;
  const int64_t oh = oh_scaled / g.stride_h, ow = ow_scaled / g.stride_w;
  if (oh >= g.out_h || ow >= g.out_w) return -1;
  return (q.image * g.out_h + oh) * g.out_w + ow;
}

// ------------------------------------------------------------------ input-gradient phases
//
// Kernel tap (r, c) sends gradient only to input rows congruent to r * dilation_h - pad_h
// modulo stride_h (columns likewise). The input-gradient passes therefore walk the input
// pixels phase by phase, a phase being (row mod stride_h, column mod stride_w): every block
// belongs to exactly one phase, in which it reaches an output pixel from every input pixel
// except at the borders, so no multiply-add is spent on the (pixel, tap) pairs of a strided
// convolution that have no output pixel (3 in 4 at stride 2). Within a (phase, channel
// block) group, the blocks of all taps stream through one register tile, stored once.

inline int64_t positive_mod(int64_t a, int64_t m) { return ((a % m) + m) % m; }
inline int64_t floor_div(int64_t a, int64_t m) { return (a - positive_mod(a, m)) / m; }

// Input rows (or columns) of phase `first` among `size` with stride `stride`.
inline int64_t phase_extent(int64_t size, int64_t first, int64_t stride) {
  return first < size ? (size - first + stride - 1) / stride : 0;
}

struct GradInputPlan {
  int64_t phases;                // stride_h * stride_w
  // [phases * channel_blocks + 1], group = phase * channel_blocks + channel block: one
  // phase's groups are contiguous, so a phase's work can be split like a linear pass's.
  const int32_t* group_offsets;
  const int32_t* group_blocks;   // [nnz] block ids by group, in tap order
  const int32_t* shift_h;        // [nnz] output row = phase row index + shift_h[block]
  const int32_t* shift_w;        // [nnz] output column likewise
  const int64_t* offset;         // [nnz] grad_out offset (elements) of that pixel and block row
  int64_t min_h, max_h, min_w, max_w;  // extreme shifts over all blocks
  // The distinct (shift_h, shift_w) pairs when there are at most kTableTaps of them (else
  // `shifts` is 0), and each block's among them: border tiles tabulate their rows per pair.
  const int32_t* shift_id;       // [nnz]
  const uint32_t* group_shifts;  // [groups] which shifts a group's blocks use (bit shift_id)
  int shifts;
  int32_t table_h[kTableTaps], table_w[kTableTaps];
};

// int32 entries of a plan's storage before its 8-byte grad_out offsets, and in all.
inline int64_t plan_index_ints(const BlockLayoutView& L, const ConvGeometry& g) {
  const int64_t groups = g.channels / L.bk * g.stride_h * g.stride_w;
  return (2 * groups + 1 + 5 * L.nnz + 1) & ~int64_t{1};
}

inline int64_t plan_ints(const BlockLayoutView& L, const ConvGeometry& g) {
  return plan_index_ints(L, g) + 2 * L.nnz;
}

// The plan in `storage` (plan_ints(L, g) entries, 8-byte aligned).
inline GradInputPlan plan_grad_input(const BlockLayoutView& L, const ConvGeometry& g,
                                     int32_t* storage) {
  const int64_t channel_blocks = g.channels / L.bk, phases = g.stride_h * g.stride_w;
  const int64_t groups = channel_blocks * phases;
  int32_t* offsets = storage;
  int32_t* blocks = offsets + groups + 1;
  int32_t* shift_h = blocks + L.nnz;
  int32_t* shift_w = shift_h + L.nnz;
  int32_t* group_of = shift_w + L.nnz;
  int32_t* shift_id = group_of + L.nnz;
  uint32_t* group_shifts = reinterpret_cast<uint32_t*>(shift_id + L.nnz);
  int64_t* offset = reinterpret_cast<int64_t*>(offsets + plan_index_ints(L, g));
  std::fill_n(offsets, groups + 1, 0);
  int64_t min_h = 0, max_h = 0, min_w = 0, max_w = 0;
  for (int64_t j = 0; j < L.nnz; ++j) {
    const int64_t col = L.col_indices[j], tap = col * L.bk / g.channels;
    const int64_t r_off = tap_row_shift(g, tap), c_off = tap_col_shift(g, tap);
    const int64_t ph = positive_mod(r_off, g.stride_h), pw = positive_mod(c_off, g.stride_w);
    shift_h[j] = static_cast<int32_t>((ph - r_off) / g.stride_h);  // exact division
    shift_w[j] = static_cast<int32_t>((pw - c_off) / g.stride_w);
    group_of[j] =
        static_cast<int32_t>((ph * g.stride_w + pw) * channel_blocks + col % channel_blocks);
    offset[j] = (shift_h[j] * g.out_w + shift_w[j]) * L.rows() +
                static_cast<int64_t>(L.row_indices[j]) * L.bm;
    min_h = j ? std::min<int64_t>(min_h, shift_h[j]) : shift_h[j];
    max_h = j ? std::max<int64_t>(max_h, shift_h[j]) : shift_h[j];
    min_w = j ? std::min<int64_t>(min_w, shift_w[j]) : shift_w[j];
    max_w = j ? std::max<int64_t>(max_w, shift_w[j]) : shift_w[j];
    ++offsets[group_of[j] + 1];
  }
  for (int64_t k = 0; k < groups; ++k) offsets[k + 1] += offsets[k];
  int shifts = 0;
  int32_t table_h[kTableTaps] = {}, table_w[kTableTaps] = {};
  for (int64_t j = 0; j < L.nnz; ++j) {
    int s = 0;
    while (s < shifts && (table_h[s] != shift_h[j] || table_w[s] != shift_w[j])) ++s;
    if (s == shifts) {
      if (shifts == kTableTaps) {
        shifts = -1;  // too many to tabulate
        break;
      }
      table_h[s] = shift_h[j], table_w[s] = shift_w[j], ++shifts;
    }
    shift_id[j] = s;
  }
  std::fill_n(group_shifts, groups, 0u);
  if (shifts > 0)
    for (int64_t j = 0; j < L.nnz; ++j) group_shifts[group_of[j]] |= 1u << shift_id[j];
  // Fill in transpose (tap-major) order so each group lists its taps in order.
  std::vector<int32_t> cursor(offsets, offsets + groups);
  for (int64_t s = 0; s < L.nnz; ++s) {
    const int32_t j = L.transpose_block_ids[s];
    blocks[cursor[group_of[j]]++] = j;
  }
  GradInputPlan plan{phases, offsets, blocks, shift_h, shift_w, offset, min_h, max_h,
                     min_w, max_w, shift_id, group_shifts, std::max(shifts, 0), {}, {}};
  std::copy_n(table_h, kTableTaps, plan.table_h);
  std::copy_n(table_w, kTableTaps, plan.table_w);
  return plan;
}

// The input gradient's operand rows of up to N input pixels of one phase (a tile), of grad_out
// with element type T (`cout` channels): row i (image, phase row a, phase column b) of block j
// is grad_out at the output pixel the block's shift maps it to, at the block's first output
// channel, or `zeros` (at least `cout` long) at the borders. A tile whose pixels reach an
// output pixel under every block's shift takes one addition per row and block; the others
// one too after `tabulate`, where the shifts are few enough for a table.
template <typename T, int N>
struct PhaseRows {
  const T* dy;
  const T* zeros;
  const ConvGeometry* g;
  const GradInputPlan* plan;
  const int32_t* row_indices;  // the layout's
  int64_t bm, cout;
  bool interior;
  int64_t image[N], a[N], b[N];
  const T* base[N];  // grad_out at (image, a, b), when interior
  const T* table[kTableTaps][N];  // after tabulate: grad_out under each shift, channel 0

  const T* at(int64_t j, int i) const {
    if (interior) return base[i] + plan->offset[j];
    const int64_t channel = static_cast<int64_t>(row_indices[j]) * bm;
    if (plan->shifts) return table[plan->shift_id[j]][i] + channel;
    return grid_row(dy + channel, zeros, image[i], a[i] + plan->shift_h[j],
                    b[i] + plan->shift_w[j], g->out_h, g->out_w, cout);
  }

  // The walk over the pixels of stride phase (ph, pw) locate_tile takes: grad_out's index of
  // each phase pixel (image, a, b), and grad_x's of its input pixel (ph + a * stride_h,
  // pw + b * stride_w) less that of (ph, pw).
  using Walk = PixelWalk<2>;
  static Walk walk_from(int64_t pixel, int64_t ph, int64_t pw, const ConvGeometry& g,
                        int64_t cout) {
    const int64_t cin = g.channels;
    return Walk(pixel, phase_extent(g.in_h, ph, g.stride_h), phase_extent(g.in_w, pw, g.stride_w),
                {GridSteps{cout, g.out_w * cout, g.out_h * g.out_w * cout},
                 GridSteps{g.stride_w * cin, g.stride_h * g.in_w * cin, g.in_h * g.in_w * cin}});
  }

  // Sets the tile's rows to the next `count` phase pixels of `walk`, and `interior` to
  // whether every block's shift keeps them all inside grad_out; pixel[i] = row i's pixel in
  // `phase_dx`, grad_x at the phase's first pixel.
  template <typename Out>
  void locate_tile(Walk& walk, int count, Out* phase_dx, Out** pixel) {
    // In locals, and one unsigned test per dimension, as TapRows::locate_tile.
    const T* const out = dy;
    const int64_t min_h = plan->min_h, min_w = plan->min_w;
    const uint64_t span_h = inside_span(g->out_h, min_h, plan->max_h);
    const uint64_t span_w = inside_span(g->out_w, min_w, plan->max_w);
    bool inside = true;
    for (int i = 0; i < count; ++i) {
      base[i] = out + walk.at(0);
      pixel[i] = phase_dx + walk.at(1);
      const Pixel q = walk.next();
      image[i] = q.image, a[i] = q.row, b[i] = q.col;
      inside &= (static_cast<uint64_t>(q.row + min_h) < span_h) &
                (static_cast<uint64_t>(q.col + min_w) < span_w);
    }
    interior = inside;
  }

  // After rows [0, count) are located: prefetches the grad_out rows of the tile `ahead`
  // phase pixels further along each row, under the largest row shift (the row the previous
  // phase row did not read; as TapRows::prefetch_ahead).
  SPARCL_INLINE void prefetch_ahead(int count, int64_t ahead) const {
    const int64_t ld = cout * static_cast<int64_t>(sizeof(T)), row_bytes = g->out_w * ld;
    const int64_t shift = (ahead + plan->min_w) * ld + plan->max_h * row_bytes;
    for (int i = 0; i < count; ++i)
      prefetch_bytes(reinterpret_cast<uintptr_t>(base[i]) + static_cast<uintptr_t>(shift), ld);
  }

  // After rows [0, count) are located: the table of a border tile, for the shifts in `used`
  // (bit s: shift s; those of the groups the tile multiplies, from group_shifts).
  void tabulate(int count, uint32_t used) {
    if (interior || !plan->shifts) return;
    for (int s = 0; s < plan->shifts; ++s)
      if (used >> s & 1u)
        shifted_rows(base, a, b, count, plan->table_h[s], plan->table_w[s], g->out_h, g->out_w,
                     cout, zeros, table[s]);
  }
};

}  // namespace sparcl::conv_pixels
