"""Probing extraction on the real SmolLM2-135M-Instruct: throughput against a bare forward, memory, growth with N.

1. Throughput: the same padded batches of HaluEval prompts go through (a) a bare ``model(**batch)``,
   (b) our extraction (pre-hooks on all 30 output projections, one token gathered per row, forward stopped
   after the last projection) and (c) the same hooks with the forward run to the end (the hook cost alone).
   Runs are interleaved (bare, extract, hooks-only, bare, ...) so that machine noise hits all alike; medians
   of the per-round totals. Target: (b) / (a) <= 1.10.
2. A probing run per N (HaluEval rows; 2 examples a row) in a fresh subprocess: extraction seconds,
   training seconds (``exact`` trainer, 5 folds), and the process's peak resident memory (``--shared-prefix``:
   through the shared-prefix path).
3. ``--compare-shared-prefix``: the plain and the shared-prefix extraction of the same ``--rows`` HaluEval rows
   (both answers, shards of 64 as ``probe_model`` runs them): tokens run (real and padded) by each, the largest
   difference between their activations, whether the Truth Scores trained on them are equal (``exact`` trainer with
   grouped folds, seed 0; ``paper`` trainer with KFold, seed 42), the same against the plain path at batch size 1
   (how much the plain path itself moves with its batch), and interleaved timings (medians of ``--rounds``).

    python benchmarks/extraction.py [--quick] [--rounds 5] [--batches 4] [--batch-size 8] [--threads 1]
    python benchmarks/extraction.py --sizes 292 1000 2920       # the issue's sizes (slow on a small CPU)
    python benchmarks/extraction.py --skip-throughput --skip-scaling --compare-shared-prefix --rows 20 --rounds 1

``--quick`` uses N = 15, 50, 146 rows. CPU time is reported beside wall time: on a shared machine it is the
steadier measure of the work done.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

RUN_ONE = r"""
import json, os, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
from truthprobe_eval import load_model
from truthprobe_eval.probing import load_examples, PromptEncoder, extract_activations, labels_and_groups
from truthprobe_eval.probing.trainers import train_probes
rows, batch_size, shared = int(sys.argv[1]), int(sys.argv[2]), sys.argv[4] == "1"
t0 = time.perf_counter()
model, tok = load_model("smollm2-135m-instruct")
examples = load_examples("halueval", n=rows)
t1 = time.perf_counter(); c1 = time.process_time()
X = extract_activations(model, PromptEncoder(tok, "text"), examples, batch_size=batch_size, progress=False,
                        shared_prefix=shared)
