"""Score inheritance: do two models rank their attention heads alike?

The TruthProbe paper (Section 2, Fig. 1) reports that Truth Scores correlate strongly between a
language model and the multimodal models fine-tuned from it (Vicuna -> LLaVA-1.5, LLaVA-NeXT) and
not at all with an unrelated model (Mistral-7B). This module makes that claim quantitative:

* :func:`compare_scores` -- Pearson and Spearman over all heads with bootstrap confidence
  intervals (heads resampled in pairs), permutation p-values against a head-shuffle null,
  layer-wise correlations and top-k overlap against the hypergeometric chance level;
* :func:`compare_many` -- every pair of a set of models: correlation matrices and the paper's
  Fig. 1 style plot (matrix + bars against a reference model);
* :func:`published_fig1_table` -- the paper's Fig. 1 right panel recomputed from its vendored
  cross-dataset CSVs (probing sets a-e, Vicuna as reference).

Typical use::

    cmp = compare_scores("vicuna.npz", "llava.npz")
    print(cmp.summary())
    cmp.topk_frame()
"""

from __future__ import annotations

import itertools
import json
import logging
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from jaxtyping import Float
from scipy import stats

from lineage_lens._display import ShortRepr, label
from lineage_lens.errors import ConfigError, DataError, ShapeMismatchError, check_seed
from lineage_lens.fileio import atomic_open
from lineage_lens.headmap import HeadMap
from lineage_lens.scores import TruthScores, load_scores

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

#: Anything :func:`as_score_array` accepts: scores (or another per-head map), an ``[L, H]`` array,
#: or a scores file.
ScoresLike = TruthScores | HeadMap | np.ndarray | str | Path

#: The top-k sizes compared by default (those up to the number of heads).
DEFAULT_KS: tuple[int, ...] = (10, 20, 50, 100)


def check_ks(ks: Sequence[int] | None, n_heads: int) -> tuple[int, ...]:
    """The top-k sizes to compare over ``n_heads`` heads: ``None`` gives :data:`DEFAULT_KS` up
    to ``n_heads``; given sizes must each be an integer from 1 to ``n_heads``, else a
    :class:`~lineage_lens.errors.ConfigError` (a size is never dropped or clamped in silence)."""
    if ks is None:
        return tuple(k for k in DEFAULT_KS if k <= n_heads)
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= n_heads:
            raise ConfigError(
                f"top-k size {k!r} is not an integer from 1 to the number of heads ({n_heads}); "
                f"give top-k sizes in that range (leave them out for {DEFAULT_KS} up to "
                f"{n_heads})."
            )
    return tuple(dict.fromkeys(int(k) for k in ks))


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def as_score_array(
    scores: ScoresLike, metric: str = "accuracy"
) -> tuple[Float[np.ndarray, "layer head"], str]:
    """``(array [L, H] float64, label)`` from TruthScores, any other per-head map
    (:class:`~lineage_lens.headmap.HeadMap`: its ``metric`` where it has it, else its default
    metric; :meth:`~lineage_lens.headmap.HeadMap.comparison_values`), an array, or a
    .npz/.npy/.csv file."""
    if isinstance(scores, (str, Path)):
        scores = load_scores(scores)
    if isinstance(scores, HeadMap):
        return scores.comparison_values(metric)
    if hasattr(scores, "detach"):  # a torch tensor
        scores = scores.detach().cpu().numpy()  # type: ignore[union-attr]
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 2:
        raise ShapeMismatchError("score array", "(n_layers, n_heads)", arr.shape)
    return arr, ""


