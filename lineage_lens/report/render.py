"""The files of a :class:`~lineage_lens.report.LineageReport`: figures, CSVs, JSON, REPORT.md.

Each figure is drawn from one frame of the report, and that frame is written beside it as CSV, so
every plotted number can be read back; ``statistics.json`` holds every statistic and
``report.json`` what :meth:`LineageReport.load` needs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lineage_lens.attention import plot_top_bottom
from lineage_lens.fileio import atomic_open, atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from lineage_lens.report.result import LineageReport

ROLE_COLOURS = {"ancestor": "C7", "descendant": "C0", "control": "C3"}


def _role(report: LineageReport, name: str) -> str:
    base = name.split(" [")[0]
    return next((m.role for m in report.models if m.name == base), "descendant")


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _scatter(report: LineageReport, ax: Axes) -> None:
    frame = report.scores_frame()
    anc = report.ancestor
    others = [c for c in frame.columns if c not in ("layer", "head", anc)]
    for i, name in enumerate(others):
        comp = report.comparisons.get(name)
        r = f" (r={comp.pearson.r:.2f})" if comp else ""
        ax.scatter(frame[anc], frame[name], s=6, alpha=0.6, color=f"C{i}", label=f"{name}{r}")
    values = frame[[anc, *others]].to_numpy(dtype=float)
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.6)
    ax.set_xlabel(f"{anc} Truth Score")
    ax.set_ylabel("Truth Score")
    ax.set_title("per-head Truth Scores")
    if others:
        ax.legend(fontsize=7)


def _drift_lines(report: LineageReport, ax: Axes) -> None:
    drift = report.drift_frame()
    for i, (name, sub) in enumerate(drift.groupby("descendant", sort=False)):
        for p, style in zip(("q", "k", "v", "o"), ("-", "--", ":", "-."), strict=True):
            ax.plot(sub["layer"], sub[p], style, color=f"C{i}", label=f"{name} W_{p.upper()}")
    ax.set_xlabel("layer")
    ax.set_ylabel("relative weight change")
    ax.set_title("weight drift from the ancestor")
    if len(drift):
        ax.legend(fontsize=6, ncol=2)
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)


def _gating_bars(report: LineageReport, ax: Axes) -> None:
    from lineage_lens.report.plan import EVAL_STAT

    g = report.gating
    stat, better = EVAL_STAT[report.evaluation]
    metric = "auroc" if report.evaluation == "halueval" else stat
    if g.empty or metric not in g.columns:
        ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
        ax.set_title("gating")
        return
    summary = gating_summary(report)
    labels = [f"{m}\n{s}" + (f" α{a:g}" if a else "") for m, s, a in summary.index]
    models = list(dict.fromkeys(g["model"]))
    ax.bar(
        range(len(summary)),
        summary["mean"],
        yerr=summary["std"] if summary["std"].notna().any() else None,
        capsize=3,
        color=[f"C{models.index(m)}" for m, _, _ in summary.index],
    )
    ax.set_xticks(range(len(summary)), labels, fontsize=7, rotation=60, ha="right")
    if metric == "auroc":
        ax.axhline(0.5, color="grey", linewidth=0.6)
    ax.set_ylabel(f"{report.evaluation} {metric} ({better} is better)")
    ax.set_title(f"{report.evaluation} under gates")


def gating_summary(report: LineageReport) -> pd.DataFrame:
    """Per model, score source and alpha: mean and std of the plotted metric over the rows
    (answer seeds and control seeds)."""
    from lineage_lens.report.plan import EVAL_STAT

    stat, _ = EVAL_STAT[report.evaluation]
    metric = "auroc" if report.evaluation == "halueval" else stat
    return report.gating.groupby(["model", "scores", "alpha"], sort=False)[metric].agg(
        ["mean", "std"]
    )


def overview(report: LineageReport) -> Figure:
    """Scores scatter, layer-wise drift and the gating bars side by side."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
    _scatter(report, axes[0])
    _drift_lines(report, axes[1])
    _gating_bars(report, axes[2])
    return fig


