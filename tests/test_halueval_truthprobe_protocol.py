"""The TruthProbe paper's HaluEval protocol as lm-eval tasks, without a model: the exact prompt, the reply parsing
table, generation settings, the same (row, answer) pairs as halueval_qa, and metrics against hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest
from lm_eval.tasks import TaskManager
from truthprobe_eval.tasks import LM_EVAL_INCLUDE_PATH, TRUTHPROBE_GROUP, TRUTHPROBE_TASKS
from truthprobe_eval.tasks.halueval import truthprobe_protocol as tp


@pytest.fixture(scope="module")
def manager() -> TaskManager:
    return TaskManager(include_path=LM_EVAL_INCLUDE_PATH, include_defaults=False,
                       metadata={"halueval_offset": 292, "halueval_n": 40})


def test_tasks_and_group_are_indexed(manager):
    assert set(TRUTHPROBE_TASKS) | {TRUTHPROBE_GROUP} <= set(manager.all_tasks)


def test_prompt_is_the_published_string():
    expected = ("USER: You are a huallucination detector. You MUST determine if the provided answer contains "
                "hallucination or not for the question based on the world knowledge. The answer you provided MUST be "
                "Yes or No.\n\n#Knowledge:K text.\n\n#Question#: Q?\n#Answer#: A. ASSISTANT:")
    assert tp.prompt("Q?", "A.", "K text.") == expected
    assert expected.startswith(tp.shared_prefix())


def test_task_renders_the_prompt_plainly_and_generates_as_published(manager):
    task = manager.load(["halueval_truthprobe_seed0"])["tasks"]["halueval_truthprobe_seed0"]
    doc = task.eval_docs[0]
    assert doc["row"] == 292
    assert task.fewshot_context(doc, 0) == tp.prompt(doc["question"], doc["answer"], doc["knowledge"])
    kwargs = task.config.generation_kwargs
    assert kwargs["until"] == ["\n\n"] and kwargs["max_gen_toks"] == 7 and kwargs["do_sample"] is False


def test_same_rows_and_answer_draws_as_halueval_qa(manager):
    for seed in (0, 1, 2):
        ours = manager.load([f"halueval_truthprobe_seed{seed}"])["tasks"][f"halueval_truthprobe_seed{seed}"].eval_docs
        theirs = manager.load([f"halueval_qa_seed{seed}"])["tasks"][f"halueval_qa_seed{seed}"].eval_docs
        assert [(d["row"], d["answer"], d["label"]) for d in ours] == [(d["row"], d["answer"], d["label"]) for d in theirs]


@pytest.mark.parametrize("reply, parsed", [
    ("Yes.", "yes"), ("yes, it does", "yes"), ("No", "no"), ("The answer is Yes", None), ("", None),
    ("\nYes", "yes"), (" No.", "no"), ("YES", "yes"), ("no,", "no"), ("Yesterday", None), ("Nope", None),
    ("Yes!", None), ("yes\n\n#Question", "yes"), (None, None),
])
def test_parse_reply(reply, parsed):
    assert tp.parse_reply(reply) == parsed


def _doc(seed: int, hallucinated: bool) -> dict:
    return {"seed": seed, "hallucinated": hallucinated}


# gold (True = hallucinated answer shown), reply
CASE = [(True, "Yes"), (True, "yes, it is"), (True, "No"), (True, "The answer is Yes"),
        (False, "No."), (False, "Yes"), (False, " no"), (False, "")]


def test_metrics_of_one_seed_match_a_hand_computed_case(manager):
    task = manager.load(["halueval_truthprobe_seed0"])["tasks"]["halueval_truthprobe_seed0"]
    per_doc = [task.process_results(_doc(0, gold), [reply]) for gold, reply in CASE]
    assert set(per_doc[0]) == {*tp.SINGLE_METRICS, "correct"}
    # unparseable replies count as "no": row 4 is a false negative, row 8 a true negative
    assert [d["correct"] for d in per_doc] == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    agg = {name: fn([d[name] for d in per_doc]) for name, fn in task.aggregation().items()}
    # By hand: TP 2, FN 2, FP 1, TN 3; predicted yes 3 of 8, gold yes 4 of 8; unparseable 2
    precision, recall = 2 / 3, 2 / 4
    assert agg["acc"] == pytest.approx(5 / 8) == pytest.approx(agg["correct"])
    assert agg["precision"] == pytest.approx(precision)
    assert agg["recall"] == pytest.approx(recall)
    assert agg["f1"] == pytest.approx(4 / 7)
    assert agg["pred_yes_share"] == pytest.approx(3 / 8)
    assert agg["gold_yes_share"] == pytest.approx(4 / 8)
    assert agg["unparseable"] == 2


def test_no_predicted_positive_gives_zero_precision_and_f1(manager):
    task = manager.load(["halueval_truthprobe_seed0"])["tasks"]["halueval_truthprobe_seed0"]
    per_doc = [task.process_results(_doc(0, gold), ["No"]) for gold in (True, False, False)]
    agg = {name: fn([d[name] for d in per_doc]) for name, fn in task.aggregation().items()}
    assert (agg["precision"], agg["recall"], agg["f1"], agg["pred_yes_share"]) == (0.0, 0.0, 0.0, 0.0)
    assert agg["acc"] == pytest.approx(2 / 3)


def test_three_seed_task_reports_mean_and_std_over_seeds(manager):
    task = manager.load(["halueval_truthprobe"])["tasks"]["halueval_truthprobe"]
    assert len(task.eval_docs) == 3 * 40
    seed0 = [(_doc(0, gold), reply) for gold, reply in CASE]  # acc 5/8, f1 4/7, predicted yes 3/8
    seed1 = [(_doc(1, True), "Yes"), (_doc(1, False), "No")]  # acc 1, f1 1, predicted yes 1/2
    seed2 = [(_doc(2, True), "No"), (_doc(2, False), "Sure")]  # acc 1/2, f1 0, predicted yes 0
    per_doc = [task.process_results(doc, [reply]) for doc, reply in seed0 + seed1 + seed2]
    agg = {name: fn([d[name] for d in per_doc]) for name, fn in task.aggregation().items()}
    for name, values in {"acc": [5 / 8, 1, 1 / 2], "f1": [4 / 7, 1, 0], "pred_yes_share": [3 / 8, 1 / 2, 0],
                         "precision": [2 / 3, 1, 0], "recall": [1 / 2, 1, 0]}.items():
        assert agg[name] == pytest.approx(np.mean(values)), name
        assert agg[f"{name}_std"] == pytest.approx(np.std(values)), name
    assert agg["gold_yes_share"] == pytest.approx(np.mean([1 / 2, 1 / 2, 1 / 2]))
    assert agg["unparseable"] == 3


def test_halueval_qa_names_both_yes_shares(manager):
    task = manager.load(["halueval_qa_seed0"])["tasks"]["halueval_qa_seed0"]
    per_doc = [task.process_results(_doc(0, gold), [reply]) for gold, reply in [(True, "Yes"), (False, "Yes"), (False, "No")]]
    agg = {name: fn([d[name] for d in per_doc]) for name, fn in task.aggregation().items()}
    assert agg["pred_yes_share"] == pytest.approx(agg["yes_ratio"]) == pytest.approx(2 / 3)
    assert agg["gold_yes_share"] == pytest.approx(1 / 3)
