"""The RVE paper's own ablations and the naming of our baseline: ``heads=sensitive`` (the paper's
"Sensitive-only"), ``denoise=false`` (M = M_enh), ``variant=whole_span`` (ours, the PAI-style baseline; the old
name ``global`` still loads), and the head knockout that validates ARS (top-K ARS heads vs K random heads zeroed),
on tiny config-built models; the ``truthprobe ars knockout`` command on the real SmolLM2 (slow)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

from truthprobe_eval import TruthScores, locate_heads
from truthprobe_eval.analysis import knockout as ko
from truthprobe_eval.attention_edit import SpanTracker
from truthprobe_eval.errors import InterventionError
from truthprobe_eval.interventions import build, from_description
from truthprobe_eval.interventions.rve import RVE, WHOLE_SPAN_NAME, RowEdit, sensitive_count, span_mask

IMAGE = 100  # the tiny LLaVA's image token id


def _ars(tmp_path, values, name="ars.json") -> str:
    return str(TruthScores(np.asarray(values, dtype=float), meta={"model": "tiny", "kind": "ars"}).save(tmp_path / name))


# ---- denoise=false: M = M_enh ---------------------------------------------------------------------------------

def _scores_by_hand() -> torch.Tensor:
    """(H=4, N=8): heads 0-1 (the sensitive ones) rank positions 0 > 1 > 2 > ...; heads 2-3 put 9, 8, 7 on 1, 4, 6."""
    sens = [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0]
    non = [0.0, 9.0, 0.0, 0.0, 8.0, 0.0, 7.0, 0.0]
    return torch.tensor([sens, sens, non, non])


def test_denoise_false_gives_m_enh_by_hand():
    scores = _scores_by_hand()
    # alpha 0.4 of N = 8: m = floor(3.2) = 3; M_enh = top-3 of the sensitive mean = {0, 1, 2}; M_den = {1, 4, 6}
    m_enh = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0], dtype=scores.dtype)
    m_rve = torch.tensor([1, 0, 1, 0, 0, 0, 0, 0], dtype=scores.dtype)  # M_enh AND NOT M_den
    assert torch.equal(span_mask(scores, [0, 1], [2, 3], 0.4, "rve", denoise=False), m_enh)
    assert torch.equal(span_mask(scores, [0, 1], [2, 3], 0.4, "rve", denoise=True), m_rve)
    assert torch.equal(span_mask(scores, [0, 1], [2, 3], 0.4, "rve"), m_rve)  # the default denoises
    whole = torch.ones(8, dtype=scores.dtype)
    assert torch.equal(span_mask(scores, [], [], 0.4, "whole_span"), whole)
    assert torch.equal(span_mask(scores, [], [], 0.4, "global"), whole)  # the old name

    # through RowEdit on the last query row: S + beta |S| M_enh in every head
    tracker = SpanTracker(lambda ids: ids == IMAGE)
    ids = torch.tensor([[1] + [IMAGE] * 8 + [2]])
    tracker.observe(ids)
    full = torch.zeros(1, 4, 1, 10)
    full[0, :, 0, 1:9] = scores
    full[0, :, 0, 0], full[0, :, 0, 9] = 1.5, -2.0
    for denoise, mask in ((False, m_enh), (True, m_rve)):
        rve = build("rve", control="random_heads", layers="0", k=2, alpha=0.4, beta=2.0, denoise=str(denoise).lower())
        edited = RowEdit(rve.settings, tracker, [0, 1], [2, 3])(full, None)
        expected = full.clone()
        expected[0, :, 0, 1:9] = scores + 2.0 * scores.abs() * mask
        assert torch.equal(edited, expected)


# ---- settings: parsing, labels, rows ------------------------------------------------------------------------

def test_the_new_settings_parse_from_strings_and_name_each_ablation(tmp_path):
    from lm_eval.utils import simple_parse_args_string

    ars = _ars(tmp_path, np.random.default_rng(0).uniform(size=(3, 4)))
    default = build("rve", ars=ars, layers="1", k=1)
    assert (default.settings["heads"], default.settings["denoise"]) == ("all", True)  # the paper's RVE
    assert default.label() == "RVE (layers 1, K 1, beta 1, alpha 0.05)"
    assert RVE.table_row(default.describe()) == ("RVE", "layers=1, beta=1, K=1, alpha=0.05")
    parsed = simple_parse_args_string(f"ars={ars},layers=1,k=1,heads=sensitive,denoise=false")  # lm-eval's parser
    both = build("rve", **parsed)
    assert (both.settings["heads"], both.settings["denoise"]) == ("sensitive", False)
    for text, value in (("false", False), ("False", False), ("0", False), ("true", True), ("1", True)):
        assert build("rve", ars=ars, layers="1", k=1, denoise=text).settings["denoise"] is value
    sensitive = build("rve", ars=ars, layers="1", k=1, heads="sensitive")
    no_den = build("rve", ars=ars, layers="1", k=1, denoise=False)
    assert sensitive.label() == "RVE, sensitive heads only (layers 1, K 1, beta 1, alpha 0.05)"
    assert no_den.label() == "RVE, no denoising (layers 1, K 1, beta 1, alpha 0.05)"
    assert both.label().startswith("RVE, sensitive heads only, no denoising (")
    assert RVE.table_row(sensitive.describe())[0] == "RVE, sensitive heads only"
    assert RVE.table_row(no_den.describe())[0] == "RVE, no denoising"
    assert RVE.table_row(sensitive.control("random_heads", 3).describe())[0] == "RVE, sensitive heads only, random heads"
    described = sensitive.describe()
    assert described["heads"] == "sensitive" and described["denoise"] is True
    assert described["ars_heads"]["1"]["edited"] == sorted(np.argsort(-np.asarray(sensitive.scores.values[1]),
                                                                      kind="stable")[:2].tolist())
    assert "edited" not in default.describe()["ars_heads"]["1"]
    assert from_description(json.loads(json.dumps(described))).describe() == described  # rebuilds from JSON
    from truthprobe_eval.analysis.leaderboard import method_from_description

    assert method_from_description(no_den.describe(), "tiny")[0] == "RVE, no denoising"
    with pytest.raises(InterventionError, match="heads: expected one of all, sensitive, found 'half'"):
        build("rve", ars=ars, layers="1", k=1, heads="half")
    with pytest.raises(InterventionError, match="denoise: expected true or false, found 'maybe'"):
        build("rve", ars=ars, layers="1", k=1, denoise="maybe")
    with pytest.raises(InterventionError, match="needs an ARS score file"):
        build("rve", heads="sensitive")
    with pytest.raises(InterventionError, match="heads=sensitive: variant=whole_span boosts every head"):
        build("rve", variant="whole_span", heads="sensitive")
    with pytest.raises(InterventionError, match="denoise=false: variant=whole_span has no denoising mask"):
        build("rve", variant="whole_span", denoise="false")
    assert [sensitive_count(h) for h in (1, 4, 5, 9)] == [1, 2, 3, 5]  # ceil(H / 2)


def test_variant_global_still_loads_and_is_described_as_whole_span(tmp_path):
    with pytest.warns(DeprecationWarning, match="variant='global' is deprecated, read as variant='whole_span'"):
        old = build("rve", variant="global", layers="0-1", beta=1.0)
    new = build("rve", variant="whole_span", layers="0-1", beta=1.0)
    assert old.describe() == new.describe() and old.describe()["variant"] == "whole_span"
    assert new.label() == "whole-span attention boost (PAI-style baseline, no ARS; layers 0-1, beta 1)"
    assert RVE.table_row(new.describe()) == (WHOLE_SPAN_NAME, "layers=0-1, beta=1")
    assert WHOLE_SPAN_NAME == "whole-span attention boost (PAI-style baseline, no ARS)"
    # result files written before the rename: variant "global", and the ARS heads recorded under "heads"
    ars = _ars(tmp_path, np.random.default_rng(1).uniform(size=(3, 4)))
    recorded_global = {"method": "rve", "apply": "hook", "ars": None, "layers": "0-1", "k": 5, "beta": 1.0,
                       "alpha": 0.05, "variant": "global", "span": "image", "control": "none", "seed": 0,
                       "ars_model": None, "label": "global boost (layers 0-1, beta 1)", "identity": False}
    recorded_rve = {**recorded_global, "ars": ars, "variant": "rve", "k": 1, "ars_model": "tiny",
                    "heads": {"0": {"sensitive": [2], "non_sensitive": [1]}}, "label": "RVE (...)"}
    from truthprobe_eval.analysis.leaderboard import method_from_description

    assert method_from_description(recorded_global, "tiny") == (WHOLE_SPAN_NAME, "layers=0-1, beta=1")
    assert method_from_description(recorded_rve, "tiny")[0] == "RVE"  # the old ARS-heads dict is not heads=sensitive
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert from_description(recorded_global).describe() == new.describe()
    rebuilt = from_description(recorded_rve)
    assert rebuilt.settings["heads"] == "all" and rebuilt.describe()["ars_heads"]["0"]["sensitive"]


# ---- heads=sensitive: the top half of the heads, the others untouched -----------------------------------------

def test_sensitive_heads_edit_exactly_the_top_half_of_the_scores(tmp_path):
    # five heads: ARS of layer 1 ranks them 0 > 3 > 2 > 4 > 1, so ceil(5 / 2) = 3 heads are edited: 0, 2, 3
    values = np.array([[0.5] * 5, [0.9, 0.1, 0.5, 0.7, 0.3]])
    ars = _ars(tmp_path, values)
    sensitive = build("rve", ars=ars, layers="1", k=1, alpha=0.5, beta=1.5, heads="sensitive")
    every = build("rve", ars=ars, layers="1", k=1, alpha=0.5, beta=1.5)
    assert sensitive.edited_heads(2, 5) == {1: [0, 2, 3]} and every.edited_heads(2, 5) == {1: None}
    assert sensitive.heads(2, 5) == every.heads(2, 5) == {1: ([0], [1])}
    tracker = SpanTracker(lambda ids: ids == IMAGE)
    ids = torch.tensor([[1, 2] + [IMAGE] * 10 + [3, 4]])
    tracker.observe(ids)
    scores = torch.randn(1, 5, 1, ids.shape[1], generator=torch.Generator().manual_seed(0))
    sens, non = sensitive.heads(2, 5)[1]
    only = RowEdit(sensitive.settings, tracker, sens, non, sensitive.edited_heads(2, 5)[1])(scores, None)
    full = RowEdit(every.settings, tracker, sens, non)(scores, None)
    for head in (1, 4):
        assert torch.equal(only[0, head], scores[0, head])  # left untouched
    for head in (0, 2, 3):
        assert torch.equal(only[0, head], full[0, head])  # the very edit RVE gives every head
        assert not torch.equal(only[0, head], scores[0, head])
    assert not (only != scores)[..., ~tracker.mask[0]].any()  # the span columns only
    # the random-heads control ranks the heads at random, and edits the top half of that ranking
    control = sensitive.control("random_heads", seed=2)
    order = control.ranking(2, 5)[1]
    assert control.edited_heads(2, 5)[1] == sorted(order[:3]) and control.heads(2, 5)[1] == (order[:1], order[::-1][:1])


def test_sensitive_heads_in_a_model_change_only_those_heads_attention(tmp_path):
    model = tiny_model("llava")  # 3 layers of 4 heads (2 key-value heads); image token id 100
    model.config.get_text_config()._attn_implementation = "eager"
    values = np.random.default_rng(3).uniform(size=locate_heads(model).shape)
    ars = _ars(tmp_path, values)
    settings = dict(ars=ars, layers="1", k=1, alpha=0.5, beta=2.0)
    sensitive, every = build("rve", heads="sensitive", **settings), build("rve", **settings)
    edited = sensitive.edited_heads(3, 4)[1]
    assert edited == sorted(np.argsort(-values[1], kind="stable")[:2].tolist())
    ids = torch.tensor([[1, 5] + [IMAGE] * 8 + [7, 8, 9]])
    with torch.no_grad():
        plain = model(input_ids=ids, output_attentions=True).attentions[1]
        with sensitive.attach(model):
            got = model(input_ids=ids, output_attentions=True).attentions[1]
        with every.attach(model):
            all_heads = model(input_ids=ids, output_attentions=True).attentions[1]
    others = [h for h in range(4) if h not in edited]
    assert torch.allclose(got[0, others], plain[0, others], atol=1e-7)  # untouched heads: the plain attention
    assert torch.allclose(got[0, edited], all_heads[0, edited], atol=1e-7)  # edited heads: as under heads=all
    assert not torch.allclose(got[0, edited, -1], plain[0, edited, -1])
    assert not torch.allclose(all_heads[0, others, -1], plain[0, others, -1])  # heads=all does change them


# ---- head knockout ----------------------------------------------------------------------------------------------

def _o_proj_inputs(model, ids) -> list[torch.Tensor]:
    """Each layer's output-projection input (after any pre-hooks) for ``ids``."""
    seen: list[torch.Tensor] = []
    handles = [proj.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach().clone()))
               for proj in locate_heads(model).out_projs]
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_the_knockout_zeroes_exactly_the_chosen_heads_at_the_o_proj_input():
    model = tiny_model("llama")  # 3 layers of 4 heads, head_dim 8
    sites = locate_heads(model)
    ids = torch.tensor([[1, 5, 9, 17, 33, 65, 3]])
    plain = _o_proj_inputs(model, ids)
    heads = [(1, 0), (1, 3), (2, 2)]
    chunk = lambda x, h: x[..., h * sites.head_dim:(h + 1) * sites.head_dim]  # noqa: E731
    with ko.zero_heads(model, heads) as gates:
        knocked = _o_proj_inputs(model, ids)
    assert gates.shape == (3, 4) and set(zip(*np.nonzero(gates == 0))) == set(heads)
    made = ko.HeadKnockout.of(heads, "three heads")
    with made.attach(model):
        through_intervention = _o_proj_inputs(model, ids)
    assert all(torch.equal(a, b) for a, b in zip(knocked, through_intervention))
    for layer in range(3):
        for head in range(4):
            if (layer, head) in heads:
                assert torch.equal(chunk(knocked[layer], head), torch.zeros_like(chunk(knocked[layer], head)))
            else:
                assert chunk(knocked[layer], head).abs().sum() > 0
    assert torch.equal(knocked[0], plain[0])  # before the first knocked layer nothing changes
    for head in (1, 2):  # in it, the other heads' outputs are exactly the plain ones
        assert torch.equal(chunk(knocked[1], head), chunk(plain[1], head))
    assert all(torch.equal(a, b) for a, b in zip(_o_proj_inputs(model, ids), plain))  # hooks removed
    assert made.describe()["heads"] == "1.0,1.3,2.2" and made.label() == "three heads"
    assert ko.HeadKnockout.of([]).identity
    with pytest.raises(ko.KnockoutError, match=r"expected heads of a \(3, 4\) model, found 3.0"):
        ko.HeadKnockout.of([(3, 0)]).check_fits(model)
    with pytest.raises(ko.KnockoutError, match="expected LAYER.HEAD pairs"):
        ko.parse_heads("1.2,7")


