// Torch-free test of the CPU kernels against a scalar reference, for every instruction set
// this build has and this CPU runs (and the AVX-512 tiling at 16-float vectors anywhere):
// all passes of the linear and convolution kernels, square and non-square blocks, empty and
// full layouts, masked weight gradients, odd batch sizes, 1 and 2 threads, fp32 and fp64.
// Cross-compiled for aarch64 and run under qemu by `make test-arm`; natively by pytest.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../bf16_convert.h"
#include "../block_sparse.h"
#include "../block_sparse_conv.h"

// The work split (partition.h) on its own, in a copy of the portable instruction set's
// namespace of this file.
#include "../isa_prelude.h"
#define SPARCL_ISA_NS split_test
#define SPARCL_ISA_WIDTH 4
#define SPARCL_TILE_ROWS 6
#define SPARCL_MAX_VECTORS 2
#include "../partition.h"

namespace {

using sparcl::BlockLayoutView;
using sparcl::ConvGeometry;

int failures = 0;
int checks = 0;

// A block layout and its index arrays, built from a block mask in row-major block order.
struct Layout {
  int64_t block_rows, block_cols, bm, bk;
  std::vector<int32_t> row_offsets, col_indices, row_indices, transpose_offsets, transpose_ids;

  Layout(const std::vector<bool>& mask, int64_t rows, int64_t cols, int64_t bm_, int64_t bk_)
      : block_rows(rows), block_cols(cols), bm(bm_), bk(bk_) {
    row_offsets.push_back(0);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c)
        if (mask[r * cols + c]) {
          col_indices.push_back(static_cast<int32_t>(c));
          row_indices.push_back(static_cast<int32_t>(r));
        }
      row_offsets.push_back(static_cast<int32_t>(col_indices.size()));
    }
    transpose_offsets.push_back(0);
    for (int64_t c = 0; c < cols; ++c) {
      for (size_t j = 0; j < col_indices.size(); ++j)
        if (col_indices[j] == c) transpose_ids.push_back(static_cast<int32_t>(j));
      transpose_offsets.push_back(static_cast<int32_t>(transpose_ids.size()));
    }
  }

  int64_t nnz() const { return static_cast<int64_t>(col_indices.size()); }

  BlockLayoutView view() const {
    return {block_rows,         block_cols,         bm,
            bk,                 nnz(),              row_offsets.data(),
            col_indices.data(), row_indices.data(), transpose_offsets.data(),
            transpose_ids.data()};
  }

  // Dense weight [rows * bm, cols * bk] from values [nnz, bm, bk].
  template <typename T>
  std::vector<double> dense(const std::vector<T>& values) const {
    const int64_t M = block_rows * bm, K = block_cols * bk;
    std::vector<double> w(M * K, 0.0);
    for (int64_t j = 0; j < nnz(); ++j)
      for (int64_t m = 0; m < bm; ++m)
        for (int64_t k = 0; k < bk; ++k)
          w[(row_indices[j] * bm + m) * K + col_indices[j] * bk + k] = values[(j * bm + m) * bk + k];
    return w;
  }
};

template <typename T>
std::vector<T> random_vector(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(dist(rng));
  return v;
}

std::vector<bool> random_mask(size_t n, double density, std::mt19937& rng) {
  std::bernoulli_distribution keep(density);
  std::vector<bool> mask(n);
  for (size_t i = 0; i < n; ++i) mask[i] = keep(rng);
  return mask;
}

// values [nnz, bm, bk] with every block transposed: [nnz, bk, bm].
template <typename T>
std::vector<T> transposed(const std::vector<T>& values, int64_t nnz, int64_t bm, int64_t bk) {
  std::vector<T> out(values.size());
  for (int64_t j = 0; j < nnz; ++j)
    for (int64_t m = 0; m < bm; ++m)
      for (int64_t k = 0; k < bk; ++k) out[(j * bk + k) * bm + m] = values[(j * bm + m) * bk + k];
  return out;
}

template <typename T>
void expect_close(const std::vector<T>& actual, const std::vector<double>& expected,
                  int64_t reduction, const std::string& what) {
  ++checks;
  const double tol = (sizeof(T) == 4 ? 2e-5 : 1e-12) * std::sqrt(static_cast<double>(reduction) + 1);
  for (size_t i = 0; i < expected.size(); ++i) {
    const double diff = std::fabs(actual[i] - expected[i]);
    if (!(diff <= tol * (1.0 + std::fabs(expected[i])))) {
      std::printf("FAIL %s: element %zu is %.9g, expected %.9g\n", what.c_str(), i,
                  static_cast<double>(actual[i]), expected[i]);
      ++failures;
      return;
    }
  }
}

// ------------------------------------------------------------------ linear

struct LinearReference {
  std::vector<double> y, dx, dw;
};

