#!/usr/bin/env bash
# Peak RSS of `qforge quantize` against the number of decoder layers (issue 6, "memory bound"): generates two
# synthetic Llama models of the same shape and seed, one with few layers and one with many (default 4 and 32,
# hidden 2048, intermediate 5632, 32 heads, 4 kv heads, fp16, vocab of SmolLM2's tokenizer), quantizes each
# with the same settings under /usr/bin/time -v, and prints
#   layers | method | peak RSS MiB | difference large-small | one layer's f32 size MiB | pass/fail
# pass: the two peaks differ by less than one layer (the issue's target: peak RSS grows with one layer plus
# activations, not with the number of layers).
#
#   scripts/rss_vs_layers.sh [WORKDIR] [--keep] [--qforge BIN] [--methods rtn,gptq] [--small 4] [--large 32]
#                            [--calib FILE] [--calib-samples 8] [--calib-seqlen 256] [--threads N] [--tokenizer TOK]
#                            [--shape 2048,5632,32,4]   (hidden,intermediate,heads,kv_heads; small ones to try it)
#
# WORKDIR (default: a new directory under /tmp) receives the models, the logs and results.md. The 32-layer
# input is 3.2 GB of fp16 and today's run state (OUT.partial, f32 layer files) adds about 6 GB while it runs;
# the outputs are removed after each run, the inputs at the end unless --keep (a later run with the same
# WORKDIR reuses kept inputs, e.g. to measure "after" on the same files).
# Methods: rtn = --method rtn --format awq; gptq = --method gptq --format gptq with a small calibration
# (8 x 256 tokens of the Brown corpus by default). Runs under nice -n 19.
# Besides /usr/bin/time's "Maximum resident set size" the script samples /proc/PID/status every 0.2 s for the
# largest RssAnon (heap) and RssFile (mapped model pages that count in RSS) seen, to tell which one grows.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QFORGE="$ROOT/build/release/qforge"
WORK=""
KEEP=0
METHODS="rtn,gptq"
SMALL=4
LARGE=32
CALIB="$ROOT/../shared/data/brown-corpus.txt"
CALIB_SAMPLES=8
CALIB_SEQLEN=256
THREADS=0
TOKENIZER=""
SEED=0
HIDDEN=2048 INTER=5632 HEADS=32 KV_HEADS=4

while (($#)); do
  case "$1" in
    --keep) KEEP=1 ;;
    --qforge) QFORGE="$2"; shift ;;
    --methods) METHODS="$2"; shift ;;
    --small) SMALL="$2"; shift ;;
    --large) LARGE="$2"; shift ;;
    --calib) CALIB="$2"; shift ;;
    --calib-samples) CALIB_SAMPLES="$2"; shift ;;
    --calib-seqlen) CALIB_SEQLEN="$2"; shift ;;
    --threads) THREADS="$2"; shift ;;
    --tokenizer) TOKENIZER="$2"; shift ;;
    --shape) IFS=, read -r HIDDEN INTER HEADS KV_HEADS <<< "$2"; shift ;;  # hidden,intermediate,heads,kv_heads
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) [ -z "$WORK" ] || { echo "one WORKDIR only" >&2; exit 2; }; WORK="$1" ;;
  esac
  shift
done

[ -x "$QFORGE" ] || { echo "$QFORGE: not built (make build, or --qforge BIN)" >&2; exit 1; }
QFORGE="$(cd "$(dirname "$QFORGE")" && pwd)/$(basename "$QFORGE")"
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/qforge"
PY="$CACHE_DIR/pyenv/bin/python"
"$PY" -c "import numpy" 2>/dev/null || { echo "$PY: no numpy; run scripts/setup.sh first" >&2; exit 1; }
if [ ! -x /usr/bin/time ]; then
  echo "[rss] /usr/bin/time missing: installing the Debian package 'time'"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq time >/dev/null
fi
if [[ ",$METHODS," == *,gptq,* ]]; then
  [ -f "$CALIB" ] || { echo "$CALIB: calibration text not found (--calib FILE)" >&2; exit 1; }
  CALIB="$(cd "$(dirname "$CALIB")" && pwd)/$(basename "$CALIB")"
fi
[ -n "$WORK" ] || WORK="$(mktemp -d /tmp/qforge-rss.XXXXXX)"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"

# Sizes from the shapes (bytes): one layer = q, k, v, o, gate, up, down + two norms.
HEAD_DIM=$((HIDDEN / HEADS)); Q=$((HEADS * HEAD_DIM)); KV=$((KV_HEADS * HEAD_DIM))
LAYER_PARAMS=$((HIDDEN * Q + 2 * HIDDEN * KV + Q * HIDDEN + 3 * HIDDEN * INTER + 2 * HIDDEN))
LAYER_F32_MIB=$(awk -v p=$LAYER_PARAMS 'BEGIN { printf "%.1f", 4 * p / 1048576 }')

