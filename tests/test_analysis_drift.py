"""truthprobe drift: planted drift in known heads of tiny checkpoints the tests save, GQA, shards, MLLM vs LLM."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from tiny_models import TINY_CONFIGS, tiny_model

from truthprobe_eval.analysis import drift
from truthprobe_eval.errors import ShapeMismatchError, TruthProbeError

HEADS, KV, D = 4, 2, 8  # the tiny text config: 4 query heads share 2 KV heads (group of 2), head_dim 8


def _attn(model, layer):
    from operator import attrgetter

    from truthprobe_eval.architectures import locate_heads

    return attrgetter(locate_heads(model).layers_path)(model)[layer].self_attn


def _plant(model, seed=1) -> dict:
    """Add known deltas to known head slices; return the expected per-(layer, head, projection) norms."""
    g = torch.Generator().manual_seed(seed)
    expected = {}
    with torch.no_grad():
        dq = torch.randn(D, 32, generator=g) * 0.05  # layer 1, query head 2: rows 16..23 of q
        _attn(model, 1).q_proj.weight[2 * D : 3 * D] += dq
        expected[(1, 2, "q")] = float(dq.norm())
        dk = torch.randn(D, 32, generator=g) * 0.03  # layer 0, KV head 1 -> query heads 2 and 3
        _attn(model, 0).k_proj.weight[D : 2 * D] += dk
        expected[(0, 2, "k")] = expected[(0, 3, "k")] = float(dk.norm())
        do = torch.randn(32, D, generator=g) * 0.04  # layer 2, query head 0: columns 0..7 of o
        _attn(model, 2).o_proj.weight[:, 0:D] += do
        expected[(2, 0, "o")] = float(do.norm())
    return expected


def _check_planted(result, expected):
    idx = {p: j for j, p in enumerate(drift.PROJECTIONS)}
    got = result.head_abs
    want = np.zeros_like(got)
    for (l, h, p), v in expected.items():
        want[l, h, idx[p]] = v
    np.testing.assert_allclose(got, want, atol=1e-6)
    # layer totals: the planted blocks are the only differences (KV delta counted once per layer, not per head)
    np.testing.assert_allclose(result.layer_abs[1, 0], expected[(1, 2, "q")], rtol=1e-5)
    np.testing.assert_allclose(result.layer_abs[0, 1], expected[(0, 2, "k")], rtol=1e-5)
    np.testing.assert_allclose(result.layer_abs[2, 3], expected[(2, 0, "o")], rtol=1e-5)
    assert result.layer_abs.sum() == pytest.approx(sum({v for v in expected.values()}), rel=1e-5)


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift")
    base = tiny_model("llama", seed=0)
    base.save_pretrained(root / "a")
    expected = _plant(base)
    base.save_pretrained(root / "b")
    return root, expected


def test_planted_drift_found_in_exact_heads(llama_pair):
    root, expected = llama_pair
    result = drift.weight_drift(root / "a", root / "b", progress=False)
    assert (result.shape.num_heads, result.shape.num_kv_heads, result.shape.head_dim) == (HEADS, KV, D)
    _check_planted(result, expected)
    ha, hr = result.head_total
    assert set(zip(*np.nonzero(ha > 1e-7))) == {(1, 2), (0, 2), (0, 3), (2, 0)}
    # relative = absolute / norm of A's slices of that head
    a = drift.open_checkpoint(str(root / "a"))
    q = a.tensor("model.layers.1.self_attn.q_proj.weight")[2 * D : 3 * D]
    k = a.tensor("model.layers.1.self_attn.k_proj.weight")[D : 2 * D]
    v = a.tensor("model.layers.1.self_attn.v_proj.weight")[D : 2 * D]
    o = a.tensor("model.layers.1.self_attn.o_proj.weight")[:, 2 * D : 3 * D]
    a.close()
    ref = float(torch.sqrt(sum((t**2).sum() for t in (q, k, v, o))))
    assert hr[1, 2] == pytest.approx(expected[(1, 2, "q")] / ref, rel=1e-5)
    summary = result.summary()
    assert summary["mean_head_abs"] == pytest.approx(ha.mean())
    assert summary["overall_abs"] == pytest.approx(np.sqrt(sum(v**2 for v in {*expected.values()})), rel=1e-5)


def test_identical_checkpoints_have_zero_drift(llama_pair):
    root, _ = llama_pair
    result = drift.weight_drift(root / "a", root / "a", progress=False)
    assert result.overall == (0.0, 0.0)
    assert np.all(result.head_total[0] == 0)


def test_sharded_checkpoint_streams_the_same_numbers(llama_pair, tmp_path):
    root, expected = llama_pair
    model = type(tiny_model("llama")).from_pretrained(root / "b")
    model.save_pretrained(tmp_path / "b_sharded", max_shard_size="20KB")
    assert (tmp_path / "b_sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "b_sharded").glob("*.safetensors"))) > 3
    _check_planted(drift.weight_drift(root / "a", tmp_path / "b_sharded", progress=False), expected)


def test_mllm_language_model_against_its_base_llm(llama_pair, tmp_path):
    """A tiny LLaVA whose language model starts from the tiny Llama: names differ, drift is where it was planted."""
    root, _ = llama_pair
    llama = type(tiny_model("llama")).from_pretrained(root / "a")
    llava = tiny_model("llava", seed=3)
    llava.model.language_model.load_state_dict(llama.model.state_dict())
    expected = _plant(llava, seed=7)
    llava.save_pretrained(tmp_path / "llava")
    ckpt = drift.open_checkpoint(str(tmp_path / "llava"))
    assert ckpt.layers_prefix in ("language_model.model.layers", "model.language_model.layers")
    ckpt.close()
    result = drift.weight_drift(root / "a", tmp_path / "llava", progress=False)
    assert result.a_prefix == "model.layers" and result.b_prefix != result.a_prefix
    _check_planted(result, expected)


def test_fused_qkv_checkpoint(tmp_path):
    """Phi-3 stores q, k, v in one qkv_proj: drift planted in k's KV head 0 is attributed to query heads 0 and 1."""
    model = tiny_model("phi3", seed=0)
    model.save_pretrained(tmp_path / "a")
    with torch.no_grad():
        delta = torch.full((D, 32), 0.01)
        model.model.layers[1].self_attn.qkv_proj.weight[HEADS * D : HEADS * D + D] += delta  # k rows of KV head 0
    model.save_pretrained(tmp_path / "b")
    result = drift.weight_drift(tmp_path / "a", tmp_path / "b", progress=False)
    ha = result.head_abs[..., 1]  # k
    np.testing.assert_allclose(ha[1, :2], float(delta.norm()), rtol=1e-5)
    assert ha.sum() == pytest.approx(2 * float(delta.norm()), rel=1e-5)