def test_the_top_and_random_heads_and_the_pool():
    values = np.array([[0.1, 0.9, 0.2, 0.9], [0.8, 0.0, 0.3, 0.5], [0.05, 0.6, 0.7, 0.0]])
    assert ko.top_heads(values, 3) == [(0, 1), (0, 3), (1, 0)]  # ties: the lower layer, then head, first
    assert ko.top_heads(values, 2, layers=[1, 2]) == [(1, 0), (2, 2)]
    draws = [ko.random_heads((3, 4), 4, seed) for seed in range(6)]
    assert draws[0] == ko.random_heads((3, 4), 4, 0) and len({tuple(d) for d in draws}) > 1  # seeded, and varied
    assert all(len(set(d)) == 4 and d == sorted(d) and all(0 <= l < 3 and 0 <= h < 4 for l, h in d) for d in draws)
    within = ko.random_heads((3, 4), 5, 1, layers=[2, 0])
    assert all(layer in (0, 2) for layer, _ in within) and within == ko.random_heads((3, 4), 5, 1, layers=[0, 2])
    with pytest.raises(ko.KnockoutError, match="k: expected 1 to 4"):
        ko.top_heads(values, 5, layers=[1])
    with pytest.raises(ko.KnockoutError, match="layers: expected 0 to 2"):
        ko.random_heads((3, 4), 1, 0, layers=[3])


