"""Truth neurons: the integrated-gradients attribution (fast path = the plain loop = completeness), a planted
neuron found, the score file, the t-test selection, and suppression (hooks, bake, controls) on tiny models."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_models import tiny_model
from truthprobe_eval.probing.neurons import (
    MCQuestion,
    mc_questions,
    neuron_attributions,
    plain_attributions,
)

from truthprobe_eval.errors import InterventionError, ShapeMismatchError
from truthprobe_eval.interventions import build
from truthprobe_eval.neuron_scores import NeuronFileError, NeuronScores, layer_overlap, select_neurons

PLANTED = (1, 7)  # (layer, neuron)


@pytest.fixture(scope="module")
def csv(shared_dir) -> str:
    return str(shared_dir / "data" / "truthfulqa" / "TruthfulQA.csv")


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return smollm2[1]


def _tiny_llama(vocab: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def planted(tokenizer):
    """A tiny llama whose neuron PLANTED is always active (silu(z) * z >= 0) and writes along the direction the
    unembedding reads as ' A' minus ' B'."""
    from truthprobe_eval.probing.neurons import letter_token_ids

    model = _tiny_llama(len(tokenizer))
    ids = letter_token_ids(tokenizer)
    layer, neuron = PLANTED
    g = torch.Generator().manual_seed(3)
    w, u = torch.randn(32, generator=g), torch.randn(32, generator=g)
    w, u = 3 * w / w.norm(), u / u.norm()
    with torch.no_grad():
        mlp = model.model.layers[layer].mlp
        mlp.gate_proj.weight[neuron] = w
        mlp.up_proj.weight[neuron] = w
        mlp.down_proj.weight[:, neuron] = 4 * u
        model.lm_head.weight[ids["A"]] = 2 * u
        model.lm_head.weight[ids["B"]] = -2 * u
    return model


def _always_a(csv, rows) -> list[MCQuestion]:
    """Lettered prompts whose correct letter is A (the planted neuron's answer)."""
    from truthprobe_eval.tasks.truthfulqa.utils import read_rows

    table = read_rows(csv)
    return [MCQuestion(i, f"Question: {table[i]['question']}\nA. {table[i]['best_answer']}\nB. "
                          f"{table[i]['incorrect_answers'][0]}\nAnswer:", "A", "B") for i in rows]


def test_lettered_prompts(csv, tokenizer):
    qs = mc_questions(csv, range(40), seed=0)
    assert {q.correct for q in qs} == {"A", "B"} and all(q.correct != q.incorrect for q in qs)
    assert 10 < sum(q.correct == "A" for q in qs) < 30  # the order is shuffled per question
    assert qs[0].prompt.endswith("\nAnswer:") and "\nA. " in qs[0].prompt and "\nB. " in qs[0].prompt
    assert mc_questions(csv, range(40), seed=0) == qs and mc_questions(csv, range(40), seed=1) != qs
    from truthprobe_eval.probing.neurons import AttributionError, letter_token_ids

    with pytest.raises(AttributionError, match="expected indices 0 to 812"):
        mc_questions(csv, [900])
    assert len(set(letter_token_ids(tokenizer).values())) == 2
    with pytest.raises(AttributionError, match="expected ' Qzxvkj' to be one token"):
        letter_token_ids(tokenizer, ["Qzxvkj"])


def test_fast_path_equals_the_plain_loop_and_is_complete(planted, tokenizer, csv):
    """Batched steps + all layers in one pass + the prefix KV cache give the plain loop's numbers; and the
    attributions of a layer add up to f(x) - f(layer zeroed at the last position) (IG's completeness)."""
    qs = mc_questions(csv, [3, 11], seed=0)
    fast = neuron_attributions(planted, tokenizer, qs, steps=4, rows_per_pass=5)  # chunks of 1 layer
    one_pass = neuron_attributions(planted, tokenizer, qs, steps=4)
    plain = plain_attributions(planted, tokenizer, qs, steps=4)
    scale = np.abs(plain).max()
    assert scale > 0 and np.abs(fast - plain).max() / scale < 1e-4 and np.abs(one_pass - plain).max() / scale < 1e-4
    assert np.abs(fast[0]).max() > 0 and not np.allclose(fast[0], fast[1])

    from truthprobe_eval.probing.neurons import letter_token_ids

    ids = letter_token_ids(tokenizer)
    q = qs[0]
    tokens = tokenizer(q.prompt, return_tensors="pt")["input_ids"]
    fine = neuron_attributions(planted, tokenizer, [q], steps=400)[0]

    def f(zero_layer=None):
        handles = []
        if zero_layer is not None:
            def zero(_m, args):
                x = args[0].clone()
                x[:, -1] = 0
                return (x,)
            handles.append(planted.model.layers[zero_layer].mlp.down_proj.register_forward_pre_hook(zero))
        with torch.no_grad():
            p = torch.softmax(planted(input_ids=tokens).logits[0, -1].double(), -1)
        for h in handles:
            h.remove()
        return float(p[ids[q.correct]] - p[ids[q.incorrect]])

    for layer in range(3):
        assert fine[layer].sum() == pytest.approx(f() - f(layer), rel=2e-2, abs=1e-6)


def test_the_planted_neuron_is_found(planted, tokenizer, csv):
    qs = _always_a(csv, range(12))
    diffs = neuron_attributions(planted, tokenizer, qs, steps=8)
    found = select_neurons(diffs, p_threshold=0.01, meta={"model": "planted"})
    assert found.selected[PLANTED]
    layer, neuron = np.unravel_index(np.argmax(found.mean), found.shape)
    assert (layer, neuron) == PLANTED
    assert found.mean[PLANTED] > 3 * np.sort(np.abs(found.mean).ravel())[-2]
    capped = found.reselect(0.01, top_n=1)
    assert capped.count == 1 and capped.selected[PLANTED] and capped.meta["top_n"] == 1


def test_selection_is_scipys_t_test_and_the_file_round_trips(tmp_path):
    from scipy import stats

    rng = np.random.default_rng(0)
    diffs = rng.normal(0, 1, (20, 3, 16))
    diffs[:, 1, 4] += 2.0  # a real effect
    diffs[:, 2, 0] = 0.0  # a dead neuron: t undefined -> 0, p 1
    made = select_neurons(diffs, p_threshold=0.05, meta={"model": "m"})
    t, p = stats.ttest_1samp(diffs[:, 0, :], 0.0, alternative="greater")
    assert np.allclose(made.t[0], t) and np.allclose(made.p[0], p)
    assert made.selected[1, 4] and not made.selected[2, 0] and made.p[2, 0] == 1.0 and made.t[2, 0] == 0.0
    assert ((made.p < 0.05) & (made.t > 0) == made.selected).all()
    assert made.meta["expected_by_chance"] == pytest.approx(0.05 * 48)
    assert made.meta["n_bh"] == int((stats.false_discovery_control(made.p.ravel()) < 0.05).sum()) >= 1
    path = made.save(tmp_path / "n.json")
    assert [x.name for x in tmp_path.iterdir()] == ["n.json"]  # atomic: no temp file left
    back = NeuronScores.load(path)
    assert np.array_equal(back.selected, made.selected) and np.allclose(back.t, made.t)
    assert back.meta["n_selected"] == made.count and back.meta["test"].startswith("one-sample t-test")
    with pytest.raises(ShapeMismatchError, match=r"neuron scores of m have shape \(3, 16\).*other has \(3, 32\)"):
        back.check_fits(3, 32, "other")


def test_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    with pytest.raises(NeuronFileError, match="found no file"):
        NeuronScores.load(bad)
    bad.write_text("{")
    with pytest.raises(NeuronFileError, match="expected JSON"):
        NeuronScores.load(bad)
    bad.write_text(json.dumps({"format": "truthprobe-scores"}))
    with pytest.raises(NeuronFileError, match="expected format 'truthprobe-neuron-scores'"):
        NeuronScores.load(bad)
    good = select_neurons(np.random.default_rng(1).normal(size=(4, 2, 3))).to_dict()
    bad.write_text(json.dumps({**good, "t": [[1.0, 2.0]]}))
    with pytest.raises(NeuronFileError, match=r"t: expected shape \(2, 3\)"):
        NeuronScores.load(bad)
    with pytest.raises(NeuronFileError, match="p_threshold: expected a level"):
        select_neurons(np.zeros((3, 1, 1)), p_threshold=0)
    with pytest.raises(NeuronFileError, match="questions >= 2"):
        select_neurons(np.zeros((1, 2, 2)))


def _neurons(model, counts: dict[int, int], seed: int = 0) -> NeuronScores:
    from truthprobe_eval import locate_heads

    sites = locate_heads(model)
    L, W = sites.num_layers, sites.mlp_width
    selected = np.zeros((L, W), dtype=bool)
    rng = np.random.default_rng(seed)
    for layer, n in counts.items():
        selected[layer, rng.choice(W, n, replace=False)] = True
    return NeuronScores(np.where(selected, 1.0, 0.0), np.where(selected, 5.0, 0.0), np.where(selected, 0.001, 0.9),
                        selected, meta={"model": "tiny", "p_threshold": 0.05})


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_suppression_hooks_bake_and_restore(arch):
    model = tiny_model(arch)
    neurons = _neurons(model, {0: 5, 2: 3})
    ids = torch.randint(3, 120, (2, 9))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    from truthprobe_eval import locate_heads

    projs = locate_heads(model).modules("mlp_activation")
    seen = {}
    suppress = build("neurons", neurons=neurons)
    with torch.no_grad(), suppress.attach(model):
        # registered after the intervention's pre-hooks, these see the activations it hands on
        taps = [p.register_forward_pre_hook(lambda _m, a, i=i: seen.__setitem__(i, a[0].clone()))
                for i, p in enumerate(projs)]
        hooked = model(input_ids=ids).logits
        for t in taps:
            t.remove()
    for layer, idx in neurons.indices().items():
        assert (seen[layer][..., idx] == 0).all() and (seen[layer][..., np.setdiff1d(np.arange(64), idx)] != 0).any()
    assert not torch.allclose(hooked, plain)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, plain)  # exactly restored
        baked = build("neurons", neurons=neurons, apply="bake").bake(model)
        assert torch.allclose(baked(input_ids=ids).logits, hooked, atol=1e-5)
    assert model.config.truthprobe_interventions[-1]["method"] == "neurons"


