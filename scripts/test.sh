#!/usr/bin/env bash
# Install everything (scripts/setup.sh) and run the whole test suite. Extra arguments go to pytest.
# Expects the shared data folder beside the checkout (../shared), as CI has it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export NLTK_DATA="${NLTK_DATA:-$(cd .. && pwd)/shared/nltk_data}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m pytest -q --durations=15 "$@"
