"""`truthprobe probe` on the real SmolLM2 and HaluEval: scores above chance, a complete score file, clear errors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from truthprobe_eval.probing import load_activations, load_examples, probe_model

from truthprobe_eval import TruthScores
from truthprobe_eval.cli import main

N_ROWS = 40


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """`truthprobe probe` on the first 40 HaluEval rows (80 examples), cached under a temporary folder."""
    tmp = tmp_path_factory.mktemp("probe")
    out = tmp / "scores" / "smollm2.json"
    rc = main(["probe", "--n", str(N_ROWS), "--out", str(out), "--cache-dir", str(tmp / "cache"), "--quiet"])
    assert rc == 0
    return out, tmp / "cache"


@pytest.mark.slow
def test_scores_above_chance_with_complete_metadata(probed):
    out, cache = probed
    scores = TruthScores.load(out)
    assert scores.shape == (30, 9)
    assert scores.values.mean() > 0.6, scores.summary()
    assert scores.values.max() > 0.75
    meta = scores.meta
    expected = {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "architecture": "llama", "num_layers": 30,
                "num_heads": 9, "head_dim": 64, "data": "halueval", "n_rows": N_ROWS, "n_samples": 2 * N_ROWS,
                "offset": 0, "folds": 5, "seed": 0, "epochs": 200, "trainer": "exact", "condition": None,
                "prompt_format": "text", "metric": "cv5_val_accuracy"}
    assert {k: meta.get(k) for k in expected} == expected
    for name in ("precision", "recall", "f1"):
        assert scores.metrics[name].shape == (30, 9) and np.all((scores.metrics[name] >= 0) & (scores.metrics[name] <= 1))
    assert scores.probe_weights.shape == (30, 9, 64) and scores.probe_bias.shape == (30, 9)
    assert Path(meta["activation_cache"]).parent == cache.resolve()
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # its fixture probes the real model (34 s)
def test_cached_activations_feed_the_analysis_and_same_seed_gives_same_scores(probed, smollm2):
    out, cache = probed
    saved = TruthScores.load(out)
    X, y, groups, meta = load_activations(saved.meta["activation_cache"])
    assert X.shape == (2 * N_ROWS, 30, 9, 64) and y.tolist() == [1, 0] * N_ROWS
    assert groups.tolist() == [i // 2 for i in range(2 * N_ROWS)]
    model, tok = smollm2
    again = probe_model(model, tok, load_examples("halueval", n=N_ROWS), cache_dir=cache, progress=False)
    assert again.meta["activation_cache"] == saved.meta["activation_cache"]  # came from the same cache
    assert np.array_equal(again.values, saved.values)
    assert np.array_equal(again.probe_weights, saved.probe_weights)


def test_summary_is_printed(probed, capsys, tmp_path):
    _, cache = probed
    out = tmp_path / "s.json"
    assert main(["probe", "--n", str(N_ROWS), "--out", str(out), "--cache-dir", str(cache), "--quiet", "--no-plot"]) == 0
    printed = capsys.readouterr().out
    assert "mean 0." in printed and "top-10 heads" in printed and "later half of the layers" in printed
    assert out.exists() and not out.with_suffix(".png").exists()


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _row(label: int, group: int, **extra) -> dict:
    return dict({"context": f"Box {group} holds {group} balls.", "question": "How many balls?",
                 "answer": str(group if label else group + 3), "label": label, "group": group}, **extra)


@pytest.fixture(scope="module")
def unknown_architecture_model(tmp_path_factory, smollm2):
    """A tiny random OPT checkpoint: transformers loads it, the architecture table does not know it."""
    from transformers import AutoModelForCausalLM, OPTConfig

    folder = tmp_path_factory.mktemp("opt")
    config = OPTConfig(vocab_size=len(smollm2[1]), hidden_size=16, ffn_dim=32, num_hidden_layers=2,
                       num_attention_heads=2, word_embed_proj_dim=16, max_position_embeddings=64)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    smollm2[1].save_pretrained(folder)
    return str(folder)


def _bad_inputs(tmp: Path, opt_folder: str) -> dict[str, tuple[list[str], str]]:
    good = [_row(1, g) for g in range(6)] + [_row(0, g) for g in range(6)]
    missing = good[:4] + [{k: v for k, v in _row(0, 9).items() if k != "answer"}] + good[4:]
    return {
        "empty": (["--data", _jsonl(tmp / "e.jsonl", good), "--offset", "12"], "found none"),
        "one class": (["--data", _jsonl(tmp / "o.jsonl", good[:6])], "found only truthful (1)"),
        "missing field": (["--data", _jsonl(tmp / "m.jsonl", missing)], "m.jsonl, line 5: missing field(s) answer"),
        "too few groups": (["--data", _jsonl(tmp / "g.jsonl", good[:3] + good[6:9]), "--folds", "5"], "5-fold cross-validation needs at least 5 groups"),
        "bad folds": (["--folds", "1"], "folds: expected an integer >= 2"),
        "no rows": (["--n", "0"], "n >= 1"),
        "condition on a text model": (["--n", "5", "--condition", "image"], "needs a multimodal model"),
        "unknown model path": (["--model", str(tmp / "no-such-model")], "model path not found"),
        "unknown architecture": (["--model", opt_folder, "--data", _jsonl(tmp / "ok.jsonl", good)], "no architecture entry for model_type 'opt'"),
    }


@pytest.mark.parametrize("case", ["empty", "one class", "missing field", "too few groups", "bad folds", "no rows",
                                  "condition on a text model", "unknown model path", "unknown architecture"])
def test_bad_input_gives_a_clear_error_and_writes_nothing(case, tmp_path, capsys, unknown_architecture_model):
    args, message = _bad_inputs(tmp_path, unknown_architecture_model)[case]
    out = tmp_path / "out" / "scores.json"
    rc = main(["probe", *args, "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "truthprobe probe: error: " in err and message in err, err
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no score file, no heatmap
    assert not any((tmp_path / "cache").glob("*/shard_*.npy"))  # and no activations computed


@pytest.mark.skipif(not os.environ.get("TRUTHPROBE_FULL_EVIDENCE"), reason="slow (minutes): set TRUTHPROBE_FULL_EVIDENCE=1")
def test_published_setting_292_rows_both_trainers(tmp_path, smollm2):
    """The published LLM setting: first 292 HaluEval rows; scores near 0.9 and the two trainers agree."""
    model, tok = smollm2
    examples = load_examples("halueval", n=292)
    cache = os.environ.get("TRUTHPROBE_EVIDENCE_CACHE", str(tmp_path / "cache"))
    exact = probe_model(model, tok, examples, trainer="exact", cache_dir=cache)
    published = probe_model(model, tok, examples, trainer="published", cache_dir=cache)
    diff = np.abs(exact.values - published.values)
    print(f"\nexact: {exact.summary()['mean']:.4f} mean, {exact.values.max():.4f} max; published: "
          f"{published.values.mean():.4f} mean, {published.values.max():.4f} max; mean |diff| {diff.mean():.4f}, "
          f"max |diff| {diff.max():.4f}; top-20 later-half share {exact.summary()['top20_share_later_half']:.2f}")
    assert exact.values.mean() > 0.8 and published.values.mean() > 0.8
    assert diff.mean() < 0.02
