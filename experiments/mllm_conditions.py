"""Fig. 1 sets a, b and d: the ancestor LLM's text Truth Scores against its VLM's.

The lineage of :mod:`experiments.mllm_family` (profiles ``demo`` and ``full``: SmolLM2-135M-Instruct
-> ``smollm2-vlm``, control SmolLM2's random-init twin; ``test``: the tiny family). The VLM is
probed under three of the paper's input conditions -- set **a** text only, set **b** a black
image (both on the ancestor's probing examples), set **d** real images (rendered scenes, the
paper's ``TruthProbe_MLLM``). Per set, :func:`lineage_lens.lineage.compare_scores` of the VLM's
scores with the ancestor's text scores and, as the control, with the control's text scores:
Pearson and Spearman r with BCa bootstrap 95 % CIs, head-shuffle permutation p-values and the
top-10 overlap against chance (hypergeometric p).

The paper's sets c and e are not reproduced: the published per-head files (vendored in
``lineage_lens/resources/truth_scores/cross_dataset``) show that Mistral-7B, a text-only LLM, has
one measurement for sets a, b and d and other ones for c and e, so c and e probe other data than
a, b, d; the files do not say which, and we do not guess.

Writes ``mllm_conditions.csv`` (one row per set and reference) and ``mllm_conditions.png`` (the
correlations with CIs, and per set the head-by-head scatter).
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments._common import FIGURES, RESAMPLES, Section, cli, save_csv, save_figure
from experiments.mllm_family import CONDITIONS, mllm_lineage
from lineage_lens.lineage import ScoreComparison, compare_scores

log = logging.getLogger(__name__)

#: Heads in the top-k overlap the table reports.
TOP_K = 10
#: One colour per source, as in the other figures: the ancestor blue, the control red.
COLORS = {"ancestor": "C0", "control": "C3"}


def comparisons(profile: str) -> dict[tuple[str, str], ScoreComparison]:
    """``(set, role) -> compare_scores(reference's text scores, the VLM's scores)``, ``role``
    ``"ancestor"`` or ``"control"``."""
    lin = mllm_lineage(profile)
    n = RESAMPLES[profile]
    out = {}
    for s, vlm in lin.sets.items():
        for role, ref in (("ancestor", lin.ancestor), ("control", lin.control)):
            out[s, role] = compare_scores(
                lin.text[ref],
                vlm,
                name_a=ref,
                name_b=f"{lin.mllm} (set {s})",
                ks=[TOP_K],
                n_resamples=n,
                n_permutations=n,
                seed=0,
            )
    return out


def frame(profile: str) -> pd.DataFrame:
    """The plotted numbers: one row per probing set and reference model."""
    lin = mllm_lineage(profile)
    rows = []
    for (s, role), c in comparisons(profile).items():
        vlm = lin.sets[s]
        ref = lin.ancestor if role == "ancestor" else lin.control
        top = c.topk.set_index("k").loc[TOP_K]
        rows.append(
            {
                "set": s,
                "condition": CONDITIONS[s],
                "probing_data": lin.data[s],
                "mllm": lin.mllm,
                "reference": ref,
                "role": role,
                "n_examples": vlm.n,
                "mllm_mean_score": float(vlm.accuracy.mean()),
                "mllm_median_score": float(np.median(vlm.accuracy)),
                "mllm_max_score": float(vlm.accuracy.max()),
                "reference_mean_score": float(lin.text[ref].accuracy.mean()),
                "reference_max_score": float(lin.text[ref].accuracy.max()),
                "pearson": c.pearson.r,
                "pearson_ci_low": c.pearson.ci_low,
                "pearson_ci_high": c.pearson.ci_high,
                "pearson_p_perm": c.pearson.p_permutation,
                "spearman": c.spearman.r,
                "spearman_ci_low": c.spearman.ci_low,
                "spearman_ci_high": c.spearman.ci_high,
                "spearman_p_perm": c.spearman.p_permutation,
                f"top{TOP_K}_overlap": int(top["overlap"]),
                f"top{TOP_K}_expected": float(top["expected"]),
                f"top{TOP_K}_p": float(top["p_value"]),
            }
        )
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, profile: str) -> plt.Figure:
    """Pearson r (95 % CI) per set, ancestor vs control; then each set's head scatter."""
    lin = mllm_lineage(profile)
    sets = list(CONDITIONS)
    fig, axes = plt.subplots(1, 1 + len(sets), figsize=(4 * (1 + len(sets)), 3.8))
    ax = axes[0]
    for i, role in enumerate(COLORS):
        rows = table[table["role"] == role].set_index("set").reindex(sets)
        x = np.arange(len(sets)) + (i - 0.5) * 0.3
        err = np.vstack(
            [rows["pearson"] - rows["pearson_ci_low"], rows["pearson_ci_high"] - rows["pearson"]]
        )
        ax.errorbar(
            x,
            rows["pearson"],
            yerr=err,
            fmt="o",
            capsize=4,
            color=COLORS[role],
            label=f"{rows['reference'].iloc[0]} ({role})",
        )
    ax.set_xticks(range(len(sets)), [f"set {s}\n{CONDITIONS[s]}" for s in sets], fontsize=8)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_ylabel(f"Pearson r with {lin.mllm}'s scores")
    ax.set_title("text Truth Scores vs the VLM's (95 % BCa CI)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    for ax, s in zip(axes[1:], sets, strict=True):
        y = lin.sets[s].accuracy.ravel()
        for role, ref in (("ancestor", lin.ancestor), ("control", lin.control)):
            r = table[(table["set"] == s) & (table["role"] == role)].iloc[0]
            ax.scatter(
                lin.text[ref].accuracy.ravel(),
                y,
                s=8,
                alpha=0.6,
                color=COLORS[role],
                label=f"{ref}: r {r['pearson']:.2f} [{r['pearson_ci_low']:.2f}, "
                f"{r['pearson_ci_high']:.2f}]",
            )
        ax.set_xlabel("text Truth Score (reference)")
        ax.set_ylabel(f"{lin.mllm} Truth Score, set {s}")
        ax.set_title(f"set {s}: {CONDITIONS[s]}, {lin.data[s]}", fontsize=9)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _ci(r: pd.Series) -> str:
    return f"{r['pearson']:.2f} [{r['pearson_ci_low']:.2f}, {r['pearson_ci_high']:.2f}]"


def _p(p: float, n: int) -> str:
    """A two-sided permutation p-value, at its resolution floor (no head shuffle reached the
    observed |r|) written as ``≤2/(n+1)``, as :func:`lineage_lens.lineage.format_fig1_markdown`."""
    floor = 2 / (n + 1)
    return f"≤{floor:.4f}" if p <= floor * (1 + 1e-9) else f"{p:.4f}"


def run(profile: str = "demo", out_dir: Path = FIGURES) -> Section:
    """Sets a, b and d on the profile's lineage; write the figure and its CSV, return the
    section."""
    out_dir = Path(out_dir)
    lin = mllm_lineage(profile)
    table = frame(profile)
    files = [
        save_csv(table, out_dir / "mllm_conditions.csv"),
        save_figure(plot(table, profile), out_dir / "mllm_conditions.png"),
    ]
    n = RESAMPLES[profile]
    anc_text, ctl_text = lin.text[lin.ancestor], lin.text[lin.control]
    lines = [
        f"{lin.mllm} (language model from {lin.ancestor}) probed under three conditions; "
        f"{lin.ancestor}'s text Truth Scores: mean {anc_text.accuracy.mean():.3f}, best "
        f"{anc_text.accuracy.max():.3f} ({anc_text.n} examples). Control: {lin.control_note} "
        f"(mean {ctl_text.accuracy.mean():.3f}, best {ctl_text.accuracy.max():.3f}). "
        f"{n} bootstrap resamples and head-shuffle permutations; top-{TOP_K} overlap against "
        "chance (hypergeometric).",
        "",
        f"| set | condition | probing data | {lin.mllm} median / best score | Pearson r with "
        f"{lin.ancestor} [95 % CI] | p (perm.) | top-{TOP_K} overlap (p) | with {lin.control} "
        "[95 % CI] | p (perm.) | top-10 (p) | Spearman ρ ancestor / control |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    held, not_held = [], []
    for s in CONDITIONS:
        anc = table[(table["set"] == s) & (table["role"] == "ancestor")].iloc[0]
        ctl = table[(table["set"] == s) & (table["role"] == "control")].iloc[0]
        lines.append(
            f"| {s} | {anc['condition']} | {anc['probing_data']} | "
            f"{anc['mllm_median_score']:.3f} / {anc['mllm_max_score']:.3f} | {_ci(anc)} | "
            f"{_p(anc['pearson_p_perm'], n)} | {anc[f'top{TOP_K}_overlap']}/{TOP_K} "
            f"({anc[f'top{TOP_K}_p']:.3g}) | {_ci(ctl)} | {_p(ctl['pearson_p_perm'], n)} | "
            f"{ctl[f'top{TOP_K}_overlap']}/{TOP_K} ({ctl[f'top{TOP_K}_p']:.3g}) | "
            f"{anc['spearman']:.2f} / {ctl['spearman']:.2f} |"
        )
        text = f"set {s} ({anc['condition']}: {lin.ancestor} r {_ci(anc)}, control r {_ci(ctl)})"
        inherited = anc["pearson_ci_low"] > max(ctl["pearson_ci_high"], 0.0)
        (held if inherited else not_held).append(text)
    image = table[(table["set"] == "d")].iloc[0]
    lines += [
        "",
        "Reading: the paper's Fig. 1 claim -- the VLM's Truth Scores follow its ancestor's text "
        "scores, and more than the control's: the ancestor's 95 % CI lying above 0 and above the "
        "control's -- "
        + (f"held in {'; '.join(held)}" if held else "held in no set")
        + (f"; did not hold in {'; '.join(not_held)}" if not_held else "")
        + f". The VLM's own image-context Truth Scores (set d, TruthProbe_MLLM): median head "
        f"{image['mllm_median_score']:.3f}, best {image['mllm_max_score']:.3f} (chance 0.5).",
    ]
    best = max(float(s.accuracy.max()) for s in lin.sets.values())
    if best < 0.6:
        lines.append(
            f"Caveat: no condition gives the VLM a head above {best:.2f} probe accuracy, so its "
            "answers' truthfulness is barely linearly decodable at the answer's last token; the "
            "correlations compare near-chance probe accuracies."
        )
    return Section(
        f"{lin.mllm}'s Truth Scores under text-only, black-image and image inputs (Fig. 1 a, b, d)",
        "\n".join(lines),
        files,
    )


if __name__ == "__main__":
    cli(run, __doc__ or "")
