"""The ``truthgated`` lm-eval model in-process with the real SmolLM2: argument checks before loading, equality with
``hf`` when ungated, hook == bake, gated generation, and the registration that makes the CLI see it."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from truthprobe_eval.model_adapters import lm_eval_registration as registration
from truthprobe_eval.model_adapters.lm_eval_truthgated import TruthGatedLM, parse_intervention_args

from truthprobe_eval import GateConfigError, ScoreFileError, ShapeMismatchError, TruthScores
from truthprobe_eval.errors import InterventionError

REQUESTS = [("Context:\nParis is the capital of France.\n\nQuestion: What is the capital of France?\nAnswer:", " Paris"),
            ("Question: Who wrote Hamlet?\nAnswer:", " William Shakespeare"),
            ("2 + 2 =", " 4")]
GEN = ("Question: What is the capital of France?\nAnswer:", {"until": ["\n"], "max_gen_toks": 6, "do_sample": False})


def _loglikelihoods(lm) -> list[float]:
    out = lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(REQUESTS)], disable_tqdm=True)
    return [ll for ll, _ in out]


def _generate(lm) -> str:
    return lm.generate_until([Instance("generate_until", {}, GEN, 0)], disable_tqdm=True)[0]


@pytest.fixture(scope="module")
def scores_file(tmp_path_factory) -> Path:
    values = np.random.default_rng(11).uniform(0.45, 0.95, size=(30, 9))
    return TruthScores(values, meta={"model": "synthetic-smollm2"}).save(tmp_path_factory.mktemp("scores") / "s.json")


@pytest.fixture(scope="module")
def hf_lm(smollm2):
    model, tok = smollm2
    return HFLM(pretrained=model, tokenizer=tok, batch_size=1)


@pytest.fixture(scope="module")
def gated_lm(smollm2, scores_file):
    """Hook mode on the shared model object (hooks leave the weights alone)."""
    model, tok = smollm2
    return TruthGatedLM(pretrained=model, tokenizer=tok, scores=str(scores_file), alpha=2.5, batch_size=1)


# ---- arguments, checked before the model loads ----------------------------------------------------------
# A missing checkpoint path would fail the load; getting the gate error instead shows the check came first.

@pytest.mark.parametrize("args, error, message", [
    ({"alpha": "abc"}, GateConfigError, "alpha: expected a finite number, found 'abc'"),
    ({"alpha": True}, GateConfigError, "alpha: expected a finite number, found True"),
    ({"norm": "centred"}, GateConfigError, "norm: expected one of centered, minmax, raw, found 'centred'"),
    ({"site": "o_proj"}, GateConfigError, "site: expected one of o_proj_output, o_proj_input, found 'o_proj'"),
    ({"gate": "truthprob"}, GateConfigError, "gate: expected one of truthprobe, random, inverse, shuffled, paper_random, paper_inverse, none, found 'truthprob'"),
    ({"apply": "baked"}, GateConfigError, "apply: expected one of hook, bake, found 'baked'"),
    ({"seed": "x"}, GateConfigError, "seed: expected an integer, found 'x'"),
    ({"scores": None}, GateConfigError, "scores: gate='truthprobe' needs Truth Scores, found none; pass scores=PATH"),
    ({"scores": None, "gate": "inverse"}, GateConfigError, "gate='inverse' needs Truth Scores"),
    ({"scores": "/no/such/scores.json"}, ScoreFileError, "score file not found: expected a .json, .npy or .csv file at /no/such/scores.json"),
])
def test_bad_gate_arguments_fail_before_loading(args, error, message, scores_file):
    kwargs = {"pretrained": "/no/such/model", "scores": str(scores_file), **args}
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        TruthGatedLM(**kwargs)


def test_gate_none_and_random_need_no_scores():
    assert parse_intervention_args(gate=None).kind == "none"  # lm-eval parses the string "none" into None
    assert parse_intervention_args(gate="random", seed="3").settings["seed"] == 3
    assert parse_intervention_args(scores=None, gate="none").scores is None
    assert parse_intervention_args(gate=None).identity and not parse_intervention_args(gate="random").identity


def test_scores_of_another_model_name_both_shapes(tmp_path):
    other = TruthScores(np.full((18, 4), 0.6), meta={"model": "google/gemma-3-270m"}).save(tmp_path / "gemma.json")
    with pytest.raises(ShapeMismatchError, match=r"Truth Scores of google/gemma-3-270m have shape \(18, 4\).*"
                                                 r"smollm2-135m-instruct has \(30, 9\)"):
        TruthGatedLM(pretrained="smollm2-135m-instruct", scores=str(other))


# ---- numbers ---------------------------------------------------------------------------------------------

def test_gate_none_and_alpha_zero_equal_hf(smollm2, hf_lm, scores_file):
    model, tok = smollm2
    reference = _loglikelihoods(hf_lm)
    ungated = TruthGatedLM(pretrained=model, tokenizer=tok, gate="none", batch_size=1)
    zero = TruthGatedLM(pretrained=model, tokenizer=tok, scores=str(scores_file), alpha=0, batch_size=1)
    assert _loglikelihoods(ungated) == reference
    assert _loglikelihoods(zero) == reference
    assert _generate(ungated) == _generate(hf_lm)


def _hook_ids(model) -> dict:
    # transformers 5 installs its own output-capturing hooks for good the first time hidden states are asked for:
    # compare against what was there before, so only hooks the intervention added count
    return {name: (list(m._forward_hooks), list(m._forward_pre_hooks)) for name, m in model.named_modules()}


def test_gating_changes_loglikelihoods_and_generations_and_hooks_go_away(smollm2, hf_lm, gated_lm):
    before = _hook_ids(smollm2[0])
    gated = _loglikelihoods(gated_lm)
    assert max(abs(a - b) for a, b in zip(gated, _loglikelihoods(hf_lm))) > 1e-2
    strong = TruthGatedLM(pretrained=smollm2[0], tokenizer=smollm2[1], gate="random", alpha=6.0, seed=1, batch_size=1)
    assert _generate(strong) != _generate(hf_lm)  # alpha 6 flips some heads' signs: intended here, and not warned
    assert _hook_ids(smollm2[0]) == before  # nothing left behind between calls


def test_hook_equals_bake(gated_lm, scores_file):
    baked = TruthGatedLM(pretrained="smollm2-135m-instruct", scores=str(scores_file), alpha=2.5, apply="bake",
                         batch_size=1, device="cpu")
    assert np.allclose(_loglikelihoods(baked), _loglikelihoods(gated_lm), atol=1e-4)
    assert _generate(baked) == _generate(gated_lm)
    assert baked.model.config.truthprobe_interventions[-1]["alpha"] == 2.5
    with pytest.raises(InterventionError, match="apply=bake: the intervention is folded into the weights"):
        baked.set_gate(gate="none")
    info = baked.get_model_info()["intervention"]
    assert info["method"] == "truthprobe" and info["apply"] == "bake" and info["gate"] == "truthprobe"
    assert info["scores"] == str(scores_file)
    assert baked.model.config.truthprobe_interventions[-1]["alpha"] == 2.5


def test_set_gate_switches_between_evaluations(smollm2, hf_lm, scores_file):
    lm = TruthGatedLM(pretrained=smollm2[0], tokenizer=smollm2[1], gate="none", batch_size=1)
    reference = _loglikelihoods(hf_lm)
    lm.set_gate(scores=str(scores_file), alpha=2.5, norm="minmax")
    assert _loglikelihoods(lm) != reference
    lm.set_gate(gate="none")
    assert _loglikelihoods(lm) == reference
    with pytest.raises(ShapeMismatchError):
        lm.set_gate(scores=TruthScores(np.ones((2, 2)), meta={"model": "tiny"}))


# ---- registration ----------------------------------------------------------------------------------------

def test_register_is_idempotent_and_leaves_managers_without_defaults_alone():
    """(That managers with lm-eval's defaults index our tasks is shown by the CLI test, without --include_path.)"""
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    registration.register()
    registration.register()
    assert get_model("truthgated") is TruthGatedLM
    init = TaskManager.__init__
    registration.add_tasks_to_task_manager()
    assert TaskManager.__init__ is init  # wrapped once only
    bare = TaskManager(include_path=str(registration.tasks_dir() / "truthfulqa"), include_defaults=False)
    assert "truthfulqa_local_mc1" in bare.all_tasks and "halueval_qa" not in bare.all_tasks


def test_installed_pth_file_and_lazy_startup():
    """After ``pip install`` the .pth sits in site-packages; start-up installs the hook and imports nothing heavy."""
    pth = Path(sysconfig.get_paths()["purelib"]) / registration.PTH_NAME
    assert pth.is_file(), f"{pth} missing: reinstall the package (pip install -e .) so that lm_eval sees truthgated"
    assert pth.read_text(encoding="utf-8") == registration.pth_line()
    code = ("import sys; print(any(type(f).__name__ == '_TruthprobeLmEvalHook' for f in sys.meta_path), "
            "'torch' in sys.modules, 'lm_eval' in sys.modules, 'truthprobe_eval' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False", "False", "False"]
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, registration.DISABLE_ENV: "0"}).stdout.split()
    assert off[0] == "False"
    code = ("import sys; from lm_eval.api.registry import get_model, model_registry as r; get_model('hf'); "
            "print(r._objs['truthgated'], 'torch' in sys.modules and 'truthprobe_eval.gating' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    # lm-eval's own models stay visible, ours is a lazy placeholder: nothing of ours imported until it is used
    assert out == [registration.MODEL_TARGET, "False"]


def test_cpu_rank_and_world_size_default_to_one(gated_lm):
    assert gated_lm.rank == 0 and gated_lm.world_size == 1
    assert gated_lm.device == torch.device("cpu")
