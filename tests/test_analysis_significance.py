"""truthprobe significance: paired tests on per-sample logs in lm-eval's and VLMEvalKit's formats, planted effects."""
from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from truthprobe_eval.analysis import significance as sig

TS = "2026-01-02T03-04-05.123456"


def write_lm_eval_samples(folder: Path, task: str, correct: list[float], metric: str = "acc", ts: str = TS,
                          doc_ids: list[int] | None = None, doc_text: str = "q") -> Path:
    """Sample lines with exactly the keys lm-eval 0.4.13 writes for a multiple-choice task with --log_samples."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"samples_{task}_{ts}.jsonl"
    with open(path, "w") as fh:
        for i, value in zip(doc_ids if doc_ids is not None else range(len(correct)), correct):
            doc = {"q": f"{doc_text} {i}", "choices": ["Yes", "No"], "label": 0}
            fh.write(json.dumps({
                "doc_id": i, "doc": doc, "target": "0",
                "arguments": {"gen_args_0": {"arg_0": f"Question: {doc['q']}\nAnswer:", "arg_1": " Yes"},
                              "gen_args_1": {"arg_0": f"Question: {doc['q']}\nAnswer:", "arg_1": " No"}},
                "resps": [[["-1.0", "False"]], [["-2.0", "False"]]],
                "filtered_resps": [["-1.0", "False"], ["-2.0", "False"]],
                "filter": "none", "metrics": [metric],
                "doc_hash": hashlib.sha256(json.dumps(doc).encode()).hexdigest(),
                "prompt_hash": "0" * 64, "target_hash": "1" * 64, metric: float(value),
            }) + "\n")
    return path


def planted(n: int, a_only: int, b_only: int, both: int) -> tuple[list[float], list[float]]:
    """0/1 outcomes with exactly these counts of A-only-right, B-only-right and both-right samples."""
    a = [1.0] * a_only + [0.0] * b_only + [1.0] * both + [0.0] * (n - a_only - b_only - both)
    b = [0.0] * a_only + [1.0] * b_only + [1.0] * both + [0.0] * (n - a_only - b_only - both)
    return a, b


def test_planted_effect_exact_mcnemar_and_t_test(tmp_path):
    n, a_only, b_only = 120, 2, 10
    a, b = planted(n, a_only, b_only, both=60)
    write_lm_eval_samples(tmp_path / "base" / "model", "halueval_qa", a)
    write_lm_eval_samples(tmp_path / "gated" / "model", "halueval_qa", b)
    (res,), notes = sig.compare_runs(tmp_path / "base", tmp_path / "gated", n_boot=4000)
    assert res.task == "halueval_qa" and res.metric == "acc,none" and res.n == n
    assert res.mean_a == pytest.approx(62 / 120) and res.mean_b == pytest.approx(70 / 120)
    assert res.diff == pytest.approx((b_only - a_only) / n)
    # exact McNemar, by hand: 2 * P(X <= 2), X ~ Binomial(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert (res.a_only, res.b_only) == (2, 10)
    assert res.mcnemar_method == "exact binomial"
    assert res.mcnemar_p == pytest.approx(2 * 79 / 4096)
    # paired t-test, by hand: d is +1 ten times, -1 twice, 0 otherwise
    mean = 8 / n
    sd = math.sqrt((12 - n * mean**2) / (n - 1))
    t = mean / (sd / math.sqrt(n))
    assert res.t_stat == pytest.approx(t)
    assert res.t_p == pytest.approx(stats.t.sf(t, n - 1))
    assert res.t_p_two_sided == pytest.approx(2 * stats.t.sf(t, n - 1))
    # the bootstrap interval brackets the mean difference and is about +-1.96 standard errors wide
    assert res.ci_low < res.diff < res.ci_high
    assert (res.ci_high - res.ci_low) == pytest.approx(2 * 1.96 * sd / math.sqrt(n), rel=0.15)
    assert sig.stars(res.p_for_marks) == "*"


def test_large_discordant_counts_use_the_exact_test_too():
    """One McNemar rule at every size: the exact binomial test (it was chi-square from 25 discordant pairs)."""
    a, b = planted(400, 20, 45, both=200)
    res = sig.paired_test(np.array(a), np.array(b), n_boot=500)
    assert res.mcnemar_method == "exact binomial"
    assert res.mcnemar_p == pytest.approx(stats.binomtest(45, 65, 0.5).pvalue, abs=1e-12)
    assert res.mcnemar_p == pytest.approx(2 * stats.binom.cdf(20, 65, 0.5))


def test_no_effect_and_non_binary_metric():
    x = np.random.default_rng(0).random(50)
    same = sig.paired_test(x, x, n_boot=200)
    assert same.diff == 0 and same.t_p == 1.0 and same.ci_low == same.ci_high == 0
    assert not same.binary and same.mcnemar_p is None
    shifted = sig.paired_test(x, x + 0.1, n_boot=200)  # constant difference: t is infinite, p exactly 0
    assert shifted.t_p == 0.0 and shifted.diff == pytest.approx(0.1)
    worse = sig.paired_test(x, x - 0.1, n_boot=200)
    assert worse.t_p == 1.0  # one-sided "B better" cannot be supported by a uniformly worse B


def test_refuses_different_sample_sets_naming_the_first(tmp_path):
    a, b = planted(30, 1, 5, both=10)
    write_lm_eval_samples(tmp_path / "a", "halueval_qa", a)
    write_lm_eval_samples(tmp_path / "b", "halueval_qa", b[:29], doc_ids=[i for i in range(30) if i != 17])
    with pytest.raises(sig.SampleMismatchError, match=r"doc_id 17 is in A .* but not in B"):
        sig.compare_runs(tmp_path / "a", tmp_path / "b")
    write_lm_eval_samples(tmp_path / "c", "halueval_qa", b, doc_text="another question")
    with pytest.raises(sig.SampleMismatchError, match=r"doc_id 0 holds a different document"):
        sig.compare_runs(tmp_path / "a", tmp_path / "c")


def test_tasks_only_in_one_run_are_noted_and_newest_file_used(tmp_path):
    a, b = planted(40, 3, 9, both=10)
    write_lm_eval_samples(tmp_path / "a", "t1", a)
    write_lm_eval_samples(tmp_path / "a", "t2", a)
    write_lm_eval_samples(tmp_path / "b", "t1", [0.0] * 40, ts="2025-01-01T00-00-00.000000")  # older, ignored
    write_lm_eval_samples(tmp_path / "b", "t1", b)
    results, notes = sig.compare_runs(tmp_path / "a", tmp_path / "b", n_boot=200)
    assert [r.task for r in results] == ["t1"] and results[0].diff == pytest.approx(6 / 40)
    assert "t2: only in A, not compared" in notes
    assert any("using the newest" in n for n in notes)


def test_corpus_metric_without_per_sample_value_is_a_clear_error(tmp_path):
    path = tmp_path / f"samples_x_{TS}.jsonl"
    path.write_text(json.dumps({"doc_id": 0, "filter": "none", "metrics": ["f1"], "f1": [1, 0]}) + "\n")
    with pytest.raises(sig.SignificanceError, match="no numeric per-sample value"):
        sig.load_lm_eval_samples(path)


def _vlmeval_frame(n: int, correct: list[bool]) -> pd.DataFrame:
    answers = ["Yes" if i % 2 == 0 else "No" for i in range(n)]
    wrong = {"Yes": "No, there is not.", "No": "Yes, I can see it."}
    right = {"Yes": "Yes, there is a dog.", "No": "No."}
    preds = [(right if c else wrong)[a] for a, c in zip(answers, correct)]
    return pd.DataFrame({"index": list(range(n)), "question": [f"Is there a thing {i}?" for i in range(n)],
                         "answer": answers, "category": "random", "prediction": preds})


def test_vlmevalkit_prediction_files(tmp_path):
    n = 60
    a, b = planted(n, 4, 16, both=20)
    base, gated = tmp_path / "llava_tiny", tmp_path / "llava_tiny_truthprobe"
    base.mkdir(), gated.mkdir()
    _vlmeval_frame(n, [bool(x) for x in a]).to_excel(base / "llava_tiny_POPE_COCO.xlsx", index=False)
    _vlmeval_frame(n, [bool(x) for x in b]).to_csv(gated / "llava_tiny_truthprobe_POPE_COCO.tsv", sep="\t", index=False)
    (res,), _ = sig.compare_runs(base, gated, n_boot=500)
    assert res.task == "POPE_COCO" and res.metric == "correct"
    assert (res.a_only, res.b_only) == (4, 16)
    assert res.mean_a == pytest.approx(24 / 60) and res.mean_b == pytest.approx(36 / 60)
    # VLMEvalKit's evaluated table (per-sample 'score') is preferred over re-extracting from the predictions
    scored = _vlmeval_frame(n, [bool(x) for x in a])
    scored["extracted"] = "Yes"
    scored["score"] = [True] * n
    scored.to_excel(base / "llava_tiny_POPE_COCO_auxmatch.xlsx", index=False)
    (res2,), notes = sig.compare_runs(base, gated, n_boot=200)
    assert res2.mean_a == 1.0 and res2.mean_b == pytest.approx(36 / 60)
    assert "llava_tiny_POPE_COCO_auxmatch.xlsx: per-sample correctness from VLMEvalKit's 'score' column" in notes


def test_cli_significance(tmp_path):
    a, b = planted(100, 5, 20, both=40)
    write_lm_eval_samples(tmp_path / "a", "halueval_qa", a)
    write_lm_eval_samples(tmp_path / "b", "halueval_qa", b)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "truthprobe_eval", "significance", str(tmp_path / "a"),
                           str(tmp_path / "b"), "--out", str(out), "--bootstrap", "1000"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| halueval_qa | acc,none | 100 | 0.4500 | 0.6000 | +0.1500** |" in proc.stdout
    row = next(csv.DictReader(open(out / "significance.csv")))
    assert float(row["mcnemar_p"]) == pytest.approx(stats.binomtest(20, 25, 0.5).pvalue)  # the exact rule
    missing = subprocess.run([sys.executable, "-m", "truthprobe_eval", "significance", str(tmp_path / "a"),
                              str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "run not found" in missing.stderr


def test_vlmevalkit_mcq_result_files_are_preferred(tmp_path):
    """VLMEvalKit's MCQ evaluation writes <model>_<dataset>_<judge>_result.xlsx with a per-sample 'hit' column."""
    for model, hits in (("m_base", [1, 0, 0, 1, 0, 0]), ("m_gated", [1, 1, 0, 1, 1, 0])):
        d = tmp_path / model
        d.mkdir()
        frame = pd.DataFrame({"index": range(6), "question": [f"q{i}" for i in range(6)], "answer": list("ABCDAB"),
                              "prediction": ["A"] * 6})
        frame.to_excel(d / f"{model}_MMBench_DEV_EN.xlsx", index=False)
        frame.assign(hit=hits).to_excel(d / f"{model}_MMBench_DEV_EN_exact_matching_result.xlsx", index=False)
        pd.DataFrame({"split": ["dev"], "Overall": [sum(hits) / 6]}).to_csv(d / f"{model}_MMBench_DEV_EN_acc.csv", index=False)
    found = sig.find_vlmeval_predictions(tmp_path / "m_base")
    assert list(found) == ["MMBench_DEV_EN"] and found["MMBench_DEV_EN"].name.endswith("_exact_matching_result.xlsx")
    (res,), notes = sig.compare_runs(tmp_path / "m_base", tmp_path / "m_gated", n_boot=100)
    assert (res.a_only, res.b_only) == (0, 2) and res.mcnemar_p == pytest.approx(0.5)  # exact: 2 * (1/2)**2


