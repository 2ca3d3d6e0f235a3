// Run-time choice of the kernels' instruction set, and the public entry points.
#include <atomic>
#include <mutex>

#include "isa_prelude.h"

namespace sparcl {
namespace {

struct Choice {
  const KernelTable* table;
  int max_width;
};

std::vector<const KernelTable*> compiled_tables() {
#if SPARCL_X86_DISPATCH
  return {baseline::kernel_table(), avx2::kernel_table(), avx512::kernel_table()};
#elif defined(__aarch64__) || defined(_M_ARM64)
  return {neon::kernel_table()};
#else
  return {baseline::kernel_table()};
#endif
}

bool cpu_supports(const std::string& isa) {
#if SPARCL_X86_DISPATCH
  // __builtin_cpu_supports also checks that the OS saves the wider registers (XGETBV).
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == "avx2") return avx2;
  if (isa == "avx512")
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
#endif
  return isa == "baseline" || isa == "neon";
}

// The best table the CPU supports: compiled_tables() lists them from narrowest to widest.
Choice best_choice() {
  const KernelTable* best = nullptr;
  for (const KernelTable* table : compiled_tables())
    if (cpu_supports(table->isa)) best = table;
  return {best, best->native_width};
}

std::mutex choice_mutex;
Choice current_choice{nullptr, 0};

Choice choice() {
  std::lock_guard<std::mutex> lock(choice_mutex);
  if (!current_choice.table) current_choice = best_choice();
  return current_choice;
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& name : names) out += (out.empty() ? "" : ", ") + name;
  return out;
}

template <typename T>
const KernelsOf<T>& kernels(const Choice& c) {
  if constexpr (std::is_same_v<T, float>) return c.table->f32;
  else return c.table->f64;
}

// Runs kernel(kernels, execution) with the instruction set in use, read once per call.
template <typename T, typename Kernel>
void run(int threads, const Kernel& kernel) {
  const Choice c = choice();
  kernel(kernels<T>(c), Execution{threads, c.max_width});
}

}  // namespace

std::vector<std::string> compiled_isas() {
  std::vector<std::string> names;
  for (const KernelTable* table : compiled_tables()) names.emplace_back(table->isa);
  return names;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (const std::string& name : compiled_isas())
    if (cpu_supports(name)) names.push_back(name);
  return names;
}

std::string select_isa(const std::string& name, int max_width) {
  if (max_width != 0 && max_width != 4 && max_width != 8 && max_width != 16)
    return "vector width must be 4, 8 or 16 (or 0 for the instruction set's own), got " +
           std::to_string(max_width);
  Choice next = best_choice();
  if (!name.empty()) {
    next.table = nullptr;
    for (const KernelTable* table : compiled_tables())
      if (name == table->isa) next.table = table;
    if (!next.table)
      return "instruction set '" + name + "' is not compiled into this build (compiled: " +
             join(compiled_isas()) + ")";
    if (!cpu_supports(name))
      return "this CPU cannot run instruction set '" + name + "' (it supports: " +
             join(supported_isas()) + ")";
  }
  next.max_width = max_width ? max_width : next.table->native_width;
  std::lock_guard<std::mutex> lock(choice_mutex);
  current_choice = next;
  return "";
}

std::string active_isa() { return choice().table->isa; }

int active_vector_width() { return choice().max_width; }

double fma_peak_gflops(int threads, double seconds) {
  return choice().table->fma_gflops(threads, seconds);
}

bool built_with_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

// ------------------------------------------------------------------ entry points

template <typename T>
void block_sparse_forward(const T* x, const T* values, const T* values_t, const T* bias, T* y,
                          int64_t n, const BlockLayoutView& layout, int threads) {
  run<T>(threads, [&](const KernelsOf<T>& k, const Execution& e) {
    k.forward(x, values, values_t, bias, y, n, layout, e);
  });
}

template <typename T>
void block_sparse_grad_input(const T* grad_out, const T* values, T* grad_x, int64_t n,
                             const BlockLayoutView& layout, int threads) {
  run<T>(threads, [&](const KernelsOf<T>& k, const Execution& e) {
    k.grad_input(grad_out, values, grad_x, n, layout, e);
  });
}

template <typename T>
void block_sparse_grad_weight(const T* grad_out, const T* x, const bool* grad_block_mask,
                              T* grad_values, int64_t n, const BlockLayoutView& layout,
                              int threads) {
  run<T>(threads, [&](const KernelsOf<T>& k, const Execution& e) {
    k.grad_weight(grad_out, x, grad_block_mask, grad_values, n, layout, e);
  });
}

template <typename T>
void block_sparse_conv_forward(const T* x, const T* values, const T* values_t, const T* bias,
                               T* y, const BlockLayoutView& layout,
                               const ConvGeometry& geometry, int threads) {
  run<T>(threads, [&](const KernelsOf<T>& k, const Execution& e) {
    k.conv_forward(x, values, values_t, bias, y, layout, geometry, e);
  });
}

template <typename T>
void block_sparse_conv_grad_input(const T* grad_out, const T* values, T* grad_x,
                                  const BlockLayoutView& layout, const ConvGeometry& geometry,
                                  int threads) {
  run<T>(threads, [&](const KernelsOf<T>& k, const Execution& e) {
    k.conv_grad_input(grad_out, values, grad_x, layout, geometry, e);
  });
}

template <typename T>
void block_sparse_conv_grad_weight(const T* grad_out, const T* x, const bool* grad_block_mask,
                                   T* grad_values, const BlockLayoutView& layout,
                                   const ConvGeometry& geometry, int threads) {
  run<T>(threads, [&](const KernelsOf<T>& k, const Execution& e) {
    k.conv_grad_weight(grad_out, x, grad_block_mask, grad_values, layout, geometry, e);
  });
}

#define SPARCL_INSTANTIATE(T)                                                                  \
  template void block_sparse_forward<T>(const T*, const T*, const T*, const T*, T*, int64_t,  \
                                        const BlockLayoutView&, int);                          \
  template void block_sparse_grad_input<T>(const T*, const T*, T*, int64_t,                    \
                                           const BlockLayoutView&, int);                       \
  template void block_sparse_grad_weight<T>(const T*, const T*, const bool*, T*, int64_t,      \
                                            const BlockLayoutView&, int);                      \
  template void block_sparse_conv_forward<T>(const T*, const T*, const T*, const T*, T*,      \
                                             const BlockLayoutView&, const ConvGeometry&, int); \
  template void block_sparse_conv_grad_input<T>(const T*, const T*, T*,                        \
                                                const BlockLayoutView&, const ConvGeometry&,   \
                                                int);                                          \
  template void block_sparse_conv_grad_weight<T>(const T*, const T*, const bool*, T*,          \
                                                 const BlockLayoutView&, const ConvGeometry&,  \
                                                 int);
SPARCL_INSTANTIATE(float)
SPARCL_INSTANTIATE(double)
#undef SPARCL_INSTANTIATE

}  // namespace sparcl
