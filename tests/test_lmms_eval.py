"""lmms-eval's real CLI (``python -m lmms_eval``, a fresh process with our .pth hook and entry point) with the
``truthgated`` model and the offline ``pope_local`` tasks, on tiny config-built LLaVA and Qwen2-VL: the ungated
model answers as lmms-eval's own class does, a gate changes answers, every method runs and is recorded in the
results, samples are written, and bad input fails before any model call with a message that names the cause."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_models import save_tiny, save_tiny_mllm, shared_pope_rows, write_pope_questions, write_synthetic_coco

from truthprobe_eval.scores import TruthScores

POPE_IMAGES = ["COCO_val2014_000000310196.jpg", "COCO_val2014_000000210789.jpg"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_dir):
    root = tmp_path_factory.mktemp("lmms")
    rows = shared_pope_rows(shared_dir, POPE_IMAGES)
    ids = [int(name[-16:-4]) for name in POPE_IMAGES]
    image_dir, ann_dir = write_synthetic_coco(root / "coco", {ids[0]: ["person", "dog"], ids[1]: ["cat", "couch"], 7: ["car"]},
                                              {ids[0]: ["A man with a dog."], ids[1]: ["A cat on a sofa."], 7: ["A car."]})
    return {"root": root, "pope_dir": str(write_pope_questions(root / "pope", rows)), "images": str(image_dir),
            "annotations": str(ann_dir), "llava": save_tiny_mllm("llava", root / "llava"),
            "llava_next": save_tiny_mllm("llava_next", root / "llava_next"),
            "qwen": save_tiny_mllm("qwen2_vl", root / "qwen2_vl"), "qwen25": save_tiny_mllm("qwen2_5_vl", root / "qwen2_5_vl")}


def _files(setup) -> dict[str, str]:
    """An artifact file of every method, shaped for the tiny models (2 layers, 4 heads of 8, hidden 32)."""
    from truthprobe_eval.directions import ITIDirections
    from truthprobe_eval.interventions.diffmean import DiffMeanVectors
    from truthprobe_eval.neuron_scores import select_neurons

    root, rng = setup["root"], np.random.default_rng(3)
    unit = rng.standard_normal((2, 4, 8))
    unit /= np.linalg.norm(unit, axis=-1, keepdims=True)
    return {
        "scores": str(TruthScores(rng.uniform(0.45, 0.95, (2, 4)), meta={"model": "tiny"}).save(root / "scores.json")),
        "ars": str(TruthScores(rng.uniform(0, 1, (2, 4)), meta={"model": "tiny", "kind": "ars"}).save(root / "ars.json")),
        "directions": str(ITIDirections(unit, np.full((2, 4), 3.0), rng.uniform(0.5, 1, (2, 4)), unit,
                                        np.full((2, 4), 3.0), meta={"model": "tiny"}).save(root / "iti.json")),
        "neurons": str(select_neurons(rng.normal(0.2, 1, (8, 2, 16)), p_threshold=0.2,
                                      meta={"model": "tiny"}).save(root / "neurons.json")),
        "vectors": str(DiffMeanVectors(rng.standard_normal((2, 32)), np.ones(2), meta={"model": "tiny"})
                       .save(root / "diffmean.json")),
    }


def _lmms_eval(setup, model: str, model_args: str, out: Path, *, tasks: str = "pope_local_random", limit: int = 4,
               batch_size: int = 1, extra: tuple = (), processes: int = 1) -> subprocess.CompletedProcess:
    environment = {**os.environ, "TRUTHPROBE_POPE_DIR": setup["pope_dir"], "TRUTHPROBE_COCO_IMAGES": setup["images"],
                   "TRUTHPROBE_COCO_ANNOTATIONS": setup["annotations"], "TRUTHPROBE_CACHE": str(setup["root"] / "cache"),
                   "OMP_NUM_THREADS": "1"}
    launch = [sys.executable]
    if processes > 1:  # lmms-eval's data parallelism: accelerate's launcher, CPU processes over gloo
        environment["ACCELERATE_USE_CPU"] = "1"
        launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes",
                  str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return subprocess.run(
        [*launch, "-m", "lmms_eval", "--model", model, "--model_args", model_args, "--tasks", tasks,
         "--limit", str(limit), "--batch_size", str(batch_size), "--gen_kwargs", "max_new_tokens=4",
         "--output_path", str(out), "--log_samples", *extra],
        capture_output=True, text=True, timeout=600, env=environment)


def _lmms_eval_runs(setup, folder: Path, runs: dict[str, dict]) -> dict[str, tuple[dict, list[dict]]]:
    """Several evaluations in one lmms-eval process (its ``--config`` takes a list of runs: one start-up, not
    one per run): name -> (results, samples). A run's keys are lmms-eval's CLI options."""
    import yaml

    configs = [{"model": "truthgated", "tasks": "pope_local_random", "limit": 4, "batch_size": 1,
                "gen_kwargs": "max_new_tokens=4", "log_samples": True, "output_path": str(folder / name), **run}
               for name, run in runs.items()]
    (folder / "runs.yaml").write_text(yaml.safe_dump(configs))
    environment = {**os.environ, "TRUTHPROBE_POPE_DIR": setup["pope_dir"], "TRUTHPROBE_COCO_IMAGES": setup["images"],
                   "TRUTHPROBE_COCO_ANNOTATIONS": setup["annotations"], "TRUTHPROBE_CACHE": str(setup["root"] / "cache"),
                   "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "lmms_eval", "--config", str(folder / "runs.yaml")],
                          capture_output=True, text=True, timeout=600, env=environment)
    return {name: _written(proc, folder / name) for name in runs}


def _written(run: subprocess.CompletedProcess, out: Path) -> tuple[dict, list[dict]]:
    """The results file and the samples (by doc id) of one run; the run's output when there are none."""
    found = sorted(out.glob("*/*_results.json"))
    assert found, f"lmms-eval wrote no results:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    samples = [json.loads(line) for f in sorted(out.glob("*/*_samples_*.jsonl")) for line in open(f)]
    return json.loads(found[-1].read_text()), sorted(samples, key=lambda s: s["doc_id"])


def _replies(samples: list[dict]) -> list[str]:
    return [s["filtered_resps"] if isinstance(s["filtered_resps"], str) else s["filtered_resps"][0] for s in samples]


OWN_CLASS = {"llava": "llava_hf", "llava_next": "llava_hf", "qwen": "qwen2_vl", "qwen25": "qwen2_5_vl"}
INNER = {"llava": "llava_hf.LlavaHf", "llava_next": "llava_hf.LlavaHf", "qwen": "qwen2_vl.Qwen2_VL",
         "qwen25": "qwen2_5_vl.Qwen2_5_VL"}


@pytest.mark.slow
def test_ungated_answers_as_lmms_evals_own_class(setup, tmp_path):
    """Per family (LLaVA-1.5, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL): truthgated with method=none answers every question
    as lmms-eval's own class does (``force_simple``: lmms-eval's llava_hf name resolves to its chat class, which
    our simple tasks do not feed; truthgated wraps the simple one)."""
    runs = {}
    for family, own in OWN_CLASS.items():
        args = f"pretrained={setup[family]},device=cpu,device_map=cpu"
        runs[f"{family}-own"] = {"model": own, "model_args": args, "force_simple": True}
        runs[f"{family}-ours"] = {"model_args": f"{args},method=none"}
    written = _lmms_eval_runs(setup, tmp_path, runs)
    for family in OWN_CLASS:
        (_, theirs), (results, samples) = written[f"{family}-own"], written[f"{family}-ours"]
        assert len(samples) == 4 and _replies(samples) == _replies(theirs), family
        assert results["config"]["intervention"]["identity"] is True
        assert results["config"]["truthgated"]["lmms_eval_class"].endswith(INNER[family])
        metrics = results["results"]["pope_local_random"]
        assert {"pope_accuracy,none", "pope_f1_score,none", "pope_yes_ratio,none", "pope_parsed_accuracy,none"} <= set(metrics)
        assert metrics["pope_yes_ratio,none"] == pytest.approx(np.mean([s["target"] == "yes" for s in samples]))


@pytest.mark.slow
def test_every_method_runs_and_is_recorded_and_a_gate_changes_answers(setup, tmp_path):
    from truthprobe_eval.interventions import from_description

    files = _files(setup)
    base = f"pretrained={setup['llava']},device=cpu"
    runs = {
        "plain": "method=none",
        "truthprobe-centered": f"scores={files['scores']},alpha=6,norm=centered",
        "truthprobe-minmax": f"scores={files['scores']},alpha=6,norm=minmax",
        "truthprobe-random": "gate=random,alpha=6,seed=1",
        "truthprobe-inverse": f"scores={files['scores']},alpha=6,gate=inverse",
        "truthprobe-shuffled": f"scores={files['scores']},alpha=6,gate=shuffled,seed=2",
        "truthprobe-raw-baked": f"scores={files['scores']},alpha=2,norm=raw,apply=bake",
        "truthprobe-paper-random": "gate=paper_random,seed=1",
        "truthprobe-paper-inverse": f"scores={files['scores']},gate=paper_inverse",
        "iti": f"method=iti,directions={files['directions']},k=4,alpha=15",
        "neurons": f"method=neurons,neurons={files['neurons']}",
        "rve": f"method=rve,ars={files['ars']},layers=0-1,k=2,alpha=0.5,beta=2",
        "diffmean": f"method=diffmean,vectors={files['vectors']},layers=0-1,alpha=8",
    }
    written = _lmms_eval_runs(setup, tmp_path, {name: {"model_args": f"{base},{settings}"} for name, settings in runs.items()})
    plain = _replies(written.pop("plain")[1])
    changed = {}
    for name, (results, samples) in written.items():
        recorded = results["config"]["intervention"]
        assert recorded["method"] == name.split("-")[0] and recorded["identity"] is False
        # the description rebuilds the intervention that ran (its file by path and content hash)
        assert from_description(recorded).describe() == recorded
        changed[name] = _replies(samples) != plain
    assert changed["truthprobe-random"] and changed["truthprobe-centered"], changed
    # the leaderboard and the paired tests read lmms-eval's folders as they read lm-eval's and VLMEvalKit's
    from truthprobe_eval.analysis import leaderboard as lb
    from truthprobe_eval.analysis.significance import compare_runs

    entries, _ = lb.collect([tmp_path / "plain", tmp_path / "truthprobe-random", tmp_path / "iti"])
    assert {e.harness for e in entries} == {"lmms-eval"} and {e.benchmark for e in entries} == {"pope_local_random"}
    assert {e.method for e in entries} >= {lb.VANILLA, lb.ITI} and all(e.samples for e in entries)
    assert all(e.sample_metric == "pope_accuracy" for e in entries)
    board = lb.build(entries)
    assert len(board.rows) == 3
    (paired,), _ = compare_runs(tmp_path / "plain", tmp_path / "truthprobe-random", metric="pope_parsed_accuracy")
    assert paired.n == 4 and paired.task == "pope_local_random"


@pytest.mark.slow
def test_qwen_vl_batched_and_gated(setup, tmp_path):
    """lmms-eval's Qwen2-VL / Qwen2.5-VL classes batch (four questions, two a batch); the gate changes answers."""
    scores = _files(setup)["scores"]
    runs = {f"{family}-{name}": {"model_args": f"pretrained={setup[family]},device=cpu,{settings}", "batch_size": 2}
            for family in ("qwen", "qwen25")
            for name, settings in {"plain": "method=none", "gated": f"scores={scores},alpha=6,norm=minmax"}.items()}
    written = _lmms_eval_runs(setup, tmp_path, runs)
    for family in ("qwen", "qwen25"):
        (_, plain), (gated_results, gated) = written[f"{family}-plain"], written[f"{family}-gated"]
        assert [s["doc_id"] for s in gated] == list(range(4)) and _replies(gated) != _replies(plain), family
        assert int(gated_results["config"]["batch_size"]) == 2
        assert gated_results["config"]["intervention"]["norm"] == "minmax"


@pytest.mark.slow
def test_chair_local_scores_every_caption_with_our_scorer(setup, tmp_path):
    from truthprobe_eval.tasks.chair import CHAIREvaluator

    from truthprobe_eval.analysis.significance import compare_runs

    base = f"pretrained={setup['llava']},device=cpu"
    runs = _lmms_eval_runs(setup, tmp_path, {
        # process_docs_parallel 1: one thread builds the CHAIR scorer once, rather than four at once
        name: {"model_args": f"{base},{settings}", "tasks": "chair_local", "limit": 3, "process_docs_parallel": 1}
        for name, settings in {"plain": "method=none", "gated": "gate=random,alpha=6,seed=1"}.items()})
    results, samples = runs["plain"]
    assert len(samples) == 3 and {s["chair_s"]["image_id"] for s in samples} == {7, 210789, 310196}
    # the reported numbers are our scorer's on the logged captions
    scored = CHAIREvaluator.from_coco(setup["annotations"], tmp_path / "cache").score(
        [{"image_id": s["chair_s"]["image_id"], "caption": s["chair_s"]["caption"]} for s in samples])
    metrics = results["results"]["chair_local"]
    assert metrics["chair_s,none"] == pytest.approx(scored["CHAIRs"]) and metrics["chair_i,none"] == pytest.approx(scored["CHAIRi"])
    assert metrics["chair_len,none"] == pytest.approx(scored["len"])
    assert [s["chair_s"]["score"] for s in samples] == [float(bool(c["hallucinated"])) for c in scored["per_caption"]]
    assert results["higher_is_better"]["chair_local"]["chair_s"] is False
    (paired,), _ = compare_runs(tmp_path / "plain", tmp_path / "gated", alternative="less")
    assert paired.n == 3 and paired.metric == "chair_s,none"


@pytest.mark.slow
def test_vlmevalkit_and_lmms_eval_give_the_same_answers(setup, tmp_path, monkeypatch):
    """The same intervention on the same tiny LLaVA and the same POPE questions through both harnesses. Their
    prompts meet here: lmms-eval's llava_hf sends the string "<image>\\n<question>" to the tokenizer's chat template,
    VLMEvalKit's runner (our TruthGatedVLM) sends [image, text] to the processor's; the tiny LLaVA's template (like
    llava-hf's own) renders both as "USER: <image>\\n<question> ASSISTANT:". Both append the same POPE suffix."""
    from truthprobe_eval.analysis.results_files import _read_table
    from truthprobe_eval.cli import main

    monkeypatch.setenv("LMUData", str(tmp_path))
    scores = _files(setup)["scores"]
    config = {"model": {"tiny": {"class": "TruthGatedVLM", "model_path": setup["llava"], "max_new_tokens": 4,
                                 "scores": scores, "alpha": 6.0}},
              "data": {"POPE_local": {"class": "POPELocal", "dataset": "POPE_local", "question_dir": setup["pope_dir"],
                                      "image_dir": setup["images"], "splits": "random"}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main(["vlmeval", "--config", str(tmp_path / "config.json"), "--work-dir", str(tmp_path / "vlm")]) == 0
    (predictions,) = [p for p in (tmp_path / "vlm" / "tiny").glob("tiny_POPE_local.*") if p.suffix in (".xlsx", ".tsv")]
    table = _read_table(predictions)
    vlmevalkit = {int(str(src).split(":")[1]): str(pred).strip() for src, pred in zip(table["source"], table["prediction"])}
    out = tmp_path / "lmms"
    _, samples = _written(_lmms_eval(setup, "truthgated", f"pretrained={setup['llava']},device=cpu,scores={scores},alpha=6",
                                     out, limit=12), out)
    lmms = {s["pope_accuracy"]["question_id"]: r.strip() for s, r in zip(samples, _replies(samples))}
    assert len(lmms) == 12 and all(lmms.values()) and lmms == vlmevalkit


@pytest.mark.slow
def test_two_cpu_processes_equal_one(setup, tmp_path):
    """``accelerate launch`` with two processes: each takes every second question, rank 0 gathers and scores."""
    args = f"pretrained={setup['llava']},device=cpu,gate=random,alpha=6,seed=1"
    one, one_samples = _written(_lmms_eval(setup, "truthgated", args, tmp_path / "one", limit=6), tmp_path / "one")
    run = _lmms_eval(setup, "truthgated", args, tmp_path / "two", limit=6, processes=2)
    assert "Building contexts for pope_local_random on rank 1" in run.stdout + run.stderr  # the work was split
    two, two_samples = _written(run, tmp_path / "two")
    assert two["results"]["pope_local_random"] == one["results"]["pope_local_random"]
    assert [s["doc_id"] for s in two_samples] == list(range(6)) and _replies(two_samples) == _replies(one_samples)
    assert two["config"]["intervention"] == one["config"]["intervention"]


@pytest.mark.slow
def test_a_wrong_score_shape_fails_before_evaluation(setup, tmp_path):
    wrong = TruthScores(np.full((3, 4), 0.6), meta={"model": "another-model"}).save(tmp_path / "wrong.json")
    run = _lmms_eval(setup, "truthgated", f"pretrained={setup['llava']},device=cpu,scores={wrong}", tmp_path / "out")
    said = run.stdout + run.stderr
    assert "Truth Scores of another-model have shape (3, 4)" in said and "(2, 4)" in said
    assert "Model Responding" not in said and not list((tmp_path / "out").glob("*/*_results.json"))