// The three passes in double over the dense weight w ([M, K]) of layout L: y = x w^T + bias,
// dx = dy w, and the stored blocks' gradient where mask is true (zero elsewhere).
template <typename T>
LinearReference linear_reference(const Layout& L, const std::vector<double>& w,
                                 const std::vector<T>& x, const std::vector<T>& dy,
                                 const std::vector<T>& bias, const bool* mask, int64_t n) {
  const int64_t M = L.block_rows * L.bm, K = L.block_cols * L.bk, bm = L.bm, bk = L.bk;
  LinearReference r{std::vector<double>(n * M), std::vector<double>(n * K),
                    std::vector<double>(L.nnz() * bm * bk, 0.0)};
  for (int64_t i = 0; i < n; ++i)
    for (int64_t m = 0; m < M; ++m) {
      double sum = bias[m];
      for (int64_t k = 0; k < K; ++k) sum += x[i * K + k] * w[m * K + k];
      r.y[i * M + m] = sum;
    }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < K; ++k) {
      double sum = 0;
      for (int64_t m = 0; m < M; ++m) sum += dy[i * M + m] * w[m * K + k];
      r.dx[i * K + k] = sum;
    }
  for (int64_t j = 0; j < L.nnz(); ++j) {
    if (!mask[j]) continue;
    for (int64_t m = 0; m < bm; ++m)
      for (int64_t k = 0; k < bk; ++k) {
        double sum = 0;
        for (int64_t i = 0; i < n; ++i)
          sum += dy[i * M + L.row_indices[j] * bm + m] * x[i * K + L.col_indices[j] * bk + k];
        r.dw[(j * bm + m) * bk + k] = sum;
      }
  }
  return r;
}

template <typename T>
void check_linear(int64_t rows, int64_t cols, int64_t bm, int64_t bk, double density, int64_t n,
                  int threads, std::mt19937& rng, const std::string& tag) {
  const Layout L(random_mask(rows * cols, density, rng), rows, cols, bm, bk);
  const int64_t M = rows * bm, K = cols * bk, nnz = L.nnz();
  const auto x = random_vector<T>(n * K, rng), dy = random_vector<T>(n * M, rng);
  const auto values = random_vector<T>(nnz * bm * bk, rng), bias = random_vector<T>(M, rng);
  const auto grad_mask = random_mask(nnz, 0.5, rng);
  std::unique_ptr<bool[]> mask(new bool[nnz + 1]);
  for (int64_t j = 0; j < nnz; ++j) mask[j] = grad_mask[j];
  const auto w = L.dense(values);
  const std::string what = tag + " linear " + std::to_string(bm) + "x" + std::to_string(bk) +
                           " grid " + std::to_string(rows) + "x" + std::to_string(cols) +
                           " n=" + std::to_string(n) + " density=" + std::to_string(density);

  const auto [y_ref, dx_ref, dw_ref] = linear_reference(L, w, x, dy, bias, mask.get(), n);

  std::vector<T> y(n * M, T(7)), dx(n * K, T(7)), dw(nnz * bm * bk, T(7));
  sparcl::block_sparse_forward<T>(x.data(), values.data(), nullptr, bias.data(), y.data(), n,
                                  L.view(), threads);
  expect_close(y, y_ref, K, what + " forward");
  const std::vector<T> values_t = transposed(values, nnz, bm, bk);
  std::fill(y.begin(), y.end(), T(7));
  sparcl::block_sparse_forward<T>(x.data(), values.data(), values_t.data(), bias.data(),
                                  y.data(), n, L.view(), threads);
  expect_close(y, y_ref, K, what + " forward (caller's transposed blocks)");
  sparcl::block_sparse_grad_input<T>(dy.data(), values.data(), dx.data(), n, L.view(), threads);
  expect_close(dx, dx_ref, M, what + " grad_input");
  sparcl::block_sparse_grad_weight<T>(dy.data(), x.data(), mask.get(), dw.data(), n, L.view(),
                                      threads);
  expect_close(dw, dw_ref, n, what + " grad_weight (masked)");
}

// ------------------------------------------------------------------ bf16 linear

std::vector<uint16_t> to_bf16(const std::vector<float>& values) {
  std::vector<uint16_t> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = sparcl::bf16::from_float(values[i]);
  return out;
}

std::vector<float> widened(const std::vector<uint16_t>& values) {
  std::vector<float> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = sparcl::bf16::to_float(values[i]);
  return out;
}

// bf16 results against a double reference over the same bf16-rounded operands: the fp32
// accumulation's error, plus the final rounding to bf16 (half an ulp, 2^-9 relative) when
// `rounded`.
void expect_close_bf16(const std::vector<float>& actual, const std::vector<double>& expected,
                       int64_t reduction, bool rounded, const std::string& what) {
  ++checks;
  const double accumulation = 2e-5 * std::sqrt(static_cast<double>(reduction) + 1);
  for (size_t i = 0; i < expected.size(); ++i) {
    const double magnitude = std::fabs(expected[i]);
    const double tol = accumulation * (1.0 + magnitude) + (rounded ? magnitude / 256 : 0.0);
    if (!(std::fabs(actual[i] - expected[i]) <= tol)) {
      std::printf("FAIL %s: element %zu is %.9g, expected %.9g\n", what.c_str(), i,
                  static_cast<double>(actual[i]), expected[i]);
      ++failures;
      return;
    }
  }
}

