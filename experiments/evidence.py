"""Attention to evidence of the top-k vs the bottom-k heads by Truth Score, on the zoo family.

For every member of the tiny family (:mod:`experiments.zoo_family`) and the truthful probing examples
(context + question + the context's answer, the paper's prompt), the attention mass each head puts,
from the answer's last token, on the context sentence that states the asked fact
(:func:`lineage_lens.attention.evidence_attention`). Heads are ranked by the member's own Truth
Scores; the figure compares the mean attention of the top-k and bottom-k heads. Writes
``evidence_zoo.png`` and ``evidence_zoo.csv`` (per member and head: attention, Truth Score, group).

The image half (the paper's Fig. 5): the zoo ``vlm`` answers "Is there a {obj} in the image?" about
an object that is in the scene; from the last prompt token, each head's attention on the 16 image
tokens (a 4x4 patch grid) is split into the share that falls on the asked object's grid cell
(2x2 patches; chance 1/4). Heads are grouped by the vlm's own and by the inherited (``base``)
Truth Scores. Writes ``evidence_image_zoo.png`` (overlays of the top and bottom head's attention on
three scenes) and ``evidence_image_zoo.csv`` (per head: share on the object's cell, Truth Scores).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image
from scipy import stats

from experiments._common import FIGURES, Section, cli, save_csv, save_figure
from experiments.zoo_family import ANCESTOR, MEMBERS, zoo_lineage
from lineage_lens.attention import (
    EvidenceAttention,
    evidence_attention,
    halueval_evidence_spans,
    plot_top_bottom,
)
from lineage_lens.data import DEFAULT_TEMPLATE, TRUTHFUL
from lineage_lens.images import ImageInputs, image_inputs
from lineage_lens.models import load_model
from lineage_lens.zoo import world_probe_examples
from lineage_lens.zoo.images import POPE_QUESTION, render_scene, sample_scenes
from lineage_lens.zoo.train import VLM_PROMPT

#: Heads in each of the top and bottom groups (of the family's 32 heads).
K = 4


def evidence_inputs(profile: str) -> tuple[list[str], list[list[tuple[int, int]]], list[int]]:
    """Prompts, evidence spans (prompt characters) and answer ends of the truthful examples."""
    lineage = zoo_lineage(profile)
    examples = world_probe_examples(lineage.zoo.world("base"), n=lineage.n_items, seed=0)
    prompts, spans, ends = [], [], []
    for ex in examples:
        if ex.label != TRUTHFUL:
            continue
        text, pspans = DEFAULT_TEMPLATE.render(ex)
        c0 = pspans.context[0]
        prompts.append(text)
        spans.append([(c0 + s, c0 + e) for s, e in halueval_evidence_spans(ex.context, ex.answer)])
        ends.append(pspans.answer[1])
    return prompts, spans, ends


def attentions(profile: str) -> dict[str, EvidenceAttention]:
    """Evidence attention of every member on the same prompts."""
    lineage = zoo_lineage(profile)
    prompts, spans, ends = evidence_inputs(profile)
    out = {}
    for name in MEMBERS:
        model = load_model(lineage.path(name))
        out[name] = evidence_attention(
            model, prompts, spans, query_char_ends=ends, batch_size=32, progress=False
        )
    return out


def evidence_frame(profile: str, att: dict[str, EvidenceAttention]) -> pd.DataFrame:
    """The plotted numbers: per member and head, attention, Truth Score and top/bottom group."""
    scores = zoo_lineage(profile).scores
    rows = []
    for name, a in att.items():
        frame = a.to_frame()[["layer", "head", "attention"]]
        flat = scores[name].accuracy.ravel()
        order = np.lexsort((np.arange(flat.size), -flat))
        group = np.full(flat.size, "middle", dtype=object)
        group[order[:K]] = f"top-{K}"
        group[order[-K:]] = f"bottom-{K}"
        rows.append(frame.assign(member=name, truth_score=flat, group=group))
    return pd.concat(rows, ignore_index=True)[
        ["member", "layer", "head", "attention", "truth_score", "group"]
    ]


def plot_evidence(frame: pd.DataFrame) -> plt.Figure:
    members = list(dict.fromkeys(frame["member"]))
    fig, ax = plt.subplots(figsize=(1.8 * len(members) + 2, 3.5))
    plot_top_bottom(ax, frame, "member", K)
    ax.set_title(f"heads by own Truth Score: top-{K} vs bottom-{K} (zoo)")
    ax.legend(fontsize=8)
    return fig


#: Scenes whose image attention is measured, per profile.
N_SCENES = {"test": 24, "demo": 200, "full": 500}


def scene_prompts(profile: str, inputs: ImageInputs):
    """Prompts (each holding its image's tokens in the model family's form), the asked object's
    cell, the scenes and their images (seed 777, unseen in training)."""
    scenes = sample_scenes(N_SCENES[profile], seed=777)
    images = [Image.fromarray(render_scene(sc, inputs.image_size)) for sc in scenes]
    rng = np.random.default_rng(0)
    prompts, cells = [], []
    for scene, image in zip(scenes, images, strict=True):
        i = int(rng.integers(len(scene.objects)))
        question = POPE_QUESTION.format(obj=scene.objects[i])
        prompts.append(VLM_PROMPT.format(image=inputs.image_text(image), question=question))
        cells.append(scene.cells[i])
    return prompts, np.array(cells), scenes, images


def cell_share(att: EvidenceAttention, cells: np.ndarray) -> np.ndarray:
    """Per example and head, the share of image attention on the example's 2x2-grid cell."""
    assert att.image_attention is not None and att.image_grid is not None
    rows, cols = att.image_grid
    grid = att.image_attention.reshape(*att.image_attention.shape[:3], rows, cols)
    share = np.empty(grid.shape[:3])
    for n, cell in enumerate(cells):
        r0, c0 = (cell // 2) * rows // 2, (cell % 2) * cols // 2
        on_cell = grid[n, :, :, r0 : r0 + rows // 2, c0 : c0 + cols // 2].sum(axis=(-1, -2))
        share[n] = on_cell / np.maximum(grid[n].sum(axis=(-1, -2)), 1e-12)
    return share


def image_frame(profile: str) -> tuple[pd.DataFrame, EvidenceAttention, list]:
    """Per head of the vlm: mean share of image attention on the asked object's cell."""
    lineage = zoo_lineage(profile)
    model = load_model(lineage.path("vlm"))
    prompts, cells, _, images = scene_prompts(profile, image_inputs(model))
    att = evidence_attention(
        model,
        prompts,
        image_evidence=True,
        images=images,
        keep_image_attention=True,
        batch_size=32,
        progress=False,
    )
    share = cell_share(att, cells).mean(axis=0)
    n_layers, n_heads = share.shape
    frame = pd.DataFrame(
        {
            "layer": np.repeat(np.arange(n_layers), n_heads),
            "head": np.tile(np.arange(n_heads), n_layers),
            "object_cell_share": share.ravel(),
            "image_attention": att.values.ravel(),
            "truth_score_own": lineage.scores["vlm"].accuracy.ravel(),
            "truth_score_inherited": lineage.scores[ANCESTOR].accuracy.ravel(),
        }
    )
    return frame, att, images


def _top_bottom(values: np.ndarray, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((np.arange(values.size), -values))
    return order[:k], order[-k:]


def plot_image_evidence(frame: pd.DataFrame, att: EvidenceAttention, images: list) -> plt.Figure:
    top, bottom = _top_bottom(frame["truth_score_own"].to_numpy())
    heads = [
        (int(frame["layer"].iloc[i]), int(frame["head"].iloc[i])) for i in (top[0], bottom[-1])
    ]
    fig, axes = plt.subplots(2, 3, figsize=(8, 5.6), layout="constrained")
    for row, (layer, head) in enumerate(heads):
        for col in range(3):
            ax = axes[row, col]
            att.plot_image_overlay(layer, head, example=col, image=np.asarray(images[col]), ax=ax)
            label = "top" if row == 0 else "bottom"
            ax.set_title(f"{label} head L{layer}H{head}, scene {col}", fontsize=8)
    return fig


def _image_gap(frame: pd.DataFrame) -> str:
    top, bottom = _top_bottom(frame["truth_score_own"].to_numpy())
    share = frame["object_cell_share"].to_numpy()
    gap = share[top].mean() - share[bottom].mean()
    return (
        f"{share[top].mean():.3f} vs {share[bottom].mean():.3f} ({'more' if gap > 0 else 'less'})"
    )


def image_lines(frame: pd.DataFrame) -> list[str]:
    lines = [
        "",
        f"Image evidence (zoo vlm, {len(frame)} heads): mean share of image attention on the asked "
        "object's cell (chance 0.25).",
        "",
        f"| heads ranked by | top-{K} | bottom-{K} | all | Spearman ρ(share, score) | p |",
        "|---|---|---|---|---|---|",
    ]
    for col, label in (("truth_score_own", "own scores"), ("truth_score_inherited", "base")):
        top, bottom = _top_bottom(frame[col].to_numpy())
        share = frame["object_cell_share"].to_numpy()
        res = stats.spearmanr(share, frame[col])
        lines.append(
            f"| {label} | {share[top].mean():.3f} | {share[bottom].mean():.3f} | "
            f"{share.mean():.3f} | {res.statistic:.2f} | {res.pvalue:.3g} |"
        )
    return lines


def run(profile: str = "demo", out_dir: Path = FIGURES) -> Section:
    """Evidence attention of the zoo family; write the figure and its CSV."""
    out_dir = Path(out_dir)
    att = attentions(profile)
    frame = evidence_frame(profile, att)
    image, image_att, images = image_frame(profile)
    files = [
        save_csv(frame, out_dir / "evidence_zoo.csv"),
        save_figure(plot_evidence(frame), out_dir / "evidence_zoo.png"),
        save_csv(image, out_dir / "evidence_image_zoo.csv"),
        save_figure(
            plot_image_evidence(image, image_att, images), out_dir / "evidence_image_zoo.png"
        ),
    ]
    lines = [
        f"| member | top-{K} mean attention | bottom-{K} | all heads | Spearman ρ(attention, "
        "Truth Score) | p |",
        "|---|---|---|---|---|---|",
    ]
    higher = []
    for name, sub in frame.groupby("member", sort=False):
        top = sub[sub["group"] == f"top-{K}"]["attention"].mean()
        bottom = sub[sub["group"] == f"bottom-{K}"]["attention"].mean()
        res = stats.spearmanr(sub["attention"], sub["truth_score"])
        higher.append(top > bottom)
        lines.append(
            f"| {name} | {top:.3f} | {bottom:.3f} | {sub['attention'].mean():.3f} | "
            f"{res.statistic:.2f} | {res.pvalue:.3g} |"
        )
    lines += [
        "",
        f"Reading: the top-{K} heads attend more to the evidence than the bottom-{K} in "
        f"{sum(higher)} of {len(higher)} members ({len(att[MEMBERS[0]])} truthful prompts); "
        f"on images, the vlm's top-{K} heads by own score put {_image_gap(image)} of their "
        "image attention on the asked object's cell than its bottom heads (chance 0.25).",
        *image_lines(image),
    ]
    return Section("Attention to evidence on the zoo", "\n".join(lines), files)


if __name__ == "__main__":
    cli(run, __doc__ or "")
