"""Fig. 1 sets a, b and d on the zoo lineage: the ancestor's text Truth Scores against its VLM's.

The tiny family of :mod:`experiments.zoo_family`: ``base`` (the ancestor LLM), ``vlm`` (a LLaVA whose
language model started from ``base``) and the unrelated same-shape ``control``. The VLM is probed
under three of the paper's input conditions:

* set **a**, text-only -- the ancestor's own text probing examples (world items, the paper's
  prompt) on the VLM's language model (``condition="text_only"``; the ``vlm`` scores of
  :mod:`experiments.zoo_family`);
* set **b**, black image -- the same examples with a black image where the VLM reads its image
  (:data:`~lineage_lens.zoo.train.VLM_CONTEXT_PROBE_TEMPLATE`, ``condition="black_image"``);
* set **d**, real image -- image-grounded examples from rendered scenes
  (:func:`lineage_lens.zoo.scene_probe_examples`: a question about the scene, the truthful and a
  hallucinated answer) with each example's own scene (:data:`~lineage_lens.zoo.train.VLM_PROBE_TEMPLATE`,
  ``condition="image"``): the VLM's own image-context Truth Scores, the paper's
  ``TruthProbe_MLLM`` (also a gating source of :mod:`experiments.mllm_gating`).

Every set has as many probing examples as the ancestor's text set (two per item), 5-fold grouped
Truth Scores (seed 0). Per set, :func:`lineage_lens.lineage.compare_scores` of the VLM's scores
with the ancestor's text scores and, as the unrelated control, with the control's text scores:
Pearson and Spearman r with BCa bootstrap 95 % CIs and head-shuffle permutation p-values.
Writes ``mllm_conditions.csv`` (one row per set and reference) and ``mllm_conditions.png`` (the
correlations with CIs, and per set the head-by-head scatter).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from experiments._common import FIGURES, RESAMPLES, Section, cli, save_csv, save_figure
from experiments.zoo_family import ANCESTOR, CONTROL, ZooLineage, zoo_lineage
from lineage_lens.activations import collect_head_activations
from lineage_lens.images import vision_settings
from lineage_lens.lineage import ScoreComparison, compare_scores
from lineage_lens.models import load_model
from lineage_lens.probing import fit_truth_scores
from lineage_lens.scores import TruthScores
from lineage_lens.zoo import scene_probe_examples, world_probe_examples
from lineage_lens.zoo.train import VLM_CONTEXT_PROBE_TEMPLATE, VLM_PROBE_TEMPLATE

log = logging.getLogger(__name__)

MLLM = "vlm"
#: The paper's probing sets reproduced here: set -> (capture condition, probing data).
SETS: dict[str, tuple[str, str]] = {
    "a": ("text_only", "ancestor's text items"),
    "b": ("black_image", "ancestor's text items"),
    "d": ("image", "rendered scenes"),
}
#: Seed of the image-grounded examples (the scenes differ from the VLM's training scenes).
SCENE_SEED = 0


@functools.lru_cache(maxsize=4)
def image_context_scores(path: str, n_scenes: int, name: str) -> TruthScores:
    """The Truth Scores of the zoo VLM at ``path`` on ``n_scenes`` rendered scenes (two examples
    each), each example with its own scene: the paper's ``TruthProbe_MLLM``."""
    model = load_model(path)
    size = vision_settings(model).image_size
    examples = scene_probe_examples(n_scenes, SCENE_SEED, size=max(size + size % 2, 16))
    acts = collect_head_activations(
        model,
        examples,
        condition="image",
        prompt_template=VLM_PROBE_TEMPLATE,
        batch_size=32,
        dtype=torch.float32,
        progress=False,
    )
    scores = fit_truth_scores(
        acts, folds=5, seed=0, model=name, dataset="zoo scenes (image)", progress=False
    )
    log.info("%s image-context Truth Scores: mean %.3f", name, scores.accuracy.mean())
    return scores


@dataclass
class VlmConditions:
    """The family and the VLM's Truth Scores per probing set (``"a"``, ``"b"``, ``"d"``)."""

    lineage: ZooLineage
    scores: dict[str, TruthScores]