def _paired_finite(
    a: np.ndarray, b: np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if a.shape != b.shape:
        raise ShapeMismatchError(
            what, a.shape, b.shape, "Per-head comparisons need the same (n_layers, n_heads)."
        )
    mask = np.isfinite(a) & np.isfinite(b)
    if not mask.all():
        log.warning("%s: ignoring %d heads with non-finite scores", what, int((~mask).sum()))
    if mask.sum() < 4:
        raise DataError(f"{what}: fewer than 4 heads with finite scores in both arrays.")
    return a[mask], b[mask], mask


# --------------------------------------------------------------------------------------------
# Vectorised statistics (last axis = heads)
# --------------------------------------------------------------------------------------------


def _pearson(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    y = np.moveaxis(np.asarray(y, dtype=np.float64), axis, -1)
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip((xc * yc).sum(-1) / den, -1.0, 1.0)


def _spearman(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return _pearson(stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis), axis=axis)


_STATISTICS = {"pearson": _pearson, "spearman": _spearman}


@dataclass(repr=False)
class CorrelationEstimate(ShortRepr):
    """One correlation coefficient with its bootstrap CI and permutation p-value."""

    method: str
    r: float
    ci_low: float
    ci_high: float
    p_permutation: float
    p_parametric: float
    n: int
    n_resamples: int
    confidence_level: float
    ci_method: str = "BCa"

    def __str__(self) -> str:
        return (
            f"{self.method} r={self.r:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}] "
            f"p_perm={self.p_permutation:.2g}"
        )

    def _repr_fields(self) -> list[tuple[str, str]]:
        return [
            ("method", repr(self.method)),
            ("r", f"{self.r:.4g}"),
            (
                f"{self.confidence_level:.0%} {self.ci_method} CI",
                f"[{self.ci_low:.4g}, {self.ci_high:.4g}]",
            ),
            ("p_permutation", f"{self.p_permutation:.3g}"),
            ("p_parametric", f"{self.p_parametric:.3g}"),
            ("n", str(self.n)),
            ("n_resamples", str(self.n_resamples)),
        ]


def correlation_with_ci(
    x: np.ndarray,
    y: np.ndarray,
    method: str = "pearson",
    *,
    n_resamples: int = 2000,
    n_permutations: int = 2000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> CorrelationEstimate:
    """Pearson or Spearman correlation of paired head scores with uncertainty.

    The CI is a BCa bootstrap over heads (pairs resampled together, ``scipy.stats.bootstrap``;
    percentile CI where BCa is undefined, e.g. identical arrays);
    the p-value is two-sided against a head-shuffle null (``scipy.stats.permutation_test`` with
    ``permutation_type="pairings"``); ``p_parametric`` is scipy's t-based p-value.
    """
    if method not in _STATISTICS:
        raise ConfigError(f"method must be one of {sorted(_STATISTICS)}, got {method!r}")
    if not 0 < confidence_level < 1:
        raise ConfigError(f"confidence_level must be in (0, 1), got {confidence_level}")
    if n_resamples < 10 or n_permutations < 10:
        raise ConfigError("n_resamples and n_permutations must be at least 10")
    seed = check_seed(seed)
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    fn = _STATISTICS[method]
    r = float(fn(x, y))
    if np.std(x) == 0 or np.std(y) == 0:
        raise DataError(f"{method}: one of the score arrays is constant; correlation undefined.")
    rng = np.random.default_rng(seed)
    boot_kw: dict[str, Any] = dict(
        paired=True, vectorized=True, confidence_level=confidence_level, batch=500
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        boot = stats.bootstrap(
            (x, y), fn, n_resamples=n_resamples, method="BCa", rng=rng, **boot_kw
        )
        ci_method = "BCa"
        if not np.all(np.isfinite(boot.confidence_interval)):
            # BCa is undefined for degenerate data (e.g. identical arrays): use percentiles of
            # the same bootstrap distribution instead.
            boot = stats.bootstrap(
                (x, y), fn, n_resamples=0, method="percentile", bootstrap_result=boot, **boot_kw
            )
            ci_method = "percentile"
    perm = stats.permutation_test(
        (x, y),
        fn,
        permutation_type="pairings",
        vectorized=True,
        n_resamples=n_permutations,
        alternative="two-sided",
        batch=500,
        rng=rng,
    )
    param = stats.pearsonr(x, y) if method == "pearson" else stats.spearmanr(x, y)
    low, high = boot.confidence_interval
    return CorrelationEstimate(
        method,
        r,
        float(low),
        float(high),
        float(perm.pvalue),
        float(param.pvalue),
        int(x.size),
        int(n_resamples),
        float(confidence_level),
        ci_method,
    )


def topk_overlap(a: np.ndarray, b: np.ndarray, ks: Sequence[int] | None = None) -> pd.DataFrame:
    """Overlap of the ``k`` best heads of two score arrays, against chance.

    Columns: ``k, overlap`` (heads in both top-k sets), ``jaccard``, ``expected`` (k*k/N, the
    hypergeometric mean for two random top-k sets), ``expected_jaccard`` and ``p_value``
    (hypergeometric probability of at least this overlap by chance). Ties are broken by head
    index (lower layer, then lower head first). ``ks`` go through :func:`check_ks`: a ``k``
    below 1 or above the number of heads is a ConfigError; ``None`` compares the
    :data:`DEFAULT_KS` up to the number of heads.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    n = a.size
    ks = check_ks(ks, n)
    idx = np.arange(n)
    order_a = np.lexsort((idx, -a))
    order_b = np.lexsort((idx, -b))
    rows = []
    for k in ks:
        c = len(set(order_a[:k].tolist()) & set(order_b[:k].tolist()))
        expected = k * k / n
        rows.append(
            {
                "k": int(k),
                "overlap": int(c),
                "jaccard": c / (2 * k - c),
                "expected": expected,
                "expected_jaccard": expected / (2 * k - expected),
                "p_value": float(stats.hypergeom.sf(c - 1, n, k, k)),
            }
        )
    return pd.DataFrame(
        rows, columns=["k", "overlap", "jaccard", "expected", "expected_jaccard", "p_value"]
    )


def layerwise_correlations(a: np.ndarray, b: np.ndarray) -> pd.DataFrame:
    """Pearson and Spearman between two ``[L, H]`` arrays within each layer (over its heads).

    A layer whose heads are constant in either array gets NaN.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return pd.DataFrame(
        {
            "layer": np.arange(a.shape[0]),
            "pearson": _pearson(a, b, axis=1),
            "spearman": _spearman(a, b, axis=1),
            "mean_a": a.mean(axis=1),
            "mean_b": b.mean(axis=1),
        }
    )


# --------------------------------------------------------------------------------------------
# Pairwise comparison
# --------------------------------------------------------------------------------------------


@dataclass(repr=False)
class ScoreComparison(ShortRepr):
    """How similarly two models score their heads (see :func:`compare_scores`).

    Attributes:
        name_a, name_b: labels of the two score sets; metric: the compared metric.
        pearson, spearman: :class:`CorrelationEstimate` over all heads.
        layerwise: per-layer Pearson/Spearman (DataFrame, one row per layer).
        topk: top-k overlap against chance (DataFrame, one row per k).
        shape: ``(n_layers, n_heads)``; seed: of the resampling.
    """

    name_a: str
    name_b: str
    metric: str
    pearson: CorrelationEstimate
    spearman: CorrelationEstimate
    layerwise: pd.DataFrame
    topk: pd.DataFrame
    shape: tuple[int, int]
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """One row per correlation method: r, CI, p-values, n."""
        rows = []
        for est in (self.pearson, self.spearman):
            d = asdict(est)
            rows.append({"a": self.name_a, "b": self.name_b, **d})
        return pd.DataFrame(rows)

    def topk_frame(self) -> pd.DataFrame:
        return self.topk.copy()

    def summary(self) -> str:
        lines = [
            f"{self.name_a} vs {self.name_b} ({self.metric}, {self.shape[0]}x{self.shape[1]} "
            f"heads):",
            f"  {self.pearson}",
            f"  {self.spearman}",
        ]
        for row in self.topk.itertuples():
            lines.append(
                f"  top-{row.k}: overlap {row.overlap} (chance {row.expected:.1f}), "
                f"Jaccard {row.jaccard:.2f}, p={row.p_value:.2g}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def _repr_fields(self) -> list[tuple[str, str]]:
        fields = [
            ("a", label(self.name_a)),
            ("b", label(self.name_b)),
            ("metric", repr(self.metric)),
            ("shape", str(self.shape)),
            ("n", str(self.pearson.n)),
        ]
        for est in (self.pearson, self.spearman):
            fields.append((est.method, f"{est.r:.3f} [{est.ci_low:.3f}, {est.ci_high:.3f}]"))
        if len(self.topk):
            row = self.topk.iloc[0]
            fields.append((f"top-{int(row['k'])} overlap", f"{int(row['overlap'])}"))
        return fields

    # --- I/O
    def to_dict(self) -> dict[str, Any]:
        return {
            "name_a": self.name_a,
            "name_b": self.name_b,
            "metric": self.metric,
            "pearson": asdict(self.pearson),
            "spearman": asdict(self.spearman),
            "layerwise": self.layerwise.to_dict(orient="list"),
            "topk": self.topk.to_dict(orient="list"),
            "shape": list(self.shape),
            "seed": self.seed,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScoreComparison:
        return cls(
            d["name_a"],
            d["name_b"],
            d["metric"],
            CorrelationEstimate(**d["pearson"]),
            CorrelationEstimate(**d["spearman"]),
            pd.DataFrame(d["layerwise"]),
            pd.DataFrame(d["topk"]),
            (int(d["shape"][0]), int(d["shape"][1])),
            int(d.get("seed", 0)),
            dict(d.get("meta", {})),
        )

    def save(self, path: str | Path) -> Path:
        """Write JSON (atomically)."""
        with atomic_open(path, "w") as fh:
            json.dump(self.to_dict(), fh, indent=1, default=_json_default)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> ScoreComparison:
        try:
            with open(path) as fh:
                return cls.from_dict(json.load(fh))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"not a ScoreComparison JSON file ({exc})", path=path) from exc

    # --- plots
    def plot(self, ax: Axes | None = None) -> Axes:
        """Layer-wise Pearson and Spearman, with the all-head values as dashed lines."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3))
        lw = self.layerwise
        ax.plot(lw["layer"], lw["pearson"], marker="o", label="Pearson (layer)")
        ax.plot(lw["layer"], lw["spearman"], marker="s", label="Spearman (layer)")
        ax.axhline(self.pearson.r, ls="--", color="C0", lw=1, label="Pearson (all heads)")
        ax.axhline(self.spearman.r, ls="--", color="C1", lw=1, label="Spearman (all heads)")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("layer")
        ax.set_ylabel("correlation")
        ax.set_title(f"{self.name_a} vs {self.name_b}")
        ax.legend(fontsize="small")
        return ax


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def compare_scores(
    a: ScoresLike,
    b: ScoresLike,
    *,
    metric: str = "accuracy",
    name_a: str | None = None,
    name_b: str | None = None,
    ks: Sequence[int] | None = None,
    n_resamples: int = 2000,
    n_permutations: int = 2000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> ScoreComparison:
    """Compare two models' per-head scores (Truth Scores, any per-head map or ``[L, H]`` array).

    The one comparison of per-head maps: an attention, CKA, weight-drift or gate map is compared
    with Truth Scores as ``compare_scores(att, scores)``.

    Args:
        a, b: :class:`TruthScores`, other per-head maps (:class:`~lineage_lens.headmap.HeadMap`),
            ``[L, H]`` arrays, or files (our ``.npz``, the paper's ``.npy`` or
            ``cv5_head_metrics.csv``). Both must have the same shape.
        metric: which metric of TruthScores to compare (a per-head map without it gives its
            default metric).
        name_a, name_b: labels (default: the scores' model names or the map's label, else
            ``"A"``/``"B"``).
        ks: top-k sizes for the overlap table, each from 1 to the number of heads
            (:func:`check_ks`; default: :data:`DEFAULT_KS` up to the number of heads).
        n_resamples: bootstrap resamples for the BCa CIs; n_permutations: head shuffles for the
            permutation p-values (two-sided, so the smallest attainable p is
            ``2 / (n_permutations + 1)``).
        confidence_level: of the CIs; seed: makes CIs and p-values reproducible.

    Returns:
        a :class:`ScoreComparison`. Heads with a non-finite score on either side are dropped
        (with a warning) from the all-head statistics.
    """
    arr_a, label_a = as_score_array(a, metric)
    arr_b, label_b = as_score_array(b, metric)
    name_a = name_a or label_a or "A"
    name_b = name_b or label_b or "B"
    x, y, _ = _paired_finite(arr_a, arr_b, f"scores of {name_a} vs {name_b}")
    ks = check_ks(ks, x.size)  # before the bootstrap: a bad k costs nothing
    kw = dict(
        n_resamples=n_resamples,
        n_permutations=n_permutations,
        confidence_level=confidence_level,
        seed=seed,
    )
    pearson = correlation_with_ci(x, y, "pearson", **kw)  # type: ignore[arg-type]
    spearman = correlation_with_ci(x, y, "spearman", **kw)  # type: ignore[arg-type]
    return ScoreComparison(
        name_a,
        name_b,
        metric,
        pearson,
        spearman,
        layerwise_correlations(arr_a, arr_b),
        topk_overlap(x, y, ks),
        (int(arr_a.shape[0]), int(arr_a.shape[1])),
        seed,
    )


# --------------------------------------------------------------------------------------------
# Many models
# --------------------------------------------------------------------------------------------


@dataclass(repr=False)
class ScoreMatrix(ShortRepr):
    """All pairwise :class:`ScoreComparison` of a set of models (see :func:`compare_many`)."""

    names: list[str]
    comparisons: dict[tuple[str, str], ScoreComparison]
    reference: str | None = None

    def get(self, a: str, b: str) -> ScoreComparison:
        """The comparison of ``a`` and ``b`` (in either order)."""
        if (a, b) in self.comparisons:
            return self.comparisons[(a, b)]
        if (b, a) in self.comparisons:
            return self.comparisons[(b, a)]
        raise ConfigError(f"no comparison of {a!r} and {b!r}; models: {self.names}")

    def matrix(self, method: str = "pearson", value: str = "r") -> pd.DataFrame:
        """Square DataFrame of ``value`` (``r``, ``ci_low``, ``ci_high``, ``p_permutation``...)."""
        if method not in _STATISTICS:
            raise ConfigError(f"method must be one of {sorted(_STATISTICS)}, got {method!r}")
        out = pd.DataFrame(np.nan, index=self.names, columns=self.names, dtype=float)
        for a, b in itertools.product(self.names, self.names):
            if a == b:
                out.loc[a, b] = 1.0 if value in ("r", "ci_low", "ci_high") else np.nan
                continue
            out.loc[a, b] = getattr(getattr(self.get(a, b), method), value)
        return out

    def _repr_fields(self) -> list[tuple[str, str]]:
        fields = [
            ("models", str(len(self.names))),
            ("names", ", ".join(self.names)),
            ("pairs", str(len(self.comparisons))),
            ("reference", label(self.reference)),
        ]
        if self.comparisons:
            first = next(iter(self.comparisons.values()))
            r = [c.pearson.r for c in self.comparisons.values()]
            fields += [
                ("metric", repr(first.metric)),
                ("shape", str(first.shape)),
                ("pearson r", f"{min(r):.3f} to {max(r):.3f}"),
            ]
        return fields

    def to_frame(self) -> pd.DataFrame:
        """Long format: one row per (pair, method) with r, CI and p-values."""
        return pd.concat([c.to_frame() for c in self.comparisons.values()], ignore_index=True)

    def against(self, reference: str | None = None) -> pd.DataFrame:
        """Correlations of every model with ``reference`` (one row per other model)."""
        ref = reference or self.reference or self.names[0]
        rows = []
        for name in self.names:
            if name == ref:
                continue
            c = self.get(ref, name)
            rows.append(
                {
                    "reference": ref,
                    "model": name,
                    "pearson": c.pearson.r,
                    "pearson_ci_low": c.pearson.ci_low,
                    "pearson_ci_high": c.pearson.ci_high,
                    "pearson_p_perm": c.pearson.p_permutation,
                    "spearman": c.spearman.r,
                    "spearman_ci_low": c.spearman.ci_low,
                    "spearman_ci_high": c.spearman.ci_high,
                    "spearman_p_perm": c.spearman.p_permutation,
                }
            )
        return pd.DataFrame(rows)

    def save(self, path: str | Path) -> Path:
        """Write JSON (atomically)."""
        payload = {
            "names": self.names,
            "reference": self.reference,
            "comparisons": [c.to_dict() for c in self.comparisons.values()],
        }
        with atomic_open(path, "w") as fh:
            json.dump(payload, fh, indent=1, default=_json_default)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> ScoreMatrix:
        try:
            with open(path) as fh:
                d = json.load(fh)
            comps = [ScoreComparison.from_dict(c) for c in d["comparisons"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"not a ScoreMatrix JSON file ({exc})", path=path) from exc
        return cls(list(d["names"]), {(c.name_a, c.name_b): c for c in comps}, d.get("reference"))

    def plot(
        self, reference: str | None = None, method: str = "pearson", fig: Figure | None = None
    ) -> tuple[Axes, Axes]:
        """The paper's Fig. 1 layout: correlation matrix (left) and bars against ``reference``.

        Bars carry the bootstrap CIs as error bars. Returns ``(matrix_axes, bar_axes)``.
        """
        import matplotlib.pyplot as plt

        ref = reference or self.reference or self.names[0]
        if fig is None:
            fig = plt.figure(figsize=(10, 4))
        ax_m, ax_b = fig.subplots(1, 2)
        mat = self.matrix(method)
        im = ax_m.imshow(mat.to_numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
        ax_m.set_xticks(range(len(self.names)), self.names, rotation=45, ha="right")
        ax_m.set_yticks(range(len(self.names)), self.names)
        for i, j in itertools.product(range(len(self.names)), repeat=2):
            ax_m.text(j, i, f"{mat.iat[i, j]:.2f}", ha="center", va="center", fontsize=8)
        fig.colorbar(im, ax=ax_m, label=f"{method} r")
        ax_m.set_title(f"{method} correlation of head scores")
        tab = self.against(ref)
        r = tab[method].to_numpy()
        err = np.vstack([r - tab[f"{method}_ci_low"], tab[f"{method}_ci_high"] - r])
        ax_b.bar(tab["model"], r, yerr=err, capsize=4, color="C0")
        ax_b.axhline(0, color="grey", lw=0.5)
        ax_b.set_ylabel(f"{method} r with {ref}")
        ax_b.set_ylim(min(-0.1, float(np.nanmin(r)) - 0.1), 1.05)
        level = next(iter(self.comparisons.values())).pearson.confidence_level
        ax_b.set_title(f"vs {ref} (bars: {level:.0%} bootstrap CI)")
        ax_b.tick_params(axis="x", rotation=45)
        fig.tight_layout()
        return ax_m, ax_b


def compare_many(
    scores: Mapping[str, ScoresLike],
    *,
    reference: str | None = None,
    metric: str = "accuracy",
    ks: Sequence[int] | None = None,
    n_resamples: int = 2000,
    n_permutations: int = 2000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> ScoreMatrix:
    """Compare every pair of ``{name: scores}`` with :func:`compare_scores`.

    Returns a :class:`ScoreMatrix`: ``.matrix("pearson")`` / ``.matrix("spearman")`` are the
    correlation DataFrames, ``.against(reference)`` the bars of the paper's Fig. 1 and ``.plot()``
    draws both.
    """
    if len(scores) < 2:
        raise ConfigError("compare_many needs at least two score sets")
    check_seed(seed)
    names = list(scores)
    if reference is not None and reference not in scores:
        raise ConfigError(f"reference {reference!r} is not one of {names}")
    arrays = {n: as_score_array(s, metric)[0] for n, s in scores.items()}
    check_ks(ks, min(a.size for a in arrays.values()))  # before any bootstrap
    comps = {}
    for a, b in itertools.combinations(names, 2):
        comps[(a, b)] = compare_scores(
            arrays[a],
            arrays[b],
            metric=metric,
            name_a=a,
            name_b=b,
            ks=ks,
            n_resamples=n_resamples,
            n_permutations=n_permutations,
            confidence_level=confidence_level,
            seed=seed,
        )
    return ScoreMatrix(names, comps, reference)


# --------------------------------------------------------------------------------------------
# The paper's Fig. 1 (right panel)
# --------------------------------------------------------------------------------------------

#: File-name suffix -> display name of the paper's cross-dataset CSVs.
PUBLISHED_MODELS: dict[str, str] = {
    "vicuna": "Vicuna-7B",
    "llava1.5": "LLaVA-1.5-7B",
    "llavanxt": "LLaVA-NeXT-7B",
    "mistral": "Mistral-7B",
}
PUBLISHED_SETS: tuple[str, ...] = ("a", "b", "c", "d", "e")


def published_cross_dataset_scores(probing_set: str) -> dict[str, TruthScores]:
    """The paper's vendored Truth Scores of one probing set (``"a"``..``"e"``), by model name."""
    from lineage_lens.scores import published_scores_dir

    if probing_set not in PUBLISHED_SETS:
        raise ConfigError(f"probing_set must be one of {PUBLISHED_SETS}, got {probing_set!r}")
    folder = published_scores_dir() / "cross_dataset"
    out = {}
    for suffix, name in PUBLISHED_MODELS.items():
        path = folder / f"vicuna_cross_dataset_probing_set_{probing_set}_cv5__{suffix}.csv"
        out[name] = TruthScores.from_csv(path, model=name, dataset=f"set {probing_set}")
    return out


def published_fig1_table(
    sets: Sequence[str] = PUBLISHED_SETS,
    *,
    reference: str = "Vicuna-7B",
    n_resamples: int = 2000,
    n_permutations: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Recompute the paper's Fig. 1 right panel from its vendored cross-dataset CSVs.

    For each probing set and each model other than ``reference``: Pearson and Spearman of the
    per-head accuracy with the reference, their BCa 95 % CIs and permutation p-values, and the
    top-10 overlap (chance level 100/1024 ~ 0.1).
    """
    rows = []
    for s in sets:
        scores = published_cross_dataset_scores(s)
        for name, sc in scores.items():
            if name == reference:
                continue
            c = compare_scores(
                scores[reference],
                sc,
                ks=(10,),
                n_resamples=n_resamples,
                n_permutations=n_permutations,
                seed=seed,
            )
            top = c.topk.iloc[0]
            rows.append(
                {
                    "set": s,
                    "model": name,
                    "pearson": c.pearson.r,
                    "pearson_ci": (c.pearson.ci_low, c.pearson.ci_high),
                    "pearson_p_perm": c.pearson.p_permutation,
                    "spearman": c.spearman.r,
                    "spearman_ci": (c.spearman.ci_low, c.spearman.ci_high),
                    "spearman_p_perm": c.spearman.p_permutation,
                    "top10_overlap": int(top["overlap"]),
                }
            )
    table = pd.DataFrame(rows)
    table.attrs["n_permutations"] = n_permutations
    table.attrs["n_resamples"] = n_resamples
    return table


def format_fig1_markdown(table: pd.DataFrame) -> str:
    """Render :func:`published_fig1_table` as a markdown table (3 decimals).

    Permutation p-values at the resolution floor ``2 / (n_permutations + 1)`` (two-sided: no
    shuffle reached the observed |r|) are shown as ``≤`` that floor.
    """
    n_perm = table.attrs.get("n_permutations")
    floor = 2.0 / (n_perm + 1) if n_perm else 0.0

    def fmt(p: float) -> str:
        return f"≤{floor:.4f}" if p <= floor * (1 + 1e-9) else _fmt_p(p)

    head = (
        "| set | model | Pearson r | 95 % CI | p (perm.) | Spearman ρ | 95 % CI | p (perm.) | "
        "top-10 overlap |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in table.itertuples():
        lines.append(
            f"| {r.set} | {r.model} | {r.pearson:.3f} | [{r.pearson_ci[0]:.3f}, "
            f"{r.pearson_ci[1]:.3f}] | {fmt(r.pearson_p_perm)} | {r.spearman:.3f} | "
            f"[{r.spearman_ci[0]:.3f}, {r.spearman_ci[1]:.3f}] | {fmt(r.spearman_p_perm)} | "
            f"{r.top10_overlap}/10 |"
        )
    return "\n".join(lines)


def _fmt_p(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-3 else f"{p:.1e}"


if __name__ == "__main__":  # pragma: no cover - regenerates the table in docs/lineage.md
    print(format_fig1_markdown(published_fig1_table()))
