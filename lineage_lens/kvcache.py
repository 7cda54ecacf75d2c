"""Key/value-cache safety: a compatibility shim and a once-per-model check.

Several fast paths of lineage-lens reuse a key/value cache: the shared-prefix capture of
:func:`~lineage_lens.capture.collect_head_activations`, the shared-prefix log-prob scoring and
the cached generation of the evaluators (HaluEval, POPE, CHAIR captions), and ``lineage-lens
gate``. If the bridge silently ignores the cache, every one of them is silently wrong. That
happened with transformers 5.24.0 and TransformerLens 4.3.0: transformers now hands each attention
layer its cache as ``cache=`` (renamed from ``past_key_values``), while TransformerLens'
``AttentionBridge._update_kv_cache`` reads only ``past_key_values`` / ``layer_past``, so the cache
is never filled and a cached continuation attends to itself alone (``docs/compatibility.md``).

Two defences, both used by every cached path of the library:

* :func:`install_cache_shim` wraps ``AttentionBridge._update_kv_cache`` so that a cache passed as
  ``cache=`` is handed on as ``past_key_values`` (the name it reads). It acts only when neither
  old name is present, so it is a no-op with transformers <= 5.23 and with a TransformerLens that
  reads ``cache`` itself. :func:`~lineage_lens.models.load_model` installs it.
* :func:`kv_cache_ok` checks, once per model, that a cached continuation of a few tokens equals
  the uncached forward. When it does not (a future rename, an architecture the shim does not
  cover), it warns once, naming the versions, and callers take their uncached path, which is
  slower but correct.
"""

from __future__ import annotations

import functools
import logging
import warnings
import weakref
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

import torch

from lineage_lens._display import ShortRepr

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

log = logging.getLogger(__name__)

#: Tokens of the check: a prefix of ``CHECK_TOKENS - CHECK_CONTINUATION`` tokens is cached, then
#: the last ``CHECK_CONTINUATION`` run on that cache.
CHECK_TOKENS = 10
CHECK_CONTINUATION = 3

_SHIM_MARK = "_lineage_lens_cache_shim"
_VERDICTS: weakref.WeakKeyDictionary[Any, KVCacheCheck] = weakref.WeakKeyDictionary()


class KVCacheWarning(UserWarning):
    """A model's cached forward differs from its uncached one; lineage-lens will not use the cache."""


@dataclass(frozen=True, repr=False)
class KVCacheCheck(ShortRepr):
    """The verdict of :func:`check_kv_cache` on one model."""

    ok: bool
    max_abs_diff: float
    tolerance: float
    versions: str

    def _repr_fields(self) -> list[tuple[str, str]]:
        return [
            ("verdict", "ok" if self.ok else "MISMATCH"),
            ("max |cached - uncached|", f"{self.max_abs_diff:.2e}"),
            ("tolerance", f"{self.tolerance:.1e}"),
            ("versions", self.versions),
        ]


