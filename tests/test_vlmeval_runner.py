"""POPE and CHAIR end to end through VLMEvalKit's own runner (vlmeval/run.py: its infer_data_job, then the data
set's evaluate), gated and not, with tiny MLLMs: through `truthprobe vlmeval` (--config JSON and --model with
environment settings) and through the stock `python -m vlmeval` with the .pth start-up hook."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import save_tiny_mllm, shared_pope_rows, write_pope_questions, write_synthetic_coco

from truthprobe_eval.cli import main
from truthprobe_eval.scores import TruthScores

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
POPE_IMAGES = ["COCO_val2014_000000310196.jpg", "COCO_val2014_000000210789.jpg"]


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("LMUData", str(tmp_path))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_dir):
    root = tmp_path_factory.mktemp("vlm_runner")
    rows = shared_pope_rows(shared_dir, POPE_IMAGES)
    assert all(len(r) == 12 for r in rows.values())
    pope_dir = write_pope_questions(root / "pope", rows)
    ids = [int(name[-16:-4]) for name in POPE_IMAGES]
    objects = {ids[0]: ["person", "dog"], ids[1]: ["cat", "couch"], 7: ["car", "bicycle"]}
    captions = {ids[0]: ["A man skiing with a dog."], ids[1]: ["A cat on a sofa."], 7: ["A car and a bike."]}
    image_dir, ann_dir = write_synthetic_coco(root / "coco", objects, captions)
    scores = TruthScores(np.random.default_rng(1).uniform(0.45, 0.95, size=(2, 4)), meta={"model": "synthetic-2x4"})
    return {
        "root": root, "pope_dir": str(pope_dir), "images": str(image_dir), "annotations": str(ann_dir),
        "llava": save_tiny_mllm("llava", root / "llava"), "qwen": save_tiny_mllm("qwen2_vl", root / "qwen2_vl"),
        "scores": str(scores.save(root / "scores.json")),
    }


def _config(setup, work: Path) -> Path:
    common = {"class": "TruthGatedVLM", "model_path": setup["llava"], "max_new_tokens": 1,
              "dataset_max_new_tokens": {"CHAIR_local": 12}}
    config = {
        "model": {
            "tiny_llava_gated": {**common, "scores": setup["scores"], "alpha": 3.5, "norm": "centered"},
            "tiny_llava_plain": {**common, "gate": "none"},
        },
        "data": {
            "POPE_local": {"class": "POPELocal", "dataset": "POPE_local", "question_dir": setup["pope_dir"],
                           "image_dir": setup["images"]},
            "CHAIR_local": {"class": "CHAIRLocal", "dataset": "CHAIR_local", "image_dir": setup["images"],
                            "annotations_dir": setup["annotations"], "n_images": 3, "cache_dir": str(work / "chair_cache")},
        },
    }
    path = work / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_config_run_gated_and_plain(setup, tmp_path):
    work = tmp_path / "out"
    rc = main(["vlmeval", "--config", str(_config(setup, tmp_path)), "--work-dir", str(work)])
    assert rc == 0
    preds, metrics = {}, {}
    for name in ("tiny_llava_gated", "tiny_llava_plain"):
        folder = work / name
        status = json.loads((folder / "status.json").read_text())["datasets"]
        assert {k: v.get("error_message") for k, v in status.items()} == {"POPE_local": None, "CHAIR_local": None}
        pope = pd.read_excel(folder / f"{name}_POPE_local.xlsx")
        # 2 images x 6 questions x 3 splits = 36 published questions, asked once each: 6 yes + the distinct no's
        assert len(pope) == len(set(zip(pope["image_name"], pope["question"])))
        assert 6 < len(pope) < 36
        preds[name] = list(pope["prediction"])
        report = json.loads((folder / f"{name}_POPE_local_pope.json").read_text())
        splits = report["metrics"]["splits"]
        assert list(splits) == ["random", "popular", "adversarial"] and all(s["n"] == 12 for s in splits.values())
        assert report["metrics"]["mean"]["f1"] == pytest.approx(np.mean([s["f1"] for s in splits.values()]))
        # our pooled numbers are VLMEvalKit's POPE_rating "Overall" row of the same run
        theirs = pd.read_csv(folder / f"{name}_POPE_local_score.csv").set_index("split")
        assert 100 * report["metrics"]["overall"]["f1"] == pytest.approx(theirs.loc["Overall", "Overall"])
        assert 100 * report["metrics"]["overall"]["accuracy"] == pytest.approx(theirs.loc["Overall", "acc"])
        chair = json.loads((folder / f"{name}_CHAIR_local_chair.json").read_text())
        assert chair["n_captions"] + sum(chair["skipped"].values()) == 3
        record = json.loads((folder / "intervention.json").read_text())
        assert record["dataset_max_new_tokens"] == {"CHAIR_local": 12} and record["max_new_tokens"] == 1
        metrics[name] = chair
        captions = pd.read_excel(folder / f"{name}_CHAIR_local.xlsx")["prediction"]
        assert all(1 <= len(str(c).split()) <= 12 for c in captions)  # one word a token in the tiny vocabulary
    assert preds["tiny_llava_gated"] != preds["tiny_llava_plain"]
    assert [c["caption"] for c in metrics["tiny_llava_gated"]["per_caption"]] != [c["caption"] for c in metrics["tiny_llava_plain"]["per_caption"]]


def test_model_name_with_command_options(setup, tmp_path):
    """`--model <name>` (a supported_VLM entry): checkpoint and gate from the command's options, which it writes
    into the VLMEvalKit config the run describes itself with."""
    work = tmp_path / "out"
    rc = main(["vlmeval", "--hf-model", setup["qwen"], "--scores", setup["scores"], "--alpha", "3.5",
               "--max-new-tokens", "1", "--pope-dir", setup["pope_dir"], "--coco-images", setup["images"],
               "--pope-limit", "3", "--model", "Qwen2-VL-2B-Instruct_truthprobe", "--data", "POPE_local",
               "--work-dir", str(work)])
    assert rc == 0
    written = json.loads((work / "truthprobe_vlmeval_config.json").read_text())  # the run describes itself
    assert written["model"]["Qwen2-VL-2B-Instruct_truthprobe"] == {
        "class": "TruthGatedVLM", "model_path": setup["qwen"], "scores": setup["scores"], "alpha": "3.5", "max_new_tokens": "1"}
    assert written["data"]["POPE_local"]["limit_per_split"] == "3"
    folder = work / "Qwen2-VL-2B-Instruct_truthprobe"
    pope = pd.read_excel(folder / "Qwen2-VL-2B-Instruct_truthprobe_POPE_local.xlsx")
    assert 3 <= len(pope) <= 9  # 3 sampled per split, merged where shared
    table = pd.read_csv(folder / "Qwen2-VL-2B-Instruct_truthprobe_POPE_local_pope.csv").set_index("split")
    assert list(table.index) == ["random", "popular", "adversarial", "mean", "overall"]
    assert (table.loc[["random", "popular", "adversarial"], "n"] == 3).all()


def test_errors_before_and_during_the_run(setup, tmp_path, capsys):
    smol = TruthScores(np.full((30, 9), 0.6), meta={"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}).save(tmp_path / "smol.json")
    work = tmp_path / "out"
    rc = main(["vlmeval", "--hf-model", setup["llava"], "--scores", str(smol), "--model", "truthprobe_hf",
               "--data", "POPE_local", "--work-dir", str(work)])
    err = capsys.readouterr().err
    assert rc == 2 and "SmolLM2-135M-Instruct" in err and "(30, 9)" in err and "(2, 4)" in err
    assert not work.exists()  # failed before VLMEvalKit started
    rc = main(["vlmeval", "--hf-model", setup["llava"], "--gate", "none", "--model", "truthprobe_hf", "--use-vllm",
               "--data", "POPE_local"])
    assert rc == 2 and "--use-vllm" in capsys.readouterr().err
    # a data set that fails inside VLMEvalKit (it logs and goes on): reported, exit status 1
    rc = main(["vlmeval", "--hf-model", setup["llava"], "--gate", "none", "--pope-dir", str(tmp_path / "missing"),
               "--coco-images", setup["images"], "--model", "truthprobe_hf", "--data", "POPE_local", "--work-dir", str(work)])
    assert rc == 1 and "config key 'question_dir'" in capsys.readouterr().err


def test_list(capsys):
    assert main(["vlmeval", "--list"]) == 0
    out = capsys.readouterr().out
    assert "llava_v1.5_7b_truthprobe" in out and "POPE_local" in out and "TruthGatedVLM" in out


def _site_with_pth(tmp_path) -> Path:
    from truthprobe_eval.model_adapters.vlmeval_registration import PTH_NAME, pth_line

    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / PTH_NAME).write_text(pth_line(), encoding="utf-8")
    return site_dir


def test_pth_hook_is_light_and_can_be_switched_off(tmp_path):
    """The start-up line imports neither torch nor this package; TRUTHPROBE_VLMEVAL_AUTOREGISTER=0 disables it."""
    code = ("import site, sys; site.addsitedir(sys.argv[1]); "
            "print(any(type(f).__name__ == '_TruthprobeVlmevalHook' for f in sys.meta_path), "
            "'torch' in sys.modules, 'truthprobe_eval' in sys.modules)")
    site_dir = str(_site_with_pth(tmp_path))
    on = subprocess.run([sys.executable, "-c", code, site_dir], capture_output=True, text=True, check=True)
    assert on.stdout.split() == ["True", "False", "False"]
    env = dict(os.environ, TRUTHPROBE_VLMEVAL_AUTOREGISTER="0")
    off = subprocess.run([sys.executable, "-c", code, site_dir], capture_output=True, text=True, check=True, env=env)
    assert off.stdout.split() == ["False", "False", "False"]


@pytest.mark.slow
def test_stock_runner_with_pth_hook(setup, tmp_path):
    """VLMEvalKit's own `python -m vlmeval` entry; the only addition is our .pth start-up line (processed here by
    site.addsitedir, as Python does for site-packages at start-up)."""
    work = tmp_path / "out"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "model": {"truthprobe_hf": {"class": "TruthGatedVLM", "model_path": setup["llava"], "gate": "none",
                                    "max_new_tokens": 1}},
        "data": {"POPE_local": {"class": "POPELocal", "dataset": "POPE_local", "question_dir": setup["pope_dir"],
                                "image_dir": setup["images"], "limit_per_split": 2}}}))
    code = ("import site, sys; site.addsitedir(sys.argv.pop(1)); "
            "import runpy; runpy.run_module('vlmeval', run_name='__main__', alter_sys=True)")
    proc = subprocess.run([sys.executable, "-c", code, str(_site_with_pth(tmp_path)), "--config", str(config),
                           "--work-dir", str(work)],
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads((work / "truthprobe_hf" / "status.json").read_text())["datasets"]["POPE_local"]
    assert status.get("error_message") is None and status["status"] == "done"
    table = pd.read_csv(work / "truthprobe_hf" / "truthprobe_hf_POPE_local_pope.csv").set_index("split")
    assert (table.loc[["random", "popular", "adversarial"], "n"] == 2).all()


def test_iti_through_the_runner_and_the_leaderboard_reads_what_ran(setup, tmp_path):
    """method=iti through VLMEvalKit's own runner; the work folder records the intervention for the leaderboard."""
    from truthprobe_eval import load_model, locate_heads
    from truthprobe_eval.analysis import leaderboard as lb
    from truthprobe_eval.directions import ITIDirections

    sites = locate_heads(load_model(setup["llava"])[0])
    shape = (sites.num_layers, sites.num_heads, sites.head_dim)
    rng = np.random.default_rng(4)
    unit = rng.standard_normal(shape)
    unit /= np.linalg.norm(unit, axis=-1, keepdims=True)
    directions = ITIDirections(unit, np.full(shape[:2], 3.0), rng.uniform(0.5, 1, shape[:2]), unit,
                               np.full(shape[:2], 3.0), meta={"model": "tiny-llava"}).save(tmp_path / "iti.json")
    work = tmp_path / "out"
    rc = main(["vlmeval", "--hf-model", setup["llava"], "--method", "iti", "--method-args",
               f"directions={directions},k=4,alpha=8", "--max-new-tokens", "1", "--pope-dir", setup["pope_dir"],
               "--coco-images", setup["images"], "--pope-limit", "2", "--model", "truthprobe_hf", "--data", "POPE_local",
               "--work-dir", str(work)])
    assert rc == 0
    record = json.loads((work / "truthprobe_hf" / "intervention.json").read_text())
    assert record["model"] == setup["llava"] and record["intervention"]["method"] == "iti"
    assert record["intervention"]["k"] == 4 and len(record["intervention"]["heads"]) == 4
    entries, _ = lb.collect([work])
    assert {(e.model, e.method, e.settings) for e in entries} == {("llava", lb.ITI, "K=4, alpha=8")}


