"""``truthprobe ablate`` with the real SmolLM2 and the real lm-eval on a few rows: the probing regime probes N x
epochs from one extraction, the random-gate ablation and the grid collect lm-eval's own numbers, and rows that
overlap the probing rows are refused before any model loads."""
from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from truthprobe_eval.cli import main
from truthprobe_eval.experiments.ablations import AblationError, RandomAblationResult, check_rows_clear_of_probing
from truthprobe_eval.experiments.halueval_judge import Evaluation
from truthprobe_eval.scores import TruthScores


def _evaluation(name: str, **metrics) -> Evaluation:
    full = {"acc": 0.0, "f1": 0.0, "precision": 0.0, "recall": 0.0, "pred_yes_share": 0.0, "gold_yes_share": 0.0,
            "unparseable": 0, "margin_auroc": 0.5, **metrics}
    return Evaluation(name, "ablation", {}, full, (0, 1), 0.0, "", "")


def test_random_summary_is_mean_and_sample_std():
    result = RandomAblationResult({"method": "truthprobe", "alpha": 2.5}, "random", [0, 1, 2], _evaluation("b", f1=0.1),
                                  _evaluation("t", f1=0.5),
                                  [_evaluation("r0", f1=0.2), _evaluation("r1", f1=0.6), _evaluation("r2", f1=0.4)])
    f1 = result.summary()["f1"]
    assert f1["random_mean"] == pytest.approx(0.4) and f1["random_std"] == pytest.approx(0.2)
    assert f1["random_at_least_truthprobe"] == 1 and f1["truthprobe"] == 0.5 and f1["baseline"] == 0.1


def test_overlap_with_probing_rows_is_refused():
    scores = TruthScores(values=np.full((2, 2), 0.7), meta={"data": "halueval", "offset": 0, "n_rows": 292})
    check_rows_clear_of_probing(scores, 292, 10)
    with pytest.raises(AblationError, match=r"overlap the rows the scores were probed on \(0-291\); start at --offset 292"):
        check_rows_clear_of_probing(scores, 200, 100)


@pytest.fixture(scope="module")
def regime(tmp_path_factory):
    out = tmp_path_factory.mktemp("regime")
    rc = main(["ablate", "regime", "--sizes", "6,10", "--epochs", "5,20", "--folds", "3", "--offset", "10", "--n", "2",
               "--batch-size", "2", "--probe-batch-size", "4", "--out", str(out), "--quiet"])
    assert rc == 0
    return out


@pytest.mark.slow
def test_regime_probes_every_setting_and_evaluates_each_gate(regime):
    rows = list(csv.DictReader((regime / "ablation.csv").open()))
    assert [(int(r["rows"]), int(r["epochs"])) for r in rows] == [(6, 5), (6, 20), (10, 5), (10, 20)]
    reference = rows[-1]
    assert float(reference["pearson_vs_reference"]) == pytest.approx(1.0)
    assert float(reference["top20_jaccard_vs_reference"]) == 1.0
    for r in rows:
        scores = TruthScores.load(regime / "scores" / f"rows{r['rows']}_epochs{r['epochs']}.json")
        assert scores.meta["n_rows"] == int(r["rows"]) and scores.meta["epochs"] == int(r["epochs"])
        assert scores.meta["n_samples"] == 2 * int(r["rows"]) and scores.values.shape == (30, 9)
        assert float(r["mean_score"]) == pytest.approx(scores.values.mean())
        result = json.loads((regime / "lm_eval" / f"regime_rows{r['rows']}_epochs{r['epochs']}.json").read_text())
        assert float(r["val_f1"]) == result["results"]["halueval_truthprobe_seed0"]["f1,none"]
    assert (regime / "ablation.png").stat().st_size > 5000
    assert "Probing regime" in (regime / "ablation.md").read_text()


