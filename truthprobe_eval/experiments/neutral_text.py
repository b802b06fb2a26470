"""What an intervention costs on text it should leave alone: next-token cross-entropy and KL divergence.

As the ITI paper reports them: the intervened model's cross-entropy on neutral text, and the KL divergence
KL(P_plain || P_intervened) of the next-token distributions, averaged over every predicted token. The neutral
text here is HaluEval's knowledge paragraphs (Wikipedia-style prose, no question), from rows that no other stage
uses. Every position is intervened (position-aware methods are told so).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..interventions import Intervention


@dataclass
class NeutralTextCost:
    ce_plain: float  # nats per token
    ce: float
    kl: float  # nats per token
    n_texts: int
    n_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def halueval_paragraphs(offset: int, n: int, data: str | None = None) -> list[str]:
    """The knowledge paragraphs of HaluEval QA rows ``[offset, offset + n)``."""
    from ..datasets import load_halueval

    return [row["knowledge"] for row in load_halueval(data, offset=offset, n=n)]


@torch.no_grad()
def neutral_text_cost(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], intervention: Intervention, *,
                      batch_size: int = 8, max_tokens: int = 256) -> NeutralTextCost:
    """Cross-entropy of the plain and the intervened model, and their mean next-token KL, on ``texts``."""
    device = next(model.parameters()).device
    sums = np.zeros(3)
    tokens = 0
    intervention.bind_tokenizer(tokenizer)
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True, truncation=True,
                        max_length=max_tokens)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        plain = model(input_ids=ids, attention_mask=mask).logits.float()
        with intervention.attach(model), intervention.edit_positions(None):
            edited = model(input_ids=ids, attention_mask=mask).logits.float()
        target = ids[:, 1:]
        keep = (mask[:, 1:] * mask[:, :-1]).bool()
        logp, logq = F.log_softmax(plain[:, :-1], -1), F.log_softmax(edited[:, :-1], -1)
        nll_p = -logp.gather(-1, target[..., None])[..., 0]
        nll_q = -logq.gather(-1, target[..., None])[..., 0]
        kl = (logp.exp() * (logp - logq)).sum(-1)
        sums += [nll_p[keep].sum().item(), nll_q[keep].sum().item(), kl[keep].sum().item()]
        tokens += int(keep.sum())
    ce_plain, ce, kl = (sums / max(tokens, 1)).tolist()
    return NeutralTextCost(ce_plain, ce, kl, len(texts), tokens)


__all__ = ["NeutralTextCost", "halueval_paragraphs", "neutral_text_cost"]
