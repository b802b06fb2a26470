"""Truth-neuron attribution: the batched path (prefix KV cache, steps and layers as rows of one pass) against
the plain loop (one full forward and backward pass per step, per layer, per question), side by side in one run.

Both compute integrated gradients of p(correct letter) - p(incorrect letter) for every MLP neuron of the layers
given, on the same TruthfulQA prompts of the real SmolLM2. The plain loop is linear in the layers, so it runs on
``--plain-layers`` of them (its all-layer time is that times 30 / len); the batched path runs on the same
layers and on all 30. Prints seconds, the ratio and the largest difference relative to the largest attribution.
Then the batched path's time against questions and steps (it grows linearly in both).

    python benchmarks/neuron_attribution.py [--questions 2] [--steps 20] [--plain-layers 0,14,29]
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from _setup import parse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--plain-layers", default="0,14,29")
    args = parse(ap, csv=True)

    from truthprobe_eval.probing.neurons import mc_questions, neuron_attributions, plain_attributions

    from truthprobe_eval import load_model

    model, tok = load_model("smollm2-135m-instruct")
    layers = [int(x) for x in args.plain_layers.split(",")]
    qs = mc_questions(args.csv, range(args.questions), seed=0)
    neuron_attributions(model, tok, qs[:1], steps=2, layers=[0])  # warm-up
    t0 = time.perf_counter()
    plain = plain_attributions(model, tok, qs, steps=args.steps, layers=layers)
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    same = neuron_attributions(model, tok, qs, steps=args.steps, layers=layers)
    t_same = time.perf_counter() - t0
    t0 = time.perf_counter()
    every = neuron_attributions(model, tok, qs, steps=args.steps)
    t_all = time.perf_counter() - t0
    scale = np.abs(plain[:, layers]).max()
    diff = max(np.abs(same[:, layers] - plain[:, layers]).max(), np.abs(every[:, layers] - plain[:, layers]).max())
    plain_all = t_plain * 30 / len(layers)
    print(f"SmolLM2-135M-Instruct, {args.questions} questions, m={args.steps} steps, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    print(f"plain loop, layers {layers}: {t_plain:.1f} s ({t_plain / (args.questions * len(layers) * args.steps):.3f} "
          f"s per pass); all 30 layers: {plain_all:.0f} s (linear in layers)")
    print(f"batched, the same layers:    {t_same:.1f} s  ratio plain/batched {t_plain / t_same:.1f}x")
    print(f"batched, all 30 layers:      {t_all:.1f} s  ratio plain(all)/batched(all) {plain_all / t_all:.1f}x")
    print(f"max |batched - plain| / max |plain| = {diff / scale:.2e} (max |attribution| {scale:.3g})")
    print("batched, all layers, growth:")
    for n, m in ((1, args.steps), (2, args.steps), (4, args.steps), (2, args.steps // 2), (2, args.steps * 2)):
        sub = mc_questions(args.csv, range(10, 10 + n), seed=0)
        t0 = time.perf_counter()
        neuron_attributions(model, tok, sub, steps=m)
        dt = time.perf_counter() - t0
        print(f"  {n} questions x {m} steps: {dt:.1f} s ({dt / n:.2f} s per question)")


if __name__ == "__main__":
    main()
