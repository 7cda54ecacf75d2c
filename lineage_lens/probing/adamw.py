"""The TruthProbe paper's probe recipe, batched over heads: zero init, BCE, AdamW, mini-batches.

:func:`adamw_logistic` trains every head along the trajectory a per-head ``nn.Linear`` and
``torch.optim.AdamW`` loop gives it (:data:`ADAMW_RECIPE`: lr 1e-2, weight decay 1e-3, 200
epochs of mini-batches of 512), on the CPU through the compiled kernel
:mod:`lineage_lens._recipe_kernel` (numba), elsewhere through batched tensor operations.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from lineage_lens.errors import ConfigError

Backend = Literal["auto", "numba", "torch"]
BACKENDS: tuple[str, ...] = ("auto", "numba", "torch")

#: The paper's AdamW recipe (used by ``solver="adamw"`` and ``solver="truthprobe"``).
ADAMW_RECIPE: dict[str, float | int] = {
    "lr": 1e-2,
    "weight_decay": 1e-3,
    "epochs": 200,
    "batch_size": 512,
}


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
