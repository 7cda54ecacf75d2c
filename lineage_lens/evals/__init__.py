"""Evaluations: HaluEval QA judgement, POPE and CHAIR, with optional TruthGate sweeps.

* :class:`HaluEvalJudgement` / :func:`evaluate_halueval` -- is the shown answer hallucinated?
  (probing rows excluded)
* :class:`PopeAnswers` / :func:`evaluate_pope` -- "Is there a <object> in the image?" on
  POPE-schema files
* :func:`compute_chair`, :class:`ChairCaptions` / :func:`evaluate_chair` -- object hallucination
  in captions

Each class holds one evaluation's options as fields (checked when it is made): its
``evaluate(model, gate)`` runs the evaluation, and the object itself is a sweep evaluator of
:func:`lineage_lens.sweep.gating_sweep` (baseline vs gated vs control settings, with result files
and a resumable cache given ``out_dir``). Each function is its class's ``evaluate`` with the
options as keywords.

* :func:`paired_bootstrap_delta`, :func:`paired_auroc_delta`, :func:`proportion_ci` -- how sure a
  change or a rate is (paired bootstrap over the same examples; Wilson interval)
* :func:`run_prompts` over :class:`PromptItem` s, :func:`encode_chat`, :func:`yes_no_token_ids`,
  :func:`model_fingerprint` -- the building blocks of a yes/no evaluator (batched log-prob or
  greedy runs, gated or not, resumable through a :class:`ResultCache` keyed by the model and
  each prompt's content: its tokens and image bytes)

The names load on first use, so importing a model-free part (the CHAIR metric) through this
package imports no model code.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module that defines it.
_LAZY: dict[str, str] = {
    "Caption": "lineage_lens.evals.chair",
    "ChairCaptions": "lineage_lens.evals.chair",
    "ChairResult": "lineage_lens.evals.chair",
    "EvalResult": "lineage_lens.evals._common",
    "HaluEvalJudgement": "lineage_lens.evals.halueval",
    "ObjectVocabulary": "lineage_lens.evals.chair",
    "PopeAnswers": "lineage_lens.evals.pope",
    "PromptItem": "lineage_lens.evals._common",
    "ResultCache": "lineage_lens.evals._common",
    "binary_metrics": "lineage_lens.stats",
    "chair_i_of_counts": "lineage_lens.stats",
    "coco_ground_truth": "lineage_lens.evals.chair",
    "compute_chair": "lineage_lens.evals.chair",
    "encode_chat": "lineage_lens.evals._common",
    "evaluate_chair": "lineage_lens.evals.chair",
    "evaluate_halueval": "lineage_lens.evals.halueval",
    "evaluate_pope": "lineage_lens.evals.pope",
    "generate_captions": "lineage_lens.evals.chair",
    "load_captions": "lineage_lens.evals.chair",
    "load_ground_truth": "lineage_lens.evals.chair",
    "load_pope": "lineage_lens.evals.pope",
    "model_fingerprint": "lineage_lens.evals._common",
    "paired_auroc_delta": "lineage_lens.stats",
    "paired_bootstrap_delta": "lineage_lens.stats",
    "parse_yes_no": "lineage_lens.evals._common",
    "proportion_ci": "lineage_lens.stats",
    "run_prompts": "lineage_lens.evals._common",
    "singularize": "lineage_lens.evals.chair",
    "yes_no_token_ids": "lineage_lens.evals._common",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
