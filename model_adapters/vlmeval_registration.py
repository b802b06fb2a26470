"""Register the gated models and the offline data sets with VLMEvalKit, where its runner looks them up.

- Models: ``vlmeval.config.supported_VLM`` (``--model llava_v1.5_7b_truthprobe``; ``partial`` entries, gate
  settings from the call's keyword arguments) and ``vlmeval.vlm.TruthGatedVLM`` (JSON ``--config`` entries name
  ``"class": "TruthGatedVLM"`` and give every setting as a key).
- Data sets: ``vlmeval.dataset.DATASET_CLASSES`` (``--data POPE_local``; ``build_dataset`` and ``DATASET_TYPE``
  search that list) and ``vlmeval.dataset.<ClassName>`` (``--config`` ``"class": "POPELocal"``).

Nothing in VLMEvalKit's files changes. ``register()`` is idempotent; ``truthprobe vlmeval ...`` calls it, then
runs VLMEvalKit's ``run.py``. For VLMEvalKit's own entry (``python -m vlmeval``, ``python vlmeval/run.py``), the
wheel can ship ``truthprobe_eval_vlmeval.pth`` (``pth_line()``): at start-up it installs a stdlib-only
post-import hook that calls ``register()`` right after ``vlmeval.config`` has been imported, and imports
nothing otherwise. ``TRUTHPROBE_VLMEVAL_AUTOREGISTER=0`` switches it off. ``install_import_hook()`` installs
the same hook in a running process.

This module imports only the standard library (and ``startup_hook``) at module level (``setup.py`` loads it to
render the ``.pth`` line).
"""
from __future__ import annotations

import importlib
import sys
from functools import partial

from . import startup_hook
from .startup_hook import hook_source, keep_grad_mode, wait_for_modules

# name -> default Hugging Face checkpoint (a config entry's model_path, i.e. `truthprobe vlmeval --hf-model`, overrides it)
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
    # any image-text-to-text checkpoint: the config's model_path (--hf-model) names it
    "truthprobe_hf": None,
}
MODEL_CLASS_NAME = "TruthGatedVLM"
PTH_NAME = "truthprobe_eval_vlmeval.pth"
DISABLE_ENV = "TRUTHPROBE_VLMEVAL_AUTOREGISTER"
HOOKED_MODULE = "vlmeval.config"

# The start-up hook: ``register()`` right after ``vlmeval.config`` has run (VLMEvalKit's runner imports it first).
HOOK_SOURCE = hook_source("_TruthprobeVlmevalHook", (HOOKED_MODULE,), """
    from truthprobe_eval.model_adapters import vlmeval_registration
    vlmeval_registration.register()
""", "VLMEvalKit", DISABLE_ENV)

_registered = False
_deferred = False  # register() was called while one of OUR_MODULES was still importing
# the modules register() imports; each ends with ``startup_hook.module_finished(__name__)``
OUR_MODULES = ("truthprobe_eval.model_adapters.vlmeval_gated", "truthprobe_eval.tasks.pope.vlmeval_dataset",
               "truthprobe_eval.tasks.chair.vlmeval_dataset", "truthprobe_eval.tasks.gqa.vlmeval_dataset",
               "truthprobe_eval.tasks.omnimedvqa.vlmeval_dataset")


def pth_line() -> str:
    """The single line of ``truthprobe_eval_vlmeval.pth``."""
    return startup_hook.pth_line(HOOK_SOURCE, "truthprobe_eval_vlmeval_hook")


def install_import_hook() -> None:
    """Register as soon as ``vlmeval.config`` is imported (at once, if it already is)."""
    if HOOKED_MODULE in sys.modules:
        register()
    else:
        exec(HOOK_SOURCE, {"__name__": "truthprobe_eval_vlmeval_hook"})


def hook_installed() -> bool:
    return any(type(f).__name__ == "_TruthprobeVlmevalHook" for f in sys.meta_path)


def _initializing(name: str) -> bool:
    """True while the module ``name`` is being imported (its body has not finished)."""
    module = sys.modules.get(name)
    return module is not None and bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def finish_deferred(caller: str) -> None:
    """Called (through ``startup_hook.module_finished``) as the last statement of each of ``OUR_MODULES``
    (``caller``: its ``__name__``): a registration deferred while they were importing happens now."""
    if caller in OUR_MODULES and _deferred and not any(_initializing(name) for name in OUR_MODULES if name != caller):
        register(_finishing=caller)




def dataset_classes() -> list[type]:
    """Our data sets (``tasks/vlmeval_datasets.py``; imported here only when asked: setup.py loads this module alone)."""
    from truthprobe_eval.tasks.vlmeval_datasets import dataset_classes as ours

    return ours()


def dataset_names() -> list[str]:
    from truthprobe_eval.tasks.vlmeval_datasets import dataset_names as ours

    return ours()


def register(_finishing: str | None = None) -> None:
    """Add our models and data sets to VLMEvalKit's lookup tables (once per process).

    When the start-up hook fires while ``vlmeval_gated`` itself is importing VLMEvalKit (a program that imports
    our model class or a data set first), registering now would import that half-initialized module; it is
    deferred instead, and that module completes it as its last statement (``startup_hook.module_finished``, which
    calls ``finish_deferred``): our modules import nothing of this one."""
    global _registered, _deferred
    if _registered:
        return
    if any(_initializing(name) for name in OUR_MODULES if name != _finishing):
        _deferred = True
        wait_for_modules(finish_deferred)  # each of OUR_MODULES calls startup_hook.module_finished last
        return
    # import_module, not attribute access: under the start-up hook the ``vlmeval`` package is still initializing
    with keep_grad_mode():
        config = importlib.import_module("vlmeval.config")
        datasets = importlib.import_module("vlmeval.dataset")
        vlm = importlib.import_module("vlmeval.vlm")

    from .vlmeval_gated import TruthGatedVLM

    setattr(vlm, MODEL_CLASS_NAME, TruthGatedVLM)
    for name, path in MODELS.items():
        config.supported_VLM[name] = partial(TruthGatedVLM, default_model_path=path)

    for cls in dataset_classes():
        setattr(datasets, cls.__name__, cls)
        if cls not in datasets.DATASET_CLASSES:
            datasets.DATASET_CLASSES.append(cls)  # the list build_dataset / DATASET_TYPE iterate
        if cls not in datasets.IMAGE_DATASET:
            datasets.IMAGE_DATASET.append(cls)
        for name in cls.supported_datasets():
            if name not in datasets.SUPPORTED_DATASETS:
                datasets.SUPPORTED_DATASETS.append(name)
    _registered = True


__all__ = ["MODELS", "MODEL_CLASS_NAME", "PTH_NAME", "DISABLE_ENV", "register", "install_import_hook", "pth_line",
           "finish_deferred", "hook_installed", "dataset_classes", "dataset_names", "keep_grad_mode"]
