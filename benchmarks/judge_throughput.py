"""HaluEval judge throughput: lm-eval's stock ``hf`` model vs ``truthgated`` (prefix KV cache on, and off).

The same rows of the same task, evaluated through ``lm_eval.simple_evaluate`` on one loaded SmolLM2 model, the
variants interleaved (hf, truthgated, truthgated without the prefix cache, hf, ...) so machine noise hits all
alike; prints rows per second, ratios against ``hf`` and whether every variant gave the same replies.

    python benchmarks/judge_throughput.py [--task halueval_truthprobe_seed0] [--rows 48] [--reps 2] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

from _setup import parse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="halueval_truthprobe_seed0")
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--offset", type=int, default=292)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    args = parse(ap)

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from truthprobe_eval.model_adapters.lm_eval_truthgated import TruthGatedLM
    from truthprobe_eval.tasks import TASKS_DIR

    from truthprobe_eval import load_model

    model, tok = load_model("smollm2-135m-instruct")
    common = dict(pretrained=model, tokenizer=tok, batch_size=args.batch_size, device="cpu")
    variants = {"hf": HFLM(**common), "truthgated": TruthGatedLM(gate="none", **common),
                "truthgated, no prefix cache": TruthGatedLM(gate="none", prefix_cache=False, **common)}
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                          metadata={"halueval_offset": args.offset, "halueval_n": args.rows})
    times: dict[str, list[float]] = {k: [] for k in variants}
    replies: dict[str, list[str]] = {}
    for _ in range(args.reps):
        for name, lm in variants.items():
            t0 = time.perf_counter()
            out = simple_evaluate(model=lm, tasks=[args.task], task_manager=manager, log_samples=True, bootstrap_iters=0)
            times[name].append(time.perf_counter() - t0)
            replies[name] = [s["resps"][0][0] for s in sorted(out["samples"][args.task], key=lambda s: s["doc_id"])]
    base = statistics.median(times["hf"])
    print(f"{args.task}, rows {args.offset}-{args.offset + args.rows - 1}, batch {args.batch_size}, {args.reps} "
          f"interleaved reps, {args.threads} threads, {platform.processor() or platform.machine()}")
    print(f"{'variant':<28} {'median s':>9} {'rows/s':>7} {'time ratio':>10}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<28} {med:>9.2f} {args.rows / med:>7.2f} {med / base:>9.3f}x")
    print("same replies as hf: " + ", ".join(f"{k} {replies[k] == replies['hf']}" for k in variants if k != "hf"))


if __name__ == "__main__":
    main()
