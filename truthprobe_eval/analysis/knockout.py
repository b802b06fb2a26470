"""Head knockout: does zeroing the heads a score map ranks highest (ARS) hurt more than zeroing as many random heads?

The RVE paper validates ARS this way: it masks the top-K action-relation-sensitive heads, and as many random
heads, and compares the accuracy drops. Here a head is knocked out by zeroing its output: the gate machinery of
``gating`` (``register_gate_hooks``) at the site ``o_proj_input``, the true per-head outputs before the output
projection, with a gate of 0 on the chosen heads and 1 elsewhere (multiplying by 1 is exact, so every other head
is untouched).

Which heads:

- **top-K**: the K highest-scoring heads of the (L, H) map (ties: lower layer, then lower head first);
- **K random heads**: a uniform draw of K distinct heads from the *same pool*, once per seed (``seed``,
  ``seed + 1``, ...; ``numpy.random.default_rng(seed)``), so draws are reproducible. A draw may share heads with the
  top-K (a uniform random control); each run records how many it shares.
- **the pool**: by default every head of the model. ARS is scored for every head, and the check validates that
  ranking as a whole, so the top-K and the random heads are taken over the whole model. ``layers`` (e.g. RVE's
  edited layers, "12-16") restricts both to the heads of those layers, for a within-layer comparison. (The paper
  does not say which pool its random heads come from; the pool is recorded in the result.)

``head_knockout(model, scores, evaluate, k=...)`` runs the baseline, the top-K knockout and each random draw through
``evaluate(name, intervention)``, a callable that evaluates with the intervention attached (``HaluEvalJudge``
attaches it itself; ``attached(model, score)`` wraps a plain scoring function), and reports each run's metric and
its drop from the baseline (baseline minus knocked out: positive is worse), with the mean, standard deviation and
range of the random draws' drops. ``truthprobe ars knockout`` runs it on HaluEval judge rows.
"""
from __future__ import annotations

import math
import statistics
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from torch import nn

from ..errors import TruthProbeError
from ..interventions.base import Baseline, Intervention, Param

Head = tuple[int, int]
SITE = "o_proj_input"


class KnockoutError(TruthProbeError, ValueError):
    """Knockout settings that cannot work."""


# ---- which heads -------------------------------------------------------------------------------------------

def parse_heads(text: str) -> list[Head]:
    """``"14.3,14.5"`` -> [(14, 3), (14, 5)] (layer.head pairs, comma-separated; sorted, duplicates dropped)."""
    out: set[Head] = set()
    for part in str(text or "").split(","):
        part = part.strip()
        if not part:
            continue
        layer, sep, head = part.partition(".")
        try:
            if not sep:
                raise ValueError
            out.add((int(layer), int(head)))
        except ValueError:
            raise KnockoutError(f"heads: expected LAYER.HEAD pairs separated by commas, found {part!r}") from None
    return sorted(out)


def format_heads(heads: Sequence[Head]) -> str:
    """[(14, 3), (14, 5)] -> ``"14.3,14.5"``."""
    return ",".join(f"{layer}.{head}" for layer, head in sorted(heads))


def head_pool(shape: tuple[int, int], layers: Sequence[int] | None = None) -> list[Head]:
    """The heads knockouts choose from: every head of the model, or of ``layers``."""
    num_layers, num_heads = shape
    chosen = range(num_layers) if layers is None else sorted(set(int(x) for x in layers))
    bad = [x for x in chosen if not 0 <= x < num_layers]
    if bad:
        raise KnockoutError(f"layers: expected 0 to {num_layers - 1}, found {bad}")
    return [(layer, head) for layer in chosen for head in range(num_heads)]


def _check_k(k: int, pool: Sequence[Head]) -> None:
    if not 1 <= k <= len(pool):
        raise KnockoutError(f"k: expected 1 to {len(pool)} (the heads of the pool), found {k}")


def top_heads(values: np.ndarray, k: int, layers: Sequence[int] | None = None) -> list[Head]:
    """The ``k`` highest-scoring heads of an (L, H) map within the pool, best first (ties: lower layer, head)."""
    values = np.asarray(values, dtype=float)
    pool = head_pool(values.shape, layers)
    _check_k(k, pool)
    ranked = sorted(pool, key=lambda lh: (-values[lh], lh[0], lh[1]))
    return ranked[:k]


def random_heads(shape: tuple[int, int], k: int, seed: int, layers: Sequence[int] | None = None) -> list[Head]:
    """``k`` distinct heads drawn uniformly from the pool with ``numpy.random.default_rng(seed)``, sorted."""
    pool = head_pool(shape, layers)
    _check_k(k, pool)
    picked = np.random.default_rng(seed).choice(len(pool), size=k, replace=False)
    return sorted(pool[int(i)] for i in picked)


