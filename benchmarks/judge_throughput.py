"""HaluEval judge throughput: lm-eval's stock ``hf`` model vs ``truthgated`` (prefix KV cache, early stop).

The same rows of the same task, evaluated through ``lm_eval.simple_evaluate`` on one loaded SmolLM2 model, the
variants interleaved (hf, truthgated with both, with the prefix cache only, with the early stop only, hf, ...) so
machine noise hits all alike; prints rows per second, ratios against ``hf``, the generation steps (forward passes
after the prompt's) and generated tokens of ``truthgated``, and whether every variant gave the same parsed replies
and the same raw replies as ``hf`` (the early stop logs the decided prefix of a TruthProbe-protocol reply, so the
raw replies differ there while the parsed ones may not).

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
    from truthprobe_eval.tasks.halueval.truthprobe_protocol import parse_reply
    from truthprobe_eval.tasks.halueval.utils import parse_judgement

    from truthprobe_eval import load_model

    model, tok = load_model("smollm2-135m-instruct")
    common = dict(pretrained=model, tokenizer=tok, batch_size=args.batch_size, device="cpu")
    variants = {"hf": HFLM(**common), "truthgated": TruthGatedLM(gate="none", **common),
                "truthgated, no early stop": TruthGatedLM(gate="none", early_stop=False, **common),
                "truthgated, no prefix cache": TruthGatedLM(gate="none", prefix_cache=False, **common)}
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                          metadata={"halueval_offset": args.offset, "halueval_n": args.rows})
    times: dict[str, list[float]] = {k: [] for k in variants}
    replies: dict[str, list[str]] = {}
    parsed: dict[str, list] = {}
    counts: dict[str, dict] = {}
    for _ in range(args.reps):
        for name, lm in variants.items():
            t0 = time.perf_counter()
            out = simple_evaluate(model=lm, tasks=[args.task], task_manager=manager, log_samples=True, bootstrap_iters=0)
            times[name].append(time.perf_counter() - t0)
            samples = sorted(out["samples"][args.task], key=lambda s: s["doc_id"])
            replies[name] = [s["resps"][0][0] for s in samples]
            parsed[name] = [parse_reply(s["resps"][0][0], s["doc"]["parse"]) if "truthprobe" in args.task
                            else parse_judgement(s["resps"][0][0]) for s in samples]
            counts[name] = dict(getattr(lm, "generation_counts", {}))
    base = statistics.median(times["hf"])
    print(f"{args.task}, rows {args.offset}-{args.offset + args.rows - 1}, batch {args.batch_size}, {args.reps} "
          f"interleaved reps, {args.threads} threads, {platform.processor() or platform.machine()}")
    print(f"{'variant':<28} {'median s':>9} {'rows/s':>7} {'time ratio':>10} {'steps':>6} {'tokens':>6}")
    for name, ts in times.items():
        med = statistics.median(ts)
        c = counts[name]
        print(f"{name:<28} {med:>9.2f} {args.rows / med:>7.2f} {med / base:>9.3f}x {c.get('steps', '-'):>6} "
              f"{c.get('tokens', '-'):>6}")
    others = [k for k in variants if k != "hf"]
    print("same parsed replies as hf: " + ", ".join(f"{k} {parsed[k] == parsed['hf']}" for k in others))
    print("same raw replies as hf: " + ", ".join(f"{k} {replies[k] == replies['hf']}" for k in others))


if __name__ == "__main__":
    main()
