"""Shared fixtures: the real SmolLM2 weights, the ../shared data folder, offline NLTK data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRUTHPROBE_SHARED", REPO.parent / "shared"))

os.environ.setdefault("NLTK_DATA", str(SHARED / "nltk_data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"expected the shared data folder beside the checkout at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (float32, CPU) and its tokenizer, loaded once per test session."""
    from truthprobe_eval import load_model

    model, tokenizer = load_model("smollm2-135m-instruct")
    return model, tokenizer


@pytest.fixture(autouse=True)
def _autograd_on():
    """Every test starts with autograd on, whatever an earlier test imported (VLMEvalKit's ``vlmeval.vlm`` turns
    it off process-wide at import; our adapters keep the caller's mode, and this keeps test order irrelevant)."""
    import torch

    torch.set_grad_enabled(True)
    yield
