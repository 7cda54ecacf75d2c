"""POPE: polling-based object probing ("Is there a <object> in the image?" yes/no).

The vendored COCO question files (``random``, ``popular``, ``adversarial``; JSON lines with
``question_id, image, text, label``) are read by :func:`load_pope`; any file in the same schema
works too (for example the zoo's rendered scenes). Images come from a folder you give (COCO
val2014 for the vendored files); missing images raise :class:`DataError` with how many and which
folder, before any model work.

Answers are scored by yes/no next-token log-probability (default) or greedy generation + parse
(unparsed outputs counted, see :mod:`lineage_lens.evals._common`). "yes" is the positive class.
Metrics are reported per split, and their mean by :meth:`EvalResult.summary`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from lineage_lens._resources import resource_path
from lineage_lens.data import read_json_lines
from lineage_lens.errors import ConfigError, DataError
from lineage_lens.evals._common import (
    EvalResult,
    Mode,
    PromptItem,
    ResultCache,
    check_mode,
    gate_description,
    maybe_cache,
    run_prompts,
)
from lineage_lens.images import (
    LLAVA_TEMPLATE,
    encode_image_prompt,
    load_pixel_values,
    vision_settings,
)
from lineage_lens.models import model_label
from lineage_lens.stats import binary_metrics

if TYPE_CHECKING:
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


def pope_path(split: str) -> Path:
    """The vendored COCO question file of ``split`` (random, popular or adversarial)."""
    if split not in POPE_SPLITS:
        raise ConfigError(f"unknown POPE split {split!r}; use {', '.join(POPE_SPLITS)} or a path.")
    return resource_path("pope", f"coco_pope_{split}.json")


def load_pope(split_or_path: str | Path, *, limit: int | None = None) -> list[PopeQuestion]:
    """Read a POPE question file (a vendored split name or a path; JSON lines).

    Each line needs ``question_id``, ``image``, ``text`` and ``label`` (``"yes"`` or ``"no"``).
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be positive, got {limit}.")
    name = str(split_or_path)
    p = pope_path(name) if name in POPE_SPLITS else Path(split_or_path)
    if not p.is_file():
        raise DataError(
            f"POPE question file not found (and not a vendored split: {', '.join(POPE_SPLITS)}).",
            path=p,
        )
    out: list[PopeQuestion] = []
    for lineno, obj in read_json_lines(p, limit):
        if any(k not in obj for k in POPE_FIELDS):
            raise DataError(
                f"every line needs the fields {', '.join(POPE_FIELDS)}.", path=p, line=lineno
            )
        label = str(obj["label"]).strip().lower()
        if label not in ("yes", "no"):
            raise DataError(
                f"label {obj['label']!r} is neither 'yes' nor 'no'.", path=p, line=lineno
            )
        out.append(
            PopeQuestion(
                str(obj["question_id"]), str(obj["image"]), str(obj["text"]), label == "yes"
            )
        )
    if not out:
        raise DataError("POPE question file holds no questions.", path=p)
    ids = [q.question_id for q in out]
    if len(set(ids)) != len(ids):
        raise DataError("question_id values repeat; they must be unique per file.", path=p)
    return out


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


def evaluate_pope(
    model: TransformerBridge,
    image_dir: str | Path,
    splits: Sequence[str | Path] = POPE_SPLITS,
    *,
    mode: Mode = "logprob",
    gate: TruthGate | None = None,
    prompt_template: str = LLAVA_TEMPLATE,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 8,
    cache: ResultCache | str | Path | None = None,
    progress: bool = True,
) -> EvalResult:
    """Evaluate a LLaVA-type ``model`` on POPE question files.

    Args:
        model: a LLaVA bridge (see :mod:`lineage_lens.images`).
        image_dir: folder holding the questions' images.
        splits: vendored split names and/or paths of files in the POPE schema.
        mode: ``"logprob"`` or ``"generate"``.
        gate: a TruthGate applied to the language model during the evaluation.
        prompt_template: text with ``{image}`` and ``{question}`` (default: LLaVA-1.5's).
        limit: questions per split (the first ``limit``).
        cache: a :class:`ResultCache` or its path.

    Returns:
        an :class:`EvalResult` whose ``metrics`` has one row per split.
    """
    mode = check_mode(mode)
    if not splits:
        raise ConfigError("give at least one POPE split or file.")
    per_split = {str(s): load_pope(s, limit=limit) for s in splits}
    folder = check_images([q for qs in per_split.values() for q in qs], image_dir)
    settings = vision_settings(model)
    tok = model.tokenizer
    items: list[PromptItem] = []
    for split, qs in per_split.items():
        for q in qs:
            ids = encode_image_prompt(tok, q.text, settings, prompt_template)
            items.append(PromptItem(f"{split}:{q.question_id}", tuple(ids), str(folder / q.image)))

    def loader(paths: Sequence[str]):
        return load_pixel_values(paths, settings)

    setting = {"task": "pope", "template": prompt_template, "image_dir": str(folder)}
    with maybe_cache(cache) as c:
        records = run_prompts(
            model,
            items,
            mode=mode,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            gate=gate,
            cache=c,
            setting=setting,
            progress=progress,
            desc=f"POPE {mode}",
            pixel_loader=loader,
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
        metric_rows.append({"split": split, **binary_metrics(grp["label"].tolist(), pred, margin)})
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
