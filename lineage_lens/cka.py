"""Centered kernel alignment (CKA) between two models' per-head activations.

Linear CKA (Kornblith et al., 2019) compares two representations of the same ``n`` examples,
``X [n, p]`` and ``Y [n, q]``, invariantly to orthogonal transforms and isotropic scaling::

    CKA(X, Y) = HSIC(X, Y) / sqrt(HSIC(X, X) HSIC(Y, Y)),   HSIC(X, Y) ~ ||Xc^T Yc||_F^2

with column-centred ``Xc, Yc``. The plain estimator is biased upwards for small ``n`` relative to
the feature dimension (independent random features score well above 0); the *debiased* estimator
replaces HSIC by the unbiased HSIC estimator of Song et al. (2012), so independent features score
~0.

Everything is computed in float64 from sufficient statistics (sums, cross-products, squared norms)
accumulated over chunks of examples: the ``n x n`` Gram matrices are never formed, and activations
can be memory-mapped ``.npy`` files larger than memory. :func:`head_cka` gives the ``[L, H]``
similarity of each head's activations (``hook_z`` at the probed token, see
:mod:`lineage_lens.capture`) between two models on the same examples.

Typical use::

    a = HeadActivations.load("acts/vicuna")  # [n, L, H, d_head], memmapped
    b = HeadActivations.load("acts/llava")
    sim = head_cka(a, b, debiased=True)
    sim.heatmap()
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from jaxtyping import Float
from tqdm.auto import tqdm

from lineage_lens._display import label
from lineage_lens.errors import ConfigError, DataError, ShapeMismatchError
from lineage_lens.headmap import HeadMap

if TYPE_CHECKING:
    from matplotlib.axes import Axes

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Streaming sufficient statistics
# --------------------------------------------------------------------------------------------


class _PairStats:
    """Running float64 statistics of paired feature batches ``x [c, g, p]``, ``y [c, g, q]``.

    ``g`` indexes independent groups (heads) processed together. The features are shifted by the
    first chunk's mean (a constant translation: CKA and the unbiased HSIC are invariant to it) to
    avoid cancellation when activations have large means.
    """

    def __init__(self) -> None:
        self.n = 0
        self.shift_x: np.ndarray | None = None
        self.shift_y: np.ndarray | None = None

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if self.shift_x is None:
            self.shift_x = x.mean(0)
            self.shift_y = y.mean(0)
            g, p, q = x.shape[1], x.shape[2], y.shape[2]
            z = np.zeros
            self.sx, self.sy = z((g, p)), z((g, q))
            self.cxy, self.cxx, self.cyy = z((g, p, q)), z((g, p, p)), z((g, q, q))
            self.snx, self.sny = z(g), z(g)
            self.snx2, self.sny2, self.snxny = z(g), z(g), z(g)
            self.nx_x, self.ny_y = z((g, p)), z((g, q))
            self.nx_y, self.ny_x = z((g, q)), z((g, p))
        x = x - self.shift_x
        y = y - self.shift_y
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.cxy += np.einsum("cgp,cgq->gpq", x, y)
        self.cxx += np.einsum("cgp,cgq->gpq", x, x)
        self.cyy += np.einsum("cgp,cgq->gpq", y, y)
        nx = np.einsum("cgp,cgp->cg", x, x)
        ny = np.einsum("cgq,cgq->cg", y, y)
        self.snx += nx.sum(0)
        self.sny += ny.sum(0)
        self.snx2 += (nx * nx).sum(0)
        self.sny2 += (ny * ny).sum(0)
        self.snxny += (nx * ny).sum(0)
        self.nx_x += np.einsum("cg,cgp->gp", nx, x)
        self.ny_y += np.einsum("cg,cgq->gq", ny, y)
        self.nx_y += np.einsum("cg,cgq->gq", nx, y)
        self.ny_x += np.einsum("cg,cgp->gp", ny, x)

    # -- biased (plain) linear CKA on centred features
    def cka(self) -> np.ndarray:
        n = self.n
        cxy = self.cxy - np.einsum("gp,gq->gpq", self.sx, self.sy) / n
        cxx = self.cxx - np.einsum("gp,gq->gpq", self.sx, self.sx) / n
        cyy = self.cyy - np.einsum("gp,gq->gpq", self.sy, self.sy) / n
        num = (cxy**2).sum((1, 2))
        den = np.sqrt((cxx**2).sum((1, 2)) * (cyy**2).sum((1, 2)))
        with np.errstate(invalid="ignore", divide="ignore"):
            return num / den

    # -- unbiased HSIC (Song et al. 2012), linear kernels, from feature-space statistics
    def debiased_cka(self) -> np.ndarray:
        n = self.n
        if n < 4:
            raise DataError(f"debiased CKA needs at least 4 examples, got {n}")

        def hsic(frob2, s_diag, one_k_one, one_l_one, one_kl_one):
            t1 = frob2 - s_diag
            return (
                t1 + one_k_one * one_l_one / ((n - 1) * (n - 2)) - 2.0 * one_kl_one / (n - 2)
            ) / (n * (n - 3))

        sx2 = (self.sx**2).sum(1)
        sy2 = (self.sy**2).sum(1)
        k1 = sx2 - self.snx  # 1' K~ 1
        l1 = sy2 - self.sny  # 1' L~ 1
        # 1' K~ L~ 1 = sum_i (x_i.sx - |x_i|^2)(y_i.sy - |y_i|^2)
        kl1 = (
            np.einsum("gp,gpq,gq->g", self.sx, self.cxy, self.sy)
            - (self.nx_y * self.sy).sum(1)
            - (self.ny_x * self.sx).sum(1)
            + self.snxny
        )
        kk1 = (
            np.einsum("gp,gpq,gq->g", self.sx, self.cxx, self.sx)
            - 2.0 * (self.nx_x * self.sx).sum(1)
            + self.snx2
        )
        ll1 = (
            np.einsum("gp,gpq,gq->g", self.sy, self.cyy, self.sy)
            - 2.0 * (self.ny_y * self.sy).sum(1)
            + self.sny2
        )
        hxy = hsic((self.cxy**2).sum((1, 2)), self.snxny, k1, l1, kl1)
        hxx = hsic((self.cxx**2).sum((1, 2)), self.snx2, k1, k1, kk1)
        hyy = hsic((self.cyy**2).sum((1, 2)), self.sny2, l1, l1, ll1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return hxy / np.sqrt(hxx * hyy)

    def result(self, debiased: bool) -> np.ndarray:
        if self.n == 0:
            raise DataError("CKA of zero examples")
        return self.debiased_cka() if debiased else self.cka()


def _chunks(n: int, chunk_size: int):
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be positive, got {chunk_size}")
    for start in range(0, n, chunk_size):
        yield slice(start, min(n, start + chunk_size))


def linear_cka(
    x: Float[np.ndarray, "n p"],
    y: Float[np.ndarray, "n q"],
    *,
    debiased: bool = False,
    chunk_size: int = 4096,
) -> float:
    """Linear CKA of two representations of the same ``n`` examples (rows), in float64.

    ``debiased=True`` uses the unbiased HSIC estimator (independent features give ~0; can be
    slightly negative). Works on memory-mapped arrays, ``chunk_size`` rows at a time.
    """
    x = _as_2d(x, "x")
    y = _as_2d(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ShapeMismatchError("CKA inputs (examples)", x.shape[0], y.shape[0], "Same examples.")
    stats = _PairStats()
    for sl in _chunks(x.shape[0], chunk_size):
        stats.update(np.asarray(x[sl])[:, None, :], np.asarray(y[sl])[:, None, :])
    return float(stats.result(debiased)[0])


def _as_2d(a: Any, what: str) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    if not isinstance(a, np.ndarray):
        a = np.asarray(a)
    if a.ndim != 2:
        raise ShapeMismatchError(f"CKA input {what}", "[n, features]", a.shape)
    return a


# --------------------------------------------------------------------------------------------
# Per-head CKA
# --------------------------------------------------------------------------------------------


@dataclass(repr=False)
class HeadCKA(HeadMap):
    """``[L, H]`` CKA similarity of each head's activations between two models.

    Attributes:
        values: ``values[l, h]`` = CKA between model A's and model B's head ``(l, h)`` outputs.
        debiased: whether the unbiased HSIC estimator was used; n: number of examples.
        model_a, model_b: labels.
    """

    values: Float[np.ndarray, "layer head"]
    debiased: bool
    n: int
    model_a: str = ""
    model_b: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def head_maps(self) -> dict[str, Float[np.ndarray, "layer head"]]:
        """``cka`` per head."""
        return {"cka": self.values}

    def layer_means(self) -> np.ndarray:
        return self.values.mean(axis=1)

    def _provenance(self) -> list[tuple[str, str]]:
        return [
            ("model_a", label(self.model_a)),
            ("model_b", label(self.model_b)),
            ("n", str(self.n)),
            ("estimator", "debiased" if self.debiased else "linear"),
        ]

    def _correlation_name(self) -> str:
        return f"CKA {self.model_a} vs {self.model_b}"

    def _npz_payload(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        meta = {
            "debiased": self.debiased,
            "n": self.n,
            "model_a": self.model_a,
            "model_b": self.model_b,
            "meta": self.meta,
        }
        return {"values": self.values}, meta

    @classmethod
    def _from_npz(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any], path: Path) -> HeadCKA:
        return cls(
            arrays["values"],
            bool(meta["debiased"]),
            int(meta["n"]),
            meta.get("model_a", ""),
            meta.get("model_b", ""),
            meta.get("meta", {}),
        )

    def _title(self, metric: str) -> str:
        kind = "debiased CKA" if self.debiased else "linear CKA"
        return f"{kind}: {self.model_a} vs {self.model_b}"

    def _heatmap_style(self, metric: str, values: np.ndarray) -> dict[str, Any]:
        return {"vmin": 0, "vmax": 1, "label": "CKA"}

    def plot(self, *, ax: Axes | None = None) -> Axes:
        """Per-layer mean CKA (line) with the spread over heads (min-max band)."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3))
        x = np.arange(self.shape[0])
        ax.plot(x, self.layer_means(), marker="o", ms=3, label="mean over heads")
        ax.fill_between(x, self.values.min(1), self.values.max(1), alpha=0.25, label="min-max")
        ax.set_xlabel("layer")
        ax.set_ylabel("CKA")
        ax.set_ylim(min(0.0, float(np.nanmin(self.values))), 1.02)
        ax.set_title(f"{self.model_a} vs {self.model_b}")
        ax.legend(fontsize="small")
        return ax


