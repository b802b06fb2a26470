"""What the benchmark scripts share: the thread count option, quiet logs, the TruthfulQA CSV's default path."""
from __future__ import annotations

import argparse
import logging
import os

TRUTHFULQA_CSV = os.environ.get("TRUTHPROBE_TRUTHFULQA_CSV", "../shared/data/truthfulqa/TruthfulQA.csv")


def parse(ap: argparse.ArgumentParser, *, threads: int = 2, csv: bool = False) -> argparse.Namespace:
    """Add ``--threads`` (and ``--csv``), parse, pin torch to that many threads and silence library logging."""
    import torch

    ap.add_argument("--threads", type=int, default=threads)
    if csv:
        ap.add_argument("--csv", default=TRUTHFULQA_CSV, help="TruthfulQA.csv")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    return args


def matmul_gflops(m: int = 2048, k: int = 576, n: int = 1536, reps: int = 20) -> float:
    """The machine's float32 matmul rate (GFLOPS, best of ``reps``) on the current torch threads: an
    (m x k) @ (k x n) product, SmolLM2's MLP shape at a batch of prompts; report it beside every timing so that a
    reader on another machine can scale."""
    import time

    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9