def inheritance(report: LineageReport) -> Figure:
    """Per-head scatter against the ancestor and Pearson r with its CI per model."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    _scatter(report, axes[0])
    frame = report.to_frame()
    ax = axes[1]
    if len(frame):
        x = np.arange(len(frame))
        r = frame["pearson_r"].to_numpy(dtype=float)
        err = np.vstack([r - frame["pearson_ci_low"], frame["pearson_ci_high"] - r])
        ax.bar(x, r, yerr=err, capsize=3, color=[ROLE_COLOURS[v] for v in frame["role"]])
        ax.set_xticks(x, frame["model"], rotation=30, ha="right", fontsize=8)
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set_ylabel(f"Pearson r with {report.ancestor} (95 % CI)")
    ax.set_title("inheritance (blue: descendants, red: controls)")
    return fig


def heatmaps(report: LineageReport) -> Figure:
    """The Truth Score map of every model (its own colour scale)."""
    import matplotlib.pyplot as plt

    maps = {**report.scores, **report.extra_scores}
    fig, axes = plt.subplots(
        1, len(maps), figsize=(3.6 * len(maps), 3.6), layout="constrained", squeeze=False
    )
    for ax, (name, s) in zip(axes[0], maps.items(), strict=True):
        s.heatmap(ax=ax, title=name)
    return fig


def drift(report: LineageReport) -> Figure:
    """Layer-wise relative change of W_Q/W_K/W_V/W_O from the ancestor."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    _drift_lines(report, ax)
    return fig


def cka(report: LineageReport) -> Figure:
    """Per-layer mean CKA with the ancestor (band: min-max over heads)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for i, (name, sim) in enumerate(report.cka.items()):
        x = np.arange(sim.shape[0])
        ax.plot(x, sim.layer_means(), marker="o", ms=3, color=f"C{i}", label=name)
        ax.fill_between(x, sim.values.min(1), sim.values.max(1), color=f"C{i}", alpha=0.2)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"debiased CKA with {report.ancestor}")
    ax.set_title("per-head CKA of the probed activations")
    if report.cka:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
    return fig


def evidence(report: LineageReport) -> Figure:
    """Attention to evidence of the top-k vs bottom-k heads by each model's own Truth Score."""
    import matplotlib.pyplot as plt

    frame = report.evidence_frame()
    models = list(dict.fromkeys(frame["model"]))
    fig, ax = plt.subplots(figsize=(1.8 * max(len(models), 1) + 2, 3.5), layout="constrained")
    k = report._k()
    plot_top_bottom(ax, frame, "model", k, fontsize=8)
    ax.set_title(f"heads by own Truth Score: top-{k} vs bottom-{k}")
    if models:
        ax.legend(fontsize=8)
    return fig


