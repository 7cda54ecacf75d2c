"""What a lineage report computes: its sample sizes (:class:`ReportPlan`, :data:`PROFILES`) and
the evaluations its transfer test can run (:data:`EVALS`, :data:`EVAL_STAT`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from lineage_lens.errors import ConfigError, check_seed

EVALS: tuple[str, ...] = ("halueval", "pope", "chair")
#: The statistic of each evaluation the transfer test reads, and which direction is better.
EVAL_STAT: dict[str, tuple[str, Literal["higher", "lower"]]] = {
    "halueval": ("auroc", "higher"),
    "pope": ("pope_accuracy", "higher"),
    "chair": ("chair_i", "lower"),
}
PROJECTIONS: tuple[str, ...] = ("q", "k", "v", "o")
FIGURES: tuple[str, ...] = ("inheritance", "heatmaps", "drift", "cka", "evidence", "gating")


@dataclass(frozen=True)
class ReportPlan:
    """Sample sizes and settings of a report (:data:`PROFILES` holds ``quick`` and ``paper``).

    Attributes:
        n_probe: probing source rows (HaluEval: two examples each; a JSONL file or dataset: its
            first split of this many source rows, 0 for all).
        folds, seed: of the probes' cross-validation (and the row split).
        batch_size: prompts per forward pass of the captures.
        eval_rows: evaluation rows (HaluEval rows, POPE questions per split, CHAIR images);
            ``None`` for all.
        eval_seeds: HaluEval answer-order seeds.
        alpha: the descendants' gating strength; ancestor_alphas: the ancestor's own-score sweep.
        control_seeds: permutation seeds of the random control.
        n_resamples: bootstrap resamples and permutations of every interval and p-value.
        n_evidence: truthful examples whose attention to evidence is measured.
        top_k: heads in the top and bottom groups (clipped to a quarter of the heads).
        eval_batch_size: prompts per forward pass of the evaluations.
    """

    n_probe: int = 100
    folds: int = 5
    seed: int = 0
    batch_size: int = 16
    eval_rows: int | None = 40
    eval_seeds: tuple[int, ...] = (0,)
    alpha: float = 4.5
    ancestor_alphas: tuple[float, ...] = (4.5,)
    control_seeds: tuple[int, ...] = (0, 1, 2)
    n_resamples: int = 1000
    n_evidence: int = 50
    top_k: int = 10
    eval_batch_size: int = 8

    def check(self) -> ReportPlan:
        """This plan, or a ConfigError naming the first bad field."""
        ints = {
            "n_probe": 0,
            "folds": 2,
            "batch_size": 1,
            "n_resamples": 10,
            "n_evidence": 2,
            "top_k": 1,
            "eval_batch_size": 1,
        }
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"ReportPlan.{name} must be an integer >= {low}, got {value!r}.")
        if self.eval_rows is not None and self.eval_rows < 2:
            raise ConfigError(f"ReportPlan.eval_rows must be >= 2 or None, got {self.eval_rows}.")
        if not self.eval_seeds:
            raise ConfigError("ReportPlan.eval_seeds must name at least one seed.")
        if not self.control_seeds:
            raise ConfigError("ReportPlan.control_seeds must name at least one seed.")
        check_seed(self.seed, "ReportPlan.seed")
        for name in ("eval_seeds", "control_seeds"):
            for s in getattr(self, name):
                check_seed(s, f"ReportPlan.{name} entry")
        if not math.isfinite(self.alpha) or self.alpha == 0:
            raise ConfigError(
                f"ReportPlan.alpha must be a finite non-zero number, got {self.alpha}."
            )
        return self


PROFILES: dict[str, ReportPlan] = {
    "quick": ReportPlan(),
    "paper": ReportPlan(
        n_probe=292,
        eval_rows=None,
        eval_seeds=(0, 1, 2),
        ancestor_alphas=(2.0, 4.5, 8.0),
        n_resamples=10000,
        n_evidence=146,
    ),
}


def top_k(plan: ReportPlan, n_heads: int) -> int:
    """Heads in the top and bottom groups: ``plan.top_k``, at most a quarter of the heads."""
    return max(1, min(plan.top_k, n_heads // 4))
