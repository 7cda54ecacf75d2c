"""Statistics used by every evaluation and experiment: one place for each.

* :func:`binary_metrics` -- accuracy, precision, recall, F1, yes-ratio and (given scores) AUROC of
  yes/no answers, with unparsed answers counted apart (scikit-learn metrics);
* :func:`proportion_ci` -- a rate with its Wilson score interval (``scipy.stats.binomtest``);
* :func:`paired_bootstrap_delta` -- the change of any statistic between two settings scored on the
  same examples, with a paired bootstrap interval (``scipy.stats.bootstrap(paired=True)``);
* :func:`paired_auroc_delta` -- the same for an AUROC, one or several settings per side;
* :func:`bootstrap_ci` -- a percentile bootstrap interval of any statistic of per-example columns
  (e.g. CHAIR_i over captions);
* :func:`chair_i_of_counts` -- CHAIR_i from per-caption counts (for bootstraps over captions).

Inheritance statistics between Truth Score maps (correlations with CIs, permutation tests, top-k
overlap) live in :mod:`lineage_lens.lineage`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from lineage_lens.errors import ConfigError, DataError, check_seed

#: The threshold metrics of :func:`binary_metrics` (``n``, ``n_unparsed``, ``accuracy_all`` and
#: ``auroc`` come beside them).
METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def binary_metrics(
    truth: Sequence[bool] | np.ndarray,
    pred: Sequence[bool | None],
    score: Sequence[float] | np.ndarray | None = None,
) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (``True`` = positive), yes-ratio, ``n``, ``n_unparsed``.

    ``pred`` entries that are ``None`` (unparsed answers) are left out of every metric except
    ``accuracy_all``, which counts them as wrong. ``yes_ratio`` is the share of positive
    predictions among parsed ones. With ``score`` (a continuous "yes" score per example, e.g.
    ``log p(yes) - log p(no)``) the result also holds ``auroc``: threshold-free, so it still
    measures a judge that answers the same word to everything (NaN when only one class occurs).
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

    truth = [bool(t) for t in truth]
    if len(truth) != len(pred):
        raise ConfigError(f"{len(truth)} labels but {len(pred)} predictions.")
    if not truth:
        raise DataError("no examples to score.")
    parsed = [(t, bool(p)) for t, p in zip(truth, pred, strict=True) if p is not None]
    n_unparsed = len(truth) - len(parsed)
    out: dict[str, float] = {"n": len(truth), "n_unparsed": n_unparsed}
    if parsed:
        y, p = (np.array(v) for v in zip(*parsed, strict=True))
        prec, rec, f1, _ = precision_recall_fscore_support(
            y, p, average="binary", pos_label=True, zero_division=0
        )
        out |= {
            "accuracy": float(accuracy_score(y, p)),
            "precision": float(prec),
            "recall": float(rec),
            "f1": float(f1),
            "yes_ratio": float(p.mean()),
        }
    else:
        out |= dict.fromkeys(METRIC_NAMES, math.nan)
    out["accuracy_all"] = sum(t == p for t, p in parsed) / len(truth)
    if score is not None:
        score = np.asarray(score, dtype=np.float64)
        if score.shape != (len(truth),):
            raise ConfigError(f"{len(truth)} labels but score has shape {score.shape}.")
        out["auroc"] = (
            float(roc_auc_score(truth, score)) if 0 < sum(truth) < len(truth) else math.nan
        )
    return out


def paired_auroc_delta(
    truth: Sequence[bool] | np.ndarray,
    base: Sequence[float] | np.ndarray,
    other: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``AUROC(other) - AUROC(base)`` on the same examples, with a paired bootstrap CI.

    ``base`` and ``other`` are per-example scores ``[n]``, or ``[k, n]`` for ``k`` settings whose
    AUROCs are averaged (e.g. a random control over ``k`` permutation seeds). Each resample draws
    examples with replacement and scores both sides on the same draw (the percentile interval of
    the differences); draws holding a single class are skipped. Returns
    ``(delta, ci_low, ci_high)``.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(truth, dtype=bool)
    a = np.atleast_2d(np.asarray(base, dtype=np.float64))
    b = np.atleast_2d(np.asarray(other, dtype=np.float64))
    if not (y.ndim == 1 and a.ndim == b.ndim == 2 and a.shape[1] == b.shape[1] == len(y)):
        raise ConfigError(
            f"truth {y.shape}, base {np.shape(base)} and other {np.shape(other)} must be [n] or "
            "[settings, n], all of one length n."
        )
    if y.all() or not y.any():
        raise DataError("AUROC needs examples of both classes.")

    def auroc(yy: np.ndarray, scores: np.ndarray) -> float:
        return float(np.mean([roc_auc_score(yy, row) for row in scores]))

    delta = auroc(y, b) - auroc(y, a)
    rng = np.random.default_rng(check_seed(seed))
    diffs = []
    for _ in range(n_resamples):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            diffs.append(auroc(y[i], b[:, i]) - auroc(y[i], a[:, i]))
    tail = 50 * (1 - confidence_level)
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return delta, float(low), float(high)


def paired_bootstrap_delta(
    statistic: Callable[..., float],
    base: np.ndarray | Sequence[np.ndarray],
    other: np.ndarray | Sequence[np.ndarray],
    *,
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``statistic(*other) - statistic(*base)`` on the same examples, with a paired bootstrap CI.

    ``base`` and ``other`` hold per-example values of two settings: one 1-D array each, or a
    sequence of 1-D arrays (columns, e.g. hallucinated and mentioned objects per caption) all of
    one length, row ``i`` being the same example in both. ``statistic`` maps the columns of one
    setting to a number (``np.mean`` for an accuracy; ``lambda h, m: h.sum() / m.sum()`` for
    CHAIR_i). Each resample draws examples with replacement and evaluates both settings on the
    same draw (``scipy.stats.bootstrap(paired=True)``, percentile interval). Returns
    ``(delta, ci_low, ci_high)``.
    """
    from scipy import stats

    def columns(x: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
        if isinstance(x, np.ndarray) and x.ndim == 1:
            return [x.astype(np.float64)]
        return [np.asarray(c, dtype=np.float64) for c in x]

    a, b = columns(base), columns(other)
    shapes = [c.shape for c in a + b]
    if len(a) != len(b) or any(len(s) != 1 or s != shapes[0] for s in shapes):
        raise ConfigError(
            f"base columns {[c.shape for c in a]} and other columns {[c.shape for c in b]} must "
            "be 1-D arrays of one length, as many for each setting."
        )
    if shapes[0][0] < 2:
        raise DataError(f"a paired bootstrap needs at least 2 examples, got {shapes[0][0]}.")
    k = len(a)

    def delta(*cols: np.ndarray) -> float:
        return float(statistic(*cols[k:]) - statistic(*cols[:k]))

    point = delta(*a, *b)
    if all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)):
        return point, point, point  # identical settings: every resample gives the same delta
    res = stats.bootstrap(
        (*a, *b),
        delta,
        paired=True,
        vectorized=False,
        n_resamples=n_resamples,
        confidence_level=confidence_level,
        method="percentile",
        rng=np.random.default_rng(check_seed(seed)),
    )
    return point, float(res.confidence_interval.low), float(res.confidence_interval.high)