def test_head_knockout_reports_the_drop_of_the_top_k_and_of_each_random_draw(tmp_path):
    model = tiny_model("llama")
    rows = torch.tensor([[1, 5, 9, 17, 33, 65, 3, 8], [2, 7, 11, 13, 19, 23, 29, 31]])
    with torch.no_grad():
        reference = model(input_ids=rows).logits.argmax(-1)

    def agreement():  # a deterministic "accuracy": the share of next-token choices the plain model would make
        with torch.no_grad():
            return {"acc": float((model(input_ids=rows).logits.argmax(-1) == reference).float().mean()), "n": 16.0}

    values = np.random.default_rng(5).uniform(size=(3, 4))
    ars = TruthScores(values, meta={"model": "tiny", "kind": "ars"})
    calls = []

    def evaluate(name, made):
        calls.append((name, made.describe().get("heads")))
        return ko.attached(model, agreement)(name, made)

    result = ko.head_knockout(model, ars, evaluate, k=3, draws=3, seed=7)
    assert [c[0] for c in calls] == ["baseline", "top3_ars", "random3_draw0", "random3_draw1", "random3_draw2"]
    assert result.baseline.value == 1.0 and result.baseline.label == "baseline"
    assert result.top.heads == ko.top_heads(values, 3) and result.top.label == "top-3 ARS heads zeroed"
    assert calls[1][1] == ko.format_heads(result.top.heads)
    assert result.seeds == [7, 8, 9]
    for i, run in enumerate(result.random):
        assert run.heads == ko.random_heads((3, 4), 3, 7 + i) and run.seed == 7 + i  # reproducible draws
        assert run.label == f"3 random heads zeroed (draw {i})"
        assert run.shared_with_top == len(set(run.heads) & set(result.top.heads))
    for run in (result.top, *result.random):
        assert run.drop == pytest.approx(1.0 - run.value) and run.metrics["n"] == 16.0
    assert result.top.drop > 0  # zeroing three of twelve heads changes some next-token choices
    summary = result.summary()
    drops = [r.drop for r in result.random]
    assert summary["random_drop_mean"] == pytest.approx(np.mean(drops))
    assert summary["random_drop_std"] == pytest.approx(np.std(drops, ddof=1))
    assert summary["random_at_least_top"] == sum(d >= result.top.drop for d in drops) and summary["pool"] == "model"
    payload = json.loads(json.dumps(result.to_dict()))
    assert [r["label"] for r in payload["runs"]] == ["baseline", "top-3 ARS heads zeroed",
                                                    *(f"3 random heads zeroed (draw {i})" for i in range(3))]
    text = result.markdown()
    assert "| top-3 ARS heads zeroed |" in text and "| 3 random heads zeroed (draw 2) |" in text and "| baseline |" in text
    again = ko.head_knockout(model, ars, ko.attached(model, agreement), k=3, draws=3, seed=7)
    assert [r.value for r in again.runs] == [r.value for r in result.runs]  # the same numbers on a rerun
    within = ko.head_knockout(model, ars, ko.attached(model, lambda: agreement()["acc"]), k=2, draws=2, layers=[1])
    assert within.pool == "layers 1" and all(l == 1 for r in within.runs for l, _ in r.heads)
    with pytest.raises(Exception, match=r"have shape \(2, 4\)"):
        ko.head_knockout(model, TruthScores(np.ones((2, 4))), evaluate, k=1)
    with pytest.raises(ko.KnockoutError, match="metric: the evaluation returned acc, n, not 'f1'"):
        ko.head_knockout(model, ars, ko.attached(model, agreement), k=1, draws=1, metric="f1")


