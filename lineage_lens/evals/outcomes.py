"""What one evaluation setting gives a gating sweep: summary metrics and per-example outcomes.

An *evaluator* is any callable ``evaluator(model, gate) -> Outcome`` (``gate`` is a
:class:`~lineage_lens.gating.TruthGate`, or ``None`` for the ungated model);
:func:`lineage_lens.sweep.gating_sweep` calls one per setting. The protocol (:class:`Evaluator`,
:class:`Outcome`, :class:`PerExample`) belongs to the sweep and is defined in
:mod:`lineage_lens.sweep`; this module re-exports it. An :class:`Outcome` holds

* ``metrics`` -- the setting's summary (one table row), and ``groups`` -- per-group rows (HaluEval:
  one per answer seed; POPE: one per split);
* ``paired`` -- per-example values of each statistic the sweep compares between settings scored on
  the same examples (:class:`PerExample`: a mean, any statistic of several columns such as CHAIR_i
  of per-caption counts, or an AUROC).

The adapters here wrap the library's evaluations with their options as typed fields:

* :class:`HaluEvalJudgement` -- :func:`~lineage_lens.evals.halueval.evaluate_halueval`; paired
  statistic ``auroc`` (of ``log p(yes) - log p(no)`` per distinct prompt, see
  :func:`distinct_margins`), or ``accuracy_all`` when generating;
* :class:`PopeAnswers` -- :func:`~lineage_lens.evals.pope.evaluate_pope`; per-split metrics, the
  accuracy pooled over splits with Wilson intervals, paired statistic ``pope_accuracy``
  (per-question correctness);
* :class:`ChairCaptions` -- :func:`~lineage_lens.evals.chair.evaluate_chair`; CHAIR metrics, a
  bootstrap interval of CHAIR_i over captions, paired statistic ``chair_i`` (per-caption
  hallucinated / mentioned counts, :func:`~lineage_lens.stats.chair_i_of_counts`).

The context-following evaluator of the zoo lives in :mod:`lineage_lens.evals.context`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lineage_lens.evals._common import Mode, ResultCache
from lineage_lens.stats import (
    bootstrap_ci,
    chair_i_of_counts,
    proportion_ci,
)
from lineage_lens.sweep import Evaluator, Outcome, PerExample

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from lineage_lens.data import HaluEvalRow
    from lineage_lens.evals.chair import Counting, ObjectVocabulary
    from lineage_lens.gating import TruthGate


def distinct_margins(examples: pd.DataFrame) -> pd.Series:
    """HaluEval ``log p(Yes) - log p(No)`` per distinct prompt ``(row_id, hallucinated)``,
    sorted (answer seeds that show a row the same answer repeat the same prompt)."""
    first = examples.drop_duplicates(["row_id", "hallucinated"]).set_index(
        ["row_id", "hallucinated"]
    )
    return (first["log_p_yes"] - first["log_p_no"]).sort_index()


@dataclass(frozen=True)
class HaluEvalJudgement:
    """HaluEval QA judgement (:func:`~lineage_lens.evals.halueval.evaluate_halueval`) as a sweep
    evaluator; the fields are that function's options."""

    task = "halueval"
    rows: Sequence[HaluEvalRow] | None = None
    seeds: Sequence[int] = (0, 1, 2)
    mode: Mode = "logprob"
    n_probe: int = 292
    exclude_ids: Sequence[str] | None = None
    limit: int | None = None
    batch_size: int = 8
    instruction: str | None = None
    cache: ResultCache | None = None
    progress: bool = False

    def inputs_identity(self) -> str:
        """The content identity of the rows and instruction this evaluator reads
        (:func:`~lineage_lens.evals.halueval.halueval_inputs_identity`)."""
        from lineage_lens.evals.halueval import halueval_inputs_identity

        return halueval_inputs_identity(
            self.rows,
            n_probe=self.n_probe,
            exclude_ids=self.exclude_ids,
            limit=self.limit,
            instruction=self.instruction,
        )

    def __call__(self, model: TransformerBridge, gate: TruthGate | None) -> Outcome:
        from lineage_lens.evals.halueval import evaluate_halueval

        res = evaluate_halueval(
            model,
            self.rows,
            seeds=self.seeds,
            mode=self.mode,
            gate=gate,
            n_probe=self.n_probe,
            exclude_ids=self.exclude_ids,
            limit=self.limit,
            batch_size=self.batch_size,
            instruction=self.instruction,
            cache=self.cache,
            progress=self.progress,
        )
        groups = res.metrics.to_dict(orient="records")
        if res.config["mode"] == "logprob":
            margins = distinct_margins(res.examples)
            truth = margins.index.get_level_values("hallucinated")
            paired = {"auroc": PerExample.auroc(truth, margins.to_numpy(), margins.index)}
        else:
            ex = res.examples
            correct = (ex["answer"] == "yes") == ex["hallucinated"].astype(bool)
            ids = list(zip(ex["seed"], ex["row_id"], strict=True))
            paired = {"accuracy_all": PerExample.mean(correct.to_numpy(dtype=float), ids)}
        return Outcome(res.summary(), paired, groups, {"config": res.config})


