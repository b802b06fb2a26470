"""The first run a newcomer makes: default ``truthprobe run``, with an empty cache, timed per stage, and how close
each stage comes to its floor (tokens processed x FLOPs per token, against this machine's float32 matmul rate).

    python benchmarks/first_run.py [--threads 2] [--out DIR] [-- extra truthprobe run arguments]

Prints the matmul rate, each stage's seconds, tokens, achieved GFLOPS and share of the matmul rate, and the wall
time of the whole command (start-up included). ``$TRUTHPROBE_CACHE`` points at a fresh temporary folder, as on a
new machine after ``scripts/setup.sh``: setup's model conversion (``python -m truthprobe_eval.models``) runs first,
timed on its own, and the activation extraction is part of the run. ``--cold`` leaves the conversion to the run's
first load, as before setup did it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _setup  # noqa: E402


def _non_embedding_params(model) -> int:
    embed = sum(p.numel() for n, p in model.named_parameters() if "embed" in n)
    return sum(p.numel() for p in model.parameters()) - embed


def _probe_tokens(tokenizer, scores_meta: dict) -> int:
    from truthprobe_eval.probing.data import halueval_examples
    from truthprobe_eval.probing.prompts import published_prompt
    from truthprobe_eval.probing.truthprobe_preset import truthprobe_preset

    preset = truthprobe_preset(scores_meta.get("preset", "ours"))
    examples = halueval_examples(None, 0, scores_meta["n_rows"], **preset.data_options())
    return sum(len(tokenizer(published_prompt(e))["input_ids"]) for e in examples)


def _judge_tokens(tokenizer, samples_file: Path, batch_size: int) -> tuple[int, int]:
    """(prompt tokens actually run with the shared-prefix cache, generated tokens) of one evaluation."""
    from truthprobe_eval.tasks.halueval.truthprobe_protocol import shared_prefix

    prefix = len(tokenizer(shared_prefix())["input_ids"])
    rows = [json.loads(line) for line in samples_file.read_text().splitlines()]
    prompts = [len(tokenizer(r["arguments"]["gen_args_0"]["arg_0"] if isinstance(r["arguments"], dict)
                             else r["arguments"][0][0])["input_ids"]) for r in rows]
    generated = sum(len(tokenizer(r["resps"][0][0], add_special_tokens=False)["input_ids"]) + 1 for r in rows)
    batches = -(-len(rows) // batch_size)
    return sum(p - prefix for p in prompts) + batches * prefix, generated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    ap.add_argument("--cold", action="store_true", help="leave the model's conversion to the run (no setup step)")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="arguments after -- go to truthprobe run")
    args = _setup.parse(ap)
    rate = _setup.matmul_gflops()
    print(f"float32 matmul (2048x576 @ 576x1536, {args.threads} threads): {rate:.0f} GFLOPS")
    out = Path(args.out or tempfile.mkdtemp(prefix="first-run-"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as cache:
        env["TRUTHPROBE_CACHE"] = cache   # empty, as on a new machine
        if not args.cold:  # what scripts/setup.sh does once
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "truthprobe_eval.models", "smollm2-135m-instruct"], env=env,
                           check=True, capture_output=True)
            print(f"setup's model conversion (python -m truthprobe_eval.models): {time.perf_counter() - start:.0f} s")
        start = time.perf_counter()
        extra = [a for a in args.extra if a != "--"]
        done = subprocess.run([sys.executable, "-m", "truthprobe_eval", "run", "--out", str(out), "--quiet", *extra],
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"truthprobe run failed:\n{done.stderr[-3000:]}")
    screen = done.stdout.splitlines()
    (out / "screen.txt").write_text(done.stdout)   # what the newcomer saw, for the docs' excerpt
    result = json.loads((out / "results.json").read_text())
    stages = result["stage_seconds"]

    from truthprobe_eval.models import load_model

    model, tokenizer = load_model(result["config"]["model"])
    per_token = 2 * _non_embedding_params(model)
    scores_meta = json.loads((out / "scores.json").read_text())["meta"]
    batch = result["config"]["batch_size"]
    tokens = {"probe": _probe_tokens(tokenizer, scores_meta)}
    for stage, names in (("validation", [e["samples_file"] for e in result["validation"]]),
                         ("test", [s[k]["samples_file"] for s in result["test"] for k in ("baseline", "gated")])):
        counts = [_judge_tokens(tokenizer, Path(f), batch) for f in names]
        tokens[stage] = sum(p + g for p, g in counts)
    print(f"wall time of the command: {wall:.0f} s ({len(screen)} lines on the screen); stages: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()))
    print("| stage | seconds | tokens | GFLOPS achieved | share of the matmul rate | floor (s) |")
    print("|---|---|---|---|---|---|")
    for stage, n in tokens.items():
        seconds = stages.get(stage, float("nan"))
        achieved = n * per_token / seconds / 1e9
        print(f"| {stage} | {seconds:.0f} | {n:,} | {achieved:.0f} | {achieved / rate:.0%} | "
              f"{n * per_token / rate / 1e9:.0f} |")


if __name__ == "__main__":
    main()
