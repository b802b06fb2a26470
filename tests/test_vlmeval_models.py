"""The gated VLMEvalKit model (TruthGatedVLM) on tiny random-initialized MLLMs saved with their processors and
loaded through truthprobe_eval.load_model (the users' path): LLaVA, LLaVA-NeXT, Qwen2-VL, Idefics3; a LLaVA whose
language model has SmolLM2-135M's shape, gated by real SmolLM2 Truth Scores; settings from config keys and the command's options;
shape mismatches; registration in VLMEvalKit's lookup tables."""
from __future__ import annotations

import json

import numpy as np
import pytest

from truthprobe_eval.interventions import REGISTRY
import torch
from tiny_models import save_tiny_mllm, write_synthetic_coco

from truthprobe_eval.errors import GateConfigError, ShapeMismatchError, TruthProbeError
from truthprobe_eval.scores import TruthScores

torch.set_num_threads(1)
QUESTIONS = ["Is there a dog in the image?", "Is there a person in the image?", "Please describe this image in detail."]


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


def _command_config(argv: list[str]) -> dict:
    """The VLMEvalKit config `truthprobe vlmeval` would hand the runner for these arguments."""
    from truthprobe_eval.cli import build_parser
    from truthprobe_eval.commands.vlmeval import _runner_values, build_config

    args, extras = build_parser().parse_known_args(["vlmeval", *argv])
    return build_config(args, _runner_values(extras)[0])


def test_settings_from_config_and_command_options(vlmeval_registered, assets, llava, tmp_path):
    import vlmeval.config
    from vlmeval.run import build_model_from_config

    # a supported_VLM entry, built the way VLMEvalKit's inference builds it (Qwen2-VL names get use_vllm)
    model = vlmeval.config.supported_VLM["Qwen2-VL-2B-Instruct_truthprobe"](
        use_vllm=False, model_path=llava, scores=assets["scores"], alpha="2.5", norm="minmax", max_new_tokens=3)
    assert model.model_path == llava and model.max_new_tokens == 3
    described = model.intervention.describe()
    assert {k: described[k] for k in ("method", "scores", "alpha", "norm", "site", "gate", "seed", "apply")} == {
        "method": "truthprobe", "scores": assets["scores"], "alpha": 2.5, "norm": "minmax", "site": "o_proj_output",
        "gate": "truthprobe", "seed": 0, "apply": "hook"}
    assert model.describe()["intervention"] == described
    # the command's options become the same keys of a JSON --config entry, which VLMEvalKit builds
    cfg = _command_config(["--hf-model", llava, "--scores", assets["scores"], "--alpha", "2.5", "--norm", "minmax",
                           "--max-new-tokens", "3", "--model", "Qwen2-VL-2B-Instruct_truthprobe", "--data", "POPE_local"])
    entry = cfg["model"]["Qwen2-VL-2B-Instruct_truthprobe"]
    assert entry == {"class": "TruthGatedVLM", "model_path": llava, "scores": assets["scores"], "alpha": "2.5",
                     "norm": "minmax", "max_new_tokens": "3"}
    built = build_model_from_config(cfg["model"], "Qwen2-VL-2B-Instruct_truthprobe")
    assert built.intervention.settings == model.intervention.settings and built.max_new_tokens == 3
    with pytest.raises(GateConfigError, match=r"norm \(config key 'norm'\).*found 'zscore'"):
        build_model_from_config({"m": {**entry, "norm": "zscore"}}, "m")
    with pytest.raises(GateConfigError, match="alpha"):
        build_model_from_config({"m": {**entry, "alpha": "strong"}}, "m")
    with pytest.raises(GateConfigError, match="scores"):
        vlmeval.config.supported_VLM["truthprobe_hf"](model_path=llava)
    # the same parser as lm-eval: a random gate takes its shape from the model and needs no scores
    random_gate = vlmeval.config.supported_VLM["truthprobe_hf"](model_path=llava, gate="random")
    assert random_gate.intervention.settings["gate"] == "random" and random_gate.gates.shape == (2, 4)
    with pytest.raises(TruthProbeError, match=f"method: expected one of {', '.join(sorted(REGISTRY))}, found 'itti'"):
        vlmeval.config.supported_VLM["truthprobe_hf"](model_path=llava, method="itti")
    # options a method does not take, conflicting keys and unknown data set keys fail before anything runs
    with pytest.raises(TruthProbeError, match="method 'iti' takes no scores"):
        _command_config(["--method", "iti", "--scores", assets["scores"], "--model", "truthprobe_hf", "--data", "POPE_local"])
    config = tmp_path / "config.json"  # the same for a config entry of another method given an option
    config.write_text(json.dumps({"model": {"m": {"class": "TruthGatedVLM", "model_path": llava, "method": "iti"}},
                                  "data": {"POPE_local": {}}}))
    with pytest.raises(TruthProbeError, match="model m: method 'iti' takes no norm, scores"):
        _command_config(["--scores", assets["scores"], "--norm", "minmax", "--config", str(config)])
    with pytest.raises(TruthProbeError, match="the config gives method='iti' and the options give 'rve'"):
        _command_config(["--method", "rve", "--config", str(config)])
    with pytest.raises(TruthProbeError, match="--data-args 'GQA_local:n_questions=3': expected a data set among those run"):
        _command_config(["--data-args", "GQA_local:n_questions=3", "--config", str(config)])
    with pytest.raises(TruthProbeError, match="CHAIRLocal takes no max_new_tokens"):
        _command_config(["--data-args", "CHAIR_local:max_new_tokens=12", "--model", "truthprobe_hf", "--data", "CHAIR_local"])
    data = _command_config(["--pope-dir", "q", "--coco-images", "im", "--pope-limit", "2", "--data-args",
                            "POPE_local:splits=random", "--model", "truthprobe_hf", "--data", "POPE_local", "MME"])["data"]
    assert data == {"POPE_local": {"class": "POPELocal", "dataset": "POPE_local", "question_dir": "q", "image_dir": "im",
                                   "limit_per_split": "2", "splits": "random"},
                    "MME": {"class": "ImageYORNDataset", "dataset": "MME"}}


