"""The intervention interface on tiny random-initialized models: parser, registry, descriptions, TruthProbe as an
intervention (numbers unchanged), ITI's shift, positions, controls, bake, and direction files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_models import TINY_CONFIGS, tiny_model

from truthprobe_eval import gate, locate_heads
from truthprobe_eval.architectures import SITES
from truthprobe_eval.directions import DirectionFileError, ITIDirections, fit_directions
from truthprobe_eval.errors import GateConfigError, InterventionError, ShapeMismatchError
from truthprobe_eval.interventions import REGISTRY, Intervention, build, from_description, split_kwargs

IDS = torch.randint(3, 90, (2, 7), generator=torch.Generator().manual_seed(0))


def _directions(shape=(3, 4, 8), seed=0, model="tiny-llama") -> ITIDirections:
    rng = np.random.default_rng(seed)

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    return ITIDirections(unit(rng.standard_normal(shape)), rng.uniform(0.5, 2.0, shape[:2]),
                         rng.uniform(0.5, 1.0, shape[:2]), unit(rng.standard_normal(shape)),
                         rng.uniform(0.5, 2.0, shape[:2]), meta={"model": model})


@pytest.fixture()
def directions_file(tmp_path):
    return str(_directions().save(tmp_path / "iti.json"))


def _o_proj_inputs(model, **kwargs):
    """The o_proj input of every layer during one forward pass."""
    seen = {}
    sites = locate_heads(model)
    handles = [p.register_forward_pre_hook(lambda _m, a, i=i: seen.__setitem__(i, a[0].detach().clone()))
               for i, p in enumerate(sites.out_projs)]
    try:
        with torch.no_grad():
            out = model(input_ids=IDS, **kwargs).logits
    finally:
        for h in handles:
            h.remove()
    return seen, out


# ---- parser and registry -------------------------------------------------------------------------------

def test_registry_and_one_parser_for_every_method(directions_file):
    assert {"none", "truthprobe", "iti"} <= set(REGISTRY)
    iti = build("iti", directions=directions_file, k="5", alpha="2.5", positions="all")  # lm-eval passes strings
    assert (iti.settings["k"], iti.settings["alpha"], iti.settings["positions"]) == (5, 2.5, "all")
    ours, rest = split_kwargs({"method": "iti", "directions": directions_file, "k": 5, "batch_size": 8, "dtype": "x"})
    assert ours == {"method": "iti", "directions": directions_file, "k": 5} and rest == {"batch_size": 8, "dtype": "x"}
    assert split_kwargs({"scores": "s.json", "batch_size": 8})[0] == {"method": "truthprobe", "scores": "s.json"}


@pytest.mark.parametrize("kwargs,error,message", [
    ({"method": "itti"}, InterventionError, f"method: expected one of {', '.join(sorted(REGISTRY))}, found 'itti'"),
    ({"method": "iti"}, InterventionError, "directions: method 'iti' needs a direction file"),
    ({"method": "iti", "k": "many"}, InterventionError, "k: expected an integer, found 'many'"),
    ({"method": "iti", "positions": "first"}, InterventionError, "positions: expected one of answer, all, found 'first'"),
    ({"method": "iti", "control": "random"}, InterventionError, "control: expected one of none, random_heads"),
    ({"method": "iti", "k": 1000}, InterventionError, r"k: expected 0 to 12 heads \(3 layers x 4\), found 1000"),
    ({"method": "iti", "depth": 3}, InterventionError, "method 'iti': unknown argument\\(s\\) depth; expected apply"),
    ({"method": "truthprobe", "alpha": "nan"}, GateConfigError, "alpha: expected a finite number, found 'nan'"),
    ({"method": "truthprobe", "gate": "random", "apply": "baked"}, GateConfigError, "apply: expected one of hook, bake"),
])
def test_bad_settings_say_what_was_expected(kwargs, error, message, directions_file):
    kwargs = dict(kwargs)
    if kwargs["method"] == "iti" and "directions" not in kwargs and "needs" not in message:
        kwargs["directions"] = directions_file
    with pytest.raises(error, match=message):
        build(**kwargs)


def test_descriptions_are_plain_json_and_rebuild_the_same_intervention(directions_file):
    for made in (build("none"), build("truthprobe", gate="random", alpha=2.0, seed=3),
                 build("iti", directions=directions_file, k=4, control="random_heads", seed=2)):
        described = made.describe()
        assert json.loads(json.dumps(described)) == described
        again = from_description(described)
        assert type(again) is type(made) and again.settings == made.settings and again.describe() == described
    assert build("none").describe() == {"method": "none", "apply": "hook", "label": "baseline", "identity": True}
    iti = build("iti", directions=directions_file, k=4).describe()
    assert iti["label"] == "ITI (K 4, alpha 15)" and len(iti["heads"]) == 4 and iti["directions_model"] == "tiny-llama"


def test_a_new_method_is_one_small_class():
    from truthprobe_eval.interventions import Param, register

    @register
    class Scale(Intervention):  # scales the residual-stream input of every o_proj: a toy method
        name = "toy_scale"
        params = (Param("factor", float, 1.0),)

        def hooks(self, model):
            f = self.settings["factor"]
            return [p.register_forward_pre_hook(lambda _m, a: (a[0] * f,)) for p in locate_heads(model).out_projs]

    try:
        model = tiny_model("llama")
        with torch.no_grad():
            base = model(input_ids=IDS).logits
            with build("toy_scale", factor=0.5).attach(model):
                scaled = model(input_ids=IDS).logits
            assert not torch.equal(base, scaled) and torch.equal(model(input_ids=IDS).logits, base)
        with pytest.raises(InterventionError, match="method 'toy_scale' cannot be baked"):
            build("toy_scale", apply="bake")
    finally:
        REGISTRY.pop("toy_scale")


# ---- TruthProbe as an intervention -----------------------------------------------------------------------

@pytest.mark.parametrize("site", ["o_proj_output", "o_proj_input"])
@pytest.mark.parametrize("kind", ["truthprobe", "inverse", "random", "shuffled"])
def test_truthprobe_intervention_equals_the_gate_and_its_bake(site, kind):
    model = tiny_model("llama", dtype=torch.float64)
    scores = np.random.default_rng(1).uniform(0.4, 1.0, (3, 4))
    made = build("truthprobe", scores=scores, alpha=2.0, site=site, gate=kind, seed=5)
    with torch.no_grad():
        base = model(input_ids=IDS).logits
        with gate(model, scores, alpha=2.0, site=site, kind=kind, seed=5):
            reference = model(input_ids=IDS).logits
        with made.attach(model):
            hooked = model(input_ids=IDS).logits
        assert torch.equal(hooked, reference) and torch.equal(model(input_ids=IDS).logits, base)
        made.bake(model)
        baked = model(input_ids=IDS).logits
    assert (baked - hooked).abs().max() <= 1e-9 * hooked.abs().max()
    assert model.config.truthprobe_interventions[-1]["gate"] == kind


def test_controls_keep_the_strength_and_change_only_what_they_randomize(directions_file):
    tp = build("truthprobe", scores=np.ones((3, 4)), alpha=2.0, norm="minmax")
    assert tp.control("random", 7).settings == {**tp.settings, "gate": "random", "seed": 7}
    iti = build("iti", directions=directions_file, k=3, alpha=4.0)
    heads = iti.heads()
    assert heads == sorted(_directions().top_heads(3))
    assert iti.control("random_heads", 1).heads() != heads and len(iti.control("random_heads", 1).heads()) == 3
    assert iti.control("random_directions").heads() == heads
    with pytest.raises(InterventionError, match="control: method 'iti' has random_heads, random_directions"):
        iti.control("shuffled")


# ---- ITI ---------------------------------------------------------------------------------------------

def test_iti_adds_alpha_sigma_direction_to_the_chosen_heads_only(directions_file):
    model = tiny_model("llama", dtype=torch.float64)
    data = ITIDirections.load(directions_file)
    iti = build("iti", directions=directions_file, k=3, alpha=4.0, positions="all")
    D = data.shape[2]
    # the shift at layer 0's o_proj input, where the input itself is unchanged (nothing edited upstream)
    plain, base = _o_proj_inputs(model)
    with iti.attach(model):
        edited, out = _o_proj_inputs(model)
    l0 = [(l, h) for l, h in iti.heads() if l == 0]
    delta = (edited[0] - plain[0]).reshape(2, 7, 4, D)
    for h in range(4):
        want = 4.0 * data.sigma[0, h] * data.directions[0, h] if (0, h) in l0 else np.zeros(D)
        assert np.allclose(delta[:, :, h].numpy(), want, atol=1e-12)
    assert not torch.equal(out, base)
    assert torch.equal(_o_proj_inputs(model)[1], base)  # hooks gone: exactly the plain model


def test_iti_positions_answer_last_and_skip(directions_file):
    model = tiny_model("llama", dtype=torch.float64)
    iti = build("iti", directions=directions_file, k=12, alpha=3.0)  # every head of layer 0 moves
    assert iti.wants_positions
    plain, _ = _o_proj_inputs(model)
    with iti.attach(model):
        with iti.edit_positions(torch.tensor([3, 5])):
            answer, _ = _o_proj_inputs(model)
        with iti.edit_positions("last"):
            last, _ = _o_proj_inputs(model)
        with iti.edit_positions("skip"):
            skipped, out_skip = _o_proj_inputs(model)
    changed = (answer[0] - plain[0]).abs().sum(-1) > 0
    assert changed.tolist() == [[False] * 3 + [True] * 4, [False] * 5 + [True] * 2]
    assert ((last[0] - plain[0]).abs().sum(-1) > 0).tolist() == [[False] * 6 + [True]] * 2
    assert torch.equal(skipped[0], plain[0]) and torch.equal(out_skip, _o_proj_inputs(model)[1])
    assert not build("iti", directions=directions_file, k=2, positions="all").wants_positions


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_iti_bake_is_the_all_positions_hook(arch, tmp_path):
    model = tiny_model(arch, dtype=torch.float64)
    sites = locate_heads(model)
    path = _directions((sites.num_layers, sites.num_heads, sites.head_dim), model=arch).save(tmp_path / "d.json")
    ids = {"input_ids": IDS}
    iti = build("iti", directions=str(path), k=5, alpha=2.0, positions="all")
    with torch.no_grad():
        with iti.attach(model):
            hooked = model(**ids).logits
        with iti.attach(model), iti.edit_positions(torch.tensor([4, 4])):
            answer_only = model(**ids).logits
        iti.bake(model)
        baked = model(**ids).logits
    assert (baked - hooked).abs().max() <= 1e-9 * hooked.abs().max()
    assert (baked - answer_only).abs().max() > 1e-6  # the bias shifts the prompt too: not position-equivalent
    assert model.config.truthprobe_interventions[-1]["method"] == "iti"


def test_iti_shape_checks_name_both_models(directions_file):
    model = tiny_model("gpt2")
    bad = _directions((3, 4, 5)).save(directions_file)  # head dim 5 != gpt2's 8
    with pytest.raises(ShapeMismatchError, match=r"ITI directions of tiny-llama have shape \(3, 4, 5\).*\(3, 4, 8\)"):
        with build("iti", directions=str(bad), k=2).attach(model):
            pass


# ---- direction files -------------------------------------------------------------------------------------

def test_direction_files_round_trip_and_refuse_bad_content(tmp_path):
    made = _directions()
    path = made.save(tmp_path / "d.json")
    again = ITIDirections.load(path)
    assert np.allclose(again.directions, made.directions, atol=1e-6) and again.meta["model"] == "tiny-llama"
    assert again.to_scores().shape == (3, 4)
    data = json.loads(path.read_text())
    with pytest.raises(DirectionFileError, match="expected format 'truthprobe-iti-directions'"):
        (tmp_path / "x.json").write_text(json.dumps({**data, "format": "other"}))
        ITIDirections.load(tmp_path / "x.json")
    data["sigma"] = data["sigma"][:2]
    (tmp_path / "y.json").write_text(json.dumps(data))
    with pytest.raises(DirectionFileError, match=r"sigma: expected shape \(3, 4\) \(from directions\), found \(2, 4\)"):
        ITIDirections.load(tmp_path / "y.json")
    with pytest.raises(DirectionFileError, match="found no file at"):
        ITIDirections.load(tmp_path / "missing.json")
    with pytest.raises(DirectionFileError, match="directions: expected unit vectors"):
        ITIDirections(made.directions * 2, made.sigma, made.accuracy, made.random_directions, made.random_sigma)


def test_fit_directions_recovers_a_planted_direction():
    rng = np.random.default_rng(0)
    n, L, H, D = 400, 2, 3, 6
    y = rng.integers(0, 2, n)
    X = rng.standard_normal((n, L, H, D))
    planted = np.zeros(D)
    planted[2] = 1.0
    X[:, 1, 2] += 3.0 * (y[:, None] - 0.5) * planted  # head 1.2 separates true from false along axis 2
    fit = fit_directions(X, y, np.full((L, H), 0.5))
    assert fit.directions[1, 2] @ planted > 0.98
    projected = np.einsum("nd,d->n", X[:, 1, 2], fit.directions[1, 2])
    assert fit.sigma[1, 2] == pytest.approx(projected.std())
    assert np.allclose(np.linalg.norm(fit.random_directions, axis=-1), 1.0)


def test_the_table_declares_the_sites_interventions_use():
    assert set(SITES) == {"o_proj_input", "o_proj_output", "mlp_activation", "attention"}
    for arch in sorted(TINY_CONFIGS):
        sites = locate_heads(tiny_model(arch))
        for name in SITES:
            assert len(sites.modules(name)) == sites.num_layers
        assert sites.mlp_width == sites.mlp_outs[0].in_features if hasattr(sites.mlp_outs[0], "in_features") else True


# ---- results rebuild what ran ----------------------------------------------------------------------------------

def test_a_recorded_description_rebuilds_the_same_intervention_after_the_folder_moved(tmp_path):
    import shutil

    from truthprobe_eval.interventions import from_description
    from truthprobe_eval.neuron_scores import select_neurons
    from truthprobe_eval.scores import TruthScores

    model = tiny_model("llama", dtype=torch.float64)
    run = tmp_path / "run"
    run.mkdir()
    scores = TruthScores(np.random.default_rng(2).uniform(0.4, 1.0, (3, 4)), meta={"model": "tiny"}).save(run / "s.json")
    L, width = model.config.num_hidden_layers, model.config.intermediate_size
    neurons = select_neurons(np.random.default_rng(3).normal(0.5, 1, (6, L, width)), p_threshold=0.3,
                             meta={"model": "tiny"}).save(run / "n.json")
    made = [build("truthprobe", scores=str(scores), alpha=2.0, norm="minmax"),
            build("neurons", neurons=str(neurons), factor=0.0)]
    described = [json.loads(json.dumps(m.describe())) for m in made]  # as a result file holds it
    assert described[0]["scores_sha256"] and described[1]["neurons_sha256"]
    with torch.no_grad():
        outputs = []
        for m in made:
            with m.attach(model):
                outputs.append(model(input_ids=IDS).logits)
        moved = tmp_path / "moved"
        shutil.move(str(run), moved)  # the result folder moved: its files are found beside the result, by name
        for d, before in zip(described, outputs):
            rebuilt = from_description(d, beside=moved)
            with rebuilt.attach(model):
                assert torch.equal(model(input_ids=IDS).logits, before)
            assert {k: v for k, v in rebuilt.describe().items() if k not in ("scores", "neurons")} == \
                {k: v for k, v in d.items() if k not in ("scores", "neurons")}
    (moved / "s.json").write_text((moved / "s.json").read_text().replace("0.", "0.1", 1))
    with pytest.raises(GateConfigError, match="is not the file the run read"):
        from_description(described[0], beside=moved)