void check_linear_bf16(int64_t rows, int64_t cols, int64_t bm, int64_t bk, double density,
                       int64_t n, int threads, std::mt19937& rng, const std::string& tag) {
  const Layout L(random_mask(rows * cols, density, rng), rows, cols, bm, bk);
  const int64_t M = rows * bm, K = cols * bk, nnz = L.nnz();
  const auto x = to_bf16(random_vector<float>(n * K, rng));
  const auto dy = to_bf16(random_vector<float>(n * M, rng));
  const auto values = random_vector<float>(nnz * bm * bk, rng);
  const auto bias = random_vector<float>(M, rng);
  const auto grad_mask = random_mask(nnz, 0.5, rng);
  std::unique_ptr<bool[]> mask(new bool[nnz + 1]);
  for (int64_t j = 0; j < nnz; ++j) mask[j] = grad_mask[j];
  const auto w = L.dense(widened(to_bf16(values)));  // the kernels multiply rounded blocks
  const std::string what = tag + " bf16 linear " + std::to_string(bm) + "x" +
                           std::to_string(bk) + " grid " + std::to_string(rows) + "x" +
                           std::to_string(cols) + " n=" + std::to_string(n) +
                           " density=" + std::to_string(density) +
                           " threads=" + std::to_string(threads);

  const auto [y_ref, dx_ref, dw_ref] =
      linear_reference(L, w, widened(x), widened(dy), bias, mask.get(), n);

  std::vector<uint16_t> packed_forward(nnz * bm * bk * 2), packed_grad_input(nnz * bm * bk * 2);
  sparcl::bf16_pack_blocks(values.data(), packed_forward.data(), packed_grad_input.data(), nnz,
                           bm, bk, threads);
  std::vector<uint16_t> y(n * M, 0x7fc0), dx(n * K, 0x7fc0);  // NaN until written
  std::vector<float> dw(nnz * bm * bk, 7.0f);
  sparcl::block_sparse_forward_bf16(x.data(), packed_forward.data(), bias.data(), y.data(), n,
                                    L.view(), threads);
  expect_close_bf16(widened(y), y_ref, K, true, what + " forward");
  sparcl::block_sparse_grad_input_bf16(dy.data(), packed_grad_input.data(), dx.data(), n,
                                       L.view(), threads);
  expect_close_bf16(widened(dx), dx_ref, M, true, what + " grad_input");
  sparcl::block_sparse_grad_weight_bf16(dy.data(), x.data(), mask.get(), dw.data(), n, L.view(),
                                        threads);
  expect_close_bf16(dw, dw_ref, n, false, what + " grad_weight (masked)");
}

void check_conv_bf16(int64_t cin, int64_t cout, int64_t kh, int64_t kw, int64_t stride,
                     int64_t pad, int64_t dilation, int64_t h, int64_t w_in, int64_t batch,
                     int64_t bm, int64_t bk, double density, int threads, std::mt19937& rng,
                     const std::string& tag);

