"""Weight drift of the attention heads between two checkpoints of the same shape.

For every decoder layer: the Frobenius norm of the difference of the q, k, v and o projection weights, absolute
and relative to checkpoint A's norm, per layer and per head. Per query head h the slices are q's rows of h, o's
columns of h, and k's / v's rows of h's key-value head (grouped-query attention: query head h reads KV head
``h // (heads / kv_heads)``), so the heads sharing a KV head share its k/v drift. Biases are not counted.

Checkpoints are read one layer at a time from safetensors files (lazy ``safe_open``, sharded or not), so two
7B checkpoints need memory for about one layer each. An MLLM's language model is compared with its base LLM
by finding each checkpoint's decoder layers through the architecture table (``model.language_model.layers.3``
in one, ``model.layers.3`` in the other).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import ShapeMismatchError, TruthProbeError
from . import reports

PROJECTIONS = ("q", "k", "v", "o")


class CheckpointError(TruthProbeError, ValueError):
    """A checkpoint folder that cannot be read for a drift analysis."""


@dataclass(frozen=True)
class AttentionShape:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads


@dataclass
class Checkpoint:
    """A safetensors checkpoint opened lazily: tensor name -> file, and where its decoder layers live."""

    folder: Path
    model_type: str
    shape: AttentionShape
    layers_prefix: str  # e.g. "model.layers" or "language_model.model.layers"
    attention: str  # attribute of the attention module in a layer, e.g. "self_attn"
    out_proj: str
    files: dict[str, Path]  # tensor name -> safetensors file
    scheme: str = "separate"  # "separate" (q_proj/k_proj/v_proj), "fused" (qkv_proj), "conv1d" (GPT-2 c_attn)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)
    _handles: dict[Path, object] = field(default_factory=dict, repr=False)

    def tensor(self, name: str):
        from safetensors import safe_open

        file = self.files.get(name)
        if file is None:
            raise CheckpointError(f"{self.folder}: expected a tensor {name!r}, found none")
        if file not in self._handles:
            self._handles[file] = self._stack.enter_context(safe_open(str(file), framework="pt"))
        return self._handles[file].get_tensor(name).float()

    def close(self) -> None:
        self._stack.close()
        self._handles.clear()

    def layer_names(self, layer: int) -> dict[str, str]:
        from ..architectures import ARCHITECTURES

        base = f"{self.layers_prefix}.{layer}.{self.attention}"
        qkv = ARCHITECTURES[self.model_type].qkv
        names = dict(zip("qkv", qkv)) if len(qkv) == 3 else {"qkv": qkv[0]}
        return {k: f"{base}.{v}.weight" for k, v in names.items()} | {"o": f"{base}.{self.out_proj}.weight"}

    def attention_weights(self, layer: int) -> dict[str, "object"]:
        """q (H*D, hidden), k and v (KV*D, hidden), o (hidden, H*D) as float32 torch tensors."""
        s = self.shape
        names = self.layer_names(layer)
        o = self.tensor(names["o"])
        if self.scheme == "separate":
            w = {p: self.tensor(names[p]) for p in "qkv"}
        else:
            qkv = self.tensor(names["qkv"])
            if self.scheme == "conv1d":  # Conv1D stores (in, out)
                qkv, o = qkv.T, o.T
            sizes = [s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.num_kv_heads * s.head_dim]
            if qkv.shape[0] != sum(sizes):
                raise CheckpointError(f"{self.folder}: {names['qkv']} has {qkv.shape[0]} output rows, expected "
                                      f"{sum(sizes)} (q {sizes[0]} + k {sizes[1]} + v {sizes[2]})")
            w = dict(zip("qkv", qkv.split(sizes, dim=0)))
        w["o"] = o
        expected = {"q": (s.num_heads * s.head_dim, None), "k": (s.num_kv_heads * s.head_dim, None),
                    "v": (s.num_kv_heads * s.head_dim, None), "o": (None, s.num_heads * s.head_dim)}
        for p, (rows, cols) in expected.items():
            shape = tuple(w[p].shape)
            if (rows is not None and shape[0] != rows) or (cols is not None and shape[1] != cols):
                raise CheckpointError(f"{self.folder}: layer {layer} {p} projection has shape {shape}, expected "
                                      f"{rows or '*'} x {cols or '*'} for {s.num_heads} heads ({s.num_kv_heads} KV) "
                                      f"of dim {s.head_dim}")
        return w


def _tensor_files(folder: Path) -> dict[str, Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        return {name: folder / file for name, file in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:10]) or "nothing"
        raise CheckpointError(f"{folder}: expected model.safetensors (or a sharded model.safetensors.index.json), "
                              f"found {found}; convert .bin checkpoints with save_pretrained(safe_serialization=True)")
    from safetensors import safe_open

    names = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            names.update({k: f for k in fh.keys()})
    return names


def _attention_shape(folder: Path):
    from transformers import AutoConfig

    from ..architectures import text_config

    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: expected a Hugging Face config.json, could not read it ({exc})") from None
    tcfg = text_config(config)
    heads = int(tcfg.num_attention_heads)
    kv = int(getattr(tcfg, "num_key_value_heads", None) or heads)
    hidden = int(tcfg.hidden_size)
    head_dim = int(getattr(tcfg, "head_dim", None) or hidden // heads)
    layers = int(tcfg.num_hidden_layers)
    if heads % kv:
        raise CheckpointError(f"{folder}: {heads} attention heads is not a multiple of {kv} key-value heads")
    return config.model_type, AttentionShape(layers, heads, kv, head_dim, hidden)


def open_checkpoint(name_or_path: str) -> Checkpoint:
    """A local checkpoint folder (or an alias such as ``smollm2-135m-instruct``) opened for streaming."""
    from ..architectures import ARCHITECTURES
    from ..models import resolve_model_path

    folder = Path(resolve_model_path(name_or_path))
    if not folder.is_dir():
        raise CheckpointError(f"expected a local checkpoint folder for {name_or_path!r}, found {folder} missing "
                              "(drift reads safetensors files from disk; download the model first)")
    model_type, shape = _attention_shape(folder)
    files = _tensor_files(folder)
    layout = ARCHITECTURES.get(model_type)
    if layout is None:
        raise CheckpointError(f"{folder}: no architecture entry for model_type {model_type!r}; known: "
                              f"{', '.join(sorted(ARCHITECTURES))} (add one line to truthprobe_eval/architectures.py)")
    attention, out_proj = layout.attention, layout.out_proj
    prefix = next((c for c in layout.layers if any(n.startswith(f"{c}.0.{attention}.") for n in files)), None)
    if prefix is None:
        found = sorted({n.split(f".0.{attention}.")[0] for n in files if f".0.{attention}." in n})
        raise CheckpointError(f"{folder} (model_type {model_type!r}): expected decoder layers at one of "
                              f"{list(layout.layers)}, found attention tensors under {found or 'no prefix'}")
    base = f"{prefix}.0.{attention}"
    expected = [f"{base}.{name}.weight" for name in layout.qkv]
    if not all(name in files for name in expected):
        present = sorted(n for n in files if n.startswith(base + "."))
        raise CheckpointError(f"{folder}: expected {', '.join(expected)} (the architecture table's q/k/v weights for "
                              f"{model_type!r}), found {present}")
    scheme = layout.qkv_scheme
    return Checkpoint(folder, model_type, shape, prefix, attention, out_proj, files, scheme)


# ---- drift ---------------------------------------------------------------------------------------------
@dataclass
class DriftResult:
    a: str
    b: str
    shape: AttentionShape
    a_prefix: str
    b_prefix: str
    layer_abs: np.ndarray  # (L, 4) per projection q, k, v, o: ||W_B - W_A||_F
    layer_ref: np.ndarray  # (L, 4): ||W_A||_F
    head_abs: np.ndarray  # (L, H, 4): slices of query head h (k, v: its KV head)
    head_ref: np.ndarray  # (L, H, 4)

    @staticmethod
    def _combine(diff: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        absolute = np.sqrt((diff**2).sum(axis=-1))
        reference = np.sqrt((ref**2).sum(axis=-1))
        with np.errstate(invalid="ignore", divide="ignore"):
            return absolute, np.where(reference > 0, absolute / reference, np.nan)

    @property
    def layer_total(self) -> tuple[np.ndarray, np.ndarray]:
        """(absolute, relative) drift of each layer's q, k, v, o weights together: (L,), (L,)."""
        return self._combine(self.layer_abs, self.layer_ref)

    @property
    def head_total(self) -> tuple[np.ndarray, np.ndarray]:
        """(absolute, relative) drift per query head: (L, H), (L, H)."""
        return self._combine(self.head_abs, self.head_ref)

    @property
    def overall(self) -> tuple[float, float]:
        """(absolute, relative) drift of all attention weights of all layers."""
        absolute = float(np.sqrt((self.layer_abs**2).sum()))
        reference = float(np.sqrt((self.layer_ref**2).sum()))
        return absolute, absolute / reference if reference else math.nan

    def summary(self) -> dict:
        la, lr = self.layer_total
        ha, hr = self.head_total
        oa, orel = self.overall
        return {
            "overall_abs": oa, "overall_rel": orel,
            "mean_layer_abs": float(la.mean()), "mean_layer_rel": float(np.nanmean(lr)),
            "mean_head_abs": float(ha.mean()), "mean_head_rel": float(np.nanmean(hr)),
            "max_head_rel": float(np.nanmax(hr)),
            "max_head": [int(x) for x in np.unravel_index(int(np.nanargmax(hr)), hr.shape)],
        }