def knockout_gates(shape: tuple[int, int], heads: Sequence[Head]) -> np.ndarray:
    """The (L, H) gate array: 0 on ``heads``, 1 elsewhere."""
    gates = np.ones(shape, dtype=np.float64)
    for layer, head in heads:
        if not (0 <= layer < shape[0] and 0 <= head < shape[1]):
            raise KnockoutError(f"heads: expected heads of a ({shape[0]}, {shape[1]}) model, found {layer}.{head}")
        gates[layer, head] = 0.0
    return gates


@contextmanager
def zero_heads(model: nn.Module, heads: Sequence[Head]) -> Iterator[np.ndarray]:
    """Zero the outputs of ``heads`` (their chunks at the output projection's input) while the block runs; yields
    the gate array."""
    from ..architectures import locate_heads
    from ..gating import register_gate_hooks

    sites = locate_heads(model)
    gates = knockout_gates(sites.shape, heads)
    handles = register_gate_hooks(sites, gates, SITE)
    try:
        yield gates
    finally:
        for handle in handles:
            handle.remove()


class HeadKnockout(Intervention):
    """Zero the outputs of some heads, as an intervention (so the harnesses attach it and results record it).

    Not a registered method (``method=...`` does not build it): an analysis tool. ``heads``: ``"14.3,14.5"``;
    ``what``: the label of the run ("top-5 ARS heads zeroed").
    """

    name = "head_knockout"
    params = (
        Param("heads", str, "", help="heads zeroed: LAYER.HEAD pairs, comma-separated"),
        Param("what", str, "", help="the run's label"),
    )

    @classmethod
    def of(cls, heads: Sequence[Head], what: str = "") -> "HeadKnockout":
        return cls.from_kwargs(heads=format_heads(heads), what=what)

    def load(self) -> None:
        self.head_list = parse_heads(self.settings["heads"])

    @property
    def identity(self) -> bool:
        return not self.head_list

    def check_fits(self, model: nn.Module) -> None:
        from ..architectures import locate_heads

        self.check_shape(*locate_heads(model).shape, "the model")

    def check_shape(self, num_layers: int, num_heads: int, name: str) -> None:
        knockout_gates((num_layers, num_heads), self.head_list)

    def hooks(self, model: nn.Module) -> list:
        from ..architectures import locate_heads
        from ..gating import register_gate_hooks

        sites = locate_heads(model)
        return register_gate_hooks(sites, knockout_gates(sites.shape, self.head_list), SITE)

    def provenance(self) -> dict[str, Any]:
        return {"n_heads": len(self.head_list), "site": SITE}

    @classmethod
    def row(cls, described: dict[str, Any]) -> tuple[str, str]:
        return str(described.get("what") or described.get("label") or cls.name), f"heads={described.get('heads', '')}"

    def label(self) -> str:
        return self.settings["what"] or f"{len(self.head_list)} heads zeroed"


# ---- the analysis ------------------------------------------------------------------------------------------

Evaluate = Callable[[str, Intervention], "float | Mapping[str, float]"]


def attached(model: nn.Module, score: Callable[[], "float | Mapping[str, float]"]) -> Evaluate:
    """An ``evaluate`` for ``head_knockout`` from a plain scoring function of ``model``: each run calls ``score()``
    with its intervention attached."""
    def evaluate(_name: str, intervention: Intervention):
        with intervention.attach(model):
            return score()

    return evaluate


@dataclass
class KnockoutRun:
    name: str  # file-safe: baseline, top5_ars, random5_draw0
    label: str  # "baseline", "top-5 ARS heads zeroed", "5 random heads zeroed (draw 0)"
    kind: str  # baseline, top, random
    heads: list[Head]
    metrics: dict[str, float]
    value: float  # the chosen metric
    drop: float  # baseline value minus this one: positive is worse
    seed: int | None = None
    shared_with_top: int = 0  # heads this run shares with the top-K