void run_bf16(std::mt19937& rng, const std::string& tag) {
  const int64_t blocks[][2] = {{4, 4}, {8, 8}, {16, 16}, {32, 32}, {16, 32}, {32, 8}, {8, 24},
                               {12, 4}, {64, 16}};
  for (const auto& block : blocks)
    for (const double density : {0.0, 0.4, 1.0})
      for (const int64_t n : {0, 1, 7, 50})
        for (const int threads : {1, 2})
          check_linear_bf16(3, 4, block[0], block[1], density, n, threads, rng, tag);
  struct ConvCase {
    int64_t cin, cout, kh, kw, stride, pad, dilation, h, w, batch;
  };
  const ConvCase convs[] = {{16, 16, 3, 3, 1, 1, 1, 6, 5, 2}, {16, 32, 3, 3, 2, 1, 1, 7, 9, 3},
                            {32, 16, 1, 1, 1, 0, 1, 5, 5, 1}, {16, 16, 3, 1, 2, 2, 2, 7, 6, 2},
                            {8, 16, 5, 3, 3, 2, 1, 11, 4, 1}, {16, 16, 3, 3, 1, 1, 1, 16, 14, 2},
                            // one input row: stride phase row 1 has no pixels
                            {16, 16, 3, 3, 2, 1, 1, 1, 5, 2},
                            // 64 output pixels or more: blocks narrower than the widest pair
                            // dot product on padded pair panels (a strided input gradient of
                            // odd sizes, a forward without padding, a dilated uneven kernel
                            // whose forward keeps the tiles)
                            {16, 16, 3, 3, 2, 1, 1, 17, 18, 1}, {16, 32, 3, 3, 1, 0, 1, 10, 12, 1},
                            {16, 16, 3, 1, 1, 2, 2, 9, 8, 2},
                            // even sizes at stride 2: phases of one size, two chunks each
                            {16, 16, 3, 3, 2, 1, 1, 16, 18, 2},
                            // groups of many blocks (36 and 72 at density 1): the pair panels
                            // of the forward on 8x8 images and the input gradient on 4x4
                            {32, 32, 3, 3, 1, 1, 1, 8, 8, 2}, {32, 64, 3, 3, 1, 1, 1, 4, 4, 2}};
  const int64_t conv_blocks[][2] = {{8, 8}, {16, 16}, {4, 4}, {16, 8}};
  for (const auto& c : convs)
    for (const auto& block : conv_blocks)
      for (const double density : {0.0, 0.5, 1.0})
        for (const int threads : {1, 2})
          if (c.cin % block[1] == 0 && c.cout % block[0] == 0)
            check_conv_bf16(c.cin, c.cout, c.kh, c.kw, c.stride, c.pad, c.dilation, c.h, c.w,
                            c.batch, block[0], block[1], density, threads, rng, tag);
  // Batch pairs split between threads (partial sums added at the end), odd batch.
  check_linear_bf16(8, 8, 32, 32, 0.3, 601, 2, rng, tag);
  // Several weight-gradient chunks per thread (128 pairs of 1,024 packed columns).
  for (const int threads : {1, 2}) check_linear_bf16(16, 16, 32, 32, 1.0, 301, threads, rng, tag);
  // One full block row among empty ones: uneven work across threads.
  check_linear_bf16(6, 3, 16, 8, 0.15, 130, 2, rng, tag);
  // Operands over 2 MiB (kPairLookaheadBytes): the forward and the input gradient read their
  // tiles' rows through LookaheadPairRows, as in the fp32 cases of run_all.
  check_linear_bf16(1, 64, 32, 32, 0.15, 1029, 2, rng, tag);
  check_linear_bf16(64, 1, 32, 32, 0.04, 1029, 2, rng, tag);
}

// ------------------------------------------------------------------ convolution

// The three passes of the convolution in double over the dense GEMM-view weight w
// ([cout, taps * cin]); the weight gradient only for stored blocks where mask is true.
template <typename T>
LinearReference conv_reference(const Layout& L, const ConvGeometry& g,
                               const std::vector<double>& w, const std::vector<T>& x,
                               const std::vector<T>& dy, const std::vector<T>& bias,
                               const bool* mask) {
  const int64_t cin = g.channels, cout = L.block_rows * L.bm, taps = g.kernel_h * g.kernel_w;
  const int64_t K = taps * cin, bm = L.bm, bk = L.bk, nnz = L.nnz();
  const int64_t out_pixels = g.batch * g.out_h * g.out_w, in_pixels = g.batch * g.in_h * g.in_w;
  LinearReference r{std::vector<double>(out_pixels * cout), std::vector<double>(in_pixels * cin, 0.0),
                    std::vector<double>(nnz * bm * bk, 0.0)};
  std::vector<double> dw_dense(cout * K, 0.0);
  for (int64_t p = 0; p < out_pixels; ++p) {
    const int64_t b = p / (g.out_h * g.out_w), oh = (p / g.out_w) % g.out_h, ow = p % g.out_w;
    for (int64_t o = 0; o < cout; ++o) r.y[p * cout + o] = bias[o];
    for (int64_t t = 0; t < taps; ++t) {
      const int64_t ih = oh * g.stride_h - g.pad_h + (t / g.kernel_w) * g.dilation_h;
      const int64_t iw = ow * g.stride_w - g.pad_w + (t % g.kernel_w) * g.dilation_w;
      if (ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) continue;
      const int64_t q = (b * g.in_h + ih) * g.in_w + iw;
      for (int64_t o = 0; o < cout; ++o)
        for (int64_t c = 0; c < cin; ++c) {
          const double wv = w[o * K + t * cin + c];
          r.y[p * cout + o] += wv * x[q * cin + c];
          r.dx[q * cin + c] += wv * dy[p * cout + o];
          dw_dense[o * K + t * cin + c] += dy[p * cout + o] * x[q * cin + c];
        }
    }
  }
  for (int64_t j = 0; j < nnz; ++j) {
    if (!mask[j]) continue;
    for (int64_t m = 0; m < bm; ++m)
      for (int64_t k = 0; k < bk; ++k)
        r.dw[(j * bm + m) * bk + k] =
            dw_dense[(L.row_indices[j] * bm + m) * K + L.col_indices[j] * bk + k];
  }
  return r;
}