def test_missing_folders_and_images_fail_naming_the_variable(setup, tmp_path, monkeypatch):
    from truthprobe_eval.tasks.pope.lmms_eval_task import pope_rows
    from truthprobe_eval.tasks.vlmeval_local import LocalDatasetError

    monkeypatch.setenv("TRUTHPROBE_POPE_DIR", setup["pope_dir"])
    monkeypatch.delenv("TRUTHPROBE_COCO_IMAGES", raising=False)
    with pytest.raises(LocalDatasetError, match="TRUTHPROBE_COCO_IMAGES, found it unset"):
        pope_rows("random")
    monkeypatch.setenv("TRUTHPROBE_COCO_IMAGES", str(tmp_path))  # a folder without the images
    with pytest.raises(LocalDatasetError, match=r"\(TRUTHPROBE_COCO_IMAGES\): expected 2 image files, found 2 missing"):
        pope_rows("random")
    monkeypatch.setenv("TRUTHPROBE_POPE_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(LocalDatasetError, match=r"nowhere \(TRUTHPROBE_POPE_DIR\), found none"):
        pope_rows("random")
    monkeypatch.setenv("TRUTHPROBE_POPE_DIR", setup["pope_dir"])
    monkeypatch.setenv("TRUTHPROBE_COCO_IMAGES", setup["images"])
    rows = pope_rows("adversarial")
    assert len(rows) == 12 and {r["category"] for r in rows} == {"adversarial"}
    assert all(Path(r["image_path"]).is_file() and r["answer"] in ("yes", "no") for r in rows)


def test_lmms_eval_finds_the_model_and_only_its_own_tasks():
    """The entry point puts truthgated (and its alias) into lmms-eval's registry; lmms-eval's task manager indexes
    our lmms-eval folders and lm-eval's does not (and the other way round)."""
    from lm_eval.tasks import TaskManager as LmEvalTasks
    from lmms_eval.models import MODEL_REGISTRY_V2
    from lmms_eval.tasks import TaskManager as LmmsEvalTasks
    from truthprobe_eval.model_adapters.lmms_eval_truthgated import TruthGatedLMM

    assert MODEL_REGISTRY_V2.get_model_class("truthgated") is TruthGatedLMM
    assert MODEL_REGISTRY_V2.resolve("intervened").model_id == "truthgated"
    lmms_tasks = set(LmmsEvalTasks().all_tasks)
    assert {"pope_local", "pope_local_random", "pope_local_popular", "pope_local_adversarial"} <= lmms_tasks
    assert "halueval_qa" not in lmms_tasks
    lm_tasks = set(LmEvalTasks().all_tasks)
    assert "halueval_qa" in lm_tasks and "pope_local_random" not in lm_tasks


def test_installed_pth_hook_is_light_and_can_be_switched_off():
    """The .pth sits in site-packages after install; start-up installs the hook and imports nothing heavy;
    TRUTHPROBE_LMMS_EVAL_AUTOREGISTER=0 disables it (lmms-eval then runs without our tasks or the record)."""
    import sysconfig

    from truthprobe_eval.model_adapters import lmms_eval_registration as registration

    pth = Path(sysconfig.get_paths()["purelib"]) / registration.PTH_NAME
    assert pth.is_file(), f"{pth} missing: reinstall the package (pip install -e .)"
    assert pth.read_text(encoding="utf-8") == registration.pth_line()
    code = ("import sys; print(any(type(f).__name__ == '_TruthprobeLmmsEvalHook' for f in sys.meta_path), "
            "'torch' in sys.modules, 'lmms_eval' in sys.modules, 'truthprobe_eval' in sys.modules)")
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert on == ["True", "False", "False", "False"]
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, registration.DISABLE_ENV: "0"}).stdout.split()
    assert off[0] == "False"


