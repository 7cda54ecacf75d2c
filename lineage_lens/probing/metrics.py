"""Held-out metrics of every head at once: accuracy, precision, recall, F1 and AUROC."""

from __future__ import annotations

import numpy as np
from jaxtyping import Bool, Float, Int
from scipy.stats import rankdata

from lineage_lens.errors import ShapeMismatchError


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
