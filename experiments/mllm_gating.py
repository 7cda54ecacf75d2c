"""Tabs. 2-3: POPE and CHAIR of an MLLM gated with its ancestor LLM's Truth Scores, over alpha.

The MLLM answers POPE-style existence questions (random, popular, adversarial splits) and captions
its own evaluation scenes (``<member>/eval/`` of the zoo: rendered images, POPE files, per-image
objects). It runs ungated and gated (``norm="center"``, ``placement="z"``, language-model heads
only) with

* ``inherited`` -- the ancestor LLM's Truth Scores (the paper's transfer, ``TruthProbe_LLM``),
* ``own`` -- the MLLM's own text-only Truth Scores (its language model probed on the same text
  examples),
* ``own image`` -- the MLLM's own image-context Truth Scores (the paper's ``TruthProbe_MLLM``:
  rendered scenes with a question and a truthful or hallucinated answer,
  :mod:`experiments.mllm_family`, set d),
* ``random control`` -- the ancestor's scores permuted over heads
  (:func:`lineage_lens.gating.control_scores`), one row per control seed of the profile.

The CSV's ``paper_scores`` column names each source as the paper's tables do (:data:`PAPER_NAMES`).

How sure each number is: POPE accuracies and CHAIR_s carry 95 % Wilson intervals, CHAIR_i a
bootstrap interval over captions; every gated row carries the paired bootstrap change against the
ungated model on the same questions and captions (pooled POPE accuracy, CHAIR_i), and inherited and
own-image rows also against the random control at the same alpha (averaged over its seeds item by
item): the library sweep (:func:`lineage_lens.sweep.gating_sweep`) with the POPE and CHAIR evaluators
:class:`~lineage_lens.evals.pope.PopeAnswers` and :class:`~lineage_lens.evals.chair.ChairCaptions`.

The lineage and its Truth Scores come from :mod:`experiments.mllm_family` (``demo``/``full``:
``smollm2-vlm`` gated with SmolLM2-135M-Instruct's HaluEval scores; ``test``: the tiny family).
Its evaluation scenes (``eval/``) are held out: drawn with another seed than its training scenes.

Writes ``mllm_gating.png`` and ``mllm_gating.csv`` (one row per setting: POPE accuracy/F1/yes-ratio/AUROC
per split, pooled POPE accuracy, CHAIR_s, CHAIR_i, recall, caption length, their intervals and the
paired changes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments._common import (
    FIGURES,
    RESAMPLES,
    Section,
    cli,
    fmt_change,
    save_csv,
    save_figure,
)
from experiments.mllm_family import mllm_lineage
from lineage_lens.evals.chair import ChairCaptions, ObjectVocabulary
from lineage_lens.evals.pope import PopeAnswers
from lineage_lens.models import load_model
from lineage_lens.scores import TruthScores
from lineage_lens.sweep import (
    CONTROL,
    Outcome,
    ScoreSource,
    change_columns,
    gating_sweep,
    transfer_sources,
)
from lineage_lens.zoo.images import CAPTION_PROMPT, OBJECTS
from lineage_lens.zoo.train import VLM_PROMPT

SPLITS = ("random", "popular", "adversarial")
#: The MLLM's own image-context Truth Scores (the paper's TruthProbe_MLLM) as a score source.
OWN_IMAGE = "own image"
#: Zoo eval images are ``images/zoo_00007.png`` for image id ``"7"``.
FILE_PATTERN = "zoo_{image_id:0>5}.png"


@dataclass(frozen=True)
class Plan:
    alphas: tuple[float, ...]
    pope_limit: int | None  # questions per split
    chair_limit: int | None  # images captioned
    max_new_tokens: int
    control_seeds: tuple[int, ...]  # seeds of the random-control permutation


PLANS = {
    "test": Plan((4.0,), pope_limit=30, chair_limit=8, max_new_tokens=16, control_seeds=(0, 1)),
    "demo": Plan(
        (2.0, 4.0, 8.0), pope_limit=40, chair_limit=24, max_new_tokens=16, control_seeds=(0, 1, 2)
    ),
    "full": Plan((1.0, 2.0, 4.0, 8.0), None, None, max_new_tokens=24, control_seeds=(0, 1, 2)),
}


#: The score sources of the sweep as the paper's tables name them.
PAPER_NAMES = {
    "none": "ungated",
    "inherited": "TruthProbe_LLM",
    "own": "TruthProbe_MLLM, text-only",
    OWN_IMAGE: "TruthProbe_MLLM",
    CONTROL: "random",
}
#: Sources whose rows also carry the change against the random control.
VERSUS_CONTROL = ("inherited", OWN_IMAGE)


@dataclass
class MllmFamily:
    ancestor: str
    mllm: str
    path: Path
    scores: dict[str, TruthScores]  # "inherited", "own" and "own image"


def family(profile: str) -> MllmFamily:
    """The MLLM of the profile, its directory and the three score sets
    (:func:`experiments.mllm_family.mllm_lineage`)."""
    lin = mllm_lineage(profile)
    scores = {
        "inherited": lin.text[lin.ancestor],
        "own": lin.sets["a"],  # text-only: the language model on the ancestor's examples
        OWN_IMAGE: lin.sets["d"],
    }
    return MllmFamily(lin.ancestor, lin.mllm, lin.path, scores)


CHAIR_KEYS = ("chair_s", "chair_i", "recall", "mean_length", "n")
#: The CSV's columns of one setting, in order (after ``mllm, scores, paper_scores, alpha,
#: control_seed``); the
#: paired changes ``pope_accuracy_*`` of the sweep are named ``pope_*`` here.
METRICS = (
    *(f"pope_{s}_{k}" for s in SPLITS for k in ("accuracy", "f1", "yes_ratio", "auroc")),
    *CHAIR_KEYS,
    "pope_accuracy_ci_low",
    "pope_accuracy_ci_high",
    "pope_adversarial_accuracy_ci_low",
    "pope_adversarial_accuracy_ci_high",
    "pope_accuracy",
    "pope_n",
    "chair_i_ci_low",
    "chair_i_ci_high",
)


@dataclass(frozen=True)
class PopeAndChair:
    """The sweep's evaluator: POPE on the zoo's three splits and CHAIR of its captions, one row."""

    pope: PopeAnswers
    chair: ChairCaptions

    def __call__(self, model, gate) -> Outcome:
        pope, chair = self.pope(model, gate), self.chair(model, gate)
        metrics = pope.metrics | {k: float(chair.metrics[k]) for k in CHAIR_KEYS}
        metrics |= {k: v for k, v in chair.metrics.items() if k.startswith("chair_i_ci")}
        return Outcome({k: metrics[k] for k in METRICS if k in metrics}, pope.paired | chair.paired)


def evaluate(profile: str) -> pd.DataFrame:
    """The plotted numbers: one row per gate setting (and control seed)."""
    plan = PLANS[profile]
    fam = family(profile)
    eval_dir = fam.path / "eval"
    evaluator = PopeAndChair(
        PopeAnswers(
            eval_dir / "images",
            [eval_dir / f"pope_{s}.json" for s in SPLITS],
            prompt_template=VLM_PROMPT,
            limit=plan.pope_limit,
            progress=False,
        ),
        ChairCaptions(
            eval_dir / "images",
            vocabulary=ObjectVocabulary.from_classes(OBJECTS, name="zoo"),
            ground_truth=eval_dir / "gt_objects.json",
            file_pattern=FILE_PATTERN,
            prompt=CAPTION_PROMPT,
            prompt_template=VLM_PROMPT,
            max_new_tokens=plan.max_new_tokens,
            limit=plan.chair_limit,
            n_resamples=RESAMPLES[profile],
            progress=False,
        ),
    )
    sources = transfer_sources(
        fam.scores["inherited"], fam.scores["own"], control_seeds=plan.control_seeds
    )
    sources.insert(2, ScoreSource(OWN_IMAGE, fam.scores[OWN_IMAGE]))  # after inherited and own
    frame = gating_sweep(
        load_model(fam.path),
        evaluator,
        sources,
        plan.alphas,
        versus_control=VERSUS_CONTROL,
        n_resamples=RESAMPLES[profile],
    )
    frame = frame.sort_values("alpha", kind="stable", ignore_index=True)  # alpha by alpha
    delta, vs = change_columns("pope_accuracy")
    frame = frame.rename(columns={c: c.replace("pope_accuracy", "pope", 1) for c in delta + vs})
    frame.insert(0, "mllm", fam.mllm)
    frame.insert(2, "paper_scores", frame["scores"].map(PAPER_NAMES))
    return frame


#: One colour per source, as in every figure: the ancestor's scores blue, the control red.
COLORS = {"none": "grey", "inherited": "C0", "own": "C1", OWN_IMAGE: "C2", CONTROL: "C3"}
MARKERS = {"inherited": "-o", "own": "-s", OWN_IMAGE: "-^"}


def plot(frame: pd.DataFrame) -> plt.Figure:
    """Per score source a line over alpha (alpha 0 is the ungated model, shared by every line):
    POPE accuracy and CHAIR_i with their 95 % intervals, and the paired changes against the
    ungated model; each random-control seed its own dashed line."""
    fig, axes = plt.subplots(1, 4, figsize=(18, 4), layout="constrained")
    base = frame[frame["scores"] == "none"].iloc[0]
    panels = (
        (
            "pope_accuracy",
            "pope_accuracy_ci_low",
            "pope_accuracy_ci_high",
            "POPE accuracy (3 splits)",
        ),
        ("chair_i", "chair_i_ci_low", "chair_i_ci_high", "CHAIR_i (lower is better)"),
        ("pope_delta", "pope_delta_ci_low", "pope_delta_ci_high", "Δ POPE accuracy vs ungated"),
        ("chair_i_delta", "chair_i_delta_ci_low", "chair_i_delta_ci_high", "Δ CHAIR_i vs ungated"),
    )
    gated = frame[frame["scores"] != "none"]
    alphas = [0.0, *sorted(gated["alpha"].unique())]
    seeds = sorted(int(v) for v in gated["control_seed"].dropna().unique())
    for ax, (col, low, high, title) in zip(axes, panels, strict=True):
        delta = "delta" in col
        start = (0.0, 0.0, 0.0) if delta else (base[col], base[low], base[high])
        labelled = set()
        for (source, _), rows in gated.groupby(
            ["scores", "control_seed"], dropna=False, sort=False
        ):
            rows = rows.sort_values("alpha")
            x = np.r_[0.0, rows["alpha"]]
            y, lo, hi = (np.r_[v0, rows[c]] for v0, c in zip(start, (col, low, high), strict=True))
            if (
                source == CONTROL
            ):  # one thin dashed line per seed, no band (they would hide the rest)
                label = None if CONTROL in labelled else f"random control (seeds {seeds})"
                ax.plot(x, y, "--", color=COLORS[source], linewidth=1.0, label=label)
                labelled.add(CONTROL)
                continue
            ax.plot(
                x,
                y,
                MARKERS[source],
                color=COLORS[source],
                markersize=5,
                linewidth=1.8,
                zorder=3 if source == "inherited" else 2,  # on top: own text-only often equals it
                label=f"{source} ({PAPER_NAMES[source]})",
            )
            ax.fill_between(x, lo, hi, color=COLORS[source], alpha=0.12)
        ax.axhline(0 if delta else base[col], color="grey", linewidth=0.7, linestyle=":")
        ax.set_xticks(alphas, [f"{a:g}" for a in alphas])
        ax.set_xlabel("alpha (0 = ungated)")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(
        f"{frame['mllm'].iloc[0]} gated with its ancestor's Truth Scores (TruthProbe_LLM), its own "
        "(text-only; image context: TruthProbe_MLLM) and random controls (bands: 95 % CI; "
        "paired bootstrap for the changes)"
    )
    return fig


def run(profile: str = "demo", out_dir: Path = FIGURES) -> Section:
    """POPE and CHAIR of the profile's MLLM under each gate; write the figure and its CSV."""
    out_dir = Path(out_dir)
    plan = PLANS[profile]
    frame = evaluate(profile)
    files = [
        save_csv(frame, out_dir / "mllm_gating.csv"),
        save_figure(plot(frame), out_dir / "mllm_gating.png"),
    ]
    lines = [
        "| scores | alpha | seed | POPE random | popular | adversarial | adv. AUROC | "
        "Δ POPE acc. [95 % CI] | CHAIR_s | CHAIR_i | Δ CHAIR_i [95 % CI] | recall | words/caption |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in frame.itertuples():
        gated = r.scores != "none"
        seed = "" if pd.isna(r.control_seed) else int(r.control_seed)
        lines.append(
            f"| {r.scores} ({r.paper_scores}) | {r.alpha:g} | {seed} | "
            f"{r.pope_random_accuracy:.3f} | "
            f"{r.pope_popular_accuracy:.3f} | {r.pope_adversarial_accuracy:.3f} | "
            f"{r.pope_adversarial_auroc:.3f} | "
            + (fmt_change(r.pope_delta, r.pope_delta_ci_low, r.pope_delta_ci_high) if gated else "")
            + f" | {r.chair_s:.3f} | {r.chair_i:.3f} | "
            + (
                fmt_change(r.chair_i_delta, r.chair_i_delta_ci_low, r.chair_i_delta_ci_high)
                if gated
                else ""
            )
            + f" | {r.recall:.3f} | {r.mean_length:.1f} |"
        )
    base = frame.iloc[0]
    inherited = frame[frame["scores"] == "inherited"]
    transfer = [
        f"alpha {r.alpha:g}: POPE "
        f"{fmt_change(r.pope_vs_control, r.pope_vs_control_ci_low, r.pope_vs_control_ci_high)}, CHAIR_i "
        f"{fmt_change(r.chair_i_vs_control, r.chair_i_vs_control_ci_low, r.chair_i_vs_control_ci_high)}"
        for r in inherited.itertuples()
    ]
    own_image = [
        f"alpha {r.alpha:g}: POPE "
        f"{fmt_change(r.pope_vs_control, r.pope_vs_control_ci_low, r.pope_vs_control_ci_high)}, CHAIR_i "
        f"{fmt_change(r.chair_i_vs_control, r.chair_i_vs_control_ci_low, r.chair_i_vs_control_ci_high)}"
        for r in frame[frame["scores"] == OWN_IMAGE].itertuples()
    ]
    absolute = [
        f"alpha {r.alpha:g}: POPE {fmt_change(r.pope_delta, r.pope_delta_ci_low, r.pope_delta_ci_high)}, "
        f"CHAIR_i {fmt_change(r.chair_i_delta, r.chair_i_delta_ci_low, r.chair_i_delta_ci_high)}"
        for r in inherited.itertuples()
    ]
    lines += [
        "",
        f"Reading: {frame['mllm'].iloc[0]} on its own evaluation scenes ({int(base.pope_n)} POPE "
        f"questions over {len(SPLITS)} splits, {int(base.n)} captions of at most "
        f"{plan.max_new_tokens} tokens); deterministic scoring, random control over seeds "
        f"{list(plan.control_seeds)}, paired bootstrap with {RESAMPLES[profile]} resamples. "
        f"Ungated: POPE accuracy {base.pope_accuracy:.3f} "
        f"[{base.pope_accuracy_ci_low:.3f}, {base.pope_accuracy_ci_high:.3f}], CHAIR_i "
        f"{base.chair_i:.3f}. Inherited scores minus the random control (mean over seeds) at the "
        "same alpha -- the transfer test; a CI that includes 0 is no evidence of transfer: "
        + "; ".join(transfer)
        + ". Inherited scores against the ungated model: "
        + "; ".join(absolute)
        + ". The MLLM's own image-context scores (TruthProbe_MLLM) minus the random control: "
        + "; ".join(own_image)
        + ".",
    ]
    if base.pope_accuracy_ci_low > 0.9:
        lines.append(
            f"Caveat: ungated, {frame['mllm'].iloc[0]} is near the ceiling on these scenes (POPE "
            f"{base.pope_accuracy:.3f}), so a gate can hardly improve POPE; what the rows can show "
            "is which gates leave the answers intact as alpha grows and which degrade them."
        )
    title = f"POPE and CHAIR of {frame['mllm'].iloc[0]} under TruthProbe gates, over alpha"
    return Section(title, "\n".join(lines), files)


if __name__ == "__main__":
    cli(run, __doc__ or "")
