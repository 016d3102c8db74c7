#!/usr/bin/env bash
# Determinism: the same model, calibration and seed quantized with 1 and with 2 threads give byte-identical
# checkpoints (AWQ+GPTQ exercises both algorithms; the packed GPTQ checkpoint and its configs are
# compared). Usage: determinism.sh QFORGE DATA_DIR
set -euo pipefail
QFORGE=$1 DATA=$2
MODEL="${XDG_CACHE_HOME:-$HOME/.cache}/qforge/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$MODEL" ] || { echo "default model missing at $MODEL: run bash scripts/setup.sh" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
args=(--model "$MODEL" --method awq-gptq --bits 4 --group-size 64 --act-order --static-groups
      --calib "$DATA/brown-corpus.txt" --calib-samples 2 --calib-seqlen 64 --awq-search-samples 1 --seed 3)
for t in 1 2; do
  OMP_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t "$QFORGE" quantize "${args[@]}" --threads $t --format gptq --out "$tmp/gptq-$t" >/dev/null
done
status=0
cmp "$tmp/gptq-1/model.safetensors" "$tmp/gptq-2/model.safetensors" || status=1
for f in config.json quantize_config.json tokenizer.json; do cmp "$tmp/gptq-1/$f" "$tmp/gptq-2/$f" || status=1; done
if [ $status -ne 0 ]; then echo "determinism: 1 and 2 threads gave different bytes" >&2; exit 1; fi
echo "determinism: 1 and 2 threads give byte-identical checkpoints ($(stat -c %s "$tmp/gptq-1/model.safetensors") bytes)"
