"""Generation through the shared-prefix KV cache and the first-step margins, on the real SmolLM2 and gemma-3-270m:
the same replies as HFLM's plain path (ungated and gated), batch size leaves the parsed replies unchanged, and the
recorded Yes-minus-No margin equals the one a plain forward pass gives."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from lm_eval.api.instance import Instance
from truthprobe_eval.model_adapters.lm_eval_truthgated import TruthGatedLM
from truthprobe_eval.tasks.halueval import truthprobe_protocol as tp

from truthprobe_eval import TruthScores
from truthprobe_eval.datasets import load_halueval
from truthprobe_eval.generation import answer_token_ids, common_prefix_length, move_prefix_left

GEN_KWARGS = {"until": [tp.STOP], "max_gen_toks": tp.MAX_NEW_TOKENS, "do_sample": False}


def test_common_prefix_and_rearranged_batch():
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [5, 6, 7, 9, 9, 9], [0, 5, 6, 7, 1, 2]])
    mask = (torch.arange(6)[None] >= torch.tensor([[2], [0], [1]])).long()
    assert common_prefix_length(ids, mask) == 3
    new_ids, new_mask = move_prefix_left(ids, mask, 3, pad_token_id=0)
    assert new_ids.tolist() == [[5, 6, 7, 0, 0, 8], [5, 6, 7, 9, 9, 9], [5, 6, 7, 0, 1, 2]]
    assert new_mask.tolist() == [[1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 1, 1]]
    # every row keeps at least one token to run; right padding is not handled
    assert common_prefix_length(torch.tensor([[5, 6], [5, 6]]), torch.ones(2, 2, dtype=torch.long)) == 1
    assert common_prefix_length(ids, torch.tensor([[1, 1, 1, 1, 1, 0]] * 3)) == 0


def _requests(n: int, offset: int = 292) -> list[Instance]:
    rows = load_halueval(None, offset=offset, n=n)
    answers = [r["hallucinated_answer"] if i % 2 else r["right_answer"] for i, r in enumerate(rows)]
    return [Instance("generate_until", {}, (tp.prompt(r["question"], a, r["knowledge"]), dict(GEN_KWARGS)), i)
            for i, (r, a) in enumerate(zip(rows, answers))]


def _replies(lm, requests) -> list[str]:
    return lm.generate_until(requests, disable_tqdm=True)


@pytest.fixture(scope="module")
def smollm2_scores(tmp_path_factory):
    values = np.random.default_rng(5).uniform(0.5, 0.95, size=(30, 9))
    return TruthScores(values, meta={"model": "synthetic-smollm2"})


@pytest.mark.slow
def test_prefix_cache_replies_equal_the_plain_path(smollm2, smollm2_scores):
    model, tokenizer = smollm2
    requests = _requests(24)
    lm = TruthGatedLM(pretrained=model, tokenizer=tokenizer, gate="none", batch_size=8, device="cpu")
    plain = TruthGatedLM(pretrained=model, tokenizer=tokenizer, gate="none", batch_size=8, device="cpu",
                         prefix_cache="false")
    calls = 0
    for gate in ({"gate": "none"}, {"scores": smollm2_scores, "alpha": 0.3, "norm": "minmax"}):
        lm.set_gate(**gate)
        plain.set_gate(**gate)
        fast = _replies(lm, requests)
        calls += lm.generation_counts["batches"]  # generate calls: 3 batches, a batch split by length counts more
        assert fast == _replies(plain, requests), gate
    g = lm._prefix_generator
    assert calls >= 6 and g.prefix_passes >= 2 and g.prefix_passes + g.reused == calls  # set_gate drops the cache
    assert plain._prefix_generator is None


@pytest.mark.slow
def test_batching_leaves_parsed_replies_unchanged(smollm2):
    model, tokenizer = smollm2
    requests = _requests(12, offset=400)
    batched = TruthGatedLM(pretrained=model, tokenizer=tokenizer, gate="none", batch_size=6, device="cpu")
    single = TruthGatedLM(pretrained=model, tokenizer=tokenizer, gate="none", batch_size=1, device="cpu",
                          prefix_cache=False)
    a, b = _replies(batched, requests), _replies(single, requests)
    assert [tp.parse_reply(r) for r in a] == [tp.parse_reply(r) for r in b]


@pytest.mark.slow
def test_margins_equal_a_plain_forward_pass(smollm2):
    model, tokenizer = smollm2
    requests = _requests(4, offset=500)
    lm = TruthGatedLM(pretrained=model, tokenizer=tokenizer, gate="none", batch_size=4, device="cpu")
    _replies(lm, requests)
    yes = answer_token_ids(tokenizer, ("Yes", "yes"))
    no = [i for i in answer_token_ids(tokenizer, ("No", "no")) if i not in yes]
    assert len(yes) >= 2 and len(no) >= 2
    for request in requests:
        context = request.args[0]
        with torch.no_grad():
            logits = model(**tokenizer(context, return_tensors="pt")).logits[0, -1]
        expected = float(torch.logsumexp(logits[yes], 0) - torch.logsumexp(logits[no], 0))
        assert lm.yes_no_margins[context] == pytest.approx(expected, abs=1e-3)


@pytest.mark.slow
def test_prefix_cache_on_gemma3():
    from truthprobe_eval import load_model

    model, tokenizer = load_model("gemma3-270m")
    requests = _requests(8, offset=600)
    lm = TruthGatedLM(pretrained=model, tokenizer=tokenizer, gate="none", batch_size=4, device="cpu")
    plain = TruthGatedLM(pretrained=model, tokenizer=tokenizer, gate="none", batch_size=4, device="cpu",
                         prefix_cache=False)
    assert _replies(lm, requests) == _replies(plain, requests)
    g = lm._prefix_generator
    assert g.prefix_passes >= 1 and g.prefix_passes + g.reused == 2
