"""The offline VLMEvalKit data sets (POPE_local, CHAIR_local, GQA_local, OmniMedVQA_local): built from local files
in their published formats, scored by VLMEvalKit's own evaluation code on hand-written predictions whose
numbers were worked out by hand (comments)."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from tiny_models import coco_file_name, write_pope_questions, write_synthetic_coco

POPE_IMAGE = "COCO_val2014_000000310196.jpg"


@pytest.fixture(autouse=True)
def _lmu_root(tmp_path, monkeypatch):
    monkeypatch.setenv("LMUData", str(tmp_path / "LMUData"))
    (tmp_path / "LMUData").mkdir()


@pytest.fixture(scope="module")
def registered():
    from truthprobe_eval.model_adapters.vlmeval_registration import register

    register()


@pytest.fixture
def pope_files(tmp_path, shared_dir):
    """The published questions on one COCO image (a subset of ../shared/data/pope/coco), a synthetic image."""
    rows = {}
    for split in ("random", "popular", "adversarial"):
        with open(shared_dir / "data/pope/coco" / f"coco_pope_{split}.json") as fh:
            rows[split] = [json.loads(line) for line in fh if POPE_IMAGE in line]
    qdir = write_pope_questions(tmp_path / "pope", rows)
    image_dir, _ = write_synthetic_coco(tmp_path / "coco", {310196: ["person"]})
    return qdir, image_dir


def _predictions(dataset, replies, path):
    """A prediction file as VLMEvalKit's infer_data_job writes it."""
    from vlmeval.smp import dump

    data = dataset.data.copy()
    data["prediction"] = replies
    dump(data, str(path))
    return str(path)


def test_pope_builds_merged_questions(registered, pope_files):
    from vlmeval.dataset import DATASET_TYPE, build_dataset

    qdir, image_dir = pope_files
    ds = build_dataset("POPE_local", question_dir=str(qdir), image_dir=str(image_dir))
    assert DATASET_TYPE("POPE_local") == "Y/N"
    d = ds.data
    # 18 published questions on the image; the 3 yes-questions and "car" repeat in all splits -> 10 to ask
    assert len(d) == 10
    assert list(d["question"][:3]) == ["Is there a snowboard in the image?", "Is there a car in the image?",
                                      "Is there a person in the image?"]
    assert d["category"][0] == "random,popular,adversarial"
    assert dict(zip(d["question"], d["category"]))["Is there a dog in the image?"] == "adversarial"
    assert sorted(d["answer"].unique()) == ["No", "Yes"]
    assert all(p == str(image_dir / POPE_IMAGE) for p in d["image_path"])
    msg = ds.build_prompt(d.iloc[0])
    assert msg == [dict(type="image", value=str(image_dir / POPE_IMAGE)),
                   dict(type="text", value="Is there a snowboard in the image?\nAnswer the question using a single word or phrase.")]
    unmerged = build_dataset("POPE_local", question_dir=str(qdir), image_dir=str(image_dir), merge_duplicates=False)
    assert len(unmerged.data) == 18
    limited = build_dataset("POPE_local", question_dir=str(qdir), image_dir=str(image_dir), splits="popular", limit_per_split=4)
    assert len(limited.data) == 4 and set(limited.data["category"]) == {"popular"}