@dataclass
class KnockoutResult:
    k: int
    metric: str
    pool: str  # "model" or "layers 12-16"
    seeds: list[int]
    scores_meta: dict[str, Any]
    baseline: KnockoutRun
    top: KnockoutRun
    random: list[KnockoutRun] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The top-K drop, the random draws' mean, sample std, min and max drop, and how many draws dropped at least
        as much as the top-K."""
        drops = [r.drop for r in self.random]
        return {"metric": self.metric, "k": self.k, "pool": self.pool, "baseline": self.baseline.value,
                "top_drop": self.top.drop, "random_drop_mean": float(np.mean(drops)),
                "random_drop_std": statistics.stdev(drops) if len(drops) > 1 else float("nan"),
                "random_drop_min": float(min(drops)), "random_drop_max": float(max(drops)),
                "random_at_least_top": int(sum(d >= self.top.drop for d in drops)), "draws": len(drops)}

    @property
    def runs(self) -> list[KnockoutRun]:
        return [self.baseline, self.top, *self.random]

    def table(self) -> tuple[list[str], list[list[Any]]]:
        headers = ["run", self.metric, "drop vs baseline", "heads zeroed", "shared with top-K"]
        rows = [[r.label, r.value, r.drop if r.kind != "baseline" else None,
                 format_heads(r.heads).replace(",", ", ") or "none",
                 r.shared_with_top if r.kind == "random" else None] for r in self.runs]
        return headers, rows

    def markdown(self, title: str | None = None) -> str:
        from .reports import markdown_table

        s = self.summary()
        title = title or f"Head knockout: top-{self.k} heads vs {self.k} random heads ({self.pool})"
        std = "n/a" if math.isnan(s["random_drop_std"]) else f"{s['random_drop_std']:.4f}"
        lines = [f"# {title}", "",
                 f"{self.metric}: baseline {s['baseline']:.4f}; top-{self.k} zeroed: drop {s['top_drop']:.4f}; "
                 f"{s['draws']} random draws: mean drop {s['random_drop_mean']:.4f} (std {std}, range "
                 f"{s['random_drop_min']:.4f} to {s['random_drop_max']:.4f}); {s['random_at_least_top']} of "
                 f"{s['draws']} draws dropped at least as much as the top-{self.k}.", "",
                 markdown_table(*self.table()), ""]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"format": "truthprobe-head-knockout", "summary": self.summary(), "k": self.k, "metric": self.metric,
                "pool": self.pool, "seeds": self.seeds, "site": SITE, "scores_meta": self.scores_meta,
                "runs": [{**asdict(r), "heads": [list(h) for h in r.heads]} for r in self.runs]}


def _value(result: "float | Mapping[str, float]", metric: str) -> tuple[float, dict[str, float]]:
    if isinstance(result, Mapping):
        if metric not in result:
            raise KnockoutError(f"metric: the evaluation returned {', '.join(map(str, result))}, not {metric!r}")
        return float(result[metric]), {str(k): float(v) for k, v in result.items()}
    return float(result), {metric: float(result)}


def head_knockout(model: nn.Module, scores: Any, evaluate: Evaluate, *, k: int, draws: int = 5, seed: int = 0,
                  layers: Sequence[int] | None = None, metric: str = "acc", label: str = "ARS",
                  log: Callable[[str], None] | None = None) -> KnockoutResult:
    """The baseline, the top-``k`` heads of ``scores`` zeroed, and ``draws`` draws of ``k`` random heads zeroed
    (seeds ``seed`` .. ``seed + draws - 1``), each through ``evaluate(name, intervention)`` (a number, or a dict of
    metrics holding ``metric``). ``scores``: a ``TruthScores`` (e.g. an ARS file, loaded) or its path, checked
    against ``model``'s shape; ``layers``: the pool (None: the whole model); ``label`` names the score map in the
    run labels ("top-5 ARS heads zeroed")."""
    from ..architectures import locate_heads, model_name
    from ..scores import load_scores

    if draws < 1:
        raise KnockoutError(f"draws: expected at least 1 random draw, found {draws}")
    loaded = load_scores(scores)
    sites = locate_heads(model)
    loaded.check_fits(sites.num_layers, sites.num_heads, model_name(model))
    top = top_heads(loaded.values, k, layers)  # a bad k or layer fails before any run
    seeds = [int(seed) + i for i in range(draws)]
    drawn = [random_heads(loaded.shape, k, s, layers) for s in seeds]
    pool = "model" if layers is None else "layers " + ",".join(str(x) for x in sorted(set(layers)))
    say = log or (lambda _text: None)

    def run(name: str, what: str, kind: str, heads: list[Head], made: Intervention, base: float | None,
            draw_seed: int | None = None) -> KnockoutRun:
        value, metrics = _value(evaluate(name, made), metric)
        drop = 0.0 if base is None else base - value
        say(f"{what}: {metric} {value:.4f}" + ("" if base is None else f" (drop {drop:+.4f})"))
        return KnockoutRun(name, what, kind, heads, metrics, value, drop, draw_seed, len(set(heads) & set(top)))

    baseline = run("baseline", "baseline", "baseline", [], Baseline(), None)
    what = f"top-{k} {label} heads zeroed"
    top_run = run(f"top{k}_{label.lower()}", what, "top", top, HeadKnockout.of(top, what), baseline.value)
    result = KnockoutResult(k, metric, pool, seeds, dict(loaded.meta), baseline, top_run)
    for i, (s, heads) in enumerate(zip(seeds, drawn)):
        what = f"{k} random heads zeroed (draw {i})"
        result.random.append(run(f"random{k}_draw{i}", what, "random", heads, HeadKnockout.of(heads, what),
                                 baseline.value, s))
    return result


__all__ = ["HeadKnockout", "KnockoutError", "KnockoutResult", "KnockoutRun", "SITE", "attached", "format_heads",
           "head_knockout", "head_pool", "knockout_gates", "parse_heads", "random_heads", "top_heads", "zero_heads"]
