"""Register the gated models and the offline data sets with VLMEvalKit, where its runner looks them up.

- Models: ``vlmeval.config.supported_VLM`` (``--model llava_v1.5_7b_truthprobe``; ``partial`` entries, gate
  settings from the environment) and ``vlmeval.vlm.TruthGatedVLM`` (JSON ``--config`` entries name
  ``"class": "TruthGatedVLM"`` and give every setting as a key).
- Data sets: ``vlmeval.dataset.DATASET_CLASSES`` (``--data POPE_local``; ``build_dataset`` and
  ``DATASET_TYPE`` search that list) and ``vlmeval.dataset.<ClassName>`` (``--config`` ``"class": "POPELocal"``).

``register()`` is idempotent. ``truthprobe vlmeval ...`` calls it and then runs VLMEvalKit's ``run.py``.
``install_import_hook()`` defers ``register()`` until VLMEvalKit's own code imports ``vlmeval.config``, so that
a start-up hook (a ``.pth`` line) makes the stock ``python -m vlmeval`` runner see them too.
"""
from __future__ import annotations

import importlib.abc
import sys
from functools import partial

# name -> default Hugging Face checkpoint (TRUTHPROBE_MODEL_PATH or a config's model_path overrides it)
MODELS: dict[str, str | None] = {
    "llava_v1.5_7b_truthprobe": "llava-hf/llava-1.5-7b-hf",
    "llava_v1.5_13b_truthprobe": "llava-hf/llava-1.5-13b-hf",
    "llava_next_vicuna_7b_truthprobe": "llava-hf/llava-v1.6-vicuna-7b-hf",
    "llava_next_vicuna_13b_truthprobe": "llava-hf/llava-v1.6-vicuna-13b-hf",
    "llava_next_mistral_7b_truthprobe": "llava-hf/llava-v1.6-mistral-7b-hf",
    "llava_next_llama3_truthprobe": "llava-hf/llama3-llava-next-8b-hf",
    "Qwen2-VL-2B-Instruct_truthprobe": "Qwen/Qwen2-VL-2B-Instruct",
    "Qwen2-VL-7B-Instruct_truthprobe": "Qwen/Qwen2-VL-7B-Instruct",
    "Qwen2.5-VL-3B-Instruct_truthprobe": "Qwen/Qwen2.5-VL-3B-Instruct",
    "Qwen2.5-VL-7B-Instruct_truthprobe": "Qwen/Qwen2.5-VL-7B-Instruct",
    "SmolVLM-256M_truthprobe": "HuggingFaceTB/SmolVLM-256M-Instruct",
    "SmolVLM-500M_truthprobe": "HuggingFaceTB/SmolVLM-500M-Instruct",
    "SmolVLM_truthprobe": "HuggingFaceTB/SmolVLM-Instruct",
    "Idefics3-8B-Llama3_truthprobe": "HuggingFaceM4/Idefics3-8B-Llama3",
    # any image-text-to-text checkpoint: TRUTHPROBE_MODEL_PATH names it
    "truthprobe_hf": None,
}
MODEL_CLASS_NAME = "TruthGatedVLM"

_registered = False


def dataset_classes() -> list[type]:
    from truthprobe_eval.tasks.vlmeval_chair import CHAIRLocal
    from truthprobe_eval.tasks.vlmeval_gqa import GQALocal
    from truthprobe_eval.tasks.vlmeval_omnimedvqa import OmniMedVQALocal
    from truthprobe_eval.tasks.vlmeval_pope import POPELocal

    return [POPELocal, CHAIRLocal, GQALocal, OmniMedVQALocal]


def dataset_names() -> list[str]:
    return [name for cls in dataset_classes() for name in cls.supported_datasets()]


def register() -> None:
    """Add our models and data sets to VLMEvalKit's lookup tables (once per process)."""
    global _registered
    if _registered:
        return
    import vlmeval.config
    import vlmeval.dataset
    import vlmeval.vlm

    from .vlmeval_gated import TruthGatedVLM

    setattr(vlmeval.vlm, MODEL_CLASS_NAME, TruthGatedVLM)
    for name, path in MODELS.items():
        vlmeval.config.supported_VLM[name] = partial(TruthGatedVLM, default_model_path=path)

    classes = dataset_classes()
    for cls in classes:
        setattr(vlmeval.dataset, cls.__name__, cls)
        if cls not in vlmeval.dataset.DATASET_CLASSES:
            vlmeval.dataset.DATASET_CLASSES.append(cls)  # the list build_dataset / DATASET_TYPE iterate
        if cls not in vlmeval.dataset.IMAGE_DATASET:
            vlmeval.dataset.IMAGE_DATASET.append(cls)
        for name in cls.supported_datasets():
            if name not in vlmeval.dataset.SUPPORTED_DATASETS:
                vlmeval.dataset.SUPPORTED_DATASETS.append(name)
    _registered = True


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Wraps the loader of ``vlmeval.config`` so that ``register()`` runs right after it executes."""

    target = "vlmeval.config"

    def find_spec(self, fullname, path, target=None):
        if fullname != self.target:
            return None
        import importlib.util

        sys.meta_path.remove(self)  # one shot: find the real spec without this finder
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return None
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            register()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install_import_hook() -> None:
    """Register as soon as ``vlmeval.config`` is imported (now, if it already is)."""
    if "vlmeval.config" in sys.modules:
        register()
        return
    if not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


__all__ = ["MODELS", "MODEL_CLASS_NAME", "register", "install_import_hook", "dataset_classes", "dataset_names"]