t2 = time.perf_counter(); c2 = time.process_time()
y, groups = labels_and_groups(examples)
res = train_probes(X, y, groups, n_folds=5, seed=0, trainer="exact", progress=False)
t3 = time.perf_counter()
print(json.dumps({"rows": rows, "examples": len(examples), "load_s": t1 - t0, "extract_s": t2 - t1,
                  "train_s": t3 - t2, "extract_cpu_s": c2 - c1, "mean_score": float(res.accuracy.mean()),
                  "activations_mib": X.nbytes / 2**20,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def throughput(args: argparse.Namespace) -> dict:
    import torch
    from truthprobe_eval.probing import HeadCapture, PromptEncoder, last_token_index, load_examples

    from truthprobe_eval import load_model

    model, tok = load_model("smollm2-135m-instruct")
    examples = load_examples("halueval", n=args.batches * args.batch_size // 2)
    encoder = PromptEncoder(tok, "text")
    batches = []
    for start in range(0, len(examples), args.batch_size):
        batch = encoder.encode(examples[start:start + args.batch_size])
        batches.append((batch, last_token_index(batch["attention_mask"], batch["input_ids"], tok.eos_token_id, True)))
    tokens = sum(int(b["attention_mask"].sum()) for b, _ in batches)

    def bare() -> None:
        for batch, _ in batches:
            model(**batch, use_cache=False)

    def run_capture(capture: HeadCapture) -> None:
        for batch, last in batches:
            capture.run(batch, last)

    def early() -> None:
        with HeadCapture(model, stop_early=True) as capture:
            run_capture(capture)

    def hooks_only() -> None:
        with HeadCapture(model, stop_early=False) as capture:
            run_capture(capture)

    variants = {"bare forward": bare, "extraction": early, "hooks, full forward": hooks_only}
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for fn in variants.values():  # warm-up
            fn()
        for _ in range(args.rounds):
            for name, fn in variants.items():
                w, c = time.perf_counter(), time.process_time()
                fn()
                wall[name].append(time.perf_counter() - w)
                cpu[name].append(time.process_time() - c)
    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    n = len(batches) * args.batch_size
    print(f"\n1. throughput: {len(batches)} batches x {args.batch_size} HaluEval prompts ({tokens} tokens), "
          f"{args.rounds} interleaved rounds, medians (wall clock; CPU time of this process)")
    for name in variants:
        print(f"   {name:<22} wall {med_wall[name]:7.3f} s ({n / med_wall[name]:5.1f} ex/s) ratio "
              f"{med_wall[name] / med_wall['bare forward']:.3f}x | CPU {med_cpu[name]:7.3f} s ratio "
              f"{med_cpu[name] / med_cpu['bare forward']:.3f}x")
    return {"tokens": tokens, "examples": n, "median_wall_s": med_wall, "median_cpu_s": med_cpu,
            "ratio_extraction_wall": med_wall["extraction"] / med_wall["bare forward"],
            "ratio_extraction_cpu": med_cpu["extraction"] / med_cpu["bare forward"],
            "ratio_hooks_full_forward_wall": med_wall["hooks, full forward"] / med_wall["bare forward"],
            "ratio_hooks_full_forward_cpu": med_cpu["hooks, full forward"] / med_cpu["bare forward"]}


def scaling(args: argparse.Namespace) -> list[dict]:
    sizes = args.sizes or ([15, 50, 146] if args.quick else [292, 1000, 2920])
    results = []
    print(f"\n2. probing runs (fresh process each; extraction batch {args.batch_size}, exact trainer, 5 folds"
          f"{', shared prefix' if args.shared_prefix else ''})")
    print(f"   {'rows':>5} {'examples':>8} {'extract s':>10} {'s/example':>10} {'CPU s/ex':>9} {'train s':>8} {'peak RSS MiB':>13} {'acts MiB':>9} {'mean score':>10}")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for rows in sizes:
        proc = subprocess.run([sys.executable, "-c", RUN_ONE, str(rows), str(args.batch_size), str(args.threads),
                               str(int(args.shared_prefix))],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"probing run with {rows} rows failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"   {r['rows']:>5} {r['examples']:>8} {r['extract_s']:>10.1f} {r['extract_s'] / r['examples']:>10.3f} "
              f"{r['extract_cpu_s'] / r['examples']:>9.3f} {r['train_s']:>8.1f} {r['peak_rss_mib']:>13.0f} {r['activations_mib']:>9.1f} {r['mean_score']:>10.3f}")
    return results


def compare_shared_prefix(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from truthprobe_eval.probing import PromptEncoder, extract_activations, labels_and_groups, load_examples
    from truthprobe_eval.probing.cache import DEFAULT_SHARD_SIZE
    from truthprobe_eval.probing.trainers import train_probes

    from truthprobe_eval import load_model

    model, tok = load_model("smollm2-135m-instruct")
    examples = load_examples("halueval", n=args.rows)
    encoder = PromptEncoder(tok, "text")
    y, groups = labels_and_groups(examples)

    def extract(shared: bool, batch_size: int, stats: dict | None = None) -> np.ndarray:
        # shard by shard, as probe_model's extraction (with or without the cache) runs it
        return np.concatenate([extract_activations(model, encoder, examples[s:s + DEFAULT_SHARD_SIZE],
                                                   batch_size=batch_size, progress=False, shared_prefix=shared,
                                                   stats=stats)
                               for s in range(0, len(examples), DEFAULT_SHARD_SIZE)])

    def scores(X: np.ndarray) -> dict:
        return {"exact/grouped": train_probes(X, y, groups, n_folds=5, seed=0, trainer="exact",
                                              progress=False).accuracy,
                "paper/kfold": train_probes(X, y, groups, n_folds=5, seed=42, trainer="paper", fold_rule="kfold",
                                            progress=False).accuracy}

    stats_plain: dict = {}
    stats_shared: dict = {}
    with torch.inference_mode():
        X_plain = extract(False, args.batch_size, stats_plain)
        X_shared = extract(True, args.batch_size, stats_shared)
        X_single = extract(False, 1)
    S_plain, S_shared, S_single = scores(X_plain), scores(X_shared), scores(X_single)
    report: dict = {"rows": args.rows, "examples": len(examples), "batch_size": args.batch_size,
                    "tokens_plain": stats_plain, "tokens_shared": stats_shared,
                    "token_ratio": stats_shared["tokens"] / stats_plain["tokens"],
                    "padded_token_ratio": stats_shared["padded_tokens"] / stats_plain["padded_tokens"]}
    print(f"\n3. shared prefix vs plain extraction: {args.rows} HaluEval rows ({len(examples)} examples), "
          f"batch {args.batch_size}")
    print(f"   tokens run: plain {stats_plain['tokens']} ({stats_plain['padded_tokens']} padded), shared prefix "
          f"{stats_shared['tokens']} ({stats_shared['padded_tokens']} padded): ratio {report['token_ratio']:.3f} "
          f"({report['padded_token_ratio']:.3f} padded); {stats_shared.get('shared_examples', 0)} examples on "
          f"{stats_shared.get('prefixes', 0)} shared prefixes, {stats_shared.get('plain_examples', 0)} plain")
    for name, X_other, S_other in (("shared prefix, batch %d" % args.batch_size, X_shared, S_shared),
                                   ("plain, batch 1", X_single, S_single)):
        diff = float(np.abs(X_other - X_plain).max())
        entry = {"max_abs_diff": diff, "max_rel_diff": diff / float(np.abs(X_plain).max()),
                 "bitwise_equal": bool(np.array_equal(X_other, X_plain))}
        line = (f"   {name:<24} vs plain batch {args.batch_size}: max |diff| {diff:.3g} "
                f"(bitwise equal: {entry['bitwise_equal']})")
        for trainer, values in S_other.items():
            differ = int((values != S_plain[trainer]).sum())
            entry[trainer] = {"heads_differing": differ,
                              "max_score_diff": float(np.abs(values - S_plain[trainer]).max())}
            line += f"; {trainer}: {differ} heads differ"
        print(line)
        report[name] = entry
    wall: dict[str, list[float]] = {"plain": [], "shared prefix": []}
    cpu: dict[str, list[float]] = {"plain": [], "shared prefix": []}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, shared in (("plain", False), ("shared prefix", True)):
                w, c = time.perf_counter(), time.process_time()
                extract(shared, args.batch_size)
                wall[name].append(time.perf_counter() - w)
                cpu[name].append(time.process_time() - c)
    med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in wall}
    print(f"   extraction, {args.rounds} interleaved round(s), medians: plain wall {med['plain'][0]:.2f} s "
          f"(CPU {med['plain'][1]:.2f} s), shared prefix wall {med['shared prefix'][0]:.2f} s "
          f"(CPU {med['shared prefix'][1]:.2f} s): speed-up {med['plain'][0] / med['shared prefix'][0]:.2f}x wall")
    report["median_wall_s"] = {k: v[0] for k, v in med.items()}
    report["median_cpu_s"] = {k: v[1] for k, v in med.items()}
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 15, 50, 146 rows instead of 292, 1000, 2920")
    ap.add_argument("--sizes", type=int, nargs="*", help="HaluEval rows per probing run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", type=int, default=4, help="batches in the throughput comparison")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--shared-prefix", action="store_true", help="probing runs (2.) through the shared-prefix path")
    ap.add_argument("--compare-shared-prefix", action="store_true", help="3.: shared-prefix vs plain extraction")
    ap.add_argument("--rows", type=int, default=20, help="HaluEval rows of the shared-prefix comparison")
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads")
    report = {}
    if not args.skip_throughput:
        report["throughput"] = throughput(args)
    if not args.skip_scaling:
        report["scaling"] = scaling(args)
    if args.compare_shared_prefix:
        report["shared_prefix"] = compare_shared_prefix(args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
