"""Split padding: a generation batch whose prompts differ a lot in length runs as several generate calls, each at its
own width (``generation.padding_groups``). The grouping against a brute-force search over every split; and on the
real SmolLM2 judge (12 HaluEval rows, one of them twice as long as the others), ungated and under a gate that
changes answers: the same replies, correct flags and metrics as one call per batch, margins to float rounding,
in more generate calls over fewer padded tokens."""
from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from truthprobe_eval.errors import InterventionError
from truthprobe_eval.generation import SPLIT_COST_TOKENS, padding_groups


def _cost(lengths, groups, split_cost):
    return sum(len(g) * max(lengths[i] for i in g) for g in groups) + split_cost * (len(groups) - 1)


def _partitions(items):
    """Every set partition of ``items`` (small inputs only)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first, *part[i]]] + part[i + 1:]
        yield [[first], *part]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 500), min_size=1, max_size=7), st.integers(0, 300))
def test_padding_groups_cost_the_least_of_every_split(lengths, split_cost):
    groups = padding_groups(lengths, split_cost)
    assert sorted(itertools.chain(*groups)) == list(range(len(lengths)))  # every row once
    assert all(g == sorted(g) for g in groups)  # rows keep their order inside a group
    best = min(_cost(lengths, p, split_cost) for p in _partitions(list(range(len(lengths)))))
    assert _cost(lengths, groups, split_cost) == best


def test_padding_groups_examples():
    assert padding_groups([389, 252, 240, 238, 215, 204, 197, 186], 160) == [[0], [1, 2, 3, 4, 5, 6, 7]]
    assert padding_groups([200, 190, 180, 170]) == [[0, 1, 2, 3]]  # little padding: one call
    assert padding_groups([5], 0) == [[0]]
    assert SPLIT_COST_TOKENS > 0


def test_bad_split_padding_argument_fails_before_loading():
    from truthprobe_eval.model_adapters.lm_eval_truthgated import TruthGatedLM

    with pytest.raises(InterventionError, match="split_padding: expected true or false, found 'often'"):
        TruthGatedLM(pretrained="/no/such/model", gate="none", split_padding="often")


# ---- the real judge --------------------------------------------------------------------------------------------

ROWS = (306, 12)  # row 313's prompt is 437 SmolLM2 tokens, the others 147-288
GATES = {"none": {"gate": "none"}, "random": {"gate": "random", "alpha": 0.5, "seed": 3}}


@pytest.fixture(scope="module")
def judged(smollm2, tmp_path_factory):
    from truthprobe_eval.experiments.halueval_judge import HaluEvalJudge, JudgeSettings, read_jsonl
    from truthprobe_eval.model_adapters.lm_eval_truthgated import TruthGatedLM

    model, tokenizer = smollm2
    out = {}
    for gate_name, gate in GATES.items():
        for split in (True, False):
            lm = TruthGatedLM(pretrained=model, tokenizer=tokenizer, method="none", batch_size=8, device="cpu",
                              split_padding=split)
            judge = HaluEvalJudge(model, tokenizer, JudgeSettings(), tmp_path_factory.mktemp("judge"),
                                  log=lambda _: None, lm=lm)
            ev = judge("split" if split else "one call", "test", ROWS[0], ROWS[1], dict(gate))
            samples = sorted((s for _, s in read_jsonl(ev.samples_file, ValueError)), key=lambda s: s["doc_id"])
            out[gate_name, split] = {
                "reply": [s["resps"][0][0] for s in samples], "correct": [s["correct"] for s in samples],
                "pred_yes": [s["truthprobe"]["pred_yes"] for s in samples],
                "margin": [s["truthprobe"]["yes_no_margin"] for s in samples], "metrics": ev.metrics,
                "config": json.loads(open(ev.result_file).read())["config"], "counts": dict(lm.generation_counts)}
    return out


@pytest.mark.slow
@pytest.mark.parametrize("gate", GATES)
def test_split_batches_give_the_same_replies(judged, gate):
    split, whole = judged[gate, True], judged[gate, False]
    for key in ("reply", "correct", "pred_yes"):
        assert split[key] == whole[key], key
    assert split["margin"] == pytest.approx(whole["margin"], abs=1e-4)  # other widths, other float sums
    assert {k: v for k, v in split["metrics"].items() if k != "margin_auroc"} == \
        {k: v for k, v in whole["metrics"].items() if k != "margin_auroc"}
    assert split["config"]["split_padding"] is True and whole["config"]["split_padding"] is False
    # lm-eval's two batches (8 + 4 rows); the long row runs apart from the first batch's seven others
    assert whole["counts"]["batches"] == 2 and split["counts"]["batches"] == 3


@pytest.mark.slow
def test_the_gate_changes_answers_on_these_rows(judged):
    assert judged["none", True]["reply"] != judged["random", True]["reply"]
