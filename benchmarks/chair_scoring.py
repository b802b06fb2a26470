"""CHAIR scoring time for 500 captions: cold (ground truth built from the annotation files) vs cached.

Writes a synthetic COCO-format annotation set (default 500 val2014 images, 1-4 objects each from the 80
classes, person most common, 5 template reference captions per image) and 500 MLLM-style captions of about 60
words (the objects seen plus, now and then, one that is not there). Each run is a fresh Python process, so
loading NLTK's tagger and WordNet is counted where it happens; cold and cached runs alternate (cold, cached,
cold, ...) so that machine noise hits both. Times are taken inside the process (interpreter start and imports
excluded, and ``import nltk``, 1-4 s either way, reported apart): ``from_coco`` plus ``score``. Prints medians
and the cold / cached ratio.

    python benchmarks/chair_scoring.py [--images 500] [--captions 500] [--reps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
COMMON = ["person"] * 12 + ["car", "chair", "dining table", "cup", "bottle", "dog", "cat", "bowl", "bench", "truck",
                            "bicycle", "umbrella", "handbag", "clock", "couch", "potted plant", "tv", "laptop"]
VERBS = ["sitting next to", "standing near", "in front of", "beside", "behind", "on top of", "under"]
SCENES = ["on a city street", "in a kitchen", "in a living room", "in a park", "at the beach", "in an office",
          "on a sunny day", "near a large building"]


def _plural(word: str) -> str:
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _surface(rng: random.Random, synonyms: dict[str, list[str]], name: str) -> str:
    words = [w for w in synonyms[name] if " " not in w or w == name][:6]
    word = rng.choice(words)
    if rng.random() < 0.3 and " " not in word:
        return f"two {_plural(word)}"
    return ("an " if word[0] in "aeiou" else "a ") + word


def make_dataset(folder: Path, n_images: int, n_captions: int, seed: int = 0) -> Path:
    """instances_val2014.json and captions_val2014.json in ``folder``; the captions to score beside it."""
    from truthprobe_eval.tasks.chair.vocabulary import read_synonyms

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    _, rows = read_synonyms()
    synonyms = {row[0]: row for row in rows}
    classes = list(synonyms)
    categories = [{"id": i + 1, "name": name, "supercategory": "object"} for i, name in enumerate(classes)]
    cat_id = {c["name"]: c["id"] for c in categories}
    images, instances, refs, generated = [], [], [], []
    for n in range(n_images):
        image_id = 100000 + 7 * n
        images.append({"id": image_id, "file_name": f"COCO_val2014_{image_id:012d}.jpg", "width": 640, "height": 480})
        k = rng.randint(1, 4)
        objs = list(dict.fromkeys(rng.choice(COMMON) if rng.random() < 0.6 else rng.choice(classes) for _ in range(k)))
        for name in objs:
            x, y = rng.uniform(0, 500), rng.uniform(0, 350)
            instances.append({"id": len(instances) + 1, "image_id": image_id, "category_id": cat_id[name],
                              "segmentation": [[x, y, x + 60, y, x + 60, y + 80, x, y + 80]], "area": 4800.0,
                              "bbox": [x, y, 60.0, 80.0], "iscrowd": 0})
        for _ in range(5):
            a, b = rng.choice(objs), rng.choice(objs)
            text = (f"{_surface(rng, synonyms, a).capitalize()} {rng.choice(VERBS)} {_surface(rng, synonyms, b)} "
                    f"{rng.choice(SCENES)}.")
            refs.append({"id": len(refs) + 1, "image_id": image_id, "caption": text})
        seen = ", ".join(_surface(rng, synonyms, o) for o in objs)
        extra = rng.choice(classes) if rng.random() < 0.35 else None
        caption = (
            f"The image shows {seen} {rng.choice(SCENES)}. The {objs[0]} is clearly visible in the foreground, "
            f"and the lighting suggests it was taken during the day. "
            + (f"In the background, there is {_surface(rng, synonyms, extra)} partially hidden by the others. " if extra else
               "In the background, the scene is calm and nothing else stands out. ")
            + f"Overall, the picture gives a relaxed and ordinary impression of everyday life {rng.choice(SCENES)}."
        )
        generated.append({"image_id": image_id, "caption": caption})
    info = {"description": "synthetic CHAIR benchmark set"}
    (folder / "instances_val2014.json").write_text(json.dumps(
        {"info": info, "licenses": [], "images": images, "annotations": instances, "categories": categories}))
    (folder / "captions_val2014.json").write_text(json.dumps(
        {"info": info, "licenses": [], "images": images, "annotations": refs}))
    (folder.parent / "captions_to_score.json").write_text(json.dumps(generated[:n_captions]))
    return folder


def worker(annotations: str, cache_dir: str) -> None:
    """One timed run, in its own process: build (or load) the evaluator, score the captions, print JSON."""
    t_import = time.perf_counter()
    import nltk  # noqa: F401  (its package import alone takes 1-4 s: scipy.stats; the same cold or cached)

    import_s = time.perf_counter() - t_import
    from truthprobe_eval.tasks.chair import CHAIREvaluator, read_captions

    captions = read_captions(Path(annotations).parent / "captions_to_score.json")
    t0 = time.perf_counter()
    evaluator = CHAIREvaluator.from_coco(annotations, cache_dir, progress=False)
    t1 = time.perf_counter()
    result = evaluator.score(captions, progress=False)
    t2 = time.perf_counter()
    print(json.dumps({"import_s": import_s, "build_s": t1 - t0, "score_s": t2 - t1, "cache": evaluator.info["cache"],
                      "n": result["n_captions"], "CHAIRs": result["CHAIRs"], "CHAIRi": result["CHAIRi"],
                      "recall": result["recall"], "len": result["len"]}))


def _run(annotations: Path, cache_dir: Path) -> dict:
    env = dict(os.environ)
    env.setdefault("NLTK_DATA", str(SHARED / "nltk_data"))
    proc = subprocess.run([sys.executable, __file__, "--worker", str(annotations), str(cache_dir)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=500, help="images in the synthetic annotation set")
    ap.add_argument("--captions", type=int, default=500, help="captions to score (one per image, at most --images)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--worker", nargs=2, metavar=("ANNOTATIONS", "CACHE_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return

    with tempfile.TemporaryDirectory(prefix="chair_bench_") as tmp:
        tmp = Path(tmp)
        annotations = make_dataset((tmp / "annotations"), args.images, args.captions)
        (tmp / "warm").mkdir()
        first = _run(annotations, tmp / "warm")  # fills the cache the cached runs read
        cold, warm = [], []
        for rep in range(args.reps):
            cold.append(_run(annotations, tmp / f"cold{rep}"))
            warm.append(_run(annotations, tmp / "warm"))
        assert all(r["cache"] == "miss" for r in cold) and all(r["cache"] == "hit" for r in warm)
        assert all({k: r[k] for k in ("CHAIRs", "CHAIRi", "recall", "len")} ==
                   {k: first[k] for k in ("CHAIRs", "CHAIRi", "recall", "len")} for r in cold + warm)

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    cold_total = statistics.median(r["build_s"] + r["score_s"] for r in cold)
    warm_total = statistics.median(r["build_s"] + r["score_s"] for r in warm)
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"CHAIR scoring, {first['n']} captions (~{first['len']:.0f} words), {args.images} images x 5 reference "
          f"captions; median of {args.reps}; {platform.machine()}, {os.cpu_count()} CPUs{load}")
    print(f"  result: CHAIRs {first['CHAIRs']:.2%}  CHAIRi {first['CHAIRi']:.2%}  recall {first['recall']:.2%}")
    print(f"  {'':8} {'build s':>9} {'score s':>9} {'total s':>9}   (+ import nltk, not in total)")
    for label, rows, total in (("cold", cold, cold_total), ("cached", warm, warm_total)):
        print(f"  {label:8} {med(rows, 'build_s'):9.2f} {med(rows, 'score_s'):9.2f} {total:9.2f}   {med(rows, 'import_s'):.2f} s")
    print(f"  cold / cached: {cold_total / warm_total:.1f}x total, {med(cold, 'build_s') / med(warm, 'build_s'):.0f}x build")


if __name__ == "__main__":
    main()
