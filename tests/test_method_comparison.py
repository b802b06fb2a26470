"""`truthprobe compare-methods` end to end on the real SmolLM2 (tiny sizes), its statistics, and the pieces it
reads: TruthfulQA question subsets, paired tests of per-item scores, the leaderboard files it writes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from truthprobe_eval import TruthScores
from truthprobe_eval.paired_stats import compare_scores


def test_compare_scores_uses_the_libraries_tests():
    from scipy import stats
    from statsmodels.stats.contingency_tables import mcnemar

    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 60).astype(float)
    b = a.copy()
    b[:12] = 1.0
    st = compare_scores(a, b, binary=True)
    table = [[int(np.sum((a == 1) & (b == 1))), int(np.sum((a == 1) & (b == 0)))],
             [int(np.sum((a == 0) & (b == 1))), int(np.sum((a == 0) & (b == 0)))]]
    assert st["p"] == pytest.approx(mcnemar(table, exact=True).pvalue)
    assert st["delta"] == pytest.approx(b.mean() - a.mean()) and st["delta_ci"][0] <= st["delta"] <= st["delta_ci"][1]
    x, y = rng.uniform(size=40), rng.uniform(size=40)
    cont = compare_scores(x, y)
    assert cont["p"] == pytest.approx(stats.wilcoxon(y, x).pvalue) and cont["delta_ci"][0] < cont["delta_ci"][1]
    assert compare_scores(x, x)["p"] == 1.0 and compare_scores(x, x)["delta_ci"] == [0.0, 0.0]


def test_truthfulqa_question_subsets(shared_dir):
    from truthprobe_eval.probing.iti import question_halves
    from truthprobe_eval.tasks.truthfulqa.utils import TruthfulQADataError, load_mc

    csv = str(shared_dir / "data" / "truthfulqa" / "TruthfulQA.csv")
    docs = load_mc(csv, truthfulqa_rows=[3, 1, 700])["validation"]
    assert [d["row"] for d in docs] == [3, 1, 700]
    assert [d["row"] for d in load_mc(csv, truthfulqa_rows="10-12")["validation"]] == [10, 11, 12]
    with pytest.raises(TruthfulQADataError, match="truthfulqa_rows: expected indices 0 to 812"):
        load_mc(csv, truthfulqa_rows=[5000])
    a, b = question_halves(813, seed=0, limit=100)
    assert len(a) == len(b) == 50 and not set(a) & set(b)
    assert question_halves(813, seed=0, limit=100) == (a, b) and question_halves(813, seed=1, limit=100) != (a, b)


@pytest.mark.slow
def test_compare_methods_end_to_end(shared_dir, tmp_path, capsys, monkeypatch):
    from truthprobe_eval.analysis import leaderboard as lb
    from truthprobe_eval.cli import main

    scores = TruthScores(np.random.default_rng(2).uniform(0.45, 0.95, (30, 9)),
                         meta={"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}).save(tmp_path / "scores.json")
    out = tmp_path / "cmp"
    monkeypatch.setenv("TRUTHPROBE_TRUTHFULQA_CSV", str(shared_dir / "data" / "truthfulqa" / "TruthfulQA.csv"))
    assert main(["compare-methods", "--out", str(out), "--questions", "6", "--halueval-rows", "3", "--neutral-texts",
                 "2", "--set", f"truthprobe.scores={scores}", "--set", "truthprobe.alpha=0.2",
                 "--set", "truthprobe.norm=minmax", "--set", "iti.k=16", "--set", "iti.alpha=5", "--set", "iti.folds=2",
                 "--set", "neurons.steps=2", "--set", "neurons.p_threshold=0.3", "--set", "rve.rows=3",
                 "--set", "rve.layers=5-9", "--no-controls", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert main(["compare-methods", "--out", str(out), "--questions", "6"]) == 2  # before any model loads
    assert "halves of 3, fewer than the 4 folds" in capsys.readouterr().err
    assert main(["compare-methods", "--out", str(out), "--set", "iti.kk=3"]) == 2
    assert "method 'iti': unknown setting(s) kk" in capsys.readouterr().err
    result = json.loads((out / "comparison.json").read_text())
    names = [r["name"] for r in result["runs"]]
    from truthprobe_eval.interventions import methods as registered

    assert names == ["baseline", *registered()]  # every registered method, in the registry's order
    halves = result["halves"]
    assert len(halves[0]) == len(halves[1]) == 3 and not set(halves[0]) & set(halves[1])
    for run in result["runs"]:
        assert run["truthfulqa"]["rows"] == sorted(halves[0] + halves[1])
        assert run["halueval"]["rows"] == [342, 345]
        if run["name"] != "baseline":
            assert set(run["stats"]) == {"halueval", "mc1", "mc2"}
    iti = next(r for r in result["runs"] if r["name"] == "iti")
    # each half evaluated with the directions fit on the other half
    for i, described in enumerate(iti["interventions"]):
        fit = json.loads((out / f"iti_half{i}.json").read_text())["meta"]
        assert described["directions"].endswith(f"iti_half{i}.json") and sorted(fit["questions"]) == halves[1 - i]
    assert iti["interventions"][0]["k"] == 16 and iti["neutral"]["kl"] > 0
    neurons = next(r for r in result["runs"] if r["name"] == "neurons")
    for i, described in enumerate(neurons["interventions"]):
        found = json.loads((out / f"neurons_half{i}.json").read_text())["meta"]
        assert sorted(found["questions"]) == halves[1 - i] and found["steps"] == 2 and found["p_threshold"] == 0.3
        assert described["method"] == "neurons" and described["n_neurons"] == found["n_selected"]
        assert (out / f"neurons_half{i}.png").stat().st_size > 1000
    overlap = [n for n in result["notes"] if n["method"] == "neurons"]
    assert len(overlap) == 2 and len(overlap[0]["neuron_layer_counts"]) == 30 and 0 <= overlap[0]["jaccard"] <= 1
    assert result["runs"][0]["neutral"]["kl"] == pytest.approx(0.0, abs=1e-6)
    table = (out / "comparison.md").read_text()
    assert "| ITI |" in table and "TruthfulQA MC2" in table and table in printed
    assert (out / "comparison.png").stat().st_size > 1000
    entries, _ = lb.collect([out / "leaderboard"])
    methods = {e.method for e in entries}
    assert methods == {lb.VANILLA, lb.TP_OWN, *(cls.title for name, cls in registered().items() if name != "truthprobe")}
    rve = next(r for r in result["runs"] if r["name"] == "rve")
    ars = json.loads((out / "ars.json").read_text())["meta"]
    assert ars["kind"] == "ars" and ars["n_pairs"] == 3 and rve["interventions"][0]["layers"] == "5-9"
    assert rve["interventions"][0]["span"] == "context" and rve["interventions"][0]["k"] == 2  # the model's defaults
    for name, cls in registered().items():  # a method fit on TruthfulQA: each half's file from the other half
        if cls.fit_data == "truthfulqa":
            run = next(r for r in result["runs"] if r["name"] == name)
            for i, described in enumerate(run["interventions"]):
                fit = json.loads((out / f"{cls.artifact_stem}_half{i}.json").read_text())["meta"]
                assert described[cls.artifact].endswith(f"{cls.artifact_stem}_half{i}.json")
                assert sorted(fit["questions"]) == halves[1 - i]
    assert rve["truthfulqa"]["mc2"] == pytest.approx(result["runs"][0]["truthfulqa"]["mc2"], abs=1e-4)  # no span: no-op
    assert "Truth neurons (file 0" in table
    # every run's recorded intervention rebuilds from its description (files checked by their hash)
    from truthprobe_eval.interventions import from_description

    from truthprobe_eval.interventions import method_class

    for run in result["runs"]:
        for d in run["interventions"]:
            key = method_class(d["method"]).artifact
            rebuilt = from_description(d, beside=out).describe()
            assert {**rebuilt, **({key: d[key]} if key else {})} == d  # the same, the file found beside the result
            assert not key or not d[key] or not Path(d[key]).is_absolute()  # written relative to the result


def test_the_runs_and_their_controls(tmp_path):
    """With controls: every method's controls and the papers' ablations, each with a name that says what it is."""
    from truthprobe_eval.directions import ITIDirections
    from truthprobe_eval.experiments.method_comparison import (ComparisonConfig, ComparisonError, _interventions,
                                                               run_labels)
    from truthprobe_eval.neuron_scores import select_neurons

    rng = np.random.default_rng(0)
    unit = rng.standard_normal((30, 9, 64))
    unit /= np.linalg.norm(unit, axis=-1, keepdims=True)
    files = [str(ITIDirections(unit, np.ones((30, 9)), rng.uniform(size=(30, 9)), unit, np.ones((30, 9)),
                               meta={"model": "m"}).save(tmp_path / f"d{i}.json")) for i in (0, 1)]
    neurons = [str(select_neurons(rng.normal(0.1, 1, (6, 30, 20)), meta={"model": "m"}).save(tmp_path / f"n{i}.json"))
               for i in (0, 1)]
    ars = str(TruthScores(rng.uniform(size=(30, 9)), meta={"model": "m", "kind": "ars"}).save(tmp_path / "ars.json"))
    scores = str(TruthScores(np.full((30, 9), 0.6), meta={"model": "m"}).save(tmp_path / "s.json"))
    fitted = {"truthprobe": [scores, scores], "iti": files, "neurons": neurons, "rve": [ars, ars]}
    settings = {"truthprobe": {}, "iti": {}, "neurons": {}, "rve": {"span": "context", "k": 2, "layers": "13-17"}}
    runs = _interventions(ComparisonConfig(methods=tuple(fitted)), fitted, settings)
    assert list(runs) == ["baseline", "truthprobe", "truthprobe_random", "truthprobe_shuffled",
                          "truthprobe_paper_random", "truthprobe_paper_inverse", "iti",
                          "iti_random_heads", "iti_random_directions", "neurons", "neurons_random", "rve",
                          "rve_random_heads", "rve_sensitive", "rve_no_denoise", "rve_global"]
    assert runs["rve_global"][0].settings["variant"] == "whole_span" and runs["rve_global"][0].settings["ars"] is None
    assert runs["rve_sensitive"][0].settings["heads"] == "sensitive" and runs["rve_no_denoise"][0].settings["denoise"] is False
    assert runs["truthprobe_paper_random"][0].settings["gate"] == "paper_random"
    assert set(runs) <= set(run_labels())   # every run, controls included, has a name that says what it is
    assert runs["rve_random_heads"][1].settings["control"] == "random_heads" and runs["rve"][0].settings["layers"] == "13-17"
    assert [m.settings["neurons"] for m in runs["neurons_random"]] == neurons
    assert runs["neurons_random"][0].settings["control"] == "random" and runs["neurons"][0].settings["factor"] == 0
    assert runs["truthprobe"][0] is runs["truthprobe"][1]  # one file for both halves: one intervention
    only = _interventions(ComparisonConfig(methods=("neurons",), controls=False), fitted, settings)
    assert list(only) == ["baseline", "neurons"]
    with pytest.raises(ComparisonError, match="methods: expected some of truthprobe, iti, neurons, rve"):
        ComparisonConfig(methods=("rome",)).check()
    with pytest.raises(ComparisonError, match="neurons settings: control is set by the comparison"):
        ComparisonConfig(settings={"neurons": {"control": "random"}}).check()
    with pytest.raises(Exception, match="unknown setting\\(s\\) step; expected settings"):
        ComparisonConfig(settings={"neurons": {"step": 3}}).check()
    with pytest.raises(ComparisonError, match="inside the rows 0-291 that TruthProbe's fit reads"):
        ComparisonConfig(halueval_offset=100).check()
    ComparisonConfig(halueval_offset=300, settings={"truthprobe": {"scores": scores}}, methods=("truthprobe",)).check()
    assert [m.settings["directions"] for m in runs["iti_random_heads"]] == files
    assert runs["truthprobe_shuffled"][0].settings["gate"] == "shuffled"
    assert runs["iti_random_directions"][1].settings["control"] == "random_directions"
    assert all(m.identity for m in runs["baseline"])
