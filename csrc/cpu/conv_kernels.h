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
#include "microkernels.h"
#include "partition.h"

namespace sparcl::SPARCL_ISA_NS {
namespace conv {

using detail::kTile;
using detail::run_parallel;

constexpr int64_t kPixelChunk = 8 * kTile;  // output (or input) pixels per work item
constexpr int64_t kSliceRows = 64;   // pixels per weight-gradient slice

struct Pixel {
  int64_t image, row, col;
};

inline Pixel pixel_of(int64_t index, int64_t height, int64_t width) {
  return {index / (height * width), (index / width) % height, index % width};
}

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

inline int64_t tap_of_column(const BlockLayoutView& L, const ConvGeometry& g, int64_t col) {
  return col * L.bk / g.channels;
}

inline int64_t channel_of_column(const BlockLayoutView& L, const ConvGeometry& g, int64_t col) {
  return col * L.bk % g.channels;
}

// Forward tile rows: for block j (tap t, channel offset c), pixel i reads x[src_i(t), c...].
struct ForwardRows {
  const float* x;
  const float* zeros;
  const BlockLayoutView* L;
  const ConvGeometry* g;
  Pixel pixels[kTile];
  template <int TN>
  void operator()(int64_t j, const float* (&rows)[TN]) const {
    const int64_t col = L->col_indices[j];
    const int64_t tap = tap_of_column(*L, *g, col), channel = channel_of_column(*L, *g, col);
    SPARCL_UNROLL
    for (int i = 0; i < TN; ++i) {
      const int64_t src = input_pixel(*g, pixels[i], tap);
      rows[i] = src < 0 ? zeros : x + src * g->channels + channel;
    }
  }
};

// Input-gradient tile rows for one tap: pixel i reads grad_out[dst_i(t), row(j) * bm ...].
struct GradInputRows {
  const float* dy;
  const float* zeros;
  const BlockLayoutView* L;
  int64_t out_channels;
  int64_t targets[kTile];  // output pixel per tile row at the current tap, or -1
  template <int TN>
  void operator()(int64_t j, const float* (&rows)[TN]) const {
    const int64_t offset = static_cast<int64_t>(L->row_indices[j]) * L->bm;
    SPARCL_UNROLL
    for (int i = 0; i < TN; ++i)
      rows[i] = targets[i] < 0 ? zeros : dy + targets[i] * out_channels + offset;
  }
};

// Vector width for the fp32 micro-kernels (0: portable loops). fp64 always runs the loops.
inline int simd_width(const float*, int64_t contiguous, int max_width) {
  return detail::pick_width(contiguous, max_width);
}
inline int simd_width(const double*, int64_t, int) { return 0; }

// ------------------------------------------------------------------ fp32 fast paths

template <int W>
void forward_simd(const float* x, const float* values, const float* bias, float* y,
                  const BlockLayoutView& L, const ConvGeometry& g, int threads) {
  const int64_t pixels = g.batch * g.out_h * g.out_w, cout = L.rows();
  float* values_t = detail::thread_workspace(L.nnz * L.bm * L.bk, 0);
  const float* zeros = detail::thread_workspace(g.channels, 1);
  const ItemGrid grid{L.row_offsets, L.block_rows, (pixels + kPixelChunk - 1) / kPixelChunk};
  run_parallel(threads, [&](int t, int nt) {
    int64_t begin, end;
    even_share(L.nnz, t, nt, &begin, &end);
    detail::transpose_blocks(values, values_t, begin, end, L.bm, L.bk);
    detail::barrier();
    const int64_t first = grid.first_item(t, nt), last = grid.first_item(t + 1, nt);
    for (int64_t item = first; item < last; ++item) {
      const int64_t r = item / grid.chunks, p0 = (item % grid.chunks) * kPixelChunk;
      const int64_t count = std::min(kPixelChunk, pixels - p0);
      const auto tile_rows = [&](int64_t n) {
        ForwardRows rows{x, zeros, &L, &g, {}};
        for (int i = 0; i < kTile && n + i < count; ++i)
          rows.pixels[i] = pixel_of(p0 + n + i, g.out_h, g.out_w);
        return rows;
      };
      detail::accumulate_slab<W>(count, tile_rows, values_t, L.bk, L.bm, nullptr,
                              L.row_offsets[r], L.row_offsets[r + 1],
                              bias ? bias + r * L.bm : nullptr, false, y + p0 * cout + r * L.bm,
                              cout);
    }
  });
}

template <int W>
void grad_input_simd(const float* dy, const float* values, float* dx, const BlockLayoutView& L,
                     const ConvGeometry& g, int threads) {
  const int64_t pixels = g.batch * g.in_h * g.in_w, cout = L.rows();
  const int64_t channel_blocks = g.channels / L.bk, taps = g.kernel_h * g.kernel_w;
  const int64_t chunks = (pixels + kPixelChunk - 1) / kPixelChunk;
  const float* zeros = detail::thread_workspace(cout, 1);
  run_parallel(threads, [&](int, int) {
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < channel_blocks * chunks; ++item) {
      const int64_t cb = item / chunks, q0 = (item % chunks) * kPixelChunk;
      const int64_t count = std::min(kPixelChunk, pixels - q0);
      float* out = dx + q0 * g.channels + cb * L.bk;
      bool written = false;
      for (int64_t tap = 0; tap < taps; ++tap) {
        const int64_t col = tap * channel_blocks + cb;
        const int32_t sb = L.transpose_offsets[col], se = L.transpose_offsets[col + 1];
        if (sb == se) continue;
        const auto tile_rows = [&](int64_t n) {
          GradInputRows rows{dy, zeros, &L, cout, {}};
          for (int i = 0; i < kTile && n + i < count; ++i)
            rows.targets[i] = output_pixel(g, pixel_of(q0 + n + i, g.in_h, g.in_w), tap);
          return rows;
        };
        detail::accumulate_slab<W>(count, tile_rows, values, L.bm, L.bk, L.transpose_block_ids, sb,
                                se, nullptr, written, out, g.channels);
        written = true;
      }
      if (!written)
        for (int64_t n = 0; n < count; ++n) std::fill_n(out + n * g.channels, L.bk, 0.0f);
    }
  });
}

template <int W>
void grad_weight_block_simd(const float* dy, const float* x, float* dw, int64_t j,
                            const BlockLayoutView& L, const ConvGeometry& g) {
  const int64_t pixels = g.batch * g.out_h * g.out_w, cout = L.rows();
  const int64_t col = L.col_indices[j];
  const int64_t tap = tap_of_column(L, g, col), channel = channel_of_column(L, g, col);
  const float* dyb = dy + static_cast<int64_t>(L.row_indices[j]) * L.bm;
  float* out = dw + j * L.bm * L.bk;
  const float* dy_rows[kSliceRows];
  const float* x_rows[kSliceRows];
  bool written = false;
  int64_t count = 0;
  const auto flush = [&] {
    detail::outer_product_block<W>(detail::GatheredRows{dy_rows, x_rows}, count, L.bm, L.bk,
                                written, out);
    written = true;
    count = 0;
  };
  for (int64_t p = 0; p < pixels; ++p) {
    const int64_t src = input_pixel(g, pixel_of(p, g.out_h, g.out_w), tap);
    if (src < 0) continue;  // padding contributes nothing
    dy_rows[count] = dyb + p * cout;
    x_rows[count] = x + src * g.channels + channel;
    if (++count == kSliceRows) flush();
  }
  if (count || !written) flush();
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
void forward(const T* x, const T* values, const T* bias, T* y, const BlockLayoutView& L,
             const ConvGeometry& g, const Execution& exec) {
  if (g.batch * g.out_h * g.out_w == 0 || L.block_rows == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (const int width = simd_width(x, L.bm, exec.max_width)) {
      return detail::with_width(width, [&](auto W) {
        forward_simd<decltype(W)::value>(x, values, bias, y, L, g, exec.threads);
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
  const int64_t active = count_active(grad_block_mask, L.nnz);
  const auto share = [&](const auto& compute) {
    run_parallel(exec.threads, [&](int t, int nt) {
      weight_gradient_share(grad_block_mask, L.nnz, active, L.bm * L.bk, grad_values, t, nt,
                            compute);
    });
  };
  if constexpr (std::is_same_v<T, float>) {
    if (const int width = simd_width(x, L.bk, exec.max_width)) {
      return detail::with_width(width, [&](auto W) {
        share([&](int64_t j) {
          grad_weight_block_simd<decltype(W)::value>(grad_out, x, grad_values, j, L, g);
        });
      });
    }
  }
  share([&](int64_t j) { grad_weight_block_generic<T>(grad_out, x, grad_values, j, L, g); });
}

}  // namespace conv
}  // namespace sparcl::SPARCL_ISA_NS