def test_neurons_through_the_runner(setup, tmp_path):
    """method=neurons (and its random control) through VLMEvalKit's own runner, recorded for the leaderboard."""
    from truthprobe_eval import load_model, locate_heads
    from truthprobe_eval.analysis import leaderboard as lb
    from truthprobe_eval.neuron_scores import select_neurons

    sites = locate_heads(load_model(setup["llava"])[0])
    diffs = np.random.default_rng(5).normal(0.2, 1, (8, sites.num_layers, sites.mlp_width))
    neurons = select_neurons(diffs, p_threshold=0.2, meta={"model": "tiny-llava"}).save(tmp_path / "neurons.json")
    for control in ("none", "random"):
        work = tmp_path / control
        rc = main(["vlmeval", "--hf-model", setup["llava"], "--method", "neurons", "--method-args",
                   f"neurons={neurons},control={control}", "--max-new-tokens", "1", "--pope-dir", setup["pope_dir"],
                   "--coco-images", setup["images"], "--pope-limit", "2", "--model", "truthprobe_hf", "--data",
                   "POPE_local", "--work-dir", str(work)])
        assert rc == 0
        record = json.loads((work / "truthprobe_hf" / "intervention.json").read_text())["intervention"]
        assert record["method"] == "neurons" and record["control"] == control and record["n_neurons"] > 0
    entries, _ = lb.collect([tmp_path / "none", tmp_path / "random"])
    assert {e.method for e in entries} == {lb.NEURONS, "truth neurons, random"}


