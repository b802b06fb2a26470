"""RVE on text with the real SmolLM2: the knowledge-paragraph span, ARS from HaluEval pairs through
`truthprobe ars score`, and `method=rve,span=context` through the stock lm_eval CLI on the TruthProbe protocol."""
from __future__ import annotations

import lm_eval_cli
import pytest
import torch

from truthprobe_eval import TruthScores
from truthprobe_eval.interventions import build


def test_the_context_span_is_the_knowledge_paragraph(smollm2):
    from truthprobe_eval.tasks.halueval.truthprobe_protocol import prompt

    from truthprobe_eval.spans import context_span

    _, tok = smollm2
    knowledge = "The Eiffel Tower is in Paris and was finished in 1889."
    texts = [prompt("Where is the Eiffel Tower?", "In Paris.", knowledge), "no markers here"]
    ids = [tok(t)["input_ids"] for t in texts]
    width = max(map(len, ids))
    batch = torch.tensor([[tok.pad_token_id] * (width - len(i)) + i for i in ids])  # left-padded
    mask = context_span(tok, "#Knowledge:", "#Question#:")(batch)
    assert not mask[1].any()
    marked = tok.decode(batch[0][mask[0]])
    assert marked.strip() == knowledge and "#Question#" not in marked
    with pytest.raises(Exception, match="span_start and span_end"):
        context_span(tok, "", "x")


@pytest.mark.slow
def test_ars_command_and_rve_through_the_lm_eval_cli(smollm2, tmp_path, capsys):
    from truthprobe_eval.cli import main

    ars = tmp_path / "ars.json"
    assert main(["ars", "score", "--halueval-rows", "3", "--out", str(ars), "--quiet"]) == 0
    assert "most sensitive heads" in capsys.readouterr().out
    scores = TruthScores.load(ars)
    assert scores.shape == (30, 9) and scores.meta["kind"] == "ars" and scores.meta["n_pairs"] == 3
    assert (scores.values >= 0).all() and (scores.values <= 2).all() and scores.values.max() > 0
    assert ars.with_suffix(".png").stat().st_size > 1000
    assert main(["ars", "score", "--halueval-rows", "3", "--span", "image", "--out", str(ars)]) == 2
    assert "expected pairs with images" in capsys.readouterr().err

    model, tok = smollm2
    from truthprobe_eval.model_adapters.lm_eval_truthgated import TruthGatedLM
    from truthprobe_eval.tasks.halueval.truthprobe_protocol import prompt

    rve = build("rve", ars=str(ars), span="context", layers="12-16", k=2, beta=2.0, alpha=0.1)
    lm = TruthGatedLM(pretrained=model, tokenizer=tok, intervention=rve, batch_size=2)
    text = prompt("Where is the Eiffel Tower?", "In Rome.", "The Eiffel Tower is in Paris, France, since 1889.")
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        plain = model(input_ids=ids).logits[0, -1]
        with rve.attach(model):
            assert rve._tokenizer is tok  # the harness handed its tokenizer over
            edited = model(input_ids=ids).logits[0, -1]
    assert not torch.allclose(plain, edited) and lm.intervention is rve

    results = lm_eval_cli.results(
        "intervened", f"pretrained=smollm2-135m-instruct,method=rve,ars={ars},span=context,layers=12-16,k=2",
        "halueval_truthprobe_seed0", tmp_path / "out", "--batch_size", "2",
        metadata={"halueval_offset": 342, "halueval_n": 2})
    described = results["config"]["intervention"]
    assert (described["method"], described["span"], described["layers"], described["k"]) == ("rve", "context", "12-16", 2)
    assert described["ars_heads"]["14"]["sensitive"] and "halueval_truthprobe_seed0" in results["results"]


