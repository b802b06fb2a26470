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
