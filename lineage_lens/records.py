"""Records of every kind lineage-lens reads, from a Hugging Face ``Dataset``: :func:`from_dataset`.

Each record kind converts itself where it is defined (TruthProbe examples:
:func:`lineage_lens.data.load_probe_examples`, which reads any probing source; HaluEval rows:
:func:`lineage_lens.data.halueval_rows_from_dataset`; POPE questions:
:func:`lineage_lens.evals.pope.load_pope`); this module picks the kind of a Dataset from its
columns and calls that conversion, so ``ll.from_dataset(ds)`` works for all of them. The way
back, records to a Dataset, is the generic :func:`lineage_lens.hf_datasets.to_dataset`::

    ds = ll.to_dataset(ll.load_probe_examples("halueval", limit=50))  # columns below
    examples = ll.from_dataset(ds)                                    # list[ProbeExample] again

The columns are those of the JSON-lines files (so ``Dataset.from_json(path)`` of a file the
loaders read gives a Dataset they accept, and the same rows are valid or rejected with the same
messages; a dataset row index stands in for the file and line):

* TruthProbe text layout: ``context, question, answer, label`` (``label`` ``"gold"`` /
  ``"hallucinated"``, ``1`` / ``0``, or a ``ClassLabel`` with those names), optional ``source_id``
  (or ``id``; default ``"row-N"``);
* TruthProbe image layout: ``image_path, question, answer, label`` (``image_path`` relative to
  ``image_root``, default the current folder) or an ``image`` column of PIL images
  (``datasets.Image()``) instead of ``image_path``; ``context`` optional;
* HaluEval QA: ``knowledge, question, right_answer, hallucinated_answer``, optional ``row_id``
  (default: the row index);
* POPE: ``question_id, image, text, label`` (``label`` ``"yes"`` / ``"no"``).

A missing value (``None``, as ``datasets`` fills in for rows without a field) counts as a missing
field, exactly like a JSON line without it.
"""

from __future__ import annotations

from typing import Any, Literal

from lineage_lens.errors import ConfigError
from lineage_lens.hf_datasets import check_dataset

#: The kinds of records a Dataset converts to (see :func:`from_dataset`).
DatasetKind = Literal["truthprobe", "halueval", "pope"]
DATASET_KINDS: tuple[str, ...] = ("truthprobe", "halueval", "pope")


def detect_kind(dataset: Any) -> DatasetKind:
    """The record kind of ``dataset`` from its columns (HaluEval, POPE, else TruthProbe)."""
    ds = check_dataset(dataset, "dataset")
    cols = set(ds.column_names)
    if {"right_answer", "hallucinated_answer"} & cols:
        return "halueval"
    if "question_id" in cols and "text" in cols:
        return "pope"
    return "truthprobe"


def from_dataset(
    dataset: Any, kind: DatasetKind | None = None, *, image_root: Any = None
) -> list[Any]:
    """The records of ``dataset``: validated like the JSON-lines loaders validate lines.

    Args:
        dataset: a ``datasets.Dataset`` in one of the documented layouts.
        kind: ``"truthprobe"`` (:class:`~lineage_lens.data.ProbeExample`), ``"halueval"``
            (:class:`~lineage_lens.data.HaluEvalRow`) or ``"pope"``
            (:class:`~lineage_lens.evals.pope.PopeQuestion`); default from the columns.
        image_root: folder that relative ``image_path`` values of a TruthProbe dataset are
            relative to (default: the current folder).

    Raises:
        DataError: missing columns (named), or a bad value (``dataset row N: ...``).
    """
    if kind is None:
        kind = detect_kind(dataset)
    if kind == "truthprobe":
        from lineage_lens.data import load_probe_examples

        check_dataset(dataset, "TruthProbe dataset")  # a Dataset, not another probing source
        return load_probe_examples(dataset, image_root=image_root)
    if kind == "halueval":
        from lineage_lens.data import halueval_rows_from_dataset

        return halueval_rows_from_dataset(dataset)
    if kind == "pope":
        from lineage_lens.evals.pope import load_pope

        return load_pope(dataset)
    raise ConfigError(f"unknown dataset kind {kind!r}; use one of {', '.join(DATASET_KINDS)}.")
