"""Exact L2 logistic regression of every head at once: batched Newton (IRLS) steps.

:func:`newton_logistic` minimises, per head, ``sum_i BCE(y_i, w.x_i + b) + l2/2 * ||w||^2``
(the intercept ``b`` is not penalised) with one batched Hessian matmul and a batched Cholesky
factorisation per step and a vectorised Armijo line search -- the same model as
``sklearn.linear_model.LogisticRegression(C=1/l2)`` after a ``StandardScaler``
(:func:`standardize`). Heads are fitted in memory-bounded chunks: :func:`heads_per_chunk` sizes
them from ``memory_bytes`` (:data:`DEFAULT_MEMORY_BYTES`) and :func:`head_chunk` loads one as a
``[heads, N, d]`` tensor.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from lineage_lens.errors import ConfigError, DataError, ShapeMismatchError

#: Bytes of float64 working memory a Newton chunk of heads may use (approximate).
DEFAULT_MEMORY_BYTES = 1 << 30


def heads_per_chunk(n: int, d: int, n_heads: int, memory_bytes: int, itemsize: int) -> int:
    """How many of ``n_heads`` heads one chunk may hold: the heads whose working set (features
    with the intercept column, their copies and two ``[d+1, d+1]`` matrices, ``itemsize`` bytes
    per number, ``n`` examples) fits in ``memory_bytes``; at least one."""
    per_head = 4 * n * (d + 1) * itemsize + 2 * (d + 1) ** 2 * itemsize
    return max(1, min(n_heads, memory_bytes // max(per_head, 1)))


def head_chunk(
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
    scale 1): what :func:`~lineage_lens.probing.fit_truth_scores` does to each fold before
    :func:`newton_logistic` or :func:`~lineage_lens.probing.adamw_logistic`, so a solver run on
    its own sees the same features."""
    mean = x_train.mean(dim=1, keepdim=True)
    scale = x_train.std(dim=1, keepdim=True, unbiased=False)
    scale = torch.where(scale > 1e-12, scale, torch.ones_like(scale))
    return (x_train - mean) / scale, (x_test - mean) / scale, mean, scale


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
    objective and the solution are in the dtype of ``x`` (float64 in
    :func:`~lineage_lens.probing.fit_truth_scores`).
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
