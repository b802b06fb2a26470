"""Interventions on a model's internals, one interface for every method (see ``base``).

    from truthprobe_eval.interventions import build
    iti = build("iti", directions="iti.json", k=48, alpha=15)
    with iti.attach(model):
        model.generate(...)
    record = iti.describe()   # what every result file stores

Every module of this package is imported and its ``@register``-ed class becomes ``method=<name>``; another package
adds a method through the ``truthprobe_eval.methods`` entry-point group (the entry point names the module or
class; loading it registers the method). ``methods()`` lists them for the drivers. The classes are also reachable
by name here (``from truthprobe_eval.interventions import ITI``).
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from .base import (
    APPLY_MODES,
    REGISTRY,
    Baseline,
    FitData,
    Intervention,
    Param,
    build,
    from_description,
    method_class,
    methods,
    register,
    relative_descriptions,
    split_kwargs,
)

DEFAULT_METHOD = "truthprobe"
ENTRY_POINT_GROUP = "truthprobe_eval.methods"


def discover() -> None:
    """Import every module of this package and load the entry points of other packages (each registers its
    method; calling this again picks up entry points installed since)."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    for point in entry_points(group=ENTRY_POINT_GROUP):
        point.load()


discover()


def __getattr__(name: str):
    """A registered method's class by its class name (``ITI``, ``TruthProbeGate``, ...)."""
    for cls in REGISTRY.values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["APPLY_MODES", "Baseline", "DEFAULT_METHOD", "ENTRY_POINT_GROUP", "discover", "FitData", "Intervention", "Param",
           "REGISTRY", "build", "from_description", "method_class", "methods", "register", "relative_descriptions",
           "split_kwargs"]
