"""``truthprobe run`` on tiny sizes with the real SmolLM2: probing, validation and test rows never overlap, the gate
is the validation-F1 winner, controls and several answer draws run on one loaded model, the paired statistics are
statsmodels' and scipy's on the written per-sample files, and every output is written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from truthprobe_eval import TruthProbeError
from truthprobe_eval.cli import main
from truthprobe_eval.experiments.halueval_judge import per_sample
from truthprobe_eval.experiments.main_job import (
    Evaluation,
    MainJobConfig,
    MainJobResult,
    SeedResult,
    format_table,
    run_main_job,
    select_best,
)


def _evaluation(name: str, gate: dict, f1: float, acc: float) -> Evaluation:
    """An evaluation record as the judge writes it: the intervention's own description."""
    from truthprobe_eval.interventions import build

    metrics = {"acc": acc, "f1": f1, "precision": 0.0, "recall": 0.0, "pred_yes_share": 0.0, "gold_yes_share": 0.5,
               "unparseable": 0, "margin_auroc": 0.5}
    described = build("truthprobe", scores=np.full((2, 2), 0.5), **gate).describe()
    return Evaluation(name, "validation", described, metrics, (0, 1), 0.0, "", "")


def test_select_best_is_the_highest_validation_f1_then_accuracy():
    runs = [_evaluation("b", {"gate": "none"}, 0.9, 0.9),  # the baseline is never "selected"
            _evaluation("c2.5", {"gate": "truthprobe", "norm": "centered", "alpha": 2.5}, 0.4, 0.5),
            _evaluation("c4.5", {"gate": "truthprobe", "norm": "centered", "alpha": 4.5}, 0.6, 0.5),
            _evaluation("m0.1", {"gate": "truthprobe", "norm": "minmax", "alpha": 0.1}, 0.6, 0.7),
            _evaluation("m0.2", {"gate": "truthprobe", "norm": "minmax", "alpha": 0.2}, 0.6, 0.7)]
    assert select_best(runs).name == "m0.1"


@pytest.mark.parametrize("kwargs, message", [
    ({"probe_rows": 9000, "val_rows": 900, "test_rows": 200}, "rows: probe 9000 \\+ validation 900 \\+ test 200 = 10100, but the data has 10000 rows"),
    ({"draw_seeds": (3,)}, "draw seeds: expected distinct seeds among 0, 1, 2"),
    ({"draw_seeds": (0, 0)}, "draw seeds: expected distinct seeds"),
    ({"protocol": "lmms"}, "protocol: expected one of truthprobe, halueval, found 'lmms'"),
    ({"test_rows": 1}, "test rows: expected an integer >= 2"),
    ({"grid": (("centred", 2.5),)}, "norm: expected one of centered, minmax, raw, found 'centred'"),
    ({"val_rows": 0}, "validation rows: 0 leaves nothing to choose among 7 gate settings"),
])
def test_bad_settings_fail_before_any_model_work(kwargs, message, tmp_path):
    with pytest.raises(TruthProbeError, match=message):
        run_main_job(MainJobConfig(model="/no/such/model", out=str(tmp_path), **kwargs))


