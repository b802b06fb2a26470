"""The activation cache: shard-by-shard atomic writes, resume after Ctrl-C or a killed process, equal results."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from truthprobe_eval.probing.cache import ActivationCacheError, load_activations, load_examples_from_cache
from truthprobe_eval.probing.data import ProbeExample, labels_and_groups
from truthprobe_eval.probing.pipeline import extract_with_cache
from truthprobe_eval.probing.prompts import PromptEncoder

REPO = Path(__file__).resolve().parents[1]

# short prompts keep each forward pass cheap; 10 examples in shards of 3 -> 4 shards (the last one short)
EXAMPLES = [
    ProbeExample(f"Fact {i}: the box holds {i} red balls.", "How many red balls?", str(i if i % 2 == 0 else i + 7), int(i % 2 == 0), i // 2)
    for i in range(10)
]
SHARD = 3


def _extract(model, tok, cache_dir, on_shard=None, **kw):
    return extract_with_cache(model, PromptEncoder(tok, "text"), EXAMPLES, batch_size=2, cache_dir=cache_dir,
                              shard_size=SHARD, progress=False, on_shard=on_shard, **kw)


@pytest.fixture(scope="module")
def uninterrupted(smollm2, tmp_path_factory):
    model, tok = smollm2
    return _extract(model, tok, tmp_path_factory.mktemp("full"))


def test_cache_layout_and_load_activations(uninterrupted):
    X, folder = uninterrupted
    assert X.shape == (10, 30, 9, 64)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_shards"] == 4 and manifest["shape"] == [30, 9, 64]
    assert sorted(p.name for p in folder.glob("shard_*.npy")) == [f"shard_0000{i}.npy" for i in range(4)]
    assert not list(folder.glob("*.tmp"))
    X2, y, groups, meta = load_activations(folder)
    assert np.array_equal(X2, X)
    y_ref, g_ref = labels_and_groups(EXAMPLES)
    assert np.array_equal(y, y_ref) and np.array_equal(groups, g_ref)
    assert meta["num_layers"] == 30 and meta["num_heads"] == 9 and meta["head_dim"] == 64
    assert meta["prompt_format"] == "text" and meta["n_samples"] == 10 and meta["cache_dir"] == str(folder)
    # the root that holds exactly one cache works too, and the examples come back in order
    assert np.array_equal(load_activations(folder.parent)[0], X)
    assert load_examples_from_cache(folder) == EXAMPLES


def test_rerun_reuses_the_cache_without_a_forward_pass(smollm2, uninterrupted):
    model, tok = smollm2
    X, folder = uninterrupted
    written = []
    X_again, folder_again = _extract(model, tok, folder.parent, on_shard=lambda i, n: written.append(i))
    assert folder_again == folder and written == [] and np.array_equal(X_again, X)


def test_other_settings_get_their_own_cache(smollm2, uninterrupted):
    model, tok = smollm2
    X, folder = uninterrupted
    X16, folder16 = _extract(model, tok, folder.parent, float16=True)
    assert folder16 != folder and X16.dtype == np.float16
    with pytest.raises(ActivationCacheError, match="holds 2 activation caches"):
        load_activations(folder.parent)


def test_resume_after_ctrl_c_equals_uninterrupted(smollm2, uninterrupted, tmp_path):
    model, tok = smollm2
    X_full, _ = uninterrupted

    def interrupt_after_second_shard(i, n):
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _extract(model, tok, tmp_path, on_shard=interrupt_after_second_shard)
    (folder,) = [p.parent for p in tmp_path.glob("*/manifest.json")]
    assert sorted(p.name for p in folder.glob("shard_*.npy")) == ["shard_00000.npy", "shard_00001.npy"]
    with pytest.raises(ActivationCacheError, match="incomplete"):
        load_activations(folder)
    written = []
    X, _ = _extract(model, tok, tmp_path, on_shard=lambda i, n: written.append(i))
    assert written == [2, 3]  # only the missing shards were computed
    assert np.array_equal(X, X_full)


@pytest.mark.slow
def test_resume_after_killed_process_equals_uninterrupted(uninterrupted, tmp_path):
    X_full, _ = uninterrupted
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import torch
        torch.set_num_threads(1)
        from truthprobe_eval import load_model
        from test_probing_cache import _extract
        model, tok = load_model("smollm2-135m-instruct")
        kill_at = int(sys.argv[1])
        def on_shard(i, n):
            print("shard", i, flush=True)
            if i == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        _extract(model, tok, {str(tmp_path)!r}, on_shard=on_shard)
        print("done", flush=True)
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    killed = subprocess.run([sys.executable, "-c", script, "0"], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert killed.stdout.split() == ["shard", "0"]
    resumed = subprocess.run([sys.executable, "-c", script, "-1"], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.split() == ["shard", "1", "shard", "2", "shard", "3", "done"]  # shard 0 came from the cache
    X, y, groups, meta = load_activations(tmp_path)
    assert np.array_equal(X, X_full)


def test_damaged_shard_is_recomputed(smollm2, uninterrupted, tmp_path):
    model, tok = smollm2
    X_full, full_folder = uninterrupted
    folder = tmp_path / full_folder.name
    shutil.copytree(full_folder, folder)  # a finished cache, then one shard damaged
    (folder / "shard_00002.npy").write_bytes(b"not an array")
    written = []
    with pytest.warns(UserWarning, match=r"shard_00002\.npy does not match its checksum.*recomputing it"):
        X, _ = _extract(model, tok, tmp_path, on_shard=lambda i, n: written.append(i))
    assert written == [2] and np.array_equal(X, X_full)


def test_load_activations_errors(tmp_path):
    with pytest.raises(ActivationCacheError, match="found none"):
        load_activations(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "something-else", "format_version": 1}')
    with pytest.raises(ActivationCacheError, match="expected format 'truthprobe-activations'"):
        load_activations(tmp_path)


@pytest.mark.slow
def test_no_cache_equals_cache_bitwise(smollm2, uninterrupted):
    """Same inputs, same seed: the same activations bit for bit with and without the cache (same shard batches)."""
    model, tok = smollm2
    X, folder = _extract(model, tok, None)
    assert folder is None
    assert X.dtype == uninterrupted[0].dtype and np.array_equal(X, uninterrupted[0])


@pytest.mark.slow
def test_no_cache_and_cached_probing_give_identical_scores(smollm2, tmp_path):
    """The whole probing path on real HaluEval rows (several shards of length-sorted batches): equal Truth Scores."""
    from truthprobe_eval.probing.data import halueval_examples
    from truthprobe_eval.probing.pipeline import probe_model

    model, tok = smollm2
    examples = halueval_examples(None, offset=0, n=40)
    kwargs = dict(n_folds=3, batch_size=8, shard_size=32, progress=False)
    cached = probe_model(model, tok, examples, cache_dir=tmp_path / "cache", **kwargs)
    plain = probe_model(model, tok, examples, cache_dir=None, **kwargs)
    assert np.array_equal(cached.values, plain.values)