@functools.lru_cache(maxsize=4)
def vlm_conditions(profile: str) -> VlmConditions:
    """The VLM's Truth Scores under each condition (set a reuses :mod:`experiments.zoo_family`'s)."""
    lineage = zoo_lineage(profile)
    path = lineage.path(MLLM)
    examples = world_probe_examples(lineage.zoo.world(ANCESTOR), n=lineage.n_items, seed=0)
    black = collect_head_activations(
        load_model(path),
        examples,
        condition="black_image",
        prompt_template=VLM_CONTEXT_PROBE_TEMPLATE,
        batch_size=32,
        dtype=torch.float32,
        progress=False,
    )
    scores = {
        "a": lineage.scores[MLLM],
        "b": fit_truth_scores(
            black, folds=5, seed=0, model=MLLM, dataset="zoo world 0 (black image)", progress=False
        ),
        "d": image_context_scores(str(path), lineage.n_items, MLLM),
    }
    return VlmConditions(lineage, scores)


def comparisons(profile: str) -> dict[tuple[str, str], ScoreComparison]:
    """``(set, reference) -> compare_scores(reference's text scores, the VLM's scores)``."""
    cond = vlm_conditions(profile)
    n = RESAMPLES[profile]
    out = {}
    for s, vlm in cond.scores.items():
        for ref in (ANCESTOR, CONTROL):
            out[s, ref] = compare_scores(
                cond.lineage.scores[ref],
                vlm,
                name_a=ref,
                name_b=f"{MLLM} (set {s})",
                n_resamples=n,
                n_permutations=n,
                seed=0,
            )
    return out


