"""ITI on the real SmolLM2 and TruthfulQA: fitting, the stock lm_eval CLI with method=iti, answer positions in
log-likelihood scoring (with and without the shared-prefix cache), neutral-text cost, and the CLI commands."""
from __future__ import annotations

import json

import lm_eval_cli
import numpy as np
import pytest
import torch
from lm_eval.api.instance import Instance

from truthprobe_eval.directions import ITIDirections
from truthprobe_eval.interventions import build

PROMPT = ("Q: What is the capital of France?\nA: Paris.\n\nQ: What is 2+2?\nA: Four.\n\nQ: Who wrote Hamlet?\n"
          "A: Shakespeare.\n\nQ: Where do penguins live?\nA:")
CONTINUATIONS = [" In Antarctica.", " In the Arctic and in zoos.", " Mostly in the southern hemisphere.", " Nowhere."]


@pytest.fixture(scope="module")
def csv(shared_dir) -> str:
    return str(shared_dir / "data" / "truthfulqa" / "TruthfulQA.csv")


@pytest.fixture(scope="module")
def directions(smollm2, csv, tmp_path_factory) -> str:
    from truthprobe_eval.probing.iti import fit_iti, question_halves

    train, _ = question_halves(813, seed=0, limit=16)
    made = fit_iti(*smollm2, train, csv=csv, folds=2, progress=False)
    return str(made.save(tmp_path_factory.mktemp("iti") / "iti.json"))


def test_fit_on_real_activations(directions):
    made = ITIDirections.load(directions)
    assert made.shape == (30, 9, 64)
    assert made.meta["site"] == "o_proj_input" and made.meta["n_questions"] == 8 and made.meta["folds"] == 2
    assert (made.sigma > 0).all() and ((made.accuracy >= 0) & (made.accuracy <= 1)).all()
    assert made.accuracy.max() > 0.6  # some head separates true from false answers better than chance


def _loglikelihoods(lm) -> list[float]:
    reqs = [Instance("loglikelihood", {}, (PROMPT, c), i) for i, c in enumerate(CONTINUATIONS)]
    return [r[0] for r in lm.loglikelihood(reqs)]


def test_answer_positions_in_loglikelihood_scoring(smollm2, directions):
    """ITI shifts the answer's tokens only; with or without the prefix cache; equal to editing by hand."""
    from truthprobe_eval.model_adapters.lm_eval_truthgated import TruthGatedLM

    model, tok = smollm2
    iti = build("iti", directions=directions, k=48, alpha=15)
    cached = TruthGatedLM(pretrained=model, tokenizer=tok, intervention=iti, batch_size=4)
    plain_path = TruthGatedLM(pretrained=model, tokenizer=tok, intervention=iti, batch_size=4, prefix_cache=False)
    with_cache, without = _loglikelihoods(cached), _loglikelihoods(plain_path)
    assert cached._prefix_scorer.prefix_passes >= 1
    assert np.allclose(with_cache, without, atol=1e-3)
    by_hand = []
    for c in CONTINUATIONS:
        ctx = cached.tok_encode(PROMPT)
        cont = cached.tok_encode(PROMPT + c)[len(ctx):]
        ids = torch.tensor([ctx + cont])
        with torch.no_grad(), iti.attach(model), iti.edit_positions(torch.tensor([len(ctx)])):
            logp = torch.log_softmax(model(ids[:, :-1]).logits, -1)
        by_hand.append(float(sum(logp[0, len(ctx) - 1 + j, t] for j, t in enumerate(cont))))
    assert np.allclose(with_cache, by_hand, atol=1e-3)
    base = _loglikelihoods(TruthGatedLM(pretrained=model, tokenizer=tok, method="none", batch_size=4))
    assert max(abs(a - b) for a, b in zip(base, with_cache)) > 0.1
    everywhere = _loglikelihoods(TruthGatedLM(pretrained=model, tokenizer=tok, batch_size=4,
                                              intervention=iti.with_settings(positions="all")))
    assert max(abs(a - b) for a, b in zip(everywhere, with_cache)) > 1e-3  # the prompt shifted too: different


def test_neutral_text_cost(smollm2, directions):
    from truthprobe_eval.experiments.neutral_text import halueval_paragraphs, neutral_text_cost

    model, tok = smollm2
    texts = halueval_paragraphs(9000, 3)
    none = neutral_text_cost(model, tok, texts, build("none"))
    assert none.kl == pytest.approx(0.0, abs=1e-6) and none.ce == pytest.approx(none.ce_plain)
    iti = neutral_text_cost(model, tok, texts, build("iti", directions=directions, k=48, alpha=15))
    assert iti.kl > 0.01 and iti.ce_plain == pytest.approx(none.ce_plain) and iti.n_tokens == none.n_tokens > 50


@pytest.mark.slow
def test_lm_eval_cli_runs_iti_on_truthfulqa_halves(directions, csv, tmp_path):
    out = tmp_path / "out"
    results = lm_eval_cli.results("intervened", f"pretrained=smollm2-135m-instruct,method=iti,directions={directions},k=48,alpha=15",
                                  "truthfulqa_local_mc2", out, "--batch_size", "4", "--log_samples",
                                  metadata={"truthfulqa_csv": csv, "truthfulqa_rows": [5, 9, 12]})
    described = results["config"]["intervention"]
    assert (described["method"], described["k"], described["alpha"], described["positions"]) == ("iti", 48, 15.0, "answer")
    assert len(described["heads"]) == 48 and results["config"]["model"] == "intervened"
    samples = [json.loads(x) for x in next(out.rglob("samples_truthfulqa_local_mc2_*.jsonl")).read_text().splitlines()]
    assert sorted(s["doc"]["row"] for s in samples) == [5, 9, 12]
    assert 0.0 <= results["results"]["truthfulqa_local_mc2"]["acc,none"] <= 1.0


@pytest.mark.slow
def test_iti_fit_command_and_bad_input(csv, tmp_path, capsys):
    from truthprobe_eval.cli import main

    out = tmp_path / "d.json"
    assert main(["iti", "fit", "--truthfulqa-csv", csv, "--questions", "12", "--half", "1", "--folds", "2",
                 "--out", str(out), "--quiet"]) == 0
    made = ITIDirections.load(out)
    assert made.meta["half"] == "1" and made.meta["n_questions"] == 6
    assert "wrote" in capsys.readouterr().out
    assert main(["iti", "fit", "--truthfulqa-csv", str(tmp_path / "none.csv"), "--out", str(out)]) == 2
    assert "expected a CSV file at" in capsys.readouterr().err