echo "[rss] work dir $WORK; qforge $QFORGE"
# Today's run writes OUT.partial (f32 layer files + 1-byte codes: 5 bytes a parameter) and the packed output.
echo "[rss] disk: the $LARGE-layer input is about $(awk -v p=$LAYER_PARAMS -v l=$LARGE 'BEGIN{printf "%.1f", 2*p*l/2^30}') GiB of fp16" \
     "layers (plus 0.4 GiB of embeddings with SmolLM2's vocabulary), and its run writes up to about" \
     "$(awk -v p=$LAYER_PARAMS -v l=$LARGE 'BEGIN{printf "%.1f", 5.5*p*l/2^30}') GiB more while it runs;" \
     "free under $WORK: $(df -h --output=avail "$WORK" | tail -1 | tr -d ' ')"

# The tokenizer: SmolLM2's (vocab 49152) from the GGUF that scripts/setup.sh caches, unless --tokenizer.
if [ -z "$TOKENIZER" ]; then
  TOKENIZER="$WORK/tokenizer"
  if [ ! -f "$TOKENIZER/tokenizer.json" ]; then
    GGUF="$CACHE_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
    [ -f "$GGUF" ] || { echo "$GGUF missing: run scripts/setup.sh, or pass --tokenizer" >&2; exit 1; }
    rm -rf "$WORK/tokenizer.convert"
    "$QFORGE" convert "$GGUF" --out "$WORK/tokenizer.convert" --dtype f16 >/dev/null
    mkdir -p "$TOKENIZER"
    cp "$WORK/tokenizer.convert"/tokenizer{,_config}.json "$TOKENIZER/"
    rm -rf "$WORK/tokenizer.convert"
  fi
fi

model_dir() { echo "$WORK/synthetic-L$1"; }
make_model() {  # reuses a kept model of the same shape
  local L=$1 dir; dir="$(model_dir "$1")"
  if [ -f "$dir/config.json" ] && grep -q "\"num_hidden_layers\": $L," "$dir/config.json" &&
     grep -q "\"hidden_size\": $HIDDEN," "$dir/config.json"; then
    echo "[rss] reusing $dir"
    return
  fi
  rm -rf "$dir"
  local t0=$SECONDS
  nice -n 19 "$PY" "$ROOT/scripts/make_synthetic_model.py" --out "$dir" --layers "$L" --seed "$SEED" \
    --hidden "$HIDDEN" --intermediate "$INTER" --heads "$HEADS" --kv-heads "$KV_HEADS" --tokenizer "$TOKENIZER" \
    2>&1 | grep -v '^  model-' || true
  [ -f "$dir/config.json" ] || { echo "[rss] generating $dir failed" >&2; exit 1; }
  echo "[rss] generated $dir ($(du -sh "$dir" | cut -f1)) in $((SECONDS - t0)) s"
}

CUR_OUT=""
cleanup() { [ -z "$CUR_OUT" ] || rm -rf "$CUR_OUT" "$CUR_OUT.partial"; }
trap cleanup EXIT

