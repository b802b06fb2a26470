"""truthprobe compare: planted correlations, planted top-k overlap, published formats, shape mismatches."""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from truthprobe_eval.analysis import compare as cmp
from truthprobe_eval.scores import TruthScores

L, H = 12, 8


def _with_correlation(a: np.ndarray, rho: float, seed: int) -> np.ndarray:
    """A map whose Pearson correlation with ``a`` is exactly ``rho`` (noise orthogonalized against ``a``)."""
    x = a.ravel() - a.mean()
    x /= np.linalg.norm(x)
    e = np.random.default_rng(seed).normal(size=x.size)
    e -= e.mean()
    e -= (e @ x) * x
    e /= np.linalg.norm(e)
    return (0.7 + 0.1 * (rho * x + np.sqrt(1 - rho**2) * e)).reshape(a.shape)


@pytest.fixture()
def base() -> np.ndarray:
    return 0.7 + 0.1 * np.random.default_rng(0).normal(size=(L, H))


def test_planted_correlations(base):
    b = _with_correlation(base, 0.6, seed=1)
    entries = cmp.load_entries([TruthScores(base), TruthScores(b), TruthScores(1.4 - base), TruthScores(np.exp(8 * base))],
                               labels=["a", "b", "neg", "mono"])
    res = cmp.compare(entries, ks=(10,), n_bands=3)
    (g,) = res.groups
    assert g.labels == ["a", "b", "neg", "mono"]
    assert g.pearson[0, 1] == pytest.approx(0.6, abs=1e-9)
    assert g.pearson[0, 2] == pytest.approx(-1.0, abs=1e-9)
    assert g.spearman[0, 2] == pytest.approx(-1.0, abs=1e-9)
    # a monotone transform keeps the ranks: Spearman exactly 1, Pearson below 1, same top-k heads
    assert g.spearman[0, 3] == pytest.approx(1.0, abs=1e-12)
    assert g.pearson[0, 3] < 0.99
    assert g.jaccard[10][0, 3] == 1.0
    assert g.jaccard[10][0, 2] == 0.0  # the negated map's top heads are the original's bottom heads
    np.testing.assert_allclose(np.diag(g.pearson), 1.0)
    assert g.pearson_p[0, 1] < 1e-8  # 96 heads at r = 0.6
    assert res.not_comparable == []


def test_planted_top_k_overlap_and_layer_bands():
    a = np.full((L, H), 0.5)
    b = np.full((L, H), 0.5)
    # a's top-10: layer 11 (8 heads) + layer 10 heads 0-1; b shares layer 11's heads 0-4 and adds 5 heads of layer 0
    a[11, :] = 0.9
    a[10, :2] = 0.8
    b[11, :5] = 0.9
    b[0, :5] = 0.8
    res = cmp.compare(cmp.load_entries([TruthScores(a), TruthScores(b)], ["a", "b"]), ks=(10, 200), n_bands=3)
    (g,) = res.groups
    assert g.jaccard[10][0, 1] == pytest.approx(5 / 15)  # |A n B| = 5, |A u B| = 15
    assert g.skipped_ks == [200] and 200 not in g.jaccard
    assert any("k = [200] skipped" in n for n in res.notes)
    assert res.bands == [(0, 3), (4, 7), (8, 11)]
    np.testing.assert_allclose(res.band_shares["a"][10], [0, 0, 1])
    np.testing.assert_allclose(res.band_shares["b"][10], [0.5, 0, 0.5])


def test_published_formats_and_not_comparable(tmp_path, base):
    np.save(tmp_path / "llm.npy", base)
    with open(tmp_path / "cv5_head_metrics.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["layer", "head", "accuracy", "precision", "recall", "f1"])
        for l in range(L):
            for h in range(H):
                w.writerow([l, h, base[l, h], 0.5, 0.5, 0.5])
    ours = tmp_path / "mllm.json"
    TruthScores(_with_correlation(base, 0.8, seed=3), meta={"model": "org/tiny-mllm"}).save(ours)
    other = tmp_path / "other_family.npy"
    np.save(other, np.random.default_rng(5).random((6, 4)))

    entries = cmp.load_entries([tmp_path / "llm.npy", tmp_path / "cv5_head_metrics.csv", ours, other])
    assert [e.label for e in entries] == ["llm", "cv5_head_metrics", "tiny-mllm", "other_family"]
    res = cmp.compare(entries, ks=(10, 20))
    (g,) = res.groups
    assert g.pearson[0, 1] == pytest.approx(1.0, abs=1e-12)
    assert g.pearson[0, 2] == pytest.approx(0.8, abs=1e-6)
    nc = {lab: others for lab, _, others in res.not_comparable}
    assert nc["other_family"] == ["llm", "cv5_head_metrics", "tiny-mllm"]
    assert nc["llm"] == ["other_family"]

    written = cmp.write_outputs(res, tmp_path / "out")
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "## Not comparable" in md and "other_family | 6x4 |" in md
    files = list(csv.DictReader(open(tmp_path / "out" / "files.csv")))
    assert files[3]["not_comparable_with"] == "llm;cv5_head_metrics;tiny-mllm"
    pairs = list(csv.DictReader(open(tmp_path / "out" / "pairs.csv")))
    assert len(pairs) == 3 and all(p["shape"] == "12x8" for p in pairs)
    assert float(pairs[1]["pearson"]) == pytest.approx(0.8, abs=1e-6)  # llm vs tiny-mllm
    from PIL import Image

    for key in ("heatmaps", "correlation"):
        with Image.open(written[key]) as im:
            assert im.format == "PNG" and im.size[0] > 200


def test_constant_map_is_reported_not_crashing(base):
    res = cmp.compare(cmp.load_entries([TruthScores(base), TruthScores(np.full((L, H), 0.5))], ["a", "flat"]), ks=(10,))
    assert np.isnan(res.groups[0].pearson[0, 1])
    assert any("flat: all scores are equal" in n for n in res.notes)
    assert "n/a" in cmp.to_markdown(res)


def test_cli_compare(tmp_path, base):
    a, b, c = tmp_path / "a.json", tmp_path / "b.npy", tmp_path / "c.npy"
    TruthScores(base, meta={"model": "base-llm"}).save(a)
    np.save(b, _with_correlation(base, 0.5, seed=9))
    np.save(c, np.random.default_rng(2).random((3, 3)))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "truthprobe_eval", "compare", str(a), str(b), str(c), "--out", str(out),
                           "--k", "5", "10", "--bands", "4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| base-llm | b | 12x8 | 0.5000 |" in proc.stdout
    for name in ("compare.md", "pairs.csv", "pearson_12x8.csv", "spearman_12x8.csv", "jaccard_top5_12x8.csv",
                 "layer_bands.csv", "files.csv", "heatmaps.png", "correlation.png"):
        assert (out / name).is_file(), name
    rows = list(csv.reader(open(out / "pearson_12x8.csv")))
    assert rows[0] == ["", "base-llm", "b"] and float(rows[1][2]) == pytest.approx(0.5, abs=1e-6)
    assert "c | 3x3 | base-llm, b" in (out / "compare.md").read_text()

    bad = subprocess.run([sys.executable, "-m", "truthprobe_eval", "compare", str(a), str(tmp_path / "missing.npy"),
                          "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "score file not found" in bad.stderr