def test_dataset_max_new_tokens(vlmeval_registered, llava):
    """CHAIR_local declares its caption length (64); the model's dataset_max_new_tokens overrides it; other data
    sets get max_new_tokens. No state passes between data set and model."""
    from truthprobe_eval.model_adapters.vlmeval_gated import TruthGatedVLM

    model = TruthGatedVLM(model_path=llava, method="none", max_new_tokens=7)
    assert (model.max_new_tokens_for("CHAIR_local"), model.max_new_tokens_for("POPE_local"), model.max_new_tokens_for(None)) == (64, 7, 7)
    model = TruthGatedVLM(model_path=llava, method="none", dataset_max_new_tokens={"CHAIR_local": 12, "POPE_local": 2})
    assert (model.max_new_tokens_for("CHAIR_local"), model.max_new_tokens_for("POPE_local"), model.max_new_tokens_for("MME")) == (12, 2, 512)
    with pytest.raises(TruthProbeError, match=r"dataset_max_new_tokens\['CHAIR_local'\]: expected a positive integer"):
        TruthGatedVLM(model_path=llava, method="none", dataset_max_new_tokens={"CHAIR_local": 0})


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


def test_iti_through_the_vlmeval_model(vlmeval_registered, assets, llava):
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
    # the same settings as `truthprobe vlmeval --method iti --method-args ...` writes them into the config
    from vlmeval.run import build_model_from_config

    cfg = _command_config(["--hf-model", llava, "--method", "iti", "--method-args", f"directions={directions},k=4,alpha=8",
                           "--max-new-tokens", "6", "--model", "truthprobe_hf", "--data", "POPE_local"])["model"]
    built = build_model_from_config(cfg, "truthprobe_hf")
    assert built.intervention.settings == iti.intervention.settings
    assert _replies(built, assets["images"]) == shifted
    with pytest.raises(TruthProbeError, match=r"directions \(config key 'directions'\)"):
        build_model_from_config({"m": {**cfg["truthprobe_hf"], "directions": "/no/such.json"}}, "m")


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
@pytest.mark.parametrize("first", ["model_adapters.vlmeval_gated", "tasks.pope.vlmeval_dataset",
                                   "tasks.chair.vlmeval_dataset"])
def test_importing_our_modules_first_registers_without_a_circular_import(first):
    """The start-up hook fires while our model class or a data set imports VLMEvalKit; registration waits for the
    module to finish (it used to warn "could not register ... circular import" and leave things unregistered)."""
    import subprocess
    import sys

    code = ("import warnings; warnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            f"    import truthprobe_eval.{first}\n"
            "    import vlmeval.config as config, vlmeval.dataset as datasets\n"
            "print([str(w.message) for w in caught if 'could not register' in str(w.message)], "
            "'truthprobe_hf' in config.supported_VLM, hasattr(datasets, 'CHAIRLocal'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[] True True"