def gating(report: LineageReport) -> Figure:
    """The evaluation's metric per model, score source and alpha (mean ± std over rows)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
    _gating_bars(report, ax)
    return fig


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def _csv(frame: pd.DataFrame, path: Path) -> str:
    with atomic_open(path, "w", newline="") as fh:
        frame.to_csv(fh, index=False)
    return path.name


def _png(fig: Figure, path: Path) -> str:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    return path.name


def write_report(report: LineageReport, out: Path) -> Path:
    """Write every file of ``report`` into ``out``; returns REPORT.md's path."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "cairo"):
        import matplotlib.pyplot as plt

        plt.switch_backend("Agg")
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results"
    results.mkdir(exist_ok=True)
    files: dict[str, Any] = {"scores": {}, "extra_scores": {}, "drift": {}, "cka": {}}
    files["evidence"] = {}
    for key, items in (
        ("scores", report.scores),
        ("extra_scores", report.extra_scores),
        ("drift", report.drift),
        ("cka", report.cka),
        ("evidence", report.evidence),
    ):
        for name, obj in items.items():
            path = results / f"{key}-{_safe(name)}.npz"
            obj.save(path)
            files[key][name] = str(path.relative_to(out))
    csvs = {
        "scores": _csv(report.scores_frame(), out / "scores.csv"),
        "inheritance": _csv(report.to_frame(), out / "inheritance.csv"),
        "drift": _csv(report.drift_frame(), out / "drift.csv"),
        "cka": _csv(report.cka_frame(), out / "cka.csv"),
        "evidence": _csv(report.evidence_frame(), out / "evidence.csv"),
        "gating": _csv(report.gating, out / "gating.csv") if len(report.gating) else "",
        "transfer": _csv(report.transfer(), out / "transfer.csv"),
    }
    files["gating"] = csvs["gating"]
    pngs = {}
    for kind in ("inheritance", "heatmaps", "drift", "cka", "evidence", "gating"):
        pngs[kind] = _png(report.plot(kind), out / f"{kind}.png")
    stats = report.statistics()
    with atomic_open(out / "statistics.json", "w") as fh:
        json.dump(stats, fh, indent=1)
    manifest = {
        "models": stats["models"],
        "plan": stats["plan"],
        "evaluation": report.evaluation,
        "data": report.data,
        "comparisons": stats["comparisons"],
        "evidence_stats": stats["evidence"],
        "skipped": report.skipped,
        "probe_ids": report.probe_ids,
        "meta": stats["meta"],
        "files": files,
    }
    with atomic_open(out / "report.json", "w") as fh:
        json.dump(manifest, fh, indent=1)
    path = out / "REPORT.md"
    with atomic_open(path, "w") as fh:
        fh.write(markdown(report, csvs, pngs))
    return path


def _fmt(value: Any, spec: str = ".3f") -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "–" if not np.isfinite(v) else format(v, spec)


