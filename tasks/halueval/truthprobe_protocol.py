"""HaluEval QA under the TruthProbe paper's protocol (the lmms-eval task ``halueval_remain`` its scripts use).

- Prompt: plain text, no chat template, no few-shot instruction, the row's knowledge included (``PROMPT``; the
  typo "huallucination", the missing space after ``#Knowledge:`` and the space before ``ASSISTANT:`` are the
  published text's own).
- Generation: greedy, at most 7 new tokens, stop at a blank line.
- Parsing, two rules (the doc's ``parse``, from the data option ``halueval_parse``): ``paper``, the published
  ``halueval_process_results``: ``^(yes|no)\b[.,]?`` on the lower-cased, stripped reply ("Yes!" and "No;" are
  answers); ``ours`` (default): ``yes`` or ``no`` followed by ``.``, ``,``, white space or the end ("Yes!" is not).
  Under both, anything else counts as "no" (as published) and is also counted as ``unparseable``.
- Metrics, "Yes" (hallucinated) the positive class: accuracy, precision, recall, F1 (scikit-learn),
  ``gold_yes_share`` (what the published code calls ``yes_ratio``: the share of gold "Yes" labels) and
  ``pred_yes_share`` (the share of "Yes" replies); ``correct`` is the per-sample 0/1 that paired tests use.

Rows and answer draws are those of the ``halueval_qa*`` tasks (``utils.build_docs``): the same data options
(``halueval_path``, ``halueval_offset`` default 292, ``halueval_n``, ``halueval_knowledge``) and the same seeded
draw per row, so both protocols judge the very same (row, answer) pairs.
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Iterable, Sequence

import numpy as np

INSTRUCTION = (
    "You are a huallucination detector. You MUST determine if the provided answer contains hallucination or not "
    "for the question based on the world knowledge. The answer you provided MUST be Yes or No."
)
MAX_NEW_TOKENS = 7
STOP = "\n\n"

PARSE_RULES = {"ours": re.compile(r"(yes|no)(?:[.,]|\s|$)"), "paper": re.compile(r"^(yes|no)\b[.,]?")}

SINGLE_METRICS = ("acc", "precision", "recall", "f1", "pred_yes_share", "gold_yes_share", "unparseable")
STD_METRICS = ("acc_std", "precision_std", "recall_std", "f1_std", "pred_yes_share_std")


def prompt(question: str, answer: str, knowledge: str | None) -> str:
    """The published prompt of one (question, answer); ``knowledge=None`` drops the knowledge block."""
    knowledge_block = f"\n\n#Knowledge:{knowledge}" if knowledge is not None else ""
    return f"USER: {INSTRUCTION}{knowledge_block}\n\n#Question#: {question}\n#Answer#: {answer} ASSISTANT:"


def shared_prefix() -> str:
    """The text every prompt of the protocol starts with (what a prefix KV cache can hold)."""
    return f"USER: {INSTRUCTION}\n\n#"


def doc_to_text(doc: dict) -> str:
    return prompt(doc["question"], doc["answer"], doc["knowledge"] if doc["show_knowledge"] else None)


def parse_reply(reply: str | None, rule: str = "ours") -> str | None:
    """``"yes"``, ``"no"``, or None when the reply starts with neither as a word (then scored as "no")."""
    if rule not in PARSE_RULES:
        raise ValueError(f"parse rule: expected one of {', '.join(PARSE_RULES)}, found {rule!r}")
    match = PARSE_RULES[rule].match((reply or "").lower().strip())
    return match.group(1) if match else None


def reply_decided(text: str) -> bool:
    """Whether ``parse_reply`` already gives the same answer for ``text`` and for every continuation of it, under
    both rules: True exactly when ``t = text.lstrip().lower()`` is a prefix of neither "yes" nor "no".

    Both rules match at the start of the lower-cased, stripped reply and read only the word and the one character
    after it (``ours``: ``.``, ``,``, white space or the end; ``paper``: a word boundary, i.e. no word character):
    - ``t`` starts with "yes" or "no" and has a character ``c`` after the word: if ``c`` is not white space it stays
      right after the word whatever follows, and it alone decides; if it is, the word is followed by white space or
      (once stripped) by the end, which both rules read as a yes / no.
    - ``t`` starts with neither word and is a prefix of neither: one of its first three characters differs from
      both words, and stays where it is whatever follows, so no continuation starts with either word (unparseable).
    While ``t`` is "", "y", "ye", "yes", "n" or "no" the next character decides ("yes" + "," is a yes, "yes" +
    "terday" is not), so the reply is undecided.

    A caller that stops generating on it must pass the text that every longer generation's reply starts with: no
    incomplete multi-byte character or stop sequence at its end (``truthprobe_eval.generation.stable_text``).
    """
    t = text.lstrip().lower()
    return not ("yes".startswith(t) or "no".startswith(t))


def record(doc: dict, reply: str) -> tuple[int, bool, bool, bool]:
    """(seed, gold is "Yes", predicted "Yes", reply unparseable): what every metric of one doc aggregates."""
    parsed = parse_reply(reply, doc.get("parse", "ours"))
    return int(doc["seed"]), bool(doc["hallucinated"]), parsed == "yes", parsed is None


def process_results(doc: dict, results: list[str]) -> dict[str, Any]:
    rec = record(doc, results[0])
    return {**{name: rec for name in SINGLE_METRICS}, "correct": float(rec[1] == rec[2])}


def process_results_seeds(doc: dict, results: list[str]) -> dict[str, Any]:
    rec = record(doc, results[0])
    return {**{name: rec for name in SINGLE_METRICS + STD_METRICS}, "correct": float(rec[1] == rec[2])}


def scores(gold_yes: Sequence[bool], pred_yes: Sequence[bool]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 ("Yes" positive; 0 where undefined) and both yes shares, as fractions."""
    from sklearn.metrics import accuracy_score

    from truthprobe_eval.metrics import precision_recall_f1

    gold = np.asarray(gold_yes, dtype=bool)
    pred = np.asarray(pred_yes, dtype=bool)
    if gold.size == 0:
        return {"acc": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "pred_yes_share": 0.0, "gold_yes_share": 0.0}
    precision, recall, f1 = precision_recall_f1(gold, pred)
    return {"acc": float(accuracy_score(gold, pred)), "precision": precision, "recall": recall,
            "f1": f1, "pred_yes_share": float(pred.mean()), "gold_yes_share": float(gold.mean())}


