"""Where each architecture keeps the components interventions read and edit: one declarative table.

An entry names, for a ``config.model_type``, the candidate dotted paths (from the top-level model) to the
ModuleList of decoder layers (the first that exists wins, which covers transformers versions that moved
the language model inside an MLLM), and, inside a layer, the attention module, its q/k/v projection weights
and output projection, the MLP and the MLP's output projection. Head counts come from the (text) config.
To support a new model, add one line to ``ARCHITECTURES``.

The sites an intervention can use (``SITES``), each a module per decoder layer and which side of it:

- ``o_proj_input``: the per-head outputs, (B, T, H * D) before the attention output projection (probes read it);
- ``o_proj_output``: the attention block's output after the output projection (TruthProbe's published site);
- ``mlp_activation``: the MLP's intermediate activations, the input of ``down_proj`` / GPT-2's ``c_proj``;
- ``attention``: the attention module itself (for edits of the attention pattern, ``attention_edit``).

MLLM entries also name the config attribute of the image placeholder token (``image_token``), from which
attention edits find the image-token span.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from torch import nn

from .errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class HeadLayout:
    layers: tuple[str, ...]  # candidate dotted paths to the decoder-layer ModuleList
    attention: str = "self_attn"  # attribute of a decoder layer
    out_proj: str = "o_proj"  # attribute of the attention module
    conv1d: bool = False  # GPT-2's fused Conv1D: weight is (in_features, out_features)
    qkv: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")  # attention attributes: separate q, k, v or one fused
    mlp: str = "mlp"  # attribute of a decoder layer
    mlp_out: str = "down_proj"  # attribute of the MLP: its output projection (input = the MLP activation)
    image_token: tuple[str, ...] = ()  # MLLMs: config attributes holding the image placeholder token id

    @property
    def qkv_scheme(self) -> str:
        """How the checkpoint stores q, k, v: ``separate``, ``fused`` (one qkv_proj) or ``conv1d`` (GPT-2 c_attn)."""
        if len(self.qkv) == 3:
            return "separate"
        return "conv1d" if self.conv1d else "fused"


@dataclass(frozen=True)
class Site:
    """A place in every decoder layer: the module (``component`` of ``HeadSites``) and which side of it is read."""

    component: str  # "out_projs", "mlp_outs" or "attentions"
    side: str  # "input", "output" or "module"


SITES: dict[str, Site] = {
    "o_proj_input": Site("out_projs", "input"),
    "o_proj_output": Site("out_projs", "output"),
    "mlp_activation": Site("mlp_outs", "input"),
    "attention": Site("attentions", "module"),
}


_DECODER = HeadLayout(("model.layers",))
# MLLMs: the language model moved from ``language_model.model`` to ``model.language_model`` in transformers 4.52.
_LLAVA = HeadLayout(("model.language_model.layers", "language_model.model.layers", "language_model.layers"),
                    image_token=("image_token_id", "image_token_index"))
_QWEN_VL = HeadLayout(("model.language_model.layers", "model.layers", "language_model.layers"),
                      image_token=("image_token_id",))
_IDEFICS = HeadLayout(("model.text_model.layers", "text_model.layers"), image_token=("image_token_id",))

ARCHITECTURES: dict[str, HeadLayout] = {
    # language models
    "llama": _DECODER,
    "mistral": _DECODER,
    "qwen2": _DECODER,
    "qwen3": _DECODER,
    "gemma": _DECODER,
    "gemma2": _DECODER,
    "gemma3_text": _DECODER,
    "phi3": HeadLayout(("model.layers",), qkv=("qkv_proj",)),
    "gpt2": HeadLayout(("transformer.h", "h"), attention="attn", out_proj="c_proj", conv1d=True, qkv=("c_attn",),
                       mlp_out="c_proj"),
    # multimodal models: the gate applies to the language model only
    "llava": _LLAVA,
    "llava_next": _LLAVA,
    "gemma3": HeadLayout(("model.language_model.layers", "language_model.model.layers", "model.layers"),
                         image_token=("image_token_id", "image_token_index")),
    "qwen2_vl": _QWEN_VL,
    "qwen2_5_vl": _QWEN_VL,
    "idefics3": _IDEFICS,
    "smolvlm": _IDEFICS,
}


@dataclass(frozen=True)
class HeadSites:
    """The located attention heads of one model."""

    model_type: str
    layout: HeadLayout
    out_projs: tuple[nn.Module, ...]  # one output projection per decoder layer
    layers_path: str
    num_heads: int
    head_dim: int
    hidden_size: int  # output features of the projection
    attentions: tuple[nn.Module, ...] = ()  # one attention module per decoder layer
    mlp_outs: tuple[nn.Module, ...] = ()  # one MLP output projection per decoder layer

    def modules(self, site: str) -> tuple[nn.Module, ...]:
        """The per-layer modules of one of ``SITES``."""
        if site not in SITES:
            raise UnsupportedArchitectureError(f"site: expected one of {', '.join(SITES)}, found {site!r}")
        modules = getattr(self, SITES[site].component)
        if len(modules) != self.num_layers:
            raise UnsupportedArchitectureError(f"{self.model_type}: site {site!r} not found in every decoder layer "
                                               f"(found {len(modules)} of {self.num_layers})")
        return modules

    @property
    def mlp_width(self) -> int:
        """Input features of the MLP output projection (the number of MLP neurons per layer)."""
        w = self.mlp_outs[0].weight
        return int(w.shape[0] if self.layout.conv1d else w.shape[1])

    @property
    def num_layers(self) -> int:
        return len(self.out_projs)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_layers, self.num_heads)

    @property
    def in_features(self) -> int:
        return self.num_heads * self.head_dim


def _get(module: nn.Module, dotted: str) -> nn.Module | None:
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def text_config(config):
    """The language model's config (the config itself for a plain LLM)."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def _module_lists(model: nn.Module) -> Iterator[str]:
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            yield f"{name} ({len(mod)} x {type(mod[0]).__name__})"


