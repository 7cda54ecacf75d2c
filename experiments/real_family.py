"""The real lineage: SmolLM2-135M-Instruct and the descendants the zoo builds from it.

The paper's three questions asked of a real (small) ancestor and its project-made descendant
``smollm2-ft`` (the ancestor fine-tuned on HaluEval knowledge text, see :mod:`lineage_lens.zoo`):

1. *Inherited?* Truth Scores of every member on the same HaluEval probing examples (the paper's
   prompt, 5-fold CV, seed 0) and their Pearson/Spearman correlation with the ancestor's
   (bootstrap CIs, head-shuffle permutation p-values, top-k overlap).
2. *How far did the weights move?* Layer-wise relative change of W_Q, W_K, W_V, W_O
   (:func:`lineage_lens.weights.weight_drift`).
3. *Do the ancestor's scores steer the descendant?* HaluEval QA judgements (evaluation rows, never
   the probing rows) of each descendant ungated, gated with the inherited (ancestor's) scores, with
   its own scores, and with a random control (the ancestor's scores permuted over heads, over
   several permutation seeds); the
   ancestor ungated and gated with its own scores over an alpha sweep as the reference (Tab. 1). Reported: accuracy, yes-ratio and the AUROC of
   the ``log p(Yes) - log p(No)`` margin (threshold-free: SmolLM2 answers "No" to nearly all).

Every number comes from one call of the library's report (:func:`lineage_lens.report.lineage_report`,
the same analysis as ``lineage-lens report``; its folder, with REPORT.md, CKA and attention to
evidence besides, is cached under ``$LINEAGE_LENS_CACHE/reports/real_family-<profile>``); this
module only picks the panels and tables of the ``make demo`` section from it.

Profiles: ``test`` builds a 2-step ``smollm2-ft`` in its own zoo folder and uses 6 probing rows
and 4 evaluation rows (it checks the plumbing, not the science); ``demo`` uses the zoo's
``smollm2-ft``, the paper's 292 probing rows and 60 evaluation rows with one seed (to fit
``make demo``'s time on a CPU); ``full`` uses all 208 evaluation rows and three seeds. The
random control runs over three permutation seeds (two in ``test``); the inherited gate is compared
with it by a paired bootstrap of ``AUROC(inherited) - mean AUROC(control)`` -- the transfer test. Every
step is cached by the report (model content, rows and seed), so a rerun only redoes what changed.

Writes ``real_family.png`` and three CSVs of its panels: ``real_family_scores.csv`` (per head, each
member's Truth Score), ``real_family_drift.csv`` (per descendant and layer) and
``real_family_gating.csv`` (per model, gate, control seed and seed).
"""

from __future__ import annotations

import functools
import logging
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
from lineage_lens.models import cache_dir, gguf_to_hf_dir, packaged_model_path
from lineage_lens.report import (
    LineageReport,
    ReportPlan,
    lineage_report,
)
from lineage_lens.scores import TruthScores
from lineage_lens.sweep import change_columns
from lineage_lens.zoo import build_zoo, default_zoo_dir
from lineage_lens.zoo.recipes import ANCESTOR as ANCESTOR_ALIAS

log = logging.getLogger(__name__)

ANCESTOR = "smollm2"
PROJECTIONS = ("q", "k", "v", "o")


@dataclass(frozen=True)
class Plan:
    """How much each profile does."""

    descendants: tuple[str, ...]
    n_probe: int
    eval_rows: int | None  # None: every evaluation row
    seeds: tuple[int, ...]
    alpha: float
    zoo_profile: str
    overrides: dict | None = None
    #: The ancestor's own-score sweep (the descendants use ``alpha``).
    ancestor_alphas: tuple[float, ...] = (4.5,)
    #: Seeds of the random control's permutation of the ancestor's scores.
    control_seeds: tuple[int, ...] = (0, 1, 2)
    #: Truthful probing examples whose attention to evidence the report measures.
    n_evidence: int = 50


PLANS = {
    "test": Plan(
        ("smollm2-ft",),
        n_probe=6,
        eval_rows=4,
        seeds=(0,),
        alpha=4.5,
        zoo_profile="full",
        overrides={"smollm2-ft": {"steps": 2, "n_rows": 16, "batch_size": 2, "max_len": 64}},
        control_seeds=(0, 1),
        n_evidence=4,
    ),
    "demo": Plan(
        ("smollm2-ft",),
        n_probe=292,
        eval_rows=60,
        seeds=(0,),
        alpha=4.5,
        zoo_profile="full",
        ancestor_alphas=(2.0, 4.5, 8.0),
    ),
    "full": Plan(
        ("smollm2-ft",),
        n_probe=292,
        eval_rows=None,
        seeds=(0, 1, 2),
        alpha=4.5,
        zoo_profile="full",
        ancestor_alphas=(1.0, 2.0, 4.5, 8.0),
        n_evidence=146,
    ),
}


@dataclass
class RealFamily:
    """Member directories (ancestor first), their Truth Scores and the report they come from."""

    paths: dict[str, Path]
    scores: dict[str, TruthScores]
    probe_ids: list[str]
    report: LineageReport


