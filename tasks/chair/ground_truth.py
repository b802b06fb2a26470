"""Ground-truth objects per COCO image, from COCO's own annotation files, with an on-disk cache.

An image's objects are the classes of its instance annotations (segmentations) plus the objects its
reference captions mention, found with the same word matching as the captions under test. Mining the
reference captions takes minutes on full COCO, so the result is cached, keyed by the sha256 of every
annotation file, the synonym list, the matching rules and the NLTK version. The cache file also records the
sha256 of its own content (canonical JSON without that field): a file changed after it was written (one image's
objects edited, say) or written by an earlier version without the checksum is rebuilt, with a warning.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from truthprobe_eval._io import atomic_write_text

from .errors import COCOAnnotationError
from .matcher import ObjectMatcher
from .nltk_text import _import_nltk, build_lemma_table, check_nltk_data
from .vocabulary import ObjectVocabulary

# Bump when the matching rules or the cache layout change: old cache files then stop matching.
RULES_VERSION = 1
CACHE_FORMAT = "truthprobe-chair-ground-truth"
_ANNOTATION_FILE = re.compile(r"^(instances|captions)_(.+)\.json$")
_CAPTION_BATCH = 512


def default_cache_dir() -> Path:
    """``$TRUTHPROBE_CACHE/chair`` (default ``~/.cache/truthprobe_eval/chair``)."""
    return Path(os.environ.get("TRUTHPROBE_CACHE", Path.home() / ".cache" / "truthprobe_eval")) / "chair"


def find_annotation_files(folder: str | os.PathLike) -> dict[str, dict[str, Path]]:
    """``{split: {"instances": path, "captions": path}}`` for every split in ``folder``; both files required."""
    folder = Path(folder)
    if not folder.is_dir():
        raise COCOAnnotationError(f"expected a folder of COCO annotation files, found no folder at {folder}")
    splits: dict[str, dict[str, Path]] = defaultdict(dict)
    for path in sorted(folder.iterdir()):
        match = _ANNOTATION_FILE.match(path.name)
        if match and path.is_file():
            splits[match.group(2)][match.group(1)] = path
    if not splits:
        raise COCOAnnotationError(
            f"expected COCO annotation files instances_<split>.json and captions_<split>.json in {folder}, "
            f"found none (files there: {', '.join(sorted(p.name for p in folder.iterdir())[:10]) or 'none'})"
        )
    for split, files in sorted(splits.items()):
        for kind in ("instances", "captions"):
            if kind not in files:
                raise COCOAnnotationError(
                    f"expected {kind}_{split}.json beside {next(iter(files.values())).name} in {folder} "
                    f"(CHAIR's ground truth needs both instance and caption annotations), found it missing"
                )
    return dict(sorted(splits.items()))


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _nltk_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nltk")  # without importing nltk, which alone takes seconds
    except PackageNotFoundError:
        return _import_nltk().__version__


def cache_key(file_hashes: dict[str, str], vocabulary: ObjectVocabulary) -> str:
    parts = {
        "format": CACHE_FORMAT,
        "rules": RULES_VERSION,
        "nltk": _nltk_version(),
        "synonyms": vocabulary.fingerprint,
        "files": file_hashes,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _load_coco(path: Path):
    try:
        from pycocotools.coco import COCO
    except ImportError as exc:
        raise COCOAnnotationError(
            "CHAIR reads COCO annotations with pycocotools, found it not installed: pip install 'truthprobe-eval[chair]'"
        ) from exc

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            return COCO(str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise COCOAnnotationError(f"expected a COCO annotation JSON file at {path}, found unreadable JSON: {exc}") from exc
    except (AssertionError, KeyError, TypeError, AttributeError) as exc:
        raise COCOAnnotationError(
            f"expected a COCO annotation file at {path}, found one pycocotools cannot index: {exc!r}"
        ) from exc


def _instance_objects(path: Path, vocabulary: ObjectVocabulary, objects: dict[int, set[str]]) -> None:
    coco = _load_coco(path)
    cats = coco.cats
    for image_id in coco.getImgIds():
        objects.setdefault(int(image_id), set())
    for ann in coco.anns.values():
        try:
            name = cats[ann["category_id"]]["name"]
        except KeyError as exc:
            raise COCOAnnotationError(
                f"expected annotation {ann.get('id')} in {path.name} to name a category listed there, "
                f"found category_id {ann.get('category_id')!r}"
            ) from exc
        coco_class = vocabulary.class_of(" ".join(str(name).lower().split()))
        if coco_class is None:
            raise COCOAnnotationError(
                f"expected COCO category names (the 80 classes of the CHAIR synonym list) in {path.name}, "
                f"found {name!r}"
            )
        objects.setdefault(int(ann["image_id"]), set()).add(coco_class)


def _caption_objects(path: Path, matcher: ObjectMatcher, objects: dict[int, set[str]], progress: bool | None) -> int:
    coco = _load_coco(path)
    for image_id in coco.getImgIds():
        objects.setdefault(int(image_id), set())
    anns = list(coco.anns.values())
    for ann in anns:
        if not isinstance(ann.get("caption"), str) or "image_id" not in ann:
            raise COCOAnnotationError(
                f"expected every annotation in {path.name} to have image_id and caption, found {ann!r}"
            )
    show = progress if progress is not None else len(anns) >= 2000
    with tqdm(total=len(anns), desc=f"CHAIR: objects in {path.name}", unit="caption", disable=not show) as bar:
        for start in range(0, len(anns), _CAPTION_BATCH):
            batch = anns[start : start + _CAPTION_BATCH]
            for ann, found in zip(batch, matcher.analyse([a["caption"] for a in batch])):
                objects.setdefault(int(ann["image_id"]), set()).update(found.objects)
            bar.update(len(batch))
    return len(anns)


@dataclass
class GroundTruth:
    """Objects per image, the lemma table the words were matched with, and where they came from."""

    objects: dict[int, frozenset[str]]
    lemma_table: dict
    info: dict


def build_ground_truth(
    annotations_dir: str | os.PathLike,
    vocabulary: ObjectVocabulary,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool | None = None,
) -> GroundTruth:
    """Ground truth for every split in ``annotations_dir``, read from the cache when its key matches."""
    start = time.perf_counter()
    splits = find_annotation_files(annotations_dir)
    paths = [p for files in splits.values() for p in files.values()]
    file_hashes = {p.name: file_sha256(p) for p in paths}
    key = cache_key(file_hashes, vocabulary)
    info = {
        "annotations_dir": str(Path(annotations_dir)),
        "splits": list(splits),
        "annotation_files": file_hashes,
        "cache_key": key,
    }
    cache_path = Path(cache_dir or default_cache_dir()) / f"coco_{key[:24]}.json" if use_cache else None
    if cache_path is not None and cache_path.is_file():
        cached = _read_cache(cache_path, key)
        if cached is not None:
            info.update(cache="hit", cache_path=str(cache_path), n_images=len(cached.objects),
                        seconds=time.perf_counter() - start)
            cached.info = info
            return cached

    check_nltk_data()  # before minutes of work, naming every missing package
    lemma_table = build_lemma_table(vocabulary.words)
    matcher = ObjectMatcher(vocabulary, lemma_table)
    objects: dict[int, set[str]] = {}
    n_captions = 0
    for files in splits.values():
        _instance_objects(files["instances"], vocabulary, objects)
        n_captions += _caption_objects(files["captions"], matcher, objects, progress)
    frozen = {image_id: frozenset(objs) for image_id, objs in objects.items()}
    info.update(cache="off" if cache_path is None else "miss", n_images=len(frozen), n_reference_captions=n_captions)
    if cache_path is not None:
        _write_cache(cache_path, key, frozen, lemma_table, vocabulary, info)
        info["cache_path"] = str(cache_path)
    info["seconds"] = time.perf_counter() - start
    return GroundTruth(frozen, lemma_table, info)


def _content_sha256(payload: dict) -> str:
    """sha256 of the cache payload's canonical JSON, its own ``sha256`` field left out."""
    body = {k: v for k, v in payload.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _write_cache(path: Path, key: str, objects, lemma_table, vocabulary: ObjectVocabulary, info: dict) -> None:
    index = {name: i for i, name in enumerate(vocabulary.classes)}
    payload = {
        "format": CACHE_FORMAT,
        "key": key,
        "classes": list(vocabulary.classes),
        "objects": {str(i): sorted(index[o] for o in objs) for i, objs in sorted(objects.items())},
        "lemma_table": lemma_table,
        "built_from": {k: info[k] for k in ("annotations_dir", "splits", "annotation_files")},
    }
    payload["sha256"] = _content_sha256(payload)
    try:
        atomic_write_text(path, json.dumps(payload, separators=(",", ":")))
    except OSError as exc:  # a read-only or full cache folder costs speed, not correctness
        warnings.warn(f"CHAIR: could not write the ground-truth cache {path}: {exc}", stacklevel=3)


def _read_cache(path: Path, key: str) -> GroundTruth | None:
    try:
        payload = json.loads(path.read_text("utf-8"))
        if payload.get("format") != CACHE_FORMAT or payload.get("key") != key:
            return None
        expected, found = payload.get("sha256"), _content_sha256(payload)
        if expected != found:
            why = ("records no checksum (an earlier version wrote it)" if expected is None
                   else f"does not match its checksum (expected sha256 {expected}, found {found})")
            warnings.warn(f"CHAIR: the ground-truth cache {path} {why}; rebuilding", stacklevel=3)
            return None
        classes = payload["classes"]
        objects = {int(i): frozenset(classes[j] for j in objs) for i, objs in payload["objects"].items()}
        return GroundTruth(objects, payload["lemma_table"], {})
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        warnings.warn(f"CHAIR: ignoring the unreadable ground-truth cache {path} ({exc}); rebuilding", stacklevel=3)
        return None
