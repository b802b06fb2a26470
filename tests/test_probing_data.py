"""Probing data and prompts: HaluEval pairs, the generic JSONL schema and its errors, prompt text, padding."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from truthprobe_eval.probing import ProbeDataError, ProbeExample, load_examples  # the package's public names
from truthprobe_eval.probing.data import check_examples, halueval_examples, jsonl_examples, labels_and_groups
from truthprobe_eval.probing.extract import last_token_index
from truthprobe_eval.probing.prompts import pad_token_ids, published_prompt

from truthprobe_eval.datasets import load_halueval

EXAMPLE_FILE = Path(__file__).parent / "data" / "probing_example.jsonl"


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_halueval_rows_become_grouped_truthful_and_hallucinated_pairs():
    rows = load_halueval(offset=5, n=3)
    examples = halueval_examples(offset=5, n=3)
    assert len(examples) == 6
    for i, row in enumerate(rows):
        right, wrong = examples[2 * i], examples[2 * i + 1]
        assert (right.answer, right.label) == (row["right_answer"], 1)
        assert (wrong.answer, wrong.label) == (row["hallucinated_answer"], 0)
        assert right.context == wrong.context == row["knowledge"]
        assert right.question == wrong.question == row["question"]
        assert right.group == wrong.group == 5 + i
    y, groups = labels_and_groups(examples)
    assert y.tolist() == [1, 0, 1, 0, 1, 0] and groups.tolist() == [5, 5, 6, 6, 7, 7]
    assert load_examples("halueval", n=3, offset=5) == examples


def test_generic_example_file_loads_with_groups_and_images():
    examples = jsonl_examples(EXAMPLE_FILE)
    assert len(examples) == 6
    assert [e.label for e in examples] == [1, 0, 1, 0, 1, 0]
    assert [e.group for e in examples] == [0, 0, 1, 1, 2, 2]  # codes in order of first appearance
    assert examples[4].image == "cat.jpg" and examples[0].image is None
    window = jsonl_examples(EXAMPLE_FILE, offset=2, n=2)
    assert [(e.answer, e.label, e.group) for e in window] == [("Chemistry", 1, 0), ("Medicine", 0, 0)]
    assert load_examples(EXAMPLE_FILE, n=4)[0].answer == "1889"


def test_rows_without_group_are_their_own_group(tmp_path):
    rows = [{"context": "c", "question": "q", "answer": a, "label": l} for a, l in (("x", 1), ("y", 0), ("z", "true"))]
    examples = jsonl_examples(_write_jsonl(tmp_path / "d.jsonl", rows))
    assert [e.group for e in examples] == [0, 1, 2]
    assert [e.label for e in examples] == [1, 0, 1]


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ({"context": "c", "question": "q", "label": 1}, "missing field(s) answer"),
        ({"context": "c", "question": "q", "answer": "a", "label": 2}, "expected label 0 or 1"),
        ({"context": "c", "question": 3, "answer": "a", "label": 1}, "'question' to be a string"),
        ({"context": "", "question": "q", "answer": "a", "label": 1}, "non-empty 'context'"),
        ('{"context": "c", "question": ', "not valid JSON"),
    ],
)
def test_bad_row_is_named_by_line_number(tmp_path, bad_row, message):
    good = {"context": "c", "question": "q", "answer": "a", "label": 1}
    path = _write_jsonl(tmp_path / "d.jsonl", [good, dict(good, label=0), bad_row])
    with pytest.raises(ProbeDataError, match=rf"d\.jsonl, line 3: .*{re.escape(message)}"):
        jsonl_examples(path)


def test_empty_and_one_class_data_are_refused(tmp_path):
    with pytest.raises(ProbeDataError, match="expected at least one row after skipping 6, found none"):
        load_examples(EXAMPLE_FILE, offset=6)
    one_class = _write_jsonl(tmp_path / "d.jsonl", [{"context": "c", "question": "q", "answer": "a", "label": 1}] * 3)
    with pytest.raises(ProbeDataError, match=r"found only truthful \(1\) in 3 example"):
        load_examples(one_class)
    with pytest.raises(ProbeDataError, match="n >= 1"):
        load_examples("halueval", n=0)
    with pytest.raises(ProbeDataError, match="found no file"):
        load_examples(tmp_path / "missing.jsonl")
    with pytest.raises(ProbeDataError, match="hallucinated"):
        check_examples([ProbeExample("c", "q", "a", 0, 0)])


def test_published_prompt_format():
    ex = ProbeExample("Paris is in France.", "Where is Paris?", "France", 1, 0)
    assert published_prompt(ex) == "Context:\nParis is in France.\n\nQuestion: Where is Paris?\nAnswer: France"


def test_chat_prompt_ends_with_the_answer(smollm2):
    from truthprobe_eval.probing.prompts import chat_prompt

    _, tok = smollm2
    ex = ProbeExample("Paris is in France.", "Where is Paris?", "In France", 1, 0)
    text = chat_prompt(tok, ex)
    assert text.endswith("<|im_start|>assistant\nIn France")
    assert "Context:\nParis is in France.\n\nQuestion: Where is Paris?<|im_end|>" in text


def test_padding_and_last_token_index_left_and_right():
    ids = [[5, 6, 7], [8], [9, 2]]
    right = pad_token_ids(ids, "right", pad_id=0)
    left = pad_token_ids(ids, "left", pad_id=0)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0], [9, 2, 0]]
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 2]]
    assert left["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 1]]
    assert last_token_index(right["attention_mask"]).tolist() == [2, 0, 1]
    assert last_token_index(left["attention_mask"]).tolist() == [2, 2, 2]
    # drop a trailing EOS (id 2), but never the only token of a row
    assert last_token_index(right["attention_mask"], right["input_ids"], 2, drop_eos=True).tolist() == [2, 0, 0]
    assert last_token_index(left["attention_mask"], left["input_ids"], [2, 7], drop_eos=True).tolist() == [1, 2, 1]
    only_eos = pad_token_ids([[2]], "right")
    assert last_token_index(only_eos["attention_mask"], only_eos["input_ids"], 2, drop_eos=True).tolist() == [0]
    with pytest.raises(Exception, match="all-padding row"):
        last_token_index(torch.tensor([[1, 1], [0, 0]]))