def test_pope_evaluate_by_hand(registered, pope_files, tmp_path):
    from truthprobe_eval.tasks.pope.vlmeval_dataset import POPELocal

    qdir, image_dir = pope_files
    ds = POPELocal("POPE_local", question_dir=str(qdir), image_dir=str(image_dir))
    # rows: snowboard Y, car N, person Y, sandwich N (random), skis Y, couch N (random), dining table N, chair N
    # (popular), backpack N, dog N (adversarial)
    replies = ["Yes", "No", "No", "Yes", "maybe", "No", "No", "Yes", "No", "No"]
    table = ds.evaluate(_predictions(ds, replies, tmp_path / "m_POPE_local.xlsx"), model="gpt-4o-mini", nproc=1)
    t = table.set_index("split")
    # random: labels Y N Y N Y N, replies Y N N Y U N -> acc 3/6, tp 1 fp 1 fn 2 -> P .5 R 1/3 F1 .4, yes 2/6
    assert t.loc["random", ["accuracy", "precision", "recall", "f1", "yes_ratio"]].tolist() == pytest.approx(
        [50.0, 50.0, 100 / 3, 40.0, 100 / 3])
    assert t.loc["random", "unknown"] == 1
    # popular: labels Y N Y Y N N, replies Y N N U N Y -> acc 3/6, F1 .4; adversarial: Y N Y Y N N vs
    # Y N N U N N -> acc 4/6, P 1, R 1/3, F1 .5
    assert t.loc["popular", "f1"] == pytest.approx(40.0)
    assert t.loc["adversarial", ["accuracy", "precision", "f1", "yes_ratio"]].tolist() == pytest.approx([200 / 3, 100, 50, 100 / 6])
    assert t.loc["mean", "accuracy"] == pytest.approx(100 * 5 / 9)
    assert t.loc["mean", "f1"] == pytest.approx(100 * 1.3 / 3)
    # VLMEvalKit's own POPE table is written beside it, by exact matching (no API judge was tried)
    theirs = pd.read_csv(tmp_path / "m_POPE_local_score.csv").set_index("split")
    assert theirs.loc["adversarial", "Overall"] == pytest.approx(50.0)
    report = json.loads((tmp_path / "m_POPE_local_pope.json").read_text())
    assert report["metrics"]["splits"]["random"]["unknown"] == 1


def test_pope_bad_input(registered, pope_files, tmp_path):
    from truthprobe_eval.tasks.pope.vlmeval_dataset import POPELocal
    from truthprobe_eval.tasks.vlmeval_local import LocalDatasetError

    qdir, image_dir = pope_files
    with pytest.raises(LocalDatasetError, match="expected a path in the config key 'question_dir'"):
        POPELocal("POPE_local", image_dir=str(image_dir))
    with pytest.raises(LocalDatasetError, match="existing folder"):
        POPELocal("POPE_local", question_dir=str(qdir), image_dir=str(tmp_path / "nowhere"))
    with pytest.raises(TypeError, match="limit"):  # a misspelled key fails instead of being ignored
        POPELocal("POPE_local", question_dir=str(qdir), image_dir=str(image_dir), limit=2)
    os.remove(image_dir / POPE_IMAGE)
    with pytest.raises(LocalDatasetError, match="1 missing"):
        POPELocal("POPE_local", question_dir=str(qdir), image_dir=str(image_dir))
    with pytest.raises(LocalDatasetError, match="coco_pope_other.json"):
        POPELocal("POPE_local", question_dir=str(qdir), image_dir=str(image_dir), splits="other")
    (qdir / "coco_pope_random.json").write_text('{"image": "x.jpg", "text": "Is there?"}\n')
    with pytest.raises(LocalDatasetError, match="entry 0: expected keys image, text, label; missing label"):
        POPELocal("POPE_local", question_dir=str(qdir), image_dir=str(image_dir), splits="random")


@pytest.fixture
def coco(tmp_path):
    objects = {1: ["dog", "person"], 2: ["cat", "couch"], 3: ["car"]}
    captions = {1: ["A man with a dog."], 2: ["A cat on a sofa."], 3: ["A car on the street."]}
    return write_synthetic_coco(tmp_path / "coco", objects, captions)


