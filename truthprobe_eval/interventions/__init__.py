"""Interventions on a model's internals, one interface for every method (see ``base``).

    from truthprobe_eval.interventions import build
    iti = build("iti", directions="iti.json", k=48, alpha=15)
    with iti.attach(model):
        model.generate(...)
    record = iti.describe()   # what every result file stores

Registered methods: ``none`` (baseline), ``truthprobe`` (head gating, the default), ``iti``,
``neurons`` (truth-neuron suppression),
``rve`` (attention boost to the evidence).
"""
from .base import (
    APPLY_MODES,
    REGISTRY,
    Baseline,
    Intervention,
    Param,
    build,
    from_description,
    method_class,
    register,
    split_kwargs,
)
from .iti import ITI
from .neurons import NeuronSuppression
from .rve import RVE
from .truthprobe import TruthProbeGate

DEFAULT_METHOD = "truthprobe"

__all__ = ["APPLY_MODES", "Baseline", "DEFAULT_METHOD", "ITI", "Intervention", "NeuronSuppression", "Param", "REGISTRY", "RVE", "TruthProbeGate",
           "build", "from_description", "method_class", "register", "split_kwargs"]