def markdown(report: LineageReport, csvs: dict[str, str], pngs: dict[str, str]) -> str:
    """REPORT.md: the findings first, then the command, versions and one section per question."""
    plan = report.plan
    desc = ", ".join(report.names("descendant"))
    lines = [f"# Lineage report: {report.ancestor} → {desc}", ""]
    lines += [f"- {f}" for f in report.findings()]
    versions = ", ".join(f"{k} {v}" for k, v in report.meta.get("versions", {}).items())
    lines += [
        "",
        f"Command: `{report.meta.get('command', '')}`",
        "",
        f"Versions: {versions}.",
        "",
        "Models: "
        + "; ".join(f"{m.name} ({m.role}, `{m.source}`, id {m.identity})" for m in report.models)
        + ".",
        "",
        f"Data: {report.data}, {report.meta.get('n_examples', '?')} probing examples, "
        f"{plan.folds}-fold CV, seed {plan.seed}; {plan.n_resamples} bootstrap resamples and "
        f"permutations. Steps computed in this run: {len(report.meta.get('computed', []))}, "
        f"reused from the cache: {len(report.meta.get('reused', []))}.",
        "",
        "## Inheritance of the Truth Score map",
        "",
        "| model | role | Pearson r [95 % CI] | p (perm.) | Spearman ρ | top-k overlap (chance) |",
        "|---|---|---|---|---|---|",
    ]
    frame = report.to_frame()
    for r in frame.itertuples():
        lines.append(
            f"| {r.model} | {r.role} | {_fmt(r.pearson_r)} [{_fmt(r.pearson_ci_low)}, "
            f"{_fmt(r.pearson_ci_high)}] | {_fmt(r.pearson_p_permutation, '.3g')} | "
            f"{_fmt(r.spearman_r)} | top-{r.topk}: {_fmt(r.topk_overlap, '.0f')} "
            f"({_fmt(r.topk_expected, '.1f')}) |"
        )
    lines += ["", f"![inheritance]({pngs['inheritance']}) ![heatmaps]({pngs['heatmaps']})", ""]
    lines += [
        f"Numbers: [{csvs['scores']}]({csvs['scores']}), "
        f"[{csvs['inheritance']}]({csvs['inheritance']}).",
        "",
    ]
    lines += ["## Weight drift and per-head CKA", ""]
    if len(frame):
        lines += [
            "| model | W_Q | W_K | W_V | W_O (mean relative change) | mean CKA |",
            "|---|---|---|---|---|---|",
        ]
        for r in frame.itertuples():
            lines.append(
                f"| {r.model} | {_fmt(r.drift_q, '.4f')} | {_fmt(r.drift_k, '.4f')} | "
                f"{_fmt(r.drift_v, '.4f')} | {_fmt(r.drift_o, '.4f')} | {_fmt(r.cka_mean)} |"
            )
    lines += ["", f"![drift]({pngs['drift']}) ![cka]({pngs['cka']})", ""]
    lines += [f"Numbers: [{csvs['drift']}]({csvs['drift']}), [{csvs['cka']}]({csvs['cka']}).", ""]
    lines += ["## Attention to evidence", ""]
    if report.evidence_stats:
        lines += [
            "| model | n | top-k | bottom-k | top − bottom [95 % CI] |",
            "|---|---|---|---|---|",
        ]
        for name, s in report.evidence_stats.items():
            lines.append(
                f"| {name} | {s['n']} | {_fmt(s['top'], '.4f')} | {_fmt(s['bottom'], '.4f')} | "
                f"{_fmt(s['delta'], '+.4f')} [{_fmt(s['ci_low'], '+.4f')}, "
                f"{_fmt(s['ci_high'], '+.4f')}] |"
            )
    lines += ["", f"![evidence]({pngs['evidence']})", ""]
    lines += [f"Numbers: [{csvs['evidence']}]({csvs['evidence']}).", ""]
    lines += ["## Transfer: gating with the ancestor's scores", ""]
    t = report.transfer()
    if len(t):
        lines += [
            f"Evaluation: {report.evaluation} (statistic `{t['stat'].iloc[0]}`), "
            f"{plan.eval_rows or 'all'} rows, seeds {list(plan.eval_seeds)}; random control over "
            f"permutation seeds {list(plan.control_seeds)}; changes are paired bootstraps.",
            "",
            "| model | alpha | inherited vs ungated | own vs ungated | control vs ungated | "
            "inherited vs control |",
            "|---|---|---|---|---|---|",
        ]
        for r in t.itertuples():
            lines.append(
                f"| {r.model} | {r.alpha:g} | {_fmt(r.inherited_delta, '+.3f')} "
                f"[{_fmt(r.inherited_delta_ci_low, '+.3f')}, "
                f"{_fmt(r.inherited_delta_ci_high, '+.3f')}] | {_fmt(r.own_delta, '+.3f')} | "
                f"{_fmt(r.control_delta, '+.3f')} | {_fmt(r.inherited_vs_control, '+.3f')} "
                f"[{_fmt(r.inherited_vs_control_ci_low, '+.3f')}, "
                f"{_fmt(r.inherited_vs_control_ci_high, '+.3f')}] |"
            )
    lines += ["", f"![gating]({pngs['gating']})", ""]
    gating_links = [f"[{csvs['transfer']}]({csvs['transfer']})"]
    if csvs["gating"]:
        gating_links.insert(0, f"[{csvs['gating']}]({csvs['gating']})")
    lines += ["Numbers: " + ", ".join(gating_links) + ".", ""]
    if report.skipped:
        lines += ["## Skipped steps", ""]
        lines += [f"- {k}: {v}" for k, v in report.skipped.items()]
        lines.append("")
    lines += ["Every statistic: [statistics.json](statistics.json).", ""]
    return "\n".join(lines)