def test_the_knockout_command_checks_its_settings_before_loading_a_model(tmp_path, capsys):
    from truthprobe_eval.cli import main

    truth = TruthScores(np.ones((30, 9)), meta={"model": "m"}).save(tmp_path / "truth.json")
    assert main(["ars", "knockout", "--ars", str(truth), "--out", str(tmp_path / "o")]) == 2
    assert "expected a score file with meta.kind 'ars'" in capsys.readouterr().err
    ars = TruthScores(np.ones((30, 9)), meta={"model": "m", "kind": "ars", "pairs": "halueval",
                                             "halueval_rows": 200}).save(tmp_path / "ars.json")
    assert main(["ars", "knockout", "--ars", str(ars), "--offset", "150", "--out", str(tmp_path / "o")]) == 2
    assert "overlap the HaluEval rows ARS was scored on (0-199)" in capsys.readouterr().err
    assert main(["ars", "knockout", "--ars", str(ars), "--k", "300", "--out", str(tmp_path / "o")]) == 2
    assert "k: expected 1 to 270" in capsys.readouterr().err
    assert main(["ars", "knockout", "--ars", str(ars), "--layers", "40", "--out", str(tmp_path / "o")]) == 2
    assert "layers: expected 0 to 29" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_the_knockout_command_on_smollm2(tmp_path, capsys):
    from truthprobe_eval.cli import main

    ars = TruthScores(np.random.default_rng(0).uniform(size=(30, 9)), meta={"model": "smollm2", "kind": "ars"})
    path = ars.save(tmp_path / "ars.json")
    out = tmp_path / "knockout"
    assert main(["ars", "knockout", "--ars", str(path), "--k", "3", "--draws", "2", "--offset", "342", "--n", "2",
                 "--layers", "10-19", "--out", str(out), "--quiet"]) == 0
    payload = json.loads((out / "knockout.json").read_text())
    labels = [r["label"] for r in payload["runs"]]
    assert labels == ["baseline", "top-3 ARS heads zeroed", "3 random heads zeroed (draw 0)",
                      "3 random heads zeroed (draw 1)"]
    assert payload["pool"] == "layers 10,11,12,13,14,15,16,17,18,19" and payload["n"] == 2
    assert all(10 <= h[0] <= 19 for r in payload["runs"] for h in r["heads"])
    assert payload["summary"]["draws"] == 2 and "acc" in payload["runs"][0]["metrics"]
    record = json.loads((out / "lm_eval" / "top3_ars.json").read_text())["config"]["intervention"]
    assert record["method"] == "head_knockout" and record["label"] == "top-3 ARS heads zeroed"
    assert "| top-3 ARS heads zeroed |" in (out / "knockout.md").read_text()
