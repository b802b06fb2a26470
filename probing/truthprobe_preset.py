"""TruthProbe's two presets: how Truth Scores are probed and how the HaluEval judge's replies are parsed.

``paper`` is the published pipeline (miso-choi/TruthProbe, read from its code): HaluEval rows 0-291 with **one**
answer each (292 samples; which answer each row gave is not published, so it is drawn per row from seed 42 by
``draw_hallucinated``), the prompt ``Context:\\n{c}\\n\\nQuestion: {q}\\nAnswer: {a}`` (fields stripped) one at a
time, the o_proj input at the last token, the published trainer (``trainer="paper"``: zero init, AdamW, in-order
batches, one loss mean over batch, layers and heads; 200 epochs), ``KFold(5, shuffle=True, random_state=42)`` over
the samples, and the judge's replies parsed by ``^(yes|no)\\b[.,]?``. One known difference: the published probing ran
the model in float16 on a GPU; here the model runs in the dtype given (float32 on a CPU).

``ours`` keeps both answers of each row (584 samples: twice the data, paired), grouped stratified folds (a row's two
answers never straddle a split, so no validation answer has its twin in training), the exact L2 logistic solver
(the unique optimum, no dependence on optimizer settings; ``docs/probe_trainers.md``), batched extraction, and the
stricter parse (``yes``/``no`` followed by ``.``, ``,``, a space or the end: "Yes!" is unparseable, scored as "no").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..presets import check_preset


@dataclass(frozen=True)
class TruthProbePreset:
    name: str
    answers: str          # "both": right and hallucinated answer of every row; "drawn": one per row
    answer_seed: int      # seed of the per-row draw (answers="drawn")
    trainer: str          # probing/trainers.py
    fold_rule: str        # "grouped" (ours) or "kfold" (published)
    fold_seed: int
    batch_size: int       # extraction batch; 1 = one prompt at a time
    parse: str            # the judge's reply parse (tasks/halueval/truthprobe_protocol.py)
    strip: bool           # strip context, question and answer (the published extraction does)
    why: str

    def to_dict(self) -> dict:
        return asdict(self)

    def data_options(self) -> dict:
        """The keywords ``halueval_examples`` / ``load_examples`` take for HaluEval data under this preset."""
        return {"answers": self.answers, "answer_seed": self.answer_seed, "strip": self.strip}

    def meta(self) -> dict:
        """What a score file made under this preset records of it."""
        return {"preset": self.name, "answers": self.answers, "answer_seed": self.answer_seed}


PRESETS = {
    "paper": TruthProbePreset("paper", answers="drawn", answer_seed=42, trainer="paper", fold_rule="kfold",
                              fold_seed=42, batch_size=1, parse="paper", strip=True,
                              why="the published pipeline, to compare with the paper"),
    "ours": TruthProbePreset("ours", answers="both", answer_seed=0, trainer="exact", fold_rule="grouped",
                             fold_seed=0, batch_size=8, parse="ours", strip=False,
                             why="twice the data with no twin across folds, and the exact optimum"),
}


def truthprobe_preset(name: str) -> TruthProbePreset:
    return PRESETS[check_preset(name)]


__all__ = ["PRESETS", "TruthProbePreset", "truthprobe_preset"]