def _zoo_dir(profile: str) -> Path:
    # the test profile's cheap smollm2-ft lives apart, so it never shadows the real one
    return default_zoo_dir().with_name("zoo-real-test") if profile == "test" else default_zoo_dir()


def report_plan(profile: str) -> ReportPlan:
    """The report's sample sizes for an experiment profile."""
    plan = PLANS[profile]
    return ReportPlan(
        n_probe=plan.n_probe,
        folds=5,
        seed=0,
        eval_rows=plan.eval_rows,
        eval_seeds=plan.seeds,
        alpha=plan.alpha,
        ancestor_alphas=plan.ancestor_alphas,
        control_seeds=plan.control_seeds,
        n_resamples=RESAMPLES[profile],
        n_evidence=plan.n_evidence,
    )


@functools.lru_cache(maxsize=3)
def real_family(profile: str) -> RealFamily:
    """Build (or reuse) the profile's descendants and run the report on the family (cached)."""
    plan = PLANS[profile]
    zoo = build_zoo(
        _zoo_dir(profile),
        plan.zoo_profile,
        members=list(plan.descendants),
        overrides=plan.overrides,
    )
    paths = {ANCESTOR: gguf_to_hf_dir(packaged_model_path(ANCESTOR_ALIAS))}
    paths |= {name: zoo.path(name) for name in plan.descendants}
    report = lineage_report(
        paths[ANCESTOR],
        [paths[name] for name in plan.descendants],
        names=list(paths),
        out=cache_dir() / "reports" / f"real_family-{profile}",
        plan=report_plan(profile),
        command=f"python -m experiments.real_family --profile {profile}",
    )
    return RealFamily(paths, report.scores, report.probe_ids, report)


def scores_frame(fam: RealFamily) -> pd.DataFrame:
    """Per head, every member's Truth Score (the scatter panel)."""
    return fam.report.scores_frame()


def drift_frame(fam: RealFamily) -> pd.DataFrame:
    """Per descendant and layer: mean relative change of each projection (the drift panel)."""
    return fam.report.drift_frame()


def gating_frame(profile: str, fam: RealFamily) -> pd.DataFrame:
    """HaluEval judgements per model, gate, control seed and seed (the gating panel).

    The report's sweep (:func:`lineage_lens.sweep.gating_sweep`, one row per answer seed): the
    ancestor with its own scores over ``ancestor_alphas``; each descendant with the inherited
    (ancestor's) scores, its own and the random control over ``control_seeds``
    (:func:`lineage_lens.sweep.transfer_sources`) at ``alpha``.
    ``auroc_delta*``: the paired-bootstrap AUROC change vs the same model ungated (for the random
    control: of its mean AUROC over the control seeds, repeated on each of its rows).
    ``auroc_vs_control*`` (inherited rows): ``AUROC(inherited) - mean AUROC(control)``.
    """
    return fam.report.gating[list(COLUMNS)]


#: Paired-bootstrap AUROC change vs the same model ungated, over the distinct prompts.
DELTA_COLUMNS, VS_CONTROL_COLUMNS = change_columns("auroc")
#: Per model, score source, alpha, control seed and answer seed; then the paired changes.
COLUMNS = (
    "model",
    "scores",
    "alpha",
    "control_seed",
    "seed",
    "n",
    "accuracy",
    "yes_ratio",
    "auroc",
    *DELTA_COLUMNS,
    *VS_CONTROL_COLUMNS,
)


def plot_family(fam: RealFamily) -> plt.Figure:
    """Scores scatter, layer-wise drift and the gating bars (the report's overview figure)."""
    return fam.report.plot("overview")