ConvGeometry conv_geometry(int64_t cin, int64_t kh, int64_t kw, int64_t stride, int64_t pad,
                           int64_t dilation, int64_t h, int64_t w_in, int64_t batch) {
  ConvGeometry g{batch, h, w_in, cin, 0, 0, kh, kw, stride, stride, pad, pad, dilation, dilation};
  g.out_h = (h + 2 * pad - dilation * (kh - 1) - 1) / stride + 1;
  g.out_w = (w_in + 2 * pad - dilation * (kw - 1) - 1) / stride + 1;
  return g;
}

template <typename T>
void check_conv(int64_t cin, int64_t cout, int64_t kh, int64_t kw, int64_t stride, int64_t pad,
                int64_t dilation, int64_t h, int64_t w_in, int64_t batch, int64_t bm, int64_t bk,
                double density, int threads, std::mt19937& rng, const std::string& tag) {
  const ConvGeometry g = conv_geometry(cin, kh, kw, stride, pad, dilation, h, w_in, batch);
  const int64_t taps = kh * kw, K = taps * cin;
  const Layout L(random_mask((cout / bm) * (K / bk), density, rng), cout / bm, K / bk, bm, bk);
  const int64_t nnz = L.nnz(), out_pixels = batch * g.out_h * g.out_w, in_pixels = batch * h * w_in;
  const auto x = random_vector<T>(in_pixels * cin, rng);
  const auto dy = random_vector<T>(out_pixels * cout, rng);
  const auto values = random_vector<T>(nnz * bm * bk, rng), bias = random_vector<T>(cout, rng);
  const auto grad_mask = random_mask(nnz, 0.6, rng);
  std::unique_ptr<bool[]> mask(new bool[nnz + 1]);
  for (int64_t j = 0; j < nnz; ++j) mask[j] = grad_mask[j];
  const auto w = L.dense(values);  // [cout, taps * cin], column = tap * cin + channel
  const std::string what = tag + " conv " + std::to_string(kh) + "x" + std::to_string(kw) +
                           " s" + std::to_string(stride) + " p" + std::to_string(pad) + " d" +
                           std::to_string(dilation) + " blocks " + std::to_string(bm) + "x" +
                           std::to_string(bk) + " density=" + std::to_string(density);

  const auto [y_ref, dx_ref, dw_ref] = conv_reference(L, g, w, x, dy, bias, mask.get());

  std::vector<T> y(out_pixels * cout, T(7)), dx(in_pixels * cin, T(7)), dw(nnz * bm * bk, T(7));
  sparcl::block_sparse_conv_forward<T>(x.data(), values.data(), nullptr, bias.data(), y.data(),
                                       L.view(), g, threads);
  expect_close(y, y_ref, K, what + " forward");
  const std::vector<T> values_t = transposed(values, nnz, bm, bk);
  std::fill(y.begin(), y.end(), T(7));
  sparcl::block_sparse_conv_forward<T>(x.data(), values.data(), values_t.data(), bias.data(),
                                       y.data(), L.view(), g, threads);
  expect_close(y, y_ref, K, what + " forward (caller's transposed blocks)");
  sparcl::block_sparse_conv_grad_input<T>(dy.data(), values.data(), dx.data(), L.view(), g,
                                          threads);
  expect_close(dx, dx_ref, taps * cout, what + " grad_input");
  sparcl::block_sparse_conv_grad_weight<T>(dy.data(), x.data(), mask.get(), dw.data(), L.view(),
                                           g, threads);
  expect_close(dw, dw_ref, out_pixels, what + " grad_weight (masked)");
}

