"""Truth neurons on the real SmolLM2: `truthprobe neurons find`, the stock lm_eval CLI with method=neurons, and
bake = hooks on the real weights."""
from __future__ import annotations

import copy
from pathlib import Path

import lm_eval_cli
import numpy as np
import pytest
import torch

from truthprobe_eval.interventions import build
from truthprobe_eval.neuron_scores import NeuronScores


@pytest.fixture(scope="module")
def csv(shared_dir) -> str:
    return str(shared_dir / "data" / "truthfulqa" / "TruthfulQA.csv")


@pytest.fixture(scope="module")
def found(csv, tmp_path_factory) -> tuple[Path, str]:
    from truthprobe_eval.cli import main

    out = tmp_path_factory.mktemp("neurons") / "neurons.json"
    args = ["neurons", "find", "--truthfulqa-csv", csv, "--questions", "8", "--half", "1", "--steps", "4",
            "--p", "0.2", "--out", str(out), "--quiet"]
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(args) == 0
    return out, printed.getvalue()


@pytest.mark.slow
def test_find_command_writes_the_file_and_the_map(found):
    from truthprobe_eval.probing.iti import question_halves

    path, printed = found
    made = NeuronScores.load(path)
    assert made.shape == (30, 1536) and made.meta["half"] == "1" and made.meta["steps"] == 4
    assert made.meta["questions"] == question_halves(813, 0, 8)[1] and made.meta["site"] == "mlp_activation"
    assert 0 < made.count < made.mean.size and np.abs(made.mean).max() > 0
    assert path.with_suffix(".png").stat().st_size > 1000
    assert f"{made.count} of 46080 selected from 4 questions" in printed and "wrote" in printed


def test_find_command_bad_input(csv, tmp_path, capsys):
    from truthprobe_eval.cli import main

    assert main(["neurons", "find", "--truthfulqa-csv", csv, "--p", "2", "--out", str(tmp_path / "n.json")]) == 2
    assert "expected --p in (0, 1]" in capsys.readouterr().err
    assert main(["neurons", "find", "--truthfulqa-csv", str(tmp_path / "none.csv"), "--out", str(tmp_path / "n.json")]) == 2
    assert "expected a CSV file at" in capsys.readouterr().err


@pytest.mark.slow
def test_bake_equals_hooks_on_the_real_weights(smollm2, found):
    model, tok = smollm2
    suppress = build("neurons", neurons=str(found[0]))
    ids = tok("The capital of France is Paris, and the capital of Italy is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with suppress.attach(model):
            hooked = model(input_ids=ids).logits
        assert torch.equal(model(input_ids=ids).logits, plain)
        baked = build("neurons", neurons=str(found[0]), apply="bake").bake(copy.deepcopy(model))
        assert torch.allclose(baked(input_ids=ids).logits, hooked, atol=1e-4)
    assert (hooked - plain).abs().max() > 1e-3


@pytest.mark.slow
def test_lm_eval_cli_runs_suppression(found, csv, tmp_path):
    described = lm_eval_cli.results(
        "intervened", f"pretrained=smollm2-135m-instruct,method=neurons,neurons={found[0]},control=random,seed=2",
        "truthfulqa_local_mc2", tmp_path / "out", "--batch_size", "4",
        metadata={"truthfulqa_csv": csv, "truthfulqa_rows": [5, 9]})["config"]["intervention"]
    made = NeuronScores.load(found[0])
    assert (described["method"], described["control"], described["seed"], described["factor"]) == ("neurons", "random", 2, 0.0)
    assert described["n_neurons"] == made.count
    assert described["layer_counts"] == {str(k): int(v) for k, v in enumerate(made.layer_counts()) if v}
