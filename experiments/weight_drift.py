"""Figs. 2 and 3 on the zoo: how far each member's attention weights moved from the ancestor.

For the tiny family (:mod:`experiments.zoo_family`), :func:`lineage_lens.weights.weight_drift` of
``base`` -> ``instruct``, ``base`` -> ``vlm`` (descendants) and ``base`` -> ``control`` (unrelated,
same shape). Writes

* ``weight_drift_layers.png/.csv`` -- layer-wise mean relative Frobenius change of W_Q, W_K, W_V,
  W_O per pair (Fig. 2);
* ``weight_drift_family.png/.csv`` -- within-family (descendants) vs cross-family (control) means
  per projection (Fig. 3);
* ``weight_drift_scatter.png/.csv`` -- per-head drift of the QK circuit against the per-head
  ``|Δ Truth Score|`` from the ancestor, with Spearman's ρ per descendant.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator
from scipy import stats

from experiments._common import FIGURES, Section, cli, save_csv, save_figure
from experiments.zoo_family import ANCESTOR, CONTROL, DESCENDANTS, zoo_lineage
from lineage_lens.weights import WeightDrift, weight_drift

PROJECTIONS = ("q", "k", "v", "o")
#: The per-head drift plotted against the Truth Score change.
SCATTER_DRIFT = "qk_rel"


def drifts(profile: str) -> dict[str, WeightDrift]:
    """Weight drift of every other member from the ancestor, descendants first."""
    lineage = zoo_lineage(profile)
    anc = lineage.path(ANCESTOR)
    return {name: weight_drift(anc, lineage.path(name)) for name in (*DESCENDANTS, CONTROL)}


def layers_frame(d: dict[str, WeightDrift]) -> pd.DataFrame:
    """Per pair and layer: mean over heads of each projection's relative change (Fig. 2)."""
    rows = []
    for name, drift in d.items():
        for layer in range(drift.shape[0]):
            row = {"descendant": name, "layer": layer}
            row.update({p: float(drift.heads[f"{p}_rel"][layer].mean()) for p in PROJECTIONS})
            rows.append(row)
    return pd.DataFrame(rows)


def family_frame(layers: pd.DataFrame) -> pd.DataFrame:
    """Within-family (descendants) vs cross-family (control) mean relative change (Fig. 3)."""
    group = np.where(layers["descendant"] == CONTROL, "cross-family", "within-family")
    means = layers.assign(group=group).groupby("group")[list(PROJECTIONS)].mean()
    return means.reset_index().melt(id_vars="group", var_name="projection", value_name="rel")


def scatter_frame(profile: str, d: dict[str, WeightDrift]) -> pd.DataFrame:
    """Per descendant head: ``SCATTER_DRIFT`` and ``|Δ Truth Score|`` from the ancestor."""
    scores = zoo_lineage(profile).scores
    rows = []
    for name in DESCENDANTS:
        frame = d[name].to_frame()[["layer", "head", SCATTER_DRIFT]]
        delta = np.abs(scores[name].accuracy - scores[ANCESTOR].accuracy)
        rows.append(frame.assign(descendant=name, abs_delta_score=delta.ravel()))
    return pd.concat(rows, ignore_index=True)


def plot_layers(layers: pd.DataFrame) -> plt.Figure:
    names = list(dict.fromkeys(layers["descendant"]))
    fig, axes = plt.subplots(
        1, len(names), figsize=(4 * len(names), 3.3), sharey=True, layout="constrained"
    )
    for ax, name in zip(np.atleast_1d(axes), names, strict=True):
        sub = layers[layers["descendant"] == name]
        for p in PROJECTIONS:
            ax.plot(sub["layer"], sub[p], marker="o", ms=3, label=f"W_{p.upper()}")
        ax.set_title(f"{ANCESTOR} → {name}")
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    np.atleast_1d(axes)[0].set_ylabel("||ΔW||_F / ||W||_F (mean over heads)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    return fig


def plot_family(family: pd.DataFrame) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5, 3.3))
    wide = family.pivot(index="projection", columns="group", values="rel").reindex(PROJECTIONS)
    x = np.arange(len(wide))
    for i, group in enumerate(wide.columns):
        ax.bar(x + (i - 0.5) * 0.4, wide[group], 0.4, label=group)
    ax.set_xticks(x, [f"W_{p.upper()}" for p in wide.index])
    ax.set_ylabel("mean ||ΔW||_F / ||W||_F")
    ax.set_title("within- vs cross-family weight drift (zoo)")
    ax.legend(fontsize=8)
    return fig


def plot_scatter(scatter: pd.DataFrame) -> tuple[plt.Figure, dict[str, float]]:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    rhos = {}
    for name, sub in scatter.groupby("descendant", sort=False):
        rho = float(stats.spearmanr(sub[SCATTER_DRIFT], sub["abs_delta_score"]).statistic)
        rhos[str(name)] = rho
        ax.scatter(sub[SCATTER_DRIFT], sub["abs_delta_score"], s=12, label=f"{name} (ρ={rho:.2f})")
    ax.set_xlabel(f"per-head drift ({SCATTER_DRIFT})")
    ax.set_ylabel("|Δ Truth Score| from base")
    ax.legend(fontsize=8)
    return fig, rhos


def run(profile: str = "demo", out_dir: Path = FIGURES) -> Section:
    """Weight drift of the zoo family; write the three figures and their CSVs."""
    out_dir = Path(out_dir)
    d = drifts(profile)
    layers = layers_frame(d)
    family = family_frame(layers)
    scatter = scatter_frame(profile, d)
    scatter_fig, rhos = plot_scatter(scatter)
    files = [
        save_csv(layers, out_dir / "weight_drift_layers.csv"),
        save_figure(plot_layers(layers), out_dir / "weight_drift_layers.png"),
        save_csv(family, out_dir / "weight_drift_family.csv"),
        save_figure(plot_family(family), out_dir / "weight_drift_family.png"),
        save_csv(scatter, out_dir / "weight_drift_scatter.csv"),
        save_figure(scatter_fig, out_dir / "weight_drift_scatter.png"),
    ]
    wide = family.pivot(index="projection", columns="group", values="rel")
    lines = [
        "| projection | within-family | cross-family |",
        "|---|---|---|",
        *(
            f"| W_{p.upper()} | {wide.loc[p, 'within-family']:.3f} | "
            f"{wide.loc[p, 'cross-family']:.3f} |"
            for p in PROJECTIONS
        ),
    ]
    ratio = wide["cross-family"].mean() / wide["within-family"].mean()
    per_desc = layers.groupby("descendant", sort=False)[list(PROJECTIONS)].mean().mean(axis=1)
    lines += [
        "",
        "Reading: mean relative change from base "
        + ", ".join(f"{k} {v:.3f}" for k, v in per_desc.items())
        + f"; the unrelated control is {ratio:.1f}x as far as the descendants on average. "
        "Spearman ρ of per-head QK drift with |Δ Truth Score|: "
        + ", ".join(f"{k} {v:.2f}" for k, v in rhos.items())
        + ".",
    ]
    return Section("Weight drift on the zoo (Figs. 2-3)", "\n".join(lines), files)


if __name__ == "__main__":
    cli(run, __doc__ or "")
