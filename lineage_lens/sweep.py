"""The paper's gating experiment: score sources x alphas x an evaluator, with paired changes.

A model is evaluated ungated once, then gated (:class:`~lineage_lens.gating.TruthGate`) with each
:class:`ScoreSource` at each alpha; ``alpha == 0`` is the ungated model (reused, never
re-evaluated). :func:`transfer_sources` builds the paper's transfer set for a descendant: the
ancestor's scores (``inherited``), its own, and a ``random control`` (the ancestor's scores
permuted over heads, :func:`~lineage_lens.gating.control_scores`) over several seeds.

The evaluator is any callable ``evaluator(model, gate) -> Outcome`` (:class:`Evaluator`; the
protocol, :class:`Outcome` and :class:`PerExample` are defined here, and implemented by the
evaluation classes :class:`~lineage_lens.evals.halueval.HaluEvalJudgement`,
:class:`~lineage_lens.evals.pope.PopeAnswers`, :class:`~lineage_lens.evals.chair.ChairCaptions`
and the zoo's :class:`~lineage_lens.evals.context.ContextFollowing`; this module imports none of
them). For each statistic the evaluator pairs (e.g. ``auroc``, ``pope_accuracy``, ``chair_i``),
every gated row gets

* ``<stat>_delta`` with ``_ci_low``/``_ci_high``: the change against the ungated model on the same
  examples (paired bootstrap, :mod:`lineage_lens.stats`);
* for the sources in ``versus_control`` (default ``inherited``): ``<stat>_vs_control`` with its
  interval, the change against the control at the same alpha -- the control averaged over its
  seeds example by example (an AUROC: the control's AUROCs averaged) -- the transfer test.

With ``out_dir``, :func:`gating_sweep` also writes ``results.json``, ``results.csv`` and
``sweep.png`` (:func:`plot_sweep`), and a library evaluator caches its per-example results in
``cache.jsonl`` there, so an interrupted sweep resumes. :func:`gate_sources` builds the sources of
``lineage-lens eval``: the Truth Scores (``truth``) and control gates of them by kind.

Typical use::

    sources = transfer_sources(ancestor_scores, own_scores, control_seeds=(0, 1, 2))
    frame = gating_sweep(model, HaluEvalJudgement(seeds=(0,)), sources, alphas=(2.0, 4.5))
    frame = gating_sweep(model, PopeAnswers("images"), gate_sources(scores, ["random"]),
                         alphas=(2.0,), control="random", versus_control=("truth",),
                         out_dir="runs/pope")
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lineage_lens.errors import ConfigError, DataError
from lineage_lens.fileio import atomic_open, atomic_path, check_output_path
from lineage_lens.gating import ControlKind, Norm, Placement, TruthGate, control_scores
from lineage_lens.scores import TruthScores
from lineage_lens.stats import paired_auroc_delta, paired_bootstrap_delta

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from transformer_lens.model_bridge import TransformerBridge

log = logging.getLogger(__name__)

#: The name of the random-control source (:func:`transfer_sources`).
CONTROL = "random control"
#: The ``scores`` value of the ungated row.
UNGATED = "none"
#: The name of the Truth Scores' source (:func:`gate_sources`).
TRUTH = "truth"
#: One colour per score source in :func:`plot_sweep`, as across the project's figures: the
#: inherited (or given) Truth Scores blue, a descendant's own orange, the random control red.
SOURCE_COLOURS: dict[str, str] = {
    TRUTH: "C0",
    "inherited": "C0",
    "own": "C1",
    CONTROL: "C3",
    "random": "C3",
    "inverse": "C4",
    "uniform": "C5",
}


# --------------------------------------------------------------------------------------------
# The evaluator protocol: what a sweep calls and what it gets back
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerExample:
    """Per-example values of one statistic in one setting.

    ``columns`` are 1-D arrays of one length (row ``i`` is example ``ids[i]``), summarised by
    ``statistic`` (``np.mean`` for a rate; ``chair_i_of_counts`` for hallucinated and mentioned
    counts). With ``statistic=None`` the value is the AUROC of the single column (a score per
    example, or ``[settings, n]`` scores whose AUROCs are averaged) against ``truth``.
    """

    columns: tuple[np.ndarray, ...]
    statistic: Callable[..., float] | None = np.mean
    truth: np.ndarray | None = None
    ids: tuple[Hashable, ...] | None = None

    @classmethod
    def mean(cls, values: Sequence[float] | np.ndarray, ids: Sequence[Hashable] | None = None):
        """A rate or mean of per-example values (e.g. correctness)."""
        return cls((np.asarray(values),), np.mean, None, None if ids is None else tuple(ids))

    @classmethod
    def auroc(
        cls,
        truth: Sequence[bool] | np.ndarray,
        score: Sequence[float] | np.ndarray,
        ids: Sequence[Hashable] | None = None,
    ) -> PerExample:
        """The AUROC of a per-example score against binary labels."""
        return cls(
            (np.asarray(score, dtype=np.float64),),
            None,
            np.asarray(truth, dtype=bool),
            None if ids is None else tuple(ids),
        )

    def __len__(self) -> int:
        return int(np.shape(self.columns[0])[-1])

    def _check_pair(self, other: PerExample, what: str) -> None:
        if self.statistic is not other.statistic or len(self.columns) != len(other.columns):
            raise ConfigError(f"{what}: the two settings summarise the statistic differently.")
        if len(self) != len(other) or (
            self.ids is not None and other.ids is not None and self.ids != other.ids
        ):
            raise DataError(
                f"{what}: paired changes need the same examples in the same order, got {len(self)} "
                f"and {len(other)} examples; run both settings with the same data and limits."
            )

    def delta(
        self, other: PerExample, *, n_resamples: int = 2000, seed: int = 0, what: str = "statistic"
    ) -> tuple[float, float, float]:
        """``value(other) - value(self)`` with a paired bootstrap 95 % interval
        (:func:`~lineage_lens.stats.paired_bootstrap_delta`, or
        :func:`~lineage_lens.stats.paired_auroc_delta` for an AUROC)."""
        self._check_pair(other, what)
        if self.statistic is None:
            return paired_auroc_delta(
                self.truth,  # type: ignore[arg-type]
                self.columns[0],
                other.columns[0],
                n_resamples=n_resamples,
                seed=seed,
            )
        return paired_bootstrap_delta(
            self.statistic, self.columns, other.columns, n_resamples=n_resamples, seed=seed
        )

    @staticmethod
    def average(parts: Sequence[PerExample], what: str = "statistic") -> PerExample:
        """Several settings on the same examples as one (e.g. a control over its seeds): each
        column averaged example by example; for an AUROC, the scores stacked so that their
        AUROCs are averaged."""
        if not parts:
            raise ConfigError(f"{what}: nothing to average.")
        first = parts[0]
        for p in parts[1:]:
            first._check_pair(p, what)
        if first.statistic is None:
            stacked = np.concatenate([np.atleast_2d(p.columns[0]) for p in parts])
            return PerExample((stacked,), None, first.truth, first.ids)
        columns = tuple(
            np.mean([p.columns[i] for p in parts], axis=0) for i in range(len(first.columns))
        )
        return PerExample(columns, first.statistic, None, first.ids)


@dataclass(frozen=True)
class Outcome:
    """One setting's results: ``metrics`` (the summary row), ``groups`` (per-group rows),
    ``paired`` (per-example values of the statistics compared between settings) and ``details``
    (JSON-able configuration of the run)."""

    metrics: dict[str, Any]
    paired: dict[str, PerExample]
    groups: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


class Evaluator(Protocol):
    """Evaluates a model, gated (``gate``) or not (``None``), for a sweep."""

    def __call__(self, model: TransformerBridge, gate: TruthGate | None) -> Outcome: ...


@dataclass(frozen=True)
class ScoreSource:
    """Truth Scores to gate with, under a name (``inherited``, ``own``, ``random control``, ...);
    ``control_seed`` tells the seeds of one control apart."""

    name: str
    scores: TruthScores
    control_seed: int | None = None


def transfer_sources(
    inherited: TruthScores,
    own: TruthScores | None = None,
    *,
    control_seeds: Sequence[int] = (0,),
    control: ControlKind = "random",
    metric: str = "accuracy",
) -> list[ScoreSource]:
    """``inherited`` (the ancestor's scores), ``own`` (if given) and the control of the
    inherited scores' ``metric`` (:func:`~lineage_lens.gating.control_scores`) once per seed,
    named :data:`CONTROL` for ``"random"`` and ``"<kind> control"`` otherwise."""
    name = CONTROL if control == "random" else f"{control} control"
    sources = [ScoreSource("inherited", inherited)]
    if own is not None:
        sources.append(ScoreSource("own", own))
    sources += [
        ScoreSource(name, control_scores(inherited, control, seed=s, metric=metric), s)
        for s in control_seeds
    ]
    return sources


def gate_sources(
    scores: TruthScores | None,
    controls: Sequence[ControlKind] = (),
    *,
    control_seed: int = 0,
    metric: str = "accuracy",
) -> list[ScoreSource]:
    """The Truth Scores (named :data:`TRUTH`), then each control of their ``metric``
    (:func:`~lineage_lens.gating.control_scores`, named by its kind: ``random``, ``inverse``,
    ``uniform``; the random one permuted with ``control_seed``): the sources of
    ``lineage-lens eval``. No scores: no sources (only the ungated model)."""
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


@dataclass(frozen=True)
class GateSettings:
    """The :class:`~lineage_lens.gating.TruthGate` parameters of a sweep besides alpha."""

    norm: Norm = "center"
    placement: Placement = "z"
    metric: str = "accuracy"
    clamp_min: float | None = 0.0

    def gate(self, scores: TruthScores, alpha: float) -> TruthGate:
        """The gate of ``scores`` at ``alpha``. Control scores
        (:func:`~lineage_lens.gating.control_scores`) hold the controlled values of ``metric``
        under ``accuracy``; they gate by that."""
        metric = self.metric
        meta = getattr(scores, "meta", None) or {}
        if meta.get("control") and meta.get("metric") == metric and metric not in scores.metrics:
            metric = "accuracy"
        return TruthGate(
            scores,
            alpha=alpha,
            norm=self.norm,
            placement=self.placement,
            metric=metric,
            clamp_min=self.clamp_min,
        )


def change_columns(stat: str) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    """The columns of ``stat``'s change against the ungated model and against the control."""
    return (
        (f"{stat}_delta", f"{stat}_delta_ci_low", f"{stat}_delta_ci_high"),
        (f"{stat}_vs_control", f"{stat}_vs_control_ci_low", f"{stat}_vs_control_ci_high"),
    )


def _check(sources: Sequence[ScoreSource], alphas: Sequence[float]) -> list[float]:
    out = []
    for a in alphas:
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
            raise ConfigError(f"alphas must be finite numbers, got {list(alphas)!r}.")
        out.append(float(a))
    if not out:
        raise ConfigError("give at least one alpha (0 is the ungated model).")
    if len(set(out)) != len(out):
        raise ConfigError(f"alphas {out} repeat a value; give each alpha once.")
    if any(not isinstance(s, ScoreSource) for s in sources):
        raise ConfigError("sources must be ScoreSource objects (see transfer_sources).")
    keys = [(s.name, s.control_seed) for s in sources]
    if any(name == UNGATED for name, _ in keys):
        raise ConfigError(f"the source name {UNGATED!r} is the ungated row's; rename the source.")
    if len(set(keys)) != len(keys):
        raise ConfigError(f"sources {keys} repeat a (name, control_seed); give each source once.")
    return out


def build_gates(
    sources: Sequence[ScoreSource], alphas: Sequence[float], gate: GateSettings | None = None
) -> dict[tuple[str, int | None, float], TruthGate]:
    """The gate of every source at every non-zero alpha, keyed ``(name, control_seed, alpha)``.

    Checks the inputs of a sweep without a model (a command line calls it before loading one):
    finite alphas given once, :class:`ScoreSource` objects with distinct ``(name, control_seed)``,
    none named :data:`UNGATED`, and gate parameters :class:`~lineage_lens.gating.TruthGate`
    accepts (``ConfigError`` otherwise).
    """
    values = _check(sources, alphas)
    gate = gate or GateSettings()
    return {
        (s.name, s.control_seed, a): gate.gate(s.scores, a) for s in sources for a in values if a
    }


@dataclass(frozen=True)
class Setting:
    """One evaluated setting of a sweep: the source (:data:`UNGATED` for the ungated model), its
    control seed, alpha, the evaluator's :class:`Outcome` and the
    seconds the evaluation took (0 where an alpha-0 row reuses the ungated result)."""

    scores: str
    control_seed: int | None
    alpha: float
    outcome: Outcome
    wall_s: float = 0.0


def evaluate_settings(
    model: TransformerBridge,
    evaluator: Evaluator,
    sources: Sequence[ScoreSource],
    alphas: Sequence[float],
    *,
    gate: GateSettings | None = None,
    progress: bool = False,
) -> list[Setting]:
    """Evaluate ``model`` ungated once, then with every source at every alpha (sources outer,
    alphas inner); ``alpha == 0`` reuses the ungated outcome. The ungated setting comes first."""
    gates = build_gates(sources, alphas, gate)
    alphas = _check(sources, alphas)
    log.info("gating sweep: %d sources x alphas %s", len(sources), alphas)
    t0 = time.perf_counter()
    ungated = evaluator(model, None)
    results = [Setting(UNGATED, None, 0.0, ungated, time.perf_counter() - t0)]
    settings = [(s, a) for s in sources for a in alphas]
    for src, alpha in tqdm(settings, desc="gating sweep", disable=not progress):
        if alpha == 0:  # a gate with alpha 0 is the identity
            results.append(Setting(src.name, src.control_seed, alpha, ungated))
            continue
        log.info("gate %s (seed %s) alpha %g", src.name, src.control_seed, alpha)
        t0 = time.perf_counter()
        out = evaluator(model, gates[src.name, src.control_seed, alpha])
        results.append(Setting(src.name, src.control_seed, alpha, out, time.perf_counter() - t0))
    return results


def sweep_frame(
    settings: Sequence[Setting],
    *,
    control: str = CONTROL,
    versus_control: Sequence[str] = ("inherited",),
    pool_controls: bool = False,
    rows: Literal["summary", "groups"] = "summary",
    n_resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """The tidy frame of :func:`gating_sweep` from evaluated settings (the ungated one first,
    :func:`evaluate_settings`); the arguments are :func:`gating_sweep`'s."""
    if not settings or settings[0].scores != UNGATED:
        raise ConfigError(
            f"the first setting must be the ungated model ({UNGATED!r}); use evaluate_settings."
        )
    if rows not in ("summary", "groups"):
        raise ConfigError(f"rows must be 'summary' or 'groups', got {rows!r}.")
    ungated = settings[0].outcome
    stats = list(ungated.paired)

    def controls_at(alpha: float, stat: str) -> PerExample | None:
        parts = [
            s.outcome.paired[stat] for s in settings if s.scores == control and s.alpha == alpha
        ]
        return PerExample.average(parts, f"{control} at alpha {alpha:g}") if parts else None

    frame_rows: list[dict[str, Any]] = []
    for setting in settings:
        name, alpha, out = setting.scores, setting.alpha, setting.outcome
        changes: dict[str, float] = {}
        for stat in stats:
            delta_cols, vs_cols = change_columns(stat)
            changes |= dict.fromkeys(delta_cols + vs_cols, math.nan)
        if name != UNGATED:
            for stat in stats:
                delta_cols, vs_cols = change_columns(stat)
                other = out.paired[stat]
                if pool_controls and name == control:
                    other = controls_at(alpha, stat)  # type: ignore[assignment]
                what = f"{stat} of {name} at alpha {alpha:g}"
                d = ungated.paired[stat].delta(other, n_resamples=n_resamples, seed=seed, what=what)
                changes |= dict(zip(delta_cols, d, strict=True))
                base = controls_at(alpha, stat) if name in versus_control else None
                if base is not None:
                    vs = base.delta(out.paired[stat], n_resamples=n_resamples, seed=seed, what=what)
                    changes |= dict(zip(vs_cols, vs, strict=True))
        ident = {"scores": name, "alpha": alpha, "control_seed": setting.control_seed}
        groups = out.groups if rows == "groups" else [out.metrics]
        frame_rows += [ident | dict(g) | changes for g in groups]
    # the change columns last: every statistic's change vs ungated, then vs the control
    frame = pd.DataFrame(frame_rows)
    delta = [c for s in stats for c in change_columns(s)[0]]
    vs = [c for s in stats for c in change_columns(s)[1]]
    rest = [c for c in frame.columns if c not in delta and c not in vs]
    return frame[rest + delta + vs]


def gating_sweep(
    model: TransformerBridge,
    evaluator: Evaluator,
    sources: Sequence[ScoreSource],
    alphas: Sequence[float],
    *,
    gate: GateSettings | None = None,
    control: str = CONTROL,
    versus_control: Sequence[str] = ("inherited",),
    pool_controls: bool = False,
    rows: Literal["summary", "groups"] = "summary",
    n_resamples: int = 2000,
    seed: int = 0,
    progress: bool = False,
    out_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Evaluate ``model`` ungated and gated with every source at every alpha.

    Args:
        evaluator: ``evaluator(model, gate) -> Outcome``.
        sources: the Truth Scores to gate with (:func:`transfer_sources`, :func:`gate_sources`).
        alphas: gating strengths; ``0`` gives each source a row that reuses the ungated result.
        gate: the other gate parameters (default :class:`GateSettings`: center, z, clamp at 0).
        control: the name of the control source the ``versus_control`` sources are compared with.
        pool_controls: the control's rows carry the change of the control averaged over its seeds
            (one value, repeated) rather than each seed's own.
        rows: one row per setting with the evaluator's ``metrics`` (``"summary"``), or one per
            group of ``Outcome.groups`` (``"groups"``: e.g. per HaluEval answer seed).
        n_resamples, seed: of the paired bootstraps.
        out_dir: a folder to write ``results.json`` (the evaluator's ``task``, if it has one,
            and every setting: ``scores``, ``control_seed``, ``alpha``, ``wall_s``, the summary
            metrics, the per-group rows and the evaluation's configuration), ``results.csv``
            (the returned frame) and ``sweep.png`` (:func:`plot_sweep`) into, each atomically.
            An evaluator that is a dataclass with a ``cache`` field left ``None`` (the library's
            evaluators) caches its per-example results in ``out_dir/cache.jsonl``, so running
            an interrupted sweep again resumes where it stopped.

    Returns:
        a tidy DataFrame: ``scores`` (``"none"`` for the ungated row, first), ``alpha``,
        ``control_seed``, the metrics, then per paired statistic ``<stat>_delta`` (with
        ``_ci_low``/``_ci_high``; NaN on the ungated row) and ``<stat>_vs_control`` (with its
        interval; NaN except on ``versus_control`` rows with a control at the same alpha).
    """
    if rows not in ("summary", "groups"):
        raise ConfigError(f"rows must be 'summary' or 'groups', got {rows!r}.")
    out = None if out_dir is None else _check_out_dir(out_dir)
    if out is not None and _has_unset_cache(evaluator):
        evaluator = dataclasses.replace(evaluator, cache=out / "cache.jsonl")  # type: ignore[type-var]
    settings = evaluate_settings(model, evaluator, sources, alphas, gate=gate, progress=progress)
    frame = sweep_frame(
        settings,
        control=control,
        versus_control=versus_control,
        pool_controls=pool_controls,
        rows=rows,
        n_resamples=n_resamples,
        seed=seed,
    )
    if out is not None:
        _write(out, getattr(evaluator, "task", None), frame, settings)
    return frame


def _check_out_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir {str(out)!r} is a file; pass a folder for the results.")
    check_output_path(out / "results.json")  # writable, before any evaluation
    return out


def _has_unset_cache(evaluator: Evaluator) -> bool:
    """Whether ``evaluator`` is a dataclass instance with a ``cache`` field that is ``None``."""
    if not dataclasses.is_dataclass(evaluator) or isinstance(evaluator, type):
        return False
    names = {f.name for f in dataclasses.fields(evaluator)}
    return "cache" in names and evaluator.cache is None  # type: ignore[attr-defined]


def _write(out: Path, task: str | None, frame: pd.DataFrame, settings: Sequence[Setting]) -> None:
    details = [
        {
            "scores": s.scores,
            "control_seed": s.control_seed,
            "alpha": s.alpha,
            "wall_s": s.wall_s,
            "summary": s.outcome.metrics,
            "groups": s.outcome.groups,
            "config": s.outcome.details.get("config", {}),
        }
        for s in settings
    ]
    payload: dict[str, Any] = {} if task is None else {"task": task}
    with atomic_open(out / "results.json", "w", encoding="utf-8") as fh:
        json.dump(payload | {"settings": details}, fh, indent=1, default=str)
    with atomic_open(out / "results.csv", "w", encoding="utf-8", newline="") as fh:
        frame.to_csv(fh, index=False)
    title = "gating sweep" if task is None else f"{task} gating sweep"
    plot_sweep(frame, out / "sweep.png", title=title)


def default_metric(frame: pd.DataFrame) -> str:
    """The metric :func:`plot_sweep` shows by default: ``chair_i`` for CHAIR sweeps, else
    ``accuracy``, else the first paired statistic of the frame (``<stat>_delta``)."""
    for name in ("chair_i", "accuracy"):
        if name in frame.columns:
            return name
    for col in frame.columns:
        if col.endswith("_delta") and col[: -len("_delta")] in frame.columns:
            return col[: -len("_delta")]
    raise ConfigError(
        f"no metric to plot by default in the columns {', '.join(map(str, frame.columns))}; "
        "pass metric=."
    )


def plot_sweep(
    frame: pd.DataFrame,
    path: str | Path | None = None,
    *,
    metric: str | None = None,
    ax: Axes | None = None,
    title: str = "gating sweep",
) -> Axes:
    """Plot ``metric`` of a :func:`gating_sweep` frame against alpha: one line per source
    (``scores``; a control's seeds, and the groups of a ``rows="groups"`` frame, averaged), the
    ungated model as a dashed line, error bars from ``<metric>_std`` where the frame has it.

    Args:
        frame: the frame of :func:`gating_sweep`.
        path: write the figure there (PNG, atomically) and close it.
        metric: the column to plot (default :func:`default_metric`).
        ax: draw into these axes instead of a new figure.
        title: the axes' title.
    """
    import matplotlib

    if path is not None and ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    metric = metric or default_metric(frame)
    if metric not in frame.columns or "scores" not in frame.columns:
        raise ConfigError(
            f"plot_sweep needs a gating_sweep frame with the columns 'scores', 'alpha' and "
            f"{metric!r}; got {', '.join(map(str, frame.columns))}."
        )
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.5))
    else:
        fig = ax.figure
    std = f"{metric}_std"
    cols = [metric, std] if std in frame.columns else [metric]
    base = frame[frame["scores"] == UNGATED]
    gated = frame[frame["scores"] != UNGATED]
    for name, grp in gated.groupby("scores", sort=False):
        line = grp.groupby("alpha", sort=True)[cols].mean()
        err = line[std] if std in line.columns else None
        ax.errorbar(
            line.index,
            line[metric],
            yerr=err,
            marker="o",
            capsize=3,
            label=str(name),
            color=SOURCE_COLOURS.get(str(name)),  # others: the next colour of the cycle
        )
    if len(base):
        ax.axhline(float(base[metric].mean()), color="grey", ls="--", label="ungated")
    ax.set_xlabel("alpha")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend()
    if path is not None:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120)
        plt.close(fig)
    return ax


__all__ = [
    "CONTROL",
    "SOURCE_COLOURS",
    "TRUTH",
    "UNGATED",
    "Evaluator",
    "GateSettings",
    "Outcome",
    "PerExample",
    "ScoreSource",
    "Setting",
    "build_gates",
    "change_columns",
    "default_metric",
    "evaluate_settings",
    "gate_sources",
    "gating_sweep",
    "plot_sweep",
    "sweep_frame",
    "transfer_sources",
]