def _as_acts(a: Any, what: str) -> tuple[Any, str]:
    label = ""
    if isinstance(a, (str, Path)):
        from lineage_lens.activations import HeadActivations

        a = HeadActivations.load(a) if Path(a).is_dir() else np.load(a, mmap_mode="r")
    if hasattr(a, "acts") and hasattr(a, "labels"):  # HeadActivations
        label = getattr(a, "model", "")
        a = a.acts
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    if not isinstance(a, np.ndarray):
        a = np.asarray(a)
    if a.ndim != 4:
        raise ShapeMismatchError(f"activations {what}", "[n, n_layers, n_heads, d_head]", a.shape)
    return a, label


def head_cka(
    acts_a: Any,
    acts_b: Any,
    *,
    debiased: bool = False,
    chunk_size: int = 1024,
    progress: bool = True,
) -> HeadCKA:
    """CKA of each head's activations between two models on the same examples.

    Args:
        acts_a, acts_b: ``[n, L, H, d_head]`` arrays (numpy, memmap or torch), or
            :class:`~lineage_lens.activations.HeadActivations`, or paths (an activations
            directory or a ``.npy`` file, memory-mapped). Rows must be the same examples in the
            same order; ``d_head`` may differ between the models, ``(L, H)`` may not.
        debiased: use the unbiased HSIC estimator (recommended when ``n`` is not much larger
            than ``d_head``).
        chunk_size: examples read at a time (memory is ``O(chunk_size * H * d_head)`` per layer).

    Returns:
        :class:`HeadCKA` with ``[L, H]`` values.
    """
    a, label_a = _as_acts(acts_a, "A")
    b, label_b = _as_acts(acts_b, "B")
    if a.shape[0] != b.shape[0]:
        raise ShapeMismatchError(
            "number of examples", a.shape[0], b.shape[0], "CKA needs the same examples in both."
        )
    if a.shape[1:3] != b.shape[1:3]:
        raise ShapeMismatchError(
            "per-head activations (n_layers, n_heads)",
            a.shape[1:3],
            b.shape[1:3],
            "Per-head CKA compares models with the same head layout.",
        )
    L = a.shape[1]
    out = np.empty(a.shape[1:3], dtype=np.float64)
    for layer in tqdm(range(L), desc="head CKA", unit="layer", disable=not progress, leave=False):
        stats = _PairStats()
        for sl in _chunks(a.shape[0], chunk_size):
            stats.update(a[sl, layer], b[sl, layer])
        out[layer] = stats.result(debiased)
    return HeadCKA(out, debiased, int(a.shape[0]), label_a, label_b)
