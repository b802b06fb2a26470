"""Truth Scores within a lineage: SmolLM2-135M-Instruct, a descendant fine-tuned from it, and a random model.

1. Derives a descendant of SmolLM2-135M-Instruct: a short causal-LM fine-tune (a few dozen AdamW steps) on
   HaluEval knowledge passages from rows the probing never sees.
2. Builds a random-initialized model of the same shape (same config, fresh weights).
3. Probes all three on the same HaluEval rows (``truthprobe_eval.probing``), writing one score file each.
4. Reports the correlation of the descendant's and the random model's Truth Scores with the base model's
   (``truthprobe compare``) next to their attention-weight drift from it (``truthprobe drift``).

Run:  python examples/lineage.py --out lineage_out     (292 rows as published; CPU-heavy: three probing runs
      of 584 forward passes and 30 fine-tuning steps, from ~15 minutes on an idle 8-core laptop)
      python examples/lineage.py --n 60 --steps 10 --out /tmp/lineage_quick    (a quick look)
"""
from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path


def knowledge_corpus(offset: int, rows: int) -> list[str]:
    """HaluEval knowledge passages, split into sentences, from rows ``offset .. offset + rows``."""
    from truthprobe_eval.datasets import load_halueval

    sentences = []
    for row in load_halueval(offset=offset, n=rows):
        sentences += [s.strip() for s in re.split(r"(?<=[.!?])\s+", row["knowledge"]) if len(s.split()) >= 5]
    return sentences


def finetune(model, tokenizer, texts: list[str], steps: int, batch_size: int, lr: float, seed: int,
             max_length: int = 96) -> list[float]:
    """A few AdamW steps of next-token prediction on ``texts``; returns the loss of each step."""
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    losses = []
    for step in tqdm(range(steps), desc="fine-tuning", unit="step"):
        batch = [texts[order[(step * batch_size + i) % len(order)]] for i in range(batch_size)]
        enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="lineage_out", help="output folder (checkpoints, score files, reports)")
    p.add_argument("--n", type=int, default=292, help="HaluEval rows to probe (2 examples each; default 292)")
    p.add_argument("--corpus-offset", type=int, default=5000, help="first HaluEval row of the fine-tuning text")
    p.add_argument("--corpus-rows", type=int, default=300, help="HaluEval rows whose knowledge is the corpus")
    p.add_argument("--steps", type=int, default=30, help="fine-tuning steps (default 30)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=64, help="tokens per fine-tuning sequence (default 64)")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trainer", default="exact", help="probe trainer (exact or published)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM
    from truthprobe_eval.probing import halueval_examples, probe_model

    from truthprobe_eval import load_model
    from truthprobe_eval.analysis import compare, drift
    from truthprobe_eval.models import resolve_model_path

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n > args.corpus_offset:
        p.error("--corpus-offset must lie beyond the probed rows (--n)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    base_path = resolve_model_path("smollm2-135m-instruct")
    base, tokenizer = load_model("smollm2-135m-instruct")

    # 1. the descendant
    corpus = knowledge_corpus(args.corpus_offset, args.corpus_rows)
    print(f"fine-tuning corpus: {len(corpus)} knowledge sentences from HaluEval rows "
          f"{args.corpus_offset}..{args.corpus_offset + args.corpus_rows - 1}")
    record = out / "descendant" / "finetune.json"
    settings = {"steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length, "lr": args.lr,
                "seed": args.seed, "corpus_offset": args.corpus_offset, "corpus_rows": args.corpus_rows}
    if record.is_file() and json.loads(record.read_text()).get("settings") == settings:
        losses = json.loads(record.read_text())["losses"]  # a rerun reuses the descendant it already made
        child, _ = load_model(str(out / "descendant"))
        print(f"reusing the descendant in {out / 'descendant'}")
    else:
        child, _ = load_model("smollm2-135m-instruct")
        losses = finetune(child, tokenizer, corpus, args.steps, args.batch_size, args.lr, args.seed, args.max_length)
        child.save_pretrained(out / "descendant")
        tokenizer.save_pretrained(out / "descendant")
        record.write_text(json.dumps({"settings": settings, "losses": losses}))
    first, last = sum(losses[:5]) / min(5, len(losses)), sum(losses[-5:]) / min(5, len(losses))
    print(f"fine-tune loss: first steps {first:.3f} -> last steps {last:.3f}")

    # 2. a random model of the same shape
    torch.manual_seed(args.seed)
    random_model = AutoModelForCausalLM.from_config(base.config, dtype=torch.float32).eval()
    random_model.config._name_or_path = "random-init (SmolLM2-135M shape)"
    random_model.save_pretrained(out / "random_init")

    # 3. probe all three on the same rows
    examples = halueval_examples(n=args.n)
    paths = {}
    for name, model in (("smollm2", base), ("descendant", child), ("random_init", random_model)):
        print(f"probing {name} on {len(examples)} examples ...")
        scores = probe_model(model, tokenizer, examples, trainer=args.trainer, seed=args.seed,
                             cache_dir=out / "activations", meta={"model": name, "data": "halueval", "offset": 0})
        paths[name] = out / "scores" / f"{name}.json"
        scores.save(paths[name])
        print(f"  mean Truth Score {scores.values.mean():.3f}, max {scores.values.max():.3f}")

    # 4. correlation and drift
    entries = compare.load_entries([paths["smollm2"], paths["descendant"], paths["random_init"]],
                                   labels=["smollm2", "descendant", "random_init"])
    result = compare.compare(entries, ks=(10, 20, 50))
    compare.write_outputs(result, out / "compare")
    (g,) = result.groups
    d_child = drift.weight_drift(base_path, out / "descendant")
    d_random = drift.weight_drift(base_path, out / "random_init")
    drift.write_outputs(d_child, out / "drift_descendant")
    drift.write_outputs(d_random, out / "drift_random_init")

    rows = []
    for j, name, d in ((1, "descendant (fine-tuned)", d_child), (2, "random-init, same shape", d_random)):
        s = d.summary()
        rows.append({"model": name, "pearson": g.pearson[0, j], "spearman": g.spearman[0, j],
                     "jaccard_top20": g.jaccard[20][0, j], "drift_overall_rel": s["overall_rel"],
                     "drift_mean_head_rel": s["mean_head_rel"]})
    summary = {"n_rows": args.n, "steps": args.steps, "lr": args.lr, "loss_first": first, "loss_last": last,
               "mean_scores": {k: float(e.scores.values.mean()) for k, e in zip(paths, entries)}, "rows": rows,
               "minutes": (time.time() - started) / 60}
    (out / "lineage_summary.json").write_text(json.dumps(summary, indent=2))

    print()
    print(f"Truth Scores vs SmolLM2-135M-Instruct's ({args.n} HaluEval rows, {args.trainer} trainer) and attention drift:")
    print(f"{'model':<26} {'Pearson':>8} {'Spearman':>9} {'top-20 Jaccard':>15} {'drift (rel, all)':>17} {'drift (rel, mean head)':>23}")
    for r in rows:
        print(f"{r['model']:<26} {r['pearson']:>8.3f} {r['spearman']:>9.3f} {r['jaccard_top20']:>15.3f} "
              f"{r['drift_overall_rel']:>17.4f} {r['drift_mean_head_rel']:>23.4f}")
    print("mean Truth Score: " + ", ".join(f"{k} {v:.3f}" for k, v in summary["mean_scores"].items()))
    print(f"written to {out} in {summary['minutes']:.1f} min")
    return 0 if all(math.isfinite(r["pearson"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