def test_chair_images_list_and_sample(registered, coco, tmp_path):
    from truthprobe_eval.tasks.chair.vlmeval_dataset import CHAIRLocal
    from truthprobe_eval.tasks.vlmeval_local import LocalDatasetError

    image_dir, ann = coco
    ds = CHAIRLocal(image_dir=str(image_dir), annotations_dir=str(ann), n_images=2, seed=0)
    assert len(ds.data) == 2 and set(ds.data["image_id"]) <= {1, 2, 3}
    again = CHAIRLocal(image_dir=str(image_dir), annotations_dir=str(ann), n_images=2, seed=0)
    assert list(again.data["image_id"]) == list(ds.data["image_id"])  # seeded
    assert CHAIRLocal.MAX_NEW_TOKENS == 64
    assert ds.build_prompt(ds.data.iloc[0])[1] == dict(type="text", value="Please describe this image in detail.")
    listing = tmp_path / "images.txt"
    listing.write_text(f"3\n{coco_file_name(1)}\n")
    listed = CHAIRLocal(image_dir=str(image_dir), annotations_dir=str(ann), image_list=str(listing))
    assert list(listed.data["image_id"]) == [3, 1]
    listing.write_text("3\n999\n")
    with pytest.raises(LocalDatasetError, match="1 not there"):
        CHAIRLocal(image_dir=str(image_dir), annotations_dir=str(ann), image_list=str(listing))


def test_drop_unfinished_sentence():
    from truthprobe_eval.tasks.chair.vlmeval_dataset import drop_unfinished_sentence

    assert drop_unfinished_sentence("A dog sits. The man") == "A dog sits."
    assert drop_unfinished_sentence("A dog sits. The man stands!") == "A dog sits. The man stands!"
    assert drop_unfinished_sentence("A dog on the road") == "A dog on the road"  # the only sentence stays
    assert drop_unfinished_sentence('He said "hi." Then a cat') == 'He said "hi."'


@pytest.mark.parametrize("drop", [True, False])
def test_chair_evaluate_by_hand(registered, coco, tmp_path, drop):
    from truthprobe_eval.tasks.chair.vlmeval_dataset import CHAIRLocal

    image_dir, ann = coco
    ds = CHAIRLocal(image_dir=str(image_dir), annotations_dir=str(ann), n_images=3, drop_unfinished=drop,
                    cache_dir=str(tmp_path / "cache"))
    by_id = {1: "A dog sits next to a cat. The man", 2: "A cat on a couch.", 3: "A car and a bicycle on the road"}
    replies = [by_id[i] for i in ds.data["image_id"]]
    result = ds.evaluate(_predictions(ds, replies, tmp_path / "m_CHAIR_local.xlsx"))
    # ground truth: 1 {dog, person}, 2 {cat, couch} (sofa = couch), 3 {car}
    # dropped "The man": mentions 1 {dog, cat*}, 2 {cat, couch}, 3 {car, bicycle*} -> CHAIRs 2/3, CHAIRi 2/6,
    # recall (dog + cat, couch + car) 4/5. Kept: 1 also mentions person -> CHAIRi 2/7, recall 5/5
    assert result["CHAIRs"] == pytest.approx(100 * 2 / 3)
    assert result["CHAIRi"] == pytest.approx(100 * (2 / 6 if drop else 2 / 7))
    assert result["recall"] == pytest.approx(100 * (4 / 5 if drop else 1.0))
    details = json.loads((tmp_path / "m_CHAIR_local_chair.json").read_text())
    assert details["CHAIRs"] == pytest.approx(2 / 3) and len(details["per_caption"]) == 3
    assert details["drop_unfinished"] is drop


def _write_gqa(tmp_path):
    from PIL import Image

    images = tmp_path / "gqa" / "images"
    images.mkdir(parents=True)
    questions = {}
    for i, (answer, kind) in enumerate([("yes", "verify"), ("red", "query"), ("left", "choose"), ("no", "logical")]):
        Image.new("RGB", (24, 24), (i * 40, 0, 0)).save(images / f"n{i}.jpg")
        questions[f"q{i}"] = {"imageId": f"n{i}", "question": f"Question {i}?", "answer": answer,
                              "fullAnswer": "...", "types": {"structural": kind, "semantic": "attr", "detailed": "x"}}
    path = tmp_path / "gqa" / "testdev_balanced_questions.json"
    path.write_text(json.dumps(questions))
    return path, images


