"""POPE: polling-based object probing ("Is there a <object> in the image?" yes/no).

The vendored COCO question files (``random``, ``popular``, ``adversarial``; JSON lines with
``question_id, image, text, label``) are read by :func:`load_pope`; any file in the same schema
works too (for example the zoo's rendered scenes), and so does a ``datasets.Dataset`` in these
columns. Images come from a folder you give (COCO val2014 for the vendored files); missing images
raise :class:`DataError` with how many and which folder, before any model work.

Answers are scored by yes/no next-token log-probability (default) or greedy generation + parse
(unparsed outputs counted, see :mod:`lineage_lens.evals._common`). "yes" is the positive class.
Metrics are reported per split, and their mean by :meth:`EvalResult.summary`.

:class:`PopeAnswers` holds the evaluation's options as fields (checked when it is made); its
``evaluate(model, gate)`` runs it and the object is a sweep evaluator
(:func:`lineage_lens.sweep.gating_sweep`). :func:`evaluate_pope` is its ``evaluate``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lineage_lens._resources import resource_path
from lineage_lens.data import RecordLocation, read_json_lines
from lineage_lens.errors import ConfigError, DataError, check_count
from lineage_lens.evals._common import (
    EvalResult,
    Mode,
    PromptItem,
    ResultCache,
    check_mode,
    check_options,
    check_sequence,
    gate_description,
    maybe_cache,
    run_prompts,
)
from lineage_lens.hf_datasets import dataset_rows, is_dataset, to_dataset
from lineage_lens.identity import file_digests, record_digest
from lineage_lens.images import (
    LLAVA_TEMPLATE,
    encode_image_prompt,
    image_inputs,
)
from lineage_lens.models import model_label
from lineage_lens.stats import binary_metrics, proportion_ci
from lineage_lens.sweep import Outcome, PerExample

if TYPE_CHECKING:
    from datasets import Dataset
    from transformer_lens.model_bridge import TransformerBridge

    from lineage_lens.gating import TruthGate

log = logging.getLogger(__name__)

POPE_SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")
POPE_FIELDS = ("question_id", "image", "text", "label")


@dataclass(frozen=True)
class PopeQuestion:
    """One POPE question: ``label`` is ``True`` for "yes" (the object is in the image)."""

    question_id: str
    image: str
    text: str
    label: bool

    def to_row(self) -> dict[str, str]:
        """This question in the POPE columns (``label`` ``"yes"``/``"no"``), for ``to_dataset``."""
        return {
            "question_id": self.question_id,
            "image": self.image,
            "text": self.text,
            "label": "yes" if self.label else "no",
        }


def parse_pope_question(obj: dict[str, Any], where: RecordLocation) -> PopeQuestion:
    """One :class:`PopeQuestion` from a JSON line or a dataset row, or a ``DataError`` at
    ``where`` (a missing field, a label other than yes/no)."""
    if any(k not in obj for k in POPE_FIELDS):
        raise where.error(f"every {where.unit} needs the fields {', '.join(POPE_FIELDS)}.")
    label = str(obj["label"]).strip().lower()
    if label not in ("yes", "no"):
        raise where.error(f"label {obj['label']!r} is neither 'yes' nor 'no'.")
    return PopeQuestion(
        str(obj["question_id"]), str(obj["image"]), str(obj["text"]), label == "yes"
    )


def pope_path(split: str) -> Path:
    """The vendored COCO question file of ``split`` (random, popular or adversarial)."""
    if split not in POPE_SPLITS:
        raise ConfigError(f"unknown POPE split {split!r}; use {', '.join(POPE_SPLITS)} or a path.")
    return resource_path("pope", f"coco_pope_{split}.json")


def load_pope(
    split_or_path: str | Path | Dataset, *, limit: int | None = None, as_dataset: bool = False
) -> list[PopeQuestion] | Dataset:
    """Read a POPE question file (a vendored split name or a path; JSON lines) or Dataset.

    Each line (or row of a ``datasets.Dataset``) needs ``question_id``, ``image``, ``text`` and
    ``label`` (``"yes"`` or ``"no"``). ``as_dataset=True`` returns a ``datasets.Dataset`` in
    these columns instead of :class:`PopeQuestion` records.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be positive, got {limit}.")
    p: Path | None = None
    if is_dataset(split_or_path):
        rows = dataset_rows(split_or_path, what="POPE dataset", columns=POPE_FIELDS)
        records = ((RecordLocation(row=i), obj) for i, obj in itertools.islice(rows, limit))
    else:
        name = str(split_or_path)
        p = pope_path(name) if name in POPE_SPLITS else Path(split_or_path)
        if not p.is_file():
            raise DataError(
                "POPE question file not found (and not a vendored split: "
                f"{', '.join(POPE_SPLITS)}).",
                path=p,
            )
        records = ((RecordLocation(p, ln), obj) for ln, obj in read_json_lines(p, limit))
    out = [parse_pope_question(obj, where) for where, obj in records]
    if not out:
        raise DataError("POPE question file holds no questions.", path=p)
    ids = [q.question_id for q in out]
    if len(set(ids)) != len(ids):
        where = "dataset" if p is None else "file"
        raise DataError(f"question_id values repeat; they must be unique per {where}.", path=p)
    return to_dataset(out) if as_dataset else out


