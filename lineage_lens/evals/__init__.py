"""Evaluations: HaluEval QA judgement, POPE and CHAIR, with optional TruthGate sweeps.

* :func:`evaluate_halueval` -- is the shown answer hallucinated? (probing rows excluded)
* :func:`evaluate_pope` -- "Is there a <object> in the image?" on POPE-schema files
* :func:`compute_chair` / :func:`evaluate_chair` -- object hallucination in captions
* :func:`run_sweep` -- baseline vs gated vs control settings; results JSON/CSV/plot + cache
* :func:`paired_bootstrap_delta`, :func:`paired_auroc_delta`, :func:`proportion_ci` -- how sure a
  change or a rate is (paired bootstrap over the same examples; Wilson interval)
* :func:`run_prompts` over :class:`PromptItem` s, :func:`encode_chat`, :func:`yes_no_token_ids`,
  :func:`model_fingerprint` -- the building blocks of a yes/no evaluator (batched log-prob or
  greedy runs, gated or not, resumable through a :class:`ResultCache` keyed by the model and
  each prompt's content: its tokens and image bytes)
"""

from lineage_lens.evals._common import (
    EvalResult,
    PromptItem,
    ResultCache,
    encode_chat,
    model_fingerprint,
    parse_yes_no,
    run_prompts,
    yes_no_token_ids,
)
from lineage_lens.evals.chair import (
    Caption,
    ChairResult,
    ObjectVocabulary,
    coco_ground_truth,
    compute_chair,
    evaluate_chair,
    generate_captions,
    load_captions,
    load_ground_truth,
    singularize,
)
from lineage_lens.evals.halueval import evaluate_halueval
from lineage_lens.evals.pope import evaluate_pope, load_pope
from lineage_lens.evals.runner import plot_sweep, run_sweep
from lineage_lens.stats import (
    binary_metrics,
    chair_i_of_counts,
    paired_auroc_delta,
    paired_bootstrap_delta,
    proportion_ci,
)

__all__ = [
    "Caption",
    "ChairResult",
    "EvalResult",
    "ObjectVocabulary",
    "PromptItem",
    "ResultCache",
    "binary_metrics",
    "chair_i_of_counts",
    "coco_ground_truth",
    "compute_chair",
    "encode_chat",
    "evaluate_chair",
    "evaluate_halueval",
    "evaluate_pope",
    "generate_captions",
    "load_captions",
    "load_ground_truth",
    "load_pope",
    "model_fingerprint",
    "paired_auroc_delta",
    "paired_bootstrap_delta",
    "parse_yes_no",
    "plot_sweep",
    "proportion_ci",
    "run_prompts",
    "run_sweep",
    "singularize",
    "yes_no_token_ids",
]
