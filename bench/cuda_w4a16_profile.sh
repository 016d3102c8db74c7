#!/usr/bin/env bash
# Profiles the W4A16 mma kernel on a GPU machine: Nsight Compute (full set) at batch 1 on a 7B and a 70B shape,
# launch gaps (graph vs stream vs isolated launches, with and without PDL), and the mma tuning sweep.
#   B=<dir with cuda_w4a16_bench / cuda_w4a16_test> bash bench/cuda_w4a16_profile.sh [ncu|launch|sweep]...
# Reports go to $OUT (or ./out/cuda_w4a16_profile). Built binaries: bench/cuda_w4a16_device.sh build.
set -uo pipefail
cd "$(dirname "$0")/.."
B=${B:-/tmp/qforge_w4a16_build}
LOG=${OUT:-out/cuda_w4a16_profile}
mkdir -p "$LOG"
export PATH=$PATH:/usr/local/cuda/bin
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(ncu launch sweep)
SHAPES=${SHAPES:-4096x4096,8192x28672}
for step in "${steps[@]}"; do
  case $step in
    ncu)
      # TUNINGS: "name=nt,r,split,warps,pdl ..." (0 = built in); each gets its own report.
      for nt in ${TUNINGS:-base=0,0,0,0,0}; do
        name=${nt%%=*}
        rep=/tmp/ncu_$name
        ncu --set full --clock-control none -k regex:w4a16_mma_kernel -f -o "$rep" \
          "$B/cuda_w4a16_bench" --profile --shapes "$SHAPES" --ms "${PROFILE_MS:-1}" --mma-tuning "${nt#*=}" \
          > "$rep.log" 2>&1 || { echo "ncu $name failed"; tail -5 "$rep.log"; }
        { cat "$rep.log"; ncu --import "$rep.ncu-rep" --page details --print-units base; } > "$LOG/ncu_$name.txt" 2>&1
        # warp-state samples per SASS instruction of the first profiled kernel (where the stalls are)
        [ "$name" = "${SASS_FOR:-base}" ] && ncu --import "$rep.ncu-rep" --page source --csv --print-source sass --launch-count 1 \
          > "$LOG/ncu_${name}_sass.csv" 2>&1
      done ;;
    launch)
      "$B/cuda_w4a16_bench" --launch-test --shapes "${LAUNCH_SHAPES:-$SHAPES}" --ms "${LAUNCH_MS:-1,16}" 2>&1 |
        tee "$LOG/launch.log" ;;
    sweep)
      "$B/cuda_w4a16_bench" --sweep-mma --shapes "${SWEEP_SHAPES:-$SHAPES}" --ms "${SWEEP_MS:-1,16}" 2>&1 |
        tee "$LOG/sweep_mma.log" ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
