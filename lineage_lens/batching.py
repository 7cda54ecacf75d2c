"""Running token batches through a bridge: padding, the pad-id rule, the device, shared prefixes.

Every module that runs prompts through a model -- capture (:mod:`lineage_lens.activations`),
attention to evidence (:mod:`lineage_lens.attention`) and the evaluators
(:mod:`lineage_lens.evals`) -- batches with these functions, so padding and the shared-prefix
key/value cache are written once:

* :func:`pad_batch` pads a batch on either side and returns the attention mask, position ids that
  restart at each row's first real token, and each row's offset;
* :func:`pad_token_id` is the one pad-id rule (the tokenizer's pad token, else its EOS token,
  else a :class:`~lineage_lens.errors.ConfigError`);
* :func:`fill_prefix_cache` runs distinct prefixes once (left-padded) into a ``DynamicCache``,
  and :func:`run_on_prefix_cache` runs each example's own tokens on its prefix's cache
  (right-padded, positions continuing after the prefix). Callers decide whether the cache may be
  used at all with :func:`lineage_lens.kvcache.kv_cache_ok`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from jaxtyping import Int
from torch import Tensor

from lineage_lens.errors import ConfigError, DataError

#: Shortest token prefix worth running once for several prompts (capture and scoring).
MIN_SHARED_PREFIX = 16

Side = Literal["left", "right"]
#: ``forward(input_ids, **kwargs)``: how a caller runs the model (plain, with hooks, ...).
Forward = Callable[..., Any]


class PaddedBatch(NamedTuple):
    """A padded batch of token sequences."""

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    #: Positions restarting at each row's first real token (0 on padding).
    position_ids: Int[Tensor, "batch pos"]
    #: Column of each row's first real token (0 for right padding).
    offsets: Int[Tensor, " batch"]


@dataclass
class PrefixCache:
    """Key/value cache of a left-padded batch of prefixes (see :func:`fill_prefix_cache`)."""

    cache: Any
    attention_mask: Int[Tensor, "prefix pos"]


def model_device(model: Any) -> torch.device:
    """The device of ``model``'s parameters (its config's device for a parameterless stub)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device(getattr(getattr(model, "cfg", None), "device", None) or "cpu")


def model_dtype(model: Any) -> torch.dtype:
    """The floating dtype of ``model``'s parameters (float32 for a parameterless stub)."""
    try:
        return next(p.dtype for p in model.parameters() if p.is_floating_point())
    except (StopIteration, AttributeError):
        return torch.float32


def to_model(inputs: Mapping[str, Tensor], model: Any) -> dict[str, Tensor]:
    """Extra forward inputs (e.g. an image batch's ``pixel_values``) on ``model``'s device, floating
    tensors in its dtype; other tensors keep their dtype."""
    device, dtype = model_device(model), model_dtype(model)
    return {
        k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()
    }


def pad_token_id(tokenizer: Any) -> int:
    """The id that pads batches: the pad token, else the EOS token (the value never matters for
    results: padded positions are masked)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is None:
        raise ConfigError(
            "the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token "
            "(load_model does this for tokenizers with an EOS token)."
        )
    return int(pad)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: Side = "left") -> PaddedBatch:
    """Pad token sequences into one ``[batch, pos]`` batch on ``side``."""
    if side not in ("left", "right"):
        raise ConfigError(f"padding side must be 'left' or 'right', got {side!r}.")
    if not seqs or any(len(s) == 0 for s in seqs):
        raise DataError("cannot batch an empty prompt.")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    offsets = torch.zeros(len(seqs), dtype=torch.long)
    for i, s in enumerate(seqs):
        start = width - len(s) if side == "left" else 0
        ids[i, start : start + len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, start : start + len(s)] = 1
        offsets[i] = start
    return PaddedBatch(ids, mask, (mask.cumsum(1) - 1).clamp(min=0), offsets)


def shared_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix, leaving every sequence at least one token."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs) - 1
    length = 0
    while length < n and all(s[length] == first[length] for s in seqs):
        length += 1
    return length


def group_by_prefix(
    keys: Sequence[tuple[int, ...]], indices: Iterable[int]
) -> dict[tuple[int, ...] | int, list[int]]:
    """``indices`` grouped by their prefix key, in first-seen order; an index whose key is empty
    is a group of its own (keyed by the index)."""
    groups: dict[tuple[int, ...] | int, list[int]] = {}
    for i in indices:
        groups.setdefault(keys[i] or int(i), []).append(int(i))
    return groups


def _plain_forward(model: Any) -> Forward:
    return lambda ids, **kwargs: model(ids, **kwargs)


def fill_prefix_cache(
    model: Any,
    prefixes: Sequence[Sequence[int]],
    pad_id: int,
    *,
    forward: Forward | None = None,
) -> PrefixCache:
    """Run ``prefixes`` once (left-padded, positions restarting at each real token) into a fresh
    ``DynamicCache``. ``forward`` runs the model (default ``model(ids, **kwargs)``); it may stop
    the pass early once the last layer's attention has filled the cache."""
    from transformers import DynamicCache

    device = model_device(model)
    batch = pad_batch(prefixes, pad_id, "left")
    cache = DynamicCache()
    (forward or _plain_forward(model))(
        batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        position_ids=batch.position_ids.to(device),
        past_key_values=cache,
    )
    return PrefixCache(cache, batch.attention_mask)


def run_on_prefix_cache(
    model: Any,
    prefix: PrefixCache,
    rows: Sequence[int] | Tensor,
    suffixes: Sequence[Sequence[int]],
    pad_id: int,
    *,
    forward: Forward | None = None,
    keep_prefix: bool = False,
) -> tuple[Any, PaddedBatch]:
    """Run each suffix on the cache of prefix ``rows[i]``: right-padded, attending to its
    prefix's real tokens, positions continuing after them. The forward appends to the cache, so
    ``keep_prefix=True`` works on a copy (to reuse ``prefix`` for another batch). Returns the
    forward's output and the padded suffix batch (its ``offsets`` are 0: row ``i``'s token ``j``
    is column ``j``)."""
    device = model_device(model)
    rows_t = torch.as_tensor(rows, dtype=torch.long)
    cache = copy.deepcopy(prefix.cache) if keep_prefix else prefix.cache
    cache.batch_select_indices(rows_t.to(device))
    batch = pad_batch(suffixes, pad_id, "right")
    n_prefix = prefix.attention_mask.sum(dim=1)[rows_t]
    positions = n_prefix[:, None] + torch.arange(batch.input_ids.shape[1])[None, :]
    out = (forward or _plain_forward(model))(
        batch.input_ids.to(device),
        attention_mask=torch.cat([prefix.attention_mask[rows_t], batch.attention_mask], 1).to(
            device
        ),
        position_ids=positions.to(device),
        past_key_values=cache,
    )
    return out, batch
