"""CHAIR on a small hand-built COCO annotation set, with real pycocotools and real NLTK (``NLTK_DATA`` points
at ../shared/nltk_data, see conftest). Every expected number below was worked out by hand from the captions
and the ground truth written here; the arithmetic is in the comments."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from truthprobe_eval.tasks.chair import (
    CHAIREvaluator,
    CHAIRInputError,
    COCOAnnotationError,
    NLTKDataMissingError,
    ObjectMatcher,
    ObjectVocabulary,
    check_nltk_data,
    read_captions,
)

from truthprobe_eval.cli import main

REPO = Path(__file__).resolve().parents[1]

# Real COCO category ids and supercategories.
CATEGORIES = {
    "person": (1, "person"), "bicycle": (2, "vehicle"), "car": (3, "vehicle"), "cat": (17, "animal"),
    "dog": (18, "animal"), "elephant": (22, "animal"), "hot dog": (58, "food"), "chair": (62, "furniture"),
    "toilet": (70, "furniture"), "teddy bear": (88, "indoor"), "sink": (81, "appliance"), "cup": (47, "kitchen"),
}

# image id -> (split, instance classes, reference captions). Ground truth = instance classes + objects in
# the reference captions:
#   1: {person, bicycle}          2: {dog} + "cat" from a caption = {dog, cat}
#   3: {elephant} ("baby elephant", "adult elephant" are elephants, no person)
#   4: {toilet} ("seat" in a caption that says toilet is no chair)
#   5: {person, hot dog} ("hot dog" is no dog)     6: {teddy bear, chair} ("teddy bear" is no bear)
#   7: {} (no instances, no objects in its caption)     101 (train2014): {car}
IMAGES = {
    1: ("val2014", ["person", "bicycle"], ["A man riding a bicycle down the street."]),
    2: ("val2014", ["dog"], ["Two dogs playing in the grass.", "A puppy sleeps next to a cat."]),
    3: ("val2014", ["elephant"], ["A baby elephant walks behind an adult elephant."]),
    4: ("val2014", ["toilet"], ["A white toilet with the seat up in a small bathroom."]),
    5: ("val2014", ["person", "hot dog"], ["A woman eating a hot dog at a stand."]),
    6: ("val2014", ["teddy bear", "chair"], ["A teddy bear sitting on a chair."]),
    7: ("val2014", [], ["An empty road under a cloudy sky."]),
    101: ("train2014", ["car"], ["A red car parked on a street."]),
}
GROUND_TRUTH = {
    1: {"person", "bicycle"}, 2: {"dog", "cat"}, 3: {"elephant"}, 4: {"toilet"}, 5: {"person", "hot dog"},
    6: {"teddy bear", "chair"}, 7: set(), 101: {"car"},
}

# Generated captions: mentions (M), hallucinated mentions (H), recalled / ground-truth objects (R), words (W).
CAPTIONS = [
    {"image_id": 1, "caption": "A man rides a bike next to a dog."},  # man->person, bike->bicycle, dog: M3 H1(dog) R2/2 W9
    {"image_id": 2, "caption": "Two dogs and a cat sleep on the grass."},  # dogs->dog, cat: M2 H0 R2/2 W9
    {"image_id": 3, "caption": "A baby elephant stands next to a large rock."},  # baby elephant->elephant: M1 H0 R1/1 W9
    {"image_id": 4, "caption": "The seat of the toilet is up."},  # toilet; seat dropped: M1 H0 R1/1 W7
    {"image_id": 5, "caption": "A person holds a hot dog and a cup."},  # person, hot dog, cup: M3 H1(cup) R2/2 W9
    {"image_id": 6, "caption": "A teddy bear sits on a wooden chair."},  # teddy bear, chair: M2 H0 R2/2 W8
    {"image_id": 101, "caption": "A car and a bus on the road."},  # car, bus: M2 H1(bus) R1/1 W8
    {"image_id": 1, "caption": "A man on a street."},  # man->person: M1 H0 R1/2 W5
]
# CHAIRs = captions with H>0 / captions = 3/8 (captions 0, 4, 6)
# CHAIRi = sum H / sum M = (1+0+0+0+1+0+1+0) / (3+2+1+1+3+2+2+1) = 3/15
# recall = sum recalled / sum ground truth = (2+2+1+1+2+2+1+1) / (2+2+1+1+2+2+1+2) = 12/13
# len    = sum W / captions = (9+9+9+7+9+8+8+5) / 8 = 64/8
EXPECTED = {"CHAIRs": 3 / 8, "CHAIRi": 3 / 15, "recall": 12 / 13, "len": 8.0}


def write_coco(folder: Path, images: dict = IMAGES) -> Path:
    """COCO-format instances_<split>.json and captions_<split>.json for every split in ``images``."""
    folder.mkdir(parents=True, exist_ok=True)
    categories = [{"id": cid, "name": name, "supercategory": sup} for name, (cid, sup) in CATEGORIES.items()]
    for split in sorted({s for s, _, _ in images.values()}):
        img_rows, instances, captions = [], [], []
        for image_id, (s, classes, refs) in images.items():
            if s != split:
                continue
            img_rows.append({"id": image_id, "file_name": f"COCO_{split}_{image_id:012d}.jpg", "width": 640, "height": 480})
            for k, name in enumerate(classes):
                x, y = 10.0 + 50 * k, 20.0 + 30 * k
                instances.append({
                    "id": 1000 * image_id + k, "image_id": image_id, "category_id": CATEGORIES[name][0],
                    "segmentation": [[x, y, x + 40, y, x + 40, y + 40, x, y + 40]], "area": 1600.0,
                    "bbox": [x, y, 40.0, 40.0], "iscrowd": 0,
                })
            for k, text in enumerate(refs):
                captions.append({"id": 5000 * image_id + k, "image_id": image_id, "caption": text})
        info = {"description": "CHAIR test set", "year": 2014}
        (folder / f"instances_{split}.json").write_text(json.dumps(
            {"info": info, "licenses": [], "images": img_rows, "annotations": instances, "categories": categories}))
        (folder / f"captions_{split}.json").write_text(json.dumps(
            {"info": info, "licenses": [], "images": img_rows, "annotations": captions}))
    return folder


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory) -> Path:
    return write_coco(tmp_path_factory.mktemp("coco") / "annotations")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chair_cache")


@pytest.fixture(scope="module")
def evaluator(coco_dir, cache_dir) -> CHAIREvaluator:
    return CHAIREvaluator.from_coco(coco_dir, cache_dir)


@pytest.fixture(scope="module")
def matcher(evaluator) -> ObjectMatcher:
    return evaluator.matcher


def test_packaged_synonym_list_is_the_published_one(shared_dir):
    packaged = REPO / "truthprobe_eval" / "data" / "chair_synonyms.txt"
    assert packaged.read_bytes() == (shared_dir / "data" / "chair" / "synonyms.txt").read_bytes()
    assert "BSD 2-Clause" in (REPO / "truthprobe_eval" / "data" / "CHAIR_NOTICE").read_text()
    vocab = ObjectVocabulary.load()
    assert len(vocab.classes) == 80 and len(set(vocab.classes)) == 80
    # stray spaces in the file ("scooter,  motor bike") must not hide the phrase
    assert vocab.phrases["motor bike"] == "motorcycle" and vocab.class_of("cheesecake") == "cake"
    assert vocab.class_of("iphone") == "cell phone"


def test_ground_truth_from_instances_and_reference_captions_of_all_splits(evaluator):
    assert evaluator.info["splits"] == ["train2014", "val2014"]
    assert {i: set(o) for i, o in evaluator.objects.items()} == GROUND_TRUTH


@pytest.mark.parametrize("caption, expected", [
    # synonyms
    ("A man rides a bike.", ["person", "bicycle"]),
    ("A kitten and a puppy.", ["cat", "dog"]),
    # plurals, regular and irregular ("men" ties with "man" in WordNet; the object word wins)
    ("Two dogs chase three cats.", ["dog", "cat"]),
    ("Two men and some children.", ["person", "person"]),
    # two-word objects: a hot dog is food, a teddy bear is no bear
    ("A hot dog next to a teddy bear.", ["hot dog", "teddy bear"]),
    ("Hot dogs and teddy bears.", ["hot dog", "teddy bear"]),
    ("A motor bike and a cell phone.", ["motorcycle", "cell phone"]),
    # baby / adult + animal is the animal; "baby" alone is a person
    ("A baby elephant and an adult giraffe.", ["elephant", "giraffe"]),
    ("A baby goat.", ["sheep"]),
    ("A mother holds her baby.", ["person", "person"]),
    # toilet seat is the toilet; "seat" in a caption about a toilet is no chair, elsewhere it is
    ("A toilet seat.", ["toilet"]),
    ("The seat of the toilet is up.", ["toilet"]),
    ("A seat by the window.", ["chair"]),
    # bow tie is a tie; home plate and train tracks are no objects; a passenger train is no person
    ("A man in a bow tie.", ["person", "tie"]),
    ("A batter stands at home plate.", []),
    ("A passenger train on the train tracks.", ["train"]),
    ("", []),
])
def test_object_mentions(matcher, caption, expected):
    assert matcher(caption).objects == expected


def test_scores_match_hand_computed_values(evaluator):
    result = evaluator.score(CAPTIONS)
    for key, value in EXPECTED.items():
        assert result[key] == pytest.approx(value), key
    assert result["n_captions"] == 8 and result["skipped"] == {"empty_caption": 0, "unknown_image_id": 0}
    assert (result["n_object_mentions"], result["n_hallucinated_mentions"]) == (15, 3)
    assert (result["n_ground_truth_objects"], result["n_recalled_objects"]) == (13, 12)
    first = result["per_caption"][0]
    assert first["mentioned"] == ["person", "bicycle", "dog"]
    assert first["mentioned_words"] == ["man", "bike", "dog"]
    assert first["hallucinated"] == ["dog"] and first["ground_truth"] == ["bicycle", "person"]
    assert first["n_words"] == 9
    assert [c["hallucinated"] for c in result["per_caption"]] == [["dog"], [], [], [], ["cup"], [], ["bus"], []]


def test_repeated_hallucination_counts_each_mention(evaluator):
    # image 7 has no objects: "dog" twice and "dogs" -> 3 mentions, all hallucinated; CHAIRs 1/1, CHAIRi 3/3,
    # recall 0 recalled / 0 ground truth -> defined as 0; len: A dog sees a dog and two dogs = 8 words
    result = evaluator.score([{"image_id": 7, "caption": "A dog sees a dog and two dogs."}])
    assert (result["CHAIRs"], result["CHAIRi"], result["recall"], result["len"]) == (1.0, 1.0, 0.0, 8.0)
    assert result["per_caption"][0]["hallucinated"] == ["dog", "dog", "dog"]


def test_cache_hit_is_faster_same_and_invalidated_by_a_changed_file(tmp_path, evaluator):
    annotations = write_coco(tmp_path / "annotations")
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    cold = CHAIREvaluator.from_coco(annotations, cache)
    cold_s = time.perf_counter() - t0
    assert cold.info["cache"] == "miss" and len(list(cache.glob("coco_*.json"))) == 1
    t0 = time.perf_counter()
    warm = CHAIREvaluator.from_coco(annotations, cache)
    warm_s = time.perf_counter() - t0
    assert warm.info["cache"] == "hit"
    assert warm.objects == cold.objects
    assert warm.score(CAPTIONS) == cold.score(CAPTIONS) == evaluator.score(CAPTIONS)
    assert warm_s < cold_s, (warm_s, cold_s)

    # a new reference caption for image 1 mentions a cat: the cache key changes and cat joins the ground truth
    changed = dict(IMAGES)
    changed[1] = ("val2014", ["person", "bicycle"], ["A man riding a bicycle down the street.", "A cat watches."])
    write_coco(annotations, changed)
    rebuilt = CHAIREvaluator.from_coco(annotations, cache)
    assert rebuilt.info["cache"] == "miss"
    assert rebuilt.objects[1] == {"person", "bicycle", "cat"}
    assert len(list(cache.glob("coco_*.json"))) == 2


def test_changed_or_old_cache_file_is_rebuilt(tmp_path):
    """A cache file edited after it was written (one image's objects swapped for another's, still valid JSON), or
    one without a checksum (an earlier version), is rebuilt, never used."""
    annotations = write_coco(tmp_path / "annotations")
    cache = tmp_path / "cache"
    first = CHAIREvaluator.from_coco(annotations, cache)
    path = Path(first.info["cache_path"])
    payload = json.loads(path.read_text())
    ids = sorted(payload["objects"])
    payload["objects"][ids[0]], payload["objects"][ids[1]] = payload["objects"][ids[1]], payload["objects"][ids[0]]
    path.write_text(json.dumps(payload))
    with pytest.warns(UserWarning, match="does not match its checksum"):
        again = CHAIREvaluator.from_coco(annotations, cache)
    assert again.info["cache"] == "miss" and again.objects == first.objects
    del payload["sha256"]
    path.write_text(json.dumps(payload))
    with pytest.warns(UserWarning, match="records no checksum"):
        assert CHAIREvaluator.from_coco(annotations, cache).objects == first.objects
    assert CHAIREvaluator.from_coco(annotations, cache).info["cache"] == "hit"


def test_unreadable_cache_file_is_rebuilt(tmp_path):
    annotations = write_coco(tmp_path / "annotations")
    cache = tmp_path / "cache"
    first = CHAIREvaluator.from_coco(annotations, cache)
    Path(first.info["cache_path"]).write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable ground-truth cache"):
        again = CHAIREvaluator.from_coco(annotations, cache)
    assert again.info["cache"] == "miss" and again.objects == first.objects


def test_bad_entries_are_errors_naming_the_index(evaluator):
    with pytest.raises(CHAIRInputError, match=r"entry 1 .*without caption"):
        evaluator.score([CAPTIONS[0], {"image_id": 2}])
    with pytest.raises(CHAIRInputError, match=r"entry 0 .*without image_id"):
        evaluator.score([{"caption": "A dog."}])
    with pytest.raises(CHAIRInputError, match=r"entry 0 to have an integer image_id, found 'abc'"):
        evaluator.score([{"image_id": "abc", "caption": "A dog."}])
    with pytest.raises(CHAIRInputError, match=r"entry 0 to have a string caption"):
        evaluator.score([{"image_id": 1, "caption": ["A dog."]}])
    with pytest.raises(CHAIRInputError, match=r"at least one caption record"):
        evaluator.score([])


def test_unknown_image_is_an_error_or_a_counted_skip(evaluator):
    captions = CAPTIONS + [{"image_id": 999, "caption": "A dog."}]
    with pytest.raises(CHAIRInputError, match=r"1 not there \(entry 8: 999\).*skip_unknown_images"):
        evaluator.score(captions)
    result = evaluator.score(captions, skip_unknown_images=True)
    assert result["skipped"] == {"empty_caption": 0, "unknown_image_id": 1}
    assert result["skipped_entries"] == [{"index": 8, "image_id": 999, "reason": "unknown_image_id"}]
    assert result["n_entries"] == 9 and result["n_captions"] == 8
    for key, value in EXPECTED.items():  # the skipped entry leaves the metrics of the other eight alone
        assert result[key] == pytest.approx(value)


def test_empty_caption_is_a_counted_skip(evaluator):
    captions = [{"image_id": 5, "caption": "   "}] + CAPTIONS
    result = evaluator.score(captions)
    assert result["skipped"] == {"empty_caption": 1, "unknown_image_id": 0}
    assert result["skipped_entries"] == [{"index": 0, "image_id": 5, "reason": "empty_caption"}]
    assert result["CHAIRs"] == pytest.approx(3 / 8) and result["per_caption"][0]["index"] == 1
    with pytest.raises(CHAIRInputError, match="at least one non-empty caption"):
        evaluator.score([{"image_id": 5, "caption": ""}])


def test_missing_nltk_data_names_the_packages(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setenv("NLTK_DATA", str(tmp_path))
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(NLTKDataMissingError) as err:
        check_nltk_data()
    message = str(err.value)
    for package in ("punkt_tab", "averaged_perceptron_tagger_eng", "wordnet"):
        assert package in message
    assert "python -m nltk.downloader punkt_tab averaged_perceptron_tagger_eng wordnet" in message
    with pytest.raises(NLTKDataMissingError, match="punkt_tab, averaged_perceptron_tagger_eng, wordnet"):
        CHAIREvaluator.from_coco(write_coco(tmp_path / "annotations"), use_cache=False)


def test_partly_missing_nltk_data_names_only_what_is_missing(tmp_path, monkeypatch, shared_dir):
    import nltk

    shutil.copytree(shared_dir / "nltk_data" / "tokenizers", tmp_path / "tokenizers")  # NLTK skips symlinks
    monkeypatch.setenv("NLTK_DATA", str(tmp_path))
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    check_nltk_data(["punkt_tab"])
    with pytest.raises(NLTKDataMissingError, match=r"packages averaged_perceptron_tagger_eng, wordnet, found"):
        check_nltk_data()


def test_annotation_folder_errors(tmp_path):
    with pytest.raises(COCOAnnotationError, match="found no folder"):
        CHAIREvaluator.from_coco(tmp_path / "nowhere", use_cache=False)
    folder = write_coco(tmp_path / "a")
    (folder / "captions_train2014.json").unlink()
    with pytest.raises(COCOAnnotationError, match="captions_train2014.json"):
        CHAIREvaluator.from_coco(folder, use_cache=False)
    folder = write_coco(tmp_path / "b", {1: ("val2014", ["dog"], ["A dog."])})
    data = json.loads((folder / "instances_val2014.json").read_text())
    data["categories"][0]["name"] = "unicorn"
    data["annotations"][0]["category_id"] = data["categories"][0]["id"]
    (folder / "instances_val2014.json").write_text(json.dumps(data))
    with pytest.raises(COCOAnnotationError, match="found 'unicorn'"):
        CHAIREvaluator.from_coco(folder, use_cache=False)


def test_lemma_table_agrees_with_wordnet_on_every_object_word(matcher):
    """The cached lemma table stands in for WordNet: for any token, it must land on a vocabulary word exactly
    when WordNet's lemmatizer does (and on the same one), apart from the documented noun rule: where WordNet
    knows several lemmas of a plural noun, the object word wins ("men" -> man, "vases" -> vase)."""
    from nltk.corpus import wordnet as wn
    from nltk.stem import WordNetLemmatizer

    vocab = matcher.vocabulary.words
    lemmatize = WordNetLemmatizer().lemmatize
    words = set(vocab)
    for lemma in list(wn.all_lemma_names("n"))[::40] + sorted(vocab):
        words.update({lemma, lemma + "s", lemma + "es", lemma + "ing", lemma + "ed", lemma + "er"})
    for forms in matcher.lemma_table.values():
        words.update(forms)
    ties = set()
    for pos in ("n", "v", "a", "r"):
        table = matcher.lemma_table[pos]
        for word in words:
            ours, theirs = table.get(word, word), lemmatize(word, pos)
            if ours in vocab or theirs in vocab:
                if ours != theirs:
                    ties.add((word, pos, ours, theirs))
                    assert pos == "n" and ours in vocab and ours in wn._morphy(word, pos), (word, pos, ours, theirs)
    assert {("men", "n", "man", "men"), ("vases", "n", "vase", "vas")} <= ties


def test_json_and_jsonl_inputs_give_the_same_result(tmp_path, evaluator):
    as_json = tmp_path / "caps.json"
    as_json.write_text(json.dumps(CAPTIONS))
    as_jsonl = tmp_path / "caps.jsonl"
    as_jsonl.write_text("\n".join(json.dumps(c) for c in CAPTIONS) + "\n\n")
    assert read_captions(as_json) == read_captions(as_jsonl) == CAPTIONS
    assert evaluator.score_file(as_json) == evaluator.score_file(as_jsonl)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(CAPTIONS[0]) + "\n{oops\n")
    with pytest.raises(CHAIRInputError, match="line 2"):
        read_captions(broken)


def test_cli_main_prints_percent_table_and_writes_json(tmp_path, coco_dir, cache_dir, capsys):
    captions = tmp_path / "caps.jsonl"
    captions.write_text("\n".join(json.dumps(c) for c in CAPTIONS + [{"image_id": 3, "caption": ""}]))
    out = tmp_path / "result.json"
    rc = main(["chair", str(captions), "--coco", str(coco_dir), "--cache-dir", str(cache_dir), "--out", str(out)])
    printed = capsys.readouterr()
    assert rc == 0
    assert "CHAIRs         37.50%" in printed.out  # 3/8
    assert "CHAIRi         20.00%" in printed.out  # 3/15
    assert "recall         92.31%" in printed.out  # 12/13
    assert "len        8.00 words" in printed.out
    assert "1 empty caption (entries 8)" in printed.err
    result = json.loads(out.read_text())
    assert {"CHAIRs", "CHAIRi", "recall", "len", "per_caption"} <= set(result)
    assert result["CHAIRs"] == pytest.approx(3 / 8) and len(result["per_caption"]) == 8
    assert result["annotations"]["cache"] == "hit"


def test_cli_errors_are_clean(tmp_path, coco_dir, cache_dir, capsys):
    captions = tmp_path / "caps.json"
    captions.write_text(json.dumps([{"image_id": 424242, "caption": "A dog."}]))
    rc = main(["chair", str(captions), "--coco", str(coco_dir), "--cache-dir", str(cache_dir)])
    assert rc == 2
    assert "truthprobe chair: error: expected image ids from the COCO annotations" in capsys.readouterr().err
    rc = main(["chair", str(tmp_path / "missing.json"), "--coco", str(coco_dir)])
    assert rc == 2 and "found no file" in capsys.readouterr().err


def test_cli_subprocess(tmp_path, coco_dir, cache_dir):
    captions = tmp_path / "caps.json"
    captions.write_text(json.dumps(CAPTIONS))
    out = tmp_path / "out" / "result.json"
    env = dict(os.environ, NLTK_DATA=os.environ["NLTK_DATA"], HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "truthprobe_eval", "chair", str(captions), "--coco", str(coco_dir),
         "--cache-dir", str(cache_dir), "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "CHAIRs         37.50%" in proc.stdout
    result = json.loads(out.read_text())
    assert result["CHAIRi"] == pytest.approx(3 / 15) and result["recall"] == pytest.approx(12 / 13)
