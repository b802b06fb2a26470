"""Probe training speed: a plain one-core scikit-learn loop vs the ``exact`` and ``published`` trainers.

On synthetic activations of realistic shapes (pairs of answers sharing a question component, a label signal
of varying strength that grows with depth, an anisotropic spectrum; mean Truth Score near 0.85), each run
times, side by side:

- plain: ``LogisticRegression()`` per head and fold plus one on all examples (what ``exact`` returns too),
  on one thread (threadpoolctl), scikit-learn defaults;
- exact: ``train_probes(trainer="exact")`` on the CPU, one thread;
- published: ``train_probes(trainer="published")`` (AdamW, 200 epochs) on ``--device``.

and checks that the scores agree: max |accuracy difference| of exact vs plain (scikit-learn stops at
tol 1e-4, so a borderline validation example can flip), of exact vs a scikit-learn loop at tol 1e-8 on
``--tight-heads`` heads spread over the model (which exact should match), and the mean |difference| of
published vs exact. Wall and CPU seconds are both printed: on a shared machine, CPU time is steadier.

Target: plain / exact >= 1.8 at every shape (exit status 1 otherwise).

    python benchmarks/probe_training.py                 # SmolLM2 shape, 7B shape at N=584 and N=2920
    python benchmarks/probe_training.py --quick         # one small shape, seconds
    python benchmarks/probe_training.py --published-epochs 7b-2920=20   # time published there over 20 epochs, x10
    python benchmarks/probe_training.py --activations ~/.cache/truthprobe_eval/activations/<run>  # + real ones
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
    """(N, L, H, D) float32 activations, labels (1 truthful, 0 hallucinated) and question groups.

    Shaped like real head outputs (checked against SmolLM2-135M on HaluEval): the scale grows ~30x with
    depth, a steep spectrum (top variance ~20x the 6th), mean offsets of the order of the scale, a few
    dead heads (constant up to 1e-3 of the scale); the label signal grows with depth, mean score ~0.9."""
    rng = np.random.default_rng(seed)
    n = 2 * n_questions
    y = np.tile([1, 0], n_questions)
    groups = np.repeat(np.arange(n_questions), 2)
    X = np.empty((n, layers, heads, dim), dtype=np.float32)
    spectrum = np.exp(-np.arange(dim) / (dim / 16)) + 0.02
    for layer in range(layers):
        depth = layer / max(1, layers - 1)
        scale = 0.07 * 30.0**depth * rng.uniform(0.5, 1.5, size=heads)
        scale[rng.random(heads) < 0.03] *= 1e-3                               # dead heads
        strength = rng.uniform(0.5, 1.5, size=heads) * (1.0 + 2.5 * depth)
        basis = np.linalg.qr(rng.standard_normal((heads, dim, dim)))[0]       # a random rotation per head
        question = rng.standard_normal((n_questions, heads, dim)) * spectrum  # shared by a question's answers
        noise = rng.standard_normal((n, heads, dim)) * (0.7 * spectrum)
        signal = rng.standard_normal((heads, dim)) * spectrum
        signal /= np.linalg.norm(signal, axis=1, keepdims=True)
        offset = rng.standard_normal((heads, dim)) * spectrum
        latent = question[groups] + noise + offset + (y - 0.5)[:, None, None] * (strength[:, None] * signal)
        X[:, layer] = np.einsum("nhk,hdk->nhd", latent, basis) * scale[None, :, None]
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
    """(result, wall seconds, CPU seconds of this process)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start, time.process_time() - cpu


def load_real(path: str) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """Activations from an activation cache folder (``truthprobe probe`` writes them) or an .npz (X, y, groups)."""
    if path.endswith(".npz"):
        with np.load(os.path.expanduser(path)) as data:
            return os.path.basename(path)[:-4], data["X"], data["y"], data["groups"]
    from truthprobe_eval.probing.cache import load_activations

    X, y, groups, meta = load_activations(os.path.expanduser(path))
    return f"{meta.get('model', 'real')}", X, y, groups


