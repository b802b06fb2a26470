"""The source of a ``.pth`` start-up hook: a ``sys.meta_path`` finder that runs ``on_load`` right after one of
``targets`` has been imported, and does nothing else.

Both harness registrations (``lm_eval_registration``, ``vlmeval_registration``) render their hook from here. The
source runs inside ``site`` at every Python start-up of the environment, so it is stdlib-only and never raises
(a failed registration is a warning). Standard library only: ``setup.py`` loads this folder to write the files.
"""
from __future__ import annotations

import sys
import textwrap
from contextlib import contextmanager
from typing import Callable, Iterator

_TEMPLATE = '''
import os, sys
class %(cls)s:
    targets = %(targets)r
    def find_spec(self, name, path=None, target=None):
        if name not in self.targets:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        run = getattr(spec.loader, "exec_module", None)
        if run is None:
            return spec
        def exec_module(module, _run=run):
            _run(module)
            try:
%(on_load)s
            except Exception as exc:
                import warnings
                warnings.warn("truthprobe-eval could not register with %(harness)s: %%r" %% (exc,), stacklevel=2)
        spec.loader.exec_module = exec_module
        return spec
if os.environ.get(%(env)r, "1") != "0" and not any(type(f).__name__ == %(cls)r for f in sys.meta_path):
    sys.meta_path.insert(0, %(cls)s())
'''


def hook_source(cls: str, targets: tuple[str, ...], on_load: str, harness: str, disable_env: str) -> str:
    """The hook's source: finder class ``cls``; ``on_load`` is code run with ``module`` (the imported target) bound;
    ``disable_env=0`` in the environment switches the hook off."""
    body = textwrap.indent(textwrap.dedent(on_load).strip(), " " * 16)
    return _TEMPLATE % {"cls": cls, "targets": tuple(targets), "on_load": body, "harness": harness, "env": disable_env}


def pth_line(source: str, name: str) -> str:
    """The single line of a ``.pth`` file (``site`` executes lines that start with ``import``)."""
    return f"import sys; exec({source!r}, {{'__name__': {name!r}}})\n"


_waiting: list[Callable[[str], None]] = []


def wait_for_modules(callback: Callable[[str], None]) -> None:
    """Have ``callback(name)`` called each time one of the modules that call ``module_finished`` finishes importing
    (a registration deferred while they were importing completes then)."""
    if callback not in _waiting:
        _waiting.append(callback)


def module_finished(name: str) -> None:
    """Called as the last statement of a module another registration may be waiting for."""
    for callback in list(_waiting):
        callback(name)


def index_our_tasks_too(manager_cls: type, folders: Callable[[], list], mark: str, first_wins: bool = False) -> None:
    """Wrap a harness's ``TaskManager.__init__`` (lm-eval's and lmms-eval's take the same ``include_path`` and
    ``include_defaults``) so that a manager that indexes the harness's default tasks also indexes ``folders()``,
    placed so that a user's ``include_path`` can still override our task names: before the user's paths where a
    later path wins (lm-eval), after them where the first one wins (``first_wins``: lmms-eval). Once per class."""
    import functools
    import os

    if getattr(manager_cls.__init__, mark, False):
        return
    original = manager_cls.__init__

    @functools.wraps(original)
    def __init__(self, *args, include_path=None, include_defaults: bool = True, **kwargs):
        if include_defaults:
            paths = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
            given = {os.path.abspath(str(p)) for p in paths}
            ours = [str(p) for p in folders() if os.path.abspath(str(p)) not in given]
            include_path = paths + ours if first_wins else ours + paths
        original(self, *args, include_path=include_path, include_defaults=include_defaults, **kwargs)

    setattr(__init__, mark, True)
    manager_cls.__init__ = __init__


@contextmanager
def keep_grad_mode() -> Iterator[None]:
    """Keep the caller's autograd mode across the block: importing ``vlmeval.vlm`` calls
    ``torch.set_grad_enabled(False)`` for the whole process, which would change every later computation (and make
    test results depend on test order). torch is not imported here: it is only restored if something loaded it."""
    torch = sys.modules.get("torch")
    mode = torch.is_grad_enabled() if torch is not None else True
    try:
        yield
    finally:
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_grad_enabled(mode)


__all__ = ["hook_source", "index_our_tasks_too", "keep_grad_mode", "module_finished", "pth_line", "wait_for_modules"]
