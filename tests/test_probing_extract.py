"""Extraction on the real SmolLM2: padding- and batch-invariant, equal to attention recomputed by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from truthprobe_eval.probing.data import ProbeExample, halueval_examples
from truthprobe_eval.probing.extract import HeadCapture, extract_activations, last_token_index
from truthprobe_eval.probing.prompts import PromptEncoder

from truthprobe_eval import locate_heads

# prompts of different lengths, so that batches are padded
EXAMPLES = [
    ProbeExample("Paris is the capital of France.", "What is the capital of France?", "Paris", 1, 0),
    ProbeExample("Paris is the capital of France.", "What is the capital of France?", "Lyon, a city in the south", 0, 0),
    ProbeExample("Water boils at 100 degrees Celsius at sea level, and freezes at zero.", "When does water boil?", "At 100 degrees Celsius", 1, 1),
    ProbeExample("Water boils at 100 degrees Celsius at sea level, and freezes at zero.", "When does water boil?", "At 50", 0, 1),
    ProbeExample("Ada Lovelace wrote the first published computer program.", "Who wrote it?", "Ada Lovelace", 1, 2),
]


@pytest.mark.parametrize("prompt_format", ["text", "chat"])
def test_left_right_padding_and_batch_size_one_agree(smollm2, prompt_format):
    model, tok = smollm2
    single = extract_activations(model, PromptEncoder(tok, prompt_format), EXAMPLES, batch_size=1, progress=False)
    assert single.shape == (5, 30, 9, 64) and single.dtype == np.float32
    assert np.isfinite(single).all() and np.abs(single).max() > 0
    scale = np.abs(single).max()
    for side in ("right", "left"):
        batched = extract_activations(model, PromptEncoder(tok, prompt_format, padding_side=side), EXAMPLES,
                                      batch_size=4, progress=False)
        assert np.abs(batched - single).max() < 1e-4 * scale, side
    # different answers give different vectors at the final token
    assert np.abs(single[0] - single[1]).max() > 1e-2


def _manual_head_outputs(model, tok, text: str) -> np.ndarray:
    """Every layer's per-head attention output at the last token, recomputed from q/k/v projections + RoPE."""
    sites = locate_heads(model)
    captured = {}

    def grab(layer):
        def hook(module, args, kwargs):
            captured[layer] = (kwargs.get("hidden_states", args[0] if args else None), kwargs["position_embeddings"])
        return hook

    attn_modules = [layer.self_attn for layer in model.model.layers]
    handles = [m.register_forward_pre_hook(grab(i), with_kwargs=True) for i, m in enumerate(attn_modules)]
    try:
        with torch.no_grad():
            model(**tok(text, return_tensors="pt"), use_cache=False)
    finally:
        for h in handles:
            h.remove()

    def rotate_half(x):
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    H, D = sites.num_heads, sites.head_dim
    out = []
    with torch.no_grad():
        for layer, attn in enumerate(attn_modules):
            hidden, (cos, sin) = captured[layer]
            T = hidden.shape[1]
            q = F.linear(hidden, attn.q_proj.weight, attn.q_proj.bias).view(1, T, H, D).transpose(1, 2)
            k = F.linear(hidden, attn.k_proj.weight, attn.k_proj.bias).view(1, T, -1, D).transpose(1, 2)
            v = F.linear(hidden, attn.v_proj.weight, attn.v_proj.bias).view(1, T, -1, D).transpose(1, 2)
            q = q * cos[:, None] + rotate_half(q) * sin[:, None]
            k = k * cos[:, None] + rotate_half(k) * sin[:, None]
            group = H // k.shape[1]
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            weights = torch.softmax((q[:, :, -1:] @ k.transpose(-1, -2)) / D**0.5, dim=-1)  # last query sees all keys
            out.append((weights @ v)[0, :, 0])  # (H, D)
    return torch.stack(out).numpy()


def test_captured_vectors_equal_attention_recomputed_by_hand(smollm2):
    model, tok = smollm2
    example = EXAMPLES[2]
    encoder = PromptEncoder(tok, "text")
    captured = extract_activations(model, encoder, [example], batch_size=1, progress=False)[0]
    manual = _manual_head_outputs(model, tok, encoder.prompt(example))
    assert manual.shape == captured.shape == (30, 9, 64)
    assert np.abs(captured - manual).max() < 1e-4 * np.abs(manual).max()


def test_float16_storage_and_hooks_are_removed(smollm2):
    model, tok = smollm2
    examples = halueval_examples(n=2)
    before = [len(p._forward_pre_hooks) for p in locate_heads(model).out_projs]
    x32 = extract_activations(model, PromptEncoder(tok, "text"), examples, batch_size=4, progress=False)
    x16 = extract_activations(model, PromptEncoder(tok, "text"), examples, batch_size=4, float16=True, progress=False)
    assert x16.dtype == np.float16 and x16.shape == (4, 30, 9, 64)
    assert np.allclose(x16.astype(np.float32), x32, rtol=2e-3, atol=2e-3)
    assert [len(p._forward_pre_hooks) for p in locate_heads(model).out_projs] == before


def test_capture_stops_after_last_layer_and_leaves_model_usable(smollm2):
    model, tok = smollm2
    batch = tok(["Answer: yes"], return_tensors="pt")
    lm_head_calls = []
    handle = model.lm_head.register_forward_hook(lambda *a: lm_head_calls.append(1))
    try:
        with HeadCapture(model) as capture:
            acts = capture.run(dict(batch), last_token_index(batch["attention_mask"]))
        assert acts.shape == (1, 30, 9, 64) and lm_head_calls == []  # the LM head never ran
        with torch.no_grad():
            logits = model(**batch).logits  # hooks gone: a plain forward works as before
        assert logits.shape[-1] == model.config.vocab_size and lm_head_calls == [1]
    finally:
        handle.remove()
