"""Gating the real SmolLM2-135M-Instruct: identity at alpha 0, hooks restore, bake == gate, checkpoints reload."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from truthprobe_eval import ShapeMismatchError, TruthScores, bake, gate, load_model, locate_heads
from truthprobe_eval.cli import main
from truthprobe_eval.gating import SITES

PROMPT = "Context:\nParis is the capital of France.\n\nQuestion: What is the capital of France?\nAnswer: Paris"


@pytest.fixture(scope="module")
def scores() -> TruthScores:
    rng = np.random.default_rng(7)
    return TruthScores(rng.uniform(0.45, 0.98, size=(30, 9)), meta={"model": "synthetic-smollm2-scores"})


@pytest.fixture(scope="module")
def batch(smollm2):
    _, tok = smollm2
    return tok([PROMPT, "Question: Who wrote Hamlet?\nAnswer: Shakespeare"], return_tensors="pt", padding=True)


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_smollm2_shape(smollm2):
    sites = locate_heads(smollm2[0])
    assert sites.shape == (30, 9) and sites.head_dim == 64 and sites.hidden_size == 576


@pytest.mark.parametrize("site", SITES)
def test_alpha_zero_is_exact_and_hooks_restore(smollm2, scores, batch, site):
    model, _ = smollm2
    base = _logits(model, batch)
    with gate(model, scores, alpha=0.0, site=site):
        zero = _logits(model, batch)
    with gate(model, scores, alpha=4.5, site=site):
        gated = _logits(model, batch)
    after = _logits(model, batch)
    assert torch.equal(zero, base)
    assert (gated - base).abs().max() > 1e-2
    assert torch.equal(after, base)
    assert all(not p._forward_hooks and not p._forward_pre_hooks for p in locate_heads(model).out_projs)


def test_hooks_are_removed_when_the_block_raises(smollm2, scores, batch):
    model, _ = smollm2
    base = _logits(model, batch)
    with pytest.raises(RuntimeError, match="boom"):
        with gate(model, scores, alpha=4.5):
            raise RuntimeError("boom")
    assert torch.equal(_logits(model, batch), base)


@pytest.fixture(scope="module")
def smollm2_f64():
    model, tok = load_model("smollm2-135m-instruct", dtype="float64")
    return model, tok


def test_bake_matches_gate_on_the_real_weights(smollm2_f64, scores):
    """Bake = hooks once on the real model (float64, to 1e-9), at both sites; the norms change the gate values only,
    which the gate-value tests cover, and every architecture's bake is checked on tiny models (test_architectures)."""
    model, tok = smollm2_f64
    batch = tok([PROMPT], return_tensors="pt")
    for site, norm in zip(SITES, ("centered", "minmax")):
        with gate(model, scores, alpha=2.5, norm=norm, site=site):
            hooked = _logits(model, batch)
        baked = _logits(bake(copy.deepcopy(model), scores, alpha=2.5, norm=norm, site=site), batch)
        assert (baked - hooked).abs().max() <= 1e-9 * hooked.abs().max()


def test_gated_generation_differs(smollm2, scores):
    model, tok = smollm2
    ids = tok(PROMPT, return_tensors="pt")
    with torch.no_grad():
        base = model.generate(**ids, max_new_tokens=8, do_sample=False)
        with gate(model, scores, alpha=7.5):
            gated = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert base.shape[1] > ids["input_ids"].shape[1]
    assert not torch.equal(base, gated)


def test_shape_mismatch_names_both(smollm2):
    wrong = TruthScores(np.full((32, 32), 0.7), meta={"model": "lmsys/vicuna-7b-v1.5"})
    with pytest.raises(ShapeMismatchError, match=r"vicuna-7b-v1.5 have shape \(32, 32\).*SmolLM2-135M-Instruct has \(30, 9\)"):
        with gate(smollm2[0], wrong, alpha=1.0):
            pass


def test_bake_cli_writes_a_plain_checkpoint_that_reloads(tmp_path, smollm2, scores, batch):
    from transformers import AutoModelForCausalLM

    model, _ = smollm2
    score_file = scores.save(tmp_path / "scores.json")
    out = tmp_path / "baked"
    args = ["bake", "--set", f"scores={score_file}", "--set", "alpha=2.5", "--set", "norm=centered", "--out", str(out)]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    record = config["truthprobe_interventions"][-1]
    assert (record["method"], record["alpha"], record["norm"], record["apply"]) == ("truthprobe", 2.5, "centered", "bake")
    assert len(record["gates"]) == 30 and "truthprobe_gating" not in config  # one record, not two
    from truthprobe_eval.interventions import from_description

    assert {**from_description(record).describe(), "gates": record["gates"]} == record  # the checkpoint says how
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, no code of ours
    with gate(model, scores, alpha=2.5, norm="centered"):
        hooked = _logits(model, batch)
    assert (_logits(reloaded, batch) - hooked).abs().max() <= 1e-4 * hooked.abs().max()
    assert not list(tmp_path.glob(".baked*")), "staging folder removed"


def test_bake_cli_rejects_bad_input_before_loading(tmp_path, capsys):
    assert main(["bake", "--set", f"scores={tmp_path / 'nope.json'}", "--out", str(tmp_path / "o")]) == 2
    assert "score file not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["bake", "--method", "rve", "--set", "variant=whole_span", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "method 'rve' cannot be baked into weights (its edit depends on each input's attention pattern)" in err
