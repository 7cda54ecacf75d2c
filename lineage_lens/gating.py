"""TruthProbe soft gating as composable TransformerLens hooks.

A :class:`TruthGate` turns per-head Truth Scores ``S[l, h]`` into gates

    g[l, h] = 1 + alpha * norm_l(S)[h]

normalised *within each layer* ``l``:

* ``"center"``: ``S - mean(S[l])`` (a layer whose scores are all equal gets exactly ``g = 1``);
* ``"minmax"``: ``(S - min(S[l])) / (max(S[l]) - min(S[l]) + eps)``;
* ``"raw"``: ``S`` unchanged.

Gates are clamped from below at ``clamp_min`` (default ``0.0``: a head can be silenced, never
sign-flipped). ``clamp_min=None`` keeps negative gates, as the published code does, and warns with
how many went negative. ``layers`` restricts gating to some layers (the others keep ``g = 1``).

Placements (the constructor's ``placement=``, overridable in :meth:`TruthGate.applied`):

* ``"z"`` (default): a hook on ``blocks.{l}.attn.hook_z`` (``[batch, pos, head, d_head]``, the
  per-head output *before* W_O) multiplies head ``h`` by ``g[l, h]``. That scales exactly head
  ``h``'s contribution ``z_h @ W_O[l, h]`` to the residual stream; the O-projection bias (if any)
  is untouched.
* ``"fold"``: multiplies the W_O rows of each head in place (the columns
  ``h*d_head:(h+1)*d_head`` of the O projection's ``nn.Linear`` weight), with no run-time cost.
  :meth:`TruthGate.fold` returns a :class:`FoldHandle` (also a context manager) that restores the
  original weights bit-exactly. Mathematically the same as ``"z"`` (equal up to float rounding).
* ``"reference"``: a hook on ``blocks.{l}.attn.o.hook_out`` (the O projection's *output*,
  ``d_model`` wide) reshapes it into ``n_heads`` chunks of ``d_model / n_heads`` and scales chunk
  ``h`` by ``g[l, h]``, as the published TruthProbe implementation does. Those chunks are
  *not* heads (W_O mixes all heads into every output dimension); this placement exists only to
  reproduce published numbers, and needs ``d_model == n_heads * d_head``.

Usage::

    gate = TruthGate(scores, alpha=4.5, norm="center")          # placement="z"
    with gate.applied(model):                                    # any forward, run_with_cache,
        tokens = model.generate(prompt, max_new_tokens=32, do_sample=False)   # generate + KV cache
    logits = model.run_with_hooks(tokens, fwd_hooks=gate.hooks(model) + my_hooks)
    with gate.fold(model):                                       # or gate.applied(model, "fold")
        logits = model(tokens)

Composition with other hooks: hooks on the same hook point run in the order they were added.
In ``fwd_hooks=gate.hooks() + mine`` your hooks on ``hook_z`` see the *gated* values; in
``mine + gate.hooks()`` they see the ungated ones (and whatever they return is then gated).
Inside ``with gate.applied(model):`` the gate hooks were added first, so hooks you add later
(``run_with_hooks``, ``run_with_cache``, ``model.hooks``) see gated activations. Only layers whose
gates are not all 1 get a hook. With ``"fold"`` every hook sees gated-weight activations, but
``hook_z`` itself is unchanged (the scaling happens inside W_O).

Transfer: a gate built from an ancestor's scores applies to any descendant whose language-model
blocks have the same ``(n_layers, n_heads)``; otherwise a :class:`ShapeMismatchError` names both
shapes. Only ``blocks.*`` are gated, never a LLaVA bridge's ``vision_encoder.*``.

Controls for ablations: :func:`control_scores` (``"random"``: the same values permuted across
heads with a seed; ``"inverse"``: ``max + min - S``; ``"uniform"``: every head equal, a no-op under
``"center"``), and :meth:`TruthGate.control` to build the matching control gate.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from lineage_lens._display import label, number
from lineage_lens.errors import ConfigError, DataError, ShapeMismatchError, check_seed
from lineage_lens.headmap import HeadMap
from lineage_lens.models import head_geometry, model_label
from lineage_lens.placement import WeightSlot
from lineage_lens.scores import TruthScores

if TYPE_CHECKING:
    from transformer_lens.hook_points import HookPoint
    from transformer_lens.model_bridge import TransformerBridge

log = logging.getLogger(__name__)

Norm = Literal["center", "minmax", "raw"]
Placement = Literal["z", "fold", "reference"]
ControlKind = Literal["random", "inverse", "uniform"]

NORMS: tuple[str, ...] = ("center", "minmax", "raw")
PLACEMENTS: tuple[str, ...] = ("z", "fold", "reference")
CONTROLS: tuple[str, ...] = ("random", "inverse", "uniform")

HookFn = Callable[[Tensor, "HookPoint"], Tensor]

#: Attribute set on a model while folded gates are active (to warn about stacking folds).
_FOLD_ATTR = "_lineage_lens_active_folds"


# --------------------------------------------------------------------------------- helpers
def _as_scores(
    scores: TruthScores | np.ndarray | Tensor | Sequence[Sequence[float]],
) -> TruthScores:
    if isinstance(scores, TruthScores):
        return scores
    if isinstance(scores, Tensor):
        scores = scores.detach().cpu().double().numpy()
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 2:
        raise ShapeMismatchError(
            "Truth Score array", "(n_layers, n_heads)", arr.shape, "Pass a 2-D [L, H] array."
        )
    return TruthScores({"accuracy": arr}, meta={"source": "array"})


def _check_finite_scores(values: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        layer, head = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{what} has {int(bad.sum())} non-finite value(s) (NaN or inf), first at layer "
            f"{layer}, head {head} ({values[layer, head]}). Fix or impute them (e.g. with the "
            "chance level 0.5) before building a gate."
        )


def _check_real(value: float, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a real number, got {value!r}") from exc
    if not math.isfinite(out):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return out


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value


def normalize_scores(
    values: Float[np.ndarray, "layer head"], norm: Norm = "center", *, eps: float = 1e-8
) -> Float[np.ndarray, "layer head"]:
    """Normalise ``[L, H]`` scores within each layer (``"center"``, ``"minmax"`` or ``"raw"``).

    A layer whose scores are all equal normalises to exactly 0 under ``"center"`` and ``"minmax"``.
    """
    _check_choice(norm, NORMS, "norm")
    values = np.asarray(values, dtype=np.float64)
    if norm == "raw":
        return values.copy()
    lo = values.min(axis=1, keepdims=True)
    hi = values.max(axis=1, keepdims=True)
    flat = hi == lo
    if norm == "center":
        out = values - values.mean(axis=1, keepdims=True)
    else:
        out = (values - lo) / (hi - lo + eps)
    return np.where(flat, 0.0, out)


def control_scores(
    scores: TruthScores | np.ndarray | Tensor,
    kind: ControlKind,
    *,
    seed: int = 0,
    metric: str = "accuracy",
) -> TruthScores:
    """Control scores for gating ablations, as :class:`TruthScores` (only the ``accuracy`` metric).

    Args:
        scores: the real scores (``metric`` is read from them).
        kind: ``"random"``: the same ``L*H`` values permuted across all heads with ``seed`` (the
            same distribution, the head assignment destroyed); ``"inverse"``: ``max + min - S``
            (the ranking reversed within the original range; under ``"center"`` this gates by
            ``-(S - mean)``); ``"uniform"``: every head set to the global mean (``g = 1``
            under ``"center"`` and ``"minmax"``, i.e. a no-op).
        seed: seed of the ``"random"`` permutation.
    """
    _check_choice(kind, CONTROLS, "control kind")
    seed = check_seed(seed)
    ts = _as_scores(scores)
    values = ts.get(metric)
    _check_finite_scores(values, f"scores of {ts.model or 'the model'}")
    if kind == "random":
        rng = np.random.default_rng(seed)
        new = rng.permutation(values.ravel()).reshape(values.shape)
    elif kind == "inverse":
        new = values.max() + values.min() - values
    else:
        new = np.full_like(values, values.mean())
    meta = {**ts.meta, "control": kind, "metric": metric}
    if kind == "random":
        meta["control_seed"] = seed
    return TruthScores(
        {"accuracy": new}, ts.model, ts.dataset, ts.n, ts.folds, ts.solver, ts.seed, meta
    )


def _o_linear(model: TransformerBridge, layer: int) -> tuple[nn.Module, bool]:
    """The real O-projection module of ``layer`` and whether its weight is ``[out, in]``.

    ``nn.Linear`` weights are ``[d_model, H*d_head]`` (head ``h`` owns columns
    ``h*d_head:(h+1)*d_head``); transformers' ``Conv1D`` stores ``[H*d_head, d_model]``.
    """
    o_bridge = getattr(model.blocks[layer].attn, "o", None)
    module = getattr(o_bridge, "original_component", None) if o_bridge is not None else None
    if isinstance(module, nn.Linear):
        return module, True
    if module is not None and type(module).__name__ == "Conv1D":
        return module, False
    raise ConfigError(
        f"placement='fold' needs the O projection of blocks.{layer}.attn as an nn.Linear; found "
        f"{type(module).__name__}. Use placement='z' (hooks) for this architecture."
    )


class FoldHandle(contextlib.AbstractContextManager):
    """Handle of gates folded into W_O: :meth:`restore` (or leaving the ``with``) puts back the
    original weights bit-exactly. Restoring twice is harmless."""

    def __init__(self, model: TransformerBridge, saved: list[tuple[WeightSlot, Tensor]]):
        self.model = model
        self._saved = saved
        self.layers: list[int] = []
        self.active = True

    def restore(self) -> None:
        """Copy the saved original O-projection weights back (bit-exact)."""
        if not self.active:
            return
        for slot, original in reversed(self._saved):
            slot.release(original)
        self._saved = []
        self.active = False
        count = getattr(self.model, _FOLD_ATTR, 1) - 1
        object.__setattr__(self.model, _FOLD_ATTR, max(count, 0))
        log.debug("Restored original W_O of layers %s", self.layers)

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def __repr__(self) -> str:
        state = "active" if self.active else "restored"
        return f"FoldHandle(layers={self.layers}, {state})"


#: A gate's head output (per unit gate) and the residual stream are assumed below this magnitude.
GATE_HEADROOM = 2.0**10
#: The widest residual stream (d_model) the gate limit allows for: the norm sums d_model squares.
MAX_D_MODEL = 2**14


def gate_limit(dtype: torch.dtype) -> float:
    """The largest gate magnitude :class:`TruthGate` accepts for a model computing in ``dtype``.

    A gate ``g`` multiplies a head's output, which joins the residual stream; the next
    RMSNorm/LayerNorm computes the mean of its squares (in float32 or wider: Hugging Face norms
    upcast float16 and bfloat16). So the residual stream must stay finite in ``dtype`` and its
    squares summed over ``d_model <= MAX_D_MODEL`` dimensions finite in the norm's dtype; with head
    outputs and residual values below :data:`GATE_HEADROOM` per unit gate that gives

        limit = min(max(dtype), sqrt(max(norm dtype) / MAX_D_MODEL)) / GATE_HEADROOM

    i.e. about 1.4e14 for float32 and bfloat16 and 64 for float16 (whose range ends at 65504).
    Beyond it the logits become NaN or all exactly 0 (measured on the tiny Llama: float32 breaks
    between gates of 1e20 and 1e25, float16 between 1e4 and 1e6). Useful gates are a few units:
    ``1 + alpha * norm(S)`` with alpha ~ 1-10. Evaluators still check every forward's logits
    (:func:`lineage_lens.batching.check_logits`) for heads whose outputs exceed the headroom.
    """
    norm_dtype = torch.promote_types(dtype, torch.float32)
    residual = min(
        float(torch.finfo(dtype).max), math.sqrt(float(torch.finfo(norm_dtype).max) / MAX_D_MODEL)
    )
    return residual / GATE_HEADROOM


# ------------------------------------------------------------------------------- the gate
class TruthGate(HeadMap):
    """Per-head soft gates ``g[l, h] = 1 + alpha * norm_l(S)[h]`` built from Truth Scores.

    Args:
        scores: :class:`TruthScores` or a raw ``[n_layers, n_heads]`` array / tensor.
        alpha: gating strength (0 gives the identity); every gate must stay within
            :func:`gate_limit` of float32 (and of the model's dtype when applied).
        norm: within-layer normalisation: ``"center"``, ``"minmax"`` or ``"raw"``.
        metric: which metric of a :class:`TruthScores` to gate by (ignored for raw arrays).
        clamp_min: lower bound of the gates (default 0.0); ``None`` keeps negative gates (as the
            published code does) and warns with how many are negative.
        layers: layers to gate (negative indices count from the end); ``None`` gates all.
        placement: default placement for :meth:`applied`: ``"z"``, ``"fold"`` or ``"reference"``
            (see the module docstring).
        eps: the ``"minmax"`` denominator's epsilon.

    Attributes:
        gates: ``[n_layers, n_heads]`` float32 tensor of the final gates.
        raw_gates: the gates before clamping (float64 numpy).
        normalized: ``norm_l(S)`` (float64 numpy, 0 for layers not gated).
        n_clamped: how many gates were raised to ``clamp_min``; n_negative: how many raw gates < 0.
    """

    def __init__(
        self,
        scores: TruthScores | np.ndarray | Tensor,
        *,
        alpha: float,
        norm: Norm = "center",
        metric: str = "accuracy",
        clamp_min: float | None = 0.0,
        layers: Iterable[int] | None = None,
        placement: Placement = "z",
        eps: float = 1e-8,
    ):
        self.scores = _as_scores(scores)
        self.metric = metric if isinstance(scores, TruthScores) else "accuracy"
        self.alpha = _check_real(alpha, "alpha")
        self.norm = _check_choice(norm, NORMS, "norm")
        self.clamp_min = None if clamp_min is None else _check_real(clamp_min, "clamp_min")
        self.placement = _check_choice(placement, PLACEMENTS, "placement")
        self.eps = _check_real(eps, "eps")

        values = self.scores.get(self.metric)
        _check_finite_scores(values, f"{self.metric} scores of {self.scores.model or 'the model'}")
        n_layers = values.shape[0]
        if layers is None:
            self.layers: list[int] = list(range(n_layers))
        else:
            chosen = []
            for layer in layers:
                if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
                    raise ConfigError(f"layers must be integers, got {layer!r}")
                if not -n_layers <= layer < n_layers:
                    raise ConfigError(
                        f"layer {layer} is out of range for scores with {n_layers} layers"
                    )
                chosen.append(int(layer) % n_layers)
            self.layers = sorted(set(chosen))
        mask = np.zeros(n_layers, dtype=bool)
        mask[self.layers] = True

        normed = normalize_scores(values, self.norm, eps=self.eps)
        self.normalized = np.where(mask[:, None], normed, 0.0)
        self.raw_gates = 1.0 + self.alpha * self.normalized
        if not np.isfinite(self.raw_gates).all():
            raise ConfigError(
                f"alpha={self.alpha} makes some gates overflow; use a smaller alpha or norm"
            )
        self.n_negative = int((self.raw_gates < 0).sum())
        if self.clamp_min is None:
            final = self.raw_gates
            self.n_clamped = 0
            if self.n_negative:
                msg = (
                    f"{self.n_negative} of {final.size} gates are negative (alpha={self.alpha}, "
                    f"norm={self.norm!r}, clamp_min=None): those heads' outputs are sign-flipped, "
                    "as in the published implementation. Pass clamp_min=0.0 to prevent that."
                )
                warnings.warn(msg, UserWarning, stacklevel=2)
                log.info(msg)
        else:
            final = np.maximum(self.raw_gates, self.clamp_min)
            self.n_clamped = int((self.raw_gates < self.clamp_min).sum())
            if self.n_clamped:
                log.info("%d gates raised to clamp_min=%s", self.n_clamped, self.clamp_min)
        self.gates: Float[Tensor, "layer head"] = torch.tensor(final, dtype=torch.float32)
        self.check_dtype(torch.float32)

    # ----------------------------------------------------------------------- properties
    @property
    def shape(self) -> tuple[int, int]:
        """``(n_layers, n_heads)`` of the gates."""
        return self.scores.shape

    def head_maps(self) -> dict[str, Float[np.ndarray, "layer head"]]:
        """``score`` (the gate's metric), ``normalized``, ``raw_gate`` (before the clamp) and
        ``gate`` (as applied, float32 values) per head."""
        return {
            "score": self.scores.get(self.metric),
            "normalized": self.normalized,
            "raw_gate": self.raw_gates,
            "gate": self.gates.numpy().astype(np.float64),
        }

    @property
    def active_layers(self) -> list[int]:
        """Layers with at least one gate different from 1 (the only ones hooked or folded)."""
        return [int(layer) for layer in np.flatnonzero((self.gates != 1.0).any(dim=1).numpy())]

    def params(self) -> dict[str, Any]:
        """The hyperparameters, e.g. for a results table."""
        return {
            "alpha": self.alpha,
            "norm": self.norm,
            "metric": self.metric,
            "clamp_min": self.clamp_min,
            "layers": None if len(self.layers) == self.n_layers else list(self.layers),
            "placement": self.placement,
            "eps": self.eps,
        }

    # ------------------------------------------------------------------------- controls
    def control(self, kind: ControlKind, *, seed: int = 0) -> TruthGate:
        """The same gate (alpha, norm, clamp, layers, placement) built from control scores.

        See :func:`control_scores` for ``"random"``, ``"inverse"`` and ``"uniform"``.
        """
        ctrl = control_scores(self.scores, kind, seed=seed, metric=self.metric)
        params = self.params() | {"metric": "accuracy"}
        if params["layers"] is None:
            params.pop("layers")
        return TruthGate(ctrl, **params)

    @classmethod
    def random_control(
        cls, scores: TruthScores | np.ndarray | Tensor, *, seed: int = 0, **kwargs: Any
    ) -> TruthGate:
        """A gate from ``scores`` permuted across heads with ``seed`` (same value distribution)."""
        metric = kwargs.pop("metric", "accuracy")
        return cls(control_scores(scores, "random", seed=seed, metric=metric), **kwargs)

    @classmethod
    def inverse_control(cls, scores: TruthScores | np.ndarray | Tensor, **kwargs: Any) -> TruthGate:
        """A gate from inverted scores ``max + min - S`` (boosts the heads ``S`` suppresses)."""
        metric = kwargs.pop("metric", "accuracy")
        return cls(control_scores(scores, "inverse", metric=metric), **kwargs)

    @classmethod
    def uniform_control(cls, scores: TruthScores | np.ndarray | Tensor, **kwargs: Any) -> TruthGate:
        """A gate from uniform scores: the identity under ``"center"`` and ``"minmax"``."""
        metric = kwargs.pop("metric", "accuracy")
        return cls(control_scores(scores, "uniform", metric=metric), **kwargs)

    # ------------------------------------------------------------------ model checking
    def check_model(self, model: TransformerBridge) -> None:
        """Raise :class:`ShapeMismatchError` unless ``model``'s language-model blocks are
        ``(n_layers, n_heads)`` of these gates (the vision tower of a LLaVA bridge is ignored)."""
        geo = head_geometry(model)
        if geo.shape != self.shape:
            raise ShapeMismatchError(
                f"TruthGate from scores of {self.scores.model or 'a model'} vs language-model "
                f"blocks of {model_label(model)}",
                self.shape,
                geo.shape,
                "Gates transfer only between models with the same (n_layers, n_heads).",
            )

    def _check_reference_geometry(self, model: TransformerBridge) -> None:
        geo = head_geometry(model)
        if geo.d_model != geo.n_heads * geo.d_head:
            raise ConfigError(
                f"placement='reference' splits the d_model={geo.d_model} attention output into "
                f"n_heads={geo.n_heads} chunks of d_head={geo.d_head}, which needs d_model == "
                f"n_heads * d_head ({geo.n_heads * geo.d_head}). Use placement='z'."
            )

    def check_dtype(self, dtype: torch.dtype) -> None:
        """Raise :class:`ConfigError` unless every gate is within :func:`gate_limit` of ``dtype``.

        Gates are stored in float32 (checked when the gate is built) and applied in the
        activations' (or, folded, the weights') dtype (checked when applied). A gate beyond the
        limit makes the gated model output NaN, or logits that are all exactly 0 (the norm after
        the residual stream squares it, overflows and divides by inf). The message names alpha,
        the largest gate, the limit, the dtype and the largest alpha these scores allow.
        """
        if not dtype.is_floating_point:
            return
        limit = gate_limit(dtype)
        gates = (
            self.raw_gates if self.clamp_min is None else np.maximum(self.raw_gates, self.clamp_min)
        )
        final = np.abs(gates)
        layer, head = (int(i) for i in np.unravel_index(np.argmax(final), final.shape))
        largest = float(final[layer, head])
        if largest <= limit:
            return
        name = str(dtype).removeprefix("torch.")
        spread = float(np.abs(self.normalized).max())
        if self.clamp_min is not None and abs(self.clamp_min) > limit:
            fix = f"Use a clamp_min of magnitude at most {limit:.4g}"
        else:
            fix = f"Use a smaller alpha (|alpha| <= {(limit - 1) / spread:.4g} with these scores)"
        raise ConfigError(
            f"alpha={self.alpha:g} gives a gate of magnitude {largest:.4g} (layer {layer}, head "
            f"{head}), beyond the limit {limit:.4g} above which the gated model overflows {name} "
            "(a gate multiplies its head's output; the residual stream it joins must stay finite "
            "when the next RMSNorm/LayerNorm squares it, or the logits become NaN or all exactly "
            f"0). {fix}" + (" or run the model in float32." if limit < 1e6 else ".")
        )

    # ------------------------------------------------------------------------ hooks
    def _gate_for(self, layer: int) -> Callable[[Tensor], Tensor]:
        base = self.gates[layer]
        cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}

        def get(like: Tensor) -> Tensor:
            key = (like.device, like.dtype)
            g = cache.get(key)
            if g is None:
                self.check_dtype(like.dtype)
                g = cache[key] = base.to(device=like.device, dtype=like.dtype)
            return g

        return get

    def _z_hook(self, layer: int) -> HookFn:
        get = self._gate_for(layer)
        n_heads = self.n_heads

        def gate_z(
            z: Float[Tensor, "batch pos head d_head"], hook: HookPoint
        ) -> Float[Tensor, "batch pos head d_head"]:
            if z.ndim < 2 or z.shape[-2] != n_heads:
                raise ShapeMismatchError(
                    f"{hook.name} (hook_z) vs TruthGate",
                    f"[..., {n_heads}, d_head]",
                    tuple(z.shape),
                )
            return z * get(z)[:, None]

        gate_z.__name__ = f"truth_gate_z_L{layer}"
        return gate_z

    def _reference_hook(self, layer: int) -> HookFn:
        get = self._gate_for(layer)
        n_heads = self.n_heads

        def gate_reference(
            out: Float[Tensor, "batch pos d_model"], hook: HookPoint
        ) -> Float[Tensor, "batch pos d_model"]:
            d_model = out.shape[-1]
            if d_model % n_heads:
                raise ConfigError(
                    f"placement='reference' cannot split d_model={d_model} of {hook.name} into "
                    f"{n_heads} equal chunks; use placement='z'."
                )
            chunks = out.reshape(*out.shape[:-1], n_heads, d_model // n_heads)
            return (chunks * get(out)[:, None]).reshape(out.shape)

        gate_reference.__name__ = f"truth_gate_reference_L{layer}"
        return gate_reference

    def hook_names(self, placement: Placement | None = None) -> list[str]:
        """The hook points this gate uses (language-model blocks only)."""
        placement = _check_choice(placement or self.placement, PLACEMENTS, "placement")
        if placement == "fold":
            return []
        point = "attn.hook_z" if placement == "z" else "attn.o.hook_out"
        return [f"blocks.{layer}.{point}" for layer in self.active_layers]

    def hooks(
        self, model: TransformerBridge | None = None, *, placement: Placement | None = None
    ) -> list[tuple[str, HookFn]]:
        """``[(hook_name, fn), ...]`` for ``model.hooks(fwd_hooks=...)`` / ``run_with_hooks``.

        Pass ``model`` to validate the shapes first. Only layers whose gates are not all 1 get a
        hook. ``placement`` defaults to the gate's; ``"fold"`` has no hooks (use :meth:`fold`).
        Hooks run in list order relative to other hooks on the same point (module docstring).
        """
        placement = _check_choice(placement or self.placement, PLACEMENTS, "placement")
        if placement == "fold":
            raise ConfigError(
                "placement='fold' changes the weights and has no hooks; use gate.fold(model) or "
                "gate.applied(model), or ask for hooks(placement='z')."
            )
        if model is not None:
            self.check_model(model)
            if placement == "reference":
                self._check_reference_geometry(model)
        make = self._z_hook if placement == "z" else self._reference_hook
        return list(zip(self.hook_names(placement), map(make, self.active_layers), strict=True))

    # -------------------------------------------------------------------------- fold
    def fold(self, model: TransformerBridge) -> FoldHandle:
        """Scale the W_O rows of every gated head in place; return a restoring :class:`FoldHandle`.

        Use as ``with gate.fold(model): ...`` or keep the handle and call ``handle.restore()``.
        ``model.W_O`` reflects the folded weights while the handle is active. Folding a second
        gate on top multiplies the gates; restore handles in reverse order.
        """
        self.check_model(model)
        geo = head_geometry(model)
        if getattr(model, _FOLD_ATTR, 0):
            log.warning("Folding gates on top of %d active fold(s)", getattr(model, _FOLD_ATTR))
        targets = []
        for layer in self.active_layers:
            module, out_in = _o_linear(model, layer)
            weight = WeightSlot(module)  # resident, or offloaded by a device map
            expected = (
                (geo.d_model, geo.n_heads * geo.d_head)
                if out_in
                else (geo.n_heads * geo.d_head, geo.d_model)
            )
            if tuple(weight.shape) != expected:
                raise ShapeMismatchError(
                    f"O projection weight of blocks.{layer}", expected, tuple(weight.shape)
                )
            targets.append((layer, weight, out_in))
        for _, weight, _ in targets:
            self.check_dtype(weight.dtype)
        saved: list[tuple[WeightSlot, Tensor]] = []
        handle = FoldHandle(model, saved)
        with torch.no_grad():
            for layer, weight, out_in in targets:
                original = weight.read().clone()
                saved.append((weight, original))
                scale = self.gates[layer].to(original.device, original.dtype)
                scale = scale.repeat_interleave(geo.d_head)
                weight.write(original * (scale[None, :] if out_in else scale[:, None]))
                handle.layers.append(layer)
        object.__setattr__(model, _FOLD_ATTR, getattr(model, _FOLD_ATTR, 0) + 1)
        log.debug("Folded gates into W_O of layers %s", handle.layers)
        return handle

    # ----------------------------------------------------------------------- applied
    @contextlib.contextmanager
    def applied(
        self, model: TransformerBridge, placement: Placement | None = None
    ) -> Iterator[TransformerBridge]:
        """Context manager gating ``model`` (forwards, ``run_with_cache``, ``generate``).

        ``placement`` defaults to the gate's own. Hooks are removed (or folded weights restored)
        on exit, also after an exception.
        """
        placement = _check_choice(placement or self.placement, PLACEMENTS, "placement")
        self.check_model(model)
        dtype = getattr(model.cfg, "dtype", None)
        if isinstance(dtype, torch.dtype):
            self.check_dtype(dtype)
        if placement == "fold":
            with self.fold(model):
                yield model
        else:
            with model.hooks(fwd_hooks=self.hooks(model, placement=placement)):
                yield model

    # ----------------------------------------------------------------- presentation
    DEFAULT_METRIC = "gate"

    def _frame_columns(self) -> dict[str, np.ndarray]:
        """``score, normalized, raw_gate, gate`` and the flags ``gated`` (its layer is gated),
        ``clamped`` (raised to ``clamp_min``)."""
        gated = np.zeros(self.shape, dtype=bool)
        gated[self.layers] = True
        clamped = (
            np.zeros(self.shape, dtype=bool)
            if self.clamp_min is None
            else self.raw_gates < self.clamp_min
        )
        return self.head_maps() | {"gated": gated, "clamped": clamped}

    def summary(self) -> str:
        """A few lines: parameters, gate range, how many gates were clamped / negative."""
        g = self.gates.numpy()
        flat = int(g.argmax())
        top_l, top_h = divmod(flat, self.n_heads)
        layers = "all" if len(self.layers) == self.n_layers else str(self.layers)
        return "\n".join(
            [
                f"TruthGate from {self.scores.model or 'scores'} ({self.metric}), "
                f"{self.n_layers} layers x {self.n_heads} heads",
                f"  alpha={self.alpha:g} norm={self.norm} clamp_min={self.clamp_min} "
                f"placement={self.placement} layers={layers}",
                f"  gates: min {g.min():.4f}, mean {g.mean():.4f}, max {g.max():.4f} "
                f"(L{top_l}H{top_h}); {self.n_clamped} clamped, {self.n_negative} raw < 0",
            ]
        )

    def _provenance(self) -> list[tuple[str, str]]:
        return [
            ("scores", f"{label(self.scores.model)} ({self.metric})"),
            ("alpha", f"{self.alpha:g}"),
            ("norm", repr(self.norm)),
            ("clamp_min", number(self.clamp_min)),
            ("placement", repr(self.placement)),
            ("layers", "all" if len(self.layers) == self.n_layers else str(self.layers)),
            ("clamped", str(self.n_clamped)),
            ("raw gates < 0", str(self.n_negative)),
        ]

    def _correlation_name(self) -> str:
        return f"gates ({self.scores.model or 'scores'}, alpha={self.alpha:g})"

    def _title(self, metric: str) -> str:
        what = "gates" if metric == "gate" else metric
        return f"{what}: alpha={self.alpha:g}, {self.norm} ({self.scores.model or 'scores'})"

    def _heatmap_style(self, metric: str, values: np.ndarray) -> dict[str, Any]:
        """Gates are coloured around 1 (the identity)."""
        if metric not in ("gate", "raw_gate"):
            return {}
        from matplotlib.colors import TwoSlopeNorm

        lo, hi = float(values.min()), float(values.max())
        color_norm = TwoSlopeNorm(vcenter=1.0, vmin=min(lo, 1.0 - 1e-6), vmax=max(hi, 1.0 + 1e-6))
        return {"cmap": "RdBu_r", "norm": color_norm}

    # --------------------------------------------------------------------------- I/O
    def _npz_payload(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The scores the gate was built from and its parameters (the gates are rebuilt)."""
        provenance = self.scores._meta_dict()
        return {"scores": self.scores.get(self.metric)}, {
            "kind": "truth_gate",
            "params": self.params(),
            "scores": provenance,
        }

    @classmethod
    def _from_npz(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any], path: Any) -> TruthGate:
        if meta.get("kind") != "truth_gate":
            raise DataError("not a TruthGate file (written by TruthGate.save)", path=path)
        params = dict(meta["params"])
        provenance = dict(meta["scores"])
        extra = provenance.pop("meta", {})
        scores = TruthScores({params["metric"]: arrays["scores"]}, **provenance, meta=extra)
        if params.get("layers") is None:
            params.pop("layers", None)
        return cls(scores, **params)
