// Torch-free CPU kernels for y = x @ W.T with W block-sparse (see sparcl_kernels/layout.py).
//
// All operands are dense row-major and contiguous: x [n, K], y / grad_out [n, M],
// values [nnz, bm, bk] in row-major (block_row, block_col) order. Index arrays are int32.
// Each kernel writes every element of its output, so outputs need no initialisation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sparcl {

struct BlockLayoutView {
  int64_t block_rows;                  // M / bm
  int64_t block_cols;                  // K / bk
  int64_t bm;
  int64_t bk;
  int64_t nnz;
  const int32_t* row_offsets;          // [block_rows + 1], CSR over block rows
  const int32_t* col_indices;          // [nnz]
  const int32_t* row_indices;          // [nnz]
  const int32_t* transpose_offsets;    // [block_cols + 1], CSC over block columns
  const int32_t* transpose_block_ids;  // [nnz], block ids per block column, by block row

  int64_t rows() const { return block_rows * bm; }
  int64_t cols() const { return block_cols * bk; }
};

// y[n, M] = x[n, K] @ W.T (+ bias[M] when bias is not null). values_t, when not null, is
// values with every block transposed ([nnz, bk, bm]), which the fp32 micro-kernels stream;
// null makes the call transpose into a reused buffer (callers that keep the copy between
// calls, as sparcl_kernels.backends.cpu does, save that work).
template <typename T>
void block_sparse_forward(const T* x, const T* values, const T* values_t, const T* bias, T* y,
                          int64_t n, const BlockLayoutView& layout, int threads);

// grad_x[n, K] = grad_out[n, M] @ W, through the stored blocks only.
template <typename T>
void block_sparse_grad_input(const T* grad_out, const T* values, T* grad_x, int64_t n,
                             const BlockLayoutView& layout, int threads);

// grad_values[b] = grad_out[:, rows(b)].T @ x[:, cols(b)] for stored blocks b with
// grad_block_mask[b] true (all blocks when the mask is null); exact zeros for the others,
// whose products are never computed.
template <typename T>
void block_sparse_grad_weight(const T* grad_out, const T* x, const bool* grad_block_mask,
                              T* grad_values, int64_t n, const BlockLayoutView& layout,
                              int threads);

// ------------------------------------------------------------------ instruction sets
// The kernels are compiled once per instruction set (baseline, avx2 and avx512 on x86-64,
// neon on aarch64, baseline elsewhere) and the best one the CPU runs is used unless
// select_isa chose another.

// Instruction sets compiled into this build, and those of them this CPU can run.
std::vector<std::string> compiled_isas();
std::vector<std::string> supported_isas();

// Uses instruction set `name` ("" = the best supported) with fp32 vectors of at most
// `max_width` floats (4, 8 or 16; 0 = the instruction set's own width; wider than the
// hardware's runs split vectors, which tests use to cover AVX-512's tiling anywhere).
// Returns an empty string on success, otherwise why not (nothing changes then).
std::string select_isa(const std::string& name, int max_width);

// The instruction set and maximum vector width in use.
std::string active_isa();
int active_vector_width();

// Whether the kernels were built with OpenMP (without it they run on one thread).
bool built_with_openmp();

// The fp32 multiply-add peak of the instruction set in use (its native vector width), in
// GFLOP/s on `threads` threads together, measured over about `seconds`.
double fma_peak_gflops(int threads, double seconds);

// ------------------------------------------------------------------ bf16 dot products
// (kernels_bf16.cpp) The bf16 pair dot-product instruction this CPU has and this build can
// use -- "avx512bf16" (vdpbf16ps, x86-64) or "bfdot" (FEAT_BF16, aarch64) -- or "" where there
// is none. Detected at run time: the fp32 instruction-set choice (select_isa) does not change it.
std::string bf16_dot_instruction();

// The peak of that instruction in GFLOP/s (each fp32 lane does two multiply-adds per
// instruction) on `threads` threads together, measured over about `seconds`; 0 where
// bf16_dot_instruction() is "".
double bf16_dot_peak_gflops(int threads, double seconds);

// ------------------------------------------------------------------ bf16 kernels
// (kernels_bf16.cpp) The linear passes with bf16 operands (uint16_t bit patterns, the storage
// of torch.bfloat16) and fp32 accumulation. The stored blocks come packed in bf16 pairs, made
// once per change of the fp32 master values (bf16_pack_*): the pair dot-product instructions
// multiply two consecutive elements of the summed dimension per fp32 lane. Block sides must
// be multiples of 4 (bf16_blocks_fit). They run the instruction's kernels where the CPU has it
// and an emulation of the instruction (the same products, two fp32 multiply-adds per pair)
// elsewhere or when selected.

// Whether the bf16 kernels take blocks of bm x bk.
bool bf16_blocks_fit(int64_t bm, int64_t bk);

// The kernels chosen: "avx512bf16", "bfdot" (the instruction), "emulated" (when selected), or
// "" where the CPU lacks the instruction and nothing was selected (the entry points then still
// run, emulated: callers with an fp32 path should prefer it, the emulation being no faster).
std::string bf16_kernels();

// Chooses `name`: "native" (the instruction; an error where the CPU lacks it), "emulated", or
// "" (the instruction where the CPU has it, else none). Returns "" on success, otherwise why
// not (nothing changes then).
std::string select_bf16_kernels(const std::string& name);

// values [nnz, bm, bk] (fp32), rounded to bf16 once, packed both ways from one read:
// packed_forward [nnz, bk / 2, bm] pairs (pairs along bk) and packed_grad_input
// [nnz, bm / 2, bk] pairs (pairs along bm); bm * bk uint16_t per block each.
void bf16_pack_blocks(const float* values, uint16_t* packed_forward,
                      uint16_t* packed_grad_input, int64_t nnz, int64_t bm, int64_t bk,
                      int threads);

// y[n, M] (bf16) = x[n, K] (bf16) @ W.T (+ bias[M], fp32, when not null), rounded once.
void block_sparse_forward_bf16(const uint16_t* x, const uint16_t* packed_forward,
                               const float* bias, uint16_t* y, int64_t n,
                               const BlockLayoutView& layout, int threads);

// grad_x[n, K] (bf16) = grad_out[n, M] (bf16) @ W.
void block_sparse_grad_input_bf16(const uint16_t* grad_out, const uint16_t* packed_grad_input,
                                  uint16_t* grad_x, int64_t n, const BlockLayoutView& layout,
                                  int threads);

// grad_values[b] (fp32, for the fp32 master values) = grad_out[:, rows(b)].T @ x[:, cols(b)]
// for stored blocks with grad_block_mask[b] true (all when null), exact zeros for the others.
void block_sparse_grad_weight_bf16(const uint16_t* grad_out, const uint16_t* x,
                                   const bool* grad_block_mask, float* grad_values, int64_t n,
                                   const BlockLayoutView& layout, int threads);

}  // namespace sparcl