def bootstrap_ci(
    statistic: Callable[..., float],
    columns: Sequence[np.ndarray],
    *,
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """A percentile bootstrap interval ``(low, high)`` of ``statistic(*columns)``, resampling
    examples (rows of the 1-D ``columns``, all of one length) with replacement
    (``scipy.stats.bootstrap(paired=True)``)."""
    from scipy import stats

    cols = [np.asarray(c, dtype=np.float64) for c in columns]
    if not cols or any(c.ndim != 1 or len(c) != len(cols[0]) for c in cols):
        raise ConfigError(
            f"columns {[c.shape for c in cols]} must be 1-D arrays of one length (at least one)."
        )
    if len(cols[0]) < 2:
        raise DataError(f"a bootstrap needs at least 2 examples, got {len(cols[0])}.")
    ci = stats.bootstrap(
        tuple(cols),
        statistic,
        paired=True,
        vectorized=False,
        n_resamples=n_resamples,
        confidence_level=confidence_level,
        method="percentile",
        rng=np.random.default_rng(check_seed(seed)),
    ).confidence_interval
    return float(ci.low), float(ci.high)


def proportion_ci(
    successes: int, n: int, *, confidence_level: float = 0.95
) -> tuple[float, float, float]:
    """A share with its Wilson score interval (``scipy.stats.binomtest``): ``(p, low, high)``."""
    from scipy import stats

    if n <= 0 or not 0 <= successes <= n:
        raise DataError(f"a proportion needs 0 <= successes <= n and n > 0, got {successes}/{n}.")
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level, method="wilson")
    return successes / n, float(ci.low), float(ci.high)


def chair_i_of_counts(hallucinated: Sequence[float], mentioned: Sequence[float]) -> float:
    """CHAIR_i of a set of captions from their per-caption counts (a CHAIR result's
    ``per_caption`` ``n_hallucinated`` and ``n_mentions``): total hallucinated / total mentions,
    0 without mentions. For bootstrapping over captions (:func:`paired_bootstrap_delta`)."""
    total = float(np.sum(mentioned))
    return float(np.sum(hallucinated)) / total if total else 0.0