void check_conv_bf16(int64_t cin, int64_t cout, int64_t kh, int64_t kw, int64_t stride,
                     int64_t pad, int64_t dilation, int64_t h, int64_t w_in, int64_t batch,
                     int64_t bm, int64_t bk, double density, int threads, std::mt19937& rng,
                     const std::string& tag) {
  const ConvGeometry g = conv_geometry(cin, kh, kw, stride, pad, dilation, h, w_in, batch);
  const int64_t taps = kh * kw, K = taps * cin;
  const Layout L(random_mask((cout / bm) * (K / bk), density, rng), cout / bm, K / bk, bm, bk);
  const int64_t nnz = L.nnz(), out_pixels = batch * g.out_h * g.out_w, in_pixels = batch * h * w_in;
  const auto x = to_bf16(random_vector<float>(in_pixels * cin, rng));
  const auto dy = to_bf16(random_vector<float>(out_pixels * cout, rng));
  const auto values = random_vector<float>(nnz * bm * bk, rng);
  const auto bias = random_vector<float>(cout, rng);
  const auto grad_mask = random_mask(nnz, 0.6, rng);
  std::unique_ptr<bool[]> mask(new bool[nnz + 1]);
  for (int64_t j = 0; j < nnz; ++j) mask[j] = grad_mask[j];
  const auto w = L.dense(widened(to_bf16(values)));
  const auto [y_ref, dx_ref, dw_ref] =
      conv_reference(L, g, w, widened(x), widened(dy), bias, mask.get());
  const std::string what = tag + " bf16 conv " + std::to_string(kh) + "x" + std::to_string(kw) +
                           " s" + std::to_string(stride) + " p" + std::to_string(pad) + " d" +
                           std::to_string(dilation) + " blocks " + std::to_string(bm) + "x" +
                           std::to_string(bk) + " density=" + std::to_string(density) +
                           " threads=" + std::to_string(threads);

  std::vector<uint16_t> packed_forward(nnz * bm * bk), packed_grad_input(nnz * bm * bk);
  sparcl::bf16_pack_blocks(values.data(), packed_forward.data(), packed_grad_input.data(), nnz,
                           bm, bk, threads);
  std::vector<uint16_t> y(out_pixels * cout, 0x7fc0), dx(in_pixels * cin, 0x7fc0);
  std::vector<float> dw(nnz * bm * bk, 7.0f);
  sparcl::block_sparse_conv_forward_bf16(x.data(), packed_forward.data(), bias.data(), y.data(),
                                         L.view(), g, threads);
  expect_close_bf16(widened(y), y_ref, K, true, what + " forward");
  sparcl::block_sparse_conv_grad_input_bf16(dy.data(), packed_grad_input.data(), dx.data(),
                                            L.view(), g, threads);
  expect_close_bf16(widened(dx), dx_ref, taps * cout, true, what + " grad_input");
  sparcl::block_sparse_conv_grad_weight_bf16(dy.data(), x.data(), mask.get(), dw.data(),
                                             L.view(), g, threads);
  expect_close_bf16(dw, dw_ref, out_pixels, false, what + " grad_weight (masked)");
}