def test_gqa_scored_by_vlmevalkit(registered, tmp_path):
    from vlmeval.dataset import build_dataset

    path, images = _write_gqa(tmp_path)
    ds = build_dataset("GQA_local", questions=str(path), image_dir=str(images))
    assert len(ds) == 4
    assert ds.build_prompt(ds.data.iloc[1])[-1]["value"] == "Question 1?\nAnswer the question using a single word or phrase."
    # VLMEvalKit's "accuracy" match: case-insensitive exact after strip -> rows 1 and 2 right, 3 and 4 wrong
    result = ds.evaluate(_predictions(ds, [" Yes", "RED", "right", "no."], tmp_path / "m_GQA_local.xlsx"))
    scores = dict(zip(result.columns, result.iloc[0])) if "Overall" in result.columns else dict(zip(result.iloc[:, 0], result.iloc[:, 1]))
    assert scores["Overall"] == pytest.approx(50.0)
    assert scores["verify"] == pytest.approx(100.0) and scores["logical"] == pytest.approx(0.0)
    assert len(build_dataset("GQA_local", questions=str(path), image_dir=str(images), n_questions=2)) == 2


def _write_omnimed(tmp_path):
    from PIL import Image

    root = tmp_path / "OmniMedVQA"
    qa = root / "QA_information" / "Open-access"
    qa.mkdir(parents=True)
    (root / "Images" / "SARS-CoV-2 CT-scan").mkdir(parents=True)
    items = []
    for i, (options, gt) in enumerate([(["COVID", "Non-COVID"], "COVID"), (["COVID", "Non-COVID"], "Non-COVID"),
                                       (["CT", "MRI", "X-Ray", "PET"], "MRI"), (["CT", "MRI", "X-Ray", "PET"], "X-Ray")]):
        rel = f"Images/SARS-CoV-2 CT-scan/{i}.png"
        Image.new("RGB", (24, 24), (0, i * 40, 0)).save(root / rel)
        item = {"dataset": "SARS-CoV-2 CT-scan", "question_id": f"s{i}", "question_type": "Disease Diagnosis" if i < 2 else "Modality Recognition",
                "question": f"What is shown in image {i}?", "gt_answer": gt, "image_path": rel, "modality_type": "CT(Computed Tomography)"}
        item.update({f"option_{letter}": text for letter, text in zip("ABCD", options)})
        items.append(item)
    (qa / "SARS-CoV-2 CT-scan.json").write_text(json.dumps(items))
    (qa / "Other.json").write_text(json.dumps([dict(items[0], dataset="Other")]))
    return root


def test_omnimedvqa_scored_by_vlmevalkit(registered, tmp_path):
    from truthprobe_eval.tasks.vlmeval_local import LocalDatasetError
    from vlmeval.dataset import build_dataset

    root = _write_omnimed(tmp_path)
    ds = build_dataset("OmniMedVQA_local", root=str(root), subsets="SARS-CoV-2 CT-scan")
    assert len(ds) == 4 and list(ds.data["answer"]) == ["A", "B", "B", "C"]
    prompt = ds.build_prompt(ds.data.iloc[0])[-1]["value"]
    assert "A. COVID" in prompt and "B. Non-COVID" in prompt and "C." not in prompt
    # exact matching of the chosen letter: rows 1 and 3 right -> 50%; Disease Diagnosis 1/2, Modality 1/2
    result = ds.evaluate(_predictions(ds, ["A", "A", "B", "D"], tmp_path / "m_OmniMedVQA_local.xlsx"),
                         model="gpt-4o-mini", nproc=1)
    row = result.iloc[0]
    assert row["Overall"] == pytest.approx(0.5)
    assert row["Disease Diagnosis"] == pytest.approx(0.5) and row["Modality Recognition"] == pytest.approx(0.5)
    assert len(build_dataset("OmniMedVQA_local", root=str(root))) == 5  # all subsets
    with pytest.raises(LocalDatasetError, match="unknown"):
        build_dataset("OmniMedVQA_local", root=str(root), subsets="Nope")
