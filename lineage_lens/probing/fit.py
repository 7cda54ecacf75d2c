"""The cross-validation driver of the head probes: :func:`fit_truth_scores` and :class:`HeadProbe`.

:class:`HeadProbe` is a scikit-learn estimator (``get_params``, ``set_params`` and
``sklearn.base.clone`` work): ``fit`` checks the inputs and the hyperparameters, builds the folds
(:mod:`lineage_lens.probing.folds`), then fits every fold of every chunk of heads with the chosen
solver (:mod:`lineage_lens.probing.newton`, :mod:`lineage_lens.probing.adamw`) and averages the
held-out metrics (:mod:`lineage_lens.probing.metrics`) into a
:class:`~lineage_lens.scores.TruthScores`. :func:`fit_truth_scores` is ``HeadProbe(refit=False)``
fitted once. The solvers, the folds and which to use are described in :mod:`lineage_lens.probing`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from sklearn.base import BaseEstimator
from torch import Tensor
from tqdm.auto import tqdm

from lineage_lens._display import ShortRepr, label, number
from lineage_lens.errors import (
    ConfigError,
    DataError,
    LineageLensError,
    ShapeMismatchError,
    check_seed,
)
from lineage_lens.probing.adamw import ADAMW_RECIPE, adamw_logistic
from lineage_lens.probing.folds import (
    as_groups,
    check_folds,
    cv_splits,
    identical_pairs,
    join_identical,
    warn_identical,
)
from lineage_lens.probing.metrics import head_metrics
from lineage_lens.probing.newton import (
    DEFAULT_MEMORY_BYTES,
    head_chunk,
    heads_per_chunk,
    newton_logistic,
    standardize,
)
from lineage_lens.scores import METRICS, TruthScores

log = logging.getLogger(__name__)

Solver = Literal["newton", "adamw", "truthprobe"]
SOLVERS: tuple[str, ...] = ("newton", "adamw", "truthprobe")

#: Fold seed of ``solver="truthprobe"`` when none is given: the authors' ``--seed`` default.
TRUTHPROBE_SEED = 42


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _as_arrays(acts: Any, labels: Any) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """``(acts [N, L, H, d] array or tensor, labels [N] int64, provenance)`` with validation."""
    info: dict[str, Any] = {}
    if hasattr(acts, "acts") and hasattr(acts, "labels"):  # HeadActivations
        if labels is None:
            labels = acts.labels
        info["model"] = getattr(acts, "model", "") or ""
        if getattr(acts, "source_ids", None) is not None:
            info["source_ids"] = list(acts.source_ids)
        acts = acts.acts
    if labels is None:
        raise ConfigError(
            "labels are required when acts is an array; pass labels=[N] (1 = truthful, "
            "0 = hallucinated) or a HeadActivations object that carries them."
        )
    if not isinstance(acts, (np.ndarray, Tensor)):
        acts = np.asarray(acts)
    if acts.ndim != 4:
        raise ShapeMismatchError(
            "probing activations",
            "[n_examples, n_layers, n_heads, d_head]",
            tuple(acts.shape),
            "Pass HeadActivations.acts or an array of that shape.",
        )
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != acts.shape[0]:
        raise ShapeMismatchError(
            "labels vs activations",
            (int(acts.shape[0]),),
            tuple(labels.shape),
            f"acts has shape {tuple(acts.shape)}: labels need one entry per example (axis 0).",
        )
    if labels.dtype == bool:
        labels = labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.number) or not np.isin(labels, (0, 1)).all():
        bad = sorted({str(v) for v in np.unique(labels) if str(v) not in ("0", "1")})[:5]
        raise DataError(
            f"labels must be 0 (hallucinated) or 1 (truthful); found other values {bad}."
        )
    return acts, labels.astype(np.int64), info


def _resolve_device(device: str | torch.device | None, acts: Any) -> torch.device:
    """The device of the fits: ``device`` if given, else that of a tensor ``acts``, else the CPU."""
    if device is not None:
        return torch.device(device)
    if isinstance(acts, Tensor):
        return acts.device
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------
# The cross-validation driver and the public API
# --------------------------------------------------------------------------------------------


@dataclass
class _FitResult:
    metrics: dict[str, np.ndarray]  # name -> [G]
    coef: np.ndarray | None  # [G, d+1] in the original feature space, or None
    max_iter_used: int
    not_converged: int


def _fit(
    acts: Any,
    labels: np.ndarray,
    *,
    folds: int,
    solver: str,
    l2: float,
    seed: int,
    groups: np.ndarray | None,
    device: torch.device,
    refit: bool,
    max_iter: int,
    tol: float,
    memory_bytes: int,
    progress: bool,
) -> _FitResult:
    n, n_layers, n_heads, d = acts.shape
    g_total = n_layers * n_heads
    exact = solver == "truthprobe"
    dtype = torch.float64 if solver == "newton" else torch.float32
    if device.type == "mps" and dtype == torch.float64:
        dtype = torch.float32
    splits = cv_splits(labels, groups, folds=folds, solver=solver, seed=seed)
    chunk = heads_per_chunk(n, d, g_total, memory_bytes, torch.finfo(dtype).bits // 8)
    y_all = torch.as_tensor(labels, dtype=dtype, device=device)
    sums = {m: np.zeros(g_total) for m in METRICS}
    counts = {m: np.zeros(g_total) for m in METRICS}  # folds where the metric is defined
    coef = np.zeros((g_total, d + 1)) if refit else None
    max_used, not_conv = 0, 0
    jobs = folds + int(refit)
    bar = tqdm(
        total=math.ceil(g_total / chunk) * jobs,
        disable=not progress,
        desc=f"probing {g_total} heads ({solver})",
        unit="fit",
    )

    def solve(x_tr: Tensor, y_tr: Tensor, fold: int) -> Tensor:
        nonlocal max_used, not_conv
        if solver == "newton":
            w, it = newton_logistic(x_tr, y_tr, l2, max_iter=max_iter, tol=tol)
            max_used = max(max_used, int(it.max()))
            not_conv += int((it >= max_iter).sum())
            return w
        recipe: dict[str, Any] = dict(ADAMW_RECIPE)
        if exact:  # index order, one mean BCE over all the model's heads (the authors' tensor)
            return adamw_logistic(x_tr, y_tr, shuffle=False, loss_heads=g_total, **recipe)
        gen = torch.Generator().manual_seed(seed * 1000 + fold)
        return adamw_logistic(x_tr, y_tr, generator=gen, **recipe).to(x_tr.dtype)

    try:
        for start in range(0, g_total, chunk):
            stop = min(g_total, start + chunk)
            x = head_chunk(acts, start, stop, device, dtype)
            for fold, (tr, te) in enumerate(splits):
                tr_t = torch.as_tensor(tr, device=device)
                te_t = torch.as_tensor(te, device=device)
                if exact:  # raw features, as the authors fit them
                    x_tr, x_te = x[:, tr_t], x[:, te_t]
                else:
                    x_tr, x_te, _, _ = standardize(x[:, tr_t], x[:, te_t])
                w = solve(x_tr, y_all[tr_t], fold)
                dec = torch.einsum("gnd,gd->gn", x_te, w[:, :-1]) + w[:, -1:]
                # the authors predict float32 sigmoid(logit) > 0.5 (not quite logit > 0)
                pred = (torch.sigmoid(dec) > 0.5).cpu().numpy() if exact else None
                fold_metrics = head_metrics(dec.detach().cpu().double().numpy(), labels[te], pred)
                for m in METRICS:
                    ok = np.isfinite(fold_metrics[m])
                    sums[m][start:stop] += np.where(ok, fold_metrics[m], 0.0)
                    counts[m][start:stop] += ok
                bar.update()
                del x_tr, x_te
            if coef is not None:
                if exact:
                    coef[start:stop] = solve(x, y_all, folds).cpu().double().numpy()
                else:
                    x_s, _, mean, scale = standardize(x, x[:, :0])
                    w = solve(x_s, y_all, folds)
                    w_orig = w[:, :-1] / scale[:, 0]
                    b_orig = w[:, -1] - (w_orig * mean[:, 0]).sum(dim=1)
                    both = torch.cat([w_orig, b_orig[:, None]], 1)
                    coef[start:stop] = both.cpu().double().numpy()
                bar.update()
            del x
    finally:
        bar.close()
    with np.errstate(invalid="ignore", divide="ignore"):
        metrics = {
            m: np.where(counts[m] > 0, sums[m] / counts[m], np.nan).reshape(n_layers, n_heads)
            for m in METRICS
        }
    return _FitResult(metrics, coef, max_used, not_conv)


def fit_truth_scores(
    acts: Any,
    labels: Any = None,
    *,
    folds: int = 5,
    solver: Solver = "newton",
    l2: float = 1.0,
    seed: int | None = None,
    groups: Any = None,
    example_keys: Any = None,
    model: str = "",
    dataset: str = "",
    device: str | torch.device | None = None,
    max_iter: int = 50,
    tol: float = 1e-10,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    progress: bool = True,
) -> TruthScores:
    """Truth Scores of every head: k-fold cross-validated logistic-probe metrics.

    Args:
        acts: a :class:`~lineage_lens.activations.HeadActivations` (its labels are used), or an
            array/tensor ``[N, n_layers, n_heads, d_head]``.
        labels: ``[N]`` in {0, 1} (1 = truthful, the positive class); required for arrays.
        folds: number of cross-validation folds, all shuffled with ``random_state=seed``:
            ``StratifiedGroupKFold`` over ``groups`` when groups are known (so the truthful and
            hallucinated answers of one source row never sit on both sides of a fold), else
            ``StratifiedKFold``; ``solver="truthprobe"`` uses the authors' unstratified,
            ungrouped ``KFold``.
        solver: ``"newton"`` (exact L2 logistic regression), ``"adamw"`` (the paper's recipe on
            our folds and standardised features) or ``"truthprobe"`` (the authors' published
            procedure exactly); see the module docstring.
        l2: Newton's L2 penalty on the standardised weights (``1/C`` of scikit-learn; default
            ``1.0`` = ``C=1``).
        seed: seeds the folds (and ``"adamw"``'s shuffling); same seed -> identical scores.
            Default: 42 for ``"truthprobe"`` (the authors' default), 0 for the other solvers.
        groups: ``[N]`` group label of each example (e.g. ``source_id``) for grouped folds;
            default: the ``source_ids`` of a HeadActivations, none for arrays. At least
            ``folds`` groups are needed (:class:`~lineage_lens.errors.ConfigError` otherwise).
            Not allowed with ``"truthprobe"`` (its folds are the authors').
        example_keys: ``[N]`` identity of each example's content (e.g.
            :func:`lineage_lens.data.example_keys`: prompt text, label and image). Identical
            examples -- the same label and the same key; without keys, exactly the same
            activations -- are always put in one group with everything their groups hold, so
            copies never sit on both sides of a fold (every solver); copies across groups are
            reported with ``warnings.warn``.
        model, dataset: provenance stored in the result (``model`` defaults to the
            HeadActivations' model).
        device: torch device for the fits (default: the tensor's device, else CPU).
        max_iter, tol: Newton stopping rule (per head: decrement ``<= tol * n_train``).
        memory_bytes: approximate working memory per chunk of heads.
        progress: show a tqdm bar.

    Returns:
        :class:`~lineage_lens.scores.TruthScores` with ``accuracy`` (the Truth Score),
        ``precision``, ``recall``, ``f1`` and ``auroc``, each ``[n_layers, n_heads]`` and averaged
        over the folds (the mean of the fold values, as the authors aggregate; AUROC over the
        folds whose test part holds both classes).
    """
    probe = HeadProbe(
        folds=folds,
        solver=solver,
        l2=l2,
        seed=seed,
        groups=groups,
        device=device,
        refit=False,
        max_iter=max_iter,
        tol=tol,
        memory_bytes=memory_bytes,
        progress=progress,
    )
    probe.fit(acts, labels, example_keys=example_keys, model=model, dataset=dataset)
    return probe.scores_


def _resolve_seed(solver: str, seed: int | None) -> int:
    """The fold seed: ``seed`` checked; by default 42 for ``"truthprobe"`` (theirs), else 0."""
    if seed is None:
        return TRUTHPROBE_SEED if solver == "truthprobe" else 0
    return check_seed(seed)


class HeadProbe(ShortRepr, BaseEstimator):
    """Scikit-learn estimator: one logistic probe per attention head.

    ``fit(acts, labels)`` cross-validates every head (``scores_``, a
    :class:`~lineage_lens.scores.TruthScores`) and, with ``refit=True``, fits a final probe per
    head on all examples (``coef_ [L, H, d]``, ``intercept_ [L, H]``, in the original,
    unstandardised feature space; costs one more fit). See :func:`fit_truth_scores` for the
    parameters; ``groups`` here is the default for ``fit(..., groups=)``.

    The constructor only stores its arguments (they are checked by ``fit``), so
    ``get_params()``, ``set_params()`` and ``sklearn.base.clone()`` work as for any scikit-learn
    estimator. It shows itself as the library's other results do: a one-line ``repr`` and a small
    table in Jupyter (hyperparameters, and once fitted the model, shape and scores).
    """

    def __init__(
        self,
        folds: int = 5,
        solver: Solver = "newton",
        l2: float = 1.0,
        seed: int | None = None,
        *,
        groups: Any = None,
        device: str | torch.device | None = None,
        refit: bool = True,
        max_iter: int = 50,
        tol: float = 1e-10,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        progress: bool = False,
    ) -> None:
        self.folds = folds
        self.solver = solver
        self.l2 = l2
        self.seed = seed
        self.groups = groups
        self.device = device
        self.refit = refit
        self.max_iter = max_iter
        self.tol = tol
        self.memory_bytes = memory_bytes
        self.progress = progress

    def _repr_fields(self) -> list[tuple[str, str]]:
        fields = [
            ("folds", str(self.folds)),
            ("solver", repr(self.solver)),
            ("l2", number(self.l2)),
            ("seed", number(self.seed)),
            ("refit", str(self.refit)),
        ]
        scores = getattr(self, "scores_", None)
        if scores is None:
            return [*fields, ("fitted", "no")]
        acc = scores.get(scores.default_metric)
        return [
            *fields,
            ("model", label(scores.model)),
            ("shape", str(scores.shape)),
            ("n", str(scores.n)),
            (f"mean {scores.default_metric}", f"{float(np.nanmean(acc)):.4g}"),
            (f"max {scores.default_metric}", f"{float(np.nanmax(acc)):.4g}"),
        ]

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, str]:
        """What Jupyter shows: the library's one-line ``repr`` and HTML table (not scikit-learn's
        estimator diagram, which would list hyperparameters only)."""
        return {"text/plain": repr(self), "text/html": self._repr_html_()}

    def _check_params(self) -> None:
        """Check the hyperparameters stored by ``__init__``/``set_params`` (called by ``fit``)."""
        if self.solver not in SOLVERS:
            raise ConfigError(f"solver must be one of {SOLVERS}, got {self.solver!r}.")
        if not (isinstance(self.l2, (int, float)) and math.isfinite(self.l2) and self.l2 > 0):
            raise ConfigError(f"l2 must be a finite number > 0, got {self.l2!r}.")
        if not (isinstance(self.max_iter, int) and self.max_iter >= 1):
            raise ConfigError(f"max_iter must be a positive integer, got {self.max_iter!r}.")
        if not self.tol > 0:
            raise ConfigError(f"tol must be > 0, got {self.tol!r}.")

    def fit(
        self,
        acts: Any,
        labels: Any = None,
        *,
        groups: Any = None,
        example_keys: Any = None,
        model: str = "",
        dataset: str = "",
    ) -> HeadProbe:
        """Cross-validate (and optionally refit) a probe per head; returns ``self``.

        ``groups`` (``[N]``, e.g. ``source_id``) overrides ``self.groups`` and the
        ``source_ids`` of a HeadActivations; identical examples (``example_keys``, or equal
        activations) share a fold; see :func:`fit_truth_scores`."""
        self._check_params()
        arr, y, info = _as_arrays(acts, labels)
        exact = self.solver == "truthprobe"
        check_folds(y, self.folds, stratified=not exact)
        seed = _resolve_seed(self.solver, self.seed)
        explicit = groups if groups is not None else self.groups
        if exact and explicit is not None:
            raise ConfigError(
                "solver='truthprobe' reproduces the authors' folds (unstratified, ungrouped "
                "KFold), so it takes no groups=; use solver='adamw' or 'newton' for grouped folds."
            )
        if exact:
            base = None
        else:
            chosen = explicit if explicit is not None else info.get("source_ids")
            base = as_groups(chosen, len(y), self.folds)
        pairs = identical_pairs(arr, y, example_keys)
        warn_identical(pairs, base)
        group_arr = join_identical(base, pairs, len(y))  # copies in one fold, every solver
        n_joined = 0 if group_arr is None else len(np.unique(group_arr))
        if group_arr is not None and n_joined < self.folds:
            raise DataError(
                f"{self.folds}-fold cross-validation needs at least {self.folds} groups of "
                f"examples; with identical examples kept together, the {len(y)} examples fall "
                f"into {n_joined} group(s). Add distinct examples, drop the copies, or use fewer "
                "folds."
            )
        device = _resolve_device(self.device, arr)
        t0 = time.perf_counter()
        n, n_layers, n_heads, d = arr.shape
        log.info(
            "Fitting %d x %d head probes (%s, %d folds) on %d examples of dim %d",
            n_layers,
            n_heads,
            self.solver,
            self.folds,
            n,
            d,
        )
        try:
            res = _fit(
                arr,
                y,
                folds=self.folds,
                solver=self.solver,
                l2=float(self.l2),
                seed=seed,
                groups=group_arr,
                device=device,
                refit=self.refit,
                max_iter=self.max_iter,
                tol=self.tol,
                memory_bytes=self.memory_bytes,
                progress=self.progress,
            )
        except torch.OutOfMemoryError as exc:
            raise LineageLensError(
                f"out of memory while probing; pass a smaller memory_bytes (now {self.memory_bytes})."
            ) from exc
        elapsed = time.perf_counter() - t0
        if res.not_converged:
            log.warning(
                "%d head fits did not converge within max_iter=%d", res.not_converged, self.max_iter
            )
        joined = group_arr is not base
        if exact and not joined:
            cv = "KFold (unstratified, ungrouped: the authors')"
        elif exact:
            cv = "KFold over groups of identical examples (the authors' KFold otherwise)"
        elif group_arr is not None:
            what = "source_id" if base is not None else "identical examples"
            extra = ", identical examples joined" if joined and base is not None else ""
            cv = f"StratifiedGroupKFold (groups: {what}{extra})"
        else:
            cv = "StratifiedKFold"
        meta: dict[str, Any] = {
            "positive_label": 1,
            "cv": cv,
            "standardize": "none (raw features)" if exact else "train-fold mean/std",
            "fit_seconds": round(elapsed, 3),
            "n_truthful": int(y.sum()),
            "n_hallucinated": int(len(y) - y.sum()),
        }
        if group_arr is not None:
            meta["n_groups"] = len(np.unique(group_arr))
        if self.solver == "newton":
            meta |= {"l2": float(self.l2), "max_newton_iter_used": res.max_iter_used}
        elif exact:
            meta |= {
                "recipe": dict(ADAMW_RECIPE),
                "batches": "index order",
                "loss": f"mean BCE over batch and all {n_layers * n_heads} heads",
                "threshold": "float32 sigmoid(logit) > 0.5",
            }
        else:
            meta |= {"recipe": dict(ADAMW_RECIPE)}
        self.scores_ = TruthScores(
            res.metrics,
            model=model or info.get("model", ""),
            dataset=dataset,
            n=int(n),
            folds=int(self.folds),
            solver=self.solver,
            seed=seed,
            meta=meta,
        )
        self.n_features_in_ = d
        self.shape_ = (n_layers, n_heads)
        if res.coef is not None:
            self.coef_ = res.coef[:, :-1].reshape(n_layers, n_heads, d)
            self.intercept_ = res.coef[:, -1].reshape(n_layers, n_heads)
        else:  # no final probes: drop those of an earlier fit (refit changed by set_params)
            self.__dict__.pop("coef_", None)
            self.__dict__.pop("intercept_", None)
        log.info("Probed %d heads in %.2fs", n_layers * n_heads, elapsed)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise ConfigError("this HeadProbe has no final probes; call fit() with refit=True.")

    def decision_function(self, acts: Any) -> Float[np.ndarray, "n layer head"]:
        """Logit of "truthful" for each example and head, ``[N, L, H]``."""
        self._check_fitted()
        arr = acts.acts if hasattr(acts, "acts") else acts
        if isinstance(arr, Tensor):
            arr = arr.detach().cpu().numpy()
        arr = np.asarray(arr, dtype=np.float64)
        expected = (*self.shape_, self.n_features_in_)
        if arr.ndim != 4 or arr.shape[1:] != expected:
            raise ShapeMismatchError(
                "activations for HeadProbe", ("N", *expected), tuple(arr.shape)
            )
        return np.einsum("nlhd,lhd->nlh", arr, self.coef_) + self.intercept_

    def predict_proba(self, acts: Any) -> Float[np.ndarray, "n layer head"]:
        """Probability of "truthful" (label 1) for each example and head, ``[N, L, H]``."""
        return 1.0 / (1.0 + np.exp(-self.decision_function(acts)))

    def predict(self, acts: Any) -> Int[np.ndarray, "n layer head"]:
        """Predicted label (1 = truthful) for each example and head, ``[N, L, H]``."""
        return (self.decision_function(acts) > 0).astype(np.int64)