template <typename T>
void run_all(std::mt19937& rng, const std::string& tag) {
  const int64_t blocks[][2] = {{4, 4}, {8, 8}, {16, 16}, {32, 32}, {16, 32}, {32, 8}, {8, 24},
                               {3, 5}, {12, 4}};
  for (const auto& block : blocks)
    for (const double density : {0.0, 0.4, 1.0})
      for (const int64_t n : {1, 7, 49})
        for (const int threads : {1, 2})
          check_linear<T>(3, 4, block[0], block[1], density, n, threads, rng, tag);
  // Batch-major panels (blocks under two vectors wide, at least 48 rows on AVX-512, and over
  // 100 multiply-adds per packed element): padding and a partial panel tile.
  for (const int64_t n : {49, 100})
    for (const int threads : {1, 2}) {
      check_linear<T>(13, 13, 8, 8, 1.0, n, threads, rng, tag);
      check_linear<T>(7, 13, 16, 8, 1.0, n, threads, rng, tag);
      check_linear<T>(26, 27, 4, 4, 1.0, n, threads, rng, tag);
      check_linear<T>(20, 20, 8, 8, 0.7, n, threads, rng, tag);
    }
  // Panels of rows 2 KiB apart (512 and 1536 features) go through the staging tile
  // (panels.h, rows_share_sets): runs of 256 features and uneven thread shares.
  check_linear<T>(64, 192, 8, 8, 0.2, 60, 3, rng, tag);
  // From kBatchSplitTiles batch tiles a thread, each thread packs, computes and unpacks its
  // own tiles (run_panel_pass): uneven shares and a partial last tile, staged and not.
  for (const int threads : {2, 3}) {
    check_linear<T>(20, 20, 8, 8, 0.7, 301, threads, rng, tag);
    check_linear<T>(64, 64, 8, 8, 0.3, 301, threads, rng, tag);
  }
  // One full block row among empty ones: uneven work split across threads.
  check_linear<T>(6, 3, 16, 8, 0.15, 130, 2, rng, tag);
  // A batch longer than one weight-gradient chunk (512 KiB of a thread's packed operand
  // panels: at most 512 floats a row here, so 256 rows or more per chunk).
  for (const int threads : {1, 2}) check_linear<T>(8, 8, 32, 32, 0.3, 900, threads, rng, tag);
  // The same with one-vector blocks, whose weight gradient takes runs of a block row's blocks
  // per tile across the chunks.
  check_linear<T>(16, 16, 16, 16, 0.5, 900, 2, rng, tag);
  // Chunks past L2 (weight_gradient_chunk_elems): one thread's 144 full blocks carry 147,456
  // floats of sums, so a chunk takes twice that, 384 rows of 768 floats: two chunks.
  check_linear<T>(12, 12, 32, 32, 1.0, 400, 1, rng, tag);
  // 16x16 blocks on non-square layers over panels, one chunk of batch tiles or several.
  for (const int64_t n : {100, 1030}) {
    check_linear<T>(16, 8, 16, 16, 1.0, n, 2, rng, tag);
    check_linear<T>(8, 16, 16, 16, 1.0, n, 1, rng, tag);
  }
  // Stored blocks over one band (512 KB): the forward and input gradient run band by band.
  check_linear<T>(12, 12, 32, 32, 1.0, 50, 2, rng, tag);
  // Operands over 8 MiB (kLookaheadBytes): the forward (2048 features) and the input
  // gradient (2048 outputs) read their tiles' rows through LookaheadRows, across block rows of
  // many blocks and of fewer than its lookahead, chunks of 60 rows and a last partial tile.
  check_linear<T>(1, 64, 32, 32, 0.15, 1029, 2, rng, tag);
  check_linear<T>(64, 1, 32, 32, 0.04, 1029, 2, rng, tag);

  struct ConvCase {
    int64_t cin, cout, kh, kw, stride, pad, dilation, h, w, batch;
  };
  const ConvCase convs[] = {{32, 32, 3, 3, 1, 1, 1, 6, 5, 2},  {16, 32, 3, 3, 2, 1, 1, 7, 9, 3},
                            {32, 16, 1, 1, 1, 0, 1, 5, 5, 1},  {16, 16, 3, 1, 2, 2, 2, 7, 6, 2},
                            {32, 32, 5, 5, 3, 2, 1, 11, 4, 1}, {16, 32, 1, 1, 2, 0, 1, 7, 8, 2},
                            {16, 16, 3, 3, 2, 0, 1, 8, 7, 1}, {16, 16, 3, 3, 1, 1, 1, 16, 14, 2},
                            // stride 1 (padded panels): dilated, uneven kernel, no padding
                            {16, 16, 3, 1, 1, 2, 2, 7, 6, 2}, {16, 32, 3, 3, 1, 0, 1, 9, 18, 2},
                            {32, 16, 5, 3, 1, 2, 1, 4, 3, 3},
                            // 272 output pixels: one-vector blocks on panels on AVX2 and
                            // NEON (AVX-512: the strided cases below)
                            {16, 32, 3, 3, 1, 1, 1, 16, 17, 1},
                            // one input row: stride phase row 1 has no pixels
                            {16, 16, 3, 3, 2, 1, 1, 1, 5, 2},
                            // over 256 output pixels at stride 2: the weight gradient's
                            // phase panels, AVX-512's one-vector input gradient panels; odd
                            // sizes (phases of unequal size), no padding
                            {16, 16, 3, 3, 2, 1, 1, 32, 33, 1}, {16, 16, 3, 3, 2, 0, 1, 35, 36, 1},
                            // even sizes at stride 2 (phases of one size, walked chunk by
                            // chunk across the phases), two chunks per phase
                            {16, 16, 3, 3, 2, 1, 1, 16, 18, 2},
                            // 8x8 and 4x4 images with groups of many blocks (36 at density
                            // 1): AVX-512's panels below its pixel thresholds
                            {32, 32, 3, 3, 1, 1, 1, 8, 8, 2}, {32, 32, 3, 3, 1, 1, 1, 4, 4, 2}};
  const int64_t conv_blocks[][2] = {{8, 8}, {16, 16}, {4, 4}, {16, 8}, {8, 16}};
  for (const auto& c : convs)
    for (const auto& block : conv_blocks)
      for (const double density : {0.0, 0.5, 1.0})
        for (const int threads : {1, 2})
          check_conv<T>(c.cin, c.cout, c.kh, c.kw, c.stride, c.pad, c.dilation, c.h, c.w, c.batch,
                        block[0], block[1], density, threads, rng, tag);
  // Over 4096 output pixels with few active blocks: the weight gradient sums pixel segments.
  for (const int threads : {1, 2})
    check_conv<T>(8, 16, 3, 3, 1, 1, 1, 34, 33, 4, 8, 8, 0.3, threads, rng, tag);
  // Four segments' worth of pixels (12544) with so many kept blocks (~22 of 36 under the
  // test's gradient mask) that the item cap allows three segments: they must still cover
  // every pixel (they once covered 3 x 4096: the weight gradient silently dropped the last
  // image of the batch).
  for (const int threads : {1, 2})
    check_conv<T>(16, 16, 3, 3, 1, 1, 1, 16, 16, 49, 8, 8, 1.0, threads, rng, tag);
  // Under 4096 output pixels the weight gradient walks the pixels in L2-sized slices
  // (256 + 256 channels: 256 pixels), every block or run over a slice before the next: 320
  // pixels take two slices, the second adding to the first.
  const int64_t slice_blocks[][2] = {{4, 4}, {8, 8}, {16, 16}, {32, 32}};
  for (const auto& block : slice_blocks)
    for (const int threads : {1, 2})
      check_conv<T>(256, 256, 1, 1, 1, 0, 1, 4, 4, 20, block[0], block[1], 0.3, threads, rng,
                    tag);
  // Segments over slices: 5040 output pixels in two segments of 2520, each walked in slices
  // of 512 pixels (segment_slice; the last one short), the slices of a segment adding up;
  // the wide blocks' row pointers double-buffered across the slices.
  for (const auto& block : slice_blocks)
    for (const int threads : {1, 2})
      check_conv<T>(256, 256, 1, 1, 1, 0, 1, 7, 9, 80, block[0], block[1], 0.05, threads, rng,
                    tag);
}

}  // namespace

