"""Truth Scores: one logistic probe per attention head, fitted for all heads at once.

A head's *Truth Score* is the k-fold cross-validated accuracy of a linear probe that predicts, from
the head's ``hook_z`` vector at the answer's last token, whether the answer is truthful
(label ``1``) or hallucinated (label ``0``). The positive class of precision, recall, F1 and AUROC
is therefore **truthful** (label 1).

Every head gets its own probe, but nothing loops over heads: the ``n_layers * n_heads`` heads are a
batch axis of tensors (processed in memory-bounded chunks of heads), and each fold fits all of them
together.

Three solvers:

``"newton"`` (default)
    L2-regularised logistic regression solved exactly by batched Newton (IRLS) steps with a
    vectorised Armijo line search: per head the ``[d+1, d+1]`` Hessian is built with one batched
    matmul and solved by a batched Cholesky factorisation, in float64. It minimises, per head,
    ``sum_i BCE(y_i, w.x_i + b) + l2/2 * ||w||^2`` (the intercept ``b`` is not penalised) on
    features standardised with the training fold's mean and standard deviation -- the same model as
    ``sklearn.linear_model.LogisticRegression(C=1/l2)`` after a ``StandardScaler``. The default
    ``l2=1.0`` is scikit-learn's default ``C=1``.

``"adamw"``
    The TruthProbe paper's recipe, for parity: a linear probe (zero init, BCE loss) trained with
    AdamW (lr 1e-2, weight decay 1e-3 on weight and bias), 200 epochs of shuffled mini-batches of
    512, in float32, on our folds and standardised features. Each head follows the trajectory a
    per-head ``nn.Linear`` loop with the same folds, shuffles and standardisation gives it;
    ``l2`` is ignored. It is *not* the authors' published procedure (their folds, raw features,
    unshuffled batches and all-heads loss differ: 0.025 mean |Δaccuracy| per head on Vicuna-sized
    data, issue 19); ``"truthprobe"`` is. On the CPU a compiled kernel
    (:mod:`lineage_lens._recipe_kernel`, numba) trains each head in cache, heads spread over
    threads; on other devices batched tensor operations do (:func:`adamw_logistic`).

``"truthprobe"``
    The authors' published procedure exactly (TruthProbe's ``vectorized_linear_probe``,
    ``probing/probe_vicuna_series.py``): unstratified, ungrouped ``KFold(folds, shuffle=True,
    random_state=seed)`` over the example order given (seed 42 by default, theirs), raw features
    (no standardisation), zero-initialised weights and bias, AdamW (lr 1e-2, weight decay 1e-3,
    torch defaults otherwise) on one mean BCE-with-logits over the batch *and all
    ``n_layers * n_heads`` heads* (their single ``[L, H, d]`` tensor: each head's gradient is
    divided by the head count, which moves Adam only through its ``eps``), mini-batches of 512 in
    index order without shuffling, 200 epochs, prediction ``float32 sigmoid(logit) > 0.5``, and
    each metric the mean of its per-fold values. It runs through the same compiled kernel as
    ``"adamw"``; use it to reproduce published score files (``cv5_head_metrics.csv``).
    Its folds can put the truthful and hallucinated answers of one source row on both sides of
    a split -- that is the authors' choice, kept on purpose. Identical examples are the one
    exception (below): their ``KFold`` runs over groups of identical examples, which is the
    authors' ``KFold`` exactly when there are none.

Folds: ``"newton"`` and ``"adamw"`` cross-validate with ``StratifiedGroupKFold`` by source row
whenever groups are known (the ``source_ids`` of a HeadActivations, or ``groups=``), so the two
answers of one HaluEval row never sit on both sides of a split, and with ``StratifiedKFold``
otherwise. Every solver keeps identical examples -- the same label and the same
``example_keys`` (prompt text and image content; :func:`lineage_lens.pipeline.score_model`
passes them), or without keys exactly the same activations -- in one fold: they join one group,
together with everything their groups hold (a union of the groups), so copies can never sit on
both sides of a split and inflate the scores. Such copies are still reported with
``warnings.warn``.

Which to use (BENCHMARKS.md 7a, 2 CPU cores, 32x32 heads of 128 dims): on a CPU ``"adamw"`` is
the faster solver at every size measured -- N=292: 4.1 s against Newton's 21 s; N=2726: 42 s
against 69 s; 109x and 49x the paper's per-head loop -- and it gives the recipe's scores. Newton
is the default because its result is the unique optimum of a stated objective (it does not
depend on shuffles, epochs or a learning rate); its scores come within 0.0045 of the recipe's at
N=2726 (fold-seed noise 0.007) but differ by 0.011-0.012 accuracy per head at a few hundred
examples.

Typical use::

    acts = collect_head_activations(model, examples)   # HeadActivations [N, L, H, d]
    scores = fit_truth_scores(acts, model="smollm2", dataset="halueval")
    scores.top_k(5)
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from scipy.stats import rankdata
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold
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
from lineage_lens.scores import METRICS, TruthScores

log = logging.getLogger(__name__)

Solver = Literal["newton", "adamw", "truthprobe"]
SOLVERS: tuple[str, ...] = ("newton", "adamw", "truthprobe")
Backend = Literal["auto", "numba", "torch"]
BACKENDS: tuple[str, ...] = ("auto", "numba", "torch")

#: The paper's AdamW recipe (used by ``solver="adamw"`` and ``solver="truthprobe"``).
ADAMW_RECIPE: dict[str, float | int] = {
    "lr": 1e-2,
    "weight_decay": 1e-3,
    "epochs": 200,
    "batch_size": 512,
}

#: Fold seed of ``solver="truthprobe"`` when none is given: the authors' ``--seed`` default.
TRUTHPROBE_SEED = 42

#: Bytes of float64 working memory a Newton chunk of heads may use (approximate).
DEFAULT_MEMORY_BYTES = 1 << 30


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


def _check_folds(labels: np.ndarray, folds: int, *, stratified: bool = True) -> None:
    if not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ConfigError(f"folds must be an integer >= 2, got {folds!r}.")
    n_pos, n_neg = int(labels.sum()), int(len(labels) - labels.sum())
    if min(n_pos, n_neg) == 0:
        raise DataError(
            f"labels hold only one class ({n_pos} truthful, {n_neg} hallucinated); a probe needs "
            "both. Add examples of the missing label."
        )
    if not stratified:
        if len(labels) < folds:
            raise DataError(
                f"{folds}-fold cross-validation needs at least {folds} examples; got "
                f"{len(labels)}. Use more examples or fewer folds."
            )
        return
    if min(n_pos, n_neg) < folds:
        raise DataError(
            f"{folds}-fold cross-validation needs at least {folds} examples of each class; got "
            f"{n_pos} truthful and {n_neg} hallucinated. Use more examples or fewer folds."
        )


def _as_groups(groups: Any, n: int, folds: int) -> np.ndarray | None:
    """Validated group labels ``[N]`` (or ``None``); at least ``folds`` distinct groups."""
    if groups is None:
        return None
    if isinstance(groups, Tensor):
        groups = groups.detach().cpu().numpy()
    arr = np.asarray(groups)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ShapeMismatchError(
            "groups vs activations",
            (n,),
            tuple(arr.shape),
            "groups (e.g. source_id) need one entry per example (axis 0 of acts).",
        )
    n_groups = len(np.unique(arr))
    if n_groups < folds:
        raise ConfigError(
            f"{folds}-fold grouped cross-validation needs at least {folds} groups; the "
            f"{n} examples fall into {n_groups} group(s) (source_id). Use fewer folds, more "
            "source rows, or groups=None if the examples really are independent."
        )
    return arr


def _duplicate_rows(acts: Any, labels: np.ndarray) -> list[tuple[int, int]]:
    """Pairs ``(first, later)`` of examples with the same label whose activations are exactly
    equal in every head.

    A fingerprint of three heads finds candidates (cheap, one pass over ``3 * d`` values per
    example); candidates are confirmed on the whole row."""
    n = int(acts.shape[0])
    flat = acts.reshape(n, -1, acts.shape[-1])
    g = flat.shape[1]
    probe_heads = sorted({0, g // 2, g - 1})
    sample = flat[:, probe_heads, :]
    sample = sample.detach().cpu().numpy() if isinstance(sample, Tensor) else np.asarray(sample)
    sample = np.ascontiguousarray(sample.reshape(n, -1))
    first: dict[bytes, list[int]] = {}
    pairs: list[tuple[int, int]] = []
    for i in range(n):
        key = int(labels[i]).to_bytes(8, "little", signed=True) + sample[i].tobytes()
        for j in first.get(key, []):
            a, b = flat[j], flat[i]
            same = bool(torch.equal(a, b)) if isinstance(a, Tensor) else np.array_equal(a, b)
            if same:
                pairs.append((j, i))
                break
        else:
            first.setdefault(key, []).append(i)
    return pairs


def _identical_pairs(acts: Any, labels: np.ndarray, keys: Any) -> list[tuple[int, int]]:
    """Pairs ``(first, later)`` of identical examples, both with the same label: with ``keys``
    (what each example is: prompt text, image) those with the same key, else -- the activations
    being all there is to go by -- those with exactly the same activations
    (:func:`_duplicate_rows`).

    With keys, examples of different keys stay apart even where their activations are equal (a
    model that cannot tell prompts apart, e.g. one whose activations are constant); that is
    logged."""
    if keys is None:
        return _duplicate_rows(acts, labels)
    keys = list(keys)
    if len(keys) != len(labels):
        raise ShapeMismatchError(
            "example_keys vs activations",
            (len(labels),),
            (len(keys),),
            "example_keys need one entry per example (axis 0 of acts).",
        )
    pairs: list[tuple[int, int]] = []
    first: dict[tuple[Any, int], int] = {}
    for i, key in enumerate(keys):
        j = first.setdefault((key, int(labels[i])), i)
        if j != i:
            pairs.append((j, i))
    alike = [(a, b) for a, b in _duplicate_rows(acts, labels) if keys[a] != keys[b]]
    if alike:
        log.warning(
            "%d examples have exactly the activations of an example with another prompt (e.g. "
            "examples %d and %d): the model does not tell them apart",
            len(alike),
            *alike[0],
        )
    return pairs


def _join_identical(
    groups: np.ndarray | None, pairs: list[tuple[int, int]], n: int
) -> np.ndarray | None:
    """The groups with identical examples joined: the connected components of "same group" and
    "identical" (a union of both), each labelled by the group of its first example (or, without
    ``groups``, that example's index). Unchanged when no pair crosses two groups."""
    if groups is not None:
        pairs = [(a, b) for a, b in pairs if groups[a] != groups[b]]
    if not pairs:
        return groups
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    src, dst = [a for a, _ in pairs], [b for _, b in pairs]
    if groups is not None:  # link every example to the first example of its group
        codes, _ = pd.factorize(groups)
        _, first = np.unique(codes, return_index=True)  # codes are 0, 1, ...: first[code]
        src += list(range(n))
        dst += first[codes].tolist()
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    _, head = np.unique(comp, return_index=True)  # the first example of each component
    rep = head[comp]
    return np.asarray(groups)[rep] if groups is not None else rep


def _warn_identical(pairs: list[tuple[int, int]], groups: np.ndarray | None) -> None:
    """``warnings.warn`` (visible in notebooks) about identical examples in different groups:
    they are kept in one fold, but they still weigh more than once in training."""
    crossing = pairs if groups is None else [(a, b) for a, b in pairs if groups[a] != groups[b]]
    if not crossing:
        if pairs:
            log.info("%d duplicate examples, each within its own group (one fold)", len(pairs))
        return
    j, i = crossing[0]
    where = (
        "another example"
        if groups is None
        else f"an example in another group (groups {str(groups[j])!r} and {str(groups[i])!r})"
    )
    warnings.warn(
        f"{len(crossing)} examples duplicate {where} exactly: the same label and the same "
        f"prompt or activations (e.g. examples {j} and {i}). Each set of copies is kept in one "
        "cross-validation fold, so they cannot inflate the Truth Scores, but each copy still "
        "weighs as one more example in training; drop the duplicates.",
        UserWarning,
        stacklevel=3,
    )


def _resolve_device(device: str | torch.device | None, acts: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(acts, Tensor):
        return acts.device
    return torch.device("cpu")


def _head_chunk(
    acts: Any, start: int, stop: int, device: torch.device, dtype: torch.dtype
) -> Float[Tensor, "head n d"]:
    """Heads ``start:stop`` (flattened ``layer * n_heads + head``) as ``[heads, N, d]``."""
    n, n_layers, n_heads, d = acts.shape
    flat = acts.reshape(n, n_layers * n_heads, d)
    chunk = flat[:, start:stop, :]
    if isinstance(chunk, Tensor):
        t = chunk.to(device=device, dtype=dtype)
    else:
        arr = np.ascontiguousarray(chunk, dtype=np.float32)
        with warnings.catch_warnings():
            # a read-only memmap: the tensor is only read (transposed into a copy below), so
            # PyTorch's warning about non-writable arrays does not apply; copying would double
            # the memory of a large capture
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = torch.from_numpy(arr).to(device, dtype)
    t = t.transpose(0, 1).contiguous()
    finite = torch.isfinite(t).all(dim=(1, 2))
    if not bool(finite.all()):
        first = start + int(torch.nonzero(~finite)[0, 0])
        raise DataError(
            f"activations contain NaN or infinite values (first at layer {first // n_heads}, head "
            f"{first % n_heads}); recapture them in float32 or drop the bad examples."
        )
    return t


def standardize(
    x_train: Float[Tensor, "head n d"], x_test: Float[Tensor, "head m d"]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Standardise both with the training statistics; return ``(x_train, x_test, mean, scale)``.

    Per head and feature (``mean`` and ``scale`` are ``[head, 1, d]``; a constant feature keeps
    scale 1): what :func:`fit_truth_scores` does to each fold before :func:`newton_logistic` or
    :func:`adamw_logistic`, so a solver run on its own sees the same features."""
    mean = x_train.mean(dim=1, keepdim=True)
    scale = x_train.std(dim=1, keepdim=True, unbiased=False)
    scale = torch.where(scale > 1e-12, scale, torch.ones_like(scale))
    return (x_train - mean) / scale, (x_test - mean) / scale, mean, scale


# --------------------------------------------------------------------------------------------
# Solvers (all heads of a chunk at once)
# --------------------------------------------------------------------------------------------


def _objective(eta: Tensor, y: Tensor, w: Tensor, pen: Tensor) -> Tensor:
    """Per-head penalised negative log-likelihood (sum over examples)."""
    nll = torch.nn.functional.softplus(eta) - y * eta
    return nll.sum(dim=1) + 0.5 * (pen * w * w).sum(dim=1)


def newton_logistic(
    x: Float[Tensor, "head n d"],
    y: Float[Tensor, " n"],
    l2: float = 1.0,
    *,
    max_iter: int = 50,
    tol: float = 1e-10,
    init: Float[Tensor, "head d1"] | None = None,
    hessian_dtype: torch.dtype | None = torch.float32,
) -> tuple[Float[Tensor, "head d1"], Int[Tensor, " head"]]:
    """Fit one L2-regularised logistic regression per head by batched (lazy) Newton steps.

    Minimises ``sum_i [softplus(eta_i) - y_i * eta_i] + l2/2 * ||w||^2`` per head with
    ``eta = x @ w + b``; the intercept (last coefficient) is not penalised. Gradients, the
    objective and the solution are in the dtype of ``x`` (float64 in :func:`fit_truth_scores`).
    The Hessians ``[heads, d+1, d+1]`` are built with one batched matmul in ``hessian_dtype``
    (float32 by default: twice as fast; ``None`` = the dtype of ``x``) and factorised by batched
    Cholesky. A head's Hessian is rebuilt only while Newton makes slow progress (its decrement
    fell by less than 10x, or the line search shortened the step); otherwise the last factor is
    reused, which costs two matrix-vector products instead of a matrix-matrix product. Since the
    gradient is exact, the fixed point is the exact optimum either way. Each step backtracks
    (Armijo) per head; a head stops when ``g^T H^-1 g / 2 <= tol * n``.

    Args:
        x: features (already standardised), ``[heads, n, d]``.
        y: labels ``[n]`` in {0, 1} (same for all heads), float.
        l2: L2 penalty (``1 / C`` of scikit-learn), must be > 0.
        max_iter: at most this many steps per head.
        tol: stopping threshold on the Newton decrement, per example.
        init: warm start ``[heads, d+1]`` (intercept last); zeros by default.
        hessian_dtype: dtype of the Hessian product (``None``: that of ``x``).

    Returns:
        ``(coef [heads, d+1] with the intercept last, iterations used per head)``.
    """
    if not l2 > 0:
        raise ConfigError(f"l2 must be > 0 for the Newton solver, got {l2}.")
    g_all, n, d = x.shape
    dev, dt = x.device, x.dtype
    z = torch.cat([x, torch.ones(g_all, n, 1, dtype=dt, device=dev)], dim=2)
    hdt = dt if hessian_dtype is None else hessian_dtype
    zh = z if hdt == dt else z.to(hdt)
    pen = torch.full((d + 1,), float(l2), dtype=dt, device=dev)
    pen[-1] = 0.0
    eye_pen = torch.diag(pen)
    if init is None:
        w = torch.zeros(g_all, d + 1, dtype=dt, device=dev)
        eta = torch.zeros(g_all, n, dtype=dt, device=dev)
    else:
        if init.shape != (g_all, d + 1):
            raise ShapeMismatchError("Newton warm start", (g_all, d + 1), tuple(init.shape))
        w = init.to(device=dev, dtype=dt).clone()
        eta = torch.bmm(z, w.unsqueeze(-1)).squeeze(-1)
    f = _objective(eta, y, w, pen)
    n_iter = torch.zeros(g_all, dtype=torch.long, device=dev)
    active = torch.arange(g_all, device=dev)
    za, zha = z, zh
    chol = torch.zeros(g_all, d + 1, d + 1, dtype=dt, device=dev)
    refresh = torch.ones(g_all, dtype=torch.bool, device=dev)
    prev_dec = torch.full((g_all,), math.inf, dtype=dt, device=dev)
    for _ in range(max_iter):
        if active.numel() == 0:
            break
        wa, etaa, fa = w[active], eta[active], f[active]
        p = torch.sigmoid(etaa)
        grad = torch.einsum("gnd,gn->gd", za, p - y) + pen * wa
        if bool(refresh.any()):
            idx = torch.nonzero(refresh).squeeze(1)
            zr = zha[idx]
            s = (p[idx] * (1.0 - p[idx])).to(hdt)
            hess = torch.bmm(zr.transpose(1, 2) * s.unsqueeze(1), zr).to(dt) + eye_pen
            factor, info = torch.linalg.cholesky_ex(hess)
            if bool((info != 0).any()):  # numerically indefinite: add a little ridge
                eye = torch.eye(d + 1, dtype=dt, device=dev)
                factor = torch.linalg.cholesky(hess + 1e-6 * eye)
            chol[idx] = factor
        step = torch.cholesky_solve(grad.unsqueeze(-1), chol).squeeze(-1)
        decrement = (grad * step).sum(dim=1)
        deta = torch.bmm(za, step.unsqueeze(-1)).squeeze(-1)
        t = torch.ones(active.numel(), dtype=dt, device=dev)
        accept = torch.zeros(active.numel(), dtype=torch.bool, device=dev)
        f_new = fa
        for _ in range(30):  # vectorised backtracking; eta is linear in the step length
            cand = _objective(etaa - t[:, None] * deta, y, wa - t[:, None] * step, pen)
            ok = cand <= fa - 1e-4 * t * decrement
            newly = ok & ~accept
            f_new = torch.where(newly, cand, f_new)
            accept |= ok
            if bool(accept.all()):
                break
            t = torch.where(accept, t, 0.5 * t)
        t = torch.where(accept, t, torch.zeros_like(t))  # no progress possible: keep w
        f_new = torch.where(accept, f_new, fa)
        w[active] = wa - t[:, None] * step
        eta[active] = etaa - t[:, None] * deta
        f[active] = f_new
        n_iter[active] += 1
        # A stale factor that failed to give a full step is rebuilt before being declared stuck.
        stuck = ~accept & refresh
        done = (0.5 * decrement <= tol * n) | stuck
        refresh = (decrement > 0.1 * prev_dec) | (t < 1)
        prev_dec = decrement
        if bool(done.any()):
            keep = ~done
            active, za = active[keep], za[keep]
            zha = za if zh is z else zha[keep]
            chol, refresh, prev_dec = chol[keep], refresh[keep], prev_dec[keep]
    return w, n_iter


#: Bytes of activations in one block of heads of :func:`adamw_logistic`'s tensor backend: small
#: enough that a block (and its shuffled copy) stays in the CPU's cache through all epochs.
ADAMW_BLOCK_BYTES = 8 << 20


def _adamw_step(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: int,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """One in-place AdamW update, operation for operation ``torch.optim.AdamW``'s default
    (decoupled weight decay, bias-corrected moments), without the optimizer's per-call overhead."""
    beta1, beta2 = betas
    param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))