def pope_label(split: str | Path) -> str:
    """Column prefix of a POPE split: ``pope_random`` for ``"random"`` and ``.../pope_random.json``,
    ``pope_<stem>`` for other files."""
    stem = Path(split).stem
    return stem if stem.startswith("pope_") else f"pope_{stem}"


@dataclass(frozen=True)
class PopeAnswers:
    """POPE (:func:`~lineage_lens.evals.pope.evaluate_pope`) as a sweep evaluator.

    ``metrics``: the mean over splits (``accuracy``, ``accuracy_std``, ...), per split
    ``<label>_<metric>`` (:func:`pope_label`) with ``<label>_accuracy_ci_low/high`` (Wilson, an
    unparsed answer counting as "no"), and the accuracy pooled over every question
    ``pope_accuracy`` with its Wilson interval and ``pope_n``."""

    task = "pope"
    image_dir: str | Path = ""
    splits: Sequence[str | Path] = ("random", "popular", "adversarial")
    mode: Mode = "logprob"
    prompt_template: str | None = None
    limit: int | None = None
    batch_size: int = 8
    cache: ResultCache | None = None
    progress: bool = False

    def inputs_identity(self) -> str:
        """The content identity of the questions and images this evaluator reads
        (:func:`~lineage_lens.evals.pope.pope_inputs_identity`)."""
        from lineage_lens.evals.pope import pope_inputs_identity

        return pope_inputs_identity(self.image_dir, list(self.splits), limit=self.limit)

    def __call__(self, model: TransformerBridge, gate: TruthGate | None) -> Outcome:
        from lineage_lens.evals.pope import evaluate_pope

        extra = {} if self.prompt_template is None else {"prompt_template": self.prompt_template}
        res = evaluate_pope(
            model,
            self.image_dir,
            list(self.splits),
            mode=self.mode,
            gate=gate,
            limit=self.limit,
            batch_size=self.batch_size,
            cache=self.cache,
            progress=self.progress,
            **extra,
        )
        ex = res.examples
        correct = ((ex["answer"] == "yes") == ex["label"].astype(bool)).to_numpy(dtype=float)
        metrics: dict[str, Any] = res.summary()
        groups = res.metrics.to_dict(orient="records")
        for g in groups:
            label = pope_label(g["split"])
            metrics |= {f"{label}_{k}": v for k, v in g.items() if k != "split"}
            hits = correct[(ex["split"] == g["split"]).to_numpy()]
            _, low, high = proportion_ci(int(hits.sum()), len(hits))
            metrics |= {f"{label}_accuracy_ci_low": low, f"{label}_accuracy_ci_high": high}
        _, low, high = proportion_ci(int(correct.sum()), len(correct))
        metrics |= {
            "pope_accuracy": float(correct.mean()),
            "pope_accuracy_ci_low": low,
            "pope_accuracy_ci_high": high,
            "pope_n": len(correct),
        }
        ids = list(zip(ex["split"], ex["question_id"], strict=True))
        paired = {"pope_accuracy": PerExample.mean(correct, ids)}
        return Outcome(metrics, paired, groups, {"config": res.config})


