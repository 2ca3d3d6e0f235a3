// CPU kernels for a 2-D convolution whose weight is block-sparse, as an implicit GEMM,
// compiled once per instruction set (see isa_kernels.h).
//
// Tensors are channels-last: x [N, H, W, C], y / grad_out [N, OH, OW, Cout]. The weight is the
// GEMM view [Cout, taps * C] with column = tap * C + channel, cut into bm x bk blocks, so one
// block is bm output channels x bk input channels at one kernel tap (bk divides C). Instead
// of materialising the patch matrix (kh * kw times the input), every micro-kernel tile
// gathers, per block, the input (or output-gradient) rows its pixels read at that tap, and
// points padding pixels at a zero row. The register tiles are the linear kernels' ones.
#pragma once

#include "block_sparse_conv.h"
#include "conv_pixels.h"
#include "microkernels.h"
#include "panels.h"
#include "partition.h"

namespace sparcl::SPARCL_ISA_NS {
namespace conv {

using detail::kTile;
using detail::run_parallel;

constexpr int64_t kPixelChunk = 8 * kTile;  // output (or input) pixels per walk

// Pixels [*begin, *end) of thread t of nt over `pixels`: contiguous, in whole tiles, as even
// as tiles allow. (Shares of whole kPixelChunks had given two threads 288 and 224 of the 512
// pixels of 4x4 images at batch 32: the pass waited 11 % of its time.)
inline void pixel_share(int64_t pixels, int t, int nt, int64_t* begin, int64_t* end) {
  int64_t first, last;
  even_share((pixels + kTile - 1) / kTile, t, nt, &first, &last);
  *begin = std::min(pixels, first * kTile);
  *end = std::min(pixels, last * kTile);
}

constexpr int64_t kSliceRows = 64;   // pixels per weight-gradient slice
// The same for a block wider than a vector, whose accumulators are stored and reloaded for
// every tile of its rows at each slice: twice the pixels (Zen 5, 64-512 channels, with
// grad_out and input rows by pointer steps: 32x32 blocks 1.04-1.09x, AVX2 32x32 and 16x16
// 1.01-1.1x; runs of narrower blocks gained nothing from 128 and lost 0.92x on AVX2 at
// stride 2, and keep kSliceRows).
constexpr int64_t kBlockSliceRows = 128;

using conv_pixels::BlockTaps;
using conv_pixels::input_pixel;
using conv_pixels::output_pixel;
using conv_pixels::Pixel;
using conv_pixels::pixel_of;
using conv_pixels::PixelWalk;
using conv_pixels::GradInputPlan;
using conv_pixels::phase_extent;
using conv_pixels::plan_grad_input;
using conv_pixels::floor_div;
using conv_pixels::positive_mod;
using conv_pixels::tap_col_shift;
using conv_pixels::tap_row_shift;

inline int64_t tap_of_column(const BlockLayoutView& L, const ConvGeometry& g, int64_t col) {
  return col * L.bk / g.channels;
}

inline int64_t channel_of_column(const BlockLayoutView& L, const ConvGeometry& g, int64_t col) {
  return col * L.bk % g.channels;
}

// Per stored block, where it reads the input (conv_pixels::block_taps), in the calling
// thread's index workspace.
inline BlockTaps block_taps(const BlockLayoutView& L, const ConvGeometry& g) {
  int32_t* storage = detail::index_workspace(conv_pixels::block_taps_ints(L.nnz));
  return conv_pixels::block_taps(L, g, storage);
}

// rows[i] = first[i] + offset for a whole tile.
template <int TN>
inline void shifted(const float* const* first, int64_t offset, const float* (&rows)[TN]) {
  SPARCL_UNROLL
  for (int i = 0; i < TN; ++i) rows[i] = first[i] + offset;
}

// Forward tile rows (conv_pixels::TapRows) in the form accumulate_tile takes: all rows of a
// block at once, the interior test made once per block.
struct ForwardRows : conv_pixels::TapRows<float, kTile> {
  template <int TN>
  void operator()(int64_t j, const float* (&rows)[TN]) const {
    if (interior) return shifted(base, taps->offset[j], rows);
    if (taps->tabled) return shifted(table[taps->tap[j]], taps->channel[j], rows);
    SPARCL_UNROLL
    for (int i = 0; i < TN; ++i) rows[i] = at(j, i);
  }
};

// Input-gradient tile rows (conv_pixels::PhaseRows) in the form accumulate_tile takes.
struct GradInputRows : conv_pixels::PhaseRows<float, kTile> {
  template <int TN>
  void operator()(int64_t j, const float* (&rows)[TN]) const {
    if (interior) return shifted(base, plan->offset[j], rows);
    if (plan->shifts)
      return shifted(table[plan->shift_id[j]], static_cast<int64_t>(row_indices[j]) * bm, rows);
    SPARCL_UNROLL
    for (int i = 0; i < TN; ++i) rows[i] = at(j, i);
  }
};

// Vector width for the fp32 micro-kernels (0: portable loops). fp64 always runs the loops.
inline int simd_width(const float*, int64_t contiguous, int max_width) {
  return detail::pick_width(contiguous, max_width);
}
inline int simd_width(const double*, int64_t, int) { return 0; }

// ------------------------------------------------------------------ padded panels
//
// Blocks narrower than a vector (bm in the forward, bk in the input gradient) leave the
// pixel-major tiles short vectors and one broadcast per multiply-add (see panels.h). Those
// passes run over zero-padded image panels instead: the pixels are the vectorised
// dimension, a block's tap is a constant column shift, and the padded grid's extra pixels
// are computed and dropped. Neighbouring rows and images share their padding: a grid row
// holds the left padding and the image row, and a tap reaching past the row's end lands in
// the next row's left padding (as one past an image's last row lands in the next image's
// top rows, or past the grid, where the packing reads zeros). With a 3x3 kernel that drops
// 6 % extra pixels at 32x32 images and 27 % at 8x8, where padding both sides dropped 13 %
// and 56 % (Zen 5, in-process A/B, 8x8 blocks: input gradient 1.27x faster on 8x8 images,
// forward and input gradient 1.1x on 16x16, 1.02-1.05x on 32x32; bf16 1.05-1.14x).
// The forward needs stride 1. The input gradient is the same pass over grad_out, padded so
// that every block's shift stays inside, once per stride phase (the phase's pixels are its
// output), and the weight gradient packs the input by stride phase: so strided
// convolutions take them too (stride 2, 8x8 blocks on AVX-512: input gradient 1.1-2x
// faster than the phase tiles, 1.5-2.4x on AVX2).

// Whether padded panels describe the forward: stride 1, padding at most the kernel's reach.
inline bool padded_panels_fit(const ConvGeometry& g) {
  return g.stride_h == 1 && g.stride_w == 1 && g.pad_h <= (g.kernel_h - 1) * g.dilation_h &&
         g.pad_w <= (g.kernel_w - 1) * g.dilation_w;
}

// Whether blocks exactly one vector wide take the panels. Their pixel-major tile has kTile
// accumulators and one broadcast per multiply-add: AVX2's 6 cannot cover the multiply-add
// latency and lost to the panels everywhere from 8x8 images (Zen 4, 8x8 blocks: panels
// 1.3-1.8x faster on 8x8 to 32x32 images). AVX-512's 12 do: with the border tiles' tap
// tables its forward ran 11-24 % faster than the panels from 4x4 to 32x32 images on a Zen 4
// (16x16 blocks, alternated native runs), and so did its stride-1 input gradient once the
// tiles prefetched (1.13-1.17x warm, 1.15-1.33x from cold caches, at 16x16 and 32x32
// images; an Ice Lake server had measured the panels 1.1-1.7x faster before the tables).
// Its strided input gradient keeps the panels from 16x16 phase images (1.05x faster there).
// Both lost on 4x4 images (36 padded pixels for 16), where the pixel-major tiles stay.
inline bool one_vector_panels(const ConvGeometry& g, bool forward) {
  const int64_t pixels = g.out_h * g.out_w;
  if (kTile < 12) return pixels >= 64;
  const bool strided = g.stride_h * g.stride_w > 1;
  return !forward && strided && pixels >= 256;
}

// Whether blocks narrower than a vector take the panels: everywhere but on AVX-512's small
// images, where the padded grid wastes most and its 12-row tiles of half vectors won (Zen 4,
// 8x8 blocks, native, padding not yet shared: forward 1.35x faster at 4x4 images, 1.2-1.3x
// at 8x8, within 10 % either way from 16x16; input gradient 1.14x at 4x4, the panels
// 1.03-1.09x faster at 8x8). Since the grids share their padding (25 positions for a 4x4
// image's 16 pixels, not 36), a group of many blocks (`group_blocks`, the layout's mean per
// block row of the forward or block column of the input gradient) repays the panels' packing
// one image size further down: Zen 5, 8x8 blocks at density 0.1, in-process A/B, panels
// against tiles: forward on 8x8 images 0.69x (64 channels, 7 blocks a group), 0.95-1.02x
// (128, 14), 1.13-1.15x (256, 29), 1.22-1.24x (512, 58); input gradient on 4x4 images 0.42x
// (64), 0.86-0.89x (128), 1.06x (256), 1.42x (512), 1.07x (1024); the forward on 4x4 images
// lost up to 512 channels (0.78-0.86x, 1.06x at 512) and keeps the tiles, and so did the
// strided input gradient on 4x4 output images (0.75-0.82x at 256 channels, about even at
// 512; bf16 0.86x at 512).
constexpr double kPanelGroupBlocks = 20;

inline bool narrow_panels(const ConvGeometry& g, bool forward, double group_blocks) {
  const int64_t pixels = g.out_h * g.out_w;
  if (kTile < 12 || pixels >= (forward ? 256 : 64)) return true;
  const bool strided = g.stride_h * g.stride_w > 1;
  return !strided && group_blocks >= kPanelGroupBlocks && pixels >= (forward ? 64 : 16);
}

// Stored blocks per group (block row or column) of a layout, on average.
inline double mean_group_blocks(int64_t nnz, int64_t groups) {
  return groups > 0 ? static_cast<double>(nnz) / static_cast<double>(groups) : 0.0;
}

// Whether a forward (bm; one that padded_panels_fit) or input gradient (bk, any geometry)
// runs on padded panels, by the block side along the output channels `side`. Blocks
// narrower than one vector as narrow_panels says (the pixel-major tiles then run short
// vectors): the chunk panels stay in L2 (padded_panel_pass), so even the main job's
// 32-channel convs gain (8x8 blocks on AVX-512, one thread: 32 and 64 channels 1.0-2.4x,
// 128 and 256 channels 1.2-1.7x over whole-batch panels, which lost below 64 channels).
// Blocks one vector wide as one_vector_panels says. (NEON's 4x4 blocks follow AVX2's rule
// untimed: emulated timings mean nothing.)
inline bool use_panels(int64_t side, const ConvGeometry& g, int width, bool forward,
                       double group_blocks) {
  const bool narrow = (side < width && narrow_panels(g, forward, group_blocks)) ||
                      (side == width && one_vector_panels(g, forward));
  return narrow && (!forward || padded_panels_fit(g));
}

// The grid of grad_out's pixels on which grad_weight_panels lays each stride phase of the
// input (the whole input at stride 1): tap (kh, kw) of output pixel (a, b) reads phase
// (r mod stride_h, c mod stride_w) at phase pixel (a + floor(r / stride_h), b + floor(c /
// stride_w)), r and c the tap's row and column shifts. The grid starts `top` rows and `left`
// columns before the phase images, so that no tap's shift is negative (the largest is
// reach_h rows and reach_w columns), and is wide and tall enough for both operands.
struct PhaseGrid {
  int64_t top, left, reach_h, reach_w, rows, cols;
};

inline PhaseGrid phase_grid(const ConvGeometry& g) {
  const int64_t last_tap = g.kernel_h * g.kernel_w - 1;
  const int64_t top = -floor_div(tap_row_shift(g, 0), g.stride_h);
  const int64_t left = -floor_div(tap_col_shift(g, 0), g.stride_w);
  const int64_t reach_h = top + floor_div(tap_row_shift(g, last_tap), g.stride_h);
  const int64_t reach_w = left + floor_div(tap_col_shift(g, last_tap), g.stride_w);
  return {top, left, reach_h, reach_w,
          std::max(g.out_h + reach_h, top + phase_extent(g.in_h, 0, g.stride_h)),
          std::max(g.out_w + reach_w, left + phase_extent(g.in_w, 0, g.stride_w))};
}

// The weight gradient on chunk panels (grad_weight_panels) against runs of blocks over the
// padded input (grad_weight_runs_simd), 8x8 blocks on AVX-512: panels are faster on 32x32
// images (Zen 5, 64 channels at batch 32: runs 0.86-0.89x), runs from 16x16 images down
// (128 channels at 16x16: 1.23x; on 4x4 images panels pad to 6x6, 2.25x the output's
// pixels, and each block's lanes are summed once per chunk, few columns on small images).
// Hence images of at least kWeightGradientPanelMinPixels whose padded grid is at most twice
// the output image. Strided convolutions pack every input pixel for a quarter of them in the
// output (stride 2): from 16x16 output images (Zen 5, stride 2 from 32x32 images: runs
// 0.89x; Zen 4: 1.3x slower on 8x8 output images and 2.2x on 4x4 ones).
constexpr int64_t kWeightGradientPanelMinPixels = 512;
constexpr int64_t kStridedWeightGradientPanelMinPixels = 256;

inline bool use_weight_gradient_panels(int64_t bk, const ConvGeometry& g, int width) {
  const PhaseGrid grid = phase_grid(g);
  const bool strided = g.stride_h * g.stride_w > 1;
  const int64_t pixels = g.out_h * g.out_w;
  const int64_t min_pixels =
      strided ? kStridedWeightGradientPanelMinPixels : kWeightGradientPanelMinPixels;
  return bk < width && grid.rows * grid.cols <= 2 * pixels && pixels >= min_pixels;
}

// Per stored block: the panel row block it reads (offset_of) and its tap's column shift.
struct PanelBlocks {
  int32_t* offset_of;
  int64_t* shift;
};

// The two arrays in the calling thread's index workspace: offset_of [nnz], then `extra_ints`
// ints for the caller (from offset_of + nnz), then shift [nnz] (8-byte aligned).
inline PanelBlocks panel_blocks(int64_t nnz, int64_t extra_ints) {
  int32_t* storage = detail::index_workspace(2 * nnz + extra_ints + 2 * nnz + 2);
  int64_t* shift = reinterpret_cast<int64_t*>(storage + ((nnz + extra_ints + 1) & ~int64_t{1}));
  return {storage, shift};
}

// Where one output pass of padded_panel_pass writes: channels-last images height x width at
// `place` from `out` (fp32, or bf16 for the bf16 kernels' panels).
template <typename Out>
struct PanelOutput {
  Out* out;
  int64_t height, width;
  detail::ImagePlacement place;
};

// Values of a pass's operand per panel element: 1 for fp32, 2 for bf16, whose panels hold
// pairs of consecutive channels (bf16_kernels.h) as the packed blocks hold pairs of weights.
template <typename In>
constexpr int64_t kPanelPack = static_cast<int64_t>(sizeof(float) / sizeof(In));

// The panel pass of a stride-1 convolution over the padded grid `in_grid` of `a` (channels
// `features`, dense images; chunked as detail::padded_chunks says), in `passes` output
// passes over each packed chunk: pass q writes `groups` groups of `side` channels (`outputs`
// in all; group(q, g), init(g)) at output(q). The input gradient's stride phases are its
// passes, so grad_out is packed once for all. Each output element is computed by one tile in
// a fixed order: the results do not depend on the thread count.
template <int W, typename Group, typename Init, typename Output>
void padded_panel_pass(const float* a, int64_t features, const detail::PaddedGrid& in_grid,
                       int64_t max_shift, int64_t outputs, int64_t side, int64_t groups,
                       int64_t passes, int threads, const Group& group, const Init& init,
                       const Output& output) {
  const int64_t tile = int64_t{detail::kPanelVectors} * W, cols = in_grid.cols;
  detail::padded_chunks<W>(
      a, features, in_grid, max_shift, outputs, threads,
      [&](const float* in_panel, int64_t in_ld, float* out_panel, int64_t out_ld, int64_t r0,
          int64_t r1) {
        const int64_t columns = (r1 - r0) * cols, tiles = (columns + tile - 1) / tile;
        for (int64_t q = 0; q < passes; ++q) {
          const auto to = output(q);
          if (to.height == 0 || to.width == 0) continue;
          for (int64_t g = 0; g < groups; ++g) {
            const auto tile_at = [&](int64_t k) {
              const int vectors = static_cast<int>(
                  std::min<int64_t>(detail::kPanelVectors, (columns - k * tile + W - 1) / W));
              return detail::PanelTile{in_panel + k * tile, in_ld,
                                       out_panel + g * side * out_ld + k * tile, out_ld, vectors};
            };
            detail::panel_slab<W>(group(q, g), side, 0, tiles, tile_at, init(g));
          }
          const detail::PaddedGrid out_grid{in_grid.batch, in_grid.rows, cols, 0, 0, to.height,
                                            to.width};
          detail::unpack_padded_rows<W>(out_panel, out_ld, out_grid, r0, r1, to.out, outputs,
                                        to.place);
        }
      });
}

// In: float with fp32 blocks transposed ([nnz][bk][bm]), or bf16 (uint16_t) with the blocks
// packed in pairs along bk ([nnz][bk / 2][bm], uint32_t); Out: y's type.
template <int W, typename In, typename Weight, typename Out>
void forward_panels(const In* x, const Weight* values_t, const float* bias, Out* y,
                    const BlockLayoutView& L, const ConvGeometry& g, int threads) {
  constexpr int64_t pack = kPanelPack<In>;
  // Padding shared between neighbouring rows and images (see above): the right and bottom
  // padding is the next row's and image's left and top.
  const detail::PaddedGrid grid{g.batch, g.in_h + g.pad_h, g.in_w + g.pad_w,
                                g.pad_h, g.pad_w, g.in_h, g.in_w};
  const PanelBlocks blocks = panel_blocks(L.nnz, 0);
  for (int64_t j = 0; j < L.nnz; ++j) {
    const int64_t column = L.col_indices[j], tap = tap_of_column(L, g, column);
    blocks.offset_of[j] = static_cast<int32_t>(channel_of_column(L, g, column) / L.bk);
    blocks.shift[j] =
        (tap / g.kernel_w) * g.dilation_h * grid.cols + (tap % g.kernel_w) * g.dilation_w;
  }
  const int64_t max_shift =
      (g.kernel_h - 1) * g.dilation_h * grid.cols + (g.kernel_w - 1) * g.dilation_w;
  padded_panel_pass<W>(
      reinterpret_cast<const float*>(x), g.channels / pack, grid, max_shift, L.rows(), L.bm,
      L.block_rows, 1, threads,
      [&](int64_t, int64_t r) {
        return detail::PanelGroupOf<Weight>{values_t,         L.bm * L.bk / pack,
                                            L.bm,             L.bk / pack,
                                            nullptr,          L.row_offsets[r],
                                            L.row_offsets[r + 1], blocks.offset_of,
                                            blocks.shift};
      },
      [&](int64_t r) { return bias ? bias + r * L.bm : nullptr; },
      [&](int64_t) {
        return PanelOutput<Out>{y, g.out_h, g.out_w,
                                detail::dense_images(g.out_h, g.out_w, L.rows())};
      });
}

// In: float with the fp32 blocks as stored, or bf16 (uint16_t) with the blocks packed in
// pairs along bm ([nnz][bm / 2][bk], uint32_t); Out: dx's type.
template <int W, typename In, typename Weight, typename Out>
void grad_input_panels(const In* dy, const Weight* values, Out* dx, const BlockLayoutView& L,
                       const ConvGeometry& g, int threads) {
  constexpr int64_t pack = kPanelPack<In>;
  // Stride phase by stride phase (one at stride 1): phase pixel (a, b) reads grad_out pixel
  // (a + shift_h, b + shift_w) under each of its blocks (GradInputPlan), so a phase is a
  // stride-1 pass over grad_out padded to keep every shift inside the grid, whose output
  // pixels are every stride-th input pixel.
  const GradInputPlan plan =
      plan_grad_input(L, g, detail::index_workspace(conv_pixels::plan_ints(L, g)));
  const int64_t top = std::max<int64_t>(0, -plan.min_h), left = std::max<int64_t>(0, -plan.min_w);
  const int64_t channel_blocks = g.channels / L.bk;
  // Wide enough for grad_out and for the output pixels of phase 0 (the widest), whose
  // widest shift may reach into the next row's first `left` columns: its padding.
  const int64_t extent_w = phase_extent(g.in_w, 0, g.stride_w);
  const int64_t cols = std::max({left + g.out_w, extent_w + plan.max_w, extent_w});
  // Each block's grid shift, in the second index workspace (operator new's alignment).
  int64_t* shift = reinterpret_cast<int64_t*>(detail::index_workspace(2 * L.nnz, 1));
  for (int64_t j = 0; j < L.nnz; ++j)
    shift[j] = (plan.shift_h[j] + top) * cols + plan.shift_w[j] + left;
  const int64_t max_shift = (plan.max_h + top) * cols + plan.max_w + left;
  const int64_t extent_h = phase_extent(g.in_h, 0, g.stride_h);
  const int64_t rows = std::max({top + g.out_h, extent_h + plan.max_h, extent_h});
  const detail::PaddedGrid grid{g.batch, rows, cols, top, left, g.out_h, g.out_w};
  const detail::ImagePlacement place =
      detail::dense_images(g.in_h, g.in_w, g.channels, g.stride_h, g.stride_w);
  padded_panel_pass<W>(
      reinterpret_cast<const float*>(dy), L.rows() / pack, grid, max_shift, g.channels, L.bk,
      channel_blocks, plan.phases, threads,
      [&](int64_t phase, int64_t c) {
        const int32_t* offsets = plan.group_offsets + phase * channel_blocks;
        return detail::PanelGroupOf<Weight>{values,           L.bm * L.bk / pack,
                                            L.bk,             L.bm / pack,
                                            plan.group_blocks, offsets[c],
                                            offsets[c + 1],   L.row_indices,
                                            shift};
      },
      [](int64_t) -> const float* { return nullptr; },
      [&](int64_t phase) {
        const int64_t ph = phase / g.stride_w, pw = phase % g.stride_w;
        return PanelOutput<Out>{dx + (ph * g.in_w + pw) * g.channels,
                                phase_extent(g.in_h, ph, g.stride_h),
                                phase_extent(g.in_w, pw, g.stride_w), place};
      });
}

// ------------------------------------------------------------------ fp32 fast paths

template <int W>
void forward_simd(const float* x, const float* values_t, const float* bias, float* y,
                  const BlockLayoutView& L, const ConvGeometry& g, int threads) {
  const int64_t pixels = g.batch * g.out_h * g.out_w, cout = L.rows();
  const float* zeros = detail::thread_workspace(g.channels, detail::kZerosSlot);
  const BlockTaps taps = block_taps(L, g);
  run_parallel(threads, [&](int t, int nt) {
    int64_t begin, stop;
    // Each thread writes every channel of a contiguous range of output pixels, the way the
    // element-wise ops that read y next split their work (split by block row, each core
    // read half of their input from the other core's cache). Every tile costs the same.
    pixel_share(pixels, t, nt, &begin, &stop);
    ForwardRows rows;
    rows.x = x, rows.zeros = zeros, rows.g = &g, rows.taps = &taps;
    ForwardRows::Walk walk = ForwardRows::walk_from(begin, g);
    for (int64_t p0 = begin; p0 < stop; p0 += kTile) {
      const int count = static_cast<int>(std::min<int64_t>(kTile, stop - p0));
      rows.locate_tile(walk, count);
      rows.tabulate(count, taps.used);
      rows.prefetch_ahead(count, kTile);
      // The next tile's output: every channel of the pixels that follow.
      conv_pixels::prefetch_bytes(reinterpret_cast<uintptr_t>(y + (p0 + kTile) * cout),
                                  kTile * cout * static_cast<int64_t>(sizeof(float)));
      // One tile, all block rows.
      const auto tile_rows = [&](int64_t) -> const ForwardRows& { return rows; };
      for (int64_t r = 0; r < L.block_rows; ++r) {
        const auto tile_out = [&](int64_t) {
          return detail::StridedOut{y + p0 * cout + r * L.bm, cout};
        };
        detail::accumulate_slab<W>(count, tile_rows, tile_out, values_t, L.bk, L.bm, nullptr,
                                   L.row_offsets[r], L.row_offsets[r + 1],
                                   bias ? bias + r * L.bm : nullptr);
      }
    }
  });
}

// Thread t's share of every stride phase's input pixels, tile by tile: each tile of up to
// kTile pixels is located in `rows` once, tabulated (at the border) for the shifts of all the
// phase's channel blocks, its grad_out rows ahead and the next tile's grad_x rows prefetched,
// and then tile(phase, tn, pixel) runs every channel block over it, pixel[i] pointing at
// row i's input pixel in dx (channel 0). Phases write disjoint pixels, so a thread goes on to
// the next one without waiting for the others. Items of one channel block had each located
// their tiles again, which cost 10-30 % of the pass with 16x16 blocks (Zen 4, native).
template <typename T, typename Tile>
void walk_phase_tiles(conv_pixels::PhaseRows<T, kTile>& rows, T* dx, const GradInputPlan& plan,
                      const ConvGeometry& g, int64_t channel_blocks, int t, int nt,
                      const Tile& tile) {
  // Tiles of phase pixels [e0, e1) of one phase.
  const auto walk_range = [&](int64_t phase, int64_t e0, int64_t e1) {
    const int64_t ph = phase / g.stride_w, pw = phase % g.stride_w;
    uint32_t used = 0;
    for (int64_t cb = 0; cb < channel_blocks; ++cb)
      used |= plan.group_shifts[phase * channel_blocks + cb];
    auto walk = conv_pixels::PhaseRows<T, kTile>::walk_from(e0, ph, pw, g, rows.cout);
    T* const phase_dx = dx + (ph * g.in_w + pw) * g.channels;
    if (plan.group_offsets[phase * channel_blocks] ==
        plan.group_offsets[(phase + 1) * channel_blocks]) {
      // No block reaches this phase: zeros, without locating, tabulating and prefetching
      // grad_out rows tile by tile. With few blocks at stride 2 that is often a phase or two
      // of four: ResNet-18's first stride-2 conv at 0.9 with 32x32 blocks (nf=64: 7 blocks)
      // took 1.1x (fp32) and 1.2x (bf16) less time, make run's (nf=32: 2 blocks) 1.3-1.6x.
      for (int64_t e = e0; e < e1; ++e) {
        std::fill_n(phase_dx + walk.at(1), g.channels, T{});
        walk.next();
      }
      return;
    }
    for (int64_t e = e0; e < e1; e += kTile) {
      const int tn = static_cast<int>(std::min<int64_t>(kTile, e1 - e));
      T* pixel[kTile];
      rows.locate_tile(walk, tn, phase_dx, pixel);
      rows.tabulate(tn, used);
      rows.prefetch_ahead(tn, kTile);
      conv_pixels::prefetch_output(pixel, tn, kTile * g.stride_w * g.channels,
                                   g.channels * static_cast<int64_t>(sizeof(T)));
      tile(phase, tn, static_cast<T* const*>(pixel));
    }
  };
  const auto phase_pixels = [&](int64_t phase) {
    return g.batch * phase_extent(g.in_h, phase / g.stride_w, g.stride_h) *
           phase_extent(g.in_w, phase % g.stride_w, g.stride_w);
  };
  // Contiguous shares of equal chunks: each thread writes every channel of a range of input
  // pixels, as the element-wise ops that read grad_x next split their work.
  bool even = true;
  for (int64_t phase = 1; phase < plan.phases; ++phase)
    even &= phase_pixels(phase) == phase_pixels(0);
  if (even) {
    // Phases of one size (an even image at stride 2): chunk by chunk, every phase of a chunk,
    // whose grad_out rows the phases share, before the next, rather than each phase over
    // all of grad_out in turn.
    const int64_t pixels = phase_pixels(0);
    int64_t begin, end;
    pixel_share(pixels, t, nt, &begin, &end);
    for (int64_t c = begin; c < end; c += kPixelChunk)
      for (int64_t phase = 0; phase < plan.phases; ++phase)
        walk_range(phase, c, std::min(end, c + kPixelChunk));
    return;
  }
  for (int64_t phase = 0; phase < plan.phases; ++phase) {
    const int64_t pixels = phase_pixels(phase);
    int64_t begin, end;
    pixel_share(pixels, t, nt, &begin, &end);
    if (begin < end) walk_range(phase, begin, end);
  }
}

template <int W>
void grad_input_simd(const float* dy, const float* values, float* dx, const BlockLayoutView& L,
                     const ConvGeometry& g, int threads) {
  const int64_t channel_blocks = g.channels / L.bk;
  const float* zeros = detail::thread_workspace(L.rows(), detail::kZerosSlot);
  const GradInputPlan plan =
      plan_grad_input(L, g, detail::index_workspace(conv_pixels::plan_ints(L, g)));
  run_parallel(threads, [&](int t, int nt) {
    GradInputRows rows;
    rows.dy = dy, rows.zeros = zeros, rows.g = &g, rows.plan = &plan;
    rows.row_indices = L.row_indices, rows.bm = L.bm, rows.cout = L.rows();
    const auto tile_rows = [&](int64_t) -> const GradInputRows& { return rows; };
    walk_phase_tiles(rows, dx, plan, g, channel_blocks, t, nt,
                     [&](int64_t phase, int tn, float* const* pixel) {
      for (int64_t cb = 0; cb < channel_blocks; ++cb) {
        const int64_t group = phase * channel_blocks + cb;
        const int32_t sb = plan.group_offsets[group], se = plan.group_offsets[group + 1];
        detail::ListedOut<kTile> out{};
        for (int i = 0; i < tn; ++i) out.rows[i] = pixel[i] + cb * L.bk;
        if (sb == se) {  // no block reaches this phase of this channel block: zeros
          for (int i = 0; i < tn; ++i) std::fill_n(out.rows[i], L.bk, 0.0f);
          continue;
        }
        detail::accumulate_slab<W>(tn, tile_rows, [&](int64_t) { return out; }, values, L.bm,
                                   L.bk, plan.group_blocks, sb, se, nullptr);
      }
    });
  });
}

// Weight gradient of block j over output pixels [begin, end): the outer products of the
// output-gradient rows and the input rows its tap reads, for the pixels whose tap lands
// inside the input. Writes the bm x bk result to `out`.
template <int W>
void grad_weight_block_simd(const float* dy, const float* x, float* out, int64_t j,
                            int64_t begin, int64_t end, const BlockLayoutView& L,
                            const ConvGeometry& g, const BlockTaps& taps, bool accumulate) {
  const int64_t cout = L.rows();
  const float* dyb = dy + static_cast<int64_t>(L.row_indices[j]) * L.bm;
  const float* xb = x + taps.channel[j];
  // Two slices of row pointers: the full one is multiplied while the next one's rows are
  // prefetched (PrefetchingGatheredRows).
  const float* dy_rows[2][kBlockSliceRows];
  const float* x_rows[2][kBlockSliceRows];
  bool written = accumulate, pending = false;
  int64_t count = 0;
  int fill = 0;
  const auto multiply = [&](int slice, int64_t rows, int64_t next_count) {
    const detail::PrefetchingGatheredRows pairs{
        {dy_rows[slice], x_rows[slice]}, dy_rows[1 - slice], x_rows[1 - slice], next_count,
        L.bm * static_cast<int64_t>(sizeof(float)), L.bk * static_cast<int64_t>(sizeof(float))};
    detail::outer_product_block<W>(pairs, rows, L.bm, L.bk, written, out);
    written = true;
  };
  const auto flush = [&] {  // slice `fill` is full: multiply the other one, if it waits
    if (pending) multiply(1 - fill, kBlockSliceRows, count);
    pending = true;
    fill = 1 - fill;
    count = 0;
  };
  // Output columns whose tap lands inside the input (iw = ow * stride_w + col in [0, in_w)):
  // the same for every row, so no pixel is tested.
  const int64_t col = taps.col[j];
  const int64_t ow_first = col >= 0 ? 0 : (g.stride_w - 1 - col) / g.stride_w;
  const int64_t ow_end =
      col >= g.in_w ? 0 : std::min(g.out_w, (g.in_w - 1 - col) / g.stride_w + 1);
  const int64_t first_row = begin / g.out_w;
  int64_t image = first_row / g.out_h, oh = first_row % g.out_h;
  for (int64_t r = first_row; r * g.out_w < end; ++r) {
    const int64_t ih = oh * g.stride_h + taps.row[j];
    if (ih >= 0 && ih < g.in_h) {  // rows in the padding contribute nothing
      const int64_t lo = std::max(ow_first, begin - r * g.out_w);
      const int64_t hi = std::min(ow_end, end - r * g.out_w);
      const int64_t x_pixel = (image * g.in_h + ih) * g.in_w + col;
      const int64_t x_step = g.stride_w * g.channels;
      const float* dy_row = dyb + (r * g.out_w + lo) * cout;
      const float* x_row = xb + (x_pixel + lo * g.stride_w) * g.channels;
      for (int64_t ow = lo; ow < hi; ++ow, dy_row += cout, x_row += x_step) {
        dy_rows[fill][count] = dy_row;
        x_rows[fill][count] = x_row;
        if (++count == kBlockSliceRows) flush();
      }
    }
    if (++oh == g.out_h) oh = 0, ++image;
  }
  if (pending) multiply(1 - fill, kBlockSliceRows, count);
  if (count || !written) multiply(fill, count, 0);
}

// The input images zero-padded so that every tap of every output pixel lands in them
// ([batch][rows][cols][channels], the image at (top, left)): a weight-gradient run then reads
// each block's row of a pixel at a fixed shift from the pixel's own row, with no test per
// block and pixel (the tests and pointer lists cost more than the products on 4x4 and 8x8
// images).
struct PaddedImages {
  float* data;
  int64_t rows, cols, top, left, channels;

