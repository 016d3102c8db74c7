#!/usr/bin/env bash
# Builds the W4A16 CUDA library, test and benchmark with nvcc alone and runs them on a GPU machine.
# It needs nothing but the CUDA toolkit (the GPU machine lacks the CPU build's fmt / BLAS / Highway / GTest),
# and it does not compile qforge_lib, so other work in progress under src/ cannot break it.
#   bash bench/cuda_w4a16_device.sh [build|test|sanitize|bench|sweep|sweep-gemm|wgmma|all]...
#   wgmma: the Hopper wgmma path only: its tests, memcheck on them, and the benchmark at M = 64..256 on the six
#   Llama shapes (bench_wgmma.csv).
#   (default: all = build test sanitize bench)
# Logs go to $OUT (or ./out/cuda_w4a16) when set.
set -uo pipefail
cd "$(dirname "$0")/.."
B=${B:-/tmp/qforge_w4a16_build}
LOG=${OUT:-out/cuda_w4a16}
mkdir -p "$B" "$LOG"
ARCH=${ARCH:--gencode=arch=compute_90a,code=sm_90a}
FLAGS="-std=c++20 -O3 -lineinfo -Isrc $ARCH"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(all)
rc=0
for step in "${steps[@]}"; do
  case $step in
    all) bash "$0" build test sanitize bench || rc=1 ;;
    build)
      pids=()
      for f in src/kernels/cuda/w4a16*.cu; do nvcc $FLAGS -c "$f" -o "$B/$(basename "$f" .cu).o" & pids+=($!); done
      for p in "${pids[@]}"; do wait "$p" || { echo "build failed"; exit 1; }; done
      nvcc $FLAGS tests/kernels/cuda/w4a16_test.cu "$B"/w4a16*.o -lcublas -o "$B/cuda_w4a16_test" || exit 1
      nvcc $FLAGS bench/cuda_w4a16_bench.cu "$B"/w4a16*.o -lcublas -o "$B/cuda_w4a16_bench" || exit 1
      echo "built in $B" ;;
    test) "$B/cuda_w4a16_test" 2>&1 | tee "$LOG/test.log"; rc=$((rc | PIPESTATUS[0])) ;;
    sanitize)
      compute-sanitizer --tool memcheck --error-exitcode 3 "$B/cuda_w4a16_test" --gpu --quick 2>&1 | tail -n 25 | tee "$LOG/memcheck.log"
      rc=$((rc | PIPESTATUS[0])) ;;
    bench) "$B/cuda_w4a16_bench" --csv "$LOG/bench.csv" 2>&1 | tee "$LOG/bench.log"; rc=$((rc | PIPESTATUS[0])) ;;
    sweep) "$B/cuda_w4a16_bench" --sweep --ms 1,2,4,8 2>&1 | tee "$LOG/sweep.log"; rc=$((rc | PIPESTATUS[0])) ;;
    sweep-gemm)
      "$B/cuda_w4a16_bench" --ms 16,32,64,128,256 --sweep-gemm \
        --shapes 4096x4096,11008x4096,4096x11008,8192x8192,28672x8192,8192x28672 2>&1 | tee "$LOG/sweep_gemm.log"
      rc=$((rc | PIPESTATUS[0])) ;;
    wgmma)
      "$B/cuda_w4a16_test" --gpu --wgmma-only 2>&1 | tee "$LOG/test_wgmma.log" | grep -v "^  .* ok$"
      rc=$((rc | PIPESTATUS[0]))
      compute-sanitizer --tool memcheck --error-exitcode 3 "$B/cuda_w4a16_test" --gpu --quick --wgmma-only 2>&1 \
        | tail -n 8 | tee "$LOG/memcheck_wgmma.log"
      rc=$((rc | PIPESTATUS[0]))
      "$B/cuda_w4a16_bench" --ms 64,128,192,256 --csv "$LOG/bench_wgmma.csv" \
        --shapes 4096x4096,11008x4096,4096x11008,8192x8192,28672x8192,8192x28672 2>&1 | tee "$LOG/bench_wgmma.log"
      rc=$((rc | PIPESTATUS[0])) ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
exit $rc
