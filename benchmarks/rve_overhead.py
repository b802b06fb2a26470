"""RVE's cost on generation: a config-built LLaVA-style model with 576 image tokens, plain against RVE (one edited
layer, as the paper's layer 14) and the global variant, in one run, interleaved.

RVE runs through transformers' attention-function interface: the edited layer computes eager attention and edits
the last query row; every other layer keeps the model's own sdpa. Prints the median seconds per generation and
the ratios to plain.

    python benchmarks/rve_overhead.py [--reps 5] [--new-tokens 16] [--layers 8] [--hidden 256]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from _setup import parse


def build(layers: int, hidden: int):
    from transformers import AutoConfig, CLIPVisionConfig, LlamaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(vocab_size=1000, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                       num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048)
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                              image_size=336, patch_size=14)
    config = AutoConfig.for_model("llava", vision_config=vision.to_dict(), text_config=text.to_dict(),
                                  image_token_index=999, vision_feature_layer=-1,
                                  vision_feature_select_strategy="default")
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    args = parse(ap)

    from truthprobe_eval import TruthScores
    from truthprobe_eval.interventions import build as build_method

    model = build(args.layers, args.hidden)
    text_ids = torch.randint(1, 990, (1, 40))
    ids = torch.cat([torch.tensor([[1]]), torch.full((1, 576), 999), text_ids], dim=1)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(1, 3, 336, 336)}
    ars = TruthScores(np.random.default_rng(0).uniform(size=(args.layers, 8)), meta={"model": "bench", "kind": "ars"})
    path = ars.save(tempfile.mkdtemp() + "/ars.json")
    middle = str(args.layers // 2)
    variants = {"plain": None,
                "rve": build_method("rve", ars=str(path), layers=middle, k=2),
                "whole_span": build_method("rve", variant="whole_span", layers=middle, beta=0.5)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    outputs = {}
    for rep in range(args.reps + 1):
        for name, made in variants.items():
            t0 = time.perf_counter()
            with torch.no_grad():
                if made is None:
                    out = model.generate(**inputs, max_new_tokens=args.new_tokens, do_sample=False, min_new_tokens=args.new_tokens)
                else:
                    with made.attach(model):
                        out = model.generate(**inputs, max_new_tokens=args.new_tokens, do_sample=False,
                                             min_new_tokens=args.new_tokens)
            if rep:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
            outputs[name] = out[0, ids.shape[1]:].tolist()
    base = statistics.median(times["plain"])
    print(f"LLaVA-style, {args.layers} layers x 8 heads (4 KV), hidden {args.hidden}, 576 image + 41 text tokens, "
          f"{args.new_tokens} new tokens, {args.reps} reps, {torch.get_num_threads()} threads")
    for name in variants:
        med = statistics.median(times[name])
        print(f"  {name:7s} {med:.3f} s per generation   ratio {med / base:.3f}x"
              + ("" if name == "plain" else f"   tokens changed: {sum(a != b for a, b in zip(outputs[name], outputs['plain']))}"))


if __name__ == "__main__":
    main()