  static PaddedImages shape_of(const ConvGeometry& g) {
    const int64_t reach_h =
        (g.out_h - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h - g.pad_h + 1;
    const int64_t reach_w =
        (g.out_w - 1) * g.stride_w + (g.kernel_w - 1) * g.dilation_w - g.pad_w + 1;
    return {nullptr, g.pad_h + std::max(g.in_h, reach_h), g.pad_w + std::max(g.in_w, reach_w),
            g.pad_h, g.pad_w, g.channels};
  }
  int64_t size(int64_t batch) const { return batch * rows * cols * channels; }
  // Block j's row of a pixel, from the pixel's own row (its tap's shift and channels).
  int64_t shift(const BlockTaps& taps, int64_t j) const {
    return (taps.row[j] * cols + taps.col[j]) * channels + taps.channel[j];
  }
  // Output row oh of image `image`: the padded row its pixels' taps shift from.
  const float* row_of(const ConvGeometry& g, int64_t image, int64_t oh) const {
    return data + ((image * rows + oh * g.stride_h + top) * cols + left) * channels;
  }

  // Padded rows [r0, r1) (image * rows + row) from the channels-last images x.
  void fill(const float* x, const ConvGeometry& g, int64_t r0, int64_t r1) const {
    const int64_t line = cols * channels, image_line = g.in_w * channels;
    for (int64_t r = r0; r < r1; ++r) {
      float* dst = data + r * line;
      const int64_t image = r / rows, ih = r % rows - top;
      if (ih < 0 || ih >= g.in_h) {
        std::fill_n(dst, line, 0.0f);
        continue;
      }
      std::fill_n(dst, left * channels, 0.0f);
      std::copy_n(x + (image * g.in_h + ih) * image_line, image_line, dst + left * channels);
      std::fill(dst + left * channels + image_line, dst + line, 0.0f);
    }
  }
};

// Multiply-adds of a weight-gradient pass per element of its padded input below which the
// copy costs more than the pointer tests it saves (Zen 5, 16x16 blocks at 0.9: 50 per
// element, stride 2 from 32x32 images, ran 1.7x slower padded; 99, 32x32 images, 0.88-1.04x;
// 184, 16x16 images, 1.18-1.26x faster; 8x8 blocks: 295, 8x8 images, 1.35x; 410, 4x4, 1.94x).
constexpr int64_t kPaddedInputMinFlops = 150;

// Whether the runs of `kept_elems` weights (the kept blocks' elements) read the padded input.
inline bool use_padded_input(const ConvGeometry& g, const PaddedImages& padded,
                             int64_t kept_elems) {
  const int64_t flops = 2 * kept_elems * g.batch * g.out_h * g.out_w;
  return flops > 0 && flops >= kPaddedInputMinFlops * padded.size(g.batch);
}

// The input rows of a weight-gradient run's pixels from the padded images: one row per
// pixel, each block's at a fixed shift from it.
struct PaddedRunInput {
  const PaddedImages* images;
  int64_t step;  // elements from one output column's input pixel to the next
  const float* row = nullptr;  // the current output row's
  const float* x_rows[kSliceRows];
  int64_t shift[detail::kMaxRunBlocks];

