"""CHAIR metrics of captions against per-image ground truth (Rohrbach et al., 2018).

Each caption's object mentions (:meth:`ObjectVocabulary.mentions
<lineage_lens.evals.chair.vocabulary.ObjectVocabulary.mentions>`, the reference algorithm's word
handling) are compared with the image's ground-truth classes:

* ``CHAIR_s``: fraction of captions that mention at least one object not in the image;
* ``CHAIR_i``: hallucinated object mentions / all object mentions (over all captions);
* ``recall``: ground-truth classes mentioned / all ground-truth classes (over all captions), as
  in the Python 3 ports of the reference that report it;
* ``mean_length``: mean number of tokens per caption after two-word objects are joined (the
  ports' ``Len``; punctuation tokens count).

**Every mention counts**, as in the reference; ``counting="once_per_caption"`` counts each class
once per caption instead (CHAIR_i then is hallucinated classes / mentioned classes; CHAIR_s and
recall do not change). Captions whose image has no ground truth are skipped and reported
(``n_skipped``), or raise with ``on_missing="error"``.

This module needs no model code: it scores captions already written (a file or records).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from lineage_lens._display import ShortRepr, label
from lineage_lens.errors import ConfigError, DataError
from lineage_lens.evals.chair.io import (
    Caption,
    captions_from_records,
    load_captions,
    load_ground_truth,
)
from lineage_lens.evals.chair.vocabulary import ObjectVocabulary
from lineage_lens.fileio import atomic_open, read_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes

log = logging.getLogger(__name__)

#: How mentions are counted: every mention (the reference) or each class once per caption.
Counting = Literal["every_mention", "once_per_caption"]
COUNTINGS: tuple[str, ...] = ("every_mention", "once_per_caption")


@dataclass(repr=False)
class ChairResult(ShortRepr):
    """CHAIR metrics and per-caption details.

    Attributes:
        metrics: ``chair_s, chair_i, recall, mean_length, n, n_mentions, n_hallucinated,
            n_skipped``.
        per_caption: one row per scored caption: ``image_id, caption, n_words`` (tokens),
            ``mentioned`` and ``hallucinated`` (classes, each once), ``hallucinated_words``
            (as counted: one entry per hallucinated mention, or per class with
            ``once_per_caption``), ``n_mentions``, ``n_hallucinated`` (as counted),
            ``ground_truth``, ``chair_s``, ``chair_i``.
        skipped_ids: image ids of captions without ground truth (not scored).
        config: vocabulary name and counting rule.
    """

    metrics: dict[str, float]
    per_caption: pd.DataFrame
    skipped_ids: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> float:
        return self.metrics[key]

    def to_frame(self) -> pd.DataFrame:
        """The per-caption details (one row per scored caption)."""
        return self.per_caption.copy()

    def summary(self) -> str:
        m = self.metrics
        return (
            f"CHAIR_s {m['chair_s']:.4f}  CHAIR_i {m['chair_i']:.4f}  recall {m['recall']:.4f}  "
            f"mean length {m['mean_length']:.1f}  n {int(m['n'])}"
            + (f"  (skipped {int(m['n_skipped'])} without ground truth)" if m["n_skipped"] else "")
        )

    def _repr_fields(self) -> list[tuple[str, str]]:
        m = self.metrics
        fields = [(k, f"{float(m[k]):.4f}") for k in ("chair_s", "chair_i", "recall") if k in m]
        fields += [(k, str(int(m[k]))) for k in ("n", "n_skipped") if k in m]
        return [
            *fields,
            ("vocabulary", label(self.config.get("vocabulary"))),
            ("counting", label(self.config.get("counting"))),
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "config": self.config,
            "skipped_ids": self.skipped_ids,
            "per_caption": self.per_caption.to_dict(orient="records"),
        }

    def save(self, path: str | Path) -> Path:
        """Write metrics and per-caption details as JSON (atomically)."""
        with atomic_open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=1)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> ChairResult:
        p = Path(path)
        if not p.is_file():
            raise DataError("CHAIR result file not found.", path=p)
        try:
            d = json.loads(read_text(p, "CHAIR result file"))
            return cls(d["metrics"], pd.DataFrame(d["per_caption"]), d["skipped_ids"], d["config"])
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON ({exc.msg}).", path=p, line=exc.lineno) from exc
        except (KeyError, TypeError) as exc:
            raise DataError(
                f"not a CHAIR result file (no {exc}); write it with ChairResult.save.", path=p
            ) from exc

    def plot(self, ax: Axes | None = None) -> Axes:
        """Bar chart of CHAIR_s, CHAIR_i and recall."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(4, 3))
        keys = ["chair_s", "chair_i", "recall"]
        ax.bar(["CHAIR_s", "CHAIR_i", "recall"], [self.metrics[k] for k in keys])
        ax.set_ylim(0, 1)
        ax.set_title(f"CHAIR (n={int(self.metrics['n'])})")
        return ax


