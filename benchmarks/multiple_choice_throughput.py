"""TruthfulQA MC1 + MC2 throughput: lm-eval's stock ``hf`` vs ``truthgated`` with the shared-prefix cache on and off.

Log-likelihood batches of a multiple-choice task share the six-shot prompt; ``truthgated`` runs it once per batch
(``SharedPrefixScorer``). The same questions through ``lm_eval.simple_evaluate`` on one loaded SmolLM2, the
variants interleaved; prints seconds, ratios against ``hf`` and the largest log-likelihood difference to ``hf``
(and, for ITI, between its two paths).

    python benchmarks/multiple_choice_throughput.py [--questions 24] [--reps 2] [--batch-size 8] [--csv PATH]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
from _setup import parse


def _loglikelihoods(out) -> np.ndarray:
    values = []
    for task in sorted(out["samples"]):
        for s in sorted(out["samples"][task], key=lambda s: s["doc_id"]):
            values += [float(r[0][0]) for r in s["resps"]]
    return np.array(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    args = parse(ap, csv=True)

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from truthprobe_eval.model_adapters.lm_eval_truthgated import TruthGatedLM
    from truthprobe_eval.tasks import TASKS_DIR

    from truthprobe_eval import load_model
    from truthprobe_eval.directions import ITIDirections
    from truthprobe_eval.interventions import build

    model, tok = load_model("smollm2-135m-instruct")
    rng = np.random.default_rng(0)
    unit = rng.standard_normal((30, 9, 64))
    unit /= np.linalg.norm(unit, axis=-1, keepdims=True)
    path = ITIDirections(unit, np.ones((30, 9)), rng.uniform(size=(30, 9)), unit, np.ones((30, 9)),
                         meta={"model": "synthetic"}).save("/tmp/mc_benchmark_iti.json")
    iti = build("iti", directions=str(path), k=48, alpha=5)
    common = dict(pretrained=model, tokenizer=tok, batch_size=args.batch_size, device="cpu")
    variants = {"hf": HFLM(**common), "truthgated": TruthGatedLM(method="none", **common),
                "truthgated, no prefix cache": TruthGatedLM(method="none", prefix_cache=False, **common),
                "ITI": TruthGatedLM(intervention=iti, **common),
                "ITI, no prefix cache": TruthGatedLM(intervention=iti, prefix_cache=False, **common)}
    tasks = ["truthfulqa_local_mc1", "truthfulqa_local_mc2"]
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                          metadata={"truthfulqa_csv": args.csv, "truthfulqa_rows": list(range(args.questions))})
    times: dict[str, list[float]] = {k: [] for k in variants}
    values: dict[str, np.ndarray] = {}
    for _ in range(args.reps):
        for name, lm in variants.items():
            t0 = time.perf_counter()
            out = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, log_samples=True, bootstrap_iters=0)
            times[name].append(time.perf_counter() - t0)
            values[name] = _loglikelihoods(out)
    base = statistics.median(times["hf"])
    print(f"TruthfulQA MC1 + MC2, questions 0-{args.questions - 1} ({len(values['hf'])} log-likelihoods), batch "
          f"{args.batch_size}, {args.reps} interleaved reps, {args.threads} threads, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'variant':<28} {'median s':>9} {'time ratio':>10} {'max |dLL| vs reference':>24}")
    for name, ts in times.items():
        ref = values["ITI, no prefix cache"] if name == "ITI" else values["hf"]
        diff = "" if name in ("hf", "ITI, no prefix cache") else f"{np.abs(values[name] - ref).max():.2e}"
        print(f"{name:<28} {statistics.median(ts):>9.2f} {statistics.median(ts) / base:>9.3f}x {diff:>24}")


if __name__ == "__main__":
    main()