# Largest RssAnon / RssFile (kB) of the qforge process under PID $1 (the time process), sampled until it exits.
sample_rss() {
  local parent=$1 out=$2 pid="" anon=0 file=0 a f
  while kill -0 "$parent" 2>/dev/null; do
    [ -n "$pid" ] || pid=$(pgrep -P "$parent" | head -1 || true)
    if [ -n "$pid" ] && [ -r "/proc/$pid/status" ]; then
      a=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
      f=$(awk '/^RssFile:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
      [ -n "$a" ] && ((a > anon)) && anon=$a
      [ -n "$f" ] && ((f > file)) && file=$f
    fi
    sleep 0.2
  done
  echo "$anon $file" > "$out"
}

declare -A RSS WALL ANON FILE QLINE OUTSZ WRITTEN
run_one() {
  local L=$1 method=$2 tag="L$1-$2" args=()
  case "$method" in
    rtn) args=(--method rtn --format awq) ;;
    gptq) args=(--method gptq --format gptq --calib "$CALIB" --calib-samples "$CALIB_SAMPLES" --calib-seqlen "$CALIB_SEQLEN") ;;
    *) echo "unknown method $method (rtn, gptq)" >&2; exit 2 ;;
  esac
  local out="$WORK/out-$tag"
  CUR_OUT="$out"
  rm -rf "$out" "$out.partial"
  echo "[rss] $tag: qforge quantize --model $(model_dir "$L") ${args[*]} --threads $THREADS --out $out"
  nice -n 19 /usr/bin/time -v -o "$WORK/time-$tag.txt" "$QFORGE" quantize --model "$(model_dir "$L")" "${args[@]}" \
    --threads "$THREADS" --out "$out" > "$WORK/log-$tag.txt" 2>&1 &
  local tpid=$!
  sample_rss "$tpid" "$WORK/sampled-$tag.txt" &
  local spid=$!
  local rc=0
  wait "$tpid" || rc=$?
  wait "$spid" || true
  if ((rc != 0)); then
    echo "[rss] $tag failed (exit $rc); last lines of $WORK/log-$tag.txt:" >&2
    tail -5 "$WORK/log-$tag.txt" >&2
    exit 1
  fi
  OUTSZ[$tag]=$(du -sh "$out" | cut -f1)
  rm -rf "$out" "$out.partial"
  CUR_OUT=""
  RSS[$tag]=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$WORK/time-$tag.txt")
  WALL[$tag]=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i];
                                                      printf "%.0f", s }' "$WORK/time-$tag.txt")
  # "File system outputs" counts 512-byte blocks: the run state, the output and anything else it wrote.
  WRITTEN[$tag]=$(awk -F': ' '/File system outputs/ {printf "%.1f", $2 * 512 / 2^30}' "$WORK/time-$tag.txt")
  read -r a f < "$WORK/sampled-$tag.txt"
  ANON[$tag]=$((a / 1024)); FILE[$tag]=$((f / 1024))
  QLINE[$tag]=$(grep -m1 'peak RSS' "$WORK/log-$tag.txt" || echo "(no peak RSS line)")
  echo "[rss] $tag: peak RSS ${RSS[$tag]} MiB (sampled max RssAnon ${ANON[$tag]} MiB, RssFile ${FILE[$tag]} MiB)," \
       "${WALL[$tag]} s, output ${OUTSZ[$tag]}, ${WRITTEN[$tag]} GiB written"
  echo "      qforge: ${QLINE[$tag]}"
}

make_model "$SMALL"
make_model "$LARGE"
IFS=',' read -r -a METHOD_LIST <<< "$METHODS"
for m in "${METHOD_LIST[@]}"; do
  run_one "$SMALL" "$m"
  run_one "$LARGE" "$m"
done

{
  echo "qforge binary $QFORGE (built $(date -u -r "$QFORGE" '+%F %T UTC'); repo at $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')), $(nproc) cores," \
       "$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo); synthetic Llama hidden $HIDDEN," \
       "intermediate $INTER, $HEADS heads / $KV_HEADS kv heads, fp16, seed $SEED;" \
       "one layer = $LAYER_PARAMS parameters = $LAYER_F32_MIB MiB in f32"
  echo
  echo "| layers | method | peak RSS MiB | max RssAnon / RssFile MiB | wall s | GiB written | difference $LARGE-$SMALL MiB | one layer f32 MiB | pass |"
  echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  for m in "${METHOD_LIST[@]}"; do
    s="L$SMALL-$m" l="L$LARGE-$m"
    d=$((RSS[$l] - RSS[$s]))
    verdict=$(awk -v d=$d -v one=$LAYER_F32_MIB 'BEGIN { print (d < one ? "pass" : "FAIL") }')
    label="$m"; [ "$m" = gptq ] && label="gptq ($CALIB_SAMPLES x $CALIB_SEQLEN)"
    echo "| $SMALL | $label | ${RSS[$s]} | ${ANON[$s]} / ${FILE[$s]} | ${WALL[$s]} | ${WRITTEN[$s]} | | $LAYER_F32_MIB | |"
    echo "| $LARGE | $label | ${RSS[$l]} | ${ANON[$l]} / ${FILE[$l]} | ${WALL[$l]} | ${WRITTEN[$l]} | $d | $LAYER_F32_MIB | $verdict |"
  done
  echo
  echo "qforge's own summary lines:"
  for m in "${METHOD_LIST[@]}"; do
    for L in "$SMALL" "$LARGE"; do echo "  L$L $m: ${QLINE[L$L-$m]}"; done
  done
} | tee "$WORK/results.md"

if ((KEEP)); then
  echo "[rss] inputs kept in $WORK (results.md, logs beside them)"
else
  rm -rf "$(model_dir "$SMALL")" "$(model_dir "$LARGE")"
  echo "[rss] inputs removed; results.md and logs kept in $WORK"
fi