def _check_same_shape(a: Checkpoint, b: Checkpoint) -> None:
    if a.shape != b.shape:
        raise ShapeMismatchError(
            f"checkpoints differ in attention shape: {a.folder} has {a.shape}, {b.folder} has {b.shape}; "
            "drift compares checkpoints of one lineage with the same layers, heads and head size"
        )


def _fro(x) -> float:
    return float((x.double() ** 2).sum().sqrt())


def _per_head(w, heads: int, dim: int, axis: int) -> np.ndarray:
    """Frobenius norm of each head's slice: rows (axis 0) or columns (axis 1) in blocks of ``dim``."""
    t = w.double()
    t = t.reshape(heads, dim, -1) if axis == 0 else t.reshape(t.shape[0], heads, dim).transpose(0, 1)
    return (t**2).sum(dim=(1, 2)).sqrt().numpy()


def layer_drift(a: Checkpoint, b: Checkpoint, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(abs (4,), ref (4,), head abs (H, 4), head ref (H, 4)) for one layer."""
    s = a.shape
    wa, wb = a.attention_weights(layer), b.attention_weights(layer)
    kv_of = np.arange(s.num_heads) // s.group
    abs_, ref = np.zeros(4), np.zeros(4)
    head_abs, head_ref = np.zeros((s.num_heads, 4)), np.zeros((s.num_heads, 4))
    for j, p in enumerate(PROJECTIONS):
        if wa[p].shape != wb[p].shape:
            raise ShapeMismatchError(f"layer {layer} {p} projection: {a.folder} has {tuple(wa[p].shape)}, "
                                     f"{b.folder} has {tuple(wb[p].shape)}")
        diff = wb[p] - wa[p]
        abs_[j], ref[j] = _fro(diff), _fro(wa[p])
        if p == "q":
            head_abs[:, j], head_ref[:, j] = _per_head(diff, s.num_heads, s.head_dim, 0), _per_head(wa[p], s.num_heads, s.head_dim, 0)
        elif p in "kv":
            head_abs[:, j] = _per_head(diff, s.num_kv_heads, s.head_dim, 0)[kv_of]
            head_ref[:, j] = _per_head(wa[p], s.num_kv_heads, s.head_dim, 0)[kv_of]
        else:
            head_abs[:, j], head_ref[:, j] = _per_head(diff, s.num_heads, s.head_dim, 1), _per_head(wa[p], s.num_heads, s.head_dim, 1)
    return abs_, ref, head_abs, head_ref


def weight_drift(model_a: str, model_b: str, progress: bool = True) -> DriftResult:
    """Attention-weight drift from checkpoint A to checkpoint B, streamed layer by layer."""
    from tqdm.auto import tqdm

    a, b = open_checkpoint(str(model_a)), open_checkpoint(str(model_b))
    try:
        _check_same_shape(a, b)
        s = a.shape
        layer_abs, layer_ref = np.zeros((s.num_layers, 4)), np.zeros((s.num_layers, 4))
        head_abs, head_ref = np.zeros((s.num_layers, s.num_heads, 4)), np.zeros((s.num_layers, s.num_heads, 4))
        for layer in tqdm(range(s.num_layers), desc="drift", unit="layer", disable=not progress):
            layer_abs[layer], layer_ref[layer], head_abs[layer], head_ref[layer] = layer_drift(a, b, layer)
    finally:
        a.close()
        b.close()
    return DriftResult(str(model_a), str(model_b), s, a.layers_prefix, b.layers_prefix, layer_abs, layer_ref, head_abs, head_ref)


def iter_layers(result: DriftResult) -> Iterator[list]:
    la, lr = result.layer_total
    for layer in range(result.shape.num_layers):
        rel = np.where(result.layer_ref[layer] > 0, result.layer_abs[layer] / np.maximum(result.layer_ref[layer], 1e-300), np.nan)
        yield [layer, la[layer], lr[layer], *result.layer_abs[layer], *rel]


LAYER_HEADERS = ["layer", "abs", "rel", *[f"{p}_abs" for p in PROJECTIONS], *[f"{p}_rel" for p in PROJECTIONS]]
HEAD_HEADERS = ["layer", "head", "kv_head", "abs", "rel", *[f"{p}_abs" for p in PROJECTIONS]]


def head_rows(result: DriftResult) -> list[list]:
    ha, hr = result.head_total
    s = result.shape
    return [[l, h, h // s.group, ha[l, h], hr[l, h], *result.head_abs[l, h]]
            for l in range(s.num_layers) for h in range(s.num_heads)]


def to_markdown(result: DriftResult, top: int = 10) -> str:
    s, summ = result.shape, result.summary()
    hr = result.head_total[1]
    order = np.argsort(-hr, axis=None)[:top]
    out = [
        "# Attention weight drift", "",
        f"- A: `{result.a}` (layers at `{result.a_prefix}`)",
        f"- B: `{result.b}` (layers at `{result.b_prefix}`)",
        f"- shape: {s.num_layers} layers x {s.num_heads} heads ({s.num_kv_heads} key-value heads), head_dim {s.head_dim}",
        "",
        reports.markdown_table(["measure", "absolute", "relative to A"], [
            ["all attention weights", summ["overall_abs"], summ["overall_rel"]],
            ["mean over layers", summ["mean_layer_abs"], summ["mean_layer_rel"]],
            ["mean over heads", summ["mean_head_abs"], summ["mean_head_rel"]],
        ], digits=5),
        "", "## Per layer (q, k, v, o weights; relative = ||B - A|| / ||A||)", "",
        reports.markdown_table(["layer", "abs", "rel", "q rel", "k rel", "v rel", "o rel"],
                               ([r[0], r[1], r[2], *r[7:]] for r in iter_layers(result)), digits=5),
        "", f"## Most drifted heads (top {len(order)})", "",
        reports.markdown_table(["layer", "head", "kv head", "abs", "rel"],
                               ([int(i // s.num_heads), int(i % s.num_heads), int(i % s.num_heads) // s.group,
                                 result.head_total[0].ravel()[i], hr.ravel()[i]] for i in order), digits=5),
    ]
    return "\n".join(out) + "\n"


def plot_drift(result: DriftResult, path: "str | os.PathLike") -> Path:
    """Relative drift per layer (total and per projection) beside a layers x heads heatmap."""
    plt = reports.pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained",
                                  gridspec_kw={"width_ratios": [1.6, 1]})
    layers = np.arange(result.shape.num_layers)
    rel = np.where(result.layer_ref > 0, result.layer_abs / np.maximum(result.layer_ref, 1e-300), np.nan)
    ax.bar(layers, result.layer_total[1], color="0.8", label="q, k, v, o together")
    for j, p in enumerate(PROJECTIONS):
        ax.plot(layers, rel[:, j], marker=".", label=p)
    ax.set_xlabel("layer")
    ax.set_ylabel("relative drift ||B - A|| / ||A||")
    ax.set_title("Attention weight drift per layer", fontsize=10)
    ax.legend(fontsize=8)
    im = ax2.imshow(result.head_total[1], aspect="auto", origin="lower", cmap="magma")
    ax2.set_xlabel("head")
    ax2.set_ylabel("layer")
    ax2.set_title("relative drift per head", fontsize=10)
    fig.colorbar(im, ax=ax2)
    from matplotlib.ticker import MaxNLocator

    for axis in (ax.xaxis, ax2.xaxis, ax2.yaxis):
        axis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"A = {Path(result.a).name}   B = {Path(result.b).name}", fontsize=9)
    return reports.save_figure(fig, path)


def write_outputs(result: DriftResult, out_dir: "str | os.PathLike", plots: bool = True) -> dict[str, Path]:
    out = Path(out_dir)
    written = {
        "markdown": reports.write_text(out / "drift.md", to_markdown(result)),
        "layers": reports.write_csv(out / "drift_layers.csv", LAYER_HEADERS, iter_layers(result)),
        "heads": reports.write_csv(out / "drift_heads.csv", HEAD_HEADERS, head_rows(result)),
        "summary": reports.write_text(out / "drift_summary.json", json.dumps(result.summary(), indent=2)),
    }
    if plots:
        written["plot"] = plot_drift(result, out / "drift.png")
    return written
