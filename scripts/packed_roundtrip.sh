#!/usr/bin/env bash
# Round trip on the default model: each method quantized once to the in-memory form (--format hf, dequantized
# f32) and once to each packed format; all scored on the same WikiText-2 windows. The packed models run
# through the int4 kernels (W4A16), the hf one through f32 BLAS. Also the default GGUF itself, f32 vs --w4.
# Usage: scripts/packed_roundtrip.sh [WINDOWS] (default 16); writes out/roundtrip/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-16}
Q=build/release/qforge
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/qforge"
MODEL="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
DATA=../shared/data
O=out/roundtrip
mkdir -p $O
calib=(--calib $DATA/brown-corpus.txt --calib-samples 16 --calib-seqlen 512 --seed 0)
ev() { $Q eval --model "$1" --data $DATA/wikitext-2-raw-test.txt --ctx 2048 --max-windows $W --json "$O/$2.json" "${@:3}" | grep -E "perplexity|time"; }

echo "== default GGUF: f32 vs --w4 (Q4_1 linears packed)"
ev "$MODEL" gguf-f32
ev "$MODEL" gguf-w4 --w4

echo "== AWQ 4-bit g64"
awq=(--method awq --bits 4 --group-size 64 --awq-search-samples 4 "${calib[@]}")
$Q quantize --model "$MODEL" "${awq[@]}" --format hf --out $O/awq-hf >/dev/null
$Q quantize --model "$MODEL" "${awq[@]}" --format awq --out $O/awq-awq >/dev/null
$Q quantize --model "$MODEL" "${awq[@]}" --format gguf --out $O/awq.gguf >/dev/null
ev $O/awq-hf awq-hf
ev $O/awq-awq awq-awq
ev $O/awq.gguf awq-gguf --w4

echo "== GPTQ 4-bit g64 act-order sym"
gptq=(--method gptq --bits 4 --group-size 64 --act-order --sym "${calib[@]}")
$Q quantize --model "$MODEL" "${gptq[@]}" --format hf --out $O/gptq-hf >/dev/null
$Q quantize --model "$MODEL" "${gptq[@]}" --format gptq --out $O/gptq-gptq >/dev/null
ev $O/gptq-hf gptq-hf
ev $O/gptq-gptq gptq-gptq
