#!/usr/bin/env bash
# Install everything (scripts/setup.sh) and run the main job on the embedded defaults:
# probe SmolLM2-135M-Instruct on HaluEval, pick alpha/norm on a validation slice, evaluate baseline vs gated.
# Extra arguments go to `truthprobe run` (see `truthprobe run --help`), e.g. `bash scripts/demo.sh --verbose` to see
# what lm-eval and transformers say live (it always goes to runs/truthprobe-run/run.log), `--preset ours` for our
# probing defaults, `--controls` for the paper's random gate beside our strength-matched random and shuffled gates.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
truthprobe run "$@"