def _named_splits(
    splits: Sequence[str | Path | Dataset] | Mapping[str, str | Path | Dataset] | Dataset,
) -> dict[str, str | Path | Dataset]:
    """Split name -> vendored split, file or Dataset; a Dataset is named by its ``split`` (else
    ``dataset`` or ``dataset-<i>``)."""
    if isinstance(splits, Mapping):
        return {str(k): v for k, v in splits.items()}
    items = [splits] if is_dataset(splits) else list(splits)
    named: dict[str, str | Path | Dataset] = {}
    for i, s in enumerate(items):
        if not is_dataset(s):
            named[str(s)] = s
            continue
        name = str(getattr(s, "split", None) or ("dataset" if len(items) == 1 else f"dataset-{i}"))
        if name in named:
            raise ConfigError(
                f"two POPE datasets are named {name!r}; pass a mapping {{name: dataset}}."
            )
        named[name] = s
    return named


def check_images(questions: Sequence[PopeQuestion], image_dir: str | Path) -> Path:
    """Raise :class:`DataError` naming how many images are missing from ``image_dir``."""
    folder = Path(image_dir)
    if not folder.is_dir():
        raise DataError(
            "image folder not found; pass the folder holding the images (COCO val2014 for the "
            "vendored POPE files).",
            path=folder,
        )
    names = sorted({q.image for q in questions})
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(names)} images are missing from {folder} "
            f"(e.g. {', '.join(missing[:3])}); download them (COCO val2014 for the vendored "
            "POPE files) or pass the right folder."
        )
    return folder


def pope_inputs_identity(
    image_dir: str | Path,
    splits: Sequence[str | Path | Dataset]
    | Mapping[str, str | Path | Dataset]
    | Dataset = POPE_SPLITS,
    *,
    limit: int | None = None,
) -> str:
    """The content identity of what :func:`evaluate_pope` reads with these arguments: every
    split's name and questions (id, image name, text, label) and the bytes of every image they
    name (:func:`lineage_lens.identity.file_digests`, indexed). A question file edited in place,
    or an image whose pixels change under the same name, gives a new identity. Missing images
    raise :class:`DataError` as in :func:`evaluate_pope`."""
    per_split = {name: load_pope(s, limit=limit) for name, s in _named_splits(splits).items()}
    folder = check_images([q for qs in per_split.values() for q in qs], image_dir)
    names = sorted({q.image for qs in per_split.values() for q in qs})
    digests = file_digests([folder / n for n in names])
    return record_digest(
        {
            "questions": {split: [q.to_row() for q in qs] for split, qs in per_split.items()},
            "images": dict(zip(names, digests, strict=True)),
        }
    )


