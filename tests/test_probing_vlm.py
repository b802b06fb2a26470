"""A tiny random-initialized LLaVA (CLIP vision tower + Llama text model, SmolLM2's tokenizer) probes end to end
under the three published conditions: the real image, a black image of its size, and text only."""
from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_models import save_tiny_mllm
from truthprobe_eval.probing import load_activations
from truthprobe_eval.probing.data import ProbeExample, jsonl_examples
from truthprobe_eval.probing.extract import extract_activations
from truthprobe_eval.probing.prompts import PromptEncoder

from truthprobe_eval import TruthScores, load_model
from truthprobe_eval.cli import main

# a LLaVA-1.5 style template, written for this test: USER: <image>\n{text} ASSISTANT: {answer}</s>
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}"
    "{{ item['text'] }}{% endif %}{% endfor %}{% if message['role'] == 'user' %} {% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
N_GROUPS = 6


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory, smollm2):
    """Checkpoint folder of a random LLaVA whose processor is SmolLM2's tokenizer + a CLIP image processor."""
    return save_tiny_mllm("llava", tmp_path_factory.mktemp("tiny-llava") / "model", layers=3, tokenizer=smollm2[1],
                          chat_template=CHAT_TEMPLATE, yes_no_boost=1.0)


@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    """Synthetic images of different sizes (one per question) and a generic JSONL that points at them."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for g in range(N_GROUPS):
        name = f"scene_{g}.png"
        Image.fromarray(rng.integers(0, 256, size=(24 + 8 * g, 40, 3), dtype=np.uint8)).save(images / name)
        for label, answer in ((1, f"{g + 2} red squares"), (0, f"{g + 5} blue circles")):
            rows.append({"context": "", "question": "What is in the picture?", "answer": answer, "label": label,
                         "image": name, "group": f"scene {g}"})
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return data, images


@pytest.mark.parametrize("condition", ["image", "black", "text"])
def test_tiny_vlm_probes_end_to_end(tiny_vlm, image_data, tmp_path, condition):
    data, images = image_data
    out = tmp_path / f"vlm-{condition}.json"
    rc = main(["probe", "--model", tiny_vlm, "--data", str(data), "--images", str(images), "--condition", condition,
               "--folds", "3", "--batch-size", "4", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert rc == 0
    scores = TruthScores.load(out)
    assert scores.shape == (3, 4) and np.all((scores.values >= 0) & (scores.values <= 1))
    assert scores.meta["condition"] == condition and scores.meta["prompt_format"] == "chat"
    assert scores.meta["architecture"] == "llava" and scores.meta["n_samples"] == scores.meta["n_rows"] == 2 * N_GROUPS
    assert scores.probe_weights.shape == (3, 4, 8)
    assert out.with_suffix(".png").is_file()
    X, y, groups, meta = load_activations(scores.meta["activation_cache"])
    assert X.shape == (2 * N_GROUPS, 3, 4, 8) and np.isfinite(X).all()
    assert groups.tolist() == [i // 2 for i in range(2 * N_GROUPS)]


def test_conditions_differ_and_images_reach_the_language_model(tiny_vlm, image_data):
    data, images = image_data
    model, processor = load_model(tiny_vlm)
    examples = jsonl_examples(data)
    acts = {c: extract_activations(model, PromptEncoder(processor, "chat", c, images), examples, batch_size=4,
                                   progress=False) for c in ("image", "black", "text")}
    assert not np.allclose(acts["image"], acts["black"]) and not np.allclose(acts["image"], acts["text"])
    # the same text with two different images: the image condition tells them apart, black images cannot
    twins = [ProbeExample("", "What is in the picture?", "shapes", 1, 0, "scene_0.png"),
             ProbeExample("", "What is in the picture?", "shapes", 1, 1, "scene_1.png")]
    image = extract_activations(model, PromptEncoder(processor, "chat", "image", images), twins, progress=False)
    black = extract_activations(model, PromptEncoder(processor, "chat", "black", images), twins, progress=False)
    assert not np.allclose(image[0], image[1])
    assert np.allclose(black[0], black[1], atol=1e-6)
    # batching and padding side do not change what is read
    for side in ("left", "right"):
        one = extract_activations(model, PromptEncoder(processor, "chat", "image", images, side), examples, batch_size=1, progress=False)
        assert np.abs(one - acts["image"]).max() < 1e-4 * np.abs(one).max()


def test_image_that_does_not_open_is_a_clear_error(tiny_vlm, image_data, tmp_path, capsys):
    data, images = image_data
    bad_images = tmp_path / "images"
    bad_images.mkdir()
    for p in images.iterdir():
        (bad_images / p.name).write_bytes(p.read_bytes())
    (bad_images / "scene_3.png").write_bytes(b"this is not a png")
    out = tmp_path / "vlm.json"
    rc = main(["probe", "--model", tiny_vlm, "--data", str(data), "--images", str(bad_images), "--condition", "image",
               "--folds", "3", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "truthprobe probe: error: image " in err and "scene_3.png: expected a readable image file" in err
    assert not out.exists() and not out.with_suffix(".png").exists() and not (tmp_path / "cache").exists()
    # the same file is fine under the text condition, which uses no image
    assert main(["probe", "--model", tiny_vlm, "--data", str(data), "--images", str(bad_images), "--condition", "text",
                 "--folds", "3", "--out", str(out), "--no-cache", "--quiet", "--no-plot"]) == 0
