"""Make the released ``lm_eval`` (0.4.13, no plugin discovery) see the ``truthgated`` model and our tasks.

How: the wheel puts ``truthprobe_eval_lm_eval.pth`` into site-packages. Python runs its one line at start-up;
that line (``pth_line()``, stdlib only, no import of torch or of this package) installs a post-import hook on
``sys.meta_path``. Only when ``lm_eval.models`` or ``lm_eval.tasks.manager`` is imported does the hook
import this module and call ``on_import``, which

- registers ``truthgated`` lazily in lm-eval's model registry (a ``module:Class`` placeholder, the same way
  lm-eval registers its own models), unless an entry point already did;
- wraps ``TaskManager.__init__`` so that every task manager that includes lm-eval's default tasks also indexes
  our lm-eval task folders (``truthprobe_eval/tasks/halueval`` and ``truthfulqa``, so ``--tasks halueval_qa``
  works without ``--include_path``).

Nothing in lm-eval's files is changed. ``TRUTHPROBE_LM_EVAL_AUTOREGISTER=0`` switches the hook off. In-process
users who did not install the ``.pth`` call ``register()`` once instead.

This module imports only the standard library (and ``startup_hook``) at module level: ``setup.py`` loads it
to render the ``.pth`` line.
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

from . import startup_hook
from .startup_hook import hook_source

MODEL_NAME = "truthgated"
MODEL_NAMES = ("truthgated", "intervened")  # the second is the method-neutral alias
MODEL_TARGET = "truthprobe_eval.model_adapters.lm_eval_truthgated:TruthGatedLM"
PTH_NAME = "truthprobe_eval_lm_eval.pth"
DISABLE_ENV = "TRUTHPROBE_LM_EVAL_AUTOREGISTER"
# ``lm_eval.models`` (not the registry module): lm-eval fills its registry with its own models only when the
# registry is empty, by importing ``lm_eval.models``; registering ours before that would hide ``hf`` & co.
HOOKED_MODULES = ("lm_eval.models", "lm_eval.tasks.manager")
_MARK = "_truthprobe_tasks_added"

# Source of the start-up hook. It runs inside ``site`` for every Python start-up of the environment, so it is
# small, stdlib-only and must never raise. It wraps the loader of the two hooked modules: right after
# lm_eval.models has run it adds the lazy model placeholder itself (so ``lm_eval --help`` imports nothing of
# ours); right after the task manager module has run it calls ``on_import(module)`` below.
HOOK_SOURCE = hook_source("_TruthprobeLmEvalHook", HOOKED_MODULES, f"""
    if module.__name__ == "lm_eval.models":  # a lazy placeholder: imports nothing of ours
        from lm_eval.api.registry import model_registry
        for name in {MODEL_NAMES!r}:
            if name not in model_registry:
                model_registry.register(name, target={MODEL_TARGET!r})
    else:
        from truthprobe_eval.model_adapters import lm_eval_registration
        lm_eval_registration.on_import(module)
""", "lm_eval", DISABLE_ENV)


def pth_line() -> str:
    """The single line of ``truthprobe_eval_lm_eval.pth``."""
    return startup_hook.pth_line(HOOK_SOURCE, "truthprobe_eval_lm_eval_hook")


def tasks_dir() -> Path:
    """The folder of our task folders (``truthprobe_eval/tasks``)."""
    from importlib import resources

    return Path(str(resources.files("truthprobe_eval.tasks")))


def task_folders() -> list[Path]:
    """The folders of our lm-eval task YAMLs (``truthprobe_eval.tasks.LM_EVAL_TASK_DIRS``; lmms-eval's YAMLs sit
    beside them and must not be indexed by lm-eval)."""
    from truthprobe_eval.tasks import LM_EVAL_TASK_DIRS

    return list(LM_EVAL_TASK_DIRS)


def register_model(registry=None) -> None:
    """Register ``truthgated`` and ``intervened`` as lazy placeholders unless lm-eval already knows the names."""
    if registry is None:
        import lm_eval.models  # noqa: F401  (lm-eval's own models first: it only adds them to an empty registry)
        from lm_eval.api.registry import model_registry as registry
    for name in MODEL_NAMES:
        if name not in registry:
            registry.register(name, target=MODEL_TARGET)


def add_tasks_to_task_manager(manager_cls=None) -> None:
    """Wrap ``TaskManager.__init__`` so that managers with lm-eval's default tasks also index ours."""
    if manager_cls is None:
        from lm_eval.tasks.manager import TaskManager as manager_cls
    startup_hook.index_our_tasks_too(manager_cls, task_folders, _MARK)


def on_import(module: ModuleType) -> None:
    """Called by the start-up hook right after one of ``HOOKED_MODULES`` has been executed."""
    if module.__name__ == "lm_eval.models":
        register_model()
    elif module.__name__ == "lm_eval.tasks.manager":
        add_tasks_to_task_manager(module.TaskManager)


def register() -> None:
    """Register the model and the tasks with an ``lm_eval`` in this process (for use without the ``.pth``)."""
    register_model()
    add_tasks_to_task_manager()


def hook_installed() -> bool:
    """Whether the start-up hook from the ``.pth`` file is active in this interpreter."""
    return any(type(f).__name__ == "_TruthprobeLmEvalHook" for f in sys.meta_path)


__all__ = ["HOOK_SOURCE", "MODEL_NAME", "MODEL_NAMES", "MODEL_TARGET", "PTH_NAME", "add_tasks_to_task_manager",
           "hook_installed", "on_import", "pth_line", "register", "register_model", "task_folders", "tasks_dir"]
