"""Score files: our JSON format, the published .npy and CSV formats, bad input, atomic writes."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from truthprobe_eval import ScoreFileError, ShapeMismatchError, TruthScores
from truthprobe_eval.cli import main


@pytest.fixture
def scores() -> TruthScores:
    rng = np.random.default_rng(0)
    values = rng.uniform(0.5, 1.0, size=(6, 4))
    return TruthScores(
        values,
        meta={"model": "tiny/base", "architecture": "llama", "head_dim": 8, "data": "halueval", "n_samples": 40},
        metrics={"precision": values * 0.9, "f1": values * 0.8},
        probe_weights=rng.normal(size=(6, 4, 8)),
        probe_bias=rng.normal(size=(6, 4)),
    )


def test_round_trip_keeps_values_metadata_and_extras(tmp_path, scores):
    path = scores.save(tmp_path / "s.json")
    loaded = TruthScores.load(path)
    np.testing.assert_array_equal(loaded.values, scores.values)
    np.testing.assert_array_equal(loaded.metrics["f1"], scores.metrics["f1"])
    np.testing.assert_array_equal(loaded.probe_weights, scores.probe_weights)
    np.testing.assert_array_equal(loaded.probe_bias, scores.probe_bias)
    assert loaded.meta["model"] == "tiny/base"
    assert loaded.meta["num_layers"] == 6 and loaded.meta["num_heads"] == 4
    assert loaded.meta["package_version"] and loaded.meta["created"]
    data = json.loads(path.read_text())
    assert data["format"] == "truthprobe-scores" and data["format_version"] == 1 and data["shape"] == [6, 4]


def test_published_npy(tmp_path):
    arr = np.random.default_rng(1).uniform(0.4, 0.99, size=(32, 32))
    np.save(tmp_path / "scores.npy", arr)
    loaded = TruthScores.load(tmp_path / "scores.npy", model="vicuna-7b")
    assert loaded.shape == (32, 32) and loaded.model == "vicuna-7b"
    np.testing.assert_array_equal(loaded.values, arr)


def test_published_csv(tmp_path):
    rows = ["layer,head,accuracy,precision,recall,f1"]
    expect = np.zeros((3, 2))
    for layer in range(3):
        for head in range(2):
            acc = 0.5 + 0.1 * layer + 0.01 * head
            expect[layer, head] = acc
            rows.append(f"{layer},{head},{acc},{acc - 0.05},{acc - 0.1},{acc - 0.02}")
    path = tmp_path / "cv5_head_metrics.csv"
    path.write_text("\n".join(rows[:1] + rows[:0:-1]) + "\n")  # any row order
    loaded = TruthScores.load(path)
    np.testing.assert_allclose(loaded.values, expect)
    np.testing.assert_allclose(loaded.metrics["recall"], expect - 0.1)
    assert loaded.top_k(1) == [(2, 1, pytest.approx(0.71))]


def test_published_csv_missing_head_and_columns(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("layer,head,accuracy,precision,recall,f1\n0,0,0.6,0.6,0.6,0.6\n1,1,0.7,0.7,0.7,0.7\n")
    with pytest.raises(ScoreFileError, match="expected all 2x2 heads, found 2 rows"):
        TruthScores.load(path)
    path.write_text("layer,head,acc\n0,0,0.5\n")
    with pytest.raises(ScoreFileError, match="expected columns layer, head, accuracy"):
        TruthScores.load(path)


@pytest.mark.parametrize(
    "values, message",
    [
        (np.array([[0.5, np.nan]]), "NaN/inf"),
        (np.array([[0.5, np.inf], [0.1, 0.2]]), "first at layer 0, head 1"),
        (np.zeros(5), "expected a non-empty 2-D array"),
        (np.zeros((2, 3, 4)), "found shape \\(2, 3, 4\\)"),
    ],
)
def test_bad_values_are_rejected(values, message):
    with pytest.raises(ScoreFileError, match=message):
        TruthScores(values)


def test_corrupt_and_truncated_files(tmp_path, scores):
    path = scores.save(tmp_path / "s.json")
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ScoreFileError, match="corrupt or truncated"):
        TruthScores.load(path)
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ScoreFileError, match="not a readable .npy"):
        TruthScores.load(tmp_path / "bad.npy")
    with pytest.raises(ScoreFileError, match="score file not found"):
        TruthScores.load(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(ScoreFileError, match="found format 'something-else'"):
        TruthScores.load(tmp_path / "other.json")
    data = json.loads(text)
    data["format_version"] = 99
    (tmp_path / "v99.json").write_text(json.dumps(data))
    with pytest.raises(ScoreFileError, match="expected format_version 1, found 99"):
        TruthScores.load(tmp_path / "v99.json")


def test_interrupted_write_leaves_the_old_file(tmp_path, scores, monkeypatch):
    path = scores.save(tmp_path / "s.json")
    before = path.read_bytes()
    newer = TruthScores(scores.values * 0.5, meta={"model": "newer"})

    def explode(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", explode)
    with pytest.raises(KeyboardInterrupt):
        newer.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"], "no temp file left behind"


def test_shape_mismatch_names_both_models_and_shapes(scores):
    with pytest.raises(ShapeMismatchError, match=r"tiny/base have shape \(6, 4\).*llava-tiny has \(3, 4\)"):
        scores.check_fits(3, 4, "llava-tiny")


def test_top_k_and_summary():
    values = np.full((4, 3), 0.5)
    values[3, 2], values[1, 0], values[2, 1] = 0.9, 0.8, 0.7
    s = TruthScores(values)
    assert [(l, h) for l, h, _ in s.top_k(3)] == [(3, 2), (1, 0), (2, 1)]
    summary = s.summary(k=3)
    assert summary["max"] == 0.9 and summary["min"] == 0.5
    assert list(s.layer_counts(3)) == [0, 1, 1, 1]


def test_scores_show_cli(tmp_path, scores, capsys):
    path = scores.save(tmp_path / "s.json")
    png = tmp_path / "heat.png"
    assert main(["scores", "show", str(path), "--top", "3", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    top = scores.top_k(3)[0]
    assert f"L{top[0]:<3d} H{top[1]:<3d} {top[2]:.4f}" in out
    assert "6 layers x 4 heads, head_dim 8" in out and "probe weights: (6, 4, 8)" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scores_show_cli_reports_bad_file(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{")
    assert main(["scores", "show", str(tmp_path / "x.json")]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
