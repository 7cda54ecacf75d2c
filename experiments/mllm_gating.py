"""Tabs. 2-3 on the zoo: POPE and CHAIR of a zoo MLLM gated with its ancestor LLM's Truth Scores.

The MLLM answers POPE-style existence questions (random, popular, adversarial splits) and captions
its own evaluation scenes (``<member>/eval/`` of the zoo: rendered images, POPE files, per-image
objects). It runs ungated and gated (``norm="center"``, ``placement="z"``, language-model heads
only) with

* ``inherited`` -- the ancestor LLM's Truth Scores (the paper's transfer),
* ``own`` -- the MLLM's own Truth Scores (its language model probed on the same text examples),
* ``random control`` -- the ancestor's scores permuted over heads
  (:func:`lineage_lens.gating.control_scores`), one row per control seed of the profile.

How sure each number is: POPE accuracies and CHAIR_s carry 95 % Wilson intervals, CHAIR_i a
bootstrap interval over captions; every gated row carries the paired bootstrap change against the
ungated model on the same questions and captions (pooled POPE accuracy, CHAIR_i), and inherited rows
also against the random control at the same alpha (averaged over its seeds item by item)
(:func:`lineage_lens.evals.paired_bootstrap_delta`).

Profiles ``test`` and ``demo`` use the tiny family (``base`` -> ``vlm``, scores from
:mod:`experiments._zoo`); ``full`` uses ``smollm2-vlm`` with SmolLM2-135M-Instruct's scores
(292 HaluEval probing rows, :func:`experiments.real_family.cached_scores`). Writes
``mllm_gating.png`` and ``mllm_gating.csv`` (one row per setting: POPE accuracy/F1/yes-ratio/AUROC
per split, pooled POPE accuracy, CHAIR_s, CHAIR_i, recall, caption length, their intervals and the
paired changes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from experiments._common import (
    FIGURES,
    RESAMPLES,
    Section,
    cli,
    fmt_change,
    save_csv,
    save_figure,
)
from lineage_lens.errors import DataError
from lineage_lens.evals.chair import (
    ChairResult,
    ObjectVocabulary,
    chair_i_of_counts,
    evaluate_chair,
)
from lineage_lens.evals.pope import evaluate_pope
from lineage_lens.gating import TruthGate, control_scores
from lineage_lens.models import load_model
from lineage_lens.scores import TruthScores
from lineage_lens.stats import paired_bootstrap_delta, proportion_ci
from lineage_lens.zoo.images import CAPTION_PROMPT, OBJECTS
from lineage_lens.zoo.train import VLM_PROMPT

SPLITS = ("random", "popular", "adversarial")
#: Zoo eval images are ``images/zoo_00007.png`` for image id ``"7"``.
FILE_PATTERN = "zoo_{image_id:0>5}.png"
CONTROL = "random control"


@dataclass(frozen=True)
class Plan:
    alphas: tuple[float, ...]
    pope_limit: int | None  # questions per split
    chair_limit: int | None  # images captioned
    max_new_tokens: int
    control_seeds: tuple[int, ...]  # seeds of the random-control permutation


PLANS = {
    "test": Plan((4.0,), pope_limit=30, chair_limit=8, max_new_tokens=16, control_seeds=(0, 1)),
    "demo": Plan((2.0, 8.0), None, None, max_new_tokens=24, control_seeds=(0, 1, 2)),
    "full": Plan((2.0, 4.5), None, None, max_new_tokens=32, control_seeds=(0, 1)),
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
    """The plotted numbers: one row per gate setting (and control seed)."""
    plan = PLANS[profile]
    fam = family(profile)
    model = load_model(fam.path)
    eval_dir = fam.path / "eval"
    vocab = ObjectVocabulary.from_classes(OBJECTS, name="zoo")
    settings: list[tuple[str, float, int | None, TruthScores | None]] = [("none", 0.0, None, None)]
    controls = {
        s: control_scores(fam.scores["inherited"], "random", seed=s) for s in plan.control_seeds
    }
    for alpha in plan.alphas:
        settings += [
            ("inherited", alpha, None, fam.scores["inherited"]),
            ("own", alpha, None, fam.scores["own"]),
        ]
        settings += [(CONTROL, alpha, s, c) for s, c in controls.items()]
    rows, outcomes = [], []
    for source, alpha, seed, scores in settings:
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
        row: dict = {"mllm": fam.mllm, "scores": source, "alpha": alpha, "control_seed": seed}
        for split, m in zip(SPLITS, pope.metrics.to_dict(orient="records"), strict=True):
            row |= {f"pope_{split}_{k}": m[k] for k in ("accuracy", "f1", "yes_ratio", "auroc")}
        row |= {k: float(chair.metrics[k]) for k in CHAIR_KEYS}
        out = Outcomes.of(pope.examples, chair)
        row |= out.intervals(RESAMPLES[profile])
        rows.append(row)
        outcomes.append(out)
    return add_changes(pd.DataFrame(rows), outcomes, RESAMPLES[profile])


@dataclass(frozen=True)
class Outcomes:
    """Per-example results of one setting: POPE correctness (adversarial split and all splits)
    and per-caption hallucinated / mentioned object counts, in a fixed example order."""

    pope_correct: np.ndarray
    adversarial: np.ndarray  # bool mask of the adversarial split's questions
    hallucinated: np.ndarray
    mentioned: np.ndarray
    caption_ids: tuple[str, ...]

    @classmethod
    def of(cls, examples: pd.DataFrame, chair: ChairResult) -> Outcomes:
        said_yes = examples["answer"] == "yes"
        caps = chair.per_caption
        return cls(
            pope_correct=(said_yes == examples["label"].astype(bool)).to_numpy(dtype=float),
            adversarial=examples["split"].str.endswith("pope_adversarial.json").to_numpy(),
            hallucinated=caps["n_hallucinated"].to_numpy(dtype=float),
            mentioned=caps["n_mentions"].to_numpy(dtype=float),
            caption_ids=tuple(caps["image_id"].astype(str)),
        )

    def intervals(self, n_resamples: int) -> dict[str, float]:
        """The pooled POPE accuracy and adversarial accuracy (Wilson) and CHAIR_i (bootstrap over
        captions) with their 95 % intervals."""
        out: dict[str, float] = {}
        for name, hits in (
            ("pope_accuracy", self.pope_correct),
            ("pope_adversarial_accuracy", self.pope_correct[self.adversarial]),
        ):
            _, low, high = proportion_ci(int(hits.sum()), len(hits))
            out |= {f"{name}_ci_low": low, f"{name}_ci_high": high}
        out["pope_accuracy"] = float(self.pope_correct.mean())  # pooled over the splits
        out["pope_n"] = len(self.pope_correct)
        if self.mentioned.sum() > 0 and len(self.mentioned) > 1:
            ci = stats.bootstrap(
                (self.hallucinated, self.mentioned),
                chair_i_of_counts,
                paired=True,
                vectorized=False,
                n_resamples=n_resamples,
                method="percentile",
                rng=np.random.default_rng(0),
            ).confidence_interval
            out |= {"chair_i_ci_low": float(ci.low), "chair_i_ci_high": float(ci.high)}
        return out


def _changes(base: Outcomes, other: Outcomes, n_resamples: int) -> dict[str, float]:
    if base.caption_ids != other.caption_ids or len(base.pope_correct) != len(other.pope_correct):
        raise DataError(
            f"paired changes need the same examples: {len(base.pope_correct)} vs "
            f"{len(other.pope_correct)} POPE questions, {len(base.caption_ids)} vs "
            f"{len(other.caption_ids)} captions; run both settings with the same limits."
        )
    out: dict[str, float] = {}
    d = paired_bootstrap_delta(
        np.mean, base.pope_correct, other.pope_correct, n_resamples=n_resamples
    )
    out |= dict(zip(("pope_delta", "pope_delta_ci_low", "pope_delta_ci_high"), d, strict=True))
    d = paired_bootstrap_delta(
        chair_i_of_counts,
        (base.hallucinated, base.mentioned),
        (other.hallucinated, other.mentioned),
        n_resamples=n_resamples,
    )
    out |= dict(
        zip(("chair_i_delta", "chair_i_delta_ci_low", "chair_i_delta_ci_high"), d, strict=True)
    )
    return out


def add_changes(frame: pd.DataFrame, outcomes: list[Outcomes], n_resamples: int) -> pd.DataFrame:
    """Paired changes of every gated row against the ungated one (``*_delta``) and of the
    inherited rows against the random control at the same alpha (``*_vs_control``)."""
    base = outcomes[0]  # the ungated setting comes first
    extra: list[dict[str, float]] = [{}]
    for i in range(1, len(frame)):
        row = _changes(base, outcomes[i], n_resamples)
        r = frame.iloc[i]
        if r["scores"] == "inherited":
            same = [
                outcomes[j]
                for j in range(len(frame))
                if frame["scores"].iloc[j] == CONTROL and frame["alpha"].iloc[j] == r["alpha"]
            ]
            if same:
                mean = Outcomes(
                    np.mean([o.pope_correct for o in same], axis=0),
                    base.adversarial,
                    np.mean([o.hallucinated for o in same], axis=0),
                    np.mean([o.mentioned for o in same], axis=0),
                    base.caption_ids,
                )
                vs = _changes(mean, outcomes[i], n_resamples)
                row |= {k.replace("delta", "vs_control"): v for k, v in vs.items()}
        extra.append(row)
    return pd.concat([frame, pd.DataFrame(extra)], axis=1)


CHAIR_KEYS = ("chair_s", "chair_i", "recall", "mean_length", "n")


def _label(r) -> str:
    if r.scores == "none":
        return "none"
    seed = "" if pd.isna(r.control_seed) else f" s{int(r.control_seed)}"
    return f"{r.scores}{seed}\nα={r.alpha:g}"


def plot(frame: pd.DataFrame) -> plt.Figure:
    """POPE accuracy and CHAIR_i per setting with their 95 % intervals, and the paired changes
    against the ungated model."""
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8), layout="constrained")
    labels = [_label(r) for r in frame.itertuples()]
    x = np.arange(len(frame))
    colors = {"none": "grey", "inherited": "C0", "own": "C1", CONTROL: "C3"}
    color = [colors[s] for s in frame["scores"]]
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
    for ax, (col, low, high, title) in zip(axes, panels, strict=True):
        v = frame[col].fillna(0.0).to_numpy()
        err = np.vstack([v - frame[low].fillna(0.0), frame[high].fillna(0.0) - v])
        ax.bar(x, v, color=color, yerr=np.clip(err, 0, None), capsize=2)
        ax.set_xticks(x, labels, fontsize=6, rotation=60, ha="right")
        ax.set_title(title, fontsize=9)
        if "delta" in col:
            ax.axhline(0, color="black", lw=0.6)
    fig.suptitle(
        f"{frame['mllm'].iloc[0]} gated with its ancestor's Truth Scores vs own and random-control "
        "scores (bars: 95 % CI)"
    )
    return fig


def run(profile: str = "demo", out_dir: Path = FIGURES) -> Section:
    """POPE and CHAIR of the zoo MLLM under each gate; write the figure and its CSV."""
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
            f"| {r.scores} | {r.alpha:g} | {seed} | {r.pope_random_accuracy:.3f} | "
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
        + ".",
    ]
    return Section("POPE and CHAIR of the zoo MLLM under TruthProbe gates", "\n".join(lines), files)


if __name__ == "__main__":
    cli(run, __doc__ or "")
