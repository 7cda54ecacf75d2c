"""The paper's probe recipe as one compiled CPU loop (numba), used by ``probing.adamw_logistic``.

The batched tensor version of the recipe is bound by memory traffic on a CPU: every mini-batch
step streams the block's activations through two batched matrix-vector products and, with
shuffled mini-batches, a gather. Here each head is trained start to finish by one compiled loop
while its ``[n, d]`` activations stay in the core's cache, and each step takes its rows four at a
time: their four logits (``w . x + b``), their residuals ``(sigmoid(logit) - y) / batch`` and
their share of the gradient, so a row is fetched once per step and used for both products while
it is still in the innermost cache. AdamW is the same element-wise
update as ``torch.optim.AdamW`` (decoupled weight decay on weight and bias, bias-corrected
moments). Only the order of float32 additions differs from BLAS, so every head follows the
trajectory of its own ``nn.Linear`` + ``torch.optim.AdamW`` to float32 rounding
(``tests/probing/test_probing.py`` checks it against that loop).

One caveat holds for any two implementations of the recipe (torch's own on two devices too):
where a gradient is zero in exact arithmetic -- the intercept's first step on a fold with as many
truthful as hallucinated examples -- Adam divides rounding noise by its own size, so that
coordinate takes a noise-driven step of up to ``lr``. On the real SmolLM2 activations of
BENCHMARKS.md 7a (N=200, balanced folds) this changed 3 of 270 Truth Scores by one test example
(0.005) between this kernel and the tensor backend.

Heads are independent, so ``probing`` splits them over threads; the kernel releases the GIL. The
compiled code is cached beside this file (numba ``cache=True``), so only the first call in a fresh
install pays the compilation (a few seconds).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Reassociation lets the dot products and gradient sums vectorise; "contract" allows fused
# multiply-adds. No approximate functions: exp, sqrt and division stay IEEE.
_FASTMATH = {"reassoc", "contract", "nsz"}


@njit(nogil=True, cache=True, fastmath=_FASTMATH, error_model="numpy")
def _residual(logit: float, target: float, inv_batch: float) -> float:
    """d(mean BCE)/d(logit) of one example: ``(sigmoid(logit) - y) / (batch * loss_heads)``."""
    one = np.float32(1.0)
    return (one / (one + math.exp(-logit)) - target) * inv_batch


@njit(nogil=True, cache=True, fastmath=_FASTMATH, error_model="numpy")
def adamw_probe_kernel(
    x: np.ndarray,
    y: np.ndarray,
    perms: np.ndarray,
    batch_size: int,
    lr: float,
    weight_decay: float,
    beta1: float,
    beta2: float,
    eps: float,
    loss_heads: int,
    out: np.ndarray,
) -> None:
    """Train one zero-initialised logistic probe per head of ``x`` with the recipe.

    ``x``: float32 ``[heads, n, d]`` (C order); ``y``: float32 ``[n]``; ``perms``: int64
    ``[epochs, n]``, the example order of each epoch; ``loss_heads``: the loss is the mean BCE over
    the batch *and* over this many heads (1: each head's own mean; the authors' all-heads tensor:
    ``n_layers * n_heads``), which scales every gradient by ``1 / loss_heads``; ``out``: float32
    ``[heads, d+1]``, written with each head's weights and (last) intercept.
    """
    n_heads, n, d = x.shape
    f32 = np.float32
    w = np.zeros(d, dtype=np.float32)
    grad = np.zeros(d, dtype=np.float32)
    exp_avg = np.zeros(d + 1, dtype=np.float32)
    exp_avg_sq = np.zeros(d + 1, dtype=np.float32)
    decay = f32(1.0 - lr * weight_decay)
    # The scalars as torch.optim.AdamW passes them to its float32 kernels: computed in double,
    # rounded once.
    keep2, eps32 = f32(beta2), f32(eps)
    mix1, mix2 = f32(1.0 - beta1), f32(1.0 - beta2)
    for h in range(n_heads):
        w[:] = 0.0
        exp_avg[:] = 0.0
        exp_avg_sq[:] = 0.0
        bias = f32(0.0)
        step = 0
        for epoch in range(perms.shape[0]):
            order = perms[epoch]
            for b0 in range(0, n, batch_size):
                b1 = min(n, b0 + batch_size)
                inv_batch = f32(1.0) / f32((b1 - b0) * loss_heads)
                grad[:] = 0.0
                grad_bias = f32(0.0)
                i = b0
                while i + 4 <= b1:  # four rows at a time, both products per fetch
                    k0, k1, k2, k3 = order[i], order[i + 1], order[i + 2], order[i + 3]
                    a0 = a1 = a2 = a3 = f32(0.0)
                    for j in range(d):
                        a0 += w[j] * x[h, k0, j]
                        a1 += w[j] * x[h, k1, j]
                        a2 += w[j] * x[h, k2, j]
                        a3 += w[j] * x[h, k3, j]
                    r0 = _residual(a0 + bias, y[k0], inv_batch)
                    r1 = _residual(a1 + bias, y[k1], inv_batch)
                    r2 = _residual(a2 + bias, y[k2], inv_batch)
                    r3 = _residual(a3 + bias, y[k3], inv_batch)
                    for j in range(d):
                        grad[j] += r0 * x[h, k0, j] + r1 * x[h, k1, j] + r2 * x[h, k2, j]
                        grad[j] += r3 * x[h, k3, j]
                    grad_bias += r0 + r1 + r2 + r3
                    i += 4
                while i < b1:
                    k = order[i]
                    a = f32(0.0)
                    for j in range(d):
                        a += w[j] * x[h, k, j]
                    r = _residual(a + bias, y[k], inv_batch)
                    for j in range(d):
                        grad[j] += r * x[h, k, j]
                    grad_bias += r
                    i += 1
                # AdamW, as torch.optim.AdamW: decay, lerp the first moment, update the second,
                # then step by lr / bias_correction1 over (sqrt(v) / sqrt(bias_correction2) + eps).
                step += 1
                step_size = f32(lr / (1.0 - beta1**step))
                bc2_sqrt = f32(math.sqrt(1.0 - beta2**step))
                for j in range(d + 1):
                    g = grad[j] if j < d else grad_bias
                    exp_avg[j] += mix1 * (g - exp_avg[j])
                    exp_avg_sq[j] = exp_avg_sq[j] * keep2 + mix2 * g * g
                    update = step_size * (
                        exp_avg[j] / (math.sqrt(exp_avg_sq[j]) / bc2_sqrt + eps32)
                    )
                    if j < d:
                        w[j] = w[j] * decay - update
                    else:
                        bias = bias * decay - update
        out[h, :d] = w
        out[h, d] = bias