def _adamw_numba(
    x: Float[Tensor, "head n d"],
    y: Float[Tensor, " n"],
    perms: Int[Tensor, "epoch n"],
    *,
    lr: float,
    weight_decay: float,
    batch_size: int,
    loss_heads: int = 1,
) -> Float[Tensor, "head d1"]:
    """:func:`adamw_logistic` through the compiled kernel, heads split evenly over threads."""
    from lineage_lens._recipe_kernel import adamw_probe_kernel

    xs = x.detach().to(torch.float32).contiguous().numpy()
    ys = y.detach().to(torch.float32).contiguous().numpy()
    order = perms.to(torch.int64).contiguous().numpy()
    out = np.empty((xs.shape[0], xs.shape[2] + 1), dtype=np.float32)

    def run(part: slice) -> None:
        adamw_probe_kernel(
            xs[part],
            ys,
            order,
            batch_size,
            lr,
            weight_decay,
            0.9,
            0.999,
            1e-8,
            loss_heads,
            out[part],
        )

    workers = min(torch.get_num_threads(), len(xs))
    if workers == 0:
        return torch.from_numpy(out)
    parts = [slice(int(b[0]), int(b[-1]) + 1) for b in np.array_split(np.arange(len(xs)), workers)]
    if workers == 1:
        run(parts[0])
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(run, parts))  # the kernel releases the GIL
    return torch.from_numpy(out)


