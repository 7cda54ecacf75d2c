"""Attention to evidence of the top-k vs the bottom-k heads by Truth Score, on the zoo family.

For every member of the tiny family (:mod:`experiments._zoo`) and the truthful probing examples
(context + question + the context's answer, the paper's prompt), the attention mass each head puts,
from the answer's last token, on the context sentence that states the asked fact
(:func:`lineage_lens.attention.evidence_attention`). Heads are ranked by the member's own Truth
Scores; the figure compares the mean attention of the top-k and bottom-k heads. Writes
``evidence_zoo.png`` and ``evidence_zoo.csv`` (per member and head: attention, Truth Score, group).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from experiments._common import FIGURES, Section, cli, save_csv, save_figure
from experiments._zoo import MEMBERS, zoo_lineage
from lineage_lens.attention import EvidenceAttention, evidence_attention, halueval_evidence_spans
from lineage_lens.data import DEFAULT_TEMPLATE, TRUTHFUL
from lineage_lens.models import load_model
from lineage_lens.zoo import world_probe_examples

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
    rng = np.random.default_rng(0)
    for i, name in enumerate(members):
        for j, (group, color) in enumerate(((f"top-{K}", "C0"), (f"bottom-{K}", "C3"))):
            vals = frame[(frame["member"] == name) & (frame["group"] == group)]["attention"]
            x = i + (j - 0.5) * 0.35
            ax.bar(x, vals.mean(), 0.33, color=color, alpha=0.5, label=group if i == 0 else None)
            ax.scatter(x + rng.uniform(-0.08, 0.08, len(vals)), vals, s=10, color=color)
    ax.set_xticks(range(len(members)), members)
    ax.set_ylabel("attention to the evidence sentence")
    ax.set_title(f"heads by own Truth Score: top-{K} vs bottom-{K} (zoo)")
    ax.legend(fontsize=8)
    return fig


def run(profile: str = "demo", out_dir: Path = FIGURES) -> Section:
    """Evidence attention of the zoo family; write the figure and its CSV."""
    out_dir = Path(out_dir)
    att = attentions(profile)
    frame = evidence_frame(profile, att)
    files = [
        save_csv(frame, out_dir / "evidence_zoo.csv"),
        save_figure(plot_evidence(frame), out_dir / "evidence_zoo.png"),
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
        f"{sum(higher)} of {len(higher)} members ({len(att[MEMBERS[0]])} truthful prompts).",
    ]
    return Section("Attention to evidence on the zoo", "\n".join(lines), files)


if __name__ == "__main__":
    cli(run, __doc__ or "")
