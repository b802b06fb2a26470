"""Model + data -> Truth Scores: extract head activations (through the cache), train probes, write the file.

``probe_model`` works on a loaded model; ``run_probing`` loads everything by name, writes the score file
and its heatmap, and prints a summary (what ``truthprobe probe`` runs).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from torch import nn

from ..architectures import describe, locate_heads
from ..errors import TruthProbeError
from ..scores import TruthScores
from .cache import DEFAULT_SHARD_SIZE, ActivationCache, cache_settings, cached_extract, default_cache_root
from .data import (ProbeDataError, ProbeExample, check_examples, example_record, is_halueval_source, labels_and_groups,
                   load_examples)
from .extract import SHARED_PREFIX_VERSION, extract_activations, shared_prefix_support
from .prompts import CONDITIONS, PADDING_SIDES, PROMPT_FORMATS, PromptEncoder, check_images, is_multimodal

TRAINER_NAMES = ("exact", "paper", "published")
# probe_model's shared_prefix=None: on where it applies (LLM text/qa prompts, batches of 2 or more). Measured on the
# real SmolLM2, 20 HaluEval rows (both answers): 53% of the plain path's tokens, activations within 1.2e-5 (the plain
# path at batch 1 moves as much), Truth Scores equal on every head with the exact and the paper trainer.
SHARED_PREFIX_DEFAULT = True


class ProbeSettingsError(TruthProbeError, ValueError):
    """A probing setting (folds, trainer, batch size, ...) that cannot work."""


def check_settings(*, n_folds: int, trainer: str, epochs: int, batch_size: int, prompt_format: str = "text",
                   condition: str | None = None, padding_side: str = "right") -> None:
    """Validate settings before anything heavy happens."""
    if n_folds < 2:
        raise ProbeSettingsError(f"folds: expected an integer >= 2, found {n_folds}")
    if trainer not in TRAINER_NAMES:
        raise ProbeSettingsError(f"trainer: expected one of {', '.join(TRAINER_NAMES)}, found {trainer!r}")
    if epochs < 1:
        raise ProbeSettingsError(f"epochs: expected an integer >= 1, found {epochs}")
    if batch_size < 1:
        raise ProbeSettingsError(f"batch size: expected an integer >= 1, found {batch_size}")
    if prompt_format not in (*PROMPT_FORMATS, "auto"):
        raise ProbeSettingsError(f"prompt format: expected auto or one of {', '.join(PROMPT_FORMATS)}, found {prompt_format!r}")
    if condition is not None and condition not in CONDITIONS:
        raise ProbeSettingsError(f"condition: expected one of {', '.join(CONDITIONS)}, found {condition!r}")
    if padding_side not in PADDING_SIDES:
        raise ProbeSettingsError(f"padding side: expected one of {', '.join(PADDING_SIDES)}, found {padding_side!r}")


def _check_folds(examples: Sequence[ProbeExample], n_folds: int, seed: int = 0, fold_rule: str = "grouped") -> None:
    """Fail before extraction when the data cannot be split into ``n_folds`` folds by ``fold_rule``."""
    from .folds import grouped_stratified_folds, published_kfold
    from .trainers import FOLD_RULES

    if fold_rule not in FOLD_RULES:
        raise ProbeSettingsError(f"fold rule: expected one of {', '.join(FOLD_RULES)}, found {fold_rule!r}")
    y, groups = labels_and_groups(examples)
    if fold_rule == "kfold":
        published_kfold(y, n_folds=n_folds, seed=seed)
    else:
        grouped_stratified_folds(y, groups, n_folds=n_folds, seed=seed)


def resolve_prompt_format(helper: Any, prompt_format: str = "auto") -> str:
    """``auto``: the published text format for LLMs, the processor's chat template for MLLMs that have one."""
    if prompt_format != "auto":
        return prompt_format
    if is_multimodal(helper):
        return "chat" if getattr(helper, "chat_template", None) else "text"
    return "text"


