"""Per-head CKA from the ancestor to each zoo member, and its relation to Truth Score change.

For the tiny family (:mod:`experiments.zoo_family`), :func:`lineage_lens.cka.head_cka` of ``base``'s
``hook_z`` activations with ``instruct``'s, ``vlm``'s and the unrelated ``control``'s on the same
probing examples. Writes ``cka_zoo.png`` (one layer x head heatmap per pair) and ``cka_zoo.csv``
(per pair and head: CKA and ``|Δ Truth Score|`` from base).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from experiments._common import FIGURES, Section, cli, save_csv, save_figure
from experiments.zoo_family import ANCESTOR, CONTROL, DESCENDANTS, zoo_lineage
from lineage_lens.cka import HeadCKA, head_cka


def ckas(profile: str) -> dict[str, HeadCKA]:
    """Per-head CKA of the ancestor with every other member, descendants first."""
    lineage = zoo_lineage(profile)
    base = lineage.acts[ANCESTOR]
    return {
        name: head_cka(base, lineage.acts[name], progress=False) for name in (*DESCENDANTS, CONTROL)
    }


def cka_frame(profile: str, values: dict[str, HeadCKA]) -> pd.DataFrame:
    """The plotted numbers: per member and head, CKA with base and |Δ Truth Score|."""
    scores = zoo_lineage(profile).scores
    rows = []
    for name, c in values.items():
        delta = np.abs(scores[name].accuracy - scores[ANCESTOR].accuracy)
        rows.append(c.to_frame().assign(member=name, abs_delta_score=delta.ravel()))
    return pd.concat(rows, ignore_index=True)[["member", "layer", "head", "cka", "abs_delta_score"]]


def plot_cka(values: dict[str, HeadCKA]) -> plt.Figure:
    fig, axes = plt.subplots(
        1, len(values), figsize=(4 * len(values), 3.3), squeeze=False, layout="constrained"
    )
    for ax, (name, c) in zip(axes[0], values.items(), strict=True):
        im = ax.imshow(c.values, vmin=0, vmax=1, aspect="auto", cmap="viridis")
        ax.set_title(f"CKA {ANCESTOR} vs {name}")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    fig.colorbar(im, ax=axes[0].tolist(), label="linear CKA")
    return fig


def run(profile: str = "demo", out_dir: Path = FIGURES) -> Section:
    """Per-head CKA of the zoo family; write the heatmaps and their CSV."""
    out_dir = Path(out_dir)
    values = ckas(profile)
    frame = cka_frame(profile, values)
    files = [
        save_csv(frame, out_dir / "cka_zoo.csv"),
        save_figure(plot_cka(values), out_dir / "cka_zoo.png"),
    ]
    lines = [
        "| member | mean CKA with base | min | Spearman ρ(CKA, abs Δ score) | p |",
        "|---|---|---|---|---|",
    ]
    means = {}
    for name, sub in frame.groupby("member", sort=False):
        res = stats.spearmanr(sub["cka"], sub["abs_delta_score"])
        means[name] = sub["cka"].mean()
        lines.append(
            f"| {name} | {sub['cka'].mean():.3f} | {sub['cka'].min():.3f} | "
            f"{res.statistic:.2f} | {res.pvalue:.3g} |"
        )
    desc = [means[d] for d in DESCENDANTS]
    lines += [
        "",
        f"Reading: heads of the descendants keep mean CKA {min(desc):.2f}–{max(desc):.2f} with "
        f"base, the unrelated control {means[CONTROL]:.2f} "
        f"({zoo_lineage(profile).n_items * 2} examples, biased linear CKA).",
    ]
    return Section("Per-head CKA on the zoo", "\n".join(lines), files)


if __name__ == "__main__":
    cli(run, __doc__ or "")