def test_llava_batches_and_other_families_are_refused_before_loading(setup, tmp_path):
    """lmms-eval's llava_hf asserts batch_size 1 mid-run; the wrapper says so before the weights load."""
    from truthprobe_eval.model_adapters.lmms_eval_truthgated import TruthGatedLMM

    from truthprobe_eval.errors import TruthProbeError

    with pytest.raises(TruthProbeError, match="LlavaHf generates one request at a time; expected batch_size=1, found 4"):
        TruthGatedLMM(pretrained=setup["llava"], device="cpu", method="none", batch_size=4)
    with pytest.raises(TruthProbeError, match="expected a checkpoint of llava, llava_next, qwen2_5_vl, qwen2_vl"):
        TruthGatedLMM(pretrained=save_tiny("llama", tmp_path / "llama"), device="cpu", method="none")


def test_a_users_include_path_wins_over_our_task_names(tmp_path):
    """lmms-eval keeps the first folder that names a task: ours go after the user's include_path."""
    from lmms_eval.tasks import TaskManager

    (tmp_path / "mine.yaml").write_text("task: pope_local_random\ndataset_path: mine\noutput_type: generate_until\n")
    manager = TaskManager(include_path=str(tmp_path))
    assert manager.task_index["pope_local_random"]["yaml_path"] == str(tmp_path / "mine.yaml")
    assert "pope_local_adversarial" in manager.task_index