def test_mcnemar_is_statsmodels_and_gives_the_hand_formulas_numbers():
    """The library test reproduces the exact binomial by hand, at every size."""
    from scipy import stats

    from truthprobe_eval.analysis.significance import mcnemar

    rng = np.random.default_rng(7)
    for n, flips in ((20, 5), (400, 60), (400, 3)):
        a = rng.integers(0, 2, n)
        b = a.copy()
        b[rng.choice(n, flips, replace=False)] ^= 1
        b[:2] = 1 - a[:2]
        a_only, b_only, stat, p, method = mcnemar(a, b)
        m = a_only + b_only
        assert method == "exact binomial"
        assert stat == min(a_only, b_only) and p == pytest.approx(stats.binomtest(b_only, m, 0.5).pvalue, abs=1e-12)
    assert mcnemar(np.ones(5), np.ones(5))[3] == 1.0


def _hand_written_bootstrap(d, n_boot, confidence, seed):
    """The interval as this project computed it before scipy did (the reference the reported numbers came from)."""
    rng = np.random.default_rng(seed)
    n = d.size
    means = np.empty(n_boot)
    chunk = max(1, min(n_boot, 2_000_000 // max(1, n)))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        means[start:stop] = d[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


@pytest.mark.parametrize("n, n_boot, binary", [(200, 10000, True), (817, 10000, False), (5000, 1000, True), (3, 50, False)])
def test_bootstrap_interval_is_scipys_with_the_same_numbers(n, n_boot, binary):
    """scipy.stats.bootstrap (percentile) gives the intervals of the old loop: the same resamples, one batch (n <= 200
    at 10k resamples) or several (n = 817, 5000). Exactly for 0/1 differences; for real-valued ones the means are
    summed in another order, a difference in the last bit (1e-17) that no reported digit sees."""
    from truthprobe_eval.analysis.significance import bootstrap_ci

    rng = np.random.default_rng(n)
    d = rng.integers(-1, 2, n).astype(float) if binary else rng.normal(0.1, 1, n)
    for seed in (0, 7):
        for confidence in (0.9, 0.95):
            ours, before = bootstrap_ci(d, n_boot, confidence, seed), _hand_written_bootstrap(d, n_boot, confidence, seed)
            assert ours == before if binary else ours == pytest.approx(before, rel=1e-13, abs=1e-15)
    assert bootstrap_ci(np.full(5, 0.25), 100) == (0.25, 0.25)
