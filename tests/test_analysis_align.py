"""truthprobe align: a planted rotation between two models' probes must be undone by the Procrustes step."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import ortho_group
from truthprobe_eval.probing.cache import ActivationCache, cached_extract
from truthprobe_eval.probing.data import ProbeExample

from truthprobe_eval.analysis import align
from truthprobe_eval.scores import TruthScores

L, H, D, N = 4, 3, 8, 160


@pytest.fixture()
def planted(tmp_path):
    """A's probes W_A; B's probes W_B = W_A @ Q for a random rotation Q; B's activations separate classes along
    W_B with a per-head strength, and B's Truth Scores follow that strength."""
    rng = np.random.default_rng(0)
    w_a = rng.normal(size=(L, H, D))
    Q = ortho_group.rvs(D, random_state=1)
    w_b = w_a @ Q
    strength = np.linspace(0.2, 2.0, L * H).reshape(L, H)
    rng.shuffle(strength.ravel())
    y = np.repeat([1, 0], N // 2)
    sign = np.where(y == 1, 1.0, -1.0)
    # B's normalized probe directions (what alignment targets): separation along them, unit noise elsewhere
    nb = align.normalize(w_b.reshape(-1, D)).reshape(L, H, D)
    X = rng.normal(size=(N, L, H, D)) + sign[:, None, None, None] * strength[None, :, :, None] * nb[None]
    scores_b = TruthScores(0.5 + strength / 4, meta={"model": "org/model-b"}, probe_weights=w_b)
    scores_a = TruthScores(0.5 + rng.random((L, H)) / 4, meta={"model": "org/model-a"}, probe_weights=w_a)

    examples = [ProbeExample(f"c{i}", f"q{i // 2}", f"a{i}", int(y[i]), i // 2) for i in range(N)]
    cache = ActivationCache.open(tmp_path / "cache", {"model": "org/model-b"}, examples, (L, H, D), float16=False,
                                 shard_size=64)
    cached_extract(cache, examples, lambda ex, bar: X[[int(e.context[1:]) for e in ex]].astype(np.float32), progress=False)
    scores_b.meta["activation_cache"] = str(cache.folder)
    scores_a.save(tmp_path / "a.json")
    scores_b.save(tmp_path / "b.json")
    return tmp_path, Q, X, y, scores_a, scores_b, strength


def test_procrustes_undoes_a_planted_rotation(planted):
    tmp_path, Q, X, y, scores_a, scores_b, strength = planted
    result = align.align(scores_a, scores_b, X, y)
    np.testing.assert_allclose(result.rotation, Q, atol=1e-5)  # probe weights are stored as float32
    np.testing.assert_allclose(result.cos_after, 1.0, atol=1e-6)
    assert abs(result.cos_before.mean()) < 0.3
    s = result.summary()
    assert s["after"]["mean_auroc"] > 0.85 and s["after"]["mean_auroc"] == pytest.approx(s["b_own"]["mean_auroc"])
    assert abs(s["before"]["mean_auroc"] - 0.5) < 0.15
    # after alignment the transferred probes are good exactly where B's heads carry signal
    assert s["after"]["spearman_vs_b_scores"] > 0.8 > abs(s["before"]["spearman_vs_b_scores"]) + 0.3
    # the re-paired control cannot recover the planted rotation
    assert s["shuffled_control"]["mean_cosine"] < 0.6 < s["after"]["mean_cosine"]


def test_auroc_matches_hand_count():
    # positives score 3, 1; negatives 2, 0: pairs (3>2, 3>0, 1<2, 1>0) -> 3 of 4
    assert align.auroc(np.array([[3.0], [1.0], [2.0], [0.0]]), np.array([1, 1, 0, 0]))[0] == pytest.approx(0.75)


def test_pairing_by_relative_depth():
    pair = align.pair_heads((8, 4), (4, 2))  # B layer l -> A layer round(l * 7 / 3); B head h -> A head 2h
    assert pair.reshape(4, 2).tolist() == [[0, 2], [2 * 4, 2 * 4 + 2], [5 * 4, 5 * 4 + 2], [7 * 4, 7 * 4 + 2]]


def test_missing_inputs_are_named(planted, tmp_path):
    root, *_ = planted
    np.save(tmp_path / "published.npy", np.random.default_rng(0).random((L, H)))
    with pytest.raises(align.AlignError, match="has no probe weights"):
        align.align_files(root / "a.json", tmp_path / "published.npy")
    no_cache = TruthScores.load(root / "b.json")
    no_cache.meta.pop("activation_cache")
    no_cache.save(tmp_path / "b_nocache.json")
    with pytest.raises(align.AlignError, match="records no activation cache"):
        align.align_files(root / "a.json", tmp_path / "b_nocache.json")
    with pytest.raises(align.AlignError, match="expected an activation cache folder"):
        align.align_files(root / "a.json", tmp_path / "b_nocache.json", activations_b=tmp_path / "empty")


def test_cli_align(planted):
    root, Q, *_ = planted
    out = root / "out"
    proc = subprocess.run([sys.executable, "-m", "truthprobe_eval", "align", str(root / "a.json"), str(root / "b.json"),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Procrustes-aligned | 1.000 |" in proc.stdout
    rot = np.array([[float(x) for x in row] for row in list(csv.reader(open(out / "rotation.csv")))[1:]])
    np.testing.assert_allclose(rot, Q, atol=1e-5)
    assert json.loads((out / "align_summary.json").read_text())["pairing"] == "position"
    assert len(list(csv.DictReader(open(out / "align_heads.csv")))) == L * H