@pytest.mark.slow
def test_random_ablation_collects_lm_eval_results(regime, tmp_path):
    scores = regime / "scores" / "rows10_epochs20.json"
    assert main(["ablate", "random", "--set", f"scores={scores}", "--offset", "5", "--n", "2", "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "ablation.csv").exists()  # refused before any work
    out = tmp_path / "random"
    assert main(["ablate", "random", "--set", f"scores={scores}", "--set", "alpha=4.5", "--seeds", "0,1,2", "--offset", "10",
                 "--n", "2", "--batch-size", "2", "--out", str(out), "--quiet"]) == 0
    payload = json.loads((out / "ablation.json").read_text())
    assert (payload["task"], payload["protocol"], payload["offset"], payload["n"]) == (
        "halueval_truthprobe_seed0", "truthprobe", 10, 2)  # the result says how it was made

    def f1_of(name: str) -> float:
        return json.loads((out / "lm_eval" / f"{name}.json").read_text())["results"]["halueval_truthprobe_seed0"]["f1,none"]

    def acc_of(name: str) -> float:
        return json.loads((out / "lm_eval" / f"{name}.json").read_text())["results"]["halueval_truthprobe_seed0"]["acc,none"]

    names = [f"random_centered_4.5_seed{s}" for s in (0, 1, 2)]
    accs = [acc_of(n) for n in names]
    assert payload["summary"]["acc"]["random_mean"] == pytest.approx(np.mean(accs))
    assert payload["summary"]["acc"]["random_std"] == pytest.approx(statistics.stdev(accs))
    assert payload["summary"]["f1"]["truthprobe"] == f1_of("truthprobe_centered_4.5")
    assert payload["summary"]["f1"]["baseline"] == f1_of("baseline")
    gates = [r["intervention"] for r in payload["random"]]
    assert [g["gate"] for g in gates] == ["random"] * 3 and [g["seed"] for g in gates] == [0, 1, 2]
    assert (out / "ablation.png").stat().st_size > 5000
    # the logged per-sample 0/1 ("correct") makes the runs pairable by truthprobe significance
    assert main(["significance", str(out / "lm_eval" / "baseline.samples.jsonl"),
                 str(out / "lm_eval" / "truthprobe_centered_4.5.samples.jsonl"), "--out", str(out / "sig")]) == 0
    report = (out / "sig" / "significance.md").read_text()
    assert "correct" in report
    assert "baseline.samples.jsonl (baseline)" in report and "(TruthProbe (centered, alpha 4.5))" in report
    for name in ["baseline", "truthprobe_centered_4.5", *names]:
        samples = [json.loads(line) for line in (out / "lm_eval" / f"{name}.samples.jsonl").read_text().splitlines()]
        assert sorted(s["doc"]["row"] for s in samples) == [10, 11]
    # every intervention the ablation recorded rebuilds from its description, beside the file that recorded it
    from truthprobe_eval.interventions import from_description

    recorded = [(payload["intervention"], out), *((r["intervention"], out) for r in payload["random"])]
    recorded += [(json.loads(f.read_text())["config"]["intervention"], f.parent) for f in (out / "lm_eval").glob("*.json")]
    for d, beside in recorded:
        rebuilt = from_description(d, beside=beside).describe()
        assert {**rebuilt, "scores": d.get("scores")} == {**d, "scores": d.get("scores")}
        assert d.get("scores") is None or Path(beside, d["scores"]).resolve() == Path(scores).resolve()


@pytest.mark.slow
def test_grid_marks_the_validation_f1_winner(regime, tmp_path):
    scores = regime / "scores" / "rows10_epochs20.json"
    assert main(["ablate", "grid", "--set", f"scores={scores}", "--vary", "norm=centered", "--vary", "alpha=2.5,7.5",
                 "--offset", "10",
                 "--n", "2", "--batch-size", "2", "--out", str(tmp_path), "--quiet"]) == 0
    rows = list(csv.DictReader((tmp_path / "ablation.csv").open()))
    assert [r["method"] for r in rows] == ["baseline", "truthprobe", "truthprobe"]
    gated = rows[1:]
    chosen = [r for r in gated if r["chosen"] == "yes"]
    assert len(chosen) == 1
    best_f1 = max(float(r["f1"]) for r in gated)
    assert float(chosen[0]["f1"]) == best_f1
    tied = [r for r in gated if float(r["f1"]) == best_f1]
    assert float(chosen[0]["acc"]) == max(float(r["acc"]) for r in tied)
    payload = json.loads((tmp_path / "ablation.json").read_text())
    assert payload["task"] == "halueval_truthprobe_seed0"
    assert (payload["best"]["norm"], payload["best"]["alpha"]) == (chosen[0]["norm"], float(chosen[0]["alpha"]))
    assert Path(tmp_path / "ablation.png").stat().st_size > 5000


@pytest.fixture(scope="module")
def iti_file(tmp_path_factory):
    from truthprobe_eval.directions import ITIDirections

    rng = np.random.default_rng(0)
    unit = rng.standard_normal((30, 9, 64))
    unit /= np.linalg.norm(unit, axis=-1, keepdims=True)
    return str(ITIDirections(unit, np.full((30, 9), 2.0), rng.uniform(0.5, 1, (30, 9)), unit[::-1].copy(),
                             np.full((30, 9), 2.0), meta={"model": "synthetic"}).save(
        tmp_path_factory.mktemp("iti") / "iti.json"))


@pytest.mark.slow
def test_grid_and_random_ablations_take_any_method(iti_file, tmp_path):
    """ITI through the same ablations: a grid over alpha and K, and its random-heads control over seeds."""
    out = tmp_path / "grid"
    assert main(["ablate", "grid", "--method", "iti", "--set", f"directions={iti_file}", "--vary", "alpha=1,6",
                 "--vary", "k=4,8", "--offset", "10", "--n", "2", "--batch-size", "2", "--out", str(out), "--quiet"]) == 0
    payload = json.loads((out / "ablation.json").read_text())
    assert payload["varied"] == ["alpha", "k"] and len(payload["runs"]) == 4
    assert [(r["intervention"]["alpha"], r["intervention"]["k"]) for r in payload["runs"]] == [(1.0, 4), (1.0, 8),
                                                                                              (6.0, 4), (6.0, 8)]
    assert payload["best_intervention"]["method"] == "iti" and payload["baseline"]["intervention"]["identity"]
    assert [r["name"] for r in payload["runs"]] == ["val_00_iti_alpha1.0_k4", "val_01_iti_alpha1.0_k8",
                                                    "val_02_iti_alpha6.0_k4", "val_03_iti_alpha6.0_k8"]
    rows = list(csv.DictReader((out / "ablation.csv").open()))
    assert [r["method"] for r in rows] == ["baseline"] + ["iti"] * 4
    out = tmp_path / "random"
    assert main(["ablate", "random", "--method", "iti", "--set", f"directions={iti_file}", "--set", "k=8",
                 "--seeds", "0,1", "--offset", "10", "--n", "2", "--batch-size", "2", "--out", str(out), "--quiet"]) == 0
    payload = json.loads((out / "ablation.json").read_text())
    assert payload["control"] == "random_heads" and payload["intervention"]["method"] == "iti"
    heads = [r["intervention"]["heads"] for r in payload["random"]]
    assert heads[0] != heads[1] != payload["method"]["intervention"]["heads"]
    assert main(["ablate", "random", "--method", "iti", "--set", f"directions={iti_file}", "--control", "shuffled",
                 "--out", str(out)]) == 2  # a control the method does not have: refused before the model loads


def test_grid_points_come_from_the_method_class():
    """No --vary: the method's own published grid (TruthProbe's seven points); a method without one must say what
    to vary."""
    import argparse

    from truthprobe_eval.commands.ablate import _grid_points
    from truthprobe_eval.interventions import TruthProbeGate

    points = _grid_points(argparse.Namespace(vary=[], method="truthprobe"))
    assert points == [dict(p) for p in TruthProbeGate.selection_grid] and len(points) == 7
    assert _grid_points(argparse.Namespace(vary=[("alpha", "1,2"), ("k", "8")], method="iti")) == [
        {"alpha": "1", "k": "8"}, {"alpha": "2", "k": "8"}]
    with pytest.raises(argparse.ArgumentTypeError, match="method 'neurons' declares no grid of its own"):
        _grid_points(argparse.Namespace(vary=[], method="neurons"))
