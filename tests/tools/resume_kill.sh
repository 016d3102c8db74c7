#!/usr/bin/env bash
# Resumable quantization: a run killed with SIGKILL at random points and resumed each time ends with the same
# bytes as an uninterrupted run, and no partial checkpoint is ever visible at the output path.
# Usage: resume_kill.sh QFORGE DATA_DIR [KILLS]
set -euo pipefail
QFORGE=$1 DATA=$2 KILLS=${3:-4}
MODEL="${XDG_CACHE_HOME:-$HOME/.cache}/qforge/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$MODEL" ] || { echo "default model missing at $MODEL: run bash scripts/setup.sh" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
args=(--model "$MODEL" --method awq-gptq --bits 4 --group-size 64 --act-order --static-groups
      --calib "$DATA/brown-corpus.txt" --calib-samples 2 --calib-seqlen 64 --awq-search-samples 1 --seed 5
      --format gptq)

start=$(date +%s.%N)
"$QFORGE" quantize "${args[@]}" --out "$tmp/ref" >/dev/null 2>&1
full=$(echo "$(date +%s.%N) - $start" | bc)
echo "uninterrupted run: ${full}s"

out="$tmp/out"
RANDOM=42  # reproducible kill points
resume=()
for k in $(seq 1 "$KILLS"); do
  # A kill point uniformly inside the run (the first one shorter: the model load is part of every run).
  r=$RANDOM  # drawn here: $RANDOM inside $(...) would not advance this shell's sequence
  delay=$(echo "scale=2; $full * ($r % 90 + 5) / 100" | bc)
  "$QFORGE" quantize "${args[@]}" "${resume[@]}" --out "$out" >/dev/null 2>&1 &
  pid=$!
  sleep "$delay"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  layers=$(ls "$out.partial" 2>/dev/null | grep -c '^layer-' || true)
  echo "kill $k after ${delay}s: $layers layers saved"
  if [ -e "$out" ] && [ -e "$out.partial" ]; then
    echo "FAIL: $out is visible while the run is unfinished" >&2; exit 1
  fi
  resume=(--resume)
done
# A new run over the state of an interrupted one is refused (it would throw the work away).
if [ -e "$out.partial" ]; then
  if "$QFORGE" quantize "${args[@]}" --out "$out" >/dev/null 2>"$tmp/err"; then
    echo "FAIL: a run without --resume over an interrupted run's state was accepted" >&2; exit 1
  fi
  grep -q -- "--resume" "$tmp/err" || { echo "FAIL: the refusal does not mention --resume: $(cat "$tmp/err")" >&2; exit 1; }
fi
"$QFORGE" quantize "${args[@]}" --resume --out "$out" >/dev/null 2>&1
[ ! -e "$out.partial" ] || { echo "FAIL: state directory left after success" >&2; exit 1; }
for f in model.safetensors config.json quantize_config.json tokenizer.json; do
  cmp "$tmp/ref/$f" "$out/$f" || { echo "FAIL: $f differs from the uninterrupted run" >&2; exit 1; }
done
echo "resume: $KILLS kills, the resumed checkpoint equals the uninterrupted one byte for byte"
