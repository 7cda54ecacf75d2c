"""Truth Score heatmaps (layer x head) side by side for the published lineage.

The paper's four published ``[32, 32]`` Truth Score arrays: LLaMA-2-7B and its descendant
Vicuna-7B on HaluEval (292 samples), LLaVA-1.5-7B and LLaVA-NeXT-7B (descendants of Vicuna) on
RLHF-V (2,726). Writes ``heatmaps_published.png`` and ``heatmaps_published.csv`` (one row per model,
layer and head).

:func:`run_zoo` draws the zoo's tiny family (``heatmaps_zoo.png`` / ``.csv``) on one shared colour
scale, since all members were probed on the same examples; :mod:`experiments.tiny_family` reports it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from experiments._common import FIGURES, Section, cli, save_csv, save_figure
from experiments.zoo_family import zoo_lineage
from lineage_lens.scores import TruthScores, load_scores, published_scores_dir

PUBLISHED = {
    "LLaMA-2-7B": "llama2-7b_halueval_292.npy",
    "Vicuna-7B": "vicuna-7b_halueval_292.npy",
    "LLaVA-1.5-7B": "llava-1.5-7b_rlhfv_2726.npy",
    "LLaVA-NeXT-7B": "llava-next-7b_rlhfv_2726.npy",
}


def published_lineage() -> dict[str, TruthScores]:
    """The four published Truth Score maps, ancestor first."""
    root = published_scores_dir()
    return {
        name: load_scores(root / file, model=name, dataset=file.split("_")[1])
        for name, file in PUBLISHED.items()
    }


def plot_heatmaps(
    scores: dict[str, TruthScores], shared_scale: bool = False, title: str = ""
) -> plt.Figure:
    """One heatmap per model, each on its own colour scale: the text models were probed on
    HaluEval and the multimodal ones on RLHF-V, so absolute levels are not comparable; the
    pattern over heads is what is inherited."""
    fig, axes = plt.subplots(
        1, len(scores), figsize=(4.6 * len(scores), 3.8), squeeze=False, layout="constrained"
    )
    lo = min(float(s.accuracy.min()) for s in scores.values()) if shared_scale else None
    hi = max(float(s.accuracy.max()) for s in scores.values()) if shared_scale else None
    for ax, (name, s) in zip(axes[0], scores.items(), strict=True):
        s.heatmap(ax=ax, title=f"{name} ({s.dataset or 'published'})", vmin=lo, vmax=hi)
    fig.suptitle(title or "Truth Scores (5-fold probe accuracy) along the published lineage")
    return fig


def heatmap_frame(scores: dict[str, TruthScores]) -> pd.DataFrame:
    """The plotted numbers: one row per model, layer and head."""
    frame = pd.concat([s.to_frame().assign(model=name) for name, s in scores.items()])
    return frame[["model", "layer", "head", "accuracy"]]


def _summary(scores: dict[str, TruthScores]) -> list[str]:
    return [
        f"- {name}: mean {s.accuracy.mean():.3f}, max {s.accuracy.max():.3f} at "
        f"L{s.top_k(1)[0][0]}H{s.top_k(1)[0][1]}"
        for name, s in scores.items()
    ]


def run_zoo(profile: str, out_dir: Path) -> tuple[str, list[Path]]:
    """The zoo's tiny family: write its heatmaps (PNG and CSV), return the summary and files."""
    out_dir = Path(out_dir)
    lineage = zoo_lineage(profile)
    files = [
        save_csv(heatmap_frame(lineage.scores), out_dir / "heatmaps_zoo.csv"),
        save_figure(
            plot_heatmaps(
                lineage.scores,
                shared_scale=True,
                title=f"Truth Scores of the zoo family ({2 * lineage.n_items} examples)",
            ),
            out_dir / "heatmaps_zoo.png",
        ),
    ]
    return "\n".join(_summary(lineage.scores)), files


def run(profile: str = "demo", out_dir: Path = FIGURES) -> Section:
    """Plot the published lineage's heatmaps; write the PNG and the plotted numbers."""
    out_dir = Path(out_dir)
    scores = published_lineage()
    files = [
        save_csv(heatmap_frame(scores), out_dir / "heatmaps_published.csv"),
        save_figure(plot_heatmaps(scores), out_dir / "heatmaps_published.png"),
    ]
    return Section(
        "Truth Score heatmaps of the published lineage", "\n".join(_summary(scores)), files
    )


if __name__ == "__main__":
    cli(run, __doc__ or "")
