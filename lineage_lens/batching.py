"""Running token batches through a bridge: padding, the pad-id rule, the device, shared prefixes.

Every module that runs prompts through a model -- capture (:mod:`lineage_lens.capture`),
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
  used at all with :func:`lineage_lens.kvcache.kv_cache_ok`;
* :func:`check_context` is the one context-length rule: a batch of prompts (plus the tokens to be
  generated) must fit the model's ``n_ctx``, else a :class:`~lineage_lens.errors.DataError`
  names the longest prompt, its length and the limit;
* :func:`check_logits` is the one check of what a forward returned: NaN/inf logits, or a row
  whose vocabulary logits are all equal (nothing can be read from it), raise a
  :class:`~lineage_lens.errors.ModelOutputError`; :func:`logits_checked` applies it to every
  forward inside a ``with`` (e.g. each step of ``model.generate``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lineage_lens.errors import ConfigError, DataError, ModelOutputError

log = logging.getLogger(__name__)

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


# ------------------------------------------------------------------------ context length
def _preview(tokenizer: Any, ids: Sequence[int], width: int = 40) -> str:
    """The decoded start and end of a token sequence, on one line."""
    if tokenizer is None or not hasattr(tokenizer, "decode"):
        return ""
    text = " ".join(str(tokenizer.decode(list(ids), skip_special_tokens=True)).split())
    return text if len(text) <= 2 * width + 5 else f"{text[:width]} ... {text[-width:]}"


def check_context(
    model: Any,
    seqs: Sequence[Sequence[int]],
    labels: Sequence[str] | None = None,
    *,
    new_tokens: int = 0,
) -> None:
    """Raise :class:`DataError` unless every token sequence of ``seqs``, with ``new_tokens``
    generated after it, fits the model's context (``model.cfg.n_ctx``; nothing is checked when it
    is unknown).

    The one context-length rule of lineage-lens: capture, attention to evidence, every evaluator
    and ``lineage-lens gate`` call it before running a prompt. Image prompts count their image
    tokens (the ids hold them). The message names the longest prompt (``labels[i]``, else its
    index, with a short preview), its length (prompt + tokens to generate) and the limit.
    Nothing is truncated: a prompt that does not fit is an error.
    """
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if not n_ctx or not seqs:
        return
    lengths = [len(s) for s in seqs]
    i = max(range(len(lengths)), key=lengths.__getitem__)
    total = lengths[i] + new_tokens
    if total <= n_ctx:
        return
    n_over = sum(n + new_tokens > n_ctx for n in lengths)
    name = repr(labels[i]) if labels is not None else f"#{i}"
    preview = _preview(getattr(model, "tokenizer", None), seqs[i])
    size = (
        f"{lengths[i]} prompt tokens + {new_tokens} to generate = {total} tokens"
        if new_tokens
        else f"{total} tokens"
    )
    raise DataError(
        f"prompt {name}{f' ({preview!r})' if preview else ''} has {size}, more than the model's "
        f"context n_ctx={n_ctx} ({n_over} of {len(lengths)} prompts are too long). Shorten the "
        "prompts (a shorter context, knowledge passage or instruction)"
        + (", generate fewer tokens" if new_tokens else "")
        + " or use a model with a longer context."
    )


# ------------------------------------------------------------------------------- logits
def check_logits(
    logits: Float[Tensor, "batch *pos vocab"],
    labels: Sequence[str] | None = None,
    *,
    alpha: float | None = None,
) -> None:
    """Raise :class:`ModelOutputError` if a row of ``logits`` holds NaN or inf, or has every
    vocabulary logit equal (then log p(Yes) == log p(No) and greedy decoding picks token 0:
    nothing can be read from it).

    Rows are the batch (dim 0), named by ``labels`` (prompt keys) in the message; any dims between
    the batch and the vocabulary (positions, steps) are checked too. ``alpha`` is the strength of
    the TruthGate the model ran under, if any (a gate too strong for the dtype is the usual
    cause: the residual stream overflows and the final norm outputs NaN or zeros).
    """
    flat = logits.detach().reshape(logits.shape[0], -1, logits.shape[-1])
    finite = torch.isfinite(flat).all(dim=-1)
    equal = flat.amax(dim=-1) == flat.amin(dim=-1)
    bad = (~finite | equal).any(dim=-1)
    if not bool(bad.any()):
        return
    row = int(bad.nonzero()[0, 0])
    name = repr(labels[row]) if labels is not None else f"#{row}"
    if not bool(finite[row].all()):
        what = "NaN or inf"
    else:
        value = float(flat[row][equal[row]][0, 0])
        what = f"all equal (every vocabulary logit is {value:g})"
    dtype = str(logits.dtype).removeprefix("torch.")
    if alpha is not None:
        fix = (
            f"The model ran under a TruthGate with alpha={alpha:g}, too strong for it: use a "
            "smaller alpha"
            + (" or load the model in float32." if dtype in ("float16", "bfloat16") else ".")
        )
    else:
        fix = (
            "If a gate or other hooks are active on the model, weaken them; otherwise check the "
            f"model's weights (the logits are {dtype}; float16 overflows easily: load the model "
            "in float32)."
        )
    raise ModelOutputError(
        f"the model's logits for prompt {name} are {what} ({int(bad.sum())} of {len(bad)} "
        f"prompts in the batch): no answer can be read from them. {fix}"
    )


#: The hook point whose output is the logits (every supported family has it).
LOGITS_HOOK = "unembed.hook_out"


@contextlib.contextmanager
def logits_checked(
    model: Any, labels: Sequence[str] | None = None, *, alpha: float | None = None
) -> Iterator[None]:
    """Within the ``with``, the last position's logits of every forward of ``model`` (a bridge)
    go through :func:`check_logits` -- e.g. each step of ``model.generate`` on a left-padded
    batch, whose last column is every row's newest token."""
    if LOGITS_HOOK not in getattr(model, "hook_dict", {}):
        log.warning(
            "%s has no %s hook: its logits are not checked", type(model).__name__, LOGITS_HOOK
        )
        yield
        return

    def check(logits: Tensor, hook: Any) -> None:
        check_logits(logits[:, -1], labels, alpha=alpha)

    with model.hooks(fwd_hooks=[(LOGITS_HOOK, check)]):
        yield
