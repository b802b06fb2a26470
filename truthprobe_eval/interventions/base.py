"""The intervention interface: one small base class, declared parameters, one registry.

An intervention is built from keyword arguments (``build("iti", directions="iti.json", k=48)``; the same parser
serves lm-eval's ``model_args``, VLMEvalKit's config keys, the CLI and Python), attaches to a model as a context
manager (hooks in, hooks out, the model exactly restored), may bake into the weights, and describes itself as a
plain dict that every result records (``describe()``; ``from_description`` rebuilds it).

A new method is a new module in this package holding a registered subclass with a ``name``, its ``params`` and
``hooks`` (and, to be bakeable, ``bake_weights``; its leaderboard wording in ``row``). The same class tells the
drivers (``compare-methods``, ``ablate``, ``fit``, ``bake``, the leaderboard) everything else they need: its
``title`` and its controls' and ablations' titles, and how its artifact is made (``artifact``, ``fit_data``,
``fit_params``, ``fit``). The package imports every module it holds, and the ``truthprobe_eval.methods`` entry-point
group adds methods from other packages: nothing else moves.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import nn

from ..errors import InterventionError

APPLY_MODES = ("hook", "bake")


@dataclass(frozen=True)
class Param:
    """One declared setting: name, type (float, int, str, bool or "path"), default, allowed values, help."""

    name: str
    kind: Any
    default: Any = None
    choices: tuple = ()
    help: str = ""
    objects: tuple = ()  # in-memory types a "path" setting also accepts (e.g. loaded TruthScores)

    def parse(self, value: Any, error: type[Exception] = InterventionError) -> Any:
        """``value`` (a Python value or lm-eval's parsed string) as this parameter's type; raises ``error``."""
        if self.objects and isinstance(value, self.objects):
            return value
        if isinstance(value, str) and value == "" or value is None:
            if self.kind == "path" or self.default is None:
                return None
            value = self.default
        expected = {float: "a finite number", int: "an integer", bool: "true or false", str: "a string",
                    "path": "a file path"}[self.kind]
        wanted = f"one of {', '.join(map(str, self.choices))}" if self.choices else expected
        fail = error(f"{self.name}: expected {wanted}, found {value!r}")
        if self.kind is float:
            if isinstance(value, bool):
                raise fail
            try:
                out: Any = float(value)
            except (TypeError, ValueError):
                raise fail from None
            if not math.isfinite(out):
                raise fail
        elif self.kind is int:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise fail
            try:
                number = float(value)
            except ValueError:
                raise fail from None
            if not math.isfinite(number) or number != int(number):
                raise fail
            out = int(number)
        elif self.kind is bool:
            if isinstance(value, bool):
                out = value
            elif isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                out = value.lower() in ("true", "1")
            else:
                raise fail
        else:
            if not isinstance(value, str):
                import os

                if self.kind == "path" and isinstance(value, os.PathLike):
                    value = os.fspath(value)
                else:
                    raise fail
            out = value
        if self.choices and out not in self.choices:
            raise fail
        return out


@dataclass
class FitData:
    """What a method's ``fit`` reads and where it writes its artifact (the comparison fills it in per TruthfulQA
    half, ``truthprobe fit`` from its flags)."""

    model_name: str
    out: Path
    questions: list[int] | None = None  # TruthfulQA questions to fit on (None: the method's own default)
    compared_questions: list[int] | None = None  # every question the comparison evaluates (ITI's paper sigma)
    truthfulqa_csv: str | None = None
    preset: str = "ours"
    split_seed: int = 0
    suffix: str = ""  # file name suffix, e.g. "_half0"
    progress: bool = True
    device: str = "cpu"
    meta: dict[str, Any] = field(default_factory=dict)  # recorded in the artifact's metadata
    log: Callable[[str], None] | None = None  # one line per step, where the caller wants them
    file: Path | None = None  # the artifact's exact path (``truthprobe fit --out``), else ``out/<stem><suffix>.json``

    def truthfulqa_questions(self) -> list[int]:
        """The questions to fit on: those given, else every row of the TruthfulQA CSV."""
        if self.questions is not None:
            return [int(q) for q in self.questions]
        from ..tasks.truthfulqa.utils import csv_path, read_rows

        return list(range(len(read_rows(str(csv_path(self.truthfulqa_csv))))))

    def path(self, stem: str) -> Path:
        return Path(self.file) if self.file is not None else Path(self.out) / f"{stem}{self.suffix}.json"


class Intervention:
    """Base class. Subclasses set ``name``, ``params`` and ``title``, and implement ``hooks`` (and maybe
    ``bake``, ``load`` for files, ``check_fits`` for shapes, ``fit`` for the artifact they read)."""

    name: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    #: the method's name in tables and plots; its controls' and ablations' names, each saying what it is
    title: ClassVar[str] = ""
    control_titles: ClassVar[dict[str, str]] = {}
    #: the papers' own ablations (and other named variants) the comparison runs beside the controls:
    #: name -> (title, the settings that turn the method into it)
    ablations: ClassVar[dict[str, tuple[str, dict[str, Any]]]] = {}
    #: the setting that names the method's fitted file (None: nothing to fit), and its file stem
    artifact: ClassVar[str | None] = None
    artifact_stem: ClassVar[str] = ""
    #: what ``fit`` reads: "halueval" (rows [0, rows) of HaluEval, once) or "truthfulqa" (TruthfulQA questions:
    #: the comparison evaluates each half with the file fit on the other)
    fit_data: ClassVar[str | None] = None
    #: the fit's own settings, declared like ``params`` (``--set METHOD.NAME=VALUE`` reaches either)
    fit_params: ClassVar[tuple[Param, ...]] = ()
    #: why ``apply=bake`` is refused, for methods that cannot bake
    bake_refusal: ClassVar[str] = ""
    #: the settings grid ``truthprobe ablate grid`` searches when no ``--vary`` is given (a paper's own, where it
    #: published one)
    selection_grid: ClassVar[tuple[dict[str, Any], ...]] = ()
    #: place in tables and comparisons (lower first; then the name)
    rank: ClassVar[int] = 100
    error: ClassVar[type[Exception]] = InterventionError
    #: True when the edit depends on which positions it touches (see ``edit_positions``)
    position_aware: ClassVar[bool] = False
    #: the method's random controls: name -> the settings that turn it into the control (a ``seed`` is added)
    controls: ClassVar[dict[str, dict[str, Any]]] = {}
    #: False when the edit must see every call's full inputs (harnesses then skip their shared-prefix caches)
    uses_prefix_cache: ClassVar[bool] = True

    def __init__(self, **settings: Any) -> None:
        self.settings = {"apply": "hook", **settings}  # the same description however it was made
        self.apply = self.settings["apply"]
        self._positions: Any = None  # None: every position; see edit_positions

    # ---- construction ------------------------------------------------------------------------------
    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        return ("apply", *(p.name for p in cls.params))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every setting's default, as declared (the one place a default is written)."""
        return {p.name: p.default for p in cls.params}

    # ---- what the drivers need -----------------------------------------------------------------------
    @classmethod
    def run_titles(cls) -> dict[str, str]:
        """Run name -> title: the method itself (its ``name``), each control and each ablation (``name_<kind>``)."""
        titles = {cls.name: cls.title or cls.name}
        titles.update({f"{cls.name}_{k}": cls.control_titles.get(k, f"{cls.title or cls.name}, {k}")
                       for k in cls.controls})
        titles.update({f"{cls.name}_{k}": title for k, (title, _) in cls.ablations.items()})
        return titles

    @classmethod
    def split_settings(cls, given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(intervention settings, fit settings) of ``--set METHOD.NAME=VALUE`` values; unknown names fail."""
        fit_names = {p.name for p in cls.fit_params}
        unknown = sorted(set(given) - set(cls.param_names()) - fit_names)
        if unknown:
            raise cls.error(f"method {cls.name!r}: unknown setting(s) {', '.join(unknown)}; expected settings "
                            f"{', '.join(cls.param_names())}" + (f" or fit settings {', '.join(sorted(fit_names))}"
                                                                   if fit_names else ""))
        fit = {p.name: p.parse(given.get(p.name), cls.error) for p in cls.fit_params}
        return {k: v for k, v in given.items() if k not in fit_names}, fit

    @classmethod
    def settings_for(cls, model: nn.Module) -> dict[str, Any]:
        """Defaults that depend on the model (RVE: the middle five layers); given settings override them."""
        return {}

    @classmethod
    def halueval_rows_read(cls, fit: dict[str, Any]) -> int:
        """HaluEval rows [0, n) the fit reads: held-out evaluation must start after them."""
        return int(fit.get("rows", 0)) if cls.fit_data == "halueval" else 0

    @classmethod
    def check_fit(cls, fit: dict[str, Any], questions_per_half: int | None) -> None:
        """Raise before any model work when the fit cannot run on the data it would get."""

    @classmethod
    def fit(cls, model: nn.Module, tokenizer: Any, data: FitData, **fit: Any) -> str:
        """Make the artifact the method reads (``artifact``), save it at ``data.path(artifact_stem)``, return the
        path."""
        raise cls.error(f"method {cls.name!r} has nothing to fit")

    @classmethod
    def comparison_notes(cls, fitted: dict[str, list[str]], out: Path) -> list[dict[str, Any]]:
        """Extra analyses of the method's fitted files beside the other methods' (``fitted``: method -> files);
        each a dict with a ``text`` line for the report."""
        return []

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "Intervention":
        """Parse and validate every setting (files are read here, before any model loads)."""
        unknown = sorted(set(kwargs) - set(cls.param_names()))
        if unknown:
            raise cls.error(f"method {cls.name!r}: unknown argument(s) {', '.join(unknown)}; expected "
                            f"{', '.join(cls.param_names())}")
        apply = Param("apply", str, "hook", APPLY_MODES).parse(kwargs.get("apply"), cls.error)
        if apply == "bake" and not cls.can_bake():
            raise cls.error(f"apply: method {cls.name!r} cannot be baked into weights"
                            f"{' (' + cls.bake_refusal + ')' if cls.bake_refusal else ''}; use apply=hook")
        settings = {"apply": apply, **{p.name: p.parse(kwargs.get(p.name), cls.error) for p in cls.params}}
        made = cls(**settings)
        made.load()
        return made

    def load(self) -> None:
        """Read and check the files the settings name (score files, direction files)."""

    def with_settings(self, **changes: Any) -> "Intervention":
        """A new intervention of the same method with some settings changed (grids and ablations use this)."""
        return type(self).from_kwargs(**{**self.given(), **changes})

    def control(self, name: str, seed: int = 0) -> "Intervention":
        """The random control ``name`` of this intervention (same strength, random heads / gates / directions)."""
        if name not in self.controls:
            raise self.error(f"control: method {self.name!r} has {', '.join(self.controls) or 'no controls'}, "
                             f"found {name!r}")
        return self.with_settings(**self.controls[name], seed=seed)

    def given(self) -> dict[str, Any]:
        """The settings as keyword arguments (in-memory objects kept, e.g. loaded scores)."""
        return dict(self.settings)

    # ---- what it does ------------------------------------------------------------------------------
    @property
    def identity(self) -> bool:
        """True when attaching changes nothing (baselines skip the hooks altogether)."""
        return False

    def bind_tokenizer(self, tokenizer: Any) -> None:
        """Harnesses hand over their tokenizer (methods that find text spans need it); most ignore it."""

    def check_fits(self, model: nn.Module) -> None:
        """Raise when the intervention's data do not fit ``model`` (layers, heads, widths)."""

    def check_shape(self, num_layers: int, num_heads: int, name: str) -> None:
        """Raise when the intervention cannot fit a model of this shape (read from its config, before loading)."""

    @property
    def wants_positions(self) -> bool:
        """True when a harness should say which positions to edit (``edit_positions``) rather than all of them."""
        return self.position_aware and self.settings.get("positions", "all") != "all"

    def hooks(self, model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        raise NotImplementedError

    @contextmanager
    def attach(self, model: nn.Module) -> Iterator["Intervention"]:
        """The edit in for the block, out afterwards; the model is exactly as before."""
        if self.identity:
            yield self
            return
        self.check_fits(model)
        with self.edits(model):
            yield self

    @contextmanager
    def edits(self, model: nn.Module) -> Iterator[None]:
        """The edit itself, while the block runs: by default ``hooks`` in, removed on exit. A method that edits
        something other than activations (the attention pattern) overrides this instead."""
        handles = self.hooks(model)
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @classmethod
    def can_bake(cls) -> bool:
        return cls.bake is not Intervention.bake or cls.bake_weights is not Intervention.bake_weights

    @torch.no_grad()
    def bake(self, model: nn.Module) -> nn.Module:
        """Fold the intervention into the weights in place (``bake_weights``), after the same checks as ``attach``;
        recorded in ``model.config.truthprobe_interventions``. Returns ``model``."""
        from ..architectures import locate_heads

        if self.identity:
            return model
        if not self.can_bake():
            raise self.error(f"method {self.name!r} cannot be baked into weights"
                             f"{' (' + self.bake_refusal + ')' if self.bake_refusal else ''}")
        self.check_fits(model)
        self.record_bake(model, self.bake_weights(locate_heads(model)))
        return model

    def bake_weights(self, sites: Any) -> dict | None:
        """Change the weights of the model whose ``HeadSites`` are given; returns extra fields for the record."""
        raise self.error(f"method {self.name!r} cannot be baked into weights")

    def record_bake(self, model: nn.Module, extra: dict | None = None) -> None:
        config = getattr(model, "config", None)
        if config is not None:
            previous = list(getattr(config, "truthprobe_interventions", None) or [])
            config.truthprobe_interventions = [*previous, {**self.describe(), **(extra or {})}]

    def position_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """(B, T, 1) 0/1 of the positions of ``x`` (B, T, ...) an edit touches now, or None for all of them."""
        p = self._positions
        if p is None:
            return None
        B, T = x.shape[0], x.shape[1]
        if isinstance(p, str):
            mask = torch.zeros(B, T, 1, dtype=x.dtype, device=x.device)
            if p == "last":
                mask[:, -1] = 1
            return mask
        starts = torch.as_tensor(p, device=x.device).reshape(B, 1)
        return (torch.arange(T, device=x.device)[None, :] >= starts).to(x.dtype)[..., None]

    @contextmanager
    def edit_positions(self, positions: Any) -> Iterator[None]:
        """Which positions a position-aware edit touches during the block: ``None`` (every position), ``"last"``
        (the last position of each forward call: the prompt's last token, then each generated one), ``"skip"``
        (none) or a (batch,) tensor of first positions per row (log-likelihood scoring: the answer's first token)."""
        previous, self._positions = self._positions, positions
        try:
            yield
        finally:
            self._positions = previous

    # ---- self-description --------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """A plain, JSON-ready dict: the method, every setting, provenance of the files it read (the artifact's
        content hash, ``<artifact>_sha256``), a label. ``from_description`` rebuilds the intervention from it."""
        settings = {k: v for k, v in self.settings.items() if isinstance(v, (str, int, float, bool)) or v is None}
        out = {"method": self.name, **settings, **self.provenance(), "label": self.label(), "identity": self.identity}
        digest = self.artifact_sha256()
        if digest is not None:
            out[f"{self.artifact}_sha256"] = digest
        return out

    def artifact_sha256(self) -> str | None:
        """sha256 of the artifact file the settings name (None: no file, or an object in memory)."""
        value = self.settings.get(self.artifact) if self.artifact else None
        if not isinstance(value, (str, os.PathLike)) or not value or not Path(value).is_file():
            return None
        stat = Path(value).stat()
        key = (str(value), stat.st_mtime_ns, stat.st_size)
        cached = getattr(self, "_artifact_digest", None)
        if cached is None or cached[0] != key:
            from ..models import file_sha256

            cached = (key, file_sha256(value))
            self._artifact_digest = cached
        return cached[1]

    def provenance(self) -> dict[str, Any]:
        return {}

    @classmethod
    def table_row(cls, described: dict[str, Any], model: str | None = None) -> tuple[str, str]:
        """(method, settings) of a leaderboard row, from a recorded ``describe()`` (no instance: files may be gone);
        ``model``: the evaluated model, for methods whose row says whose files they used (``lineage_row``)."""
        if described.get("identity"):
            return "vanilla", ""
        name, settings = cls.row(described)
        return (cls.lineage_row(name, described, model) if model is not None else name), settings

    @classmethod
    def lineage_row(cls, name: str, described: dict[str, Any], model: str) -> str:
        """The row name given the evaluated model (TruthProbe: the model's own scores, or its base LLM's)."""
        return name

    @classmethod
    def row(cls, described: dict[str, Any]) -> tuple[str, str]:
        """``table_row`` of an intervention that changes something; methods word their own."""
        skip = ("method", "label", "identity", "apply")
        return (str(cls.title or described.get("label") or cls.name),
                ", ".join(f"{k}={v}" for k, v in described.items() if k not in skip and isinstance(v, (int, float, str))))

    def label(self) -> str:
        """A short human name for tables ("ITI (K 48, alpha 15)")."""
        return self.title or self.name


class Baseline(Intervention):
    """``method=none``: no intervention (the plain model through the same code)."""

    name = "none"
    title = "baseline"

    @property
    def identity(self) -> bool:
        return True

    def hooks(self, model: nn.Module) -> list:
        return []

    def bake_weights(self, sites: Any) -> None:
        return None

    def label(self) -> str:
        return "baseline"


REGISTRY: dict[str, type[Intervention]] = {}


def register(cls: type[Intervention]) -> type[Intervention]:
    """Class decorator: make ``cls`` buildable as ``method=<cls.name>``."""
    if not cls.name:
        raise InterventionError(f"{cls.__name__}: expected a method name, found none")
    REGISTRY[cls.name] = cls
    return cls


register(Baseline)


def method_class(method: Any) -> type[Intervention]:
    name = "none" if method is None else method
    if not isinstance(name, str) or name not in REGISTRY:
        raise InterventionError(f"method: expected one of {', '.join(sorted(REGISTRY))}, found {method!r}")
    return REGISTRY[name]


def build(method: Any = "truthprobe", **kwargs: Any) -> Intervention:
    """The one parser: ``build("iti", directions=..., k=48, alpha=15)``."""
    return method_class(method).from_kwargs(**kwargs)


def split_kwargs(kwargs: dict[str, Any], default_method: str = "truthprobe") -> tuple[dict[str, Any], dict[str, Any]]:
    """(the intervention's keyword arguments incl. ``method``, everything else) for harnesses whose
    constructor also takes its own arguments (lm-eval's ``hf``)."""
    method = kwargs.get("method", default_method)
    names = set(method_class(method).param_names())
    ours = {k: v for k, v in kwargs.items() if k in names}
    ours["method"] = method
    return ours, {k: v for k, v in kwargs.items() if k not in names and k != "method"}


def from_description(description: dict[str, Any], beside: "str | os.PathLike | None" = None) -> Intervention:
    """Rebuild an intervention from its recorded ``describe()`` dict.

    The artifact file is the recorded path; a relative one is read against ``beside`` (the folder of the result
    that recorded it), and where the recorded path is gone (the result folder moved) the file of that name beside
    the result is used. Its content must hash to the recorded ``<artifact>_sha256``, or the rebuild fails: it would
    not be the intervention that ran."""
    cls = method_class(description.get("method"))
    kwargs = {k: v for k, v in description.items() if k in cls.param_names()}
    given = kwargs.get(cls.artifact) if cls.artifact else None
    if isinstance(given, str) and given:
        path = Path(given)
        if not path.is_absolute() and beside is not None:
            path = Path(beside) / path
        if not path.is_file() and beside is not None and (Path(beside) / path.name).is_file():
            path = Path(beside) / path.name
        recorded = description.get(f"{cls.artifact}_sha256")
        if recorded and path.is_file():
            from ..models import file_sha256

            found = file_sha256(path)
            if found != recorded:
                raise cls.error(f"{cls.artifact}: {path} is not the file the run read (sha256 {recorded[:12]}... "
                                f"recorded, {found[:12]}... found); the result cannot be rebuilt from it")
        kwargs[cls.artifact] = str(path)
    return cls.from_kwargs(**kwargs)


def relative_descriptions(payload: Any, folder: "str | os.PathLike") -> Any:
    """``payload`` (a result about to be written into ``folder``) with every recorded description's artifact path
    made relative to ``folder`` where the file lives beside the result (under ``folder`` or its parent: a run's
    ``lm_eval/`` files name the run's score file as ``../scores.json``). ``from_description(d, beside=folder)``
    reads it back; the content hash beside it still pins the file."""
    base = Path(folder).resolve()

    def walk(value: Any) -> Any:
        if isinstance(value, list):
            return [walk(v) for v in value]
        if not isinstance(value, dict):
            return value
        out = {k: walk(v) for k, v in value.items()}
        cls = REGISTRY.get(out["method"]) if isinstance(out.get("method"), str) else None
        path = out.get(cls.artifact) if cls is not None and cls.artifact and "label" in out else None
        if isinstance(path, str) and path and Path(path).is_absolute():
            resolved = Path(path).resolve()
            if resolved.is_relative_to(base.parent):
                out[cls.artifact] = os.path.relpath(resolved, base)
        return out

    return walk(payload)


def methods() -> dict[str, type[Intervention]]:
    """Every registered method but the baseline, by ``rank`` then name (the drivers loop over this)."""
    found = sorted((cls.rank, name) for name, cls in REGISTRY.items() if name != "none")
    return {name: REGISTRY[name] for _, name in found}


__all__ = ["APPLY_MODES", "Baseline", "FitData", "Intervention", "Param", "REGISTRY", "build", "from_description",
           "method_class", "methods", "register", "relative_descriptions", "split_kwargs"]
