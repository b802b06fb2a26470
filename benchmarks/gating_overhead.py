"""Gating overhead on greedy generation with the real SmolLM2-135M-Instruct.

Vanilla vs hooks (``gate``) vs baked weights (``bake``): prefill plus N new tokens, runs interleaved in one
process (vanilla, hooks, baked, vanilla, ...) so that machine noise hits all three alike; prints medians and
ratios against vanilla. Targets: baked within noise of 1.00x, hooks at most 1.05x.

    python benchmarks/gating_overhead.py [--reps 15] [--new-tokens 64] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import numpy as np
import torch
from _setup import parse

from truthprobe_eval import TruthScores, bake, gate, load_model

PROMPT = (
    "Context:\nThe Eiffel Tower was completed in 1889 for the World's Fair in Paris.\n\n"
    "Question: When was the Eiffel Tower completed?\nAnswer:"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = parse(ap)

    model, tok = load_model("smollm2-135m-instruct")
    scores = TruthScores(np.random.default_rng(0).uniform(0.5, 0.95, size=(30, 9)), meta={"model": "bench"})
    baked = bake(copy.deepcopy(model), scores, alpha=2.5, norm="centered")
    ids = tok(PROMPT, return_tensors="pt")
    # force exactly N new tokens so every variant does the same work
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tok.eos_token_id)

    def vanilla():
        return model.generate(**ids, **kwargs)

    def hooks():
        with gate(model, scores, alpha=2.5, norm="centered"):
            return model.generate(**ids, **kwargs)

    def baked_run():
        return baked.generate(**ids, **kwargs)

    variants = {"vanilla": vanilla, "hooks": hooks, "baked": baked_run}
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for fn in variants.values():  # warm-up
            fn()
        outputs = {}
        for _ in range(args.reps):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                outputs[name] = fn()
                times[name].append(time.perf_counter() - t0)
    same = torch.equal(outputs["hooks"], outputs["baked"])
    base = statistics.median(times["vanilla"])
    print(f"SmolLM2-135M-Instruct, greedy, prefill {ids['input_ids'].shape[1]} tokens + {args.new_tokens} new tokens, "
          f"{args.reps} interleaved reps, {args.threads} threads, {platform.processor() or platform.machine()}")
    print(f"{'variant':<8} {'median s':>9} {'IQR s':>7} {'ratio':>6}")
    for name, ts in times.items():
        q1, _, q3 = statistics.quantiles(ts, n=4)
        print(f"{name:<8} {statistics.median(ts):>9.4f} {q3 - q1:>7.4f} {statistics.median(ts) / base:>6.3f}x")
    print(f"vanilla-vs-vanilla noise (IQR/median): {(lambda q: (q[2] - q[0]) / base)(statistics.quantiles(times['vanilla'], n=4)):.3f}")
    print(f"hooks and baked generate the same tokens: {same}")


if __name__ == "__main__":
    main()
