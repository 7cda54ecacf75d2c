"""Gating sweeps over the evaluators: one row per (gate, alpha) setting.

:func:`run_sweep` evaluates a model without a gate (``alpha == 0`` or no scores), with a
:class:`~lineage_lens.gating.TruthGate` built from Truth Scores at each ``alpha``, and optionally
with control gates (``"random"``: the same scores permuted across heads; ``"inverse"``,
``"uniform"``) at the same alphas. With ``out_dir`` it writes ``results.json`` (every setting with
its per-group metrics and configuration), ``results.csv`` (one row per setting), ``sweep.png`` and
a per-example cache ``cache.jsonl``: rerunning an interrupted sweep resumes where it stopped.

Typical use::

    frame = run_sweep("halueval", model, scores=load_scores("scores.npz"),
                      alphas=[0, 2, 4.5], controls=["random"], out_dir="runs/sweep")
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from lineage_lens._io import atomic_open, atomic_path
from lineage_lens.errors import ConfigError
from lineage_lens.evals._common import ResultCache
from lineage_lens.stats import METRIC_NAMES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from transformer_lens.model_bridge import TransformerBridge

    from lineage_lens.scores import TruthScores

log = logging.getLogger(__name__)

Task = Literal["halueval", "pope", "chair"]
TASKS: tuple[str, ...] = ("halueval", "pope", "chair")
CHAIR_METRICS = ("chair_s", "chair_i", "recall", "mean_length")


def _evaluate(
    task: str, model: TransformerBridge, gate: Any, cache: ResultCache | None, kwargs: dict
) -> tuple[dict[str, float], list[dict[str, Any]], dict[str, Any]]:
    """``(summary metrics, per-group metric rows, config)`` of one setting."""
    if task == "halueval":
        from lineage_lens.evals.halueval import evaluate_halueval

        res = evaluate_halueval(model, gate=gate, cache=cache, **kwargs)
        return res.summary(), res.metrics.to_dict(orient="records"), res.config
    if task == "pope":
        from lineage_lens.evals.pope import evaluate_pope

        res = evaluate_pope(model, gate=gate, cache=cache, **kwargs)
        return res.summary(), res.metrics.to_dict(orient="records"), res.config
    from lineage_lens.evals.chair import evaluate_chair

    cres = evaluate_chair(model, gate=gate, cache=cache, **kwargs)
    return dict(cres.metrics), [dict(cres.metrics)], cres.config


def run_sweep(
    task: Task,
    model: TransformerBridge,
    *,
    scores: TruthScores | None = None,
    alphas: Sequence[float] = (0.0,),
    norm: str = "center",
    placement: str = "z",
    metric: str = "accuracy",
    clamp_min: float | None = 0.0,
    controls: Sequence[str] = (),
    control_seed: int = 0,
    out_dir: str | Path | None = None,
    **task_kwargs: Any,
) -> pd.DataFrame:
    """Evaluate ``model`` on ``task`` for every gate setting; one row per setting.

    Args:
        task: ``"halueval"``, ``"pope"`` or ``"chair"``.
        scores: Truth Scores for the gates (``None``: only the ungated baseline).
        alphas: gating strengths; ``0`` is the ungated baseline (evaluated once).
        norm, placement, metric, clamp_min: :class:`~lineage_lens.gating.TruthGate` parameters.
        controls: control gates evaluated at every non-zero alpha (``random``, ``inverse``,
            ``uniform``), built with ``control_seed``.
        out_dir: where to write results.json, results.csv, sweep.png and cache.jsonl.
        task_kwargs: passed to the evaluator (``seeds``, ``mode``, ``limit``, ``batch_size``,
            ``image_dir``, ``splits``, ...).

    Returns:
        a DataFrame with ``gate`` (``none``, ``truth`` or the control), ``alpha``, the mean
        metrics (and ``*_std`` over seeds / splits), ``n`` and ``wall_s``.
    """
    from lineage_lens.gating import TruthGate

    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; use {', '.join(TASKS)}.")
    alphas = [float(a) for a in alphas]
    if not alphas or any(not math.isfinite(a) for a in alphas):
        raise ConfigError(f"alphas must be finite numbers, got {alphas}.")
    if scores is None and (any(a != 0 for a in alphas) or controls):
        raise ConfigError("gated settings (alpha != 0 or controls) need Truth Scores (scores=).")
    settings: list[tuple[str, float, Any]] = []
    if 0.0 in alphas or scores is None:
        settings.append(("none", 0.0, None))
    for alpha in alphas:
        if alpha == 0:
            continue
        gate = TruthGate(
            scores,  # type: ignore[arg-type]
            alpha=alpha,
            norm=norm,  # type: ignore[arg-type]
            placement=placement,  # type: ignore[arg-type]
            metric=metric,
            clamp_min=clamp_min,
        )
        settings.append(("truth", alpha, gate))
        for kind in controls:
            settings.append((kind, alpha, gate.control(kind, seed=control_seed)))  # type: ignore[arg-type]

    out = Path(out_dir) if out_dir is not None else None
    cache = ResultCache(out / "cache.jsonl") if out is not None else None
    rows: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    try:
        for kind, alpha, gate in settings:
            log.info("%s: gate=%s alpha=%g", task, kind, alpha)
            t0 = time.perf_counter()
            summary, groups, config = _evaluate(task, model, gate, cache, dict(task_kwargs))
            wall = time.perf_counter() - t0
            rows.append({"task": task, "gate": kind, "alpha": alpha, **summary, "wall_s": wall})
            details.append(
                {
                    "gate": kind,
                    "alpha": alpha,
                    "summary": summary,
                    "groups": groups,
                    "config": config,
                }
            )
    finally:
        if cache is not None:
            cache.close()
    frame = pd.DataFrame(rows)
    if out is not None:
        with atomic_open(out / "results.json", "w", encoding="utf-8") as fh:
            json.dump({"task": task, "settings": details}, fh, indent=1, default=str)
        with atomic_open(out / "results.csv", "w", encoding="utf-8", newline="") as fh:
            frame.to_csv(fh, index=False)
        plot_sweep(frame, out / "sweep.png")
    return frame


def default_metric(frame: pd.DataFrame) -> str:
    """``chair_i`` for CHAIR sweeps, else ``accuracy``."""
    return "chair_i" if "chair_i" in frame.columns else "accuracy"


def plot_sweep(
    frame: pd.DataFrame,
    path: str | Path | None = None,
    *,
    metric: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Plot ``metric`` against alpha, one line per gate kind (the baseline as a dashed line)."""
    import matplotlib

    if path is not None and ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    metric = metric or default_metric(frame)
    if metric not in frame.columns:
        raise ConfigError(f"metric {metric!r} is not a column ({', '.join(frame.columns)}).")
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.5))
    else:
        fig = ax.figure
    base = frame[frame["gate"] == "none"]
    for kind, grp in frame[frame["gate"] != "none"].groupby("gate", sort=False):
        grp = grp.sort_values("alpha")
        err = grp.get(f"{metric}_std")
        ax.errorbar(grp["alpha"], grp[metric], yerr=err, marker="o", capsize=3, label=str(kind))
    if len(base):
        ax.axhline(float(base[metric].iloc[0]), color="grey", ls="--", label="no gate")
    ax.set_xlabel("alpha")
    ax.set_ylabel(metric)
    ax.set_title(f"{frame['task'].iloc[0] if 'task' in frame else ''} gating sweep")
    ax.legend()
    if path is not None:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120)
        plt.close(fig)
    return ax


__all__ = ["CHAIR_METRICS", "METRIC_NAMES", "TASKS", "plot_sweep", "run_sweep"]
