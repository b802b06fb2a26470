"""Packed extraction (``probing/packed.py``): one prompt at a time, several prompts per forward pass, and the same
activations bit for bit as one forward pass per prompt, on the real SmolLM2 and the published prompts; the check on
a model's first pack, the fallback when it fails, and the model's attention left as it was."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from truthprobe_eval.probing import packed
from truthprobe_eval.probing.data import halueval_examples
from truthprobe_eval.probing.extract import extract_activations
from truthprobe_eval.probing.pipeline import extract_with_cache, probe_model
from truthprobe_eval.probing.prompts import PromptEncoder
from truthprobe_eval.probing.truthprobe_preset import truthprobe_preset


@pytest.fixture(scope="module")
def paper_rows():
    return halueval_examples(None, 0, 32, **truthprobe_preset("paper").data_options())


def _encoder(tokenizer):
    return PromptEncoder(tokenizer, "text", None, None, "right")


@pytest.fixture(scope="module")
def one_at_a_time(smollm2, paper_rows):
    """The published extraction: one forward pass per prompt, nothing packed."""
    model, tokenizer = smollm2
    stats = {}
    X = extract_activations(model, _encoder(tokenizer), paper_rows, batch_size=1, progress=False, packing=False,
                            stats=stats)
    return X, stats


def test_plan_packs_keeps_order_budget_and_lone_prompts():
    lengths = [300, 300, 300, 900, 2000, 5, 400, 400, 100]
    packs = packed.plan_packs(lengths, budget=1000)
    assert [i for p in packs for i in p] == list(range(len(lengths)))
    assert packs == [[0, 1, 2], [3], [4], [5], [6, 7, 8]]
    for p in packs:
        assert len(p) == 1 or sum(lengths[i] for i in p) <= 1000
    assert packed.plan_packs([]) == []


def test_packed_equals_one_prompt_at_a_time_bit_for_bit(smollm2, paper_rows, one_at_a_time):
    model, tokenizer = smollm2
    plain, plain_stats = one_at_a_time
    stats = {}
    both = extract_activations(model, _encoder(tokenizer), paper_rows, batch_size=1, progress=False, stats=stats)
    assert np.array_equal(plain, both)
    assert packed.packing_state(model) == "on"
    assert plain_stats["forward_passes"] == len(paper_rows)
    assert stats["packed_examples"] == len(paper_rows)
    # packs of up to PACK_TOKENS: a handful of passes (plus, on the model's first pack, the check's lone prompts)
    assert stats["forward_passes"] - stats.get("plain_examples", 0) <= len(paper_rows) // 4
    assert stats["padded_tokens"] == stats["tokens"]  # no padding in a pack
    assert model.config._attn_implementation == "sdpa"


def test_packed_truth_scores_and_cache_equal_the_plain_path(smollm2, paper_rows, one_at_a_time, tmp_path):
    from truthprobe_eval.probing.data import labels_and_groups
    from truthprobe_eval.probing.trainers import train_probes

    model, tokenizer = smollm2
    plain, _ = one_at_a_time
    kwargs = dict(n_folds=5, seed=42, trainer="paper", epochs=20, fold_rule="kfold", progress=False)
    scores = probe_model(model, tokenizer, paper_rows, cache_dir=tmp_path, batch_size=1, **kwargs)
    y, groups = labels_and_groups(paper_rows)
    assert np.array_equal(scores.values, train_probes(plain, y, groups, **kwargs).to_scores({}).values)
    X, folder = extract_with_cache(model, _encoder(tokenizer), paper_rows, batch_size=1, progress=False,
                                   cache_dir=tmp_path)  # read back from the cache the packed pass wrote
    assert folder is not None and np.array_equal(X, plain)


def test_a_failed_check_falls_back_to_one_prompt_at_a_time(smollm2, paper_rows, one_at_a_time):
    """Where the BLAS gave a packed prompt other bits than a lone one, the model is marked and runs unpacked."""
    import copy

    model, tokenizer = smollm2
    other = copy.deepcopy(model)  # a model of its own: the check's verdict is kept per model
    assert packed.packing_state(other) == "unchecked"
    acts = torch.zeros(2, 30, 9, 64)
    singles = acts.clone()
    singles[1] += 1e-7
    assert not packed.check_packing(other, acts, singles)
    assert packed.packing_state(other).startswith("off: a packed prompt's activations differ")
    assert packed.packing_support(other, _encoder(tokenizer)).startswith("off")
    stats = {}
    rows = paper_rows[:6]
    X = extract_activations(other, _encoder(tokenizer), rows, batch_size=1, progress=False, stats=stats)
    assert stats.get("packed_examples", 0) == 0 and stats["forward_passes"] == len(rows)
    assert np.array_equal(X, one_at_a_time[0][:6])


def test_attention_is_restored_after_a_failing_pass(smollm2):
    model, tokenizer = smollm2
    from truthprobe_eval.probing.extract import HeadCapture

    ids = [tokenizer("Context:\nabc\n\nQuestion: why?\nAnswer: because")["input_ids"]] * 2
    with HeadCapture(model) as capture:
        with pytest.raises((IndexError, RuntimeError)):
            packed.run_packed(capture, ids, [10 * len(ids[0]), 0])  # a read position past the packed row
    assert model.config._attn_implementation == "sdpa"


def test_packing_does_not_apply_to_eager_attention_or_multimodal_prompts(smollm2):
    model, tokenizer = smollm2

    class Multimodal:
        multimodal = True

    assert "multimodal" in packed.packing_support(model, Multimodal())
    model.set_attn_implementation("eager")
    try:
        assert "eager" in packed.packing_support(model, _encoder(tokenizer))
    finally:
        model.set_attn_implementation("sdpa")


def test_the_check_waits_for_a_pack_of_several_prompts(smollm2, paper_rows, one_at_a_time, monkeypatch):
    """A prompt alone in its pack (longer than the budget) runs as one and proves nothing about packing: the model
    stays unchecked until a pack of two or more prompts has been compared prompt by prompt."""
    import copy

    model, tokenizer = smollm2
    other = copy.deepcopy(model)
    enc = _encoder(tokenizer)
    rows = paper_rows[:8]
    lengths = [len(enc.token_ids(e)) for e in rows]
    longest = int(np.argmax(lengths))
    monkeypatch.setattr(packed, "PACK_TOKENS", lengths[longest] - 1)  # the longest prompt alone, the rest in packs
    stats = {}
    alone = extract_activations(other, enc, [rows[longest]], batch_size=1, progress=False, stats=stats)
    assert packed.packing_state(other) == "unchecked" and stats.get("packed_examples", 0) == 0
    assert np.array_equal(alone[0], one_at_a_time[0][longest])
    stats = {}
    X = extract_activations(other, enc, rows, batch_size=1, progress=False, stats=stats)
    assert packed.packing_state(other) == "on" and 0 < stats["packed_examples"] < len(rows)
    assert np.array_equal(X, one_at_a_time[0][:8])