def locate_heads(model: nn.Module) -> HeadSites:
    """Find every attention output projection of ``model`` (an LLM or an MLLM's language model)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    layout = ARCHITECTURES.get(model_type or "")
    if layout is None:
        found = "; ".join(list(_module_lists(model))[:6]) or "no ModuleList"
        raise UnsupportedArchitectureError(
            f"no architecture entry for model_type {model_type!r} ({type(model).__name__}); "
            f"known: {', '.join(sorted(ARCHITECTURES))}. Module lists found: {found}. To add it, put a line "
            f"`ARCHITECTURES[{model_type!r}] = HeadLayout(('<path to decoder layers>',), attention='<attn attr>', "
            f"out_proj='<output projection attr>')` in truthprobe_eval/architectures.py"
        )
    layers, layers_path = None, ""
    for path in layout.layers:
        layers = _get(model, path)
        if isinstance(layers, nn.ModuleList):
            layers_path = path
            break
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} (model_type {model_type!r}): expected decoder layers at one of "
            f"{list(layout.layers)}, found none. Module lists present: {'; '.join(_module_lists(model)) or 'none'}"
        )
    projs, attentions, mlp_outs = [], [], []
    for i, layer in enumerate(layers):
        proj = _get(layer, f"{layout.attention}.{layout.out_proj}")
        if proj is None:
            children = ", ".join(n for n, _ in layer.named_children())
            raise UnsupportedArchitectureError(
                f"{layers_path}.{i}: expected {layout.attention}.{layout.out_proj}, found children: {children}"
            )
        projs.append(proj)
        attentions.append(_get(layer, layout.attention))
        mlp_out = _get(layer, f"{layout.mlp}.{layout.mlp_out}")
        if mlp_out is not None:
            mlp_outs.append(mlp_out)

    tcfg = text_config(config)
    num_heads = int(tcfg.num_attention_heads)
    weight = projs[0].weight
    in_features, out_features = (weight.shape[0], weight.shape[1]) if layout.conv1d else (weight.shape[1], weight.shape[0])
    head_dim = getattr(tcfg, "head_dim", None) or in_features // num_heads
    if num_heads * head_dim != in_features or out_features % num_heads:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__}: expected the output projection to take {num_heads} heads x {head_dim} "
            f"features and give a multiple of {num_heads}; found {in_features} -> {out_features}"
        )
    return HeadSites(model_type, layout, tuple(projs), layers_path, num_heads, int(head_dim), int(out_features),
                     tuple(attentions), tuple(mlp_outs) if len(mlp_outs) == len(projs) else ())


def model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or getattr(config, "model_type", "") or type(model).__name__)


def describe(model: nn.Module) -> dict:
    """The config facts that fix a score file's shape, for its metadata."""
    sites = locate_heads(model)
    return {
        "model": model_name(model),
        "architecture": sites.model_type,
        "num_layers": sites.num_layers,
        "num_heads": sites.num_heads,
        "head_dim": sites.head_dim,
    }


def out_proj_weight_dims(sites: HeadSites) -> tuple[int, int]:
    """(input dim, output dim) of the projection's weight tensor: Linear is (out, in), Conv1D is (in, out)."""
    return (0, 1) if sites.layout.conv1d else (1, 0)


__all__ = ["ARCHITECTURES", "SITES", "HeadLayout", "Site", "HeadSites", "locate_heads", "describe", "text_config", "model_name"]
