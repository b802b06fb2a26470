"""DiffMean, the fifth method, added as one module: the mean difference and its sigma by hand, the steering hook
against a hand-made residual shift, its controls (same norm), the bake against the hook (positions=all), the
refusals, the vector file, and the real SmolLM2 through ``truthprobe fit`` and the real ``lm_eval`` CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

from truthprobe_eval.errors import InterventionError
from truthprobe_eval.interventions import build
from truthprobe_eval.interventions.diffmean import DiffMeanVectors, mean_difference

IDS = torch.tensor([[5, 9, 14, 3, 22, 7]])


def _vectors(layers: int, hidden: int, seed: int = 0) -> DiffMeanVectors:
    rng = np.random.default_rng(seed)
    return DiffMeanVectors(rng.standard_normal((layers, hidden)), rng.uniform(0.5, 2.0, layers), meta={"model": "tiny"})


def _shape(model) -> tuple[int, int]:
    return model.config.num_hidden_layers, model.config.hidden_size


def test_mean_difference_by_hand():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((10, 2, 4))
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 0])
    made = mean_difference(X, y)
    for layer in range(2):
        v = X[y == 1, layer].mean(0) - X[y == 0, layer].mean(0)
        assert np.allclose(made.vectors[layer], v)
        u = v / np.linalg.norm(v)
        assert made.sigma[layer] == pytest.approx(np.std(X[:, layer] @ u))
    with pytest.raises(InterventionError, match="both correct and incorrect"):
        mean_difference(X, np.ones(10))


def test_the_hook_adds_the_scaled_unit_vector_after_the_chosen_layer():
    model = tiny_model("llama", dtype=torch.float64)
    L, hidden = _shape(model)
    data = _vectors(L, hidden)
    made = build("diffmean", vectors=data, layers="1", alpha=3.0)
    layer = model.model.layers[1]
    seen = {}
    handle = layer.register_forward_hook(lambda _m, _a, out: seen.__setitem__("out", out))
    with torch.no_grad():
        model(input_ids=IDS)
        plain = seen["out"].clone()
        handle.remove()
        expected = 3.0 * data.sigma[1] * data.vectors[1] / np.linalg.norm(data.vectors[1])
        captured = {}
        with made.attach(model):
            h = model.model.layers[1].register_forward_hook(lambda _m, _a, out: captured.__setitem__("out", out))
            steered_logits = model(input_ids=IDS).logits
            h.remove()
        # the hook registered after ours sees the shifted output
        assert torch.allclose(captured["out"] - plain, torch.as_tensor(expected).expand_as(plain), atol=1e-10)
        assert not torch.allclose(steered_logits, model(input_ids=IDS).logits)  # and detached afterwards it is gone


@pytest.mark.parametrize("control", ["random", "other_layer"])
def test_controls_have_the_same_norm_and_another_direction(control):
    data = _vectors(6, 16)
    method = build("diffmean", vectors=data, layers="0-5", alpha=2.0)
    ctrl = method.control(control, seed=4)
    for layer, shift in method.shifts().items():
        other = ctrl.shifts()[layer]
        assert np.linalg.norm(other) == pytest.approx(np.linalg.norm(shift))
        assert abs(np.dot(other, shift)) < 0.999 * np.linalg.norm(shift) ** 2
    if control == "other_layer":
        units = data.units
        assert np.allclose(ctrl.shifts()[0] / np.linalg.norm(ctrl.shifts()[0]), units[3])
    assert build("diffmean", vectors=data, control="random", seed=4).shifts().keys() == {3}  # middle of 6


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_bake_equals_the_hook_at_every_position(arch):
    model = tiny_model(arch, dtype=torch.float64)
    L, hidden = _shape(model)
    made = build("diffmean", vectors=_vectors(L, hidden), layers=f"0-{L - 1}", alpha=1.5, positions="all")
    with torch.no_grad():
        with made.attach(model):
            hooked = model(input_ids=IDS).logits
        baked_model = build("diffmean", vectors=_vectors(L, hidden), layers=f"0-{L - 1}", alpha=1.5,
                            apply="bake").bake(model)
        baked = baked_model(input_ids=IDS).logits
    assert torch.allclose(hooked, baked, atol=1e-9)
    assert model.config.truthprobe_interventions[-1]["method"] == "diffmean"


def test_bake_refusals():
    gemma = tiny_model("gemma3_text")
    L, hidden = _shape(gemma)
    with pytest.raises(InterventionError, match="post-feedforward norm"):
        build("diffmean", vectors=_vectors(L, hidden), apply="bake").bake(gemma)
    llama = tiny_model("llama")
    L, hidden = _shape(llama)
    with pytest.raises(InterventionError, match="bakes only with positions=all"):
        build("diffmean", vectors=_vectors(L, hidden), positions="answer", apply="bake").bake(llama)


def test_positions_answer_shifts_only_the_last_position_in_generation():
    model = tiny_model("llama", dtype=torch.float64)
    L, hidden = _shape(model)
    made = build("diffmean", vectors=_vectors(L, hidden), layers="1", positions="answer", alpha=5.0)
    with torch.no_grad():
        plain = model(input_ids=IDS).logits
        with made.attach(model), made.edit_positions("last"):
            last_only = model(input_ids=IDS).logits
    assert torch.allclose(plain[:, :-1], last_only[:, :-1]) and not torch.allclose(plain[:, -1], last_only[:, -1])


def test_vector_file_round_trip_and_bad_files(tmp_path):
    data = _vectors(4, 8)
    path = data.save(tmp_path / "v.json")
    again = DiffMeanVectors.load(path)
    assert np.array_equal(again.vectors, data.vectors) and again.meta == {**data.meta, "source_file": str(path)}
    with pytest.raises(InterventionError, match="vectors: expected a DiffMean vector file .* found no file at"):
        build("diffmean", vectors=str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(InterventionError, match="expected format 'truthprobe-diffmean', found 'other'"):
        build("diffmean", vectors=str(tmp_path / "bad.json"))
    with pytest.raises(InterventionError, match="needs a vector file"):
        build("diffmean")
    with pytest.raises(InterventionError, match="fit on a model with 4 layers of width 8"):
        with build("diffmean", vectors=str(path)).attach(tiny_model("llama")):
            pass


@pytest.mark.slow
def test_fit_on_smollm2_and_steer_through_the_lm_eval_cli(smollm2, shared_dir, tmp_path, monkeypatch):
    from truthprobe_eval.cli import main

    csv = shared_dir / "data" / "truthfulqa" / "TruthfulQA.csv"
    out = tmp_path / "dm.json"
    assert main(["fit", "diffmean", "--out", str(out), "--questions", "12", "--truthfulqa-csv", str(csv),
                 "--quiet"]) == 0
    made = DiffMeanVectors.load(out)
    assert made.vectors.shape == (30, 576) and (made.sigma > 0).all() and made.meta["questions"] == list(range(12))
    # the fit reads the residual stream: the first example's residual after layer 3 by a plain forward pass
    from truthprobe_eval.interventions.diffmean import residuals_at_last_token
    from truthprobe_eval.probing.data import truthfulqa_examples

    model, tokenizer = smollm2
    ex = truthfulqa_examples(str(csv), [0])[:2]
    X = residuals_at_last_token(model, tokenizer, ex, batch_size=2)
    with torch.no_grad():
        ids = tokenizer(f"Q: {ex[0].question} A: {ex[0].answer}", return_tensors="pt")
        hidden = model(**ids, output_hidden_states=True).hidden_states[4][0, -1]
    assert np.allclose(X[0, 3], hidden.numpy(), atol=1e-4)
    # the real lm-eval CLI, the same method keywords as every harness
    from lm_eval_cli import results

    monkeypatch.setenv("TRUTHPROBE_TRUTHFULQA_CSV", str(csv))
    written = results("truthgated", f"pretrained=smollm2-135m-instruct,method=diffmean,vectors={out},alpha=4",
                      "truthfulqa_local_mc1", tmp_path / "lm", "--limit", "4")
    recorded = written["config"]["intervention"]
    assert recorded["method"] == "diffmean" and recorded["vectors"] == str(out) and recorded["steered_layers"] == [15]


def test_the_comparison_runs_it_with_its_controls(tmp_path):
    from truthprobe_eval.experiments.method_comparison import ComparisonConfig, _interventions, run_labels

    vectors = [str(_vectors(30, 576, seed=i).save(tmp_path / f"v{i}.json")) for i in (0, 1)]
    runs = _interventions(ComparisonConfig(methods=("diffmean",)), {"diffmean": vectors}, {"diffmean": {}})
    assert list(runs) == ["baseline", "diffmean", "diffmean_random", "diffmean_other_layer"]
    assert [m.settings["vectors"] for m in runs["diffmean_other_layer"]] == vectors  # each half its own file
    labels = run_labels()
    assert labels["diffmean_random"] == "DiffMean, random direction (same norm)"
    assert labels["diffmean_other_layer"] == "DiffMean, another layer's vector (same norm)"