def frame(profile: str) -> pd.DataFrame:
    """The plotted numbers: one row per probing set and reference model."""
    cond = vlm_conditions(profile)
    rows = []
    for (s, ref), c in comparisons(profile).items():
        vlm = cond.scores[s]
        rows.append(
            {
                "set": s,
                "condition": SETS[s][0],
                "probing_data": SETS[s][1],
                "mllm": MLLM,
                "reference": ref,
                "role": "ancestor" if ref == ANCESTOR else "unrelated control",
                "n_examples": vlm.n,
                "mllm_mean_score": float(vlm.accuracy.mean()),
                "mllm_max_score": float(vlm.accuracy.max()),
                "reference_mean_score": float(cond.lineage.scores[ref].accuracy.mean()),
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


def plot(table: pd.DataFrame, profile: str) -> plt.Figure:
    """Pearson r (95 % CI) per set, ancestor vs control; then each set's head scatter."""
    cond = vlm_conditions(profile)
    sets = list(SETS)
    fig, axes = plt.subplots(1, 1 + len(sets), figsize=(4 * (1 + len(sets)), 3.6))
    ax = axes[0]
    for i, (ref, color) in enumerate(((ANCESTOR, "C0"), (CONTROL, "C3"))):
        rows = table[table["reference"] == ref].set_index("set").reindex(sets)
        x = np.arange(len(sets)) + (i - 0.5) * 0.38
        err = np.vstack(
            [rows["pearson"] - rows["pearson_ci_low"], rows["pearson_ci_high"] - rows["pearson"]]
        )
        ax.bar(x, rows["pearson"], 0.38, yerr=err, capsize=3, color=color, label=ref)
    ax.set_xticks(range(len(sets)), [f"set {s}\n{SETS[s][0]}" for s in sets], fontsize=8)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_ylabel(f"Pearson r with {MLLM}'s scores")
    ax.set_title("text Truth Scores vs the VLM's (95 % CI)", fontsize=9)
    ax.legend(fontsize=8)
    for ax, s in zip(axes[1:], sets, strict=True):
        y = cond.scores[s].accuracy.ravel()
        for ref, color in ((ANCESTOR, "C0"), (CONTROL, "C3")):
            ax.scatter(cond.lineage.scores[ref].accuracy.ravel(), y, s=12, color=color, label=ref)
        ax.set_xlabel("text Truth Score (reference)")
        ax.set_ylabel(f"{MLLM} Truth Score, set {s}")
        ax.set_title(f"set {s}: {SETS[s][0]}, {SETS[s][1]}", fontsize=9)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _ci(r: pd.Series) -> str:
    return f"{r['pearson']:.2f} [{r['pearson_ci_low']:.2f}, {r['pearson_ci_high']:.2f}]"


def run(profile: str = "demo", out_dir: Path = FIGURES) -> Section:
    """Sets a, b and d on the zoo lineage; write the figure and its CSV, return the section."""
    out_dir = Path(out_dir)
    table = frame(profile)
    files = [
        save_csv(table, out_dir / "mllm_conditions.csv"),
        save_figure(plot(table, profile), out_dir / "mllm_conditions.png"),
    ]
    n_items = vlm_conditions(profile).lineage.n_items
    lines = [
        f"{MLLM} (language model from {ANCESTOR}) probed under three conditions, {2 * n_items} "
        f"examples each ({n_items} world items for sets a and b, {n_items} rendered scenes for "
        f"set d); {RESAMPLES[profile]} bootstrap resamples and permutations.",
        "",
        f"| set | condition | probing data | {MLLM} mean score (max) | Pearson r with {ANCESTOR} "
        f"[95 % CI] | p (perm.) | with {CONTROL} [95 % CI] | p (perm.) | Spearman ρ "
        f"{ANCESTOR} / {CONTROL} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    held, not_held = [], []
    for s in SETS:
        anc = table[(table["set"] == s) & (table["reference"] == ANCESTOR)].iloc[0]
        ctl = table[(table["set"] == s) & (table["reference"] == CONTROL)].iloc[0]
        lines.append(
            f"| {s} | {anc['condition']} | {anc['probing_data']} | {anc['mllm_mean_score']:.3f} "
            f"({anc['mllm_max_score']:.3f}) | {_ci(anc)} | {anc['pearson_p_perm']:.3f} | "
            f"{_ci(ctl)} | {ctl['pearson_p_perm']:.3f} | {anc['spearman']:.2f} / "
            f"{ctl['spearman']:.2f} |"
        )
        text = f"set {s} ({anc['condition']}: {ANCESTOR} r {_ci(anc)}, {CONTROL} r {_ci(ctl)})"
        (held if anc["pearson_ci_low"] > ctl["pearson_ci_high"] else not_held).append(text)
    image = table[table["set"] == "d"].iloc[0]
    signs = []
    for ref in (ANCESTOR, CONTROL):
        rows = table[table["reference"] == ref]
        above = ", ".join(rows.loc[rows["pearson_ci_low"] > 0, "set"]) or "none"
        below = ", ".join(rows.loc[rows["pearson_ci_high"] < 0, "set"]) or "none"
        signs.append(f"{ref}'s CI lies above 0 in set(s) {above}, below 0 in {below}")
    lines += [
        "",
        "Reading: the paper's Fig. 1 claim -- the VLM's Truth Scores follow its ancestor's text "
        "scores more than an unrelated model's, the ancestor's 95 % CI lying above the "
        "control's -- "
        + (f"held in {'; '.join(held)}" if held else "held in no set")
        + (f"; did not hold in {'; '.join(not_held)}" if not_held else "")
        + f". Against 0: {'; '.join(signs)}. The VLM's own image-context Truth Scores (set d, TruthProbe_MLLM) average "
        f"{image['mllm_mean_score']:.3f} (best head {image['mllm_max_score']:.3f}; chance 0.5).",
    ]
    best = max(float(s.accuracy.max()) for s in vlm_conditions(profile).scores.values())
    if best < 0.6:
        lines.append(
            f"Caveat: no condition gives the VLM a head above {best:.2f} probe accuracy, so its "
            "answers' truthfulness is barely linearly decodable at the answer's last token; the "
            "correlations compare near-chance probe accuracies."
        )
    return Section(
        "The VLM's Truth Scores under text-only, black-image and image inputs (Fig. 1 a, b, d)",
        "\n".join(lines),
        files,
    )


if __name__ == "__main__":
    cli(run, __doc__ or "")
