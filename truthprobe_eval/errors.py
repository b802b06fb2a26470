"""Errors that say what was expected and what was found."""


class TruthProbeError(Exception):
    """Base class for errors raised by truthprobe-eval."""


class ScoreFileError(TruthProbeError, ValueError):
    """A score file could not be read, or holds values that are not valid Truth Scores."""


class ShapeMismatchError(TruthProbeError, ValueError):
    """Truth Scores do not fit the model they are applied to."""


class UnsupportedArchitectureError(TruthProbeError, KeyError):
    """The architecture table has no entry for a model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InterventionError(TruthProbeError, ValueError):
    """An intervention's method name or settings are not valid, or it does not fit the model."""


class GateConfigError(InterventionError):
    """A gate setting (alpha, norm, site, kind) is not valid."""