def _shared_prefix_applies(model: nn.Module, encoder: PromptEncoder, batch_size: int, wanted: bool) -> bool:
    """The shared-prefix path is taken: wanted, supported, and batches of 2 or more (at batch size 1 no answers
    share a forward pass, and every example takes the plain path)."""
    return bool(wanted) and batch_size >= 2 and shared_prefix_support(model, encoder) is None


def extract_with_cache(model: nn.Module, encoder: PromptEncoder, examples: Sequence[ProbeExample], *,
                       batch_size: int = 8, drop_eos: bool = True, float16: bool = False,
                       cache_dir: "str | os.PathLike | None" = None, shard_size: int = DEFAULT_SHARD_SIZE,
                       progress: bool = True, extra_settings: dict | None = None,
                       on_shard: Callable[[int, int], None] | None = None,
                       shared_prefix: bool = False) -> tuple[np.ndarray, Path | None]:
    """(N, L, H, D) activations, through the on-disk cache when ``cache_dir`` is given; returns (X, cache folder).

    ``shared_prefix``: the shared-prefix extraction (``extract.py``) where ``shared_prefix_support`` allows it and
    ``batch_size`` >= 2 (else the plain one, which it would be bit for bit); the path taken is part of the cache
    key, so one path's activations never serve the other.

    Both paths extract shard by shard (``shard_size`` examples, batched in the same order), so the activations,
    and the Truth Scores trained on them, are bitwise the same with and without the cache: the batch a sequence
    is padded in changes the float rounding of its activations.
    """
    shared_prefix = _shared_prefix_applies(model, encoder, batch_size, shared_prefix)
    if cache_dir is None:
        from tqdm.auto import tqdm

        n = len(examples)
        parts = []
        with tqdm(total=n, desc="extracting", unit="ex", disable=not progress) as bar:
            for start in range(0, max(n, 1), shard_size):
                parts.append(extract_activations(model, encoder, examples[start:start + shard_size],
                                                 batch_size=batch_size, drop_eos=drop_eos, float16=float16,
                                                 progress=bar, shared_prefix=shared_prefix))
        return np.concatenate(parts), None
    sites = locate_heads(model)
    settings = cache_settings(model, examples, batch_size=batch_size, drop_eos=drop_eos, **encoder.settings(),
                              **({"extraction": SHARED_PREFIX_VERSION} if shared_prefix else {}),
                              **(extra_settings or {}))
    cache = ActivationCache.open(cache_dir, settings, examples, (sites.num_layers, sites.num_heads, sites.head_dim),
                                 float16=float16, shard_size=shard_size)

    def extract(shard: Sequence[ProbeExample], bar: Any) -> np.ndarray:
        return extract_activations(model, encoder, shard, batch_size=batch_size, drop_eos=drop_eos,
                                   float16=float16, progress=bar, shared_prefix=shared_prefix)

    return cached_extract(cache, examples, extract, progress=progress, on_shard=on_shard), cache.folder


