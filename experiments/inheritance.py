"""Fig. 1: is the Truth Score map inherited? Correlations of the published per-head scores.

From the paper's vendored cross-dataset files (probing sets a–e; Vicuna-7B, its descendants
LLaVA-1.5 and LLaVA-NeXT, and the unrelated Mistral-7B), the Pearson and Spearman correlation of
each model's per-head Truth Scores with Vicuna's, with bootstrap 95 % CIs and head-shuffle
permutation p-values. Writes ``inheritance_published.png`` and ``inheritance_published.csv``.

:func:`run_zoo` computes the same statistics on the zoo's tiny family (see
:mod:`experiments.zoo_family`; reported by :mod:`experiments.tiny_family`):
ancestor ``base`` against its descendants ``instruct`` and ``vlm`` and the same-shape unrelated
``control``; writes ``inheritance_zoo.png`` (correlation matrix and bars) and
``inheritance_zoo.csv`` (one row per pair: Pearson/Spearman r, CIs, permutation p-values).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments._common import FIGURES, RESAMPLES, Section, cli, save_csv, save_figure
from experiments.zoo_family import ANCESTOR, zoo_lineage
from lineage_lens.lineage import (
    ScoreMatrix,
    compare_many,
    format_fig1_markdown,
    published_fig1_table,
)


def fig1_frame(profile: str) -> pd.DataFrame:
    """The Fig. 1 table with CI bounds as plain columns (what the figure plots)."""
    n = RESAMPLES[profile]
    table = published_fig1_table(n_resamples=n, n_permutations=n, seed=0)
    frame = table.drop(columns=["pearson_ci", "spearman_ci"]).copy()
    frame.insert(3, "pearson_ci_low", [c[0] for c in table["pearson_ci"]])
    frame.insert(4, "pearson_ci_high", [c[1] for c in table["pearson_ci"]])
    frame.insert(7, "spearman_ci_low", [c[0] for c in table["spearman_ci"]])
    frame.insert(8, "spearman_ci_high", [c[1] for c in table["spearman_ci"]])
    frame.attrs.update(table.attrs)
    return frame


def plot_fig1(frame: pd.DataFrame) -> plt.Figure:
    """Grouped bars: Pearson r with Vicuna-7B per probing set and model, with 95 % CIs."""
    sets = list(dict.fromkeys(frame["set"]))
    models = list(dict.fromkeys(frame["model"]))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        rows = frame[frame["model"] == model].set_index("set").reindex(sets)
        x = np.arange(len(sets)) + (i - (len(models) - 1) / 2) * width
        err = np.vstack(
            [rows["pearson"] - rows["pearson_ci_low"], rows["pearson_ci_high"] - rows["pearson"]]
        )
        ax.bar(x, rows["pearson"], width, yerr=err, capsize=2, label=model)
    ax.set_xticks(np.arange(len(sets)), [f"set {s}" for s in sets])
    ax.set_ylabel("Pearson r with Vicuna-7B")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_title("Truth Score inheritance (published scores, 1,024 heads)")
    ax.legend(fontsize=8)
    return fig


def zoo_matrix(profile: str) -> ScoreMatrix:
    """All pairwise comparisons of the zoo family's Truth Scores (reference: the ancestor)."""
    n = RESAMPLES[profile]
    scores = zoo_lineage(profile).scores
    return compare_many(scores, reference=ANCESTOR, n_resamples=n, n_permutations=n, seed=0)


