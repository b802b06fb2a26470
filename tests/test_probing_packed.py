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
    return halueval_examples(None, 0, 40, **truthprobe_preset("paper").data_options())


def _encoder(tokenizer):
    return PromptEncoder(tokenizer, "text", None, None, "right")


def test_plan_packs_keeps_order_budget_and_lone_prompts():
    lengths = [300, 300, 300, 900, 2000, 5, 400, 400, 100]
    packs = packed.plan_packs(lengths, budget=1000)
    assert [i for p in packs for i in p] == list(range(len(lengths)))
    assert packs == [[0, 1, 2], [3], [4], [5], [6, 7, 8]]
    for p in packs:
        assert len(p) == 1 or sum(lengths[i] for i in p) <= 1000
    assert packed.plan_packs([]) == []


def test_packed_equals_one_prompt_at_a_time_bit_for_bit(smollm2, paper_rows):
    model, tokenizer = smollm2
    enc = _encoder(tokenizer)
    plain_stats, packed_stats = {}, {}
    plain = extract_activations(model, enc, paper_rows, batch_size=1, progress=False, packing=False,
                                stats=plain_stats)
    both = extract_activations(model, enc, paper_rows, batch_size=1, progress=False, stats=packed_stats)
    assert np.array_equal(plain, both)
    assert packed.packing_state(model) == "on"
    assert plain_stats["forward_passes"] == len(paper_rows)
    assert packed_stats["packed_examples"] == len(paper_rows)
    # packs of up to PACK_TOKENS: a handful of passes (plus, on the model's first pack, the check's lone prompts)
    packs = packed_stats["forward_passes"] - packed_stats.get("plain_examples", 0)
    assert packs <= len(paper_rows) // 4
    assert packed_stats["padded_tokens"] == packed_stats["tokens"]  # no padding in a pack
    assert model.config._attn_implementation == "sdpa"


def test_packed_truth_scores_and_cache_equal_the_plain_path(smollm2, paper_rows, tmp_path):
    model, tokenizer = smollm2
    preset = truthprobe_preset("paper")
    kwargs = dict(n_folds=5, seed=42, trainer="paper", epochs=20, fold_rule="kfold", batch_size=1, progress=False)
    with_cache = probe_model(model, tokenizer, paper_rows, cache_dir=tmp_path, **kwargs)
    X, folder = extract_with_cache(model, _encoder(tokenizer), paper_rows, batch_size=1, progress=False,
                                   cache_dir=tmp_path)
    assert folder is not None
    plain = extract_activations(model, _encoder(tokenizer), paper_rows, batch_size=1, progress=False, packing=False)
    assert np.array_equal(X, plain)
    again = probe_model(model, tokenizer, paper_rows, **kwargs)  # no cache: extracted again, packed
    assert np.array_equal(with_cache.values, again.values)
    assert preset.batch_size == 1


def test_a_failed_check_falls_back_to_one_prompt_at_a_time(smollm2, paper_rows):
    """Where the BLAS gave a packed prompt other bits than a lone one, the model is marked and runs unpacked."""
    import copy

    model, tokenizer = smollm2
    other = copy.deepcopy(model)  # a model of its own: the check's verdict is kept per model
    assert packed.packing_state(other) == "unchecked"
    acts = torch.zeros(2, 30, 9, 64)
    assert not packed.check_packing(other, acts, lambda i: acts[i] + (1e-7 if i == 1 else 0.0))
    assert packed.packing_state(other).startswith("off: a packed prompt's activations differ")
    assert packed.packing_support(other, _encoder(tokenizer)).startswith("off")
    stats = {}
    rows = paper_rows[:6]
    X = extract_activations(other, _encoder(tokenizer), rows, batch_size=1, progress=False, stats=stats)
    assert stats.get("packed_examples", 0) == 0 and stats["forward_passes"] == len(rows)
    assert np.array_equal(X, extract_activations(model, _encoder(tokenizer), rows, batch_size=1, progress=False,
                                                 packing=False))


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
