"""Shared-prefix extraction on tiny models: each question's context runs once into a KV cache, the answers run on
top of it, and the activations equal the plain path's (right and left padding, EOS dropped or not, groups of one
and two answers); examples whose tokens merge across the prefix's end take the plain path; the path taken is part
of the activation cache's key, and a resumed run equals an uninterrupted one bit for bit.

The tokenizer is a character-level BPE over a few dozen symbols (ids below the tiny models' vocabulary of 128)
with merges chosen so that BPE merges across the prefix's end for some answers: ``": "`` is a merge, but
``" y"`` ranks before it, so ``Answer: yes`` keeps ``":"`` whole (the prefix ``...Answer:`` is a prefix of the
prompt's tokens) while ``Answer: no`` becomes ``... ": " "n" "o"`` (it is not: that example falls back).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from truthprobe_eval.probing.cache import load_activations
from truthprobe_eval.probing.data import ProbeExample, labels_and_groups
from truthprobe_eval.probing.extract import (SHARED_PREFIX_VERSION, extract_activations, plan_shared_prefix,
                                             prefix_token_ids, read_position, shared_prefix_support)
from truthprobe_eval.probing.pipeline import extract_with_cache, probe_model
from truthprobe_eval.probing.prompts import PromptEncoder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import tiny_model  # noqa: E402

ARCHS = ("llama", "qwen2", "gemma3_text")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0, 1, 2 as in the tiny configs (pad, bos, eos)
CHARS = list("abcdefghijklmnopqrstuvwxyz") + list("ACQ") + [" ", ":", "\n", "?", ".", ","]
MERGES = [(" ", "y"), (":", " "), ("e", "s"), ("t", "h"), (" ", "th"), ("A", "n"), ("An", "s"), ("e", "r")]


def bpe_tokenizer():
    """Character BPE with ``MERGES`` (in rank order) and a BOS added as a post-processor (add_special_tokens)."""
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    merged = ["".join(m) for m in MERGES]
    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS + merged)}
    backend = Tokenizer(models.BPE(vocab, MERGES, unk_token="<unk>"))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


SKY = ("the sky is blue and the sea is green.", "what color is the sky?")
CAT = ("a cat sat on the mat, then it ran to the door.", "where did the cat sit?")
EXAMPLES = [
    ProbeExample(*SKY, "yes it is blue", 1, 0),
    ProbeExample(*SKY, "yes the sky is red", 0, 0),
    ProbeExample(*CAT, "yes on the mat</s>", 1, 1),      # ends with EOS: drop_eos reads the token before it
    ProbeExample(*CAT, "no", 0, 1),                      # ": " merges across the boundary: the plain path
    ProbeExample("water is wet.", "is water dry?", "yes", 0, 2),  # a group of one
    ProbeExample(*CAT, "yes by the door", 0, 1),
]


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    return {arch: tiny_model(arch) for arch in ARCHS}


def test_tokenizer_merges_across_the_boundary_for_some_answers(tok):
    enc = PromptEncoder(tok, "text")
    for example, starts in ((EXAMPLES[0], True), (EXAMPLES[3], False)):
        prefix, own = prefix_token_ids(enc, example), enc.token_ids(example)
        assert prefix[0] == tok.bos_token_id and own[0] == tok.bos_token_id  # BOS as the plain path adds it
        assert (own[:len(prefix)] == prefix) is starts
    assert tok.convert_ids_to_tokens(enc.token_ids(EXAMPLES[3]))[-3:] == [": ", "n", "o"]
    assert enc.token_ids(EXAMPLES[2])[-1] == tok.eos_token_id


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("drop_eos", [True, False])
@pytest.mark.parametrize("min_group", [1, 2])
def test_activations_equal_the_plain_path(models, tok, arch, side, drop_eos, min_group):
    model = models[arch]
    enc = PromptEncoder(tok, "text", padding_side=side)
    plain = extract_activations(model, enc, EXAMPLES, batch_size=4, drop_eos=drop_eos, progress=False)
    stats: dict = {}
    shared = extract_activations(model, enc, EXAMPLES, batch_size=4, drop_eos=drop_eos, progress=False,
                                 shared_prefix=True, min_group=min_group, stats=stats)
    assert shared.dtype == np.float32 and np.isfinite(shared).all()
    scale = np.abs(plain).max()
    assert np.abs(shared - plain).max() <= 1e-5 * scale, np.abs(shared - plain).max()
    # groups of two (sky; cat without "no") share their prefix; with min_group=1 the single ones do too
    expected_shared = 5 if min_group == 1 else 4
    assert stats["shared_examples"] == expected_shared and stats["plain_examples"] == 6 - expected_shared
    assert stats["prefixes"] == (3 if min_group == 1 else 2)
    # every token of the plain path runs once, but each group's prefix only once
    lengths = [len(enc.token_ids(e)) for e in EXAMPLES]
    assert stats["tokens"] < sum(lengths)


def test_drop_eos_reads_the_token_before_eos(models, tok):
    enc = PromptEncoder(tok, "text")
    runs = {drop: extract_activations(models["llama"], enc, EXAMPLES, batch_size=4, drop_eos=drop, progress=False,
                                      shared_prefix=True) for drop in (True, False)}
    assert np.abs(runs[True][2] - runs[False][2]).max() > 1e-3  # the example that ends with EOS differs
    others = [0, 1, 3, 4, 5]
    assert np.abs(runs[True][others] - runs[False][others]).max() <= 1e-5 * np.abs(runs[True]).max()


def test_plan_groups_falls_back_and_splits(tok):
    enc = PromptEncoder(tok, "text")
    ids = [enc.token_ids(e) for e in EXAMPLES]
    batches, plain = plan_shared_prefix(enc, EXAMPLES, ids, batch_size=8, drop_eos=True)
    assert plain == [3, 4]  # "no" merges across the boundary; "water" is a group of one
    members = sorted(i for batch in batches for g in batch for i in g.members)
    assert members == [0, 1, 2, 5]
    for batch in batches:
        for g in batch:
            assert all(ids[i][:len(g.prefix)] == g.prefix and len(ids[i]) > len(g.prefix) for i in g.members)
    # a group larger than the batch is cut into parts of at most batch_size; a part of one runs plain
    batches, plain = plan_shared_prefix(enc, EXAMPLES, ids, batch_size=1, drop_eos=True)
    assert batches == [] and plain == list(range(6))
    many = [ProbeExample(*SKY, "yes " + "a" * k, k % 2, 0) for k in range(5)]
    many_ids = [enc.token_ids(e) for e in many]
    batches, plain = plan_shared_prefix(enc, many, many_ids, batch_size=2, drop_eos=True)
    assert [[g.members for g in b] for b in batches] == [[[0, 1]], [[2, 3]]] and plain == [4]
    # the token read must lie after the prefix: a continuation of EOS alone, dropped, reads inside the prefix
    prefix = prefix_token_ids(enc, many[0])
    eos_only = [prefix + [tok.eos_token_id]] * 2
    assert read_position(eos_only[0], tok.eos_token_id, True) == len(prefix) - 1
    assert plan_shared_prefix(enc, many[:2], eos_only, drop_eos=True) == ([], [0, 1])
    assert len(plan_shared_prefix(enc, many[:2], eos_only, drop_eos=False)[0]) == 1


def test_qa_format_and_where_the_path_does_not_apply(models, tok):
    model = models["llama"]
    enc = PromptEncoder(tok, "qa")
    plain = extract_activations(model, enc, EXAMPLES, batch_size=3, progress=False)
    stats: dict = {}
    shared = extract_activations(model, enc, EXAMPLES, batch_size=3, progress=False, shared_prefix=True, stats=stats)
    assert stats["shared_examples"] > 0
    assert np.abs(shared - plain).max() <= 1e-5 * np.abs(plain).max()
    assert shared_prefix_support(model, enc) is None
    assert "chat" in shared_prefix_support(model, PromptEncoder(tok, "chat"))
    # where it does not apply, shared_prefix=True is the plain path, bit for bit
    tok_chat = bpe_tokenizer()
    tok_chat.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
                              "{% if not loop.last %}\n{% endif %}{% endfor %}")
    chat = PromptEncoder(tok_chat, "chat")
    stats = {}
    assert np.array_equal(extract_activations(model, chat, EXAMPLES, batch_size=3, progress=False, shared_prefix=True,
                                              stats=stats),
                          extract_activations(model, chat, EXAMPLES, batch_size=3, progress=False))
    assert stats["plain_examples"] == 6 and "shared_examples" not in stats


def _many_examples(n_groups: int = 12) -> list[ProbeExample]:
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sky", "sea", "door", "mat", "blue", "red", "ran", "sat", "is", "on"]
    out = []
    for g in range(n_groups):
        context = " ".join(rng.choice(words, size=8)) + "."
        question = "where is the " + str(rng.choice(words)) + "?"
        out.append(ProbeExample(context, question, "yes " + " ".join(rng.choice(words, size=2)), 1, g))
        out.append(ProbeExample(context, question, "yes " + " ".join(rng.choice(words, size=3)), 0, g))
    return out


def test_cache_key_differs_and_resume_equals_uninterrupted(models, tok, tmp_path):
    model = models["llama"]
    enc = PromptEncoder(tok, "text")
    examples = _many_examples(6)
    kw = dict(batch_size=4, shard_size=5, progress=False)  # shards of 5 cut a group in two: still exact
    X_plain, plain_folder = extract_with_cache(model, enc, examples, cache_dir=tmp_path / "c", **kw)
    X_full, folder = extract_with_cache(model, enc, examples, cache_dir=tmp_path / "c", shared_prefix=True, **kw)
    assert folder != plain_folder
    assert load_activations(folder)[3]["extraction"] == SHARED_PREFIX_VERSION
    assert "extraction" not in load_activations(plain_folder)[3]  # the plain path's key is as before
    assert np.abs(X_full - X_plain).max() <= 1e-5 * np.abs(X_plain).max()
    # without a cache: the same shards, the same bits
    X_mem, _ = extract_with_cache(model, enc, examples, shared_prefix=True, **kw)
    assert np.array_equal(X_mem, X_full)

    def interrupt(i, n):
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_with_cache(model, enc, examples, cache_dir=tmp_path / "r", shared_prefix=True, on_shard=interrupt, **kw)
    written: list[int] = []
    X, _ = extract_with_cache(model, enc, examples, cache_dir=tmp_path / "r", shared_prefix=True,
                              on_shard=lambda i, n: written.append(i), **kw)
    assert written == [2]
    assert np.array_equal(X, X_full)


@pytest.mark.parametrize("trainer,fold_rule", [("exact", "grouped"), ("paper", "kfold")])
def test_probe_model_scores_equal(models, tok, trainer, fold_rule):
    model = models["qwen2"]
    examples = _many_examples(12)
    kw = dict(n_folds=3, trainer=trainer, fold_rule=fold_rule, epochs=20, batch_size=4, progress=False)
    plain = probe_model(model, tok, examples, shared_prefix=False, **kw)
    shared = probe_model(model, tok, examples, shared_prefix=True, **kw)
    assert plain.meta["shared_prefix"] is False and shared.meta["shared_prefix"] is True
    assert np.array_equal(plain.values, shared.values)
    y, _ = labels_and_groups(examples)
    assert plain.values.shape == (3, 4) and len(y) == 24


def test_probe_model_default_takes_the_shared_path_where_it_applies(models, tok, tmp_path):
    model = models["llama"]
    examples = _many_examples(6)
    kw = dict(n_folds=2, trainer="exact", progress=False)
    default = probe_model(model, tok, examples, batch_size=4, cache_dir=tmp_path, **kw)
    assert default.meta["shared_prefix"] is True
    assert load_activations(default.meta["activation_cache"])[3]["extraction"] == SHARED_PREFIX_VERSION
    # batch size 1 (the paper preset): nothing shares a forward pass, so the plain path and its cache key
    single = probe_model(model, tok, examples, batch_size=1, cache_dir=tmp_path, **kw)
    assert single.meta["shared_prefix"] is False
    assert "extraction" not in load_activations(single.meta["activation_cache"])[3]
    # the chat format is not shared: the plain path
    tok_chat = bpe_tokenizer()
    tok_chat.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert probe_model(model, tok_chat, examples, prompt_format="chat", batch_size=4, cache_dir=None,
                       **kw).meta["shared_prefix"] is False
