#!/usr/bin/env bash
# (Kept as run in session 10: it expected abl_bench.cu and the ablation copy w4a16_wgmma_abl.cu, made by
# applying ablation.patch to the session-9 w4a16_wgmma.cu, in exp_s10/ of the working tree.)
# Builds the ablation variants of the wgmma kernel (exp_s10) on the GPU machine with nvcc alone.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${B:-/tmp/abl}
mkdir -p $B
FLAGS="-std=c++20 -O3 -lineinfo -Isrc -gencode=arch=compute_90a,code=sm_90a"
pids=()
for f in src/kernels/cuda/w4a16*.cu; do
  [ "$(basename $f)" = w4a16_wgmma.cu ] && continue
  nvcc $FLAGS -c "$f" -o "$B/$(basename "$f" .cu).o" & pids+=($!)
done
nvcc $FLAGS -c exp_s10/abl_bench.cu -o $B/abl_bench.o & pids+=($!)
for v in ${VARIANTS:-0 1 2 4 8 12 13 16}; do
  nvcc $FLAGS -DQF_ABL=$v -c exp_s10/w4a16_wgmma_abl.cu -o $B/wg_$v.o & pids+=($!)
done
for p in "${pids[@]}"; do wait $p; done
objs=$(ls $B/w4a16*.o)
for v in ${VARIANTS:-0 1 2 4 8 12 13 16}; do
  nvcc $FLAGS $B/abl_bench.o $objs $B/wg_$v.o -lcublas -o $B/abl_$v &
done
wait
ls $B
