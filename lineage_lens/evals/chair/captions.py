"""Generating captions with a model and scoring them with CHAIR (the model-dependent part).

* :func:`generate_captions` -- greedy captions of images by a vision-language model, the paper's
  prompt and length by default (:data:`CAPTION_PROMPT`, :data:`CAPTION_MAX_NEW_TOKENS`);
* :class:`ChairCaptions` -- caption the images, then score them with
  :func:`~lineage_lens.evals.chair.metric.compute_chair`: the evaluation with its options as
  fields, and the sweep evaluator of :func:`lineage_lens.sweep.gating_sweep`;
  :func:`evaluate_chair` is ``ChairCaptions(...).evaluate(model, gate)``.

The model code (:mod:`lineage_lens.evals._common`, :mod:`lineage_lens.images`,
:mod:`lineage_lens.sweep`) is imported when a function runs or a :class:`ChairCaptions` is made,
so importing this module loads no model library.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lineage_lens.errors import ConfigError, DataError
from lineage_lens.evals.chair.io import Caption, find_image_files, load_ground_truth
from lineage_lens.evals.chair.metric import COUNTINGS, ChairResult, Counting, compute_chair
from lineage_lens.evals.chair.vocabulary import ObjectVocabulary
from lineage_lens.stats import chair_i_of_counts

if TYPE_CHECKING:
    from lineage_lens.evals._common import ResultCache
    from lineage_lens.gating import TruthGate
    from lineage_lens.sweep import Outcome

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


@dataclass(frozen=True)
class ChairCaptions:
    """CHAIR of captions a vision-language model generates: the evaluation and its options as
    fields.

    :meth:`evaluate` captions the images with :func:`generate_captions` and scores them with
    :func:`~lineage_lens.evals.chair.metric.compute_chair` (as :func:`evaluate_chair` does);
    calling the object, ``chair(model, gate)``, is the sweep evaluator of
    :func:`lineage_lens.sweep.gating_sweep`: ``metrics`` the CHAIR metrics and, given mentions
    in two or more captions, ``chair_i_ci_low/high`` (percentile bootstrap over captions,
    ``n_resamples``, seed 0); the paired statistic ``chair_i`` (per-caption hallucinated /
    mentioned counts, :func:`~lineage_lens.stats.chair_i_of_counts`).

    Args:
        image_dir: folder of the images, each found by :func:`find_image_files`.
        image_ids: which images (default: the ground truth's ids, sorted; the vendored COCO
            ground truth's without one).
        vocabulary: the object vocabulary (default: COCO's).
        ground_truth: ``{image_id: [classes]}`` or its JSON file (default: vendored COCO).
        counting: ``"every_mention"`` (the reference CHAIR) or ``"once_per_caption"``.
        file_pattern: the images' file names as ``file_pattern.format(image_id=...)`` (default:
            COCO's names, else the ids' numbers).
        prompt, max_new_tokens: the paper's "Please describe this image in detail." and 64.
        prompt_template: ``{image}``/``{question}`` template (default: LLaVA-1.5's).
        limit: caption only the first ``limit`` images.
        batch_size: images per forward pass.
        n_resamples: of the bootstrap interval of CHAIR_i (sweep evaluator only).
        cache: a :class:`~lineage_lens.evals._common.ResultCache` or its path.
        progress: show a progress bar.

    Raises:
        ConfigError: on construction, for an unknown ``counting``, an empty prompt, a template
            without ``{image}`` once and ``{question}``, or a ``limit``, ``batch_size``,
            ``max_new_tokens`` or ``n_resamples`` that is not a positive integer.
    """

    task = "chair"
    image_dir: str | Path
    image_ids: Sequence[str | int] | None = None
    vocabulary: ObjectVocabulary | None = None
    ground_truth: str | Path | Mapping[str, Iterable[str]] | None = None
    counting: Counting = "every_mention"
    file_pattern: str | None = None
    prompt: str = CAPTION_PROMPT
    prompt_template: str | None = None
    max_new_tokens: int = CAPTION_MAX_NEW_TOKENS
    limit: int | None = None
    batch_size: int = 4
    n_resamples: int = 2000
    cache: ResultCache | str | Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        # the checks live with the model code, imported when a ChairCaptions is made
        from lineage_lens.errors import check_count
        from lineage_lens.evals._common import check_sequence

        if self.image_ids is not None:
            object.__setattr__(self, "image_ids", check_sequence(self.image_ids, "image_ids"))
        if self.counting not in COUNTINGS:
            raise ConfigError(f"counting must be one of {COUNTINGS}, got {self.counting!r}.")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ConfigError(f"prompt must be a non-empty string, got {self.prompt!r}.")
        template = self.prompt_template
        if template is not None and (
            not isinstance(template, str)
            or template.count("{image}") != 1
            or "{question}" not in template
        ):
            raise ConfigError(
                f"prompt_template must contain {{image}} once and {{question}}, got {template!r}."
            )
        check_count(self.max_new_tokens, "max_new_tokens")
        check_count(self.limit, "limit", optional=True)
        check_count(self.batch_size, "batch_size")
        check_count(self.n_resamples, "n_resamples")

    def inputs_identity(self) -> str:
        """The content identity of what this evaluation reads: the bytes of each image captioned
        (found as :meth:`evaluate` finds them), the ground truth and the vocabulary."""
        from lineage_lens.identity import file_digest, file_digests, record_digest

        gt = self.ground_truth
        ids = self.image_ids
        if ids is None:  # as evaluate: the ground truth's ids, else the vendored ones
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

    def evaluate(self, model: Any, gate: TruthGate | None = None) -> ChairResult:
        """Caption the images with ``model`` (its language model gated with ``gate``, a
        :class:`~lineage_lens.gating.TruthGate`, if given) and score the captions with CHAIR."""
        image_ids = self.image_ids
        ground_truth = self.ground_truth
        if image_ids is None and ground_truth is not None:
            gt_ids = (
                load_ground_truth(ground_truth, self.vocabulary)
                if isinstance(ground_truth, (str, Path))
                else ground_truth
            )
            image_ids = sorted(gt_ids, key=lambda s: (len(str(s)), str(s)))
        captions = generate_captions(
            model,
            self.image_dir,
            image_ids,
            file_pattern=self.file_pattern,
            prompt=self.prompt,
            prompt_template=self.prompt_template,
            max_new_tokens=self.max_new_tokens,
            gate=gate,
            limit=self.limit,
            batch_size=self.batch_size,
            cache=self.cache,
            progress=self.progress,
        )
        result = compute_chair(
            captions, vocabulary=self.vocabulary, ground_truth=ground_truth, counting=self.counting
        )
        result.config["gate"] = None if gate is None else gate.params()
        return result

    def __call__(self, model: Any, gate: TruthGate | None) -> Outcome:
        """The sweep evaluator: :meth:`evaluate` as an :class:`~lineage_lens.sweep.Outcome`."""
        from lineage_lens.stats import bootstrap_ci
        from lineage_lens.sweep import Outcome, PerExample

        res = self.evaluate(model, gate)
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


def evaluate_chair(
    model: Any,
    image_dir: str | Path,
    image_ids: Sequence[str | int] | None = None,
    *,
    gate: TruthGate | None = None,
    **options: Any,
) -> ChairResult:
    """Caption images with :func:`generate_captions` and score them with :func:`compute_chair`:
    ``ChairCaptions(image_dir, image_ids, **options).evaluate(model, gate)``.

    Args:
        model: a vision-language bridge.
        image_dir: folder of the images.
        image_ids: which images (default: the ground truth's ids).
        gate: a TruthGate applied while generating.
        options: the other fields of :class:`ChairCaptions` (``vocabulary``, ``ground_truth``,
            ``counting``, ``file_pattern``, ``prompt``, ``prompt_template``,
            ``max_new_tokens``, ``limit``, ``batch_size``, ``cache``, ``progress``, ...); an
            unknown one is a :class:`ConfigError`.
    """
    from lineage_lens.evals._common import check_options

    check_options(ChairCaptions, options, "evaluate_chair")
    return ChairCaptions(image_dir=image_dir, image_ids=image_ids, **options).evaluate(model, gate)