// Items of a grid split between two threads in proportion to their stored blocks, also when
// the groups are a window of a longer prefix sum (a late stride phase's channel blocks):
// counted from zero, such a window's first item had looked past half the total cost and one
// thread got every item.
void check_item_split() {
  const std::vector<int32_t> prefix = {0, 10, 20, 30, 40, 43, 46, 49, 52};  // 8 groups
  for (const int64_t first_group : {0, 4}) {
    const sparcl::split_test::ItemGrid grid =
        sparcl::split_test::item_grid(prefix.data() + first_group, 4, 960, 96, 1024);
    const int64_t half = grid.first_item(1, 2), items = grid.items();
    const double share = static_cast<double>(grid.cost_before(half)) / grid.cost_before(items);
    ++checks;
    if (!(half > 0 && half < items && share > 0.4 && share < 0.6)) {
      std::printf("FAIL item split of groups %lld..%lld: thread 1 starts at item %lld of %lld "
                  "(%.2f of the cost before it)\n",
                  static_cast<long long>(first_group), static_cast<long long>(first_group + 4),
                  static_cast<long long>(half), static_cast<long long>(items), share);
      ++failures;
    }
  }
}

int main() {
  std::mt19937 rng(1234);
  check_item_split();
  std::string tested;
  for (const std::string& isa : sparcl::supported_isas()) {
    for (const int width : {0, 16}) {
      const std::string problem = sparcl::select_isa(isa, width);
      if (!problem.empty()) {
        std::printf("FAIL select_isa(%s, %d): %s\n", isa.c_str(), width, problem.c_str());
        return 1;
      }
      const std::string tag = isa + "/w" + std::to_string(sparcl::active_vector_width());
      run_all<float>(rng, tag);
      if (width == 0) run_all<double>(rng, tag);
      tested += (tested.empty() ? "" : ", ") + tag;
    }
  }
  for (const std::string& isa : sparcl::supported_isas()) {
    sparcl::select_isa(isa, 0);
    const double peak = sparcl::fma_peak_gflops(2, 0.01);
    ++checks;
    if (!(peak > 0.0)) {
      std::printf("FAIL fma_peak_gflops on %s: %g\n", isa.c_str(), peak);
      ++failures;
    }
  }
  {
    // The bf16 probe runs where the CPU has the instruction (qemu-aarch64's default CPU has
    // FEAT_BF16; -cpu cortex-a72 has not) and reports 0 elsewhere.
    const std::string instruction = sparcl::bf16_dot_instruction();
    const double peak = sparcl::bf16_dot_peak_gflops(2, 0.01);
    ++checks;
    if (instruction.empty() ? peak != 0.0 : !(peak > 0.0)) {
      std::printf("FAIL bf16_dot_peak_gflops with instruction '%s': %g\n", instruction.c_str(),
                  peak);
      ++failures;
    }
    std::printf("bf16 dot-product instruction: %s\n",
                instruction.empty() ? "none" : instruction.c_str());
  }
  {
    // The bf16 kernels: the emulation everywhere, the instruction's copy where the CPU has it.
    std::vector<std::string> kinds{"emulated"};
    if (!sparcl::bf16_dot_instruction().empty()) kinds.emplace_back("native");
    for (const std::string& kind : kinds) {
      const std::string problem = sparcl::select_bf16_kernels(kind);
      if (!problem.empty()) {
        std::printf("FAIL select_bf16_kernels(%s): %s\n", kind.c_str(), problem.c_str());
        return 1;
      }
      const std::string name = sparcl::bf16_kernels();
      run_bf16(rng, name);
      tested += ", bf16/" + name;
    }
    ++checks;
    if (sparcl::select_bf16_kernels("no-such-kernels").empty() ||
        (sparcl::bf16_dot_instruction().empty() && sparcl::select_bf16_kernels("native").empty())) {
      std::printf("FAIL select_bf16_kernels accepted what it cannot run\n");
      ++failures;
    }
    sparcl::select_bf16_kernels("");
  }
  sparcl::select_isa("", 0);
  if (sparcl::select_isa("no-such-isa", 0).empty()) {
    std::printf("FAIL an unknown instruction set was accepted\n");
    ++failures;
  }
  std::printf("%d of %d kernel checks failed; instruction sets: %s; openmp: %s\n", failures,
              checks, tested.c_str(), sparcl::built_with_openmp() ? "yes" : "no");
  if (failures) return 1;
  std::printf("kernel tests passed\n");
  return 0;
}