def per_seed_scores(records: Iterable[Sequence]) -> dict[int, dict[str, float]]:
    by_seed: dict[int, list] = defaultdict(list)
    for rec in records:
        by_seed[int(rec[0])].append(rec)
    return {seed: scores([r[1] for r in recs], [r[2] for r in recs]) for seed, recs in sorted(by_seed.items())}


def _over_seeds(metric: str, reduce, doc: str):
    """An lm-eval aggregation: ``reduce`` (mean, or population std with ddof=0) of ``metric`` over the seeds."""

    def aggregate(records) -> float:
        values = [s[metric] for s in per_seed_scores(records).values()]
        return float(reduce(values)) if values else 0.0

    aggregate.__name__ = aggregate.__qualname__ = f"{metric}_{'agg' if reduce is np.mean else 'std'}"
    aggregate.__doc__ = doc
    return aggregate


# the names the task YAMLs refer to (``!function truthprobe_protocol.<name>``)
acc_agg = _over_seeds("acc", np.mean, "Accuracy, mean over seeds.")
precision_agg = _over_seeds("precision", np.mean, "Precision, mean over seeds.")
recall_agg = _over_seeds("recall", np.mean, "Recall, mean over seeds.")
f1_agg = _over_seeds("f1", np.mean, "F1, mean over seeds.")
pred_yes_share_agg = _over_seeds("pred_yes_share", np.mean, "Share of \"Yes\" replies, mean over seeds.")
gold_yes_share_agg = _over_seeds("gold_yes_share", np.mean, "Share of gold \"Yes\" labels, mean over seeds.")
acc_std = _over_seeds("acc", np.std, "Accuracy, population std over seeds (ddof=0, as halueval_qa); 0 for one seed.")
precision_std = _over_seeds("precision", np.std, "Precision, population std over seeds.")
recall_std = _over_seeds("recall", np.std, "Recall, population std over seeds.")
f1_std = _over_seeds("f1", np.std, "F1, population std over seeds.")
pred_yes_share_std = _over_seeds("pred_yes_share", np.std, "Share of \"Yes\" replies, population std over seeds.")


def unparseable_count(records) -> int:
    """Replies (all docs, all seeds) that started with neither "yes" nor "no"; they were scored as "no"."""
    return int(sum(1 for rec in records if rec[3]))