def test_amplify_control_and_errors(tmp_path):
    model = tiny_model("llama")
    neurons = _neurons(model, {0: 5, 1: 2})
    path = neurons.save(tmp_path / "n.json")
    made = build("neurons", neurons=str(path), factor=2.5)
    assert made.describe()["n_neurons"] == 7 and made.describe()["layer_counts"] == {"0": 5, "1": 2}
    assert made.label() == "7 truth neurons x2.5"
    rand = made.control("random", seed=3)
    chosen, picked = rand.chosen(), made.chosen()
    assert {k: len(v) for k, v in chosen.items()} == {k: len(v) for k, v in picked.items()}
    assert all(not set(chosen[k]) & set(picked[k]) for k in picked)  # drawn from the unselected ones
    assert rand.describe()["control"] == "random" and rand.control("random", 3).chosen()[0].tolist() == chosen[0].tolist()
    assert build("neurons", neurons=str(path), factor=1).identity
    with pytest.raises(InterventionError, match="needs a neuron score file"):
        build("neurons")
    with pytest.raises(InterventionError, match="factor: expected a multiplier >= 0"):
        build("neurons", neurons=str(path), factor=-1)
    with pytest.raises(ShapeMismatchError, match="neuron scores of tiny have shape"):
        with build("neurons", neurons=str(path)).attach(tiny_model("gpt2")):
            pass
    from truthprobe_eval.interventions import from_description

    again = from_description(made.describe())
    assert again.describe() == made.describe()
    from truthprobe_eval.analysis.leaderboard import method_from_description

    assert method_from_description(made.describe(), "tiny") == ("truth neurons", "n=7, factor=2.5")


def test_layer_overlap_statistics():
    from truthprobe_eval import TruthScores

    scores = TruthScores(np.tile(np.linspace(0.5, 0.9, 6)[:, None], (1, 4)), meta={"model": "m"})
    selected = np.zeros((6, 10), dtype=bool)
    for layer, n in enumerate([0, 0, 1, 2, 5, 8]):
        selected[layer, :n] = True
    neurons = NeuronScores(selected * 1.0, selected * 3.0, np.where(selected, 0.01, 0.5), selected)
    o = layer_overlap(neurons, scores, top_layers=2, top_heads=8)
    assert o["neuron_top_layers"] == [4, 5] and o["head_top_layers"] == [4, 5] and o["jaccard"] == 1.0
    assert o["p_overlap_at_least"] == pytest.approx(1 / 15) and o["spearman_rho"] > 0.8
