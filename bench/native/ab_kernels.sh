#!/bin/bash
# In-process A/B of the CPU kernels of two builds: the working tree's csrc/cpu against a
# commit's, compiled into one binary (each in its own namespace) that times the same buffers
# with both, pass by pass, alternating (ab_main.cpp). Separate processes gave the same code
# 0.9-1.15x from buffer placement alone; this read unchanged passes at 0.94-1.01x (mostly
# 0.98-1.01x) on a noisy Zen 5 host. Each variant still has its own thread workspaces (panel
# passes: the AVX2 copy's read 0.83-1.34x from process to process): judge by both ratios and
# by repeated runs.
#
#   bench/native/ab_kernels.sh COMMIT fp32|avx2|bf16 ROUNDS BLOCK CHANNELS SIZE BATCH THREADS [STRIDE [DENSITY]]
#   AB_LINEAR=1 bench/native/ab_kernels.sh ...   # a CHANNELS x CHANNELS linear, SIZE batch rows
#   AB_LINEAR=3072 bench/native/ab_kernels.sh ... # CHANNELS in, 3072 out features
#
# fp32: the AVX-512 kernels (avx2: the AVX2 ones). Needs AVX-512 (AVX2 for avx2, AVX512_BF16
# for bf16). Builds under build/ab_kernels/.
set -euo pipefail
[ $# -ge 8 ] || { sed -n '2,10p' "$0"; exit 2; }
commit=$1 mode=$2
shift 2
root=$(git rev-parse --show-toplevel)
work=$root/build/ab_kernels
rm -rf "$work" && mkdir -p "$work/old" "$work/new"
git -C "$root" archive "$commit" csrc/cpu | tar -x -C "$work/old" --strip-components=2
cp -r "$root/csrc/cpu/." "$work/new/"
defines=() prefix=avx512
[ "$mode" = bf16 ] && defines=(-DAB_BF16) prefix=avx512bf16
[ "$mode" = avx2 ] && defines=(-DAB_AVX2) prefix=avx2
pids=()
for variant in old new; do
  # Commits before the AVX512_BF16 file's namespace could be set from outside: let it be.
  sed -i 's/^#define SPARCL_ISA_NS avx512bf16$/#ifndef SPARCL_ISA_NS\n&\n#endif/' \
    "$work/$variant/kernels_bf16_avx512.cpp"
  g++ -O3 -std=c++20 -ffp-contract=fast -fopenmp -I"$work/$variant" -I"$root/bench/native" \
    "${defines[@]}" -DVARIANT_NS="${prefix}_$variant" -DVARIANT_RUN="run_$variant" \
    -c "$root/bench/native/ab_variant.cpp" -o "$work/$variant.o" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
g++ -O2 -std=c++20 -fopenmp "${defines[@]}" -I"$root/bench/native" -I"$root/csrc/cpu" \
  "$root/bench/native/ab_main.cpp" "$work/old.o" "$work/new.o" -o "$work/ab"
"$work/ab" "$@"