def run(profile: str = "demo", out_dir: Path = FIGURES) -> Section:
    """The real lineage's inheritance, drift and gating; write the figure and its CSVs."""
    out_dir = Path(out_dir)
    plan = PLANS[profile]
    fam = real_family(profile)
    matrix = fam.report.comparisons
    scores, drift, gating = scores_frame(fam), drift_frame(fam), gating_frame(profile, fam)
    files = [
        save_csv(scores, out_dir / "real_family_scores.csv"),
        save_csv(drift, out_dir / "real_family_drift.csv"),
        save_csv(gating, out_dir / "real_family_gating.csv"),
        save_figure(plot_family(fam), out_dir / "real_family.png"),
    ]
    lines = [
        f"Truth Scores on {plan.n_probe} HaluEval probing rows ({2 * plan.n_probe} examples); "
        f"best ancestor heads: "
        + ", ".join(f"L{r.layer}H{r.head} {r.accuracy:.3f}" for r in _top(fam.scores[ANCESTOR])),
        "",
        "| descendant | Pearson r [95 % CI] | p (perm.) | Spearman ρ | top-10 overlap | "
        "mean rel. drift (Q/K/V/O) |",
        "|---|---|---|---|---|---|",
    ]
    for name in plan.descendants:
        c = matrix[name]
        topk = c.topk_frame().set_index("k")
        top10 = f"{int(topk.loc[10, 'overlap'])} (chance {topk.loc[10, 'expected']:.1f})"
        sub = drift[drift["descendant"] == name]
        d = "/".join(f"{sub[p].mean():.3f}" for p in PROJECTIONS)
        lines.append(
            f"| {name} | {c.pearson.r:.3f} [{c.pearson.ci_low:.3f}, {c.pearson.ci_high:.3f}] | "
            f"{c.pearson.p_permutation:.3g} | {c.spearman.r:.3f} | {top10} | {d} |"
        )
    # the report's further questions (per-head CKA, attention to evidence), as it words them
    extra = [f for f in fam.report.findings() if "CKA" in f or "evidence" in f]
    lines += ["", *[f"- {f}" for f in extra]]
    # named under the cache root, so the committed section holds no machine's own path
    out = Path(fam.report.meta["out"])
    root = cache_dir()
    shown = (
        f"$LINEAGE_LENS_CACHE/{out.relative_to(root).as_posix()}"
        if out.is_relative_to(root)
        else str(out)
    )
    lines += ["", f"The whole report (`lineage-lens report`): `{shown}/REPORT.md`."]
    table = gating.groupby(["model", "scores", "alpha"], sort=False).agg(
        n=("n", "sum"),
        settings=("control_seed", lambda c: max(c.nunique(), 1)),
        accuracy=("accuracy", "mean"),
        yes_ratio=("yes_ratio", "mean"),
        auroc=("auroc", "mean"),
        auroc_std=("auroc", "std"),
        delta=("auroc_delta", "first"),
        delta_low=("auroc_delta_ci_low", "first"),
        delta_high=("auroc_delta_ci_high", "first"),
        vs=("auroc_vs_control", "first"),
        vs_low=("auroc_vs_control_ci_low", "first"),
        vs_high=("auroc_vs_control_ci_high", "first"),
    )
    table["n"] //= table["settings"]  # examples per setting, not summed over control seeds
    lines += [
        "",
        "HaluEval QA judgements on evaluation rows (disjoint from the probing rows), norm "
        f"center, placement z, seeds {list(plan.seeds)}; the ancestor with its own scores over "
        f"alpha {list(plan.ancestor_alphas)}, the descendants at alpha {plan.alpha}; the random "
        f"control over permutation seeds {list(plan.control_seeds)} (its AUROC and change: means "
        "over them):",
        "",
        "| model | scores | alpha | n | accuracy | yes-ratio | AUROC (mean ± std over seeds) | "
        "Δ AUROC vs ungated [95 % CI, paired bootstrap] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (model, source, alpha), r in table.iterrows():
        std = "" if np.isnan(r.auroc_std) else f" ± {r.auroc_std:.3f}"
        delta = "" if np.isnan(r.delta) else fmt_change(r.delta, r.delta_low, r.delta_high)
        lines.append(
            f"| {model} | {source} | {alpha:g} | {int(r.n)} | {r.accuracy:.3f} | {r.yes_ratio:.3f} | "
            f"{r.auroc:.3f}{std} | {delta} |"
        )
    lines += ["", _reading(plan, matrix, table)]
    return Section(
        "The real lineage: SmolLM2-135M-Instruct and descendants", "\n".join(lines), files
    )


def _top(scores: TruthScores, k: int = 5):
    return list(scores.to_frame().sort_values("accuracy", ascending=False).head(k).itertuples())


def _reading(plan: Plan, matrix: dict, table: pd.DataFrame) -> str:
    parts = []
    for name in plan.descendants:
        c = matrix[name]
        parts.append(f"{name} keeps the ancestor's map with r = {c.pearson.r:.2f}")
        inh_key, ctrl_key = (name, "inherited", plan.alpha), (name, "random control", plan.alpha)
        if inh_key in table.index and ctrl_key in table.index:
            inh, ctrl = table.loc[inh_key], table.loc[ctrl_key]
            verdict = (
                "its CI excludes 0"
                if inh.delta_low > 0 or inh.delta_high < 0
                else "its CI includes 0"
            )
            transfer = (
                "beats the control"
                if inh.vs_low > 0
                else "loses to the control"
                if inh.vs_high < 0
                else "is not distinguishable from the control"
            )
            parts.append(
                f"gating {name} with the inherited scores changes the judgement AUROC by "
                f"{fmt_change(inh.delta, inh.delta_low, inh.delta_high)} ({verdict}), "
                f"the random control ({len(plan.control_seeds)} permutations) by "
                f"{ctrl.delta:+.3f}; inherited minus control "
                f"{fmt_change(inh.vs, inh.vs_low, inh.vs_high)}: the inherited gate {transfer}"
            )
    note = (
        f" {plan.eval_rows} evaluation rows and seeds {list(plan.seeds)}; profile full uses all "
        "rows and three seeds (BENCHMARKS.md has the full run for the ancestor)."
        if plan.eval_rows is not None
        else ""
    )
    return "Reading: " + "; ".join(parts) + "." + note


if __name__ == "__main__":
    cli(run, __doc__ or "")
