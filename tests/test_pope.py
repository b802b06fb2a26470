"""POPE metrics (truthprobe_eval.tasks.pope): hand-computed cases, VLMEvalKit's own yes/no extraction, and equality
with VLMEvalKit's POPE_rating on the same predictions."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from truthprobe_eval.tasks.pope import (
    POPEInputError,
    binary_metrics,
    extract_answers,
    format_table,
    metrics_table,
    pope_metrics,
)

LABELS = ["yes", "yes", "yes", "no", "no", "no", "yes", "no"]
REPLIES = ["Yes, there is.", "no", "I think so", "No.", "yes", "Yes and no", "YES!", "There is no dog."]
# VLMEvalKit's YOrN_Extraction: Yes iff the word "yes" and not "no" (after its punctuation handling), and back
EXTRACTED = ["Yes", "No", "Unknown", "No", "Yes", "Unknown", "Yes", "No"]
SPLITS = ["random,adversarial", "random", "random", "random", "popular", "popular", "popular,adversarial", "popular"]


def test_extraction_is_vlmevalkits():
    assert list(extract_answers(REPLIES)) == EXTRACTED


def test_binary_metrics_by_hand():
    m = binary_metrics(LABELS, EXTRACTED)
    # correct: rows 1, 4, 7, 8 -> 4/8; tp rows 1, 7; fp row 5; fn rows 2, 3 (an Unknown reply counts as "no")
    assert m["accuracy"] == pytest.approx(0.5)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 2, 3)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(4 / 7)  # 2 * (2/3 * 1/2) / (2/3 + 1/2)
    assert m["yes_ratio"] == pytest.approx(3 / 8)
    assert (m["unknown"], m["unknown_ratio"]) == (2, pytest.approx(0.25))


def test_per_split_mean_and_overall_by_hand():
    r = pope_metrics(LABELS, EXTRACTED, SPLITS)
    assert list(r["splits"]) == ["random", "popular", "adversarial"]
    rnd, pop, adv = (r["splits"][s] for s in ("random", "popular", "adversarial"))
    # random = rows 1-4: labels Y Y Y N, replies Y N U N
    assert (rnd["accuracy"], rnd["precision"], rnd["recall"], rnd["f1"]) == pytest.approx((0.5, 1.0, 1 / 3, 0.5))
    assert (rnd["yes_ratio"], rnd["unknown"]) == (pytest.approx(0.25), 1)
    # popular = rows 5-8: labels N N Y N, replies Y U Y N
    assert (pop["accuracy"], pop["precision"], pop["recall"], pop["f1"]) == pytest.approx((0.5, 0.5, 1.0, 2 / 3))
    assert pop["yes_ratio"] == pytest.approx(0.5)
    # adversarial = rows 1 and 7, both yes and answered yes
    assert (adv["n"], adv["accuracy"], adv["f1"], adv["yes_ratio"]) == (2, 1.0, 1.0, 1.0)
    mean = r["mean"]
    assert mean["accuracy"] == pytest.approx(2 / 3)
    assert mean["precision"] == pytest.approx(5 / 6)
    assert mean["recall"] == pytest.approx(7 / 9)
    assert mean["f1"] == pytest.approx(13 / 18)
    assert mean["yes_ratio"] == pytest.approx(7 / 12)
    assert mean["unknown_ratio"] == pytest.approx(1 / 6)
    # overall pools the 10 (split, question) pairs: 6 correct, tp 4, fp 1, fn 2
    ov = r["overall"]
    assert (ov["n"], ov["accuracy"], ov["precision"], ov["recall"]) == (10, pytest.approx(0.6), pytest.approx(0.8), pytest.approx(2 / 3))
    assert ov["f1"] == pytest.approx(8 / 11)
    rows = metrics_table(r)
    assert [row["split"] for row in rows] == ["random", "popular", "adversarial", "mean", "overall"]
    assert rows[3]["f1"] == pytest.approx(100 * 13 / 18) and rows[3]["unknown"] == 2
    assert "adversarial" in format_table(r)


def _pope_rating_of(tmp_path, labels, extracted, splits) -> pd.DataFrame:
    from vlmeval.dataset.utils.yorn import POPE_rating

    answers = ["Yes" if str(x).lower() == "yes" else "No" for x in labels]
    frame = pd.DataFrame({"index": range(len(labels)), "answer": answers, "extracted": extracted,
                          "category": splits})
    frame["score"] = frame["answer"] == frame["extracted"]
    path = tmp_path / "scored.xlsx"
    frame.to_excel(path, index=False)
    return POPE_rating(str(path)).set_index("split")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_vlmevalkit_pope_rating(tmp_path, seed):
    """Random predictions with unparseable replies and shared questions: same numbers as POPE_rating."""
    rng = np.random.default_rng(seed)
    n = 60
    labels = rng.choice(["yes", "no"], size=n)
    words = ["Yes", "No", "yes, it is", "no.", "maybe", "Yes no", "There is a cat."]
    replies = [words[i] for i in rng.integers(0, len(words), size=n)]
    extracted = list(extract_answers(replies))
    splits = [",".join(sorted(set(rng.choice(["random", "popular", "adversarial"], size=rng.integers(1, 3))))) for _ in range(n)]
    ours = pope_metrics(labels, extracted, splits)
    theirs = _pope_rating_of(tmp_path, labels, extracted, splits)
    assert "Unknown" in extracted
    for split, m in [*ours["splits"].items(), ("Overall", ours["overall"])]:
        row = theirs.loc[split]
        assert 100 * m["f1"] == pytest.approx(row["Overall"])
        assert 100 * m["accuracy"] == pytest.approx(row["acc"])
        assert 100 * m["precision"] == pytest.approx(row["precision"])
        assert 100 * m["recall"] == pytest.approx(row["recall"])
    assert set(theirs.index) == {"Overall", *ours["splits"]}


def test_bad_input_is_named():
    with pytest.raises(POPEInputError, match="label 1: expected yes or no"):
        binary_metrics(["yes", "maybe"], ["Yes", "No"])
    with pytest.raises(POPEInputError, match="one reply per label"):
        binary_metrics(["yes"], ["Yes", "No"])
    with pytest.raises(POPEInputError, match="Yes, No or Unknown"):
        binary_metrics(["yes"], ["sure"])
    with pytest.raises(POPEInputError, match="question 1: expected a split name"):
        pope_metrics(["yes", "no"], ["Yes", "No"], ["random", ""])
