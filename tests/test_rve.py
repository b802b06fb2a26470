"""RVE and ARS on tiny config-built LLaVA and Qwen2-VL (no real VLM weights exist here): the attention edit's
exactness, where it acts, the KV cache, left padding, ARS of identical pairs, the score file, errors; and RVE
through VLMEvalKit's own runner on POPE and CHAIR."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import save_tiny_mllm
from truthprobe_eval.probing.ars import ARSPair, ars_of, ars_scores, read_pairs, span_attention

from truthprobe_eval import TruthScores, load_model, locate_heads
from truthprobe_eval.attention_edit import SpanTracker, edit_attention
from truthprobe_eval.errors import InterventionError
from truthprobe_eval.interventions import build
from truthprobe_eval.interventions.rve import WHOLE_SPAN_NAME, RowEdit
from truthprobe_eval.spans import image_span, image_token_id

FAMILIES = ("llava", "qwen2_vl")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("rve")
    return {family: save_tiny_mllm(family, root / family) for family in FAMILIES}


def _load(path: str, attn: str = "eager"):
    from truthprobe_eval.model_adapters.vlmeval_gated import TruthGatedVLM

    vlm = TruthGatedVLM(model_path=path, method="none", device="cpu", dtype="float32")
    vlm.model.config.get_text_config()._attn_implementation = attn
    return vlm


def _image(seed: int) -> str:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8))


def _inputs(vlm, tmp_path, texts=("What is in the image?",), seed=0):
    path = tmp_path / f"img{seed}.png"
    _image(seed).save(path)
    return [vlm.encode([{"type": "image", "value": str(path)}, {"type": "text", "value": t}]) for t in texts]


def _ars_file(vlm, tmp_path, seed=0) -> str:
    sites = locate_heads(vlm.model)
    values = np.random.default_rng(seed).uniform(0, 1, (sites.num_layers, sites.num_heads))
    return str(TruthScores(values, meta={"model": "tiny", "kind": "ars"}).save(tmp_path / f"ars{seed}.json"))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_no_op_edit_and_an_empty_mask_change_nothing(tiny, family, tmp_path):
    vlm = _load(tiny[family])
    model = vlm.model
    (inputs,) = _inputs(vlm, tmp_path)
    n_image = int((inputs["input_ids"] == image_token_id(model)).sum())
    assert n_image > 0
    with torch.no_grad():
        plain = model(**inputs).logits
        with edit_attention(model, {layer: (lambda s, _m: s) for layer in range(2)}):
            same = model(**inputs).logits
        assert torch.equal(same, plain)
        empty = build("rve", ars=_ars_file(vlm, tmp_path), layers="0-1", k=1, alpha=0.5 / n_image)  # m = 0
        assert not empty.identity
        with empty.attach(model):
            assert torch.equal(model(**inputs).logits, plain)
        assert build("rve", ars=_ars_file(vlm, tmp_path), layers="1", k=1, beta=0).identity
        boosted = build("rve", ars=_ars_file(vlm, tmp_path), layers="0-1", k=1, alpha=0.3, beta=2.0)
        with boosted.attach(model):
            changed = model(**inputs).logits
        assert not torch.allclose(changed, plain)
        assert torch.equal(model(**inputs).logits, plain)  # restored
    assert model.config.get_text_config()._attn_implementation == "eager"
    sdpa = _load(tiny[family], attn="sdpa").model
    with torch.no_grad():
        plain = sdpa(**inputs).logits
        with edit_attention(sdpa, {}):  # untouched layers run the model's own sdpa with its own masks
            assert torch.equal(sdpa(**inputs).logits, plain)
        with edit_attention(sdpa, {0: lambda s, _m: s}):  # an edited layer computes eager attention: float rounding
            assert torch.allclose(sdpa(**inputs).logits, plain, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_span_columns_of_the_last_query_row_change(tiny, family, tmp_path):
    vlm = _load(tiny[family])
    model = vlm.model
    (inputs,) = _inputs(vlm, tmp_path)
    ids = inputs["input_ids"]
    rve = build("rve", ars=_ars_file(vlm, tmp_path), layers="1", k=1, alpha=0.4, beta=1.5)
    sens, non = rve.heads(2, 4)[1]
    tracker = SpanTracker(image_span(model))
    tracker.observe(ids)
    scores = torch.randn(1, 4, 5, ids.shape[1])
    edit = RowEdit(rve.settings, tracker, sens, non)
    rows = edit.rows(5, ids.shape[1])
    assert list(rows) == [4]  # the prompt's last position
    edited = scores.clone()
    edited[:, :, rows.start:rows.stop] = edit(scores[:, :, rows.start:rows.stop], model)
    changed = (edited != scores)
    span = tracker.mask[0]
    assert changed.any() and not changed[:, :, :-1].any() and not changed[..., ~span].any()
    assert (changed[0, :, -1].any(dim=0) <= span).all()
    m = int(np.floor(0.4 * int(span.sum())))
    assert 0 < int(changed[0, 0, -1].sum()) <= m  # M = top-m(sensitive) minus top-m(non-sensitive)
    # in the model: the edited layer's attention weights differ in the last row only
    with torch.no_grad():
        plain = model(**inputs, output_attentions=True).attentions[1]
        with rve.attach(model):
            got = model(**inputs, output_attentions=True).attentions[1]
    assert torch.equal(got[:, :, :-1], plain[:, :, :-1]) and not torch.allclose(got[:, :, -1], plain[:, :, -1])
    image_mass = lambda w: w[0, :, -1][:, span].sum(dim=-1)  # noqa: E731
    assert (image_mass(got) >= image_mass(plain) - 1e-6).all()  # a boost moves mass onto the span


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_with_and_without_the_kv_cache_and_left_padding(tiny, family, tmp_path):
    vlm = _load(tiny[family], attn="sdpa")
    model = vlm.model
    rve = build("rve", ars=_ars_file(vlm, tmp_path), layers="0-1", k=1, alpha=0.3, beta=3.0)
    (inputs,) = _inputs(vlm, tmp_path)
    pad = vlm.processor.tokenizer.pad_token_id
    with torch.no_grad(), rve.attach(model):
        cached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=pad)
        fresh = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=pad)
    assert torch.equal(cached, fresh)
    with torch.no_grad():
        plain = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=pad)
    assert model.config.get_text_config()._attn_implementation == "sdpa"
    # a left-padded batch of two prompts of different lengths: each row as it is alone
    texts = ("Is there a dog?", "Describe the picture in a few words, please.")
    path = tmp_path / "img_batch.png"
    _image(0).save(path)
    prompts = [vlm.prompt_text([{"type": "image", "value": str(path)}, {"type": "text", "value": t}])[0] for t in texts]
    vlm.processor.tokenizer.padding_side = "left"
    batch = vlm.processor(text=prompts, images=[Image.open(path).convert("RGB")] * 2, return_tensors="pt",
                          padding=True)
    assert (batch["attention_mask"][0] == 0).any()  # the shorter row is padded on the left
    with torch.no_grad(), rve.attach(model):
        together = model(**batch).logits[:, -1]
        alone = [model(**vlm.processor(text=[p], images=[Image.open(path).convert("RGB")], return_tensors="pt")).logits[0, -1]
                 for p in prompts]
    for row in range(2):
        assert torch.allclose(together[row], alone[row], atol=1e-4)
    assert plain.shape == cached.shape
    # on an sdpa model RVE recomputes only the edited rows eagerly: the same numbers as an all-eager model
    eager = _load(tiny[family], attn="eager").model
    with torch.no_grad(), rve.attach(model):
        hybrid = model(**inputs).logits
    with torch.no_grad(), rve.attach(eager):
        full = eager(**inputs).logits
    assert torch.allclose(hybrid, full, atol=1e-5)


def test_ars_is_zero_for_identical_pairs_and_the_file_is_a_score_file(tiny, tmp_path):
    vlm = _load(tiny["llava"])
    model = vlm.model
    path = tmp_path / "img.png"
    _image(1).save(path)

    def encode(pair, text):
        return vlm.encode([{"type": "image", "value": pair.image}, {"type": "text", "value": text}])

    same = ars_scores(model, encode, [ARSPair("A man holding a surfboard.", "A man holding a surfboard.", str(path))],
                      image_span(model), progress=False)
    assert np.allclose(same.values, 0.0) and same.meta["kind"] == "ars" and same.shape == (2, 4)
    differ = ars_scores(model, encode, [ARSPair("A man sitting on a surfboard.", "A man standing on a surfboard.", str(path))] * 2,
                        image_span(model), progress=False, meta={"model": "tiny-llava"})
    assert (differ.values > 0).all() and differ.meta["n_pairs"] == 2 and "mean over pairs" in differ.meta["averaging"]
    attn = span_attention(model, encode(ARSPair("x", "y", str(path)), "Hello"), image_span(model))
    assert attn.shape[:2] == (2, 4) and (attn.sum(-1) <= 1 + 1e-6).all() and (attn > 0).all()
    a, b = np.random.default_rng(0).uniform(size=(2, 3, 4, 5))
    expected = np.linalg.norm(a - b, axis=-1) / (0.5 * (np.linalg.norm(a, axis=-1) + np.linalg.norm(b, axis=-1)))
    assert np.allclose(ars_of(a, b), expected)
    saved = TruthScores.load(differ.save(tmp_path / "ars.json"))
    assert saved.meta["kind"] == "ars" and np.allclose(saved.values, differ.values)
    rve = build("rve", ars=str(tmp_path / "ars.json"), layers="1", k=2)
    assert rve.describe()["ars_heads"]["1"]["sensitive"] == [int(h) for h in np.argsort(-saved.values[1], kind="stable")[:2]]


def test_pair_file_and_setting_errors(tmp_path):
    img = tmp_path / "a.png"
    _image(2).save(img)
    good = tmp_path / "pairs.jsonl"
    good.write_text(json.dumps({"image": "a.png", "text": "a man holding", "text_swapped": "a man riding",
                                "group": "hold/ride"}) + "\n\n")
    (pair,) = read_pairs(good)
    assert pair.image == str(img.resolve()) and pair.group == "hold/ride"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x", "text_swapped": "y"}) + "\n{oops\n")
    from truthprobe_eval.probing.ars import PairFileError

    with pytest.raises(PairFileError, match="line 2: not valid JSON"):
        read_pairs(bad)
    bad.write_text(json.dumps({"image": "none.png", "text": "x", "text_swapped": "y"}) + "\n")
    with pytest.raises(PairFileError, match="line 1: expected an image file"):
        read_pairs(bad)
    bad.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(PairFileError, match="expected non-empty 'text' and 'text_swapped'"):
        read_pairs(bad)
    truth = TruthScores(np.full((2, 4), 0.6), meta={"model": "m"}).save(tmp_path / "truth.json")
    with pytest.raises(InterventionError, match="expected a score file with meta.kind 'ars'"):
        build("rve", ars=str(truth))
    with pytest.raises(InterventionError, match="needs an ARS score file"):
        build("rve")
    with pytest.raises(InterventionError, match="layers: expected N, A-B or a comma list"):
        build("rve", variant="global", layers="middle")
    ars = TruthScores(np.full((2, 4), 0.6), meta={"model": "m", "kind": "ars"}).save(tmp_path / "ars.json")
    with pytest.raises(InterventionError, match="layers: expected 0 to 1"):
        build("rve", ars=str(ars), layers="5")
    with pytest.raises(InterventionError, match=r"k: expected at most 2"):
        build("rve", ars=str(ars), layers="1", k=3)
    assert build("rve", variant="global", layers="0-1").describe()["variant"] == "whole_span"
    assert build("rve", control="random_heads", layers="1", k=1).heads(2, 4)[1][0] != []


def test_global_variant_and_random_heads_control(tiny, tmp_path):
    vlm = _load(tiny["llava"])
    model = vlm.model
    (inputs,) = _inputs(vlm, tmp_path)
    ars = _ars_file(vlm, tmp_path)
    rve = build("rve", ars=ars, layers="0-1", k=1, alpha=0.3)
    control = rve.control("random_heads", seed=4)
    assert control.settings["control"] == "random_heads" and control.heads(2, 4) != {}
    from truthprobe_eval.analysis.leaderboard import method_from_description

    assert method_from_description(rve.describe(), "tiny")[0] == "RVE"
    assert method_from_description(control.describe(), "tiny")[0] == "RVE, random heads"
    glob = build("rve", variant="global", layers="0-1", beta=1.0)
    assert method_from_description(glob.describe(), "tiny") == (WHOLE_SPAN_NAME, "layers=0-1, beta=1")
    with torch.no_grad():
        plain = model(**inputs).logits
        outs = {}
        for name, made in (("rve", rve), ("control", control), ("global", glob)):
            with made.attach(model):
                outs[name] = model(**inputs).logits
    assert all(not torch.allclose(v, plain) for v in outs.values())
    assert not torch.allclose(outs["global"], outs["rve"])
    with pytest.raises(InterventionError, match="span=image: expected an MLLM"):
        with build("rve", variant="global", layers="0").attach(load_model("smollm2-135m-instruct")[0]):
            pass


@pytest.mark.slow
def test_rve_runs_pope_and_chair_through_vlmevalkits_runner(tiny, tmp_path, shared_dir, monkeypatch):
    from tiny_models import write_pope_questions, write_synthetic_coco

    from truthprobe_eval.analysis import leaderboard as lb
    from truthprobe_eval.cli import main

    monkeypatch.setenv("LMUData", str(tmp_path))
    images = ["COCO_val2014_000000310196.jpg", "COCO_val2014_000000210789.jpg"]
    rows = {}
    for split in ("random", "popular", "adversarial"):
        with open(shared_dir / "data/pope/coco" / f"coco_pope_{split}.json") as fh:
            rows[split] = [json.loads(line) for line in fh if any(img in line for img in images)][:4]
    pope_dir = write_pope_questions(tmp_path / "pope", rows)
    ids = [int(name[-16:-4]) for name in images]
    image_dir, ann_dir = write_synthetic_coco(tmp_path / "coco", {ids[0]: ["person", "dog"], ids[1]: ["cat", "couch"]},
                                              {ids[0]: ["A man with a dog."], ids[1]: ["A cat on a sofa."]})
    models = {}
    for family in FAMILIES:
        sites = locate_heads(load_model(tiny[family])[0])
        ars = TruthScores(np.random.default_rng(0).uniform(size=sites.shape), meta={"model": family, "kind": "ars"})
        common = {"class": "TruthGatedVLM", "model_path": tiny[family], "max_new_tokens": 1, "method": "rve",
                  "ars": str(ars.save(tmp_path / f"{family}_ars.json")), "layers": "0-1", "k": 1, "alpha": 0.3,
                  "dataset_max_new_tokens": {"CHAIR_local": 8}}
        models[f"{family}_rve"] = common
    config = {"model": models, "data": {
        "POPE_local": {"class": "POPELocal", "dataset": "POPE_local", "question_dir": str(pope_dir),
                       "image_dir": str(image_dir)},
        "CHAIR_local": {"class": "CHAIRLocal", "dataset": "CHAIR_local", "image_dir": str(image_dir),
                        "annotations_dir": str(ann_dir), "n_images": 2, "cache_dir": str(tmp_path / "chair_cache")}}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    work = tmp_path / "out"
    assert main(["vlmeval", "--config", str(path), "--work-dir", str(work)]) == 0
    for name in models:
        status = json.loads((work / name / "status.json").read_text())["datasets"]
        assert {k: v.get("error_message") for k, v in status.items()} == {"POPE_local": None, "CHAIR_local": None}
        assert json.loads((work / name / f"{name}_POPE_local_pope.json").read_text())["metrics"]["overall"]["n"] > 0
        chair = json.loads((work / name / f"{name}_CHAIR_local_chair.json").read_text())
        assert chair["n_captions"] + sum(chair["skipped"].values()) == 2
        record = json.loads((work / name / "intervention.json").read_text())["intervention"]
        assert record["method"] == "rve" and record["layers"] == "0-1" and record["ars_heads"]["0"]["sensitive"]
    entries, _ = lb.collect([work])
    assert {e.method for e in entries} == {"RVE"}


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_vl", "idefics3"])
def test_the_image_span_comes_from_the_models_own_image_token(family, tmp_path):
    vlm = _load(save_tiny_mllm(family, tmp_path / family))
    (inputs,) = _inputs(vlm, tmp_path)
    token = image_token_id(vlm.model)
    span = image_span(vlm.model)(inputs["input_ids"])
    assert token == vlm.processor.tokenizer.convert_tokens_to_ids(
        {"qwen2_vl": "<|image_pad|>"}.get(family, "<image>"))
    assert 0 < int(span.sum()) < span.shape[1]  # the processor expanded the image into that many tokens
    with torch.no_grad(), build("rve", variant="global", layers="0", beta=1.0).attach(vlm.model):
        vlm.model(**inputs)
