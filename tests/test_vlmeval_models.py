"""The gated VLMEvalKit model (TruthGatedVLM) on tiny random-initialized MLLMs saved with their processors and
loaded through truthprobe_eval.load_model (the users' path): LLaVA, LLaVA-NeXT, Qwen2-VL, Idefics3; a LLaVA whose
language model has SmolLM2-135M's shape, gated by real SmolLM2 Truth Scores; settings from config or environment;
shape mismatches; registration in VLMEvalKit's lookup tables."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from tiny_models import save_tiny_mllm, write_synthetic_coco

from truthprobe_eval.errors import GateConfigError, ShapeMismatchError, TruthProbeError
from truthprobe_eval.scores import TruthScores

torch.set_num_threads(1)
QUESTIONS = ["Is there a dog in the image?", "Is there a person in the image?", "Please describe this image in detail."]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in [k for k in os.environ if k.startswith("TRUTHPROBE_") and k != "TRUTHPROBE_CACHE"]:
        monkeypatch.delenv(var)


@pytest.fixture(scope="module")
def vlmeval_registered():
    from truthprobe_eval.model_adapters.vlmeval_registration import register

    register()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm_models")
    image_dir, _ = write_synthetic_coco(root / "coco", {1: ["dog"], 2: ["cat"], 3: ["car"]})
    images = sorted(str(p) for p in image_dir.iterdir())
    scores = TruthScores(np.random.default_rng(0).uniform(0.45, 0.95, size=(2, 4)), meta={"model": "synthetic-2x4"})
    return {"root": root, "images": images, "scores": str(scores.save(root / "scores_2x4.json"))}


@pytest.fixture(scope="module")
def llava(assets):
    return save_tiny_mllm("llava", assets["root"] / "llava")


def _messages(images):
    return [[dict(type="image", value=img), dict(type="text", value=q)] for img in images for q in QUESTIONS]


def _replies(model, images):
    return [model.generate(m) for m in _messages(images)]


def test_registered_where_vlmevalkit_looks(vlmeval_registered):
    import vlmeval.config
    import vlmeval.dataset
    import vlmeval.vlm
    from truthprobe_eval.model_adapters.vlmeval_gated import TruthGatedVLM

    assert vlmeval.vlm.TruthGatedVLM is TruthGatedVLM
    entry = vlmeval.config.supported_VLM["llava_v1.5_7b_truthprobe"]
    assert entry.func is TruthGatedVLM and entry.keywords == {"default_model_path": "llava-hf/llava-1.5-7b-hf"}
    for name in ("Qwen2.5-VL-7B-Instruct_truthprobe", "llava_next_vicuna_7b_truthprobe", "SmolVLM-256M_truthprobe", "truthprobe_hf"):
        assert name in vlmeval.config.supported_VLM
    for name in ("POPE_local", "POPE_aokvqa_local", "POPE_gqa_local", "CHAIR_local", "GQA_local", "OmniMedVQA_local"):
        assert name in vlmeval.dataset.SUPPORTED_DATASETS
    assert vlmeval.dataset.DATASET_TYPE("CHAIR_local") == "Caption"
    assert vlmeval.dataset.POPELocal.__name__ == "POPELocal"


def test_llava_gated_differs_and_hook_equals_bake(vlmeval_registered, assets, llava):
    from truthprobe_eval.model_adapters.vlmeval_gated import TruthGatedVLM

    plain = TruthGatedVLM(model_path=llava, gate="none", max_new_tokens=6)
    assert plain.family.name == "llava"
    text, paths = plain.prompt_text(_messages(assets["images"][:1])[0])
    assert text == "USER: <image>\nIs there a dog in the image? ASSISTANT:" and paths == assets["images"][:1]
    base = _replies(plain, assets["images"])
    assert len(set(base)) > 1  # replies depend on the input
    hooked = TruthGatedVLM(model_path=llava, scores=assets["scores"], alpha=6.0, max_new_tokens=6)
    gated = _replies(hooked, assets["images"])
    assert gated != base
    assert hooked.gates.shape == (2, 4)
    baked = TruthGatedVLM(model_path=llava, scores=assets["scores"], alpha=6.0, apply="bake", max_new_tokens=6)
    assert _replies(baked, assets["images"]) == gated
    assert baked.model.config.truthprobe_interventions[-1]["alpha"] == 6.0
    hooked.close()  # hooks removed: the plain model again
    assert _replies(hooked, assets["images"]) == base
    # gate "none" and alpha 0 are the same ungated model
    zero = TruthGatedVLM(model_path=llava, scores=assets["scores"], alpha=0.0, max_new_tokens=6)
    assert _replies(zero, assets["images"]) == base


@pytest.mark.parametrize("family,expected_start", [
    ("qwen2_vl", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Is there"),
    ("idefics3", "<|im_start|>User:<image>Is there a dog"),
    ("llava_next", "USER: <image>\nIs there a dog"),
])
def test_other_families(vlmeval_registered, assets, family, expected_start):
    from truthprobe_eval.model_adapters.vlmeval_gated import TruthGatedVLM

    path = save_tiny_mllm(family, assets["root"] / family)
    plain = TruthGatedVLM(model_path=path, gate="none", max_new_tokens=5)
    text, _ = plain.prompt_text(_messages(assets["images"][:1])[0])
    assert text.startswith(expected_start)
    gated = TruthGatedVLM(model_path=path, scores=assets["scores"], alpha=6.0, max_new_tokens=5)
    base, out = _replies(plain, assets["images"]), _replies(gated, assets["images"])
    assert all(isinstance(r, str) for r in base) and out != base
    assert plain.describe()["family"] == family


def test_qwen_pixel_budget(vlmeval_registered, assets):
    """min_pixels / max_pixels reach the Qwen2-VL image processor (more pixels, more image tokens)."""
    from PIL import Image
    from truthprobe_eval.model_adapters.vlmeval_gated import TruthGatedVLM


    path = save_tiny_mllm("qwen2_vl", assets["root"] / "qwen_pixels")
    grids = []
    for pixels in (56 * 56, 112 * 112):
        model = TruthGatedVLM(model_path=path, gate="none", max_new_tokens=2, min_pixels=pixels, max_pixels=pixels)
        text, paths = model.prompt_text(_messages(assets["images"][:1])[0])
        inputs = model.processor(text=[text], images=[Image.open(paths[0]).convert("RGB")], return_tensors="pt",
                                 **model.processor_kwargs)
        grids.append(inputs["image_grid_thw"].tolist())
        assert isinstance(model.generate(_messages(assets["images"][:1])[0]), str)
    assert grids == [[[1, 4, 4]], [[1, 8, 8]]]  # 14-pixel patches of a 56 x 56 and a 112 x 112 image
    with pytest.raises(TruthProbeError, match="only for the Qwen2-VL family"):
        TruthGatedVLM(model_path=save_tiny_mllm("llava", assets["root"] / "llava_px"), gate="none", max_pixels=100)


def test_settings_from_environment_and_config(vlmeval_registered, assets, llava, monkeypatch):
    import vlmeval.config
    from vlmeval.run import build_model_from_config

    monkeypatch.setenv("TRUTHPROBE_SCORES", assets["scores"])
    monkeypatch.setenv("TRUTHPROBE_ALPHA", "2.5")
    monkeypatch.setenv("TRUTHPROBE_NORM", "minmax")
    monkeypatch.setenv("TRUTHPROBE_MODEL_PATH", llava)
    monkeypatch.setenv("TRUTHPROBE_MAX_NEW_TOKENS", "3")
    # a supported_VLM entry, built the way VLMEvalKit's inference builds it (Qwen2-VL names get use_vllm)
    model = vlmeval.config.supported_VLM["Qwen2-VL-2B-Instruct_truthprobe"](use_vllm=False)
    assert model.model_path == llava and model.max_new_tokens == 3
    described = model.intervention.describe()
    assert {k: described[k] for k in ("method", "scores", "alpha", "norm", "site", "gate", "seed", "apply")} == {
        "method": "truthprobe", "scores": assets["scores"], "alpha": 2.5, "norm": "minmax", "site": "o_proj_output",
        "gate": "truthprobe", "seed": 0, "apply": "hook"}
    assert model.describe()["intervention"] == described
    # a JSON --config entry: its keys beat the environment
    cfg = {"gated": {"class": "TruthGatedVLM", "model_path": llava, "alpha": 1.5, "norm": "centered", "gate": "inverse"}}
    built = build_model_from_config(cfg, "gated")
    settings = built.intervention.settings
    assert (settings["alpha"], settings["norm"], settings["gate"]) == (1.5, "centered", "inverse")
    assert settings["scores"] == assets["scores"]
    monkeypatch.setenv("TRUTHPROBE_NORM", "zscore")
    with pytest.raises(GateConfigError, match="TRUTHPROBE_NORM.*found 'zscore'"):
        vlmeval.config.supported_VLM["truthprobe_hf"]()
    monkeypatch.delenv("TRUTHPROBE_NORM")
    monkeypatch.setenv("TRUTHPROBE_ALPHA", "strong")
    with pytest.raises(GateConfigError, match="alpha"):
        vlmeval.config.supported_VLM["truthprobe_hf"]()
    monkeypatch.delenv("TRUTHPROBE_ALPHA")
    monkeypatch.delenv("TRUTHPROBE_SCORES")
    with pytest.raises(GateConfigError, match="TRUTHPROBE_SCORES"):
        vlmeval.config.supported_VLM["truthprobe_hf"]()
    # the same parser as lm-eval: a random gate takes its shape from the model and needs no scores
    monkeypatch.setenv("TRUTHPROBE_GATE", "random")
    random_gate = vlmeval.config.supported_VLM["truthprobe_hf"]()
    assert random_gate.intervention.settings["gate"] == "random" and random_gate.gates.shape == (2, 4)
    monkeypatch.setenv("TRUTHPROBE_METHOD", "itti")
    with pytest.raises(TruthProbeError, match="method: expected one of iti, neurons, none, rve, truthprobe, found 'itti'"):
        vlmeval.config.supported_VLM["truthprobe_hf"]()


def test_shape_mismatch_named_before_weights_load(vlmeval_registered, assets, llava, tmp_path):
    import shutil

    from truthprobe_eval.model_adapters.vlmeval_gated import TruthGatedVLM

    smol = TruthScores(np.full((30, 9), 0.6), meta={"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}).save(tmp_path / "smol.json")
    # a copy of the checkpoint without its weights: the error must come from the config alone
    config_only = tmp_path / "config_only"
    shutil.copytree(llava, config_only, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(ShapeMismatchError) as err:
        TruthGatedVLM(model_path=str(config_only), scores=str(smol))
    assert "SmolLM2-135M-Instruct" in str(err.value) and "(30, 9)" in str(err.value)
    assert str(config_only) in str(err.value) and "(2, 4)" in str(err.value)


@pytest.fixture(scope="module")
def llava_smollm2_shape(assets):
    """A tiny LLaVA whose language model has SmolLM2-135M's attention shape: 30 layers x 9 heads (3 KV), head_dim 64."""
    return save_tiny_mllm("llava", assets["root"] / "llava_smollm2_shape", layers=30, heads=9, kv_heads=3, hidden=576, head_dim=64)