def run_shape(name: str, args: argparse.Namespace) -> dict:
    import threadpoolctl
    from truthprobe_eval.probing.folds import grouped_stratified_folds
    from truthprobe_eval.probing.trainers import train_probes

    if name.startswith("real:"):
        label, X, y, groups = load_real(name[5:])
        name = f"real {label}"
        layers, heads, dim = X.shape[1:]
    else:
        questions, layers, heads, dim = SHAPES[name]
        X, y, groups = synthetic_activations(questions, layers, heads, dim, seed=args.seed)
    folds = grouped_stratified_folds(y, groups, n_folds=5, seed=args.seed)
    row = {"shape": name, "N": len(y), "layers": layers, "heads": heads, "head_dim": dim}
    with threadpoolctl.threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")      # scikit-learn's ConvergenceWarning on near-separable heads
        plain_acc, row["plain_s"], row["plain_cpu_s"] = timed(plain_loop, X, y, folds)
    exact, row["exact_s"], row["exact_cpu_s"] = timed(train_probes, X, y, groups, folds=folds, trainer="exact",
                                                      device="cpu", n_jobs=args.exact_threads, progress=False)
    diff = np.abs(exact.accuracy - plain_acc)
    row.update(ratio_exact=row["plain_s"] / row["exact_s"], ratio_exact_cpu=row["plain_cpu_s"] / row["exact_cpu_s"],
               exact_vs_plain_max=float(diff.max()), exact_vs_plain_heads=int((diff > 1e-9).sum()),
               heads_total=layers * heads, mean_score=float(exact.accuracy.mean()), exact_info=exact.info)
    if args.tight_heads:
        flat = np.linspace(0, layers * heads - 1, min(args.tight_heads, layers * heads)).round().astype(int)
        pick = np.unravel_index(flat, (layers, heads))
        sub = X[:, pick[0], pick[1]][:, :, None].astype(np.float64)          # (N, K, 1, D)
        with threadpoolctl.threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tight = plain_loop(sub, y, folds, tol=1e-8, max_iter=10_000)[:, 0]
        tdiff = np.abs(exact.accuracy[pick] - tight)
        row.update(tight_heads=len(flat), exact_vs_tight_max=float(tdiff.max()),
                   exact_vs_tight_heads=int((tdiff > 1e-9).sum()),
                   plain_vs_tight_heads=int((np.abs(plain_acc[pick] - tight) > 1e-9).sum()))
    if not args.skip_published:
        epochs = args.published_epochs.get(name, args.published_epochs.get("*", 200))
        published, seconds, _ = timed(train_probes, X, y, groups, folds=folds, trainer="published", epochs=epochs,
                                   device=args.device, progress=False)
        row.update(published_s=seconds * 200 / epochs, published_scaled=epochs != 200, published_epochs=epochs,
                   published_device=published.info["device"])
        row["ratio_published"] = row["plain_s"] / row["published_s"]
        if epochs == 200:
            row["published_vs_exact_mean"] = float(np.abs(published.accuracy - exact.accuracy).mean())
    return row


def format_table(rows: list[dict]) -> str:
    head = ("| shape (L x H x D) | N | plain sklearn s (CPU s) | exact s (CPU s) | plain/exact wall (CPU) "
            "| exact vs plain: max abs acc diff (heads differing) | exact vs sklearn tol 1e-8: heads differing "
            "| published s | plain/published | published vs exact: mean abs acc diff |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        pub = "-" if "published_s" not in r else f"{r['published_s']:.1f}" + ("*" if r["published_scaled"] else "")
        pub_ratio = "-" if "published_s" not in r else f"{r['ratio_published']:.2f}"
        agree = "-" if "published_vs_exact_mean" not in r else f"{r['published_vs_exact_mean']:.4f}"
        tight = "-" if "tight_heads" not in r else (f"{r['exact_vs_tight_heads']}/{r['tight_heads']} "
                                                    f"(plain: {r['plain_vs_tight_heads']}/{r['tight_heads']})")
        lines.append(f"| {r['shape']} ({r['layers']} x {r['heads']} x {r['head_dim']}) | {r['N']} "
                     f"| {r['plain_s']:.2f} ({r['plain_cpu_s']:.2f}) | {r['exact_s']:.2f} ({r['exact_cpu_s']:.2f}) "
                     f"| **{r['ratio_exact']:.1f}** ({r['ratio_exact_cpu']:.1f}) "
                     f"| {r['exact_vs_plain_max']:.4f} ({r['exact_vs_plain_heads']}/{r['heads_total']}) | {tight} "
                     f"| {pub} | {pub_ratio} | {agree} |")
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
    p.add_argument("--tight-heads", type=int, default=16,
                   help="heads (spread over the model) also fitted by scikit-learn at tol 1e-8 (0: none); default 16")
    p.add_argument("--activations", action="append", default=[],
                   help="also real activations: an activation cache folder or an .npz with X, y, groups (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows to this JSON file")
    args = p.parse_args(argv)
    args.shapes = ["quick"] if args.quick else [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        p.error(f"unknown shape(s) {', '.join(unknown)}: expected of {', '.join(SHAPES)}")
    args.shapes += [f"real:{path}" for path in args.activations]
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
        print(f"{r['shape']}: plain {r['plain_s']:.2f} s, exact {r['exact_s']:.2f} s (x{r['ratio_exact']:.2f}, CPU "
              f"x{r['ratio_exact_cpu']:.2f}), "
              f"max |acc diff| {r['exact_vs_plain_max']:.4f}, mean score {r['mean_score']:.3f}"
              + (f", published {r['published_s']:.2f} s" if "published_s" in r else ""), flush=True)
    print()
    print(format_table(rows))
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
