"""Alpha sweeps of TruthProbe gating on the zoo family, with confidence intervals.

The zoo's hallucination test (:mod:`lineage_lens.evals.context`): held-out counterfactual items (a
context contradicting the memorised fact, triples never trained on); a member *follows the context*
when the next-token logit of the context's answer beats the memorised one after
``Context: ... Answer:``. The sweep is the library's (:func:`lineage_lens.sweep.gating_sweep`,
sources from :func:`lineage_lens.sweep.transfer_sources`). For each ``alpha`` the
share of items followed is measured with :class:`lineage_lens.gating.TruthGate` (``norm="center"``,
``placement="z"``) applied with

* the ancestor ``base``'s own scores on ``base``;
* on each descendant (``instruct``, ``vlm``): the inherited scores (``base``'s), its own, and a
  random control (:func:`lineage_lens.gating.control_scores`, ``base``'s scores permuted over
  heads; one curve per control seed of the profile).

Every rate carries a 95 % Wilson interval; every change carries a paired bootstrap interval over
the same items (:func:`lineage_lens.stats.paired_bootstrap_delta`): against the ungated member
(``alpha = 0``) and, for the inherited scores, against the random control at the same alpha (the
control averaged over its seeds item by item) -- the transfer test.

Writes ``gating_zoo.png`` and ``gating_zoo.csv`` (one row per member, score source, control seed
and alpha).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
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
from experiments.zoo_family import ANCESTOR, DESCENDANTS, zoo_lineage
from lineage_lens.evals.context import ContextFollowing, context_following, followed
from lineage_lens.models import load_model
from lineage_lens.sweep import CONTROL, UNGATED, ScoreSource, gating_sweep, transfer_sources
from lineage_lens.zoo.world import heldout_counterfactual_items

ALPHAS = {"test": (0.0, 2.0, 8.0), "demo": (0.0, 1.0, 2.0, 4.0, 8.0), "full": (0, 1, 2, 4, 8, 16)}
N_EVAL = {"test": 100, "demo": 300, "full": 1000}
#: Seeds of the random-control permutation per profile.
CONTROL_SEEDS = {"test": (0, 1), "demo": (0, 1, 2), "full": (0, 1, 2, 3, 4)}
#: Seed of the held-out item sample.
ITEM_SEED = 1
#: The CSV's names of the sweep's paired changes of the context-following rate.
CHANGES = {
    "context_following_delta": "delta_vs_ungated",
    "context_following_delta_ci_low": "delta_ci_low",
    "context_following_delta_ci_high": "delta_ci_high",
    "context_following_vs_control": "delta_vs_control",
    "context_following_vs_control_ci_low": "delta_vs_control_ci_low",
    "context_following_vs_control_ci_high": "delta_vs_control_ci_high",
}
COLUMNS = (
    "member",
    "scores",
    "control_seed",
    "alpha",
    "n",
    "context_following",
    "ci_low",
    "ci_high",
    *CHANGES.values(),
)

__all__ = ["context_following", "followed", "run", "sweep"]


def sweep(profile: str) -> pd.DataFrame:
    """The plotted numbers: context-following rate per member, score source, seed and alpha,
    with Wilson intervals and paired-bootstrap changes (see the module docstring;
    :func:`lineage_lens.sweep.gating_sweep`, one row per source and alpha, alpha 0 ungated)."""
    lineage = zoo_lineage(profile)
    items = heldout_counterfactual_items(
        lineage.zoo.world(ANCESTOR), N_EVAL[profile], seed=ITEM_SEED
    )
    base = lineage.scores[ANCESTOR]
    plans = {ANCESTOR: [ScoreSource("own", base)]}
    for name in DESCENDANTS:
        plans[name] = transfer_sources(
            base, lineage.scores[name], control_seeds=CONTROL_SEEDS[profile]
        )
    frames = []
    for member, sources in plans.items():
        frame = gating_sweep(
            load_model(lineage.path(member)),
            ContextFollowing(items),
            sources,
            ALPHAS[profile],
            n_resamples=RESAMPLES[profile],
        )
        frame = frame[frame["scores"] != UNGATED].assign(member=member)  # alpha 0 rows hold it
        frames.append(frame.rename(columns=CHANGES))
    out = pd.concat(frames, ignore_index=True)[list(COLUMNS)]
    return out.astype({"control_seed": float})  # NaN where no control seed, as floats


def plot_sweep(frame: pd.DataFrame) -> plt.Figure:
    members = list(dict.fromkeys(frame["member"]))
    fig, axes = plt.subplots(
        1, len(members), figsize=(3.8 * len(members), 3.3), sharey=True, layout="constrained"
    )
    colors = {"own": "C1", "inherited": "C0", CONTROL: "C3"}
    for ax, member in zip(axes, members, strict=True):
        sub = frame[frame["member"] == member]
        for source, grp in sub.groupby("scores", sort=False):
            if source == CONTROL:
                spread = grp.groupby("alpha")["context_following"].agg(["mean", "min", "max"])
                n_seeds = grp["control_seed"].nunique()
                ax.plot(spread.index, spread["mean"], color=colors[source], marker="o", ms=3)
                ax.fill_between(
                    spread.index,
                    spread["min"],
                    spread["max"],
                    color=colors[source],
                    alpha=0.2,
                    label=f"{source} (mean, range of {n_seeds} seeds)",
                )
                continue
            ax.errorbar(
                grp["alpha"],
                grp["context_following"],
                yerr=[
                    grp["context_following"] - grp["ci_low"],
                    grp["ci_high"] - grp["context_following"],
                ],
                marker="o",
                ms=3,
                capsize=2,
                color=colors[source],
                label=f"{source} (95 % CI)",
            )
        ax.set_title(f"{member} (n={int(sub['n'].iloc[0])})")
        ax.set_xlabel("alpha")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("context-following rate")
    return fig


def run(profile: str = "demo", out_dir: Path = FIGURES) -> Section:
    """Gating sweeps on the zoo family; write the figure and its CSV."""
    out_dir = Path(out_dir)
    frame = sweep(profile)
    files = [
        save_csv(frame, out_dir / "gating_zoo.csv"),
        save_figure(plot_sweep(frame), out_dir / "gating_zoo.png"),
    ]
    alphas = ALPHAS[profile]
    lines = ["| member | scores | " + " | ".join(f"α={a:g}" for a in alphas) + " |"]
    lines.append("|---|---|" + "---|" * len(alphas))
    table = frame.groupby(["member", "scores", "alpha"], sort=False)["context_following"].mean()
    for (member, source), sub in table.groupby(level=[0, 1], sort=False):
        label = (
            f"{source} (mean of {len(CONTROL_SEEDS[profile])} seeds)"
            if source == CONTROL
            else source
        )
        lines.append(f"| {member} | {label} | " + " | ".join(f"{v:.3f}" for v in sub) + " |")
    inherited = frame[frame["scores"] == "inherited"].dropna(subset=["delta_vs_control"])
    gated = inherited[inherited["alpha"] > 0]
    # the change of the largest size, gain or loss (idxmax of the signed change would report a
    # zero change when every gate lowers the rate)
    top = gated.loc[gated["delta_vs_ungated"].abs().idxmax()] if len(gated) else None
    lines += [
        "",
        "| member | alpha | inherited vs ungated [95 % CI] | inherited vs random control [95 % CI] |",
        "|---|---|---|---|",
    ]
    for r in inherited[inherited["alpha"] > 0].itertuples():
        lines.append(
            f"| {r.member} | {r.alpha:g} | {fmt_change(r.delta_vs_ungated, r.delta_ci_low, r.delta_ci_high)}"
            f" | {fmt_change(r.delta_vs_control, r.delta_vs_control_ci_low, r.delta_vs_control_ci_high)} |"
        )
    wins = gated[gated["delta_vs_control_ci_low"] > 0]
    losses = gated[gated["delta_vs_control_ci_high"] < 0]
    reading = (
        f"Reading: {N_EVAL[profile]} held-out counterfactual items (seed {ITEM_SEED}); rates with "
        f"95 % Wilson intervals in the CSV, changes with paired bootstrap intervals "
        f"({RESAMPLES[profile]} resamples), random control over seeds "
        f"{list(CONTROL_SEEDS[profile])}. "
    )
    if top is not None:
        reading += (
            f"The inherited scores' largest change (in size) over ungated is "
            f"{fmt_change(top.delta_vs_ungated, top.delta_ci_low, top.delta_ci_high)} ({top.member}, "
            f"alpha {top.alpha:g}). "
        )

    def cells(frame: pd.DataFrame) -> str:
        return ", ".join(f"{r.member} alpha {r.alpha:g}" for r in frame.itertuples()) or "none"

    reading += (
        f"Against the random control, the inherited scores are better with a CI above 0 in "
        f"{len(wins)} of {len(gated)} member x alpha cells ({cells(wins)}) and worse with a CI "
        f"below 0 in {len(losses)} ({cells(losses)}); with {len(gated)} uncorrected 95 % "
        f"intervals about {0.05 * len(gated):.1f} cells exclude 0 by chance alone."
    )
    lines += ["", reading]
    return Section("Gating alpha sweeps on the zoo", "\n".join(lines), files)


if __name__ == "__main__":
    cli(run, __doc__ or "")
