"""The stock ``lm_eval`` command (lm-eval 0.4.13, no plugin discovery) in subprocesses, with the real SmolLM2:
it finds ``truthgated`` and ``halueval_qa_seed0`` without --include_path, keeps per-sample outputs, gives the
same results with two data-parallel CPU processes (``accelerate launch``), and reports bad gate arguments
before the model loads."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from truthprobe_eval.models import file_sha256

from truthprobe_eval import TruthScores

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TASK = "halueval_qa_seed0"
LIMIT = 4
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def scores_file(tmp_path_factory) -> Path:
    values = np.random.default_rng(5).uniform(0.45, 0.95, size=(30, 9))
    return TruthScores(values, meta={"model": "synthetic-smollm2"}).save(tmp_path_factory.mktemp("s") / "scores.json")


def _lm_eval_args(scores: Path, out: Path, model_args: str | None = None) -> list[str]:
    model_args = model_args or f"pretrained=smollm2-135m-instruct,scores={scores},alpha=2.5,norm=centered"
    return ["--model", "truthgated", "--model_args", model_args, "--tasks", TASK, "--limit", str(LIMIT),
            "--device", "cpu", "--batch_size", "1", "--log_samples", "--output_path", str(out)]


def _run(cmd: list[str], env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env or ENV, timeout=timeout)


def _outputs(out: Path) -> tuple[dict, list[dict]]:
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = [json.loads(line) for line in next(out.rglob(f"samples_{TASK}_*.jsonl")).read_text().splitlines()]
    return results, sorted(samples, key=lambda s: s["doc_id"])


@pytest.fixture(scope="module")
def one_process(scores_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    res = _run([str(BIN / "lm_eval"), *_lm_eval_args(scores_file, out)])
    assert res.returncode == 0, res.stderr[-4000:]
    return _outputs(out)


def test_cli_finds_the_model_and_the_task_and_keeps_samples(one_process, scores_file):
    results, samples = one_process
    metrics = results["results"][TASK]
    for name in ("acc", "precision", "recall", "f1", "yes_ratio", "unparseable"):
        assert f"{name},none" in metrics
    assert 0.0 <= metrics["acc,none"] <= 1.0 and metrics["unparseable,none"] in range(LIMIT + 1)
    assert results["config"]["model"] == "truthgated"
    assert results["config"]["intervention"] == {
        "method": "truthprobe", "gate": "truthprobe", "alpha": 2.5, "norm": "centered", "site": "o_proj_output",
        "seed": 0, "apply": "hook", "scores": str(scores_file), "scores_model": "synthetic-smollm2",
        "label": "TruthProbe (centered, alpha 2.5)", "identity": False, "negative_gates": 0,
        "scores_sha256": file_sha256(scores_file)}  # the file pinned by its content
    assert [s["doc_id"] for s in samples] == list(range(LIMIT))
    for s in samples:
        assert s["doc"]["row"] == 292 + s["doc_id"]  # probing rows 0..291 are not evaluated
        assert s["target"] == s["doc"]["label"] and isinstance(s["resps"][0][0], str)
        assert s["arguments"]["gen_args_0"]["arg_0"].endswith("#Your Judgement#:")


def test_two_cpu_processes_equal_one(one_process, scores_file, tmp_path):
    """lm-eval's data-parallel path: each process takes every second doc, rank 0 gathers and aggregates."""
    out = tmp_path / "two"
    env = {**ENV, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lm_eval", *_lm_eval_args(scores_file, out)]
    res = _run(cmd, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    assert f"Building contexts for {TASK} on rank 1" in res.stderr + res.stdout  # the work really was split
    results, samples = _outputs(out)
    single_results, single_samples = one_process
    assert results["results"][TASK] == single_results["results"][TASK]
    assert [s["doc_id"] for s in samples] == list(range(LIMIT))
    assert [s["resps"] for s in samples] == [s["resps"] for s in single_samples]


def test_cli_reports_missing_scores_before_loading(tmp_path):
    res = _run([str(BIN / "lm_eval"), *_lm_eval_args(tmp_path / "x", tmp_path,
                                                    model_args="pretrained=smollm2-135m-instruct,alpha=4.5")])
    assert res.returncode != 0
    assert "GateConfigError: scores: gate='truthprobe' needs Truth Scores, found none" in res.stderr
    assert "Loading weights" not in res.stderr + res.stdout


PUBLISHED_TASK = "halueval_truthprobe_seed0"


def _published_run(out: Path, model: str, model_args: str, extra: tuple[str, ...] = ()) -> tuple[dict, list[dict]]:
    cmd = [str(BIN / "lm_eval"), "--model", model, "--model_args", model_args, "--tasks", PUBLISHED_TASK,
           "--limit", "6", "--device", "cpu", "--batch_size", "3", "--log_samples", "--output_path", str(out), *extra]
    res = _run(cmd)
    assert res.returncode == 0, res.stderr[-4000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = [json.loads(x) for x in next(out.rglob(f"samples_{PUBLISHED_TASK}_*.jsonl")).read_text().splitlines()]
    return results, sorted(samples, key=lambda s: s["doc_id"])


def test_published_protocol_task_from_the_cli_equals_stock_hf(tmp_path):
    """The TruthProbe-protocol task through the stock CLI: truthgated (gate none, prefix KV cache on) gives the
    stock ``hf`` model's replies and metrics on the same rows."""
    ours, our_samples = _published_run(tmp_path / "ours", "truthgated",
                                       "pretrained=smollm2-135m-instruct,gate=none,early_stop=false")
    from truthprobe_eval.models import resolve_model_path

    hf_path = resolve_model_path("smollm2-135m-instruct")
    theirs, their_samples = _published_run(tmp_path / "hf", "hf", f"pretrained={hf_path}")
    assert [s["resps"] for s in our_samples] == [s["resps"] for s in their_samples]
    metrics = ours["results"][PUBLISHED_TASK]
    for name in ("acc", "precision", "recall", "f1", "pred_yes_share", "gold_yes_share", "unparseable", "correct"):
        assert metrics[f"{name},none"] == theirs["results"][PUBLISHED_TASK][f"{name},none"]
    assert all(s["arguments"]["gen_args_0"]["arg_0"].endswith(" ASSISTANT:") for s in our_samples)
    assert all(s["arguments"]["gen_args_0"]["arg_0"].startswith("USER: You are a huallucination detector.")
               for s in our_samples)


def test_shuffled_gate_from_the_cli(scores_file, tmp_path):
    results, _ = _published_run(tmp_path, "truthgated", f"pretrained=smollm2-135m-instruct,scores={scores_file},"
                                                        "gate=shuffled,alpha=0.3,norm=minmax,seed=4")
    gate = results["config"]["intervention"]
    assert (gate["gate"], gate["seed"], gate["alpha"], gate["norm"]) == ("shuffled", 4, 0.3, "minmax")
    assert 0.0 <= results["results"][PUBLISHED_TASK]["acc,none"] <= 1.0


@pytest.mark.slow
def test_paper_random_gate_and_paper_parse_from_the_cli(tmp_path):
    """The paper's random gate (redrawn at every call, alpha unused) is reproducible for a seed, and the published
    reply regex is chosen through lm-eval's own --metadata."""
    args = "pretrained=smollm2-135m-instruct,gate=paper_random,seed=7,alpha=4.5"
    meta = ("--metadata", json.dumps({"halueval_parse": "paper"}))
    first, a = _published_run(tmp_path / "a", "truthgated", args, meta)
    _, b = _published_run(tmp_path / "b", "truthgated", args, meta)
    assert [s["resps"] for s in a] == [s["resps"] for s in b]
    gate = first["config"]["intervention"]
    assert (gate["gate"], gate["seed"]) == ("paper_random", 7) and "paper's random gate" in gate["label"]
    assert {s["doc"]["parse"] for s in a} == {"paper"}