def probe_model(model: nn.Module, processor_or_tokenizer: Any, examples: Sequence[ProbeExample], *,
                prompt_format: str = "auto", condition: str | None = None,
                images_dir: "str | os.PathLike | None" = None, n_folds: int = 5, seed: int = 0,
                trainer: str = "exact", epochs: int = 200, batch_size: int = 8, padding_side: str = "right",
                drop_eos: bool = True, float16: bool = False, cache_dir: "str | os.PathLike | None" = None,
                shard_size: int = DEFAULT_SHARD_SIZE, progress: bool = True, meta: dict | None = None,
                on_shard: Callable[[int, int], None] | None = None, fold_rule: str = "grouped",
                shared_prefix: bool | None = None, n_jobs: int | None = None) -> TruthScores:
    """Truth Scores of a loaded model on ``examples``: one k-fold validated probe per (layer, head).

    MLLMs (a processor) take ``condition`` ``image`` (default), ``black`` or ``text`` and ``images_dir``.
    ``fold_rule``: ``grouped`` (ours) or ``kfold`` (published, ``seed`` its random_state). The scores' metadata
    records every setting and the examples in order (``examples``: [row, "right" | "hallucinated"]); ``meta``
    adds to it (data name, offset, preset, ...). ``shared_prefix``: run each question's shared context once
    (``extract.py``; recorded in the metadata as taken or not); None (default): ``SHARED_PREFIX_DEFAULT``, on where
    it applies. ``n_jobs``: the probe trainer's CPU threads (``train_probes``; default 1).
    """
    from .trainers import train_probes

    check_settings(n_folds=n_folds, trainer=trainer, epochs=epochs, batch_size=batch_size,
                   prompt_format=prompt_format, condition=condition, padding_side=padding_side)
    check_examples(examples)
    _check_folds(examples, n_folds, seed, fold_rule)
    info = describe(model)  # an unknown architecture fails here, before any work
    fmt = resolve_prompt_format(processor_or_tokenizer, prompt_format)
    encoder = PromptEncoder(processor_or_tokenizer, fmt, condition, images_dir, padding_side)
    if encoder.multimodal:
        check_images(examples, encoder.condition, images_dir)
    shared_prefix = _shared_prefix_applies(model, encoder, batch_size,
                                           SHARED_PREFIX_DEFAULT if shared_prefix is None else shared_prefix)
    X, folder = extract_with_cache(model, encoder, examples, batch_size=batch_size, drop_eos=drop_eos,
                                   float16=float16, cache_dir=cache_dir, shard_size=shard_size,
                                   progress=progress, on_shard=on_shard, shared_prefix=shared_prefix)
    y, groups = labels_and_groups(examples)
    result = train_probes(X, y, groups, n_folds=n_folds, seed=seed, trainer=trainer, epochs=epochs,
                          fold_rule=fold_rule, progress=progress, n_jobs=n_jobs)
    info.update(
        metric=f"cv{n_folds}_val_accuracy", n_samples=len(examples), n_groups=int(len(np.unique(groups))),
        folds=n_folds, seed=seed, epochs=epochs, trainer=trainer, fold_rule=fold_rule, batch_size=batch_size,
        condition=encoder.condition, prompt_format=fmt, padding_side=padding_side, drop_eos=drop_eos,
        shared_prefix=shared_prefix,
        activation_dtype="float16" if float16 else "float32",
        activation_cache=None if folder is None else str(folder.resolve()),
        images_dir=None if images_dir is None else str(Path(images_dir).resolve()),
    )
    info.update(meta or {})
    info["examples"] = example_record(examples)
    return result.to_scores(info)


def format_summary(scores: TruthScores, k: int = 10) -> str:
    """A few lines for the terminal: mean score, top-k heads, share of the top-20 in the later layers."""
    s = scores.summary(k)
    lines = [f"Truth Scores of {s['model']} ({s['shape'][0]} layers x {s['shape'][1]} heads): "
             f"mean {s['mean']:.3f}, median {s['median']:.3f}, min {s['min']:.3f}, max {s['max']:.3f}",
             f"top-{k} heads (layer.head score): " + ", ".join(f"{t['layer']}.{t['head']} {t['score']:.3f}" for t in s["top_k"]),
             f"share of the top-20 heads in the later half of the layers: {s['top20_share_later_half']:.0%}"]
    return "\n".join(lines)


def heatmap_path(out: "str | os.PathLike") -> Path:
    """Where the heatmap of a score file goes: the same name with ``.png``."""
    out = Path(out)
    return out.with_suffix(".png") if out.suffix.lower() == ".json" else out.with_name(out.name + ".png")


def plot_heatmap(scores: TruthScores, path: "str | os.PathLike") -> Path:
    """Layers x heads heatmap PNG (top-10 heads outlined), written atomically."""
    from ..plots import plot_heatmap as _plot

    return _plot(scores, path)


