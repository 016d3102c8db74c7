#!/usr/bin/env bash
# Builds the libFuzzer targets (build dir configured with QFORGE_FUZZ=ON, clang) and runs each one, one after the
# other, for a fixed budget on a copy of its committed corpus (fuzz/corpus/<target>/). Exit status 1 when a
# target crashed, leaked, timed out or ran out of memory; the reproducer is left in $OUT_DIR/<target>/.
#
#   fuzz/run_fuzzers.sh                       # every target, 20 s each
#   FUZZ_SECONDS=600 fuzz/run_fuzzers.sh gguf # one target, 10 minutes
#   fuzz/run_fuzzers.sh --merge               # fold the last run's small inputs into the committed corpora and
#                                             # minimise them (-merge=1), no fuzzing (MERGE_MAX_BYTES, 4096)
#
# Environment: FUZZ_SECONDS (20), BUILD_DIR (build/fuzz), OUT_DIR ($BUILD_DIR/fuzz-runs), FUZZ_JOBS_NICE (19),
# FUZZ_RSS_MB (2048), FUZZ_TIMEOUT (10, seconds per input), NO_BUILD=1 to skip the build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build/fuzz}"
OUT_DIR="${OUT_DIR:-$BUILD_DIR/fuzz-runs}"
SECONDS_EACH="${FUZZ_SECONDS:-20}"
NICE="${FUZZ_JOBS_NICE:-19}"
RSS_MB="${FUZZ_RSS_MB:-2048}"
TIMEOUT="${FUZZ_TIMEOUT:-10}"
ALL_TARGETS=(gguf safetensors config tokenizer_json calibration loader unpack)

merge=0
targets=()
for a in "$@"; do
  case "$a" in
    --merge) merge=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) targets+=("$a") ;;
  esac
done
[[ ${#targets[@]} -eq 0 ]] && targets=("${ALL_TARGETS[@]}")

if [[ "${NO_BUILD:-0}" != 1 ]]; then
  if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
    nice -n "$NICE" cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DQFORGE_FUZZ=ON \
      -DQFORGE_BUILD_TESTS=OFF -DQFORGE_BUILD_BENCH=OFF >/dev/null
  fi
  build_targets=()
  for t in "${targets[@]}"; do build_targets+=("${t}_fuzz"); done
  nice -n "$NICE" cmake --build "$BUILD_DIR" --target "${build_targets[@]}"
fi

# ASan: leaks are findings too; UBSan aborts on the first report (-fno-sanitize-recover at compile time as well).
export QFORGE_FUZZ_SKIP_KNOWN="${QFORGE_FUZZ_SKIP_KNOWN:-1}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1:max_allocation_size_mb=2048}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

status=0
for t in "${targets[@]}"; do
  bin="$BUILD_DIR/fuzz/${t}_fuzz"
  corpus="$ROOT/fuzz/corpus/$t"
  [[ -x "$bin" ]] || { echo "missing $bin" >&2; exit 2; }
  if [[ $merge == 1 ]]; then
    # The committed seeds plus the inputs of the last run ($OUT_DIR/<target>/corpus) up to MERGE_MAX_BYTES, so the
    # committed corpus stays small; -merge=1 keeps the smallest set with the same coverage features.
    tmp="$(mktemp -d)" grown="$(mktemp -d)"
    [[ -d "$OUT_DIR/$t/corpus" ]] &&
      find "$OUT_DIR/$t/corpus" -type f -size -"${MERGE_MAX_BYTES:-4096}"c -exec cp {} "$grown"/ \;
    QFORGE_FUZZ_SKIP_KNOWN=1 nice -n "$NICE" "$bin" -merge=1 -rss_limit_mb="$RSS_MB" -timeout="$TIMEOUT" \
      "$tmp" "$corpus" "$grown" >"$grown.log" 2>&1 || { tail -n 20 "$grown.log" >&2; exit 1; }
    rm -f "$corpus"/*
    cp "$tmp"/* "$corpus"/
    rm -rf "$tmp" "$grown" "$grown.log"
    echo "$t: $(ls "$corpus" | wc -l) files, $(du -sh "$corpus" | cut -f1)"
    continue
  fi
  work="$OUT_DIR/$t"
  rm -rf "$work"
  mkdir -p "$work/corpus" "$work/artifacts"
  cp "$corpus"/* "$work/corpus/"
  echo "== $t: ${SECONDS_EACH}s on $(ls "$corpus" | wc -l) seeds"
  set +e
  nice -n "$NICE" "$bin" -max_total_time="$SECONDS_EACH" -rss_limit_mb="$RSS_MB" -timeout="$TIMEOUT" \
    -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$work/corpus" >"$work/log.txt" 2>&1
  rc=$?
  set -e
  grep -E '^#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb' "$work/log.txt" || true
  if [[ $rc != 0 ]]; then
    echo "!! $t exited $rc; reproducer(s): $(ls "$work/artifacts" 2>/dev/null | tr '\n' ' ')" >&2
    grep -m1 -E 'ERROR: (AddressSanitizer|libFuzzer)|runtime error|oracle failed|pack_linear\(unpack' "$work/log.txt" >&2 || true
    status=1
  fi
done
exit $status