def pope_label(split: str | Path) -> str:
    """Column prefix of a POPE split: ``pope_random`` for ``"random"`` and ``.../pope_random.json``,
    ``pope_<stem>`` for other files."""
    stem = Path(split).stem
    return stem if stem.startswith("pope_") else f"pope_{stem}"


@dataclass(frozen=True)
class PopeAnswers:
    """POPE yes/no object probing of a vision-language model: the evaluation and its options
    as fields.

    :meth:`evaluate` runs it (as :func:`evaluate_pope` does); calling the object,
    ``pope(model, gate)``, is the sweep evaluator of :func:`lineage_lens.sweep.gating_sweep`:
    ``metrics`` the mean over splits (``accuracy``, ``accuracy_std``, ...), per split
    ``<label>_<metric>`` (:func:`pope_label`) with ``<label>_accuracy_ci_low/high`` (Wilson, an
    unparsed answer counting as "no"), and the accuracy pooled over every question
    ``pope_accuracy`` with its Wilson interval and ``pope_n``; one group per split; the paired
    statistic ``pope_accuracy`` (per-question correctness).

    Args:
        image_dir: folder holding the questions' images.
        splits: vendored split names and/or paths of files in the POPE schema, or
            ``datasets.Dataset`` objects in its columns (named by their ``split``), or a mapping
            split name -> any of these; one name or path alone is one split.
        mode: ``"logprob"`` or ``"generate"``.
        prompt_template: text with ``{image}`` once and ``{question}`` (default: LLaVA-1.5's).
        limit: questions per split (the first ``limit``).
        batch_size, max_new_tokens: batching and generation length.
        cache: a :class:`ResultCache` or its path; finished examples are reused.
        progress: show a progress bar.

    Raises:
        ConfigError: on construction, for no splits, a mode other than ``logprob``/``generate``,
            a template without ``{image}`` once and ``{question}``, or a ``limit``,
            ``batch_size`` or ``max_new_tokens`` that is not a positive integer.
    """

    task = "pope"
    image_dir: str | Path
    splits: Sequence[str | Path | Dataset] | Mapping[str, str | Path | Dataset] | Dataset = (
        POPE_SPLITS
    )
    mode: Mode = "logprob"
    prompt_template: str = LLAVA_TEMPLATE
    limit: int | None = None
    batch_size: int = 8
    max_new_tokens: int = 8
    cache: ResultCache | str | Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        splits = self.splits
        if isinstance(splits, (str, Path)):
            splits = (splits,)
        elif not isinstance(splits, Mapping) and not is_dataset(splits):
            splits = check_sequence(splits, "splits")
        if not is_dataset(splits) and not splits:
            raise ConfigError("give at least one POPE split or file (splits=).")
        object.__setattr__(self, "splits", splits)
        check_mode(self.mode)
        template = self.prompt_template
        if (
            not isinstance(template, str)
            or template.count("{image}") != 1
            or "{question}" not in template
        ):
            raise ConfigError(
                f"prompt_template must contain {{image}} once and {{question}}, got {template!r}."
            )
        check_count(self.limit, "limit", optional=True)
        check_count(self.batch_size, "batch_size")
        check_count(self.max_new_tokens, "max_new_tokens")

    def inputs_identity(self) -> str:
        """The content identity of the questions and images this evaluation reads
        (:func:`pope_inputs_identity`)."""
        return pope_inputs_identity(self.image_dir, self.splits, limit=self.limit)

    def evaluate(self, model: TransformerBridge, gate: TruthGate | None = None) -> EvalResult:
        """Evaluate ``model`` (its language model gated with ``gate``, a
        :class:`~lineage_lens.gating.TruthGate`, if given) on the POPE questions.

        Returns:
            an :class:`EvalResult` whose ``metrics`` has one row per split.
        """
        mode = self.mode
        limit = self.limit
        prompt_template = self.prompt_template
        per_split = {
            name: load_pope(s, limit=limit) for name, s in _named_splits(self.splits).items()
        }
        folder = check_images([q for qs in per_split.values() for q in qs], self.image_dir)
        img_in = image_inputs(model)  # the family's image tokens and inputs (lineage_lens.images)
        tok = model.tokenizer
        items: list[PromptItem] = []
        for split, qs in per_split.items():
            for q in qs:
                path = str(folder / q.image)
                ids = encode_image_prompt(tok, q.text, img_in, prompt_template, image=path)
                items.append(PromptItem(f"{split}:{q.question_id}", tuple(ids), path))

        setting = {"task": "pope", "template": prompt_template, "image_dir": str(folder)}
        with maybe_cache(self.cache) as c:
            records = run_prompts(
                model,
                items,
                mode=mode,
                batch_size=self.batch_size,
                max_new_tokens=self.max_new_tokens,
                gate=gate,
                cache=c,
                setting=setting,
                progress=self.progress,
                desc=f"POPE {mode}",
                image_inputs=img_in,
            )
        ex_rows = []
        for split, qs in per_split.items():
            for q in qs:
                rec = records[f"{split}:{q.question_id}"]
                ex_rows.append(
                    {
                        "split": split,
                        "question_id": q.question_id,
                        "image": q.image,
                        "question": q.text,
                        "label": q.label,
                        "answer": rec.get("answer"),
                        "log_p_yes": rec.get("log_p_yes"),
                        "log_p_no": rec.get("log_p_no"),
                        "text": rec.get("text"),
                    }
                )
        examples = pd.DataFrame(ex_rows)
        metric_rows = []
        for split, grp in examples.groupby("split", sort=False):
            pred = [None if pd.isna(a) else a == "yes" for a in grp["answer"]]
            margin = None
            if mode == "logprob":
                margin = (grp["log_p_yes"] - grp["log_p_no"]).to_numpy(dtype=float)
            metric_rows.append(
                {"split": split, **binary_metrics(grp["label"].tolist(), pred, margin)}
            )
        config = {
            "model": model_label(model),
            "mode": mode,
            "splits": list(per_split),
            "image_dir": str(folder),
            "template": prompt_template,
            "gate": gate_description(gate),
            "limit": limit,
        }
        return EvalResult("pope", pd.DataFrame(metric_rows), examples, config)

    def __call__(self, model: TransformerBridge, gate: TruthGate | None) -> Outcome:
        """The sweep evaluator: :meth:`evaluate` as an :class:`~lineage_lens.sweep.Outcome`."""
        res = self.evaluate(model, gate)
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


