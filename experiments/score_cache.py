"""Truth Scores of a model on probing examples, cached on disk by the content of every input.

The experiments that are not a call of :func:`lineage_lens.report.lineage_report` (which caches its
own steps) score models here: the key is the content of the model (every byte of its files,
:func:`lineage_lens.report.model_identity`), of the examples (text, labels and image pixels or file
bytes, :func:`lineage_lens.report.examples_identity`), the capture condition, the prompt template,
the seed, the random-init twin's seed where one is scored, and a version that changes whenever
capture or probing changes its numbers. A moved or renamed model keeps its scores; a model, an
example or an image that changes by one byte gets new ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from lineage_lens.baselines import random_init_model
from lineage_lens.capture import AnyTemplate
from lineage_lens.data import ProbeExample
from lineage_lens.models import cache_dir, load_model
from lineage_lens.pipeline import score_model
from lineage_lens.report import examples_identity, model_identity
from lineage_lens.scores import TruthScores

log = logging.getLogger(__name__)

#: Bumped whenever capture or probing changes the numbers (v2: shared-prefix capture).
VERSION = 2


def _template_identity(template: AnyTemplate | str | None) -> str | None:
    if template is None or isinstance(template, str):
        return template
    fields = {"type": type(template).__name__, **vars(template)}
    return json.dumps(fields, sort_keys=True, default=repr)  # every field, whatever its type


def cached_scores_key(
    path: Path,
    examples: list[ProbeExample],
    seed: int,
    *,
    condition: str | None = None,
    template: AnyTemplate | str | None = None,
    twin_seed: int | None = None,
) -> str:
    """The cache key of :func:`cached_scores` (see the module's docstring)."""
    parts = {
        "model": model_identity(path),
        "examples": examples_identity(examples),
        "seed": seed,
        "version": VERSION,
    }
    extra = {"condition": condition, "template": _template_identity(template), "twin": twin_seed}
    parts |= {k: v for k, v in extra.items() if v is not None}  # v2 keys stay valid
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def cached_scores(
    name: str,
    path: Path,
    examples: list[ProbeExample],
    *,
    dataset: str,
    condition: str | None = None,
    template: AnyTemplate | str | None = None,
    twin_seed: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
) -> TruthScores:
    """5-fold Truth Scores (seed ``seed``) of the model at ``path`` -- or, with ``twin_seed``, of
    its random-init twin (:func:`lineage_lens.baselines.random_init_model`: the same config and
    tokenizer, fresh weights) -- on ``examples`` captured under ``condition`` with ``template``
    (the library's defaults when ``None``), cached under ``$LINEAGE_LENS_CACHE/scores``."""
    key = cached_scores_key(
        path, examples, seed, condition=condition, template=template, twin_seed=twin_seed
    )
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_")
    file = cache_dir() / "scores" / f"{slug}-{len(examples)}-{key}.npz"
    if file.is_file():
        log.info("%s: Truth Scores from %s", name, file)
        return TruthScores.load(file)
    model = load_model(path) if twin_seed is None else random_init_model(path, seed=twin_seed)
    capture = {"condition": condition, "prompt_template": template}
    capture = {k: v for k, v in capture.items() if v is not None}
    scores, _ = score_model(
        model,
        examples,
        batch_size=batch_size,
        seed=seed,
        dataset=dataset,
        progress=False,
        **capture,
    )
    scores.model = name
    file.parent.mkdir(parents=True, exist_ok=True)
    scores.save(file)
    log.info(
        "%s: mean Truth Score %.3f (best %.3f)", name, scores.accuracy.mean(), scores.accuracy.max()
    )
    return scores
