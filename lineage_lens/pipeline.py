"""The scoring pipeline in one call: model -> probing examples -> activations -> Truth Scores."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from lineage_lens.activations import HeadActivations
from lineage_lens.capture import collect_head_activations
from lineage_lens.data import ProbeExample, check_two_classes, example_keys
from lineage_lens.errors import check_seed
from lineage_lens.models import model_label
from lineage_lens.probing import Solver, fit_truth_scores
from lineage_lens.scores import TruthScores

log = logging.getLogger(__name__)


def score_model(
    model: TransformerBridge,
    examples: list[ProbeExample],
    *,
    batch_size: int = 16,
    folds: int = 5,
    solver: Solver = "newton",
    seed: int = 0,
    dataset: str = "",
    activations_out: str | Path | None = None,
    **capture: Any,
) -> tuple[TruthScores, HeadActivations]:
    """Truth Scores of every head of ``model`` on ``examples`` (and the activations they came from).

    Checks both classes are present before any model work, captures ``hook_z`` at the answer's last
    token in float32 (``capture`` passes further options to
    :func:`~lineage_lens.capture.collect_head_activations`), then fits the per-head probes,
    identical examples (:func:`~lineage_lens.data.example_keys`) kept in one fold.
    """
    check_two_classes(examples)
    check_seed(seed)  # before the capture, not after it
    capture.setdefault("dtype", torch.float32)
    acts = collect_head_activations(
        model, examples, batch_size=batch_size, out=activations_out, **capture
    )
    # identical examples (prompt text, label, and the image where it is shown) share a fold
    keys = example_keys(examples, images=acts.meta.get("condition") == "image")
    scores = fit_truth_scores(
        acts,
        folds=folds,
        solver=solver,
        seed=seed,
        example_keys=keys,
        model=model_label(model),
        dataset=dataset,
    )
    return scores, acts
