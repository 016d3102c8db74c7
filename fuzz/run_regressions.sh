#!/usr/bin/env bash
# Replays every saved input of tests/data/fuzz_regressions/<target>/ through its fuzz binary (libFuzzer runs each
# file once when given file paths; one process per file) and, with --corpus, the committed seed corpora (-runs=0).
# No gtest needed.
# An input that still crashes fails the run; inputs of findings that are not fixed yet are listed in
# tests/data/fuzz_regressions/KNOWN_FAILING (one "<target>/<file>" a line) and reported, not failed, until fixed.
#
#   fuzz/run_regressions.sh [--corpus] [target...]
# Environment: BUILD_DIR (build/fuzz), NO_BUILD=1 to skip the build.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build/fuzz}"
REG="$ROOT/tests/data/fuzz_regressions"
ALL_TARGETS=(gguf safetensors config tokenizer_json calibration loader unpack)
with_corpus=0
targets=()
for a in "$@"; do
  case "$a" in
    --corpus) with_corpus=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) targets+=("$a") ;;
  esac
done
[[ ${#targets[@]} -eq 0 ]] && targets=("${ALL_TARGETS[@]}")

if [[ "${NO_BUILD:-0}" != 1 ]]; then
  if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
    nice -n 19 cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
      -DCMAKE_CXX_COMPILER=clang++ -DQFORGE_FUZZ=ON -DQFORGE_BUILD_TESTS=OFF -DQFORGE_BUILD_BENCH=OFF >/dev/null || exit 2
  fi
  build_targets=()
  for t in "${targets[@]}"; do build_targets+=("${t}_fuzz"); done
  nice -n 19 cmake --build "$BUILD_DIR" --target "${build_targets[@]}" || exit 2
fi

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:max_allocation_size_mb=2048}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
known=""
[[ -f "$REG/KNOWN_FAILING" ]] && known="$(grep -v '^#' "$REG/KNOWN_FAILING" || true)"

fail=0 pass=0 known_fail=0 fixed=0
for t in "${targets[@]}"; do
  bin="$BUILD_DIR/fuzz/${t}_fuzz"
  [[ -x "$bin" ]] || { echo "missing $bin" >&2; exit 2; }
  files=()
  [[ -d "$REG/$t" ]] && for f in "$REG/$t"/*; do [[ -f "$f" ]] && files+=("$f"); done
  if [[ $with_corpus == 1 && -d "$ROOT/fuzz/corpus/$t" ]]; then
    # The seed corpus in one process: -runs=0 executes every input once (no mutation) and stops.
    if QFORGE_FUZZ_SKIP_KNOWN=1 nice -n 19 "$bin" -runs=0 -rss_limit_mb=2048 -timeout=10 "$ROOT/fuzz/corpus/$t" \
        >/tmp/qforge_regress.$$.log 2>&1; then
      echo "corpus  $t: $(ls "$ROOT/fuzz/corpus/$t" | wc -l) inputs ok"
    else
      echo "FAIL    corpus $t"; grep -m3 -E 'ERROR:|runtime error|oracle failed|SUMMARY' /tmp/qforge_regress.$$.log | sed 's/^/        /'
      fail=$((fail + 1))
    fi
  fi
  for f in "${files[@]}"; do
    rel="$t/$(basename "$f")"
    # One process per file: a crash names its input, and the others still run.
    if nice -n 19 "$bin" -rss_limit_mb=2048 -timeout=10 -runs=1 "$f" >/tmp/qforge_regress.$$.log 2>&1; then
      if grep -qxF "$rel" <<<"$known"; then echo "FIXED   $rel (remove it from KNOWN_FAILING)"; fixed=$((fixed + 1))
      else pass=$((pass + 1)); fi
    elif grep -qxF "$rel" <<<"$known"; then
      echo "KNOWN   $rel"; known_fail=$((known_fail + 1))
    else
      echo "FAIL    $rel"; grep -m3 -E 'ERROR:|runtime error|oracle failed|SUMMARY' /tmp/qforge_regress.$$.log | sed 's/^/        /'
      fail=$((fail + 1))
    fi
  done
done
rm -f /tmp/qforge_regress.$$.log
echo "regressions: $pass passed, $fail failed, $known_fail known failing, $fixed fixed"
[[ $fail == 0 ]]