@pytest.fixture(scope="module")
def smollm2_scores(request, tmp_path_factory):
    """Real Truth Scores of SmolLM2-135M-Instruct: probes on its heads over a few HaluEval rows (the real
    probing pipeline; few rows, so the values are noisy, but they are SmolLM2's and of its shape)."""
    pytest.importorskip("truthprobe_eval.probing.trainers", reason="the probing trainers (probing/trainers.py) are not in this checkout yet")
    from truthprobe_eval.probing.data import halueval_examples
    from truthprobe_eval.probing.pipeline import probe_model

    model, tokenizer = request.getfixturevalue("smollm2")
    scores = probe_model(model, tokenizer, halueval_examples(n=16), n_folds=2, epochs=20, progress=False, cache_dir=None)
    return str(scores.save(tmp_path_factory.mktemp("smol_scores") / "smollm2.json"))


def test_llava_of_smollm2_shape_gated_by_30x9_scores(vlmeval_registered, assets, llava, llava_smollm2_shape, tmp_path):
    from truthprobe_eval.model_adapters.vlmeval_gated import TruthGatedVLM

    from truthprobe_eval import locate_heads

    scores = TruthScores(np.random.default_rng(3).uniform(0.5, 0.8, size=(30, 9)),
                         meta={"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}).save(tmp_path / "s30x9.json")
    plain = TruthGatedVLM(model_path=llava_smollm2_shape, gate="none", max_new_tokens=4)
    sites = locate_heads(plain.model)
    assert (sites.num_layers, sites.num_heads, sites.head_dim, sites.hidden_size) == (30, 9, 64, 576)
    gated = TruthGatedVLM(model_path=llava_smollm2_shape, scores=str(scores), alpha=2.5, max_new_tokens=4)
    assert gated.gates.shape == (30, 9)
    assert _replies(gated, assets["images"]) != _replies(plain, assets["images"])


@pytest.mark.slow
def test_real_smollm2_scores_transfer_to_its_llava_shape(vlmeval_registered, assets, llava, llava_smollm2_shape, smollm2_scores):
    """Transfer: scores probed on the base LLM (real SmolLM2) gate the language model of an MLLM of its shape."""
    from truthprobe_eval.model_adapters.vlmeval_gated import TruthGatedVLM

    scores = TruthScores.load(smollm2_scores)
    assert scores.shape == (30, 9) and "SmolLM2" in scores.model
    plain = TruthGatedVLM(model_path=llava_smollm2_shape, gate="none", max_new_tokens=4)
    gated = TruthGatedVLM(model_path=llava_smollm2_shape, scores=smollm2_scores, alpha=2.5, max_new_tokens=4)
    assert _replies(gated, assets["images"]) != _replies(plain, assets["images"])
    with pytest.raises(ShapeMismatchError, match="SmolLM2"):
        TruthGatedVLM(model_path=llava, scores=smollm2_scores)


def test_scores_probed_on_the_mllm_itself(vlmeval_registered, assets, llava, tmp_path):
    """Scores from the MLLM itself: the probing pipeline on the tiny LLaVA (text condition), then the gate."""
    from truthprobe_eval.model_adapters.vlmeval_gated import TruthGatedVLM
    from truthprobe_eval.probing.data import halueval_examples
    from truthprobe_eval.probing.pipeline import probe_model

    pytest.importorskip("truthprobe_eval.probing.trainers", reason="the probing trainers (probing/trainers.py) are not in this checkout yet")
    plain = TruthGatedVLM(model_path=llava, gate="none", max_new_tokens=6)
    own = probe_model(plain.model, plain.processor, halueval_examples(n=8), condition="text", n_folds=2, epochs=5,
                      progress=False, cache_dir=None)
    assert own.shape == (2, 4)
    path = own.save(tmp_path / "own.json")
    gated = TruthGatedVLM(model_path=llava, scores=str(path), alpha=8.0, max_new_tokens=6)
    assert _replies(gated, assets["images"]) != _replies(plain, assets["images"])


def tiny_directions(model_path: str, out) -> str:
    """An ITI direction file of the tiny MLLM's language-model shape (random unit vectors; no real data exists)."""
    from truthprobe_eval import load_model, locate_heads
    from truthprobe_eval.directions import ITIDirections

    sites = locate_heads(load_model(model_path)[0])
    rng = np.random.default_rng(3)
    shape = (sites.num_layers, sites.num_heads, sites.head_dim)

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    return str(ITIDirections(unit(rng.standard_normal(shape)), np.full(shape[:2], 3.0), rng.uniform(0.5, 1, shape[:2]),
                             unit(rng.standard_normal(shape)), np.full(shape[:2], 3.0),
                             meta={"model": "tiny-llava"}).save(out))


def test_iti_through_the_vlmeval_model(vlmeval_registered, assets, llava, monkeypatch):
    from truthprobe_eval.model_adapters.vlmeval_gated import TruthGatedVLM

    directions = tiny_directions(llava, assets["root"] / "iti_llava.json")
    plain = TruthGatedVLM(model_path=llava, method="none", max_new_tokens=6)
    base = _replies(plain, assets["images"])
    iti = TruthGatedVLM(model_path=llava, method="iti", directions=directions, k=4, alpha=8.0, max_new_tokens=6)
    assert iti.describe()["intervention"]["method"] == "iti" and iti.describe()["intervention"]["k"] == 4
    shifted = _replies(iti, assets["images"])
    assert shifted != base
    iti.close()
    assert _replies(iti, assets["images"]) == base  # hooks out: the plain model again
    # the same settings from the environment, for `--model <name>` runs
    monkeypatch.setenv("TRUTHPROBE_METHOD", "iti")
    monkeypatch.setenv("TRUTHPROBE_METHOD_ARGS", f"directions={directions},k=4,alpha=8")
    monkeypatch.setenv("TRUTHPROBE_MODEL_PATH", llava)
    monkeypatch.setenv("TRUTHPROBE_MAX_NEW_TOKENS", "6")
    import vlmeval.config

    built = vlmeval.config.supported_VLM["truthprobe_hf"]()
    assert built.intervention.settings == iti.intervention.settings
    assert _replies(built, assets["images"]) == shifted
    monkeypatch.setenv("TRUTHPROBE_METHOD_ARGS", "directions=/no/such.json")
    with pytest.raises(TruthProbeError, match=r"directions \(config key 'directions' or TRUTHPROBE_METHOD_ARGS\)"):
        vlmeval.config.supported_VLM["truthprobe_hf"]()


@pytest.mark.slow
def test_importing_vlmevalkit_through_us_keeps_autograd_on():
    """vlmeval.vlm calls torch.set_grad_enabled(False) at import; our adapters and runner keep the caller's mode."""
    import subprocess
    import sys

    code = ("import torch; from truthprobe_eval.model_adapters.vlmeval_registration import register; "
            "import truthprobe_eval.model_adapters.vlmeval_gated; register(); "
            "import vlmeval.vlm; print(torch.is_grad_enabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.slow
def test_importing_our_model_class_first_registers_without_a_circular_import():
    """The start-up hook fires while vlmeval_gated imports VLMEvalKit; registration waits for the module to finish
    (it used to warn "could not register ... circular import" and leave the models unregistered)."""
    import subprocess
    import sys

    code = ("import warnings; warnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    import truthprobe_eval.model_adapters.vlmeval_gated\n"
            "    import vlmeval.config as config\n"
            "print([str(w.message) for w in caught if 'could not register' in str(w.message)], "
            "'truthprobe_hf' in config.supported_VLM)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[] True"