def evaluate_pope(
    model: TransformerBridge,
    image_dir: str | Path,
    splits: Sequence[str | Path | Dataset]
    | Mapping[str, str | Path | Dataset]
    | Dataset = POPE_SPLITS,
    *,
    gate: TruthGate | None = None,
    **options: Any,
) -> EvalResult:
    """Evaluate a vision-language ``model`` on POPE question files:
    ``PopeAnswers(image_dir, splits, **options).evaluate(model, gate)``.

    Args:
        model: a vision-language bridge of a family in :data:`lineage_lens.images.IMAGE_INPUT_BUILDERS`.
        image_dir: folder holding the questions' images.
        splits: vendored split names, POPE-schema files or Datasets (see :class:`PopeAnswers`).
        gate: a TruthGate applied to the language model during the evaluation.
        options: the other fields of :class:`PopeAnswers` (``mode``, ``prompt_template``,
            ``limit``, ``batch_size``, ``max_new_tokens``, ``cache``, ``progress``); an unknown
            one is a :class:`ConfigError`.

    Returns:
        an :class:`EvalResult` whose ``metrics`` has one row per split.
    """
    check_options(PopeAnswers, options, "evaluate_pope")
    return PopeAnswers(image_dir=image_dir, splits=splits, **options).evaluate(model, gate)
