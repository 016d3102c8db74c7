#!/usr/bin/env bash
# Compatibility check of qforge's packed exports against independent Python readers written from the
# published formats (python/check_packed_export.py: numpy + safetensors; python/check_gguf_export.py: the
# PyPI gguf package). The default model is quantized once per configuration with --format hf (dequantized
# f32 weights) and once per packed format; the readers must unpack the packed files to the same weights.
# Usage: packed_compat.sh QFORGE SOURCE_DIR DATA_DIR (the model and the Python environment come from the
# cache directory scripts/setup.sh fills).
set -euo pipefail
QFORGE=$1 SRC=$2 DATA=$3
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/qforge"
MODEL="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf" PY="$CACHE/pyenv/bin/python" CALIB="$DATA/brown-corpus.txt"
[ -f "$MODEL" ] || { echo "default model missing at $MODEL: run bash scripts/setup.sh" >&2; exit 1; }
"$PY" -c "import numpy, safetensors, gguf" || { echo "$PY lacks numpy/safetensors/gguf: run bash scripts/setup.sh" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

quantize() {  # NAME FORMAT ARGS...
  local name=$1 fmt=$2; shift 2
  "$QFORGE" quantize --model "$MODEL" --bits 4 --group-size 64 --format "$fmt" --out "$tmp/$name" "$@" >/dev/null
}
calib=(--calib "$CALIB" --calib-samples 4 --calib-seqlen 128 --seed 1)

# AWQ (scales folded into the norms, AWQ grid), asymmetric.
quantize awq-hf hf --method awq --awq-search-samples 2 "${calib[@]}"
quantize awq awq --method awq --awq-search-samples 2 "${calib[@]}"
"$PY" "$SRC/python/check_packed_export.py" "$tmp/awq" "$tmp/awq-hf"
quantize awq.gguf gguf --method awq --awq-search-samples 2 "${calib[@]}"
"$PY" "$SRC/python/check_gguf_export.py" "$tmp/awq.gguf" "$tmp/awq-hf"

# GPTQ with act-order (g_idx permuted), symmetric: v1 and Q4_0.
quantize gptq-hf hf --method gptq --act-order --sym "${calib[@]}"
quantize gptq gptq --method gptq --act-order --sym "${calib[@]}"
"$PY" "$SRC/python/check_packed_export.py" "$tmp/gptq" "$tmp/gptq-hf"

# GPTQ with static groups, asymmetric: v2 and Q4_1.
quantize gptq2-hf hf --method gptq --act-order --static-groups "${calib[@]}"
quantize gptq2 gptq-v2 --method gptq --act-order --static-groups "${calib[@]}"
"$PY" "$SRC/python/check_packed_export.py" "$tmp/gptq2" "$tmp/gptq2-hf"
quantize gptq2.gguf gguf --method gptq --act-order --static-groups "${calib[@]}"
"$PY" "$SRC/python/check_gguf_export.py" "$tmp/gptq2.gguf" "$tmp/gptq2-hf"

# Symmetric RTN as Q4_0 (exact).
quantize rtn-hf hf --method rtn --sym
quantize rtn.gguf gguf --method rtn --sym
"$PY" "$SRC/python/check_gguf_export.py" "$tmp/rtn.gguf" "$tmp/rtn-hf"
echo "packed_compat: all exports read back by the Python readers"
