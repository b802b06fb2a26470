"""Make lmms-eval (0.7.3) see the ``truthgated`` model and our offline tasks, and record the intervention.

- The model: lmms-eval's own plugin mechanism, the ``lmms_eval.models`` entry-point group (pyproject.toml names
  ``manifests`` below), read when ``lmms_eval.models`` builds its registry.
- The tasks: lmms-eval has no task plugins, so a ``.pth`` start-up hook (the same one lm-eval's registration
  uses, ``startup_hook``) wraps ``TaskManager.__init__`` right after ``lmms_eval.tasks`` is imported, so that a
  manager that indexes lmms-eval's default tasks also indexes ``truthprobe_eval.tasks.LMMS_EVAL_TASK_DIRS`` (``--tasks pope_local``
  works without ``--include_path``).
- The results: lmms-eval 0.7.3 never asks the model to describe itself (``results["config"].update(
  lm.get_model_info())`` is commented out in its ``evaluator.py``), so the hook wraps ``simple_evaluate`` to add
  the ``get_model_info()`` of the ``truthgated`` model it created: ``config.intervention`` in the results file.

Nothing in lmms-eval's files is changed. ``TRUTHPROBE_LMMS_EVAL_AUTOREGISTER=0`` switches the hook off;
in-process users without the ``.pth`` call ``register()`` once. Standard library only at module level
(``setup.py`` loads this module to render the ``.pth`` line).
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from types import ModuleType

from . import startup_hook
from .startup_hook import hook_source

MODEL_NAMES = ("truthgated", "intervened")
MODEL_CLASS = "truthprobe_eval.model_adapters.lmms_eval_truthgated.TruthGatedLMM"
PTH_NAME = "truthprobe_eval_lmms_eval.pth"
DISABLE_ENV = "TRUTHPROBE_LMMS_EVAL_AUTOREGISTER"
HOOKED_MODULES = ("lmms_eval.tasks", "lmms_eval.evaluator")
_MARK = "_truthprobe_lmms_eval"

HOOK_SOURCE = hook_source("_TruthprobeLmmsEvalHook", HOOKED_MODULES, """
    from truthprobe_eval.model_adapters import lmms_eval_registration
    lmms_eval_registration.on_import(module)
""", "lmms_eval", DISABLE_ENV)


def pth_line() -> str:
    """The single line of ``truthprobe_eval_lmms_eval.pth``."""
    return startup_hook.pth_line(HOOK_SOURCE, "truthprobe_eval_lmms_eval_hook")


def manifests() -> list:
    """The ``lmms_eval.models`` entry point: ``truthgated`` and ``intervened``, one simple (non-chat) class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_NAMES[0], simple_class_path=MODEL_CLASS, aliases=MODEL_NAMES[1:])]


def task_folders() -> list[Path]:
    """The folders of our lmms-eval task YAMLs (``truthprobe_eval.tasks.LMMS_EVAL_TASK_DIRS``)."""
    from truthprobe_eval.tasks import LMMS_EVAL_TASK_DIRS

    return list(LMMS_EVAL_TASK_DIRS)


def add_tasks_to_task_manager(manager_cls=None) -> None:
    """Wrap ``TaskManager.__init__`` so that managers with lmms-eval's default tasks also index ours."""
    if manager_cls is None:
        from lmms_eval.tasks import TaskManager as manager_cls
    startup_hook.index_our_tasks_too(manager_cls, task_folders, _MARK, first_wins=True)  # lmms-eval keeps the first


def record_intervention(evaluator: ModuleType | None = None) -> None:
    """Wrap ``simple_evaluate`` so that results of a ``truthgated`` model carry its ``get_model_info()``."""
    if evaluator is None:
        from lmms_eval import evaluator
    original = evaluator.simple_evaluate
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def simple_evaluate(*args, **kwargs):
        from .lmms_eval_truthgated import TruthGatedLMM

        before = len(TruthGatedLMM.recorded)
        try:
            results = original(*args, **kwargs)
            made = TruthGatedLMM.recorded[before:]
            if made and isinstance(results, dict) and isinstance(results.get("config"), dict):
                results["config"].update(made[-1])
            return results
        finally:
            del TruthGatedLMM.recorded[before:]

    setattr(simple_evaluate, _MARK, True)
    evaluator.simple_evaluate = simple_evaluate


def on_import(module: ModuleType) -> None:
    """Called by the start-up hook right after one of ``HOOKED_MODULES`` has been executed."""
    if module.__name__ == "lmms_eval.tasks":
        add_tasks_to_task_manager(module.TaskManager)
    elif module.__name__ == "lmms_eval.evaluator":
        record_intervention(module)


def register() -> None:
    """Tasks and result recording for an ``lmms_eval`` in this process (for use without the ``.pth``; the model
    itself comes from the entry point)."""
    add_tasks_to_task_manager()
    record_intervention()


def hook_installed() -> bool:
    """Whether the start-up hook from the ``.pth`` file is active in this interpreter."""
    return any(type(f).__name__ == "_TruthprobeLmmsEvalHook" for f in sys.meta_path)


__all__ = ["HOOK_SOURCE", "MODEL_CLASS", "MODEL_NAMES", "PTH_NAME", "add_tasks_to_task_manager",
           "hook_installed", "manifests", "on_import", "pth_line", "record_intervention", "register", "task_folders"]