@dataclass(frozen=True)
class ChairCaptions:
    """CHAIR of generated captions (:func:`~lineage_lens.evals.chair.evaluate_chair`) as a sweep
    evaluator. ``metrics``: the CHAIR metrics and, given mentions in two or more captions,
    ``chair_i_ci_low/high`` (percentile bootstrap over captions, ``n_resamples``, seed 0)."""

    task = "chair"
    image_dir: str | Path = ""
    image_ids: Sequence[str | int] | None = None
    vocabulary: ObjectVocabulary | None = None
    ground_truth: str | Path | None = None
    counting: Counting = "every_mention"
    file_pattern: str | None = None
    prompt: str | None = None
    prompt_template: str | None = None
    max_new_tokens: int | None = None
    limit: int | None = None
    batch_size: int = 4
    n_resamples: int = 2000
    cache: ResultCache | None = None
    progress: bool = False

    def inputs_identity(self) -> str:
        """The content identity of what this evaluator reads: the bytes of each image captioned
        (found as :func:`~lineage_lens.evals.chair.evaluate_chair` finds them), the ground truth
        and the vocabulary."""
        from lineage_lens.evals.chair import find_image_files, load_ground_truth
        from lineage_lens.identity import file_digest, file_digests, record_digest

        gt = self.ground_truth
        ids = self.image_ids
        if ids is None:  # as evaluate_chair: the ground truth's ids, else the vendored ones
            if isinstance(gt, Mapping):
                gt_ids: Any = gt
            elif gt is None:
                gt_ids = load_ground_truth()
            else:
                gt_ids = load_ground_truth(gt, self.vocabulary)
            ids = sorted(gt_ids, key=lambda s: (len(str(s)), str(s)))
        names = [str(i) for i in ids][: self.limit]
        files = find_image_files(self.image_dir, names, self.file_pattern)
        digests = file_digests([files[i] for i in names])
        if isinstance(gt, (str, Path)):
            truth: Any = file_digest(gt)
        else:
            mapping = load_ground_truth() if gt is None else gt
            truth = {str(k): sorted(v) for k, v in mapping.items()}
        vocabulary = "coco" if self.vocabulary is None else dataclasses.asdict(self.vocabulary)
        return record_digest(
            {
                "images": dict(zip(names, digests, strict=True)),
                "ground_truth": truth,
                "vocabulary": vocabulary,
            }
        )

    def __call__(self, model: TransformerBridge, gate: TruthGate | None) -> Outcome:
        from lineage_lens.evals.chair import evaluate_chair

        optional = {
            "file_pattern": self.file_pattern,
            "prompt": self.prompt,
            "prompt_template": self.prompt_template,
            "max_new_tokens": self.max_new_tokens,
        }
        res = evaluate_chair(
            model,
            self.image_dir,
            self.image_ids,
            vocabulary=self.vocabulary,
            ground_truth=self.ground_truth,
            counting=self.counting,
            gate=gate,
            limit=self.limit,
            batch_size=self.batch_size,
            cache=self.cache,
            progress=self.progress,
            **{k: v for k, v in optional.items() if v is not None},
        )
        caps = res.per_caption
        hallucinated = caps["n_hallucinated"].to_numpy(dtype=float)
        mentioned = caps["n_mentions"].to_numpy(dtype=float)
        metrics: dict[str, Any] = dict(res.metrics)
        if mentioned.sum() > 0 and len(mentioned) > 1:
            low, high = bootstrap_ci(
                chair_i_of_counts, (hallucinated, mentioned), n_resamples=self.n_resamples
            )
            metrics |= {"chair_i_ci_low": low, "chair_i_ci_high": high}
        paired = {
            "chair_i": PerExample(
                (hallucinated, mentioned),
                chair_i_of_counts,
                None,
                tuple(caps["image_id"].astype(str)),
            )
        }
        return Outcome(metrics, paired, [dict(res.metrics)], {"config": res.config})


__all__ = [
    "ChairCaptions",
    "Evaluator",
    "HaluEvalJudgement",
    "Outcome",
    "PerExample",
    "PopeAnswers",
    "distinct_margins",
    "pope_label",
]
