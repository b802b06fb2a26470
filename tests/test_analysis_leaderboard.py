"""truthprobe leaderboard: lm-eval and VLMEvalKit result folders in their real formats, deltas, marks, sortable HTML."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from truthprobe_eval.gate_config import GATE_NAMES

import numpy as np
import pandas as pd
import pytest

from truthprobe_eval.analysis import leaderboard as lb
from truthprobe_eval.scores import TruthScores

TS = "2026-02-03T04-05-06.789012"


def _samples(path: Path, correct: list[float]) -> None:
    with open(path, "w") as fh:
        for i, c in enumerate(correct):
            doc = {"knowledge": f"k{i}", "question": f"q{i}", "answer": f"a{i}"}
            fh.write(json.dumps({"doc_id": i, "doc": doc, "target": "Yes", "arguments": {}, "resps": [["Yes"]],
                                 "filtered_resps": ["Yes"], "filter": "none", "metrics": ["acc", "f1"],
                                 "doc_hash": hashlib.sha256(json.dumps(doc).encode()).hexdigest(),
                                 "prompt_hash": "0", "target_hash": "1", "acc": c, "f1": ["Yes", "Yes"]}) + "\n")


def _described(model_args: dict) -> dict:
    """What the truthgated model records: the intervention built from its model_args by the real parser."""
    from truthprobe_eval.interventions import build, split_kwargs

    ours, _ = split_kwargs({k: v for k, v in model_args.items() if k != "pretrained"})
    return build(**ours).describe()


def lm_eval_run(folder: Path, model: str, model_args: dict, correct: list[float], f1: float) -> Path:
    """results_<ts>.json and samples_<task>_<ts>.jsonl as lm-eval 0.4.13 writes them (config.model_args a dict)."""
    out = folder / re.sub(r"[/.]", "__", model_args["pretrained"])
    out.mkdir(parents=True)
    acc = float(np.mean(correct))
    results = {
        "results": {"halueval_qa": {"alias": "halueval_qa", "acc,none": acc, "acc_stderr,none": 0.01, "f1,none": f1,
                                    "f1_stderr,none": "N/A", "sample_len": len(correct)}},
        "group_subtasks": {"halueval_qa": []}, "configs": {}, "versions": {"halueval_qa": 1.0},
        "n-samples": {"halueval_qa": {"original": len(correct), "effective": len(correct)}},
        "config": {"model": model, "model_args": model_args, "batch_size": 1, "limit": None,
                   **({"intervention": _described(model_args)} if model != "hf" else {})},
        "model_name": model_args["pretrained"], "model_name_sanitized": out.name,
    }
    (out / f"results_{TS}.json").write_text(json.dumps(results))
    _samples(out / f"samples_halueval_qa_{TS}.jsonl", correct)
    return out


@pytest.fixture()
def result_dirs(tmp_path):
    base_scores = tmp_path / "smollm2_scores.json"
    TruthScores(np.random.default_rng(0).random((30, 9)), meta={"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}).save(base_scores)
    own_scores = tmp_path / "finetune_scores.json"
    TruthScores(np.random.default_rng(1).random((30, 9)), meta={"model": "org/my-finetune"}).save(own_scores)
    n = 200
    vanilla = [1.0] * 100 + [0.0] * 100
    better = [1.0] * 98 + [0.0, 0.0] + [1.0] * 30 + [0.0] * 70  # +28 net: McNemar p tiny
    same = [0.0] + [1.0] * 99 + [1.0] + [0.0] * 99  # one pair swapped each way: same mean, p = 1
    lm = tmp_path / "lm"
    lm_eval_run(lm / "a", "hf", {"pretrained": "smollm2-135m-instruct"}, vanilla, 0.10)
    lm_eval_run(lm / "b", "truthgated", {"pretrained": "smollm2-135m-instruct", "scores": str(base_scores),
                                         "alpha": "4.5", "norm": "centered", "gate": "truthprobe"}, better, 0.30)
    lm_eval_run(lm / "c", "truthgated", {"pretrained": "smollm2-135m-instruct", "scores": str(base_scores),
                                         "alpha": "4.5", "norm": "centered", "gate": "random", "seed": "1"}, same, 0.12)
    lm_eval_run(lm / "d", "hf", {"pretrained": "/ckpts/org/my-finetune"}, vanilla, 0.2)
    lm_eval_run(lm / "e", "truthgated", {"pretrained": "/ckpts/org/my-finetune", "scores": str(base_scores),
                                         "alpha": "4.5", "norm": "centered"}, better, 0.25)
    lm_eval_run(lm / "f", "truthgated", {"pretrained": "/ckpts/org/my-finetune", "scores": str(own_scores),
                                         "alpha": "2.5", "norm": "centered"}, vanilla, 0.2)
    assert len(vanilla) == len(better) == len(same) == n

    vlm = tmp_path / "vlm"
    for name, yes_correct in (("llava_tiny", 30), ("llava_tiny_truthprobe_llm", 45)):
        d = vlm / name
        d.mkdir(parents=True)
        if name != "llava_tiny":  # what `truthprobe vlmeval` records in the model's work folder
            from truthprobe_eval.interventions import build

            made = build("truthprobe", scores=str(base_scores), alpha=4.5)
            (d / "intervention.json").write_text(json.dumps({"model": "/ckpts/llava_tiny", "intervention":
                                                             made.describe()}))
        answers = ["Yes"] * 50 + ["No"] * 50
        preds = ["Yes" if i < yes_correct else "No" for i in range(50)] + ["No"] * 50
        pd.DataFrame({"index": range(100), "question": [f"Is there a q{i}?" for i in range(100)], "answer": answers,
                      "category": "adversarial", "prediction": preds}).to_excel(d / f"{name}_POPE.xlsx", index=False)
        acc = (yes_correct + 50) / 100 * 100
        recall = yes_correct / 50 * 100
        f1 = 2 * recall / (100 + recall) * 100
        pd.DataFrame({"split": ["Overall", "adversarial"], "Overall": [f1, f1], "acc": [acc, acc],
                      "precision": [100.0, 100.0], "recall": [recall, recall]}).to_csv(d / f"{name}_POPE_score.csv", index=False)
    (vlm / "llava_tiny" / "chair.json").write_text(json.dumps({"CHAIRs": 0.5, "CHAIRi": 0.2, "recall": 0.6, "len": 60.0}))
    (vlm / "llava_tiny_truthprobe_llm" / "chair.json").write_text(json.dumps({"CHAIRs": 0.4, "CHAIRi": 0.15, "recall": 0.6, "len": 58.0}))
    return lm, vlm


def test_methods_deltas_and_marks(result_dirs):
    entries, notes = lb.collect(result_dirs)
    board = lb.build(entries)
    rows = board.rows
    assert ("smollm2-135m-instruct", lb.VANILLA, "") in rows
    assert ("smollm2-135m-instruct", lb.TP_OWN, "alpha=4.5, norm=centered") in rows  # SmolLM2's scores on SmolLM2
    assert ("smollm2-135m-instruct", GATE_NAMES["random"], "alpha=4.5, norm=centered, seed=1") in rows
    assert ("my-finetune", lb.TP_BASE, "alpha=4.5, norm=centered") in rows  # the base LLM's scores on a descendant
    assert ("my-finetune", lb.TP_OWN, "alpha=2.5, norm=centered") in rows
    assert ("llava_tiny", lb.TP_BASE, "alpha=4.5, norm=centered") in rows and ("llava_tiny", lb.VANILLA, "") in rows

    tp = board.cells[(("smollm2-135m-instruct", lb.TP_OWN, "alpha=4.5, norm=centered"), ("halueval_qa", "acc"))]
    assert tp.value == pytest.approx(128 / 200) and tp.delta == pytest.approx(28 / 200)
    assert tp.mark == "***"  # McNemar: 2 vs 30 discordant
    f1 = board.cells[(("smollm2-135m-instruct", lb.TP_OWN, "alpha=4.5, norm=centered"), ("halueval_qa", "f1"))]
    assert f1.delta == pytest.approx(0.20) and f1.p is None  # corpus-level metric: no per-sample test
    rnd = board.cells[(("smollm2-135m-instruct", GATE_NAMES["random"], "alpha=4.5, norm=centered, seed=1"), ("halueval_qa", "acc"))]
    assert rnd.delta == 0 and rnd.p == pytest.approx(1.0) and rnd.mark == ""

    pope = board.cells[(("llava_tiny", lb.TP_BASE, "alpha=4.5, norm=centered"), ("POPE", "acc"))]
    assert pope.value == pytest.approx(95.0) and pope.delta == pytest.approx(15.0)
    assert pope.p is not None and pope.mark == "***"  # 15 of 15 discordant pairs favour B: exact p = 2 / 2**15
    assert board.cells[(("llava_tiny", lb.TP_BASE, "alpha=4.5, norm=centered"), ("POPE", "recall (adversarial)"))].delta == pytest.approx(30.0)
    chair = board.cells[(("llava_tiny", lb.TP_BASE, "alpha=4.5, norm=centered"), ("CHAIR", "CHAIRs"))]
    assert chair.delta == pytest.approx(-0.1) and chair.better  # fewer hallucinated objects is better
    assert board.cells[(("llava_tiny", lb.TP_BASE, "alpha=4.5, norm=centered"), ("POPE", "F1"))].delta == pytest.approx(200 * 0.9 / 1.9 - 75)


def test_outputs_and_cli(result_dirs, tmp_path):
    lm, vlm = result_dirs
    out = tmp_path / "board"
    proc = subprocess.run([sys.executable, "-m", "truthprobe_eval", "leaderboard", str(lm), str(vlm), "--out", str(out)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "| smollm2-135m-instruct | TruthProbe (own scores) | alpha=4.5, norm=centered |" in proc.stdout
    assert "0.6400 (+0.1400***)" in proc.stdout
    rows = list(csv.DictReader(open(out / "leaderboard.csv")))
    row = next(r for r in rows if r["model"] == "my-finetune" and r["method"] == lb.TP_BASE)
    assert float(row["halueval_qa acc delta"]) == pytest.approx(0.14) and float(row["halueval_qa acc p"]) < 1e-4
    assert (out / "leaderboard.html").read_text().count("<tr>") == len(rows) + 1
    bad = subprocess.run([sys.executable, "-m", "truthprobe_eval", "leaderboard", str(tmp_path / "none"), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "result folder not found" in bad.stderr


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _dump_dom(html_file: Path, fragment: str, profile: Path) -> str:
    browser = _chromium()
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--dump-dom", html_file.as_uri() + fragment],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _column(dom: str, index: int) -> list[str]:
    body = dom.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    cells = []
    for tr in re.findall(r"<tr>(.*?)</tr>", body, flags=re.S):
        tds = re.findall(r"<td([^>]*)>(.*?)</td>", tr, flags=re.S)
        attrs, text = tds[index]
        m = re.search(r'data-value="([^"]*)"', attrs)
        cells.append(m.group(1) if m else re.sub(r"<[^>]+>", "", text))
    return cells


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_html_sorts_in_headless_chromium(result_dirs, tmp_path):
    board = lb.build(lb.collect(result_dirs)[0])
    page = lb.write_outputs(board, tmp_path / "board")["html"]
    col = 3 + board.columns.index(("halueval_qa", "acc"))
    plain = _dump_dom(page, "", tmp_path / "p0")
    unsorted = _column(plain, col)
    assert "aria-sort" not in plain.split("<thead>")[1].split("</thead>")[0]

    def numbers(cells):
        return [float(c) for c in cells if c != ""]

    desc = _dump_dom(page, f"#sort={col}", tmp_path / "p1")  # one click on a number column: largest first
    values = numbers(_column(desc, col))
    assert values == sorted(values, reverse=True) and values != numbers(unsorted)
    assert _column(desc, col)[-1] == ""  # rows without this benchmark sink to the bottom
    assert 'aria-sort="descending"' in desc.split("<thead>")[1]
    asc = _dump_dom(page, f"#sort={col},2", tmp_path / "p2")  # a second click reverses
    values = numbers(_column(asc, col))
    assert values == sorted(values) and 'aria-sort="ascending"' in asc
    by_model = _column(_dump_dom(page, "#sort=0", tmp_path / "p3"), 0)  # text column: A to Z
    assert by_model == sorted(by_model, key=str.lower)


@pytest.mark.slow
def test_real_lm_eval_output_is_collected(tmp_path):
    """Run the real lm_eval CLI (SmolLM2, a local 4-row task, --log_samples) and read what it wrote."""
    from truthprobe_eval.models import resolve_model_path

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"q": f"Is {i} even?", "choices": ["Yes", "No"], "label": i % 2}) + "\n"
                            for i in range(4)))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny_parity.yaml").write_text(
        "task: tiny_parity\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "Question: {{q}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    model = resolve_model_path("smollm2-135m-instruct")
    proc = subprocess.run(
        [shutil.which("lm_eval") or "lm_eval", "--model", "hf", "--model_args", f"pretrained={model}", "--tasks", "tiny_parity",
         "--include_path", str(tmp_path / "tasks"), "--log_samples", "--output_path", str(tmp_path / "out"), "--device", "cpu"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (entry,), _ = lb.collect([tmp_path / "out"])
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert entry.method == lb.VANILLA and entry.model == "smollm2-135m-instruct"
    assert entry.metrics == {"acc": results["results"]["tiny_parity"]["acc,none"]}
    assert entry.samples is not None and entry.sample_metric == "acc"
    from truthprobe_eval.analysis import significance as sig

    (res,), _ = sig.compare_runs(tmp_path / "out", tmp_path / "out", n_boot=100)
    assert res.n == 4 and res.mean_a == pytest.approx(entry.metrics["acc"]) and res.diff == 0


def test_random_gate_seeds_are_averaged(tmp_path):
    vanilla = [1.0] * 50 + [0.0] * 50
    lm_eval_run(tmp_path / "v", "hf", {"pretrained": "smollm2-135m-instruct"}, vanilla, 0.1)
    accs = {0: 45, 1: 50, 2: 58}
    for seed, right in accs.items():
        lm_eval_run(tmp_path / f"r{seed}", "truthgated", {"pretrained": "smollm2-135m-instruct", "gate": "random",
                                                          "alpha": "4.5", "norm": "centered", "seed": str(seed)},
                    [1.0] * right + [0.0] * (100 - right), 0.1)
    entries, _ = lb.collect([tmp_path])
    board = lb.build(entries)
    key = ("smollm2-135m-instruct", GATE_NAMES["random"], "alpha=4.5, norm=centered, seeds=0,1,2")
    assert key in board.rows and len(board.rows) == 2
    cell = board.cells[(key, ("halueval_qa", "acc"))]
    values = np.array([0.45, 0.50, 0.58])
    assert cell.value == pytest.approx(values.mean()) and cell.std == pytest.approx(values.std(ddof=1)) and cell.n == 3
    assert cell.delta == pytest.approx(values.mean() - 0.5) and cell.p is None
    assert "0.5100 ± 0.0656 (+0.0100)" in lb.to_markdown(board)
    assert len(lb.build(entries, seeds=False).rows) == 4


def test_the_page_comes_from_the_template_and_escapes(result_dirs):
    entries, _ = lb.collect(result_dirs)
    board = lb.build(entries)
    board.notes = [*board.notes, "a note with <script>alert(1)</script> & 'quotes'"]
    page = lb.to_html(board)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#39;quotes&#39;" in page and "<script>alert(1)" not in page
    assert page.count("<tr>") == len(board.rows) + 1 and page.startswith("<!DOCTYPE html>")
    assert "sort=(\\d+)" in page  # the sorting script, verbatim from templates/leaderboard.html
