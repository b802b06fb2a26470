"""Every architecture in the table, on tiny random-initialized models: heads found, hooks and baking agree."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import TINY_CONFIGS, tiny_model
from torch import nn

from truthprobe_eval import ARCHITECTURES, UnsupportedArchitectureError, bake, gate, locate_heads
from truthprobe_eval.gating import SITES

ARCHS = sorted(TINY_CONFIGS)


def _inputs(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 90, (2, 7), generator=torch.Generator().manual_seed(seed))


def _scores(shape, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.4, 1.0, size=shape)


def test_every_table_entry_has_a_tiny_model():
    # gemma, gemma2, gemma3 (multimodal) and smolvlm share layouts with tested entries
    untested = set(ARCHITECTURES) - set(TINY_CONFIGS)
    assert untested <= {"gemma", "gemma2", "gemma3", "smolvlm"}, untested


@pytest.mark.parametrize("arch", ARCHS)
def test_locate_heads_finds_every_layer(arch):
    model = tiny_model(arch)
    sites = locate_heads(model)
    assert sites.shape == (3, 4)
    assert sites.in_features == 4 * sites.head_dim
    assert sites.hidden_size == 32
    assert len({id(p) for p in sites.out_projs}) == 3


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("site", SITES)
def test_hooks_and_baking_agree_and_hooks_restore(arch, site):
    model = tiny_model(arch, dtype=torch.float64)
    ids = _inputs()
    s = _scores((3, 4))
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with gate(model, s, alpha=3.0, norm="centered", site=site):
            hooked = model(input_ids=ids).logits
        restored = model(input_ids=ids).logits
        bake(model, s, alpha=3.0, norm="centered", site=site)
        baked = model(input_ids=ids).logits
    assert torch.equal(restored, base)
    assert (hooked - base).abs().max() > 1e-6, "gating must change the logits"
    assert (baked - hooked).abs().max() <= 1e-9 * hooked.abs().max()
    assert model.config.truthprobe_interventions[-1]["site"] == site


def test_unknown_architecture_names_the_modules_found():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("Cfg", (), {"model_type": "mystery"})()
            self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])

    with pytest.raises(UnsupportedArchitectureError) as err:
        locate_heads(Tiny())
    msg = str(err.value)
    assert "'mystery'" in msg and "blocks (2 x Linear)" in msg and "ARCHITECTURES['mystery']" in msg


def test_table_entry_pointing_at_missing_layers_is_reported(monkeypatch):
    from truthprobe_eval.architectures import HeadLayout

    model = tiny_model("llama")
    monkeypatch.setitem(ARCHITECTURES, "llama", HeadLayout(("decoder.blocks",)))
    with pytest.raises(UnsupportedArchitectureError, match=r"decoder.blocks.*model.layers \(3 x LlamaDecoderLayer\)"):
        locate_heads(model)
