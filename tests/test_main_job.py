"""``truthprobe run`` on tiny sizes with the real SmolLM2: probing, validation and test rows never overlap, the gate
is the validation-F1 winner, and the table, the score file, the heatmap and every lm-eval file are written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from truthprobe_eval import TruthProbeError
from truthprobe_eval.cli import main
from truthprobe_eval.main_job import Evaluation, MainJobConfig, format_table, run_main_job, select_best

pytestmark = pytest.mark.slow


def _evaluation(name: str, gate: dict, f1: float, acc: float) -> Evaluation:
    metrics = {"acc": acc, "f1": f1, "precision": 0.0, "recall": 0.0, "yes_ratio": 0.0, "unparseable": 0}
    return Evaluation(name, "validation", gate, metrics, (0, 1), 0.0, "", "")


def test_select_best_is_the_highest_validation_f1_then_accuracy():
    runs = [_evaluation("b", {"gate": "none"}, 0.9, 0.9),  # the baseline is never "selected"
            _evaluation("c2.5", {"gate": "truthprobe", "norm": "centered", "alpha": 2.5}, 0.4, 0.5),
            _evaluation("c4.5", {"gate": "truthprobe", "norm": "centered", "alpha": 4.5}, 0.6, 0.5),
            _evaluation("m0.1", {"gate": "truthprobe", "norm": "minmax", "alpha": 0.1}, 0.6, 0.7),
            _evaluation("m0.2", {"gate": "truthprobe", "norm": "minmax", "alpha": 0.2}, 0.6, 0.7)]
    assert select_best(runs).name == "m0.1"


@pytest.mark.parametrize("kwargs, message", [
    ({"probe_rows": 9000, "val_rows": 900, "test_rows": 200}, "rows: probe 9000 \\+ validation 900 \\+ test 200 = 10100, but the data has 10000 rows"),
    ({"draw_seed": 3}, "draw seed: expected 0, 1 or 2"),
    ({"grid": (("centred", 2.5),)}, "norm: expected one of centered, minmax, raw, found 'centred'"),
    ({"val_rows": 0}, "validation rows: 0 leaves nothing to choose among 7 gate settings"),
])
def test_bad_settings_fail_before_any_model_work(kwargs, message, tmp_path):
    with pytest.raises(TruthProbeError, match=message):
        run_main_job(MainJobConfig(model="/no/such/model", out=str(tmp_path), **kwargs))


def test_cli_flag_errors(tmp_path, capsys):
    assert main(["run", "--norm", "centered", "--out", str(tmp_path)]) == 2
    assert "--norm and --alpha go together" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = MainJobConfig(out=str(out), probe_rows=12, val_rows=2, test_rows=2, folds=3, batch_size=2,
                        grid=(("centered", 2.5), ("minmax", 0.2)), progress=False)
    lines: list[str] = []
    return run_main_job(cfg, log=lines.append), out, lines


def test_rows_are_disjoint_and_outputs_written(tiny_run):
    result, out, lines = tiny_run
    assert (out / "scores.json").is_file() and (out / "scores.png").stat().st_size > 1000
    scores_meta = json.loads((out / "scores.json").read_text())["meta"]
    assert scores_meta["n_samples"] == 24 and scores_meta["offset"] == 0  # rows 0-11, two answers each

    def rows(evaluation) -> set[int]:
        samples = [json.loads(line) for line in Path(evaluation.samples_file).read_text().splitlines()]
        return {s["doc"]["row"] for s in samples}

    val = set().union(*(rows(e) for e in result.validation))
    test = rows(result.baseline)
    assert val == {12, 13} and test == {14, 15} == rows(result.gated)
    assert [e.name for e in result.validation] == ["val_baseline", "val_centered_2.5", "val_minmax_0.2"]
    for e in [*result.validation, result.baseline, result.gated]:
        assert json.loads(Path(e.result_file).read_text())["results"]["halueval_qa_seed0"]["f1,none"] == e.metrics["f1"]
    assert any(line.startswith("probing: HaluEval rows 0-11") for line in lines)


def test_selected_gate_and_table(tiny_run):
    result, out, _ = tiny_run
    best = select_best(result.validation)
    assert result.selected["norm"] == best.gate["norm"] and result.selected["alpha"] == best.gate["alpha"]
    assert result.gated.gate["gate"] == "truthprobe" and result.gated.gate["alpha"] == result.selected["alpha"]
    assert result.baseline.gate["gate"] == "none"
    saved = json.loads((out / "results.json").read_text())
    for metric, delta in saved["test"]["delta"].items():
        assert delta == pytest.approx(result.gated.metrics[metric] - result.baseline.metrics[metric])
    table = (out / "results.md").read_text()
    assert table == format_table(result)
    f1_row = f"{100 * result.baseline.metrics['f1']:.1f}"
    assert "| baseline | " in table and f1_row in table and "| delta | " in table


@pytest.mark.parametrize("gated_f1, note", [(0.0, True), (0.3, False)])
def test_table_says_when_no_gate_beat_the_baseline(gated_f1, note):
    from truthprobe_eval.main_job import MainJobResult

    val = [_evaluation("val_baseline", {"gate": "none"}, 0.0, 0.5),
           _evaluation("val_centered_2.5", {"gate": "truthprobe", "norm": "centered", "alpha": 2.5}, gated_f1, 0.5)]
    result = MainJobResult(config={"draw_seed": 0, "val_offset": 10, "test_offset": 20}, scores_file="", heatmap_file=None,
                           validation=val, baseline=val[0], gated=val[1],
                           selected={"norm": "centered", "alpha": 2.5, "by": "validation F1"})
    assert ("No gate beat the baseline's validation F1 (0.0)" in format_table(result)) is note
