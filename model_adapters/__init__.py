"""Harness adapters: the lm-eval ``truthgated`` / ``intervened`` model and the VLMEvalKit gated models.

This top-level folder is installed as ``truthprobe_eval.model_adapters`` (``package-dir`` in pyproject.toml), so a relative
``from ..errors import ...`` here means ``truthprobe_eval/errors.py``; import it as ``truthprobe_eval.model_adapters``.
"""