def library_versions() -> str:
    """``transformers X, transformer-lens Y, torch Z`` of the running interpreter."""
    parts = []
    for dist in ("transformers", "transformer-lens", "torch"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    return ", ".join(parts)


def install_cache_shim() -> bool:
    """Let TransformerLens' attention bridges read a KV cache passed as ``cache=``.

    Idempotent. Returns True when the shim is (now) installed, False when this TransformerLens has
    no ``AttentionBridge._update_kv_cache`` to wrap (then :func:`kv_cache_ok` still guards).
    """
    try:
        from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge
    except ImportError:  # pragma: no cover - another TransformerLens layout
        return False
    original = getattr(AttentionBridge, "_update_kv_cache", None)
    if original is None:
        return False
    if getattr(original, _SHIM_MARK, False):
        return True

    @functools.wraps(original)
    def _update_kv_cache(self: Any, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> Any:
        if (
            kwargs.get("past_key_values") is None
            and kwargs.get("layer_past") is None
            and kwargs.get("cache") is not None
        ):
            kwargs["past_key_values"] = kwargs["cache"]
        return original(self, k, v, **kwargs)

    setattr(_update_kv_cache, _SHIM_MARK, True)
    _update_kv_cache.__wrapped_original__ = original  # type: ignore[attr-defined]
    AttentionBridge._update_kv_cache = _update_kv_cache  # type: ignore[method-assign]
    log.debug("Installed the cache= -> past_key_values shim on AttentionBridge")
    return True


def _check_ids(model: TransformerBridge) -> torch.Tensor:
    """A short, deterministic token sequence of ordinary (non-special) tokens of the model."""
    tok = getattr(model, "tokenizer", None)
    special: set[int] = set()
    if tok is not None:
        special = {int(i) for i in getattr(tok, "all_special_ids", []) or []}
    hf_config = getattr(getattr(model, "original_model", None), "config", None)
    for attr in ("image_token_index", "image_token_id", "video_token_id", "audio_token_id"):
        for holder in (getattr(model, "cfg", None), hf_config):
            value = getattr(holder, attr, None)
            if isinstance(value, int):
                special.add(value)
    vocab = int(getattr(model.cfg, "d_vocab", 0) or 0)
    if vocab <= 0:
        vocab = int(model.cfg.d_vocab_out)
    # Spread over the vocabulary, skipping special tokens (e.g. a LLaVA's <image>).
    candidates = torch.linspace(0, vocab - 1, 4 * CHECK_TOKENS).long().tolist()
    ids = [i for i in dict.fromkeys(candidates) if i not in special][:CHECK_TOKENS]
    return torch.tensor([ids], dtype=torch.long)


def _tolerance(model: TransformerBridge, scale: float) -> float:
    dtype = getattr(model.cfg, "dtype", torch.float32)
    rel = 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2
    return rel * max(1.0, scale)


def check_kv_cache(model: TransformerBridge) -> KVCacheCheck:
    """Compare a cached continuation with the uncached forward on ``model`` (not memoised).

    The first ``CHECK_TOKENS - CHECK_CONTINUATION`` tokens fill a fresh ``DynamicCache``; the last
    ``CHECK_CONTINUATION`` then run on it (attention mask over all tokens, positions continuing).
    Their logits must equal those of one uncached forward over all tokens, within ``1e-4`` of the
    logits' scale in float32 (``2e-2`` in half precision). Hooks the caller has attached (e.g. a
    gate) run in both passes.
    """
    from transformers import DynamicCache

    device = torch.device(getattr(model.cfg, "device", None) or "cpu")
    ids = _check_ids(model).to(device)
    n, k = ids.shape[1], CHECK_CONTINUATION
    with torch.inference_mode():
        full = model(ids, return_type="logits").float()
        cache = DynamicCache()
        model(
            ids[:, : n - k],
            return_type="logits",
            past_key_values=cache,
            attention_mask=torch.ones(1, n - k, dtype=torch.long, device=device),
        )
        tail = model(
            ids[:, n - k :],
            return_type="logits",
            past_key_values=cache,
            attention_mask=torch.ones(1, n, dtype=torch.long, device=device),
            position_ids=torch.arange(n - k, n, device=device)[None, :],
        ).float()
    ref = full[:, n - k :]
    diff = float((tail - ref).abs().max())
    tol = _tolerance(model, float(ref.abs().max()))
    return KVCacheCheck(
        ok=diff <= tol, max_abs_diff=diff, tolerance=tol, versions=library_versions()
    )


def kv_cache_ok(model: TransformerBridge) -> bool:
    """True when ``model``'s KV cache can be trusted; checked once per model, then remembered.

    On a mismatch this warns once (:class:`KVCacheWarning`, naming the versions) and returns
    False: every cached path of lineage-lens then runs uncached, which gives the same results,
    more slowly.
    """
    verdict = _VERDICTS.get(model)
    if verdict is None:
        install_cache_shim()
        try:
            verdict = check_kv_cache(model)
        except Exception as exc:  # a bridge whose cached forward cannot even run
            verdict = KVCacheCheck(False, float("nan"), float("nan"), library_versions())
            log.debug("KV-cache check raised %r", exc)
        _VERDICTS[model] = verdict
        if verdict.ok:
            log.debug("KV cache of %s verified: %r", type(model).__name__, verdict)
        else:
            warnings.warn(
                f"The key/value cache of this model gives other results than a full forward pass "
                f"({verdict!r}). lineage-lens will run its shared-prefix capture, shared-prefix "
                "scoring and generation without the cache: the results stay correct but are "
                "slower. The tested versions are pinned in constraints.txt (make setup installs "
                "them); see docs/compatibility.md.",
                KVCacheWarning,
                stacklevel=2,
            )
    return verdict.ok


def forget_kv_cache_verdict(model: TransformerBridge) -> None:
    """Drop the remembered verdict of ``model`` (e.g. after swapping its modules)."""
    _VERDICTS.pop(model, None)
