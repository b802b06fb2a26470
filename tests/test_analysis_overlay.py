"""truthprobe overlay on a tiny random LLaVA built from a config, saved with a processor, loaded via load_model."""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
from tiny_models import save_tiny_mllm

from truthprobe_eval.experiments import overlay
from truthprobe_eval.scores import TruthScores

LAYERS, HEADS = 3, 4


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory, smollm2):
    return save_tiny_mllm("llava", tmp_path_factory.mktemp("llava"), layers=LAYERS, heads=HEADS, tokenizer=smollm2[1],
                          yes_no_boost=1.0)


@pytest.fixture(scope="module")
def loaded(tiny_llava):
    from truthprobe_eval import load_model

    return load_model(str(tiny_llava), attn_implementation="eager")


@pytest.fixture()
def image():
    from PIL import Image

    img = np.zeros((40, 64, 3), dtype=np.uint8)  # wider than tall: the CLIP processor crops the centre 40 x 40
    img[:20, 12:32] = (255, 0, 0)
    img[20:, 32:52] = (0, 0, 255)
    return Image.fromarray(img)


@pytest.fixture()
def scores():
    values = np.arange(LAYERS * HEADS, dtype=float).reshape(LAYERS, HEADS) / 20 + 0.4
    return TruthScores(values, meta={"model": "tiny-llava"})


def test_overlay_maps(loaded, image, scores):
    model, processor = loaded
    res = overlay.attention_overlay(model, processor, image, scores, "What is the red object?", k=2)
    assert res.grid == (4, 4)  # 32 px / 8 px patches
    assert res.maps_query.shape == (LAYERS, HEADS, 4, 4)
    np.testing.assert_allclose(res.maps_query.sum(axis=(2, 3)), 1.0, atol=1e-5)  # shares over the image tokens
    assert np.all((res.image_mass_query > 0) & (res.image_mass_query <= 1 + 1e-6))
    # the relative map is a difference of two distributions: it sums to zero
    for _, l, h, _ in res.heads:
        assert res.relative(l, h).sum() == pytest.approx(0.0, abs=1e-5)
    # top-2 by score are the last two heads of the last layer; bottom-2 the first two of the first layer
    assert [(g, l, h) for g, l, h, _ in res.heads] == [("top", 2, 3), ("top", 2, 2), ("bottom", 0, 0), ("bottom", 0, 1)]
    assert res.view.size == (40, 40)  # the centre crop the tokens cover
    assert np.abs(res.maps_query - res.maps_generic).max() > 1e-4  # a different question moves the attention


def test_same_query_gives_zero_relative_map(loaded, image, scores):
    model, processor = loaded
    res = overlay.attention_overlay(model, processor, image, scores, overlay.GENERIC_QUERY, k=1)
    for _, l, h, _ in res.heads:
        np.testing.assert_allclose(res.relative(l, h), 0.0, atol=1e-7)
    ratio = overlay.attention_overlay(model, processor, image, scores, overlay.GENERIC_QUERY, k=1, mode="ratio")
    np.testing.assert_allclose(ratio.relative(2, 3), 1.0, rtol=1e-5)


def test_scores_of_another_shape_are_refused(loaded, image):
    from truthprobe_eval.errors import ShapeMismatchError

    model, processor = loaded
    with pytest.raises(ShapeMismatchError, match=r"\(30, 9\)"):
        overlay.attention_overlay(model, processor, image, TruthScores(np.random.rand(30, 9)), "q?")


@pytest.mark.slow
def test_cli_overlay(tiny_llava, image, scores, tmp_path):
    image.save(tmp_path / "img.png")
    scores.save(tmp_path / "scores.json")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "truthprobe_eval", "overlay", "--model", str(tiny_llava), "--scores",
                           str(tmp_path / "scores.json"), "--image", str(tmp_path / "img.png"), "--question",
                           "Where is the blue square?", "--k", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "overlay_heads.csv")))
    assert [r["group"] for r in rows] == ["top"] * 3 + ["bottom"] * 3
    from PIL import Image

    with Image.open(out / "overlay.png") as im:
        assert im.format == "PNG" and im.size[0] > im.size[1]
    bad = subprocess.run([sys.executable, "-m", "truthprobe_eval", "overlay", "--model", str(tiny_llava), "--scores",
                          str(tmp_path / "scores.json"), "--image", str(tmp_path / "missing.png"), "--question", "q",
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "image not found" in bad.stderr


@pytest.mark.parametrize("family, grid", [("qwen2_vl", (1, 2)), ("llava_next", (4, 4))])
def test_other_mllm_layouts(family, grid, tmp_path):
    """Qwen2-VL's merged image_grid_thw grid; LLaVA-NeXT's base grid (its first 4 x 4 image tokens) of 32 px / 8 px."""
    from PIL import Image
    from tiny_models import save_tiny_mllm

    from truthprobe_eval import load_model

    model, processor = load_model(save_tiny_mllm(family, tmp_path / family), attn_implementation="eager")
    img = Image.fromarray((np.random.default_rng(0).random((56, 80, 3)) * 255).astype(np.uint8))
    n_layers = model.config.get_text_config().num_hidden_layers
    res = overlay.attention_overlay(model, processor, img, TruthScores(np.random.default_rng(1).random((n_layers, 4))),
                                    "Is there a cat?", k=2)
    assert res.grid == grid
    np.testing.assert_allclose(res.maps_query.sum(axis=(2, 3)), 1.0, atol=1e-5)
    overlay.write_outputs(res, tmp_path / "out")
    assert (tmp_path / "out" / "overlay.png").is_file()