def run_probing(model: str = "smollm2-135m-instruct", data: "str | os.PathLike" = "halueval", n: int | None = 292,
                offset: int = 0, *, preset: str = "ours", prompt_format: str = "auto", condition: str | None = None,
                images_dir: "str | os.PathLike | None" = None, n_folds: int = 5, seed: int | None = None,
                trainer: str | None = None, epochs: int = 200, batch_size: int | None = None,
                padding_side: str = "right", drop_eos: bool = True, float16: bool = False,
                cache_dir: "str | os.PathLike | None" = "auto", shard_size: int = DEFAULT_SHARD_SIZE,
                dtype: str = "float32", device: str = "cpu", out: "str | os.PathLike | None" = None, plot: bool = True,
                progress: bool = True, verbose: bool = True, shared_prefix: bool | None = None) -> TruthScores:
    """Load ``model`` and ``data`` (``halueval`` or a JSONL file), probe, and write ``out`` (+ ``.png`` heatmap).

    ``preset`` (``probing/truthprobe_preset.py``): ``ours`` (default here) or ``paper`` (the published pipeline);
    it gives the trainer, the fold rule and seed, the extraction batch size and, for HaluEval data, which answers
    are probed; ``seed``, ``trainer`` and ``batch_size`` override it when given.
    ``cache_dir="auto"`` caches activations under ``~/.cache/truthprobe_eval/activations`` (rerunning an
    interrupted run resumes it); ``None`` keeps them in memory only. Nothing is written to ``out`` unless
    the whole run succeeds. ``shared_prefix``: as in ``probe_model`` (None: on where it applies).
    """
    from ..models import load_model
    from .truthprobe_preset import truthprobe_preset

    chosen = truthprobe_preset(preset)
    trainer = chosen.trainer if trainer is None else trainer
    seed = chosen.fold_seed if seed is None else seed
    batch_size = chosen.batch_size if batch_size is None else batch_size
    check_settings(n_folds=n_folds, trainer=trainer, epochs=epochs, batch_size=batch_size,
                   prompt_format=prompt_format, condition=condition, padding_side=padding_side)
    halueval = is_halueval_source(data)
    examples = load_examples(data, n=n, offset=offset, **(chosen.data_options() if halueval else {}))
    _check_folds(examples, n_folds, seed, chosen.fold_rule)
    if images_dir is not None and not Path(images_dir).is_dir():
        raise ProbeDataError(f"--images: expected a folder of images, found none at {images_dir}")
    loaded, helper = load_model(model, dtype=dtype, device=device)
    locate_heads(loaded)  # unknown architecture: fail before extraction
    if condition is not None and not is_multimodal(helper) and condition != "text":
        raise ProbeSettingsError(f"condition {condition!r} needs a multimodal model; {model} is a text-only model")
    rows = len({e.group for e in examples}) if halueval else len(examples)  # rows of the data file
    scores = probe_model(
        loaded, helper, examples, prompt_format=prompt_format, condition=condition if is_multimodal(helper) else None,
        images_dir=images_dir, n_folds=n_folds, seed=seed, trainer=trainer, epochs=epochs, batch_size=batch_size,
        padding_side=padding_side, drop_eos=drop_eos, float16=float16,
        cache_dir=default_cache_root() if cache_dir == "auto" else cache_dir, shard_size=shard_size,
        progress=progress, fold_rule=chosen.fold_rule, shared_prefix=shared_prefix,
        meta={"model_source": model, "data": str(data), "n_rows": rows, "offset": offset, "model_dtype": dtype,
              **(chosen.meta() if halueval else {"preset": preset})},
    )
    if out is not None:
        scores.save(out)
        if plot:
            png = plot_heatmap(scores, heatmap_path(out))
        if verbose:
            print(format_summary(scores))
            print(f"wrote {out}" + (f" and {png}" if plot else ""))
    elif verbose:
        print(format_summary(scores))
    return scores


__all__ = ["ProbeSettingsError", "TRAINER_NAMES", "check_settings", "extract_with_cache", "format_summary",
           "heatmap_path", "plot_heatmap", "probe_model", "resolve_prompt_format", "run_probing"]