  PaddedRunInput(const PaddedImages* images_, int64_t step_) : images(images_), step(step_) {}

  void add_block(int q, const BlockTaps& taps, int64_t j, int64_t, int64_t) {
    shift[q] = images->shift(taps, j);
  }
  void begin_row(const ConvGeometry& g, int64_t image, int64_t oh, const bool*) {
    row = images->row_of(g, image, oh);
  }
  void put(int64_t slot, int64_t ow) { x_rows[slot] = row + ow * step; }
  detail::ShiftedRunRows rows(const float* const* dy) const { return {dy, x_rows, shift}; }
};

// The same from the images themselves: a row per block and pixel, chosen by a test per block
// and pixel (zeros where its tap lands in the padding). No copy: for the runs that do few
// products per input element (see use_padded_input).
struct DirectRunInput {
  const float* x;
  const float* zeros;
  int64_t step, channels;
  const float* base[detail::kMaxRunBlocks];  // block q's input row in this output row
  // Block q: its tap row, its first element in an input row, and the output columns where
  // its tap lands inside the input ([lo, hi) in this output row, [lo, col_hi) in any).
  int64_t tap_row[detail::kMaxRunBlocks], offset[detail::kMaxRunBlocks];
  int64_t lo[detail::kMaxRunBlocks], hi[detail::kMaxRunBlocks], col_hi[detail::kMaxRunBlocks];
  int blocks = 0;
  const float* x_rows[detail::kMaxRunBlocks][kSliceRows];