@pytest.mark.slow
def test_torchrun_two_cpu_processes_equal_one(setup, tmp_path):
    """VLMEvalKit's data parallelism (``torchrun``: each process infers its share, rank 0 merges and scores) with
    our gated model: two CPU processes give the single process's predictions and POPE table. VLMEvalKit asks for
    NCCL, which needs GPUs; ``truthprobe vlmeval`` hands it gloo when none is visible (and says so)."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "model": {"tiny": {"class": "TruthGatedVLM", "model_path": setup["llava"], "max_new_tokens": 3,
                           "scores": setup["scores"], "alpha": 3.5}},
        "data": {"POPE_local": {"class": "POPELocal", "dataset": "POPE_local", "question_dir": setup["pope_dir"],
                                "image_dir": setup["images"], "splits": "random,adversarial"}}}))
    env = dict(os.environ, OMP_NUM_THREADS="1", LMUData=str(tmp_path), CUDA_VISIBLE_DEVICES="")
    outputs = {}
    for name, launch in {"one": [sys.executable, "-m"],
                         "two": [str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node", "2", "-m"]}.items():
        work = tmp_path / name
        proc = subprocess.run([*launch, "truthprobe_eval", "vlmeval", "--config", str(config), "--work-dir", str(work)],
                              env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs[name] = (pd.read_excel(work / "tiny" / "tiny_POPE_local.xlsx").sort_values("index"),
                         (work / "tiny" / "tiny_POPE_local_pope.csv").read_text(), proc.stderr)
    assert "Rank 1/2" in outputs["two"][2] and "runs over gloo" in outputs["two"][2]  # the work really was split
    assert len(outputs["one"][0]) > 12  # 24 questions, the ones both splits ask merged
    assert outputs["two"][0]["prediction"].tolist() == outputs["one"][0]["prediction"].tolist()
    assert outputs["two"][1] == outputs["one"][1]
