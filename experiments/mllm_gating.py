"""Tabs. 2-3 on the zoo: POPE and CHAIR of a zoo MLLM gated with its ancestor LLM's Truth Scores.

The MLLM answers POPE-style existence questions (random, popular, adversarial splits) and captions
its own evaluation scenes (``<member>/eval/`` of the zoo: rendered images, POPE files, per-image
objects). It runs ungated and gated (``norm="center"``, ``placement="z"``, language-model heads
only) with

* ``inherited`` -- the ancestor LLM's Truth Scores (the paper's transfer),
* ``own`` -- the MLLM's own Truth Scores (its language model probed on the same text examples),
* ``random control`` -- the ancestor's scores permuted over heads
  (:func:`lineage_lens.gating.control_scores`).

Profiles ``test`` and ``demo`` use the tiny family (``base`` -> ``vlm``, scores from
:mod:`experiments._zoo`); ``full`` uses ``smollm2-vlm`` with SmolLM2-135M-Instruct's scores
(292 HaluEval probing rows, :func:`experiments.real_family.cached_scores`). Writes
``mllm_gating.png`` and ``mllm_gating.csv`` (one row per setting: POPE accuracy/F1/yes-ratio/AUROC
per split, CHAIR_s, CHAIR_i, recall, caption length).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments._common import FIGURES, Section, cli, save_csv, save_figure
from lineage_lens.evals.chair import ObjectVocabulary, evaluate_chair
from lineage_lens.evals.pope import evaluate_pope
from lineage_lens.gating import TruthGate, control_scores
from lineage_lens.models import load_model
from lineage_lens.scores import TruthScores
from lineage_lens.zoo.images import CAPTION_PROMPT, OBJECTS
from lineage_lens.zoo.train import VLM_PROMPT

SPLITS = ("random", "popular", "adversarial")
#: Zoo eval images are ``images/zoo_00007.png`` for image id ``"7"``.
FILE_PATTERN = "zoo_{image_id:0>5}.png"


@dataclass(frozen=True)
class Plan:
    alphas: tuple[float, ...]
    pope_limit: int | None  # questions per split
    chair_limit: int | None  # images captioned
    max_new_tokens: int


PLANS = {
    "test": Plan(alphas=(4.0,), pope_limit=30, chair_limit=8, max_new_tokens=16),
    "demo": Plan(alphas=(2.0, 8.0), pope_limit=None, chair_limit=None, max_new_tokens=24),
    "full": Plan(alphas=(2.0, 4.5), pope_limit=None, chair_limit=None, max_new_tokens=32),
}


@dataclass
class MllmFamily:
    ancestor: str
    mllm: str
    path: Path
    scores: dict[str, TruthScores]  # "inherited" and "own"


def family(profile: str) -> MllmFamily:
    """The MLLM of the profile, its directory and the two score sets."""
    if profile == "full":
        from experiments.real_family import ANCESTOR, cached_scores, real_family
        from lineage_lens.zoo import build_zoo

        anc = real_family("full").scores[ANCESTOR]
        path = build_zoo(profile="full", members=["smollm2-vlm"]).path("smollm2-vlm")
        own = cached_scores("smollm2-vlm", path, anc.n // 2)
        return MllmFamily(ANCESTOR, "smollm2-vlm", path, {"inherited": anc, "own": own})
    from experiments._zoo import ANCESTOR as TINY_ANCESTOR
    from experiments._zoo import zoo_lineage

    lineage = zoo_lineage(profile)
    scores = {"inherited": lineage.scores[TINY_ANCESTOR], "own": lineage.scores["vlm"]}
    return MllmFamily(TINY_ANCESTOR, "vlm", lineage.path("vlm"), scores)


def evaluate(profile: str) -> pd.DataFrame:
    """The plotted numbers: one row per gate setting."""
    plan = PLANS[profile]
    fam = family(profile)
    model = load_model(fam.path)
    eval_dir = fam.path / "eval"
    vocab = ObjectVocabulary.from_classes(OBJECTS, name="zoo")
    settings: list[tuple[str, float, TruthScores | None]] = [("none", 0.0, None)]
    control = control_scores(fam.scores["inherited"], "random", seed=0)
    for alpha in plan.alphas:
        settings += [
            ("inherited", alpha, fam.scores["inherited"]),
            ("own", alpha, fam.scores["own"]),
            ("random control", alpha, control),
        ]
    rows = []
    for source, alpha, scores in settings:
        gate = None if scores is None else TruthGate(scores, alpha=alpha, norm="center")
        pope = evaluate_pope(
            model,
            eval_dir / "images",
            [eval_dir / f"pope_{s}.json" for s in SPLITS],
            gate=gate,
            prompt_template=VLM_PROMPT,
            limit=plan.pope_limit,
            progress=False,
        )
        chair = evaluate_chair(
            model,
            eval_dir / "images",
            vocabulary=vocab,
            ground_truth=eval_dir / "gt_objects.json",
            file_pattern=FILE_PATTERN,
            prompt=CAPTION_PROMPT,
            prompt_template=VLM_PROMPT,
            max_new_tokens=plan.max_new_tokens,
            gate=gate,
            limit=plan.chair_limit,
            progress=False,
        )
        row: dict = {"mllm": fam.mllm, "scores": source, "alpha": alpha}
        for split, m in zip(SPLITS, pope.metrics.to_dict(orient="records"), strict=True):
            row |= {f"pope_{split}_{k}": m[k] for k in ("accuracy", "f1", "yes_ratio", "auroc")}
        row["pope_accuracy"] = float(pope.metrics["accuracy"].mean())
        row |= {k: float(chair.metrics[k]) for k in CHAIR_KEYS}
        rows.append(row)
    return pd.DataFrame(rows)


CHAIR_KEYS = ("chair_s", "chair_i", "recall", "mean_length", "n")


def plot(frame: pd.DataFrame) -> plt.Figure:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    labels = [
        "none" if r.scores == "none" else f"{r.scores}\nα={r.alpha:g}" for r in frame.itertuples()
    ]
    x = np.arange(len(frame))
    colors = {"none": "grey", "inherited": "C0", "own": "C1", "random control": "C3"}
    for ax, (col, title) in zip(
        axes,
        (
            ("pope_adversarial_accuracy", "POPE adversarial accuracy"),
            ("chair_i", "CHAIR_i (lower is better)"),
            ("recall", "object recall of captions"),
        ),
        strict=True,
    ):
        ax.bar(x, frame[col], color=[colors[s] for s in frame["scores"]])
        ax.set_xticks(x, labels, fontsize=7, rotation=60, ha="right")
        ax.set_title(title)
    fig.suptitle(f"{frame['mllm'].iloc[0]}: gated with its ancestor's Truth Scores vs controls")
    return fig


def run(profile: str = "demo", out_dir: Path = FIGURES) -> Section:
    """POPE and CHAIR of the zoo MLLM under each gate; write the figure and its CSV."""
    out_dir = Path(out_dir)
    frame = evaluate(profile)
    files = [
        save_csv(frame, out_dir / "mllm_gating.csv"),
        save_figure(plot(frame), out_dir / "mllm_gating.png"),
    ]
    lines = [
        "| scores | alpha | POPE random | popular | adversarial | adv. AUROC | CHAIR_s | "
        "CHAIR_i | recall | words/caption |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in frame.itertuples():
        lines.append(
            f"| {r.scores} | {r.alpha:g} | {r.pope_random_accuracy:.3f} | "
            f"{r.pope_popular_accuracy:.3f} | {r.pope_adversarial_accuracy:.3f} | "
            f"{r.pope_adversarial_auroc:.3f} | {r.chair_s:.3f} | {r.chair_i:.3f} | "
            f"{r.recall:.3f} | {r.mean_length:.1f} |"
        )
    base = frame.iloc[0]
    best = frame.iloc[1:].sort_values("pope_adversarial_accuracy").iloc[-1]
    lines += [
        "",
        f"Reading: {frame['mllm'].iloc[0]} on its own evaluation scenes "
        f"({int(base.n)} captions). Ungated POPE adversarial accuracy "
        f"{base.pope_adversarial_accuracy:.3f}, CHAIR_i {base.chair_i:.3f}; the best gate on "
        f"adversarial POPE is {best.scores} (alpha {best.alpha:g}): "
        f"{best.pope_adversarial_accuracy:.3f}, CHAIR_i {best.chair_i:.3f}. A transfer claim "
        "needs the inherited row to beat the random control at the same alpha.",
    ]
    return Section("POPE and CHAIR of the zoo MLLM under TruthProbe gates", "\n".join(lines), files)


if __name__ == "__main__":
    cli(run, __doc__ or "")
