"""Fig. 1: is the Truth Score map inherited? Correlations of the published per-head scores.

From the paper's vendored cross-dataset files (probing sets a–e; Vicuna-7B, its descendants
LLaVA-1.5 and LLaVA-NeXT, and the unrelated Mistral-7B), the Pearson and Spearman correlation of
each model's per-head Truth Scores with Vicuna's, with bootstrap 95 % CIs and head-shuffle
permutation p-values. Writes ``inheritance_published.png`` and ``inheritance_published.csv``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments._common import FIGURES, RESAMPLES, Section, cli, save_csv, save_figure
from lineage_lens.lineage import format_fig1_markdown, published_fig1_table


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
    return Section(
        "Inheritance of Truth Scores (Fig. 1)",
        reading + "\n\n" + format_fig1_markdown(md_rows),
        files,
    )


if __name__ == "__main__":
    cli(run, __doc__ or "")