def compute_chair(
    captions: str | Path | Iterable[Caption | Mapping[str, Any]],
    *,
    vocabulary: ObjectVocabulary | None = None,
    ground_truth: str | Path | Mapping[str, Iterable[str]] | None = None,
    counting: Counting = "every_mention",
    on_missing: Literal["skip", "error"] = "skip",
) -> ChairResult:
    """CHAIR_s, CHAIR_i, recall and mean caption length of ``captions``.

    Args:
        captions: a caption file (see :func:`load_captions`), or records with ``image_id`` and
            ``caption``/``text``, or :class:`Caption` objects.
        vocabulary: object vocabulary (default: COCO as the reference reads it,
            :meth:`ObjectVocabulary.coco`).
        ground_truth: ``{image_id: [classes]}`` or its JSON file (default: vendored COCO).
        counting: ``"every_mention"`` (the reference CHAIR, default) or ``"once_per_caption"``
            (each class counted once per caption; changes CHAIR_i only).
        on_missing: captions whose image has no ground truth are skipped and reported
            (``"skip"``) or raise :class:`DataError` (``"error"``).
    """
    if counting not in COUNTINGS:
        raise ConfigError(f"counting must be one of {COUNTINGS}, got {counting!r}.")
    if on_missing not in ("skip", "error"):
        raise ConfigError(f"on_missing must be 'skip' or 'error', got {on_missing!r}.")
    vocab = vocabulary or ObjectVocabulary.coco()
    if isinstance(captions, (str, Path)):
        caps = load_captions(captions)
    else:
        caps = captions_from_records(captions)
    if ground_truth is None or isinstance(ground_truth, (str, Path)):
        gt = load_ground_truth(ground_truth, vocab)
    else:
        gt = {str(k): {str(c).lower() for c in v} for k, v in ground_truth.items()}

    skipped = [c.image_id for c in caps if c.image_id not in gt]
    if skipped:
        msg = (
            f"{len(skipped)} of {len(caps)} captions have an image id without ground truth "
            f"(e.g. {skipped[:5]})"
        )
        if on_missing == "error" or len(skipped) == len(caps):
            raise DataError(msg + "; check the image ids and the ground-truth file.")
        log.warning("%s; they are skipped.", msg)

    rows = []
    n_mentions = n_halluc = n_gt = n_covered = 0
    for cap in caps:
        if cap.image_id not in gt:
            continue
        truth = gt[cap.image_id]
        words = vocab.words(cap.caption)
        mentions = vocab.mentions_of_words(words)
        if counting == "once_per_caption":
            first = {m.cls: m for m in reversed(mentions)}  # the first mention of each class
            mentions = [m for m in mentions if first[m.cls] is m]
        classes = list(dict.fromkeys(m.cls for m in mentions))
        halluc = [m for m in mentions if m.cls not in truth]
        n_mentions += len(mentions)
        n_halluc += len(halluc)
        n_gt += len(truth)
        n_covered += len(truth & set(classes))
        rows.append(
            {
                "image_id": cap.image_id,
                "caption": cap.caption,
                "n_words": len(words),
                "mentioned": classes,
                "hallucinated": list(dict.fromkeys(m.cls for m in halluc)),
                "hallucinated_words": [m.word for m in halluc],
                "n_mentions": len(mentions),
                "n_hallucinated": len(halluc),
                "ground_truth": sorted(truth),
                "chair_s": int(bool(halluc)),
                "chair_i": len(halluc) / len(mentions) if mentions else 0.0,
            }
        )
    frame = pd.DataFrame(rows)
    metrics = {
        "chair_s": float(frame["chair_s"].mean()),
        "chair_i": n_halluc / n_mentions if n_mentions else 0.0,
        "recall": n_covered / n_gt if n_gt else 0.0,
        "mean_length": float(frame["n_words"].mean()),
        "n": len(frame),
        "n_mentions": n_mentions,
        "n_hallucinated": n_halluc,
        "n_skipped": len(skipped),
    }
    config = {"vocabulary": vocab.name, "counting": counting, "on_missing": on_missing}
    return ChairResult(metrics, frame, skipped, config)
