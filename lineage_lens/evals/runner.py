"""Evaluation sweeps with output files: the library sweep for ``lineage-lens eval``.

:func:`run_sweep` is :func:`lineage_lens.sweep.gating_sweep` for one evaluator
(:class:`~lineage_lens.evals.outcomes.HaluEvalJudgement`,
:class:`~lineage_lens.evals.outcomes.PopeAnswers` or
:class:`~lineage_lens.evals.outcomes.ChairCaptions`, their options typed fields): the model
ungated, with a :class:`~lineage_lens.gating.TruthGate` built from Truth Scores at each ``alpha``,
and optionally with control gates (``"random"``: the same scores permuted across heads;
``"inverse"``, ``"uniform"``) at the same alphas, one row per setting with the paired changes
against the ungated model (and, for the Truth Scores, against the first control). With
``out_dir`` it writes ``results.json`` (every setting with its per-group metrics and
configuration), ``results.csv`` (one row per setting), ``sweep.png`` and a per-example cache
``cache.jsonl``: rerunning an interrupted sweep resumes where it stopped. Its records are keyed by
the model's content and each prompt's (tokens and image bytes), so questions or images changed
under the same ids are evaluated again.

Typical use::

    frame = run_sweep(HaluEvalJudgement(seeds=(0, 1, 2)), model, scores=load_scores("s.npz"),
                      alphas=[0, 2, 4.5], controls=["random"], out_dir="runs/sweep")
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd

from lineage_lens.errors import ConfigError
from lineage_lens.evals._common import ResultCache
from lineage_lens.evals.outcomes import ChairCaptions, HaluEvalJudgement, PopeAnswers
from lineage_lens.fileio import atomic_open, atomic_path
from lineage_lens.gating import ControlKind, control_scores
from lineage_lens.stats import METRIC_NAMES
from lineage_lens.sweep import (
    GateSettings,
    ScoreSource,
    Setting,
    change_columns,
    evaluate_settings,
    sweep_frame,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from transformer_lens.model_bridge import TransformerBridge

    from lineage_lens.scores import TruthScores

log = logging.getLogger(__name__)

Task = Literal["halueval", "pope", "chair"]
TASKS: tuple[str, ...] = ("halueval", "pope", "chair")
CHAIR_METRICS = ("chair_s", "chair_i", "recall", "mean_length")
#: The evaluators :func:`run_sweep` runs, by task name.
TaskEvaluator = HaluEvalJudgement | PopeAnswers | ChairCaptions
EVALUATORS: dict[str, type[TaskEvaluator]] = {
    "halueval": HaluEvalJudgement,
    "pope": PopeAnswers,
    "chair": ChairCaptions,
}
#: The ``gate`` value of the rows gated with the Truth Scores.
TRUTH = "truth"


def gate_sources(
    scores: TruthScores | None,
    controls: Sequence[ControlKind] = (),
    *,
    control_seed: int = 0,
    metric: str = "accuracy",
) -> list[ScoreSource]:
    """The sources of :func:`run_sweep`: the Truth Scores (:data:`TRUTH`), then each control of
    their ``metric`` (:func:`~lineage_lens.gating.control_scores`, named by its kind; the random
    one permuted with ``control_seed``). No scores: no sources (only the ungated model)."""
    if scores is None:
        if controls:
            raise ConfigError("control gates need Truth Scores (scores=).")
        return []
    if len(set(controls)) != len(controls):
        raise ConfigError(f"controls {list(controls)} repeat a kind; give each control once.")
    return [ScoreSource(TRUTH, scores)] + [
        ScoreSource(kind, control_scores(scores, kind, seed=control_seed, metric=metric))
        for kind in controls
    ]


def _evaluator(task: TaskEvaluator | str) -> TaskEvaluator:
    if isinstance(task, str):
        if task not in EVALUATORS:
            raise ConfigError(f"unknown task {task!r}; use {', '.join(TASKS)}.")
        return EVALUATORS[task]()
    if not isinstance(task, (HaluEvalJudgement, PopeAnswers, ChairCaptions)):
        raise ConfigError(
            f"run_sweep evaluates a task ({', '.join(TASKS)}) or a HaluEvalJudgement, PopeAnswers "
            f"or ChairCaptions, got {type(task).__name__}; for another evaluator use "
            "lineage_lens.sweep.gating_sweep."
        )
    return task


def run_sweep(
    evaluator: TaskEvaluator | Task,
    model: TransformerBridge,
    *,
    scores: TruthScores | None = None,
    alphas: Sequence[float] = (0.0,),
    gate: GateSettings | None = None,
    controls: Sequence[ControlKind] = (),
    control_seed: int = 0,
    out_dir: str | Path | None = None,
    n_resamples: int = 2000,
) -> pd.DataFrame:
    """Evaluate ``model`` with ``evaluator`` for every gate setting; one row per setting.

    Args:
        evaluator: the evaluation and its options (:class:`HaluEvalJudgement`,
            :class:`PopeAnswers`, :class:`ChairCaptions`), or a task name for its defaults.
        scores: Truth Scores for the gates (``None``: only the ungated baseline).
        alphas: gating strengths, each once; ``0`` is the ungated baseline. The ungated model is
            always evaluated once (the changes are against it); its row is shown when ``alphas``
            hold 0 or there are no scores.
        gate: the :class:`~lineage_lens.gating.TruthGate` parameters besides alpha (default
            :class:`~lineage_lens.sweep.GateSettings`: center, z, accuracy, clamp at 0).
        controls: control gates evaluated at every non-zero alpha (``random``, ``inverse``,
            ``uniform``), the random one permuted with ``control_seed``.
        out_dir: where to write results.json, results.csv, sweep.png and cache.jsonl (an
            evaluator without its own ``cache`` uses ``cache.jsonl``).
        n_resamples: of the paired bootstraps.

    Returns:
        a DataFrame with ``task``, ``gate`` (``none``, ``truth`` or the control), ``alpha``, the
        evaluator's metrics (mean and ``*_std`` over seeds / splits, ``n``, ...), ``wall_s``,
        then per paired statistic (``auroc``, ``pope_accuracy``, ``chair_i``, ...) the change
        against the ungated model ``<stat>_delta`` and, on the Truth Scores' rows, against the
        first control at the same alpha ``<stat>_vs_control``, each with its 95 % interval
        (:func:`lineage_lens.sweep.gating_sweep`).
    """
    evaluator = _evaluator(evaluator)
    gate = gate or GateSettings()
    if not isinstance(gate, GateSettings):
        raise ConfigError(f"gate must be a GateSettings, got {type(gate).__name__}.")
    if scores is None and (any(a != 0 for a in alphas) or controls):
        raise ConfigError("gated settings (alpha != 0 or controls) need Truth Scores (scores=).")
    sources = gate_sources(scores, controls, control_seed=control_seed, metric=gate.metric)
    out = Path(out_dir) if out_dir is not None else None
    cache = None
    if out is not None and evaluator.cache is None:
        cache = ResultCache(out / "cache.jsonl")
        evaluator = dataclasses.replace(evaluator, cache=cache)
    try:
        settings = evaluate_settings(model, evaluator, sources, alphas, gate=gate)
    finally:
        if cache is not None:
            cache.close()
    # the ungated setting, then alpha by alpha the Truth Scores and each control (the sources'
    # alpha-0 settings are the ungated result again)
    order = {float(a): i for i, a in enumerate(alphas)}
    gated = sorted((s for s in settings[1:] if s.alpha != 0), key=lambda s: order[s.alpha])
    shown = [settings[0], *gated]
    frame = sweep_frame(
        shown,
        control=controls[0] if controls else "",
        versus_control=(TRUTH,),
        n_resamples=n_resamples,
    )
    frame = frame.drop(columns="control_seed").rename(columns={"scores": "gate"})
    frame.insert(0, "task", evaluator.task)
    changes = [c for st in settings[0].outcome.paired for c in sum(change_columns(st), ())]
    frame.insert(len(frame.columns) - len(changes), "wall_s", [s.wall_s for s in shown])
    if scores is not None and 0.0 not in order:  # the ungated row only where asked for
        frame, shown = frame.iloc[1:].reset_index(drop=True), shown[1:]
    if out is not None:
        _write(out, evaluator.task, frame, shown)
    return frame


def _write(out: Path, task: str, frame: pd.DataFrame, shown: Sequence[Setting]) -> None:
    details = [
        {
            "gate": s.scores,
            "alpha": s.alpha,
            "summary": s.outcome.metrics,
            "groups": s.outcome.groups,
            "config": s.outcome.details.get("config", {}),
        }
        for s in shown
    ]
    with atomic_open(out / "results.json", "w", encoding="utf-8") as fh:
        json.dump({"task": task, "settings": details}, fh, indent=1, default=str)
    with atomic_open(out / "results.csv", "w", encoding="utf-8", newline="") as fh:
        frame.to_csv(fh, index=False)
    plot_sweep(frame, out / "sweep.png")


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


__all__ = [
    "CHAIR_METRICS",
    "EVALUATORS",
    "METRIC_NAMES",
    "TASKS",
    "TRUTH",
    "TaskEvaluator",
    "gate_sources",
    "plot_sweep",
    "run_sweep",
]