  DirectRunInput(const float* x_, const float* zeros_, int64_t step_, int64_t channels_)
      : x(x_), zeros(zeros_), step(step_), channels(channels_) {}

  void add_block(int q, const BlockTaps& taps, int64_t j, int64_t first, int64_t end) {
    tap_row[q] = taps.row[j];
    offset[q] = taps.col[j] * channels + taps.channel[j];
    lo[q] = first, col_hi[q] = end;
    blocks = q + 1;
  }
  void begin_row(const ConvGeometry& g, int64_t image, int64_t oh, const bool* inside) {
    for (int q = 0; q < blocks; ++q) {
      const int64_t ih = oh * g.stride_h + tap_row[q];
      base[q] = x + (image * g.in_h + ih) * g.in_w * g.channels + offset[q];
      hi[q] = inside[q] ? col_hi[q] : 0;
    }
  }
  void put(int64_t slot, int64_t ow) {
    for (int q = 0; q < blocks; ++q)
      x_rows[q][slot] = ow >= lo[q] && ow < hi[q] ? base[q] + ow * step : zeros;
  }
  detail::GatheredRunRows<kSliceRows> rows(const float* const* dy) const { return {dy, x_rows}; }
};

// Weight gradient of a run of `blocks` one-vector-wide blocks of one block row (ids[0 ..
// blocks), bk == W) over output pixels [begin, end), into out[q] (added to it if
// `accumulate`), reading the input rows through `input` (PaddedRunInput or DirectRunInput):
// the run shares its grad_out rows, a block whose tap lands in the padding at a pixel reads
// zeros there, and pixels where every block's tap does are skipped.
template <int W, typename Input>
void grad_weight_run_simd(const float* dy, Input& input, float* const* out, const int32_t* ids,
                          int blocks, int64_t begin, int64_t end, const BlockLayoutView& L,
                          const ConvGeometry& g, const BlockTaps& taps, bool accumulate) {
  const int64_t cout = L.rows();
  const float* dyb = dy + static_cast<int64_t>(L.row_indices[ids[0]]) * L.bm;
  const float* dy_rows[kSliceRows];
  bool written = accumulate;
  int64_t count = 0;
  const auto flush = [&] {
    detail::outer_product_blocks<W>(input.rows(dy_rows), blocks, count, L.bm, written, out);
    written = true;
    count = 0;
  };
  // Each block's output columns whose tap lands inside the input, the same in every row
  // (worked out once: per row, their divisions cost more than the products on small images).
  int64_t col_lo[detail::kMaxRunBlocks], col_hi[detail::kMaxRunBlocks];
  for (int q = 0; q < blocks; ++q) {
    const int64_t col = taps.col[ids[q]];
    col_lo[q] = col >= 0 ? 0 : (g.stride_w - 1 - col) / g.stride_w;
    col_hi[q] = col >= g.in_w ? 0 : std::min(g.out_w, (g.in_w - 1 - col) / g.stride_w + 1);
    input.add_block(q, taps, ids[q], col_lo[q], col_hi[q]);
  }
  // Per output row oh: which blocks' tap rows lie in the input, and the columns where some
  // block's tap is inside. The same in every image: where the pixels span more than an
  // image (of at most kMemoRows rows), worked out once per oh (per row and block, that work
  // had cost as much as the products of 8x8 blocks on 4x4 images).
  constexpr int64_t kMemoRows = 64;
  struct RowHull {
    int64_t lo, hi;
    bool inside[detail::kMaxRunBlocks];
  };
  const auto hull_of = [&](int64_t oh, RowHull& hull) {
    hull.lo = g.out_w, hull.hi = 0;
    for (int q = 0; q < blocks; ++q) {
      const int64_t ih = oh * g.stride_h + taps.row[ids[q]];
      hull.inside[q] = ih >= 0 && ih < g.in_h;
      if (hull.inside[q] && col_lo[q] < col_hi[q])
        hull.lo = std::min(hull.lo, col_lo[q]), hull.hi = std::max(hull.hi, col_hi[q]);
    }
  };
  const int64_t first_row = begin / g.out_w;
  const bool memoized = g.out_h <= kMemoRows && end - begin > g.out_h * g.out_w;
  RowHull memo[kMemoRows];
  if (memoized)
    for (int64_t oh = 0; oh < g.out_h; ++oh) hull_of(oh, memo[oh]);
  int64_t image = first_row / g.out_h, oh = first_row % g.out_h;
  RowHull scratch;
  for (int64_t r = first_row; r * g.out_w < end; ++r) {
    const RowHull* hull = &memo[oh];
    if (!memoized) hull_of(oh, scratch), hull = &scratch;
    input.begin_row(g, image, oh, hull->inside);
    if (++oh == g.out_h) oh = 0, ++image;
    const int64_t first = std::max(hull->lo, begin - r * g.out_w);
    const int64_t last = std::min(hull->hi, end - r * g.out_w);
    const float* dy_row = dyb + (r * g.out_w + first) * cout;
    for (int64_t ow = first; ow < last; ++ow, dy_row += cout) {
      input.put(count, ow);
      dy_rows[count] = dy_row;
      if (++count == kSliceRows) flush();
    }
  }
  if (count || !written) flush();
}

// Pixels per slice of the one-segment weight gradient: a slice's grad_out and input rows
// fit in an L2 slice.
inline int64_t weight_gradient_slice(const ConvGeometry& g, int64_t cout) {
  return std::max<int64_t>(kSliceRows, kCacheSliceFloats / (cout + g.channels));
}

// Pixels per slice within a weight-gradient segment (few blocks over many pixels, each summed
// per segment), every block of the thread over one slice before the next: twice
// weight_gradient_slice, rows that fill L2. (Zen 5, batch 32, 128 channels on 16x16 images,
// 32x32 and 16x16 blocks, against each block over its whole segment: warm 0.96-1.01x with
// weight_gradient_slice's slices, 1.00-1.07x with these; from memory 0.96-1.13x and
// 1.03-1.24x.)
inline int64_t segment_slice(const ConvGeometry& g, int64_t cout) {
  return 2 * weight_gradient_slice(g, cout);
}

// The one-segment weight gradient of a thread's `count` items (blocks, or runs of blocks)
// over `pixels`: compute(i, p0, p1, accumulate) runs item i over pixels [p0, p1), in slices
// of `slice` pixels, every item over one slice before the next, so that each slice's rows
// are read from L3 or memory once. (Item by item over every pixel, each item read them
// again: 8x8 blocks read half lines of them; at batch 32, 256 channels on 8x8 images, from
// memory, 32x32 blocks 1.15-1.25x and 8x8 blocks 1.07-1.2x slower.)
template <typename Compute>
void walk_pixel_slices(int64_t pixels, int64_t slice, int64_t count, const Compute& compute) {
  for (int64_t p0 = 0;; p0 += slice) {
    const int64_t p1 = std::min(pixels, p0 + slice);
    for (int64_t i = 0; i < count; ++i) compute(i, p0, p1, p0 > 0);
    if (p1 >= pixels) return;
  }
}

// Output pixels per weight-gradient segment, and the number of (block, segment) items the
// segments aim at: enough to balance any thread count, few enough to keep partials small.
constexpr int64_t kSegmentPixels = 4096;
constexpr int64_t kWeightGradientItems = 64;

// How many segments a weight-gradient item's pixels are cut into, for `items` items (kept
// blocks, or runs of blocks) over `pixels`: at least kSegmentPixels pixels each, at most
// kWeightGradientItems items in all, never fewer than one.
inline int64_t weight_gradient_segments(int64_t pixels, int64_t items) {
  return std::max<int64_t>(1, std::min((pixels + kSegmentPixels - 1) / kSegmentPixels,
                                       kWeightGradientItems / std::max<int64_t>(items, 1)));
}

// Kept blocks [begin, end) of the list `ids`: the sum, in segment order, of their segments'
// partial gradients (kept block a's segment s at partials[(a * segments + s) * block_elems]),
// added to the blocks' gradients when `accumulate`.
inline void add_segment_partials(const float* partials, const int32_t* ids, int64_t begin,
                                 int64_t end, int64_t segments, int64_t block_elems,
                                 float* grad_values, bool accumulate = false) {
  for (int64_t a = begin; a < end; ++a) {
    float* out = grad_values + static_cast<int64_t>(ids[a]) * block_elems;
    const float* partial = partials + a * segments * block_elems;
    if (!accumulate) std::copy_n(partial, block_elems, out);
    for (int64_t s = accumulate ? 0 : 1; s < segments; ++s)
      for (int64_t e = 0; e < block_elems; ++e) out[e] += partial[s * block_elems + e];
  }
}

// Pixels [*begin, *end) of segment s of `segments` over `pixels`: equal shares that together
// cover every pixel (a segment may exceed kSegmentPixels when the item cap cut their number).
inline void segment_pixels(int64_t pixels, int64_t segments, int64_t s, int64_t* begin,
                           int64_t* end) {
  *begin = pixels * s / segments;
  *end = pixels * (s + 1) / segments;
}

// A thread's segment-major items [begin, end) of `per_segment` items a segment (item i:
// item i % per_segment of segment i / per_segment), segment by segment, each segment's pixels
// (from segment_pixels over `pixels` in `segments`) in slices of `slice`, every item of the
// segment over a slice before the next: compute(i, segment, p0, p1, accumulate).
template <typename Compute>
void walk_segment_items(int64_t begin, int64_t end, int64_t per_segment, int64_t pixels,
                        int64_t segments, int64_t slice, const Compute& compute) {
  for (int64_t item = begin; item < end;) {
    const int64_t segment = item / per_segment;
    const int64_t group_end = std::min(end, (segment + 1) * per_segment);
    int64_t first, last;
    segment_pixels(pixels, segments, segment, &first, &last);
    walk_pixel_slices(last - first, slice, group_end - item,
                      [&](int64_t i, int64_t p0, int64_t p1, bool accumulate) {
                        compute((item + i) % per_segment, segment, first + p0, first + p1,
                                accumulate);
                      });
    item = group_end;
  }
}

// The weight-gradient pass. One block per work item leaves threads idle when a layer has few
// active blocks over many pixels (the wide early layers at high sparsity, and after a
// gradient mask): then each block's pixels are cut into fixed segments whose partial sums
// are added in segment order. The segments depend on the problem only, never on the thread
// count, so neither does the result.
// grad_weight_simd for one-vector-wide blocks: the kept blocks in runs of at most
// kRunBlocksOf<W> consecutive blocks of one block row, each run's pixels cut into segments as
// grad_weight_simd cuts a block's; the segments' partial sums are added in segment order.
// Floats of the padded input (PaddedImages) a weight-gradient pass holds at once: larger
// batches are summed over chunks of images, so that the copy never costs more than this.
// (A build may set a smaller bound: the portable-vector kernel test does, to check chunks.)
#ifdef SPARCL_PADDED_INPUT_FLOATS
constexpr int64_t kPaddedInputFloats = SPARCL_PADDED_INPUT_FLOATS;
#else
constexpr int64_t kPaddedInputFloats = int64_t{16} << 20;
#endif

template <int W>
void grad_weight_runs_simd(const float* dy, const float* x, const bool* grad_block_mask,
                           float* grad_values, const BlockLayoutView& L, const ConvGeometry& g,
                           int threads, const BlockTaps& taps, int64_t active) {
  const int64_t block_elems = L.bm * L.bk;
  int32_t* ids = detail::index_workspace(2 * active + 1, 1);
  int32_t* run_start = ids + active;  // run r is ids[run_start[r] .. run_start[r + 1])
  int64_t runs = 0;
  for (int64_t j = 0, a = 0; j < L.nnz; ++j) {
    if (grad_block_mask && !grad_block_mask[j]) continue;
    const bool joins = a > 0 && a - run_start[runs - 1] < detail::kRunBlocksOf<W> &&
                       L.row_indices[ids[a - 1]] == L.row_indices[j];
    if (!joins) run_start[runs++] = static_cast<int32_t>(a);
    ids[a++] = static_cast<int32_t>(j);
  }
  run_start[runs] = static_cast<int32_t>(active);
  PaddedImages padded = PaddedImages::shape_of(g);
  const bool pad = use_padded_input(g, padded, active * block_elems);
  const int64_t chunk_images =
      pad ? std::clamp<int64_t>(kPaddedInputFloats / padded.size(1), 1,
                                std::max<int64_t>(g.batch, 1))
          : std::max<int64_t>(g.batch, 1);
  if (pad)
    padded.data = detail::thread_workspace(padded.size(chunk_images), detail::kPaddedInputSlot);
  int64_t image0 = 0;
  do {  // at least once: an empty batch still writes zeros
    ConvGeometry part = g;
    part.batch = std::min(chunk_images, g.batch - image0);
    const bool accumulate = image0 > 0;
    const int64_t pixels = part.batch * g.out_h * g.out_w;
    const float* part_dy = dy + image0 * g.out_h * g.out_w * L.rows();
    const float* part_x = x + image0 * g.in_h * g.in_w * g.channels;
    const int64_t segments = weight_gradient_segments(pixels, runs);
    // Segment s of kept block a lands in partials[(a * segments + s) * block_elems]; with one
    // segment that is the block's own gradient.
    float* partials = segments == 1 ? nullptr
                                    : detail::thread_workspace(active * segments * block_elems,
                                                               detail::kScratchSlot);
    run_parallel(threads, [&](int t, int nt) {
      const float* zeros = detail::thread_workspace(L.bk, detail::kZerosSlot);
      zero_masked_share(grad_block_mask, L.nnz, block_elems, grad_values, t, nt);
      int64_t begin, end;
      if (pad) {
        even_share(part.batch * padded.rows, t, nt, &begin, &end);
        padded.fill(part_x, part, begin, end);
        detail::barrier();
      }
      const int64_t step = g.stride_w * g.channels;
      const auto compute = [&](int64_t run, int64_t segment, int64_t p0, int64_t p1,
                               bool add) {
        const int32_t first = run_start[run];
        const int blocks = run_start[run + 1] - first;
        float* out[detail::kMaxRunBlocks];
        for (int q = 0; q < blocks; ++q)
          out[q] = partials ? partials + ((first + q) * segments + segment) * block_elems
                            : grad_values + static_cast<int64_t>(ids[first + q]) * block_elems;
        if (pad) {
          PaddedRunInput input(&padded, step);
          return grad_weight_run_simd<W>(part_dy, input, out, ids + first, blocks, p0, p1, L,
                                         part, taps, add);
        }
        DirectRunInput input(part_x, zeros, step, g.channels);
        grad_weight_run_simd<W>(part_dy, input, out, ids + first, blocks, p0, p1, L, part, taps,
                                add);
      };
      even_share(runs * segments, t, nt, &begin, &end);
      if (!partials) {
        return walk_pixel_slices(
            pixels, weight_gradient_slice(g, L.rows()), end - begin,
            [&](int64_t i, int64_t p0, int64_t p1, bool add) {
              compute(begin + i, 0, p0, p1, add || accumulate);
            });
      }
      // Segment-major, and slice by slice within a segment, as segmented_weight_gradient's
      // items.
      walk_segment_items(begin, end, runs, pixels, segments, segment_slice(g, L.rows()),
                         compute);
      detail::barrier();
      even_share(active, t, nt, &begin, &end);
      add_segment_partials(partials, ids, begin, end, segments, block_elems, grad_values,
                           accumulate);
    });
    image0 += part.batch;
  } while (image0 < g.batch);
}

// The end of a segmented weight-gradient pass, on the threads of its parallel region after
// its barrier: masked blocks get zeros, and each kept block ids[a] the sum of its segments'
// partials in segment order (segment s of kept block a at (a * segments + s) * block_elems).
inline void finish_segments(const bool* grad_block_mask, const int32_t* ids,
                            const float* partials, int64_t active, int64_t segments,
                            const BlockLayoutView& L, float* grad_values, int t, int nt) {
  const int64_t block_elems = L.bm * L.bk;
  int64_t begin, end;
  even_share(L.nnz, t, nt, &begin, &end);
  for (int64_t j = begin; j < end; ++j)
    if (grad_block_mask && !grad_block_mask[j])
      std::fill_n(grad_values + j * block_elems, block_elems, 0.0f);
  even_share(active, t, nt, &begin, &end);
  add_segment_partials(partials, ids, begin, end, segments, block_elems, grad_values);
}

// The weight-gradient pass of blocks computed one at a time over `extent` units (output
// pixels, or panel column vectors): block(out, j, first, last) writes block j's gradient over
// units [first, last) to out. Each block's units are cut into `segments` (from
// weight_gradient_segments) whose partial sums are added in segment order; with one segment,
// each thread's blocks walk the units in slices of `slice` (walk_pixel_slices), within a
// segment in slices of `within_segment`, block(out, j, first, last, accumulate) adding each
// slice after the first to out.
template <typename Block>
void segmented_weight_gradient(const bool* grad_block_mask, float* grad_values,
                               const BlockLayoutView& L, int64_t extent, int64_t segments,
                               int64_t slice, int64_t within_segment, int threads,
                               const Block& block) {
  const int64_t block_elems = L.bm * L.bk;
  const int64_t active = count_active(grad_block_mask, L.nnz);
  int32_t* ids = detail::index_workspace(active, 1);
  for (int64_t j = 0, a = 0; j < L.nnz; ++j)
    if (!grad_block_mask || grad_block_mask[j]) ids[a++] = static_cast<int32_t>(j);
  if (segments == 1) {
    return run_parallel(threads, [&](int t, int nt) {
      zero_masked_share(grad_block_mask, L.nnz, block_elems, grad_values, t, nt);
      int64_t begin, end;
      even_share(active, t, nt, &begin, &end);
      walk_pixel_slices(
          extent, slice, end - begin,
          [&](int64_t i, int64_t p0, int64_t p1, bool accumulate) {
            const int64_t j = ids[begin + i];
            block(grad_values + j * block_elems, j, p0, p1, accumulate);
          });
    });
  }
  float* partials =
      detail::thread_workspace(active * segments * block_elems, detail::kScratchSlot);
  run_parallel(threads, [&](int t, int nt) {
    int64_t begin, end;
    even_share(active * segments, t, nt, &begin, &end);
    // Segment-major items: a thread's share is every block over its segments' pixels, whose
    // rows then come from memory once per thread, not once per block (block-major, the
    // 64-channel layers' pass ran 1.5-1.8x slower with the activations in memory). Within a
    // segment, the blocks take its pixels slice by slice, as with one segment.
    walk_segment_items(begin, end, active, extent, segments, within_segment,
                       [&](int64_t a, int64_t s, int64_t p0, int64_t p1, bool accumulate) {
                         block(partials + (a * segments + s) * block_elems, ids[a], p0, p1,
                               accumulate);
                       });
    detail::barrier();
    finish_segments(grad_block_mask, ids, partials, active, segments, L, grad_values, t, nt);
  });
}

template <int W>
void grad_weight_simd(const float* dy, const float* x, const bool* grad_block_mask,
                      float* grad_values, const BlockLayoutView& L, const ConvGeometry& g,
                      int threads) {
  const BlockTaps taps = block_taps(L, g);
  const int64_t pixels = g.batch * g.out_h * g.out_w;
  const int64_t active = count_active(grad_block_mask, L.nnz);
  if (W == L.bk)
    return grad_weight_runs_simd<W>(dy, x, grad_block_mask, grad_values, L, g, threads, taps,
                                    active);
  const int64_t segments = weight_gradient_segments(pixels, active);
  segmented_weight_gradient(
      grad_block_mask, grad_values, L, pixels, segments, weight_gradient_slice(g, L.rows()),
      segment_slice(g, L.rows()), threads,
      [&](float* out, int64_t j, int64_t first, int64_t last, bool accumulate) {
        grad_weight_block_simd<W>(dy, x, out, j, first, last, L, g, taps, accumulate);
      });
}

// ------------------------------------------------------------------ weight gradient on panels
//
// For stride-1 convolutions with blocks narrower than a vector, over zero-padded panels of
// both operands on one grid: block j's gradient at (i, k) is the sum over panel columns c of
//   dy_panel[row i][c] * x_panel[channel k][c + shift_j],
// the grad_out panel being zero off the output image, the input panel zero in the padding.
// Pixels are the vectorised dimension (full vectors whatever the block side); a tile of
// kDotRows x kDotColumns vector accumulators loads rows + columns vectors per rows x columns
// multiply-adds, and the lanes are summed once per block and segment.

constexpr int kDotRows = 4;
// 4 x 4 accumulators beside 5 operand vectors fit 32 registers; with 16, 4 x 2.
constexpr int kDotColumns = detail::kTile * detail::kMaxVectors >= 24 ? 4 : 2;

// acc[(i * acc_ld + q) * W ...] (+)= sum over columns [c0, c1) (whole vectors) of
// dy_rows[i * dy_ld + c ...] * x_rows[q * x_ld + c ...], for i < TM, q < TC.
template <int W, int TM, int TC>
void panel_dot_tile(const float* dy_rows, int64_t dy_ld, const float* x_rows, int64_t x_ld,
                    int64_t c0, int64_t c1, float* acc, int64_t acc_ld, bool accumulate) {
  using V = simd::Vec<W>;
  V a[TM][TC];
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    SPARCL_UNROLL
    for (int q = 0; q < TC; ++q)
      a[i][q] = accumulate ? simd::load<W>(acc + (i * acc_ld + q) * W) : simd::zero<W>();
  }
  for (int64_t c = c0; c < c1; c += W) {
    V d[TM];
    SPARCL_UNROLL
    for (int i = 0; i < TM; ++i) d[i] = simd::load<W>(dy_rows + i * dy_ld + c);
    SPARCL_UNROLL
    for (int q = 0; q < TC; ++q) {
      const V xv = simd::load<W>(x_rows + q * x_ld + c);
      SPARCL_UNROLL
      for (int i = 0; i < TM; ++i) a[i][q] = simd::multiply_add<W>(d[i], xv, a[i][q]);
    }
  }
  SPARCL_UNROLL
  for (int i = 0; i < TM; ++i) {
    SPARCL_UNROLL
    for (int q = 0; q < TC; ++q) simd::store<W>(acc + (i * acc_ld + q) * W, a[i][q]);
  }
}

// out[e] (+)= the sum of the W lanes acc[e * W ...] for e < count: W sums at a time by one
// register transpose and W - 1 vector adds (summed lane by lane, the reduction cost as much
// as a chunk's multiply-adds).
template <int W>
void sum_lanes(const float* acc, int64_t count, float* out, bool accumulate) {
  int64_t e = 0;
  for (; e + W <= count; e += W) {
    simd::Vec<W> rows[W];
    SPARCL_UNROLL
    for (int i = 0; i < W; ++i) rows[i] = simd::load<W>(acc + (e + i) * W);
    simd::transpose<W>(rows);
    simd::Vec<W> sum = accumulate ? simd::load<W>(out + e) : simd::zero<W>();
    SPARCL_UNROLL
    for (int l = 0; l < W; ++l) sum = simd::add<W>(sum, rows[l]);
    simd::store<W>(out + e, sum);
  }
  for (; e < count; ++e) {
    float sum = accumulate ? out[e] : 0.0f;
    for (int l = 0; l < W; ++l) sum += acc[e * W + l];
    out[e] = sum;
  }
}

// The two chunk panels of a weight gradient (rows ld floats apart) and each block's
// channel block (offset_of) and tap shift.
struct WeightGradientPanels {
  const float* dy;
  int64_t dy_ld;
  const float* x;
  int64_t x_ld;
  PanelBlocks blocks;
};

// Block j's gradient over panel columns [0, columns) (whole vectors) added to out (bm x bk; set
// instead when !accumulate), in steps of columns whose panel rows stay in L1 while every tile
// of the block re-reads them.
template <int W>
void grad_weight_panel_block(const WeightGradientPanels& p, int64_t j, int64_t columns,
                             float* out, bool accumulate, const BlockLayoutView& L) {
  const float* dy_rows = p.dy + static_cast<int64_t>(L.row_indices[j]) * L.bm * p.dy_ld;
  const float* x_rows =
      p.x + static_cast<int64_t>(p.blocks.offset_of[j]) * L.bk * p.x_ld + p.blocks.shift[j];
  float* acc = detail::thread_workspace(L.bm * L.bk * W, detail::kAccumulatorSlot);
  const int64_t row_bytes = (L.bm + L.bk) * int64_t{sizeof(float)};
  const int64_t step = std::max<int64_t>(W, detail::kPanelStepBytes / row_bytes / W * W);
  for (int64_t start = 0;; start += step) {  // at least once: no columns give zeros
    const int64_t stop = std::min(columns, start + step);
    for (int64_t i0 = 0; i0 < L.bm; i0 += kDotRows) {
      const int tm = static_cast<int>(std::min<int64_t>(kDotRows, L.bm - i0));
      for (int64_t q0 = 0; q0 < L.bk; q0 += kDotColumns) {
        const int tc = static_cast<int>(std::min<int64_t>(kDotColumns, L.bk - q0));
        detail::with_constant<kDotRows>(tm, [&](auto TM) {
          detail::with_constant<kDotColumns>(tc, [&](auto TC) {
            panel_dot_tile<W, decltype(TM)::value, decltype(TC)::value>(
                dy_rows + i0 * p.dy_ld, p.dy_ld, x_rows + q0 * p.x_ld, p.x_ld, start, stop,
                acc + (i0 * L.bk + q0) * W, L.bk, start != 0);
          });
        });
      }
    }
    if (stop >= columns) break;
  }
  sum_lanes<W>(acc, L.bm * L.bk, out, accumulate);
}

// The weight gradient of a stride-1 convolution over chunk panels: the padded grid's rows are
// cut into segments (fixed by the problem, never by the thread count), a thread takes whole
// segments, and within a segment packs chunks of rows of both operands that fit in L2 (the
// whole-batch panels of a 128-channel layer are megabytes, and packing them ran at memory
// speed: 2-6 ms of a 10-50 ms pass), then adds every kept block's gradient over the chunk to
// the segment's partial. The partials are added in segment order.
template <int W>
void grad_weight_panels(const float* dy, const float* x, const bool* grad_block_mask,
                        float* grad_values, const BlockLayoutView& L, const ConvGeometry& g,
                        int threads) {
  // The input packed by stride phase on grad_out's grid (phase_grid): a block reads a row
  // block of its tap's phase at a grid shift, and the products run as at stride 1.
  const int64_t phases = g.stride_h * g.stride_w;
  const PhaseGrid grid = phase_grid(g);
  const int64_t top = grid.top, left = grid.left, rows = grid.rows, cols = grid.cols;
  const detail::PaddedGrid out_grid{g.batch, rows, cols, 0, 0, g.out_h, g.out_w};
  const detail::ImagePlacement x_place =
      detail::dense_images(g.in_h, g.in_w, g.channels, g.stride_h, g.stride_w);
  const detail::ImagePlacement dy_place = detail::dense_images(g.out_h, g.out_w, L.rows());
  const int64_t active = count_active(grad_block_mask, L.nnz);
  const PanelBlocks blocks = panel_blocks(L.nnz, active);
  int32_t* ids = blocks.offset_of + L.nnz;
  const int64_t channel_blocks = g.channels / L.bk;
  for (int64_t j = 0, a = 0; j < L.nnz; ++j) {
    const int64_t column = L.col_indices[j], tap = tap_of_column(L, g, column);
    const int64_t r = tap_row_shift(g, tap), c = tap_col_shift(g, tap);
    const int64_t phase = positive_mod(r, g.stride_h) * g.stride_w + positive_mod(c, g.stride_w);
    blocks.offset_of[j] = static_cast<int32_t>(phase * channel_blocks +
                                               channel_of_column(L, g, column) / L.bk);
    blocks.shift[j] = (floor_div(r, g.stride_h) + top) * cols + floor_div(c, g.stride_w) + left;
    if (!grad_block_mask || grad_block_mask[j]) ids[a++] = static_cast<int32_t>(j);
  }
  const int64_t grid_rows = g.batch * rows;
  const int64_t max_shift = grid.reach_h * cols + grid.reach_w;
  // x rows a chunk reads past its own: the taps' reach and the last vector's overrun.
  const int64_t halo_rows = (max_shift + W + cols - 1) / cols;
  const int64_t features = phases * g.channels + L.rows();
  const int64_t chunk_rows = std::max<int64_t>(
      1, (kCacheSliceFloats / features - halo_rows * cols) / cols);
  // At least 8 segments (or one per row) so that any thread count has a share; at least one
  // so that an empty batch still writes zeros.
  const int64_t segments = std::max<int64_t>(
      1, std::clamp<int64_t>((out_grid.positions() + kSegmentPixels - 1) / kSegmentPixels,
                             std::min<int64_t>(8, grid_rows), kWeightGradientItems));
  const int64_t block_elems = L.bm * L.bk;
  float* partials =
      detail::thread_workspace(segments * active * block_elems, detail::kScratchSlot);
  run_parallel(threads, [&](int t, int nt) {
    const int64_t chunk_columns = (chunk_rows * cols + W - 1) / W * W;
    const int64_t dy_ld = detail::panel_row_stride(chunk_columns);
    const int64_t x_ld = detail::panel_row_stride((chunk_rows + halo_rows) * cols);
    float* dy_panel = detail::thread_workspace(L.rows() * dy_ld, detail::kPanelOutSlot);
    float* x_panel = detail::thread_workspace(phases * g.channels * x_ld, detail::kPanelInSlot);
    const WeightGradientPanels panels{dy_panel, dy_ld, x_panel, x_ld, blocks};
    int64_t begin, end;
    even_share(segments, t, nt, &begin, &end);
    for (int64_t segment = begin; segment < end; ++segment) {
      int64_t s0, s1;
      segment_pixels(grid_rows, segments, segment, &s0, &s1);
      for (int64_t r0 = s0;; r0 += chunk_rows) {  // at least once: an empty segment gives zeros
        const int64_t r1 = std::min(s1, r0 + chunk_rows);
        detail::pack_padded_rows<W>(dy, L.rows(), out_grid, dy_place, r0, r1, dy_panel, dy_ld);
        for (int64_t phase = 0; phase < phases; ++phase) {
          const int64_t ph = phase / g.stride_w, pw = phase % g.stride_w;
          const detail::PaddedGrid x_grid{g.batch, rows, cols, top, left,
                                          phase_extent(g.in_h, ph, g.stride_h),
                                          phase_extent(g.in_w, pw, g.stride_w)};
          detail::pack_padded_rows<W>(x + (ph * g.in_w + pw) * g.channels, g.channels, x_grid,
                                      x_place, r0, r1 + halo_rows,
                                      x_panel + phase * g.channels * x_ld, x_ld);
        }
        const int64_t columns = ((r1 - r0) * cols + W - 1) / W * W;
        for (int64_t a = 0; a < active; ++a)
          grad_weight_panel_block<W>(panels, ids[a], columns,
                                     partials + (a * segments + segment) * block_elems, r0 != s0,
                                     L);
        if (r1 >= s1) break;
      }
    }
    detail::barrier();
    finish_segments(grad_block_mask, ids, partials, active, segments, L, grad_values, t, nt);
  });
}

// ------------------------------------------------------------------ portable paths

template <typename T>
void forward_generic(const T* x, const T* values, const T* bias, T* y, const BlockLayoutView& L,
                     const ConvGeometry& g, int threads) {
  const int64_t pixels = g.batch * g.out_h * g.out_w, cout = L.rows();
  run_parallel(threads, [&](int t, int nt) {
    int64_t begin, end;
    even_share(pixels, t, nt, &begin, &end);
    for (int64_t p = begin; p < end; ++p) {
      const Pixel pixel = pixel_of(p, g.out_h, g.out_w);
      for (int64_t o = 0; o < cout; ++o) {
        const int64_t r = o / L.bm, m = o % L.bm;
        T sum = bias ? bias[o] : T(0);
        for (int32_t j = L.row_offsets[r]; j < L.row_offsets[r + 1]; ++j) {
          const int64_t col = L.col_indices[j];
          const int64_t src = input_pixel(g, pixel, tap_of_column(L, g, col));
          if (src < 0) continue;
          const T* xr = x + src * g.channels + channel_of_column(L, g, col);
          const T* wr = values + (static_cast<int64_t>(j) * L.bm + m) * L.bk;
          for (int64_t k = 0; k < L.bk; ++k) sum += xr[k] * wr[k];
        }
        y[p * cout + o] = sum;
      }
    }
  });
}

template <typename T>
void grad_input_generic(const T* dy, const T* values, T* dx, const BlockLayoutView& L,
                        const ConvGeometry& g, int threads) {
  const int64_t pixels = g.batch * g.in_h * g.in_w, cout = L.rows();
  const int64_t channel_blocks = g.channels / L.bk, taps = g.kernel_h * g.kernel_w;
  run_parallel(threads, [&](int t, int nt) {
    int64_t begin, end;
    even_share(pixels, t, nt, &begin, &end);
    for (int64_t q = begin; q < end; ++q) {
      const Pixel pixel = pixel_of(q, g.in_h, g.in_w);
      T* out = dx + q * g.channels;
      std::fill_n(out, g.channels, T(0));
      for (int64_t tap = 0; tap < taps; ++tap) {
        const int64_t p = output_pixel(g, pixel, tap);
        if (p < 0) continue;
        for (int64_t cb = 0; cb < channel_blocks; ++cb) {
          const int64_t col = tap * channel_blocks + cb;
          for (int32_t s = L.transpose_offsets[col]; s < L.transpose_offsets[col + 1]; ++s) {
            const int64_t j = L.transpose_block_ids[s];
            const T* dyr = dy + p * cout + static_cast<int64_t>(L.row_indices[j]) * L.bm;
            const T* wb = values + j * L.bm * L.bk;
            for (int64_t m = 0; m < L.bm; ++m)
              for (int64_t k = 0; k < L.bk; ++k) out[cb * L.bk + k] += dyr[m] * wb[m * L.bk + k];
          }
        }
      }
    }
  });
}

template <typename T>
void grad_weight_block_generic(const T* dy, const T* x, T* dw, int64_t j,
                               const BlockLayoutView& L, const ConvGeometry& g) {
  const int64_t pixels = g.batch * g.out_h * g.out_w, cout = L.rows();
  const int64_t col = L.col_indices[j];
  const int64_t tap = tap_of_column(L, g, col), channel = channel_of_column(L, g, col);
  T* out = dw + j * L.bm * L.bk;
  std::fill_n(out, L.bm * L.bk, T(0));
  for (int64_t p = 0; p < pixels; ++p) {
    const int64_t src = input_pixel(g, pixel_of(p, g.out_h, g.out_w), tap);
    if (src < 0) continue;
    const T* dyr = dy + p * cout + static_cast<int64_t>(L.row_indices[j]) * L.bm;
    const T* xr = x + src * g.channels + channel;
    for (int64_t m = 0; m < L.bm; ++m)
      for (int64_t k = 0; k < L.bk; ++k) out[m * L.bk + k] += dyr[m] * xr[k];
  }
}

// ------------------------------------------------------------------ passes

template <typename T>
void forward(const T* x, const T* values, const T* values_t, const T* bias, T* y,
             const BlockLayoutView& L, const ConvGeometry& g, const Execution& exec) {
  if (g.batch * g.out_h * g.out_w == 0 || L.block_rows == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (use_panels(L.bm, g, exec.max_width, true, mean_group_blocks(L.nnz, L.block_rows))) {
      const float* blocks_t =
          values_t ? values_t : transposed_blocks(values, L.nnz, L.bm, L.bk, exec.threads);
      return detail::with_width(exec.max_width, [&](auto W) {
        forward_panels<decltype(W)::value>(x, blocks_t, bias, y, L, g, exec.threads);
      });
    }
    if (const int width = simd_width(x, L.bm, exec.max_width)) {
      // The blocks transposed (output channels contiguous): the caller's copy, or one made
      // here into a reused buffer.
      const float* blocks_t =
          values_t ? values_t : transposed_blocks(values, L.nnz, L.bm, L.bk, exec.threads);
      return detail::with_width(width, [&](auto W) {
        forward_simd<decltype(W)::value>(x, blocks_t, bias, y, L, g, exec.threads);
      });
    }
  }
  forward_generic<T>(x, values, bias, y, L, g, exec.threads);
}

template <typename T>
void grad_input(const T* grad_out, const T* values, T* grad_x, const BlockLayoutView& L,
                const ConvGeometry& g, const Execution& exec) {
  if (g.batch * g.in_h * g.in_w == 0 || g.channels == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (use_panels(L.bk, g, exec.max_width, false,
                   mean_group_blocks(L.nnz, g.channels / L.bk))) {
      return detail::with_width(exec.max_width, [&](auto W) {
        grad_input_panels<decltype(W)::value>(grad_out, values, grad_x, L, g, exec.threads);
      });
    }
    if (const int width = simd_width(grad_out, L.bk, exec.max_width)) {
      return detail::with_width(width, [&](auto W) {
        grad_input_simd<decltype(W)::value>(grad_out, values, grad_x, L, g, exec.threads);
      });
    }
  }
  grad_input_generic<T>(grad_out, values, grad_x, L, g, exec.threads);
}

template <typename T>
void grad_weight(const T* grad_out, const T* x, const bool* grad_block_mask, T* grad_values,
                 const BlockLayoutView& L, const ConvGeometry& g, const Execution& exec) {
  if constexpr (std::is_same_v<T, float>) {
    if (use_weight_gradient_panels(L.bk, g, exec.max_width)) {
      return detail::with_width(exec.max_width, [&](auto W) {
        grad_weight_panels<decltype(W)::value>(grad_out, x, grad_block_mask, grad_values, L, g,
                                               exec.threads);
      });
    }
    if (const int width = simd_width(x, L.bk, exec.max_width)) {
      return detail::with_width(width, [&](auto W) {
        grad_weight_simd<decltype(W)::value>(grad_out, x, grad_block_mask, grad_values, L, g,
                                             exec.threads);
      });
    }
  }
  weight_gradient_pass(grad_block_mask, L.nnz, L.bm * L.bk, grad_values, exec.threads,
                       [&](int64_t j) {
                         grad_weight_block_generic<T>(grad_out, x, grad_values, j, L, g);
                       });
}

}  // namespace conv
}  // namespace sparcl::SPARCL_ISA_NS
