"""POPE (Li et al. 2023): yes/no questions about objects in an image. ``metrics`` scores replies (no VLMEvalKit
needed to import it); ``vlmeval_dataset`` is the offline VLMEvalKit data set (its loader and prompt) that uses it.

    from truthprobe_eval.tasks.pope import pope_metrics
"""
from __future__ import annotations

from .metrics import (
    METRICS,
    POPE_SPLITS,
    POPEInputError,
    binary_metrics,
    extract_answers,
    format_table,
    metrics_table,
    normalize_labels,
    pope_metrics,
)

__all__ = ["METRICS", "POPEInputError", "POPE_SPLITS", "binary_metrics", "extract_answers", "format_table",
           "metrics_table", "normalize_labels", "pope_metrics"]
