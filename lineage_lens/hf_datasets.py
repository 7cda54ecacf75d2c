"""Hugging Face ``datasets`` in and out for any record kind: recognise a ``Dataset``, read its
rows, build one from records.

Researchers keep probing and evaluation data as :class:`datasets.Dataset` objects. Each loader
takes ``as_dataset=True`` to return one (:func:`to_dataset`), and every function that takes
records accepts one: the record kinds read a Dataset's rows with :func:`dataset_rows` and validate
them like JSON lines (:mod:`lineage_lens.data`, :mod:`lineage_lens.evals.pope`;
:func:`lineage_lens.records.from_dataset` picks the kind from the columns, and documents them)::

    ds = to_dataset(load_probe_examples("halueval", limit=50))
    acts = collect_head_activations(model, ds)                  # a Dataset works directly
    examples = load_probe_examples(ds)                          # list[ProbeExample] again

This module knows no record kind (records give their row with ``to_row()``) and imports
``datasets`` only when it reads or builds a Dataset; recognising one never imports it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lineage_lens.errors import ConfigError, DataError

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)


def is_dataset(obj: Any) -> bool:
    """Whether ``obj`` is an object of the ``datasets`` library (``Dataset``, ``DatasetDict``, ...).

    Never imports ``datasets``: an object of it can only exist once it is imported.
    """
    return type(obj).__module__.split(".")[0] == "datasets"


def check_dataset(obj: Any, what: str) -> Dataset:
    """``obj`` as a map-style ``datasets.Dataset``, or a :class:`DataError` saying what to pass."""
    import datasets

    if isinstance(obj, datasets.Dataset):
        return obj
    if isinstance(obj, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise DataError(
            f"{what}: got a {type(obj).__name__} with the splits {', '.join(obj)}; pass one "
            f"split, e.g. ds[{next(iter(obj), 'train')!r}]."
        )
    if isinstance(obj, datasets.IterableDataset):
        raise DataError(
            f"{what}: got an IterableDataset (streaming); lineage-lens needs a map-style Dataset. "
            "Load without streaming=True, or use Dataset.from_generator(...)."
        )
    raise DataError(f"{what}: expected a datasets.Dataset, got {type(obj).__name__}.")


def dataset_rows(
    dataset: Any,
    *,
    what: str,
    columns: Sequence[str],
    any_of: Sequence[str] = (),
    layout: str = "",
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row index, row)`` for each row of ``dataset``, after checking its columns.

    Raises :class:`DataError` before reading any row when ``dataset`` is not a Dataset, holds no
    rows, lacks one of ``columns`` or has none of ``any_of`` (the missing columns are named). Rows
    are plain Python values (whatever the Dataset's format); ``None`` values are left out (a
    missing field) and ``ClassLabel`` integers become their names.

    Args:
        dataset: a ``datasets.Dataset``.
        what: what the rows are, for messages ("TruthProbe dataset").
        columns: the columns every row needs.
        any_of: columns of which at least one must exist (e.g. ``context`` or ``image_path``).
        layout: how to describe the needed columns in messages (default: ``columns``).
    """
    import datasets

    ds = check_dataset(dataset, what)
    found = list(ds.column_names)
    need = layout or ", ".join(columns)
    missing = [c for c in columns if c not in found]
    if any_of and not any(c in found for c in any_of):
        missing.append(" or ".join(repr(c) for c in any_of))
    if missing:
        names = ", ".join(m if " or " in m else repr(m) for m in missing)
        raise DataError(
            f"{what} is missing the column(s) {names}; it needs the columns {need} "
            f"(found: {', '.join(found) or 'none'}). Rename or add the columns "
            "(Dataset.rename_column) to match."
        )
    if len(ds) == 0:
        raise DataError(f"{what} holds no rows; give a Dataset with at least one row.")
    class_labels = {
        name: feature
        for name, feature in ds.features.items()
        if isinstance(feature, datasets.ClassLabel)
    }
    for index, row in enumerate(ds.with_format(None)):
        out = {}
        for key, value in row.items():
            if value is None:
                continue
            if key in class_labels and isinstance(value, int) and not isinstance(value, bool):
                value = class_labels[key].int2str(value)
            out[key] = value
        yield index, out


def to_dataset(records: Iterable[Any] | Dataset) -> Dataset:
    """A ``datasets.Dataset`` of ``records`` in their columns (:mod:`lineage_lens.records`).

    ``records`` are :class:`~lineage_lens.data.ProbeExample`, :class:`~lineage_lens.data.HaluEvalRow`
    or :class:`~lineage_lens.evals.pope.PopeQuestion` objects, all of one kind (each gives its row
    with ``to_row()``); a Dataset is returned as it is. PIL images become an ``image`` column of
    ``datasets.Image()``; image paths an ``image_path`` column.
    :func:`lineage_lens.records.from_dataset` gives the records back (equal to these).
    """
    import datasets

    if is_dataset(records):
        return check_dataset(records, "to_dataset")
    if isinstance(records, (str, bytes, Mapping)):
        raise ConfigError(
            f"to_dataset takes a list of records, got {type(records).__name__}; load them first "
            "(e.g. load_probe_examples(path))."
        )
    items = list(records)
    if not items:
        raise DataError("to_dataset: no records; load a dataset with at least one record.")
    kinds = {type(r) for r in items}
    if len(kinds) > 1:
        raise ConfigError(
            "to_dataset: records of one kind only, got "
            f"{', '.join(sorted(k.__name__ for k in kinds))}."
        )
    if not callable(getattr(items[0], "to_row", None)):
        raise ConfigError(
            f"to_dataset: cannot convert {type(items[0]).__name__} records; give ProbeExample, "
            "HaluEvalRow or PopeQuestion records."
        )
    rows = [r.to_row() for r in items]
    names = list(dict.fromkeys(k for row in rows for k in row))
    table = {name: [row.get(name) for row in rows] for name in names}
    features = None
    if any(_is_pil(v) for v in table.get("image", ())):  # PIL images: an Image() column
        rest = datasets.Dataset.from_dict({k: v for k, v in table.items() if k != "image"})
        features = datasets.Features(
            {k: datasets.Image() if k == "image" else rest.features[k] for k in names}
        )
    return datasets.Dataset.from_dict(table, features=features)


def _is_pil(value: Any) -> bool:
    return type(value).__module__.startswith("PIL.")
