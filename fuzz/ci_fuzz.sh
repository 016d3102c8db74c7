#!/usr/bin/env bash
# CI fuzzing: the clang build of the libFuzzer targets, then each target for a short fixed budget on its
# committed corpus (fuzz/corpus/<target>/, replayed in full first), one after the other. Exit status 1 on any
# finding (crash, sanitizer report, leak, timeout, out of memory; the reproducer is left under
# $BUILD_DIR/fuzz-runs/<target>/artifacts/), 2 when clang or libFuzzer is missing.
#
#   fuzz/ci_fuzz.sh                 # every target, 15 s each
#   FUZZ_SECONDS=60 fuzz/ci_fuzz.sh gguf loader
#
# The build is run_fuzzers.sh's (RelWithDebInfo, ASan + UBSan + coverage over the whole library, the QFORGE_FUZZ
# block of CMakeLists.txt) at -j2: from a clean directory it took 190 s on the 2-core CI machine (-O1 was no faster,
# 186 s, and fuzzes slower, so it is not used; docs/fuzzing.md has the measurements). A kept build directory makes
# it incremental.
# Needs clang and its libFuzzer runtime: on Debian 12, `apt-get install clang-14 libclang-rt-14-dev` (the runtime
# is only a Recommends of clang-14, so --no-install-recommends would leave it out).
#
# Environment: FUZZ_SECONDS (15), BUILD_DIR (build/fuzz, shared with run_fuzzers.sh), CXX_FUZZ / CC_FUZZ
# (clang++-14 / clang-14 when present, else clang++ / clang), JOBS (2), FUZZ_JOBS_NICE (0).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build/fuzz}"
SECONDS_EACH="${FUZZ_SECONDS:-15}"
JOBS="${JOBS:-2}"
ALL_TARGETS=(gguf safetensors config tokenizer_json calibration loader unpack)
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=("${ALL_TARGETS[@]}")

pick() { for c in "$@"; do command -v "$c" >/dev/null 2>&1 && { command -v "$c"; return 0; }; done; return 1; }
CXX_FUZZ="${CXX_FUZZ:-$(pick clang++-14 clang++ || true)}"
CC_FUZZ="${CC_FUZZ:-$(pick clang-14 clang || true)}"
if [[ -z "$CXX_FUZZ" || -z "$CC_FUZZ" ]]; then
  echo "ci_fuzz: clang not found (Debian: apt-get install clang-14 libclang-rt-14-dev)" >&2
  exit 2
fi
# clang prints the bare name back when the file is not in its runtime directory.
if [[ ! -f "$("$CXX_FUZZ" -print-file-name=libclang_rt.fuzzer-x86_64.a)" ]]; then
  echo "ci_fuzz: libFuzzer runtime (libclang_rt.fuzzer) missing for $CXX_FUZZ (Debian: libclang-rt-14-dev)" >&2
  exit 2
fi

start=$(date +%s)
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER="$CC_FUZZ" \
    -DCMAKE_CXX_COMPILER="$CXX_FUZZ" -DCMAKE_CUDA_COMPILER=OFF -DQFORGE_FUZZ=ON -DQFORGE_BUILD_TESTS=OFF \
    -DQFORGE_BUILD_BENCH=OFF >/dev/null
fi
build_targets=()
for t in "${targets[@]}"; do build_targets+=("${t}_fuzz"); done
cmake --build "$BUILD_DIR" -j "$JOBS" --target "${build_targets[@]}"
built=$(date +%s)
echo "ci_fuzz: build $((built - start)) s"

# The runs: run_fuzzers.sh's loop (same libFuzzer flags, sanitizer options and exit status), on this build.
status=0
NO_BUILD=1 BUILD_DIR="$BUILD_DIR" FUZZ_SECONDS="$SECONDS_EACH" FUZZ_JOBS_NICE="${FUZZ_JOBS_NICE:-0}" \
  "$ROOT/fuzz/run_fuzzers.sh" "${targets[@]}" || status=$?
echo "ci_fuzz: runs $(($(date +%s) - built)) s (${#targets[@]} targets x ${SECONDS_EACH} s), total $(($(date +%s) - start)) s"
exit $status