def adamw_logistic(
    x: Float[Tensor, "head n d"],
    y: Float[Tensor, " n"],
    *,
    lr: float = 1e-2,
    weight_decay: float = 1e-3,
    epochs: int = 200,
    batch_size: int = 512,
    generator: torch.Generator | None = None,
    backend: Backend = "auto",
    block_bytes: int = ADAMW_BLOCK_BYTES,
    shuffle: bool = True,
    loss_heads: int = 1,
) -> Float[Tensor, "head d1"]:
    """The paper's probe recipe, batched over heads: zero init, BCE, AdamW, shuffled mini-batches.

    Every head follows the trajectory it would follow alone with ``torch.nn.Linear`` and
    ``torch.optim.AdamW`` (weight decay on weight and bias alike), to float32 rounding: AdamW is
    element-wise, and the heads share only the mini-batch order (one permutation per epoch from
    ``generator``; with ``shuffle=False`` every epoch takes the examples in index order, as the
    authors' ``vectorized_linear_probe`` does).

    ``loss_heads`` is the number of heads the loss is averaged over besides the batch: 1 (default)
    is each head's own mean BCE; the authors' code trains all ``n_layers * n_heads`` heads as one
    tensor with one mean BCE over ``(batch, layer, head)``, so each head's gradient is divided by
    that count as well. AdamW is invariant to that scale except through its ``eps`` (1e-8), so it
    changes the trajectory slightly; ``fit_truth_scores(solver="truthprobe")`` passes the count.

    Two backends compute it:

    ``"numba"`` (CPU tensors, the default there)
        :mod:`lineage_lens._recipe_kernel`: one compiled loop trains each head start to finish
        while its activations stay in cache, fetching each example row once per step for both
        products; heads are spread over ``torch.get_num_threads()`` threads. 2.6x the tensor
        backend on a CPU with one full batch, 6.3x with mini-batches (BENCHMARKS.md 7a).
    ``"torch"`` (any device, the default off the CPU)
        batched tensor operations, described below.
    ``"auto"``
        ``"numba"`` for CPU tensors, else ``"torch"``.

    What makes the tensor backend fast without changing the trajectory:

    * the intercept is a column of ones, so one parameter tensor ``[heads, d+1]`` holds every
      probe and one AdamW update (:func:`_adamw_step`) moves all of them;
    * the gradient of the mean BCE, ``X^T (sigmoid(Xw) - y) / batch``, is written out (no
      autograd) as two batched matrix-vector products, both in the shape that CPU BLAS runs fast
      (``w^T X^T`` and ``r^T X`` on ``X`` stored ``[n, d+1]``);
    * heads run in blocks of about ``block_bytes`` of activations, which stay in cache through
      all epochs; a mini-batch epoch gathers its block once in the epoch's order (one
      ``index_select``), a full batch (``batch_size >= n``) is used in place.

    Returns ``[heads, d+1]`` (intercept last) in float32.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "numba" if x.device.type == "cpu" else "torch"
    if backend == "numba" and x.device.type != "cpu":
        raise ConfigError(
            f"backend='numba' runs on the CPU, but the activations are on {x.device}; "
            "use backend='torch' (or 'auto') there"
        )
    if not (isinstance(loss_heads, (int, np.integer)) and loss_heads >= 1):
        raise ConfigError(f"loss_heads must be an integer >= 1, got {loss_heads!r}")
    g_all, n, d = x.shape
    y = y.float()
    if shuffle:
        perms = [torch.randperm(n, generator=generator).to(x.device) for _ in range(epochs)]
    else:
        perms = [torch.arange(n, device=x.device)] * epochs
    if backend == "numba":
        return _adamw_numba(
            x,
            y,
            torch.stack(perms),
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            loss_heads=int(loss_heads),
        )
    in_place = batch_size >= n or not shuffle  # the examples are used in their stored order
    per_block = max(1, min(g_all, block_bytes // max(n * (d + 1) * 4, 1)))
    out = torch.empty(g_all, d + 1, dtype=torch.float32, device=x.device)
    for block in torch.arange(g_all).tensor_split(math.ceil(g_all / per_block)):  # even sizes
        start, g = int(block[0]), len(block)
        xs = torch.ones(g, n, d + 1, device=x.device)  # [g, n, d+1], intercept column last
        xs[:, :, :d] = x[start : start + g]
        flat = xs.view(g * n, d + 1)
        offsets = (n * torch.arange(g, device=x.device)).unsqueeze(1)
        shuffled = None if in_place else torch.empty_like(xs)
        param = torch.zeros(g, d + 1, device=x.device)
        grad = torch.zeros_like(param)
        exp_avg, exp_avg_sq = torch.zeros_like(param), torch.zeros_like(param)
        row, grad_row = param.unsqueeze(1), grad.unsqueeze(1)  # [g, 1, d+1] views
        step = 0
        for perm in perms:
            if shuffled is None:
                xp, yp = xs, y  # index order, or a full batch (its mean ignores the order)
            else:
                index = (perm.unsqueeze(0) + offsets).view(-1)
                torch.index_select(flat, 0, index, out=shuffled.view(g * n, d + 1))
                xp, yp = shuffled, y[perm]
            for b0 in range(0, n, batch_size):
                xb, yb = xp[:, b0 : b0 + batch_size], yp[b0 : b0 + batch_size]
                logits = torch.bmm(row, xb.mT).squeeze(1)  # [g, b]
                # d(mean BCE)/d(logit), the mean over the batch and over loss_heads heads
                resid = torch.sigmoid_(logits).sub_(yb).div_(yb.shape[0] * loss_heads)
                torch.bmm(resid.unsqueeze(1), xb, out=grad_row)
                step += 1
                _adamw_step(
                    param, grad, exp_avg, exp_avg_sq, step, lr=lr, weight_decay=weight_decay
                )
        out[start : start + g] = param
    return out


# --------------------------------------------------------------------------------------------
# Metrics (vectorised over heads)
# --------------------------------------------------------------------------------------------


def head_metrics(
    decision: Float[np.ndarray, "head m"],
    y_true: Int[np.ndarray, " m"],
    pred: Bool[np.ndarray, "head m"] | None = None,
) -> dict[str, Float[np.ndarray, " head"]]:
    """Accuracy, precision, recall, F1 and AUROC of every head's held-out decision values.

    ``decision > 0`` predicts truthful (1), the positive class, unless ``pred`` gives the
    predictions (the truthprobe preset thresholds float32 ``sigmoid(logit) > 0.5`` as the authors
    do). Precision, recall and F1 are 0 when undefined (scikit-learn's ``zero_division=0``); AUROC
    is the Mann-Whitney statistic of ``decision`` via average ranks (ties count 1/2), as
    ``sklearn.metrics.roc_auc_score``, and NaN when ``y_true`` holds one class.
    """
    decision = np.asarray(decision, dtype=np.float64)
    y = np.asarray(y_true).astype(bool)
    pred = decision > 0 if pred is None else np.asarray(pred, dtype=bool)
    if pred.shape != decision.shape:
        raise ShapeMismatchError("head_metrics predictions", decision.shape, pred.shape)
    tp = (pred & y).sum(axis=1).astype(np.float64)
    fp = (pred & ~y).sum(axis=1).astype(np.float64)
    fn = (~pred & y).sum(axis=1).astype(np.float64)
    tn = (~pred & ~y).sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        auroc = np.full(decision.shape[0], np.nan)
    else:
        ranks = rankdata(decision, axis=1)
        auroc = (ranks[:, y].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return {
        "accuracy": (tp + tn) / len(y),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auroc": auroc,
    }


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


@dataclass
class _FitResult:
    metrics: dict[str, np.ndarray]  # name -> [G]
    coef: np.ndarray | None  # [G, d+1] in the original feature space, or None
    max_iter_used: int
    not_converged: int


def _heads_per_chunk(n: int, d: int, n_heads: int, memory_bytes: int, itemsize: int) -> int:
    per_head = 4 * n * (d + 1) * itemsize + 2 * (d + 1) ** 2 * itemsize
    return max(1, min(n_heads, memory_bytes // max(per_head, 1)))


def _splits(
    labels: np.ndarray, groups: np.ndarray | None, *, folds: int, solver: str, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The cross-validation folds: the authors' unstratified ``KFold`` for ``"truthprobe"`` (over
    ``groups`` of identical examples when there are any), ``StratifiedGroupKFold`` when groups
    are known, else ``StratifiedKFold`` (all shuffled with ``random_state=seed``). Every solver
    and backend fits exactly these folds."""
    n = len(labels)
    if solver == "truthprobe":
        cv_k = KFold(folds, shuffle=True, random_state=seed)
        if groups is None:
            return list(cv_k.split(np.zeros(n)))
        # KFold over the groups (identical examples) in order of first appearance: with every
        # group a single example this is the authors' KFold over the examples, index for index
        codes, uniques = pd.factorize(groups)
        return [
            (np.flatnonzero(np.isin(codes, tr)), np.flatnonzero(np.isin(codes, te)))
            for tr, te in cv_k.split(np.zeros(len(uniques)))
        ]
    if groups is None:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        return list(cv.split(np.zeros(n), labels))
    cv_g = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    return list(cv_g.split(np.zeros(n), labels, groups))


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
    splits = _splits(labels, groups, folds=folds, solver=solver, seed=seed)
    chunk = _heads_per_chunk(n, d, g_total, memory_bytes, torch.finfo(dtype).bits // 8)
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
            x = _head_chunk(acts, start, stop, device, dtype)
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
    if seed is None:
        return TRUTHPROBE_SEED if solver == "truthprobe" else 0
    return check_seed(seed)


class HeadProbe(ShortRepr):
    """Scikit-learn-style estimator: one logistic probe per attention head.

    ``fit(acts, labels)`` cross-validates every head (``scores_``, a
    :class:`~lineage_lens.scores.TruthScores`) and, with ``refit=True``, fits a final probe per
    head on all examples (``coef_ [L, H, d]``, ``intercept_ [L, H]``, in the original,
    unstandardised feature space; costs one more fit). See :func:`fit_truth_scores` for the
    parameters; ``groups`` here is the default for ``fit(..., groups=)``.
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

    def _validate_params(self) -> None:
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
        self._validate_params()
        arr, y, info = _as_arrays(acts, labels)
        exact = self.solver == "truthprobe"
        _check_folds(y, self.folds, stratified=not exact)
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
            base = _as_groups(chosen, len(y), self.folds)
        pairs = _identical_pairs(arr, y, example_keys)
        _warn_identical(pairs, base)
        group_arr = _join_identical(base, pairs, len(y))  # copies in one fold, every solver
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