@pytest.mark.parametrize("argv, message", [
    (["--norm", "centered"], "--norm and --alpha go together"),
    (["--seeds", "0,1", "--draw-seed", "1"], "--draw-seed and --seeds: give one of them"),
])
def test_cli_flag_errors(argv, message, tmp_path, capsys):
    assert main(["run", *argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_cli_rejects_bad_seed_lists(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["run", "--seeds", "0,5", "--out", str(tmp_path)])
    assert "expected distinct draw seeds among 0, 1, 2" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = MainJobConfig(out=str(out), probe_rows=12, val_rows=4, test_rows=6, folds=3, batch_size=3,
                        grid=(("centered", 2.5), ("minmax", 0.3)), draw_seeds=(0, 1), preset="ours",
                        controls=("paper_random", "shuffled"), progress=False)
    lines: list[str] = []
    return run_main_job(cfg, log=lines.append), out, lines


def _rows(evaluation) -> set[int]:
    samples = [json.loads(line) for line in Path(evaluation.samples_file).read_text().splitlines()]
    return {s["doc"]["row"] for s in samples}


@pytest.mark.slow
def test_rows_are_disjoint_and_outputs_written(tiny_run):
    result, out, lines = tiny_run
    for name in ("scores.png", "results.png"):
        assert (out / name).stat().st_size > 1000
    scores_meta = json.loads((out / "scores.json").read_text())["meta"]
    assert scores_meta["n_samples"] == 24 and scores_meta["offset"] == 0  # rows 0-11, two answers each
    val = set().union(*(_rows(e) for e in result.validation))
    assert val == {12, 13, 14, 15}
    assert [e.name for e in result.validation] == ["val_baseline", "val_centered_2.5", "val_minmax_0.3"]
    assert [s.draw_seed for s in result.seeds] == [0, 1]
    for s in result.seeds:
        runs = [s.baseline, s.gated, *s.controls.values()]
        assert all(_rows(e) == set(range(16, 22)) for e in runs)
        assert set(s.controls) == {"paper_random_s0", "paper_random_s1", "paper_random_s2", "shuffled"}
        task = f"halueval_truthprobe_seed{s.draw_seed}"
        for e in runs:
            assert json.loads(Path(e.result_file).read_text())["results"][task]["f1,none"] == e.metrics["f1"]
    # lm-eval's environment record, gathered once per process (simple_evaluate_here), is in every result alike
    records = [json.loads(f.read_text()) for f in sorted((out / "lm_eval").glob("*.json"))]
    assert len(records) >= 10 and records[0]["pretty_env_info"] and records[0]["transformers_version"]
    assert all(r["pretty_env_info"] == records[0]["pretty_env_info"] for r in records)
    assert any(line.startswith("probing (ours preset): HaluEval rows 0-11 (24 answers)") for line in lines)
    assert scores_meta["preset"] == "ours" and scores_meta["examples"][:2] == [[0, "right"], [0, "hallucinated"]]


@pytest.mark.slow
def test_selected_gate_controls_and_draws(tiny_run):
    result, out, _ = tiny_run
    best = select_best(result.validation)
    assert result.selected["norm"] == best.intervention["norm"] and result.selected["alpha"] == best.intervention["alpha"]
    for s in result.seeds:
        assert s.gated.intervention["gate"] == "truthprobe" and s.gated.intervention["alpha"] == result.selected["alpha"]
        assert s.baseline.intervention["identity"]
        for name, control in s.controls.items():
            assert control.intervention["gate"] == name.split("_s")[0] if name.startswith("paper") else name
            assert control.intervention["alpha"] == result.selected["alpha"]
            assert control.intervention["norm"] == result.selected["norm"]
        assert [s.controls[f"paper_random_s{i}"].intervention["seed"] for i in range(3)] == [0, 1, 2]
        # the paper's random gate redraws at every call: its three seeds give three different runs' margins
        margins = [per_sample(s.controls[f"paper_random_s{i}"].samples_file)["margin"] for i in range(3)]
        assert not np.allclose(margins[0], margins[1])
    docs = {s.draw_seed: [json.loads(x)["doc"]["answer"] for x in Path(s.baseline.samples_file).read_text().splitlines()]
            for s in result.seeds}
    assert docs[0] != docs[1]  # two answer draws, not the same rows twice
    saved = json.loads((out / "results.json").read_text())
    over = saved["over_seeds"]["delta"]["f1"]
    deltas = [s.gated.metrics["f1"] - s.baseline.metrics["f1"] for s in result.seeds]
    assert over["mean"] == pytest.approx(np.mean(deltas)) and over["std"] == pytest.approx(np.std(deltas))
    assert set(saved["stage_seconds"]) >= {"load", "probe", "validation", "test_seed0", "controls_seed1", "total"}
    assert (out / "results.md").read_text() == format_table(result)
    from truthprobe_eval.interventions import from_description

    rebuilt = from_description(saved["selected"]["intervention"], beside=out)  # the result names its score file
    assert {**rebuilt.describe(), "scores": "scores.json"} == saved["selected"]["intervention"]
    assert saved["selected"]["intervention"]["scores"] == "scores.json"  # relative to the result, beside it


@pytest.mark.slow
def test_statistics_are_the_libraries_on_the_sample_files(tiny_run):
    from sklearn.metrics import f1_score, roc_auc_score
    from statsmodels.stats.contingency_tables import mcnemar

    result, _, _ = tiny_run
    for s in result.seeds:
        base, gated = per_sample(s.baseline.samples_file), per_sample(s.gated.samples_file)
        assert base["correct"] == pytest.approx((base["gold_yes"] == base["pred_yes"]).astype(float))
        b, g = base["correct"].astype(bool), gated["correct"].astype(bool)
        table = [[np.sum(b & g), np.sum(b & ~g)], [np.sum(~b & g), np.sum(~b & ~g)]]
        st = s.stats["gated"]
        assert st["mcnemar_p"] == pytest.approx(mcnemar(table, exact=True).pvalue)
        assert st["acc_delta"] == pytest.approx(g.mean() - b.mean())
        assert st["f1_delta"] == pytest.approx(f1_score(gated["gold_yes"], gated["pred_yes"], zero_division=0)
                                               - f1_score(base["gold_yes"], base["pred_yes"], zero_division=0))
        assert st["acc_delta_ci"][0] <= st["acc_delta"] <= st["acc_delta_ci"][1]
        assert np.isfinite(base["margin"]).all() and np.isfinite(gated["margin"]).all()
        if 0 < base["gold_yes"].sum() < len(base["gold_yes"]):
            assert st["auroc_baseline"] == pytest.approx(roc_auc_score(base["gold_yes"], base["margin"]))
        controls = {"paper_random_s0", "paper_random_s1", "paper_random_s2", "shuffled"}
        assert set(s.stats) == {"gated", *controls, *(f"gated_vs_{c}" for c in controls)}
        for c in controls:   # TruthProbe against each control: the same paired test, the control as the reference
            assert s.stats[f"gated_vs_{c}"]["acc_delta"] == pytest.approx(s.gated.metrics["acc"] - s.controls[c].metrics["acc"])
        # the binomial form of the exact McNemar test, as a second opinion
        n = st["only_gated_right"] + st["only_baseline_right"]
        if n:
            assert st["mcnemar_p"] == pytest.approx(stats.binomtest(st["only_gated_right"], n, 0.5).pvalue)


@pytest.mark.slow
def test_paper_preset_probes_and_parses_as_published(tmp_path):
    cfg = MainJobConfig(out=str(tmp_path), probe_rows=15, val_rows=0, test_rows=2, folds=3, batch_size=2,
                        grid=(("centered", 4.5),), progress=False)
    assert cfg.preset == "paper"
    result = run_main_job(cfg, log=lambda _line: None)
    meta = json.loads((tmp_path / "scores.json").read_text())["meta"]
    assert (meta["preset"], meta["trainer"], meta["fold_rule"], meta["n_samples"], meta["batch_size"]) == \
        ("paper", "paper", "kfold", 15, 1)
    assert [row for row, _ in meta["examples"]] == list(range(15))
    assert result.config["parse"] == "paper" and result.config["probing"]["answers"] == "drawn"
    docs = [json.loads(x)["doc"] for x in Path(result.gated.samples_file).read_text().splitlines()]
    assert {d["parse"] for d in docs} == {"paper"}
    assert "preset paper" in format_table(result)


@pytest.mark.slow
def test_halueval_protocol_still_runs(tmp_path):
    cfg = MainJobConfig(out=str(tmp_path), protocol="halueval", probe_rows=12, val_rows=0, test_rows=2, folds=3,
                        batch_size=2, grid=(("minmax", 0.3),), preset="ours", progress=False)
    result = run_main_job(cfg, log=lambda _line: None)
    assert result.config["task"] == "halueval_qa_seed0"
    assert result.selected["by"] == "given" and not result.validation
    assert json.loads(Path(result.gated.result_file).read_text())["results"]["halueval_qa_seed0"]["acc,none"] == \
        result.gated.metrics["acc"]


@pytest.mark.parametrize("gated_f1, note", [(0.0, True), (0.3, False)])
def test_table_says_when_no_gate_beat_the_baseline(gated_f1, note):
    val = [_evaluation("val_baseline", {"gate": "none"}, 0.0, 0.5),
           _evaluation("val_centered_2.5", {"gate": "truthprobe", "norm": "centered", "alpha": 2.5}, gated_f1, 0.5)]
    stats_row = {"acc_delta": 0.0, "acc_delta_ci": [-0.1, 0.1], "f1_delta": gated_f1, "f1_delta_ci": [0.0, 0.5],
                 "mcnemar_p": 1.0, "only_baseline_right": 0, "only_gated_right": 0}
    seed = SeedResult(0, val[0], val[1], stats={"gated": stats_row})
    result = MainJobResult(config={"model": "m", "protocol": "truthprobe", "probe_rows": 10, "draw_seeds": [0],
                                   "val_offset": 10, "test_offset": 20}, scores_file="", heatmap_file=None,
                           validation=val, selected={"norm": "centered", "alpha": 2.5, "by": "validation F1"},
                           seeds=[seed])
    table = format_table(result)
    assert ("No gate beat the baseline's validation F1 (0.0)" in table) is note
    assert "not significant at 0.05" in table and "includes 0" in table


@pytest.mark.slow
def test_every_result_rebuilds_what_ran_and_the_leaderboard_reads_the_folder(tiny_run):
    """Each intervention the job recorded (results.json and every lm_eval/<name>.json) rebuilds from its description,
    files checked by their hash; ``truthprobe leaderboard`` reads the job's own folder (validation and test slices
    apart)."""
    from truthprobe_eval.analysis import leaderboard as lb
    from truthprobe_eval.interventions import from_description

    result, out, _ = tiny_run
    recorded = json.loads((out / "results.json").read_text())
    described = [(recorded["selected"]["intervention"], out),
                 *((e["intervention"], out) for e in recorded["validation"])]
    for f in sorted((out / "lm_eval").glob("*.json")):
        described.append((json.loads(f.read_text())["config"]["intervention"], f.parent))
    assert len(described) > 10
    for d, beside in described:
        if d.get("identity"):
            continue
        assert d["scores_sha256"] and d["scores"] in ("scores.json", "../scores.json")  # relative, beside the result
        rebuilt = from_description(d, beside=beside).describe()
        assert {**rebuilt, "scores": d["scores"]} == d and Path(rebuilt["scores"]).resolve() == out / "scores.json"
    entries, _ = lb.collect([out])
    benchmarks = {e.benchmark for e in entries}
    assert {"halueval_truthprobe_seed0 rows 12-15", "halueval_truthprobe_seed0 rows 16-21",
            "halueval_truthprobe_seed1 rows 16-21"} <= benchmarks
    test_rows = [e for e in entries if e.benchmark == "halueval_truthprobe_seed0 rows 16-21"]
    assert {e.method for e in test_rows} >= {lb.VANILLA, lb.TP_OWN} and all(e.samples for e in test_rows)
