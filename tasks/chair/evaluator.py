"""``CHAIREvaluator``: object hallucination in captions against COCO ground truth (Rohrbach et al. 2018).

- CHAIRs: share of captions that mention at least one object not in their image's ground truth.
- CHAIRi: hallucinated object mentions / all object mentions, pooled over captions (a repeated word counts
  each time).
- recall: ground-truth objects mentioned / ground-truth objects, pooled over captions (distinct objects).
- len: average caption length in words (tokens with a letter or digit).

Bad input: an entry without image_id or caption, or of the wrong type, is an error naming its index; an
image id not in the annotations is an error (or, with ``skip_unknown_images=True``, a counted skip); an empty
or blank caption is a counted skip. Skips are reported in ``skipped`` and ``skipped_entries``, never dropped
silently.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from tqdm.auto import tqdm

from .captions import CaptionRecord, check_records
from .errors import CHAIRInputError
from .ground_truth import build_ground_truth
from .matcher import ObjectMatcher
from .vocabulary import ObjectVocabulary

_SCORE_BATCH = 64
_PROGRESS_FROM = 200  # captions; fewer score in about a second


class CHAIREvaluator:
    """Scores captions of COCO images for object hallucination.

    Build it from COCO's annotation files with :meth:`from_coco`, or from a mapping image id -> objects.
    """

    def __init__(
        self,
        objects: Mapping[int, Iterable[str]],
        vocabulary: ObjectVocabulary | None = None,
        lemma_table: dict | None = None,
        info: dict | None = None,
    ):
        self.vocabulary = vocabulary or ObjectVocabulary.load()
        unknown = sorted({o for objs in objects.values() for o in objs} - set(self.vocabulary.classes))
        if unknown:
            raise CHAIRInputError(f"expected ground-truth objects among the 80 COCO classes, found {unknown[:5]}")
        self.objects: dict[int, frozenset[str]] = {int(k): frozenset(v) for k, v in objects.items()}
        self.matcher = ObjectMatcher(self.vocabulary, lemma_table)
        self.info = dict(info or {})

    @classmethod
    def from_coco(
        cls,
        annotations_dir: str | os.PathLike,
        cache_dir: str | os.PathLike | None = None,
        *,
        use_cache: bool = True,
        synonyms: str | os.PathLike | None = None,
        progress: bool | None = None,
    ) -> "CHAIREvaluator":
        """Ground truth from every ``instances_<split>.json`` + ``captions_<split>.json`` in ``annotations_dir``.

        The per-image object sets are cached in ``cache_dir`` (default ``$TRUTHPROBE_CACHE/chair``), keyed by
        the sha256 of the annotation files; a changed file means a rebuild. ``use_cache=False`` neither reads
        nor writes the cache.
        """
        vocabulary = ObjectVocabulary.load(synonyms)
        truth = build_ground_truth(annotations_dir, vocabulary, cache_dir, use_cache=use_cache, progress=progress)
        return cls(truth.objects, vocabulary, truth.lemma_table, truth.info)

    def __len__(self) -> int:
        return len(self.objects)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self.objects

    def ground_truth(self, image_id: int) -> frozenset[str]:
        try:
            return self.objects[int(image_id)]
        except KeyError:
            raise CHAIRInputError(f"expected an image id from the annotations, found {image_id!r}") from None

    def score(
        self,
        captions: Iterable[Mapping[str, Any]],
        *,
        skip_unknown_images: bool = False,
        progress: bool | None = None,
    ) -> dict:
        """CHAIRs, CHAIRi, recall (fractions), len (words), ``per_caption`` details and skip counts."""
        records = check_records(captions)
        to_score: list[CaptionRecord] = []
        skipped_entries: list[dict] = []
        unknown: list[CaptionRecord] = []
        for rec in records:
            if rec.image_id not in self.objects:
                unknown.append(rec)
                if skip_unknown_images:
                    skipped_entries.append({"index": rec.index, "image_id": rec.image_id, "reason": "unknown_image_id"})
            elif not rec.caption.strip():
                skipped_entries.append({"index": rec.index, "image_id": rec.image_id, "reason": "empty_caption"})
            else:
                to_score.append(rec)
        if unknown and not skip_unknown_images:
            shown = ", ".join(f"entry {r.index}: {r.image_id}" for r in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise CHAIRInputError(
                f"expected image ids from the COCO annotations ({len(self.objects)} images), found "
                f"{len(unknown)} not there ({shown}{more}); pass skip_unknown_images=True (--skip-unknown-images) "
                f"to count them as skipped"
            )
        if not to_score:
            raise CHAIRInputError(
                f"expected at least one non-empty caption of an annotated image, found none "
                f"({len(records)} entries, {len(skipped_entries)} skipped)"
            )

        show = progress if progress is not None else len(to_score) >= _PROGRESS_FROM
        found = []
        with tqdm(total=len(to_score), desc="CHAIR", unit="caption", disable=not show) as bar:
            for start in range(0, len(to_score), _SCORE_BATCH):
                batch = to_score[start : start + _SCORE_BATCH]
                found.extend(self.matcher.analyse([r.caption for r in batch]))
                bar.update(len(batch))

        per_caption = []
        n_mentions = n_hallucinated = n_hallucinated_captions = n_truth = n_recalled = n_words = 0
        for rec, objs in zip(to_score, found):
            truth = self.objects[rec.image_id]
            mentioned = objs.objects
            hallucinated = [o for o in mentioned if o not in truth]
            recalled = truth.intersection(mentioned)
            n_mentions += len(mentioned)
            n_hallucinated += len(hallucinated)
            n_hallucinated_captions += bool(hallucinated)
            n_truth += len(truth)
            n_recalled += len(recalled)
            n_words += objs.n_words
            per_caption.append({
                "index": rec.index,
                "image_id": rec.image_id,
                "caption": rec.caption,
                "mentioned": mentioned,
                "mentioned_words": [m.words for m in objs.mentions],
                "hallucinated": hallucinated,
                "ground_truth": sorted(truth),
                "recalled": sorted(recalled),
                "n_words": objs.n_words,
            })

        n = len(to_score)
        skipped = {"empty_caption": 0, "unknown_image_id": 0}
        for entry in skipped_entries:
            skipped[entry["reason"]] += 1
        return {
            "CHAIRs": n_hallucinated_captions / n,
            "CHAIRi": n_hallucinated / n_mentions if n_mentions else 0.0,
            "recall": n_recalled / n_truth if n_truth else 0.0,
            "len": n_words / n,
            "n_captions": n,
            "n_hallucinated_captions": n_hallucinated_captions,
            "n_object_mentions": n_mentions,
            "n_hallucinated_mentions": n_hallucinated,
            "n_ground_truth_objects": n_truth,
            "n_recalled_objects": n_recalled,
            "n_entries": len(records),
            "skipped": skipped,
            "skipped_entries": sorted(skipped_entries, key=lambda e: e["index"]),
            "per_caption": per_caption,
        }

    def score_file(self, path: str | os.PathLike, **kwargs: Any) -> dict:
        """:meth:`score` on a JSON-list or JSONL caption file."""
        from .captions import read_captions

        return self.score(read_captions(Path(path)), **kwargs)
