"""Generating captions with a model and scoring them with CHAIR (the model-dependent part).

* :func:`generate_captions` -- greedy captions of images by a vision-language model, the paper's
  prompt and length by default (:data:`CAPTION_PROMPT`, :data:`CAPTION_MAX_NEW_TOKENS`);
* :func:`evaluate_chair` -- caption the images, then score them with
  :func:`~lineage_lens.evals.chair.metric.compute_chair`.

The model code (:mod:`lineage_lens.evals._common`, :mod:`lineage_lens.images`) is imported when a
function runs, so importing this module loads no model library.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lineage_lens.errors import ConfigError, DataError
from lineage_lens.evals.chair.io import Caption, find_image_files, load_ground_truth
from lineage_lens.evals.chair.metric import ChairResult, Counting, compute_chair
from lineage_lens.evals.chair.vocabulary import ObjectVocabulary

#: The prompt and decoding length of the paper's caption generation.
CAPTION_PROMPT = "Please describe this image in detail."
CAPTION_MAX_NEW_TOKENS = 64


def generate_captions(
    model: Any,
    image_dir: str | Path,
    image_ids: Sequence[str | int] | None = None,
    *,
    file_pattern: str | None = None,
    prompt: str = CAPTION_PROMPT,
    prompt_template: str | None = None,
    max_new_tokens: int = CAPTION_MAX_NEW_TOKENS,
    gate: Any = None,
    limit: int | None = None,
    batch_size: int = 4,
    cache: Any = None,
    progress: bool = True,
) -> list[Caption]:
    """Greedy captions of images by a vision-language ``model`` (the paper's setting by default).

    Args:
        image_dir: folder of the images, each found by :func:`find_image_files` (``file_pattern``
            gives the names as ``file_pattern.format(image_id=...)``; default: COCO's names, else
            the ids' numbers).
        image_ids: which images (default: those of the vendored COCO ground truth, sorted).
        prompt, max_new_tokens: the paper's "Please describe this image in detail." and 64.
        prompt_template: ``{image}``/``{question}`` template (default: LLaVA-1.5's).
        gate: a TruthGate applied while generating.
        limit: caption only the first ``limit`` images.
        cache: a :class:`~lineage_lens.evals._common.ResultCache` or its path.
    """
    from lineage_lens.evals._common import PromptItem, maybe_cache, run_prompts
    from lineage_lens.images import (
        LLAVA_TEMPLATE,
        encode_image_prompt,
        image_inputs,
    )

    if image_ids is None:
        image_ids = sorted(load_ground_truth(), key=lambda s: (len(s), s))
    ids = [str(i) for i in image_ids]
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"limit must be positive, got {limit}.")
        ids = ids[:limit]
    if not ids:
        raise DataError("no images to caption.")
    folder = Path(image_dir)
    files = find_image_files(folder, ids, file_pattern)
    img_in = image_inputs(model)  # the family's image tokens and inputs (lineage_lens.images)
    template = prompt_template or LLAVA_TEMPLATE
    items = [
        PromptItem(
            i,
            tuple(encode_image_prompt(model.tokenizer, prompt, img_in, template, image=files[i])),
            str(files[i]),
        )
        for i in ids
    ]
    setting = {"task": "chair", "prompt": prompt, "template": template, "dir": str(folder)}
    with maybe_cache(cache) as c:
        records = run_prompts(
            model,
            items,
            mode="generate",
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            gate=gate,
            cache=c,
            setting=setting,
            progress=progress,
            desc="captions",
            image_inputs=img_in,
        )
    return [Caption(i, records[i]["text"]) for i in ids]


def evaluate_chair(
    model: Any,
    image_dir: str | Path,
    image_ids: Sequence[str | int] | None = None,
    *,
    vocabulary: ObjectVocabulary | None = None,
    ground_truth: str | Path | Mapping[str, Iterable[str]] | None = None,
    counting: Counting = "every_mention",
    **generate_kwargs: Any,
) -> ChairResult:
    """Caption images with :func:`generate_captions` and score them with :func:`compute_chair`.

    ``image_ids`` default to the ground truth's ids; ``generate_kwargs`` go to
    :func:`generate_captions` (``file_pattern``, ``gate``, ``limit``, ``batch_size``, ...).
    """
    if image_ids is None and ground_truth is not None:
        gt_ids = (
            load_ground_truth(ground_truth, vocabulary)
            if isinstance(ground_truth, (str, Path))
            else ground_truth
        )
        image_ids = sorted(gt_ids, key=lambda s: (len(str(s)), str(s)))
    captions = generate_captions(model, image_dir, image_ids, **generate_kwargs)
    result = compute_chair(
        captions, vocabulary=vocabulary, ground_truth=ground_truth, counting=counting
    )
    gate = generate_kwargs.get("gate")
    result.config["gate"] = None if gate is None else gate.params()
    return result