def test_shape_mismatch_is_refused(llama_pair, tmp_path):
    root, _ = llama_pair
    from transformers import AutoModelForCausalLM

    cfg = TINY_CONFIGS["llama"]()
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 2, 2, 16
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "other")
    with pytest.raises(ShapeMismatchError, match="differ in attention shape"):
        drift.weight_drift(root / "a", tmp_path / "other", progress=False)
    with pytest.raises(TruthProbeError, match="model path not found"):
        drift.weight_drift(root / "a", tmp_path / "nope" / "x", progress=False)


def test_cli_drift(llama_pair, tmp_path):
    root, expected = llama_pair
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "truthprobe_eval", "drift", str(root / "a"), str(root / "b"),
                           "--out", str(out)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "4 heads (2 key-value heads), head_dim 8" in proc.stdout
    rows = list(csv.DictReader(open(out / "drift_heads.csv")))
    assert len(rows) == 3 * HEADS
    row = next(r for r in rows if r["layer"] == "2" and r["head"] == "0")
    assert float(row["o_abs"]) == pytest.approx(expected[(2, 0, "o")], rel=1e-5)
    assert row["kv_head"] == "0"
    assert len(list(csv.DictReader(open(out / "drift_layers.csv")))) == 3
    assert json.loads((out / "drift_summary.json").read_text())["max_head"] in ([1, 2], [0, 2], [0, 3], [2, 0])
    from PIL import Image

    with Image.open(out / "drift.png") as im:
        assert im.format == "PNG"
