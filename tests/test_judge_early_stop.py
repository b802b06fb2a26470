"""Early stop of the TruthProbe-protocol HaluEval judge: a row stops generating once its parsed yes / no can no
longer change (``truthprobe_protocol.reply_decided``). The rule itself on a table and on random continuations; the
stopping criterion on a fake decoder; and on the real SmolLM2 (12 rows, both parse rules, ungated and under a gate
that changes answers): parsed replies, correct flags, metrics and Yes-minus-No margins equal the full generation's,
with fewer generation steps and tokens."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lm_eval.api.instance import Instance
from truthprobe_eval.model_adapters.lm_eval_truthgated import TruthGatedLM, early_stop_applies
from truthprobe_eval.tasks.halueval import truthprobe_protocol as tp

from truthprobe_eval.errors import InterventionError
from truthprobe_eval.generation import DecidedReplyStop, stable_text

RULES = tuple(tp.PARSE_RULES)
GEN_KWARGS = {"until": [tp.STOP], "max_gen_toks": tp.MAX_NEW_TOKENS, "do_sample": False, "temperature": 0.0}


# ---- the rule ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, decided", [
    ("", False), (" ", False), ("\n", False), ("y", False), ("Y", False), ("ye", False), (" YES", False),
    ("yes", False), ("n", False), ("\nNo", False), ("no", False),
    ("yes,", True), ("Yes.", True), ("yes ", True), ("yes\n", True), ("yesterday", True), ("Yes!", True),
    ("no.", True), ("No ", True), ("nope", True), ("not", True), ("the", True), ("The answer", True),
    ("ya", True), ("yes_", True), ("n o", True), ("y es", True), ("#", True), ("1", True),
])
def test_reply_decided_table(text, decided):
    assert tp.reply_decided(text) is decided


@pytest.mark.parametrize("text", ["", " ", "y", "ye", "yes", "n", "no"])
def test_undecided_texts_have_continuations_with_different_answers(text):
    """Where the rule says undecided, some continuation does change the parsed answer (the rule is tight)."""
    for rule in RULES:
        t = text.strip().lower()
        word = "no" if t.startswith("n") else "yes"
        yes_or_no = tp.parse_reply(text + word[len(t):] + ".", rule)
        other = tp.parse_reply(text + word[len(t):] + "x", rule)
        assert yes_or_no == word and other is None


ALPHABET = st.sampled_from(list("yesnoYESNO.,;!?_x1 \n\t") + ["\u00a0", "\u00e9", "\u3002", "\ufffd", "\u0130"])


@settings(max_examples=600, deadline=None)
@given(st.lists(ALPHABET, max_size=6).map("".join), st.lists(ALPHABET, max_size=6).map("".join))
def test_a_decided_reply_parses_the_same_whatever_follows(text, more):
    if tp.reply_decided(text):
        for rule in RULES:
            assert tp.parse_reply(text + more, rule) == tp.parse_reply(text, rule), (text, more, rule)


@pytest.mark.parametrize("text, stable", [
    ("Yes, it", "Yes, it"),
    ("Yes\n", "Yes"),                      # "\n" may begin "\n\n"
    ("No\n\nmore", "No"),                  # a whole stop sequence: the reply is final
    ("Yes\ufffd", "Yes"),                  # an incomplete multi-byte character
    ("Yes <|im", "Yes "),                  # the start of the eos string
    ("Yes<|im_end|>x", "Yes"),
    ("", ""),
])
def test_stable_text(text, stable):
    assert stable_text(text, ["\n\n", "<|im_end|>"]) == stable


def test_decided_reply_stop_per_row():
    """Rows stop when decided or when their text holds a stop sequence; rows left out run on."""
    vocab = {0: "", 1: "Yes", 2: ",", 3: " the", 4: "\n", 5: "No"}
    decode = lambda ids: "".join(vocab[i] for i in ids)  # noqa: E731
    stop = DecidedReplyStop(decode, tp.reply_decided, start=2, stops=["\n\n"], rows=[True, True, True, False])
    prompt = torch.tensor([[9, 9]] * 4)
    step1 = torch.cat([prompt, torch.tensor([[1], [4], [3], [3]])], dim=1)
    assert stop(step1, None).tolist() == [False, False, True, False]  # "Yes" undecided, "\n" may be "\n\n"
    step2 = torch.cat([step1, torch.tensor([[2], [4], [0], [0]])], dim=1)
    assert stop(step2, None).tolist() == [True, True, True, False]  # "Yes,"; "\n\n" (reply "" is final)
    assert stop.steps == 2 and stop.stopped_at == [2, 2, 1, None]


def _request(task: str | None, parse: str = "ours", **gen) -> Instance:
    return Instance("generate_until", {"parse": parse}, ("prompt", {**GEN_KWARGS, **gen}), 0,
                    metadata=(task, 0, 1))


def test_only_greedy_requests_of_the_truthprobe_tasks_stop_early():
    assert early_stop_applies(_request("halueval_truthprobe_seed0"))
    assert early_stop_applies(_request("halueval_truthprobe", parse="paper"))
    assert not early_stop_applies(_request("halueval_qa_seed0"))  # HaluEval's own judge parses differently
    assert not early_stop_applies(_request(None))
    assert not early_stop_applies(_request("halueval_truthprobe_seed1", parse="other"))
    assert not early_stop_applies(_request("halueval_truthprobe_seed1", do_sample=True))


def test_bad_early_stop_argument_fails_before_loading():
    with pytest.raises(InterventionError, match="early_stop: expected true or false, found 'maybe'"):
        TruthGatedLM(pretrained="/no/such/model", gate="none", early_stop="maybe")


# ---- the real judge --------------------------------------------------------------------------------------------

ROWS = (292, 12)  # with the chat template SmolLM2 answers "Yes, ..." and "No" on some of these rows
GATES = {"none": {"gate": "none"}, "random": {"gate": "random", "alpha": 0.5, "seed": 3}}


@pytest.fixture(scope="module")
def judged(smollm2, tmp_path_factory):
    """(rule, gate, variant) -> per-row records, metrics, results config, counts and forward calls."""
    from truthprobe_eval.experiments.halueval_judge import HaluEvalJudge, JudgeSettings, read_jsonl

    model, tokenizer = smollm2
    calls = [0]

    def count(module, args):
        calls[0] += 1

    handle = model.register_forward_pre_hook(count)
    variants = {"early": {"early_stop": True}, "full": {"early_stop": "false"},
                "early, no prefix cache": {"early_stop": True, "prefix_cache": False}}
    out = {}
    try:
        for rule in RULES:
            for gate_name, gate in GATES.items():
                for name, kwargs in variants.items():
                    if name == "early, no prefix cache" and (rule, gate_name) != ("ours", "none"):
                        continue
                    lm = TruthGatedLM(pretrained=model, tokenizer=tokenizer, method="none", batch_size=8,
                                      device="cpu", **kwargs)
                    judge = HaluEvalJudge(model, tokenizer, JudgeSettings(parse=rule, chat=True),
                                          tmp_path_factory.mktemp("judge"), log=lambda _: None, lm=lm)
                    calls[0] = 0
                    ev = judge(name, "test", ROWS[0], ROWS[1], dict(gate))
                    samples = sorted((s for _, s in read_jsonl(ev.samples_file, ValueError)), key=lambda s: s["doc_id"])
                    out[rule, gate_name, name] = {
                        "reply": [s["resps"][0][0] for s in samples],
                        "parsed": [tp.parse_reply(s["resps"][0][0], rule) for s in samples],
                        "correct": [s["correct"] for s in samples],
                        "pred_yes": [s["truthprobe"]["pred_yes"] for s in samples],
                        "margin": [s["truthprobe"]["yes_no_margin"] for s in samples],
                        "parse": {s["doc"]["parse"] for s in samples},
                        "metrics": ev.metrics,
                        "config": json.loads(open(ev.result_file).read())["config"],
                        "counts": dict(lm.generation_counts), "calls": calls[0]}
    finally:
        handle.remove()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("gate", GATES)
def test_early_stop_gives_the_full_generations_answers(judged, rule, gate):
    early, full = judged[rule, gate, "early"], judged[rule, gate, "full"]
    assert early["parse"] == full["parse"] == {rule}
    for key in ("parsed", "correct", "pred_yes", "margin", "metrics"):
        assert early[key] == full[key], key
    for short, whole in zip(early["reply"], full["reply"]):
        assert whole.startswith(stable_text(short, [tp.STOP]))  # the logged reply is the decided prefix
    assert early["config"]["early_stop"]["enabled"] and early["config"]["early_stop"]["requests"] == ROWS[1]
    assert early["config"]["early_stop"]["logged_reply"] == "the decided prefix"
    assert not full["config"]["early_stop"]["enabled"] and full["config"]["early_stop"]["requests"] == 0
    # fewer generation steps, tokens and forward calls, in the same number of batches
    e, f = early["counts"], full["counts"]
    assert e["batches"] == f["batches"] >= 2 and e["early_stop_batches"] == e["batches"] and f["early_stop_batches"] == 0
    assert e["steps"] < f["steps"] and e["tokens"] < f["tokens"] and early["calls"] < full["calls"]
    assert full["calls"] - early["calls"] == f["steps"] - e["steps"]


@pytest.mark.slow
def test_the_rows_cover_yes_no_and_the_gate_changes_answers(judged):
    ungated, gated = judged["ours", "none", "full"], judged["ours", "random", "full"]
    assert {"yes", "no", None} <= set(ungated["parsed"])  # both answers and unparseable replies occur
    assert ungated["parsed"] != gated["parsed"]
    assert judged["paper", "none", "full"]["reply"] == ungated["reply"]  # the rule parses; it does not generate


@pytest.mark.slow
def test_early_stop_without_the_prefix_cache(judged):
    plain, full = judged["ours", "none", "early, no prefix cache"], judged["ours", "none", "full"]
    for key in ("parsed", "correct"):
        assert plain[key] == full[key], key
    assert plain["margin"] == pytest.approx(full["margin"], abs=1e-4)  # the prefix cache reorders float sums
    assert plain["counts"]["steps"] == judged["ours", "none", "early"]["counts"]["steps"] < full["counts"]["steps"]
