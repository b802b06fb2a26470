"""Probe training speed: a plain one-core scikit-learn loop vs the ``exact`` and ``published`` trainers.

On synthetic activations of realistic shapes (pairs of answers sharing a question component, a label signal
of varying strength that grows with depth, an anisotropic spectrum; mean Truth Score near 0.85), each run
times, side by side:

- plain: ``LogisticRegression()`` per head and fold plus one on all examples (what ``exact`` returns too),
  on one thread (threadpoolctl), scikit-learn defaults;
- exact: ``train_probes(trainer="exact")`` on the CPU, one thread;
- published: ``train_probes(trainer="published")`` (AdamW, 200 epochs) on ``--device``.

and checks that the scores agree: max |accuracy difference| of exact vs plain (scikit-learn stops at
tol 1e-4, so a borderline validation example can flip; ``--tight`` adds a scikit-learn loop at tol 1e-8 on
the first shape, which exact should match), and mean |difference| of published vs exact.

Target: plain / exact >= 1.8 at every shape (exit status 1 otherwise).

    python benchmarks/probe_training.py                 # SmolLM2 shape, 7B shape at N=584 and N=2920
    python benchmarks/probe_training.py --quick         # one small shape, seconds
    python benchmarks/probe_training.py --published-epochs 7b-2920=20   # time published there over 20 epochs, x10
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
import warnings

import numpy as np

SHAPES = {  # name: (questions, layers, heads, head_dim) -> N = 2 x questions
    "smollm2": (292, 30, 9, 64),
    "7b-584": (292, 32, 32, 128),
    "7b-2920": (1460, 32, 32, 128),
    "quick": (100, 4, 8, 32),
}
TARGET = 1.8


def synthetic_activations(n_questions: int, layers: int, heads: int, dim: int, seed: int = 0):
    """(N, L, H, D) float32 activations, labels (1 truthful, 0 hallucinated) and question groups."""
    rng = np.random.default_rng(seed)
    n = 2 * n_questions
    y = np.tile([1, 0], n_questions)
    groups = np.repeat(np.arange(n_questions), 2)
    X = np.empty((n, layers, heads, dim), dtype=np.float32)
    scales = 0.4 * np.exp(-np.arange(dim) / (dim / 4)) + 0.05                 # decaying spectrum
    for layer in range(layers):
        strength = rng.uniform(0.2, 1.0, size=heads) * (0.5 + 2.5 * layer / max(1, layers - 1))
        basis = np.linalg.qr(rng.standard_normal((heads, dim, dim)))[0]       # a random rotation per head
        question = rng.standard_normal((n_questions, heads, dim)) * scales    # shared by a question's answers
        noise = rng.standard_normal((n, heads, dim)) * (0.7 * scales)
        signal = rng.standard_normal((heads, dim))
        signal /= np.linalg.norm(signal, axis=1, keepdims=True)
        latent = question[groups] + noise + (y - 0.5)[:, None, None] * (0.3 * strength[:, None] * signal)
        X[:, layer] = np.einsum("nhk,hdk->nhd", latent, basis) + 0.2 * basis[:, :, 0]
    return X, y, groups


def plain_loop(X: np.ndarray, y: np.ndarray, folds: np.ndarray, **lr_kwargs) -> np.ndarray:
    """(L, H) fold-mean validation accuracy, one LogisticRegression per head and fold, plus one on all examples."""
    from sklearn.linear_model import LogisticRegression

    n, layers, heads, _ = X.shape
    n_folds = int(folds.max()) + 1
    acc = np.zeros((layers, heads))
    for l in range(layers):
        for h in range(heads):
            Xh = X[:, l, h]
            scores = []
            for k in range(n_folds):
                train = folds != k
                clf = LogisticRegression(**lr_kwargs).fit(Xh[train], y[train])
                scores.append(clf.score(Xh[~train], y[~train]))
            acc[l, h] = np.mean(scores)
            LogisticRegression(**lr_kwargs).fit(Xh, y)    # the probe on all examples, as the trainers fit
    return acc


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def run_shape(name: str, args: argparse.Namespace) -> dict:
    import threadpoolctl

    from truthprobe_eval.probing.folds import grouped_stratified_folds
    from truthprobe_eval.probing.trainers import train_probes

    questions, layers, heads, dim = SHAPES[name]
    X, y, groups = synthetic_activations(questions, layers, heads, dim, seed=args.seed)
    folds = grouped_stratified_folds(y, groups, n_folds=5, seed=args.seed)
    row = {"shape": name, "N": len(y), "layers": layers, "heads": heads, "head_dim": dim}
    with threadpoolctl.threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")      # scikit-learn's ConvergenceWarning on near-separable heads
        plain_acc, row["plain_s"] = timed(plain_loop, X, y, folds)
        if args.tight and name == args.shapes[0]:
            tight_acc, row["plain_tight_s"] = timed(plain_loop, X.astype(np.float64), y, folds, tol=1e-8, max_iter=10_000)
    exact, row["exact_s"] = timed(train_probes, X, y, groups, folds=folds, trainer="exact", device="cpu",
                                  n_jobs=args.exact_threads, progress=False)
    diff = np.abs(exact.accuracy - plain_acc)
    row.update(ratio_exact=row["plain_s"] / row["exact_s"], exact_vs_plain_max=float(diff.max()),
               exact_vs_plain_heads=int((diff > 1e-9).sum()), heads_total=layers * heads,
               mean_score=float(exact.accuracy.mean()), exact_info=exact.info)
    if args.tight and "plain_tight_s" in row:
        tdiff = np.abs(exact.accuracy - tight_acc)
        row.update(exact_vs_tight_max=float(tdiff.max()), exact_vs_tight_heads=int((tdiff > 1e-9).sum()),
                   plain_vs_tight_max=float(np.abs(plain_acc - tight_acc).max()))
    if not args.skip_published:
        epochs = args.published_epochs.get(name, args.published_epochs.get("*", 200))
        published, seconds = timed(train_probes, X, y, groups, folds=folds, trainer="published", epochs=epochs,
                                   device=args.device, progress=False)
        row.update(published_s=seconds * 200 / epochs, published_scaled=epochs != 200, published_epochs=epochs,
                   published_device=published.info["device"])
        row["ratio_published"] = row["plain_s"] / row["published_s"]
        if epochs == 200:
            row["published_vs_exact_mean"] = float(np.abs(published.accuracy - exact.accuracy).mean())
    return row


def format_table(rows: list[dict]) -> str:
    head = ("| shape (L x H x D) | N | plain sklearn s | exact s | plain/exact | exact vs plain: max abs acc diff "
            "(heads differing) | published s | plain/published | published vs exact: mean abs acc diff |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        pub = "-" if "published_s" not in r else f"{r['published_s']:.2f}" + ("*" if r["published_scaled"] else "")
        pub_ratio = "-" if "published_s" not in r else f"{r['ratio_published']:.2f}"
        agree = "-" if "published_vs_exact_mean" not in r else f"{r['published_vs_exact_mean']:.4f}"
        lines.append(f"| {r['shape']} ({r['layers']} x {r['heads']} x {r['head_dim']}) | {r['N']} | {r['plain_s']:.2f} | "
                     f"{r['exact_s']:.2f} | **{r['ratio_exact']:.2f}** | {r['exact_vs_plain_max']:.4f} "
                     f"({r['exact_vs_plain_heads']}/{r['heads_total']}) | {pub} | {pub_ratio} | {agree} |")
    return "\n".join(lines)


def machine() -> str:
    import sklearn
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, load average {load:.1f}; "
            f"python {platform.python_version()}, torch {torch.__version__}, scikit-learn {sklearn.__version__}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one small shape (4 x 8 heads, D=32, N=200)")
    p.add_argument("--shapes", default="smollm2,7b-584,7b-2920", help=f"comma-separated, of {', '.join(SHAPES)}")
    p.add_argument("--skip-published", action="store_true", help="time only plain and exact")
    p.add_argument("--published-epochs", default="",
                   help="time published over fewer epochs and scale to 200 (marked *): E for every shape, or "
                        "SHAPE=E[,SHAPE=E] (time per epoch is constant); default: all 200 epochs")
    p.add_argument("--device", default=None, help="device of the published trainer (default: cuda if available)")
    p.add_argument("--exact-threads", type=int, default=1, help="CPU threads of the exact trainer (default 1)")
    p.add_argument("--tight", action="store_true", help="also a scikit-learn loop at tol 1e-8 on the first shape")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows to this JSON file")
    args = p.parse_args(argv)
    args.shapes = ["quick"] if args.quick else [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        p.error(f"unknown shape(s) {', '.join(unknown)}: expected of {', '.join(SHAPES)}")
    try:
        pairs = [item.split("=") if "=" in item else ("*", item) for item in args.published_epochs.split(",") if item]
        args.published_epochs = {shape.strip(): int(e) for shape, e in pairs}
    except ValueError:
        p.error(f"--published-epochs: expected E or SHAPE=E[,SHAPE=E], found {args.published_epochs!r}")
    if any(not 1 <= e <= 200 for e in args.published_epochs.values()):
        p.error("--published-epochs: expected epochs in 1..200")

    print(f"# probe training, {_dt.date.today().isoformat()}: {machine()}", flush=True)
    rows = []
    for name in args.shapes:
        rows.append(run_shape(name, args))
        r = rows[-1]
        print(f"{name}: plain {r['plain_s']:.2f} s, exact {r['exact_s']:.2f} s (x{r['ratio_exact']:.2f}), "
              f"max |acc diff| {r['exact_vs_plain_max']:.4f}, mean score {r['mean_score']:.3f}"
              + (f", published {r['published_s']:.2f} s" if "published_s" in r else ""), flush=True)
    print()
    print(format_table(rows))
    if any("exact_vs_tight_max" in r for r in rows):
        r = next(r for r in rows if "exact_vs_tight_max" in r)
        print(f"\nscikit-learn at tol 1e-8 ({r['shape']}, {r['plain_tight_s']:.2f} s): exact vs it max abs acc diff "
              f"{r['exact_vs_tight_max']:.4f} ({r['exact_vs_tight_heads']}/{r['heads_total']} heads differ); "
              f"default scikit-learn vs it {r['plain_vs_tight_max']:.4f}")
    if any(r.get("published_scaled") for r in rows):
        scaled = ", ".join(f"{r['shape']}: {r['published_epochs']}" for r in rows if r.get("published_scaled"))
        print(f"\n* published timed over fewer epochs ({scaled}) and scaled to 200 (the time per epoch is constant)")
    failed = [r["shape"] for r in rows if r["ratio_exact"] < TARGET]
    print(f"\ntarget plain/exact >= {TARGET}: " + ("met at every shape" if not failed else f"MISSED at {', '.join(failed)}"))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"machine": machine(), "rows": rows}, fh, indent=1, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