def zoo_frame(matrix: ScoreMatrix) -> pd.DataFrame:
    """One row per pair of members (the plotted matrix cells and bars)."""
    rows = []
    for (a, b), c in matrix.comparisons.items():
        rows.append(
            {
                "a": a,
                "b": b,
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


def plot_zoo(matrix: ScoreMatrix) -> plt.Figure:
    """Pearson matrix of the family and the bars of each member against the ancestor."""
    fig, (ax_m, ax_b) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    mat = matrix.matrix("pearson")
    im = ax_m.imshow(mat.to_numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
    ax_m.set_xticks(range(len(mat)), mat.columns, rotation=30)
    ax_m.set_yticks(range(len(mat)), mat.index)
    for i, j in np.ndindex(mat.shape):
        ax_m.text(j, i, f"{mat.iat[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax_m, label="Pearson r")
    ax_m.set_title("Truth Score correlation (zoo)")
    bars = matrix.against(ANCESTOR)
    err = np.vstack(
        [bars["pearson"] - bars["pearson_ci_low"], bars["pearson_ci_high"] - bars["pearson"]]
    )
    ax_b.bar(bars["model"], bars["pearson"], yerr=err, capsize=3)
    ax_b.axhline(0, color="black", linewidth=0.5)
    ax_b.set_ylabel(f"Pearson r with {ANCESTOR}")
    ax_b.set_title("descendants vs unrelated control (95 % CI)")
    return fig


def run_zoo(profile: str, out_dir: Path) -> tuple[str, list[Path]]:
    """The zoo part: write the PNG and CSV, return the markdown and the files."""
    matrix = zoo_matrix(profile)
    frame = zoo_frame(matrix)
    files = [
        save_csv(frame, out_dir / "inheritance_zoo.csv"),
        save_figure(plot_zoo(matrix), out_dir / "inheritance_zoo.png"),
    ]
    lineage = zoo_lineage(profile)
    acc = {name: s.accuracy for name, s in lineage.scores.items()}
    bars = matrix.against(ANCESTOR).set_index("model")
    lines = [
        f"Zoo tiny family ({lineage.n_items} world items, {2 * lineage.n_items} probing examples; "
        f"{RESAMPLES[profile]} resamples). Truth Scores: "
        + ", ".join(f"{k} mean {v.mean():.3f} (max {v.max():.3f})" for k, v in acc.items())
        + ".",
        "",
        "| member | Pearson r with base | 95 % CI | p (perm.) | Spearman ρ | p (perm.) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in bars.iterrows():
        lines.append(
            f"| {name} | {r['pearson']:.3f} | [{r['pearson_ci_low']:.3f}, "
            f"{r['pearson_ci_high']:.3f}] | {r['pearson_p_perm']:.4f} | {r['spearman']:.3f} | "
            f"{r['spearman_p_perm']:.4f} |"
        )
    desc = [bars.loc[d, "pearson"] for d in bars.index if d != "control"]
    lines.append(
        f"\nReading: descendants correlate with base at r {min(desc):.2f}–{max(desc):.2f}, "
        f"the unrelated control at r {bars.loc['control', 'pearson']:.2f}."
    )
    best = max(float(a.max()) for a in acc.values())
    if best < 0.6:
        lines.append(
            f"Caveat: no member's best head probes above {best:.2f} accuracy (chance 0.5), so the "
            "tiny family carries little linearly decodable truthfulness at the answer's last "
            "token; these correlations describe shared structure of near-chance probe accuracies, "
            "not inherited truthfulness."
        )
    return "\n".join(lines), files


def run(profile: str = "demo", out_dir: Path = FIGURES) -> Section:
    """Recompute Fig. 1 from the published files; write the PNG and CSV; return the section."""
    out_dir = Path(out_dir)
    frame = fig1_frame(profile)
    files = [
        save_csv(frame, out_dir / "inheritance_published.csv"),
        save_figure(plot_fig1(frame), out_dir / "inheritance_published.png"),
    ]
    desc = frame[frame["model"] != "Mistral-7B"]["pearson"]
    ctrl = frame[frame["model"] == "Mistral-7B"]["pearson"]
    reading = (
        f"Descendants of Vicuna-7B correlate with it at Pearson r {desc.min():.2f}–{desc.max():.2f} "
        f"across the five probing sets; the unrelated Mistral-7B at r {ctrl.min():.2f}–"
        f"{ctrl.max():.2f}. {RESAMPLES[profile]} bootstrap resamples and permutations "
        f"(profile {profile})."
    )
    md_rows = frame.assign(
        pearson_ci=list(zip(frame["pearson_ci_low"], frame["pearson_ci_high"], strict=True)),
        spearman_ci=list(zip(frame["spearman_ci_low"], frame["spearman_ci_high"], strict=True)),
    )
    md_rows.attrs.update(frame.attrs)
    markdown = reading + "\n\n" + format_fig1_markdown(md_rows)
    return Section("Inheritance of Truth Scores (Fig. 1)", markdown, files)


if __name__ == "__main__":
    cli(run, __doc__ or "")
