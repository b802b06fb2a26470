"""What every multimodal harness adapter does with a model's settings, before any weights load: split the method's
settings from the rest, build the intervention with the same parser as lm-eval's ``model_args``, and check that its
file fits the checkpoint's language model (from the config alone).

Harness-neutral (no VLMEvalKit or lmms-eval import): ``vlmeval_gated`` and ``lmms_eval_truthgated`` both use it.
"""
from __future__ import annotations

from typing import Any

from truthprobe_eval.errors import TruthProbeError
from truthprobe_eval.interventions import DEFAULT_METHOD, Intervention, method_class


def _given(value: Any, default: Any = None) -> Any:
    """A given value, else ``default`` (an empty string counts as not given)."""
    return default if value is None or value == "" else value


def resolve_intervention(given: dict[str, Any]) -> Intervention:
    """The intervention from constructor values (``method`` and any of its settings), else the method's defaults.

    The same parser as lm-eval's ``model_args`` (``interventions.build``); an error names the config key.
    """
    cls = method_class(_given(given.get("method"), DEFAULT_METHOD))
    settings = {name: given[name] for name in cls.param_names() if given.get(name) not in (None, "")}
    try:
        return cls.from_kwargs(**settings)
    except TruthProbeError as exc:
        name, sep, rest = str(exc).partition(":")
        if sep and name in cls.param_names():
            raise type(exc)(f"{name} (config key '{name}'):{rest}") from None
        raise


def check_method_keys(settings: dict[str, Any], where: str = "TruthGatedVLM") -> None:
    """A gated model may be given only its own method's settings: another method's (``scores`` for ITI) would go
    to the model or to ``generate`` as an unknown keyword and fail mid-run."""
    from truthprobe_eval.interventions import REGISTRY

    cls = method_class(_given(settings.get("method"), DEFAULT_METHOD))
    known = {name for method in REGISTRY.values() for name in method.param_names()}
    wrong = sorted(k for k in settings if k in known and k not in cls.param_names())
    if wrong:
        raise TruthProbeError(f"{where}: method {cls.name!r} takes no {', '.join(wrong)}; its settings: "
                              f"{', '.join(cls.param_names())}")


def split_method_settings(given: dict[str, Any], where: str) -> tuple[Intervention, dict[str, Any]]:
    """(the intervention, the other keywords) of one adapter's keyword arguments (``method`` included)."""
    check_method_keys(given, where)
    names = set(method_class(_given(given.get("method"), DEFAULT_METHOD)).param_names())
    made = resolve_intervention({k: v for k, v in given.items() if k == "method" or k in names})
    return made, {k: v for k, v in given.items() if k != "method" and k not in names}


def auto_device(device: Any) -> str:
    """``auto`` (or nothing given): ``cuda`` where a GPU is visible, else ``cpu``; any other value as given."""
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def model_config(model_path: str):
    """The checkpoint's ``AutoConfig`` (no weights); a clear error when there is none."""
    from transformers import AutoConfig

    from truthprobe_eval.models import resolve_model_path

    try:
        return AutoConfig.from_pretrained(resolve_model_path(model_path))
    except OSError as exc:
        raise TruthProbeError(f"could not load a model config from {model_path!r}: {exc}") from None


def check_fits_config(model_path: str, intervention: Intervention) -> None:
    """Compare the intervention's shape with the model's language model config (no weights).

    Raises ``ShapeMismatchError`` naming the scores' (directions') model and this model.
    """
    if intervention.identity:
        return
    from truthprobe_eval.architectures import text_config

    tcfg = text_config(model_config(model_path))
    intervention.check_shape(int(tcfg.num_hidden_layers), int(tcfg.num_attention_heads),
                             f"the language model of {model_path}")


__all__ = ["auto_device", "check_fits_config", "check_method_keys", "model_config", "resolve_intervention", "split_method_settings"]
