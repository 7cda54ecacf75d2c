"""Context following: does a model answer from a context that contradicts what it memorised?

The zoo's hallucination test (:func:`lineage_lens.zoo.world.heldout_counterfactual_items`): each
item is ``(context, question, context answer, prior answer)``, the context contradicting the
memorised fact. After the paper's prompt (``Context: ... Answer:``,
:data:`lineage_lens.data.PAPER_TEMPLATE`) the model *follows the context* when the next-token
logit of the context's answer beats the memorised one.

* :func:`followed` -- per item, whether the context answer wins (one padded forward pass);
* :func:`context_following` -- the share of items followed;
* :class:`ContextFollowing` -- the same as a sweep evaluator
  (:func:`lineage_lens.sweep.gating_sweep`): the rate with its Wilson interval, and the
  per-item outcomes as the paired statistic ``context_following``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Bool

from lineage_lens.batching import check_context, check_logits
from lineage_lens.data import PAPER_TEMPLATE
from lineage_lens.errors import DataError
from lineage_lens.evals._common import gate_context
from lineage_lens.stats import proportion_ci
from lineage_lens.sweep import Outcome, PerExample

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from lineage_lens.gating import TruthGate

#: ``(context, question, context answer, prior answer)``; both answers single tokens.
Item = tuple[str, str, str, str]


@torch.no_grad()
def followed(
    model: TransformerBridge, items: Sequence[Item], *, alpha: float | None = None
) -> Bool[np.ndarray, " item"]:
    """Per ``(context, question, context answer, prior)`` item: does the context answer get a
    higher next-token logit than the prior after the paper's prompt (bridge forward)?

    Prompts must fit the model's context and the logits must be usable
    (:func:`~lineage_lens.batching.check_context`, :func:`~lineage_lens.batching.check_logits`;
    ``alpha``, the strength of a gate the model runs under, only goes into that error message)."""
    if not items:
        raise DataError("no context-following items to evaluate.")
    tok = model.tokenizer
    prompts = [
        PAPER_TEMPLATE.split("{answer}")[0].format(context=c, question=q) for c, q, _, _ in items
    ]
    enc = tok(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    mask = enc.attention_mask.bool()
    check_context(model, [ids[m].tolist() for ids, m in zip(enc.input_ids, mask, strict=True)])
    logits = model(enc.input_ids, attention_mask=enc.attention_mask)
    if tok.padding_side == "left":
        last = torch.full((len(items),), enc.input_ids.shape[1] - 1)
    else:
        last = enc.attention_mask.sum(1) - 1
    rows = torch.arange(len(items))
    out = logits[rows, last]
    check_logits(out, alpha=alpha)
    ctx = torch.tensor([tok.convert_tokens_to_ids(a) for _, _, a, _ in items])
    prior = torch.tensor([tok.convert_tokens_to_ids(p) for _, _, _, p in items])
    return (out[rows, ctx] > out[rows, prior]).numpy()


def context_following(model: TransformerBridge, items: Sequence[Item]) -> float:
    """Share of items whose context answer wins (see :func:`followed`)."""
    return float(followed(model, items).mean())


@dataclass(frozen=True)
class ContextFollowing:
    """Context following on ``items`` as a sweep evaluator: ``metrics`` ``n``,
    ``context_following`` and its 95 % Wilson interval ``ci_low``/``ci_high``; paired statistic
    ``context_following`` (per-item outcomes)."""

    items: Sequence[Item]
    task = "context_following"

    def __call__(self, model: TransformerBridge, gate: TruthGate | None) -> Outcome:
        with gate_context(model, gate):
            hits = followed(model, self.items, alpha=None if gate is None else gate.alpha)
        rate, low, high = proportion_ci(int(hits.sum()), len(hits))
        metrics = {"n": len(hits), "context_following": rate, "ci_low": low, "ci_high": high}
        return Outcome(metrics, {"context_following": PerExample.mean(hits)})


__all__ = ["ContextFollowing", "Item", "context_following", "followed"]
