"""Probing data: HaluEval QA and TruthProbe-style JSON lines, prompt templates, and splits.

Label convention (used everywhere in lineage-lens): ``label == 1`` means the answer is
**truthful** (the gold answer, supported by the context); ``label == 0`` means it is
**hallucinated**. Probes therefore predict "truthful".

A *source row* is one (context, question) item of a dataset. HaluEval QA gives two probing examples
per source row (its right answer and its hallucinated answer) that share a ``source_id``; splits are
made by source row so that no row leaks between the probing set and the evaluation set.

Probing examples come from one function, :func:`load_probe_examples`, whatever their source: the
vendored HaluEval QA (``"halueval"``), a JSON-lines file, a ``datasets.Dataset`` or a list of
records. Typical use::

    examples = load_probe_examples("halueval", n_probe=292, split_seed=0)  # 584, balanced
    check_two_classes(examples)
    text, spans = DEFAULT_TEMPLATE.render(examples[0])

    rows = load_halueval_qa()  # the rows themselves (the evaluation keeps the other part)
    probe_rows, eval_rows = split_probe_eval(rows, n_probe=292, seed=0)
    assert load_probe_examples(probe_rows) == examples

Every loader takes ``as_dataset=True`` to return a Hugging Face ``datasets.Dataset`` in the same
columns, and the functions that take rows or examples accept one (the columns are listed in
:mod:`lineage_lens.records`; :mod:`lineage_lens.hf_datasets` reads and builds Datasets). One
validator per record kind checks a JSON line and a Dataset row alike (:func:`parse_halueval_row`,
:func:`parse_truthprobe_example`); only where the record came from differs (a
:class:`RecordLocation`: file and line, or dataset row).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import string
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union, overload

import numpy as np

from lineage_lens._resources import resource_path
from lineage_lens.errors import ConfigError, DataError, check_count, check_seed
from lineage_lens.hf_datasets import check_dataset, dataset_rows, is_dataset, to_dataset

if TYPE_CHECKING:
    from datasets import Dataset
    from PIL.Image import Image

#: An image a probing example can carry: a file path or a PIL image.
ImageLike = Union[str, Path, "Image"]

#: Integer label of a truthful (gold) answer.
TRUTHFUL = 1
#: Integer label of a hallucinated answer.
HALLUCINATED = 0

#: Accepted spellings of labels in JSON-lines files -> integer label.
LABELS: dict[Any, int] = {
    "gold": TRUTHFUL,
    "truthful": TRUTHFUL,
    "true": TRUTHFUL,
    "hallucinated": HALLUCINATED,
    "hallucination": HALLUCINATED,
    "false": HALLUCINATED,
    1: TRUTHFUL,
    0: HALLUCINATED,
}

HALUEVAL_FIELDS = ("knowledge", "question", "right_answer", "hallucinated_answer")
TRUTHPROBE_FIELDS = ("context", "question", "answer", "label")
#: The authors' image layout (``image_path`` relative to the JSON-lines file).
TRUTHPROBE_IMAGE_FIELDS = ("image_path", "question", "answer", "label")


@dataclass(frozen=True)
class ProbeExample:
    """One probing example: a context, a question and a candidate answer with its label.

    Attributes:
        context: the evidence passage (HaluEval ``knowledge``).
        question: the question.
        answer: the candidate answer whose last token is probed.
        label: ``1`` = truthful (gold), ``0`` = hallucinated.
        source_id: id of the source row; the truthful and hallucinated answers of one HaluEval
            row share it.
        image: the image the question is about (a file path or a PIL image), or ``None`` for a
            text-only example; see the ``condition`` of
            :func:`~lineage_lens.capture.collect_head_activations`.
    """

    context: str
    question: str
    answer: str
    label: int
    source_id: str
    image: ImageLike | None = dataclasses.field(default=None, hash=False)

    @property
    def is_truthful(self) -> bool:
        return self.label == TRUTHFUL

    def to_row(self) -> dict[str, Any]:
        """This example as a row of the TruthProbe columns (for :func:`to_dataset`).

        A PIL image goes to an ``image`` column, an image path to ``image_path``."""
        row: dict[str, Any] = {
            "context": self.context,
            "question": self.question,
            "answer": self.answer,
            "label": self.label,
            "source_id": self.source_id,
        }
        if isinstance(self.image, (str, Path)):
            row["image_path"] = str(self.image)
        elif self.image is not None:
            row["image"] = self.image
        return row


@dataclass(frozen=True)
class HaluEvalRow:
    """One row of HaluEval QA: knowledge, question, right answer and hallucinated answer.

    ``row_id`` is the 0-based line index in the source file, as a string.
    """

    row_id: str
    knowledge: str
    question: str
    right_answer: str
    hallucinated_answer: str

    @property
    def source_id(self) -> str:
        return self.row_id

    def probe_examples(self) -> tuple[ProbeExample, ProbeExample]:
        """The truthful and the hallucinated :class:`ProbeExample` of this row (same source_id)."""
        return (
            ProbeExample(self.knowledge, self.question, self.right_answer, TRUTHFUL, self.row_id),
            ProbeExample(
                self.knowledge, self.question, self.hallucinated_answer, HALLUCINATED, self.row_id
            ),
        )

    def to_row(self) -> dict[str, str]:
        """This row in the HaluEval QA columns plus ``row_id`` (for :func:`to_dataset`)."""
        return {"row_id": self.row_id, **{k: getattr(self, k) for k in HALUEVAL_FIELDS}}


@dataclass(frozen=True)
class RecordLocation:
    """Where a record came from, for error messages: a file and 1-based line, or a dataset row.

    :meth:`error` builds the :class:`DataError`: ``path:line: message`` for a file (with ``path``
    and ``line`` set on the error), ``dataset row N: message`` for row ``N`` (0-based) of a
    ``datasets.Dataset``.
    """

    path: Path | None = None
    line: int | None = None
    row: int | None = None

    @property
    def unit(self) -> str:
        """``"line"`` for a file, ``"row"`` for a dataset (as messages name it)."""
        return "line" if self.row is None else "row"

    def error(self, message: str) -> DataError:
        if self.row is not None:
            return DataError(f"dataset row {self.row}: {message}")
        return DataError(message, path=self.path, line=self.line)


# --------------------------------------------------------------------------------------------
# Reading JSON lines
# --------------------------------------------------------------------------------------------


def read_json_lines(path: Path, limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    """``(1-based line number, object)`` for each non-blank line; DataError on bad JSON."""
    if not path.is_file():
        raise DataError("file not found; pass the path of a JSON-lines file.", path=path)
    out: list[tuple[int, dict[str, Any]]] = []
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed below; decoded line by line)
    except OSError as exc:
        raise DataError(f"cannot read the file ({exc.strerror or exc}).", path=path) from exc
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"line is not UTF-8 text (byte {exc.start} is 0x{raw[exc.start]:02x}); save "
                    "the file as UTF-8.",
                    path=path,
                    line=lineno,
                ) from exc
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as exc:
                if isinstance(exc, RecursionError):
                    raise DataError(
                        "line nests JSON too deeply to read.", path=path, line=lineno
                    ) from exc
                raise DataError(
                    f"line is not valid JSON ({exc.msg} at column {exc.colno}); each line must be "
                    "one JSON object.",
                    path=path,
                    line=lineno,
                ) from exc
            if not isinstance(obj, dict):
                raise DataError(
                    f"expected a JSON object per line, got {type(obj).__name__}.",
                    path=path,
                    line=lineno,
                )
            out.append((lineno, obj))
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise DataError("file holds no examples (it is empty or only blank lines).", path=path)
    return out


def _require_str(
    obj: dict[str, Any], key: str, where: RecordLocation, fields: Sequence[str]
) -> str:
    if key not in obj:
        raise where.error(
            f"missing field {key!r}; every {where.unit} needs the fields {', '.join(fields)} "
            f"(found: {', '.join(sorted(obj)) or 'none'})."
        )
    value = obj[key]
    if not isinstance(value, str):
        raise where.error(f"field {key!r} must be a string, got {type(value).__name__}.")
    return value


def parse_halueval_row(obj: dict[str, Any], row_id: str, where: RecordLocation) -> HaluEvalRow:
    """One :class:`HaluEvalRow` from a JSON line or a dataset row, or a :class:`DataError` at
    ``where`` (a missing or non-string field, an empty answer)."""
    vals = [_require_str(obj, k, where, HALUEVAL_FIELDS) for k in HALUEVAL_FIELDS]
    for key, value in zip(("right_answer", "hallucinated_answer"), vals[2:], strict=True):
        if not value.strip():
            raise where.error(f"field {key!r} is empty; every row needs both answers.")
    return HaluEvalRow(row_id, *vals)


def parse_truthprobe_example(
    obj: dict[str, Any],
    where: RecordLocation,
    *,
    image_dir: Path,
    image_hint: str,
    image: Any = None,
) -> ProbeExample:
    """One :class:`ProbeExample` from a TruthProbe JSON line or dataset row (either layout).

    Args:
        obj: the fields (``context, question, answer, label`` or ``image_path, question,
            answer, label``; optional ``source_id`` / ``id``).
        where: the record's location, for errors and the default ``source_id``.
        image_dir: the folder relative ``image_path`` values are relative to.
        image_hint: says, in a "not found" error, what image paths are relative to.
        image: an image already in hand (a dataset's ``image`` column): the image layout
            without ``image_path``.

    Raises:
        DataError: at ``where``: a missing or non-string field, an unknown label, an empty
            answer, a missing image file.
    """
    resolved: ImageLike | None = image
    if image is not None or "image_path" in obj:
        fields = TRUTHPROBE_IMAGE_FIELDS
        if image is None:
            rel = _require_str(obj, "image_path", where, fields)
            if not rel.strip():
                raise where.error("field 'image_path' is empty.")
            resolved = path = image_dir / rel
            if not path.is_file():
                raise where.error(f"image {rel!r} not found (looked for {path}); {image_hint}")
        context = _require_str(obj, "context", where, fields) if "context" in obj else ""
    else:
        fields = TRUTHPROBE_FIELDS
        if "context" not in obj:
            raise where.error(
                f"missing field 'context' (or 'image_path'); every {where.unit} needs the fields "
                f"{', '.join(TRUTHPROBE_FIELDS)} or {', '.join(TRUTHPROBE_IMAGE_FIELDS)} "
                f"(found: {', '.join(sorted(obj)) or 'none'})."
            )
        context = _require_str(obj, "context", where, fields)
    question, answer = (_require_str(obj, k, where, fields) for k in ("question", "answer"))
    if "label" not in obj:
        raise where.error(
            f"missing field 'label'; every {where.unit} needs the fields {', '.join(fields)}."
        )
    raw = obj["label"]
    key = raw.strip().lower() if isinstance(raw, str) else raw
    if isinstance(key, bool) or not isinstance(key, (str, int, float)) or key not in LABELS:
        raise where.error(f"unknown label {raw!r}; use 'gold' (truthful) or 'hallucinated'.")
    if not answer.strip():
        raise where.error("field 'answer' is empty.")
    default_id = f"line-{where.line}" if where.row is None else f"row-{where.row}"
    sid = obj.get("source_id", obj.get("id", default_id))
    return ProbeExample(context, question, answer, LABELS[key], str(sid), resolved)


HALUEVAL_LAYOUT = ", ".join(HALUEVAL_FIELDS) + " (optional row_id)"
TRUTHPROBE_LAYOUT = (
    f"{', '.join(TRUTHPROBE_FIELDS)} or {', '.join(TRUTHPROBE_IMAGE_FIELDS)} (or an 'image' "
    "column instead of image_path), optional source_id"
)


@overload
def load_halueval_qa(
    path: str | Path | None = None, *, limit: int | None = None, as_dataset: Literal[False] = False
) -> list[HaluEvalRow]: ...


@overload
def load_halueval_qa(
    path: str | Path | None = None, *, limit: int | None = None, as_dataset: Literal[True]
) -> Dataset: ...


def load_halueval_qa(
    path: str | Path | None = None, *, limit: int | None = None, as_dataset: bool = False
) -> list[HaluEvalRow] | Dataset:
    """Read HaluEval QA JSON lines (``knowledge, question, right_answer, hallucinated_answer``).

    Args:
        path: the file; defaults to the vendored 500-row ``halueval/qa_one-turn_data.json``.
        limit: read only the first ``limit`` rows.
        as_dataset: return a ``datasets.Dataset`` (the four columns plus ``row_id``) instead.

    Returns:
        one :class:`HaluEvalRow` per line; ``row_id`` is the 0-based index among non-blank lines.
        Their probing examples are ``load_probe_examples(rows)`` (:func:`load_probe_examples`).
    """
    check_count(limit, "limit", optional=True)
    p = Path(path) if path is not None else resource_path("halueval", "qa_one-turn_data.json")
    rows = _halueval_rows_of_lines(p, read_json_lines(p, limit))
    return to_dataset(rows) if as_dataset else rows


def _halueval_rows_of_lines(
    path: Path, lines: Sequence[tuple[int, dict[str, Any]]]
) -> list[HaluEvalRow]:
    """The :class:`HaluEvalRow` of a file's JSON lines (from :func:`read_json_lines`); ``row_id``
    is the 0-based index among them."""
    return [
        parse_halueval_row(obj, str(idx), RecordLocation(path, lineno))
        for idx, (lineno, obj) in enumerate(lines)
    ]


def _image_root_hint(root: Path) -> str:
    return (
        f"image paths are relative to image_root ({root.resolve()}); pass image_root= the "
        "folder the images are in."
    )


def _truthprobe_examples_of_lines(
    path: Path, lines: Sequence[tuple[int, dict[str, Any]]], *, image_root: str | Path | None
) -> list[ProbeExample]:
    """The :class:`ProbeExample` of a TruthProbe file's JSON lines, in either layout.

    Relative ``image_path`` values resolve against ``image_root`` (default: the file's folder);
    a line without ``source_id`` (or ``id``) is its own source, ``"line-N"``.
    """
    image_dir = path.parent if image_root is None else Path(image_root)
    hint = (
        "image paths are relative to the folder of the JSON-lines file."
        if image_root is None
        else _image_root_hint(image_dir)
    )
    return [
        parse_truthprobe_example(
            obj, RecordLocation(path, lineno), image_dir=image_dir, image_hint=hint
        )
        for lineno, obj in lines
    ]


def _examples_from_dataset(
    dataset: Dataset, *, image_root: str | Path | None = None
) -> list[ProbeExample]:
    """The :class:`ProbeExample` of a ``datasets.Dataset`` in a TruthProbe layout, validated
    like JSON lines are (errors say ``dataset row N: ...``; a row without ``source_id`` is its
    own source, ``"row-N"``).

    An ``image`` column holds PIL images (``datasets.Image()``) or paths; ``image_path`` values
    and ``image`` paths are relative to ``image_root`` (default: the current folder)."""
    root = Path(image_root) if image_root is not None else Path()
    hint = _image_root_hint(root)
    out = []
    for index, obj in dataset_rows(
        dataset,
        what="TruthProbe dataset",
        columns=("question", "answer", "label"),
        any_of=("context", "image_path", "image"),
        layout=TRUTHPROBE_LAYOUT,
    ):
        image = obj.pop("image", None)
        if isinstance(image, str) and "image_path" not in obj:
            obj["image_path"], image = image, None
        elif image is not None and not hasattr(image, "convert"):
            raise DataError(
                f"dataset row {index}: column 'image' must hold PIL images (datasets.Image()) or "
                f"paths, got {type(image).__name__}."
            )
        where = RecordLocation(row=index)
        out.append(
            parse_truthprobe_example(obj, where, image_dir=root, image_hint=hint, image=image)
        )
    return out


def halueval_rows_from_dataset(dataset: Dataset) -> list[HaluEvalRow]:
    """The :class:`HaluEvalRow` of a ``datasets.Dataset`` in the HaluEval QA columns, validated
    like :func:`load_halueval_qa` validates lines; ``row_id`` is the ``row_id`` column when there
    is one, else the row index."""
    return [
        parse_halueval_row(obj, str(obj.get("row_id", index)), RecordLocation(row=index))
        for index, obj in dataset_rows(
            dataset, what="HaluEval dataset", columns=HALUEVAL_FIELDS, layout=HALUEVAL_LAYOUT
        )
    ]


def as_halueval_rows(rows: Iterable[HaluEvalRow] | Dataset) -> list[HaluEvalRow]:
    """``rows`` as a list of :class:`HaluEvalRow`, converting a ``datasets.Dataset``
    (:func:`halueval_rows_from_dataset`)."""
    if is_dataset(rows):
        return halueval_rows_from_dataset(rows)
    return list(rows)


# --------------------------------------------------------------------------------------------
# Probing examples from any source
# --------------------------------------------------------------------------------------------

#: What :func:`load_probe_examples` reads probing examples from.
ProbeSource = Union[str, Path, "Dataset", Iterable[ProbeExample], Iterable[HaluEvalRow]]

PROBE_SOURCES = (
    "'halueval', the path of a JSON-lines file (TruthProbe or HaluEval QA layout), a "
    "datasets.Dataset in one of those layouts, or an iterable of ProbeExample or of HaluEvalRow"
)


def _probe_records(
    source: Any, *, limit: int | None, image_root: str | Path | None
) -> tuple[list[Any], bool]:
    """The first ``limit`` records of ``source`` and whether they are :class:`HaluEvalRow`
    (which give their two examples after the split) rather than :class:`ProbeExample`."""
    if isinstance(source, (str, Path)):
        if str(source).lower() == "halueval":
            return load_halueval_qa(limit=limit), True
        path = Path(source)
        if not path.exists():
            raise DataError(
                "no such file, and not a known dataset name (known: 'halueval').", path=source
            )
        lines = read_json_lines(path, limit)
        if "right_answer" in lines[0][1]:  # HaluEval QA, recognised by its first line
            return _halueval_rows_of_lines(path, lines), True
        return _truthprobe_examples_of_lines(path, lines, image_root=image_root), False
    if is_dataset(source):
        dataset: Any = source
        if limit is not None:
            dataset = check_dataset(dataset, "probing dataset")
            dataset = dataset.select(range(min(limit, len(dataset))))
        if "right_answer" in (getattr(dataset, "column_names", None) or ()):
            return halueval_rows_from_dataset(dataset), True
        return _examples_from_dataset(dataset, image_root=image_root), False
    if isinstance(source, (bytes, Mapping)) or not isinstance(source, Iterable):
        raise ConfigError(f"source must be {PROBE_SOURCES}; got a {type(source).__name__}.")
    items = list(itertools.islice(source, limit))
    if all(isinstance(item, ProbeExample) for item in items):
        return items, False
    if all(isinstance(item, HaluEvalRow) for item in items):
        return items, True
    found = sorted({type(item).__name__ for item in items})
    raise ConfigError(
        f"source must be {PROBE_SOURCES}; got a {type(source).__name__} of "
        f"{' and '.join(found)} (one kind of record only)."
    )


@overload
def load_probe_examples(
    source: ProbeSource = "halueval",
    *,
    n_probe: int | None = None,
    split_seed: int = 0,
    limit: int | None = None,
    image_root: str | Path | None = None,
    as_dataset: Literal[False] = False,
) -> list[ProbeExample]: ...


@overload
def load_probe_examples(
    source: ProbeSource = "halueval",
    *,
    n_probe: int | None = None,
    split_seed: int = 0,
    limit: int | None = None,
    image_root: str | Path | None = None,
    as_dataset: Literal[True],
) -> Dataset: ...


def load_probe_examples(
    source: ProbeSource = "halueval",
    *,
    n_probe: int | None = None,
    split_seed: int = 0,
    limit: int | None = None,
    image_root: str | Path | None = None,
    as_dataset: bool = False,
) -> list[ProbeExample] | Dataset:
    """Probing examples from any source: the one way to load them.

    Args:
        source: where the examples are:

            * ``"halueval"`` (any case): the vendored HaluEval QA (500 rows), two examples per
              row, truthful (label 1) then hallucinated (label 0), sharing the row's
              ``source_id`` (its 0-based index);
            * the path (``str`` or ``Path``) of a JSON-lines file, its layout recognised by the
              fields of its first line: TruthProbe text (``context, question, answer, label``),
              TruthProbe image (``image_path, question, answer, label``: ``image_path``
              relative to the file's folder or absolute, and existing; ``context`` optional,
              ``""`` without it; the example's ``image`` is the resolved path), or HaluEval QA
              (``knowledge, question, right_answer, hallucinated_answer``: two examples per
              line, as for ``"halueval"``);
            * a ``datasets.Dataset`` in any of these layouts (the fields as columns; an ``image``
              column of PIL images or paths may stand in for ``image_path``; an optional
              ``row_id`` column for HaluEval; see :mod:`lineage_lens.records`);
            * an iterable of :class:`ProbeExample` (kept as they are) or of
              :class:`HaluEvalRow` (two examples each, as for ``"halueval"``).

            A TruthProbe ``label`` is ``"gold"`` (truthful, 1) or ``"hallucinated"`` (0);
            ``"truthful"``, ``"hallucination"``, ``"true"`` / ``"false"`` and the integers
            ``1`` / ``0`` are accepted too. An optional ``source_id`` (or ``id``) field groups
            examples of one source item; without one each line is its own source
            (``"line-N"``, 1-based; ``"row-N"``, 0-based, in a Dataset).
        n_probe: keep only the probing part of the deterministic split :func:`split_probe_eval`,
            ``n_probe`` source rows picked by ``split_seed``. HaluEval is split by rows, then
            each probing row gives its two examples (the other rows stay free for evaluation);
            TruthProbe examples are split by ``source_id``. ``None``: every example.
        split_seed: the seed of that split.
        limit: read only the first ``limit`` HaluEval rows, file lines (blank lines aside),
            Dataset rows or iterable items (before any split).
        image_root: the folder relative image paths are relative to (default: the file's
            folder for a file, the current folder for a Dataset).
        as_dataset: return a ``datasets.Dataset`` in the TruthProbe columns (``context,
            question, answer, label, source_id`` and, for images, ``image_path`` holding the
            resolved path or an ``image`` column) instead of a list.

    Returns:
        the :class:`ProbeExample` list in source order (or its Dataset).

    Raises:
        ConfigError: a source of any other type, ``limit`` below 1, ``n_probe`` outside 1 to
            the number of source rows.
        DataError: a path that is neither ``"halueval"`` nor an existing file; a bad line or row,
            named (``path:line: ...``, ``dataset row N: ...``); a Dataset lacking columns.

    Examples::

        load_probe_examples()                                       # HaluEval: 1,000 examples
        load_probe_examples("halueval", n_probe=292, split_seed=0)  # its 292 probing rows: 584
        load_probe_examples("halueval", limit=50)                   # its first 50 rows: 100
        load_probe_examples("probe.jsonl")                  # TruthProbe text or image layout
        load_probe_examples("qa_data.json", limit=100)      # HaluEval QA lines: 200 examples
        load_probe_examples(Dataset.from_json("probe.jsonl"), image_root="data")  # a Dataset
        load_probe_examples(load_halueval_qa(limit=10))     # HaluEvalRow objects: 20 examples
        load_probe_examples(my_examples, n_probe=50, split_seed=1)  # ProbeExample objects
    """
    check_count(limit, "limit", optional=True)
    records, are_rows = _probe_records(source, limit=limit, image_root=image_root)
    if n_probe is not None:
        records, _ = split_probe_eval(records, n_probe=n_probe, seed=split_seed)
    examples = [ex for row in records for ex in row.probe_examples()] if are_rows else records
    return to_dataset(examples) if as_dataset else examples


def halueval_probe_examples(rows: Iterable[HaluEvalRow] | Dataset) -> list[ProbeExample]:
    """Deprecated alias of ``load_probe_examples(rows)`` (:func:`load_probe_examples`): two
    :class:`ProbeExample` per row, truthful (label 1) then hallucinated (label 0)."""
    warnings.warn(
        "halueval_probe_examples(rows) is deprecated; use load_probe_examples(rows), which gives "
        "the same examples.",
        DeprecationWarning,
        stacklevel=2,
    )
    return load_probe_examples(rows)


def check_two_classes(
    examples: Sequence[ProbeExample] | Dataset, what: str = "probing examples"
) -> None:
    """Raise :class:`DataError` unless ``examples`` hold both labels (1 = truthful, 0 = halluc.).

    Call this before any model work: a probe cannot be trained on one class. ``examples`` may be
    a ``datasets.Dataset`` (read as by :func:`load_probe_examples`).
    """
    if is_dataset(examples):
        examples = load_probe_examples(examples)
    if len(examples) == 0:
        raise DataError(f"{what}: no examples; load a dataset with both truthful and hallucinated.")
    counts = {TRUTHFUL: 0, HALLUCINATED: 0}
    for ex in examples:
        if ex.label not in counts:
            raise DataError(f"{what}: label {ex.label!r} is neither 1 (truthful) nor 0.")
        counts[ex.label] += 1
    if min(counts.values()) == 0:
        raise DataError(
            f"{what}: only one class ({counts[TRUTHFUL]} truthful, {counts[HALLUCINATED]} "
            "hallucinated); probes need both. Add examples of the missing label."
        )


def example_keys(examples: Sequence[ProbeExample], *, images: bool = True) -> list[str]:
    """Per example, a digest of what makes it the example it is: its context, question, answer
    and label, and (with ``images``) its image's content -- the pixels of a PIL image, the bytes
    of an image file (two files with the same bytes are the same image).

    Equal keys mean identical examples (the source id is left out: a copy under another id is
    still a copy). :func:`~lineage_lens.probing.fit_truth_scores` keeps examples with equal keys
    in one cross-validation fold. Pass ``images=False`` where the image is not shown (a text
    prompt, or a black image in its place).
    """
    files: dict[str, str] = {}

    def image_digest(image: Any) -> str:
        if image is None or not images:
            return ""
        if isinstance(image, (str, Path)):
            path = str(Path(image).resolve())
            if path not in files:
                try:
                    with open(path, "rb") as fh:
                        files[path] = hashlib.file_digest(fh, "sha256").hexdigest()
                except OSError as exc:
                    raise DataError(
                        f"cannot read the image ({exc.strerror or exc}).", path=path
                    ) from exc
            return files[path]
        h = hashlib.sha256(f"{getattr(image, 'mode', '')}{getattr(image, 'size', '')}".encode())
        h.update(image.tobytes() if hasattr(image, "tobytes") else repr(image).encode())
        return h.hexdigest()

    out = []
    for ex in examples:
        fields = [ex.context, ex.question, ex.answer, int(ex.label), image_digest(ex.image)]
        out.append(hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:32])
    return out


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------

T = TypeVar("T")


def _source_of(item: Any) -> str:
    sid = getattr(item, "source_id", None)
    if sid is None:
        raise ConfigError(
            f"cannot split {type(item).__name__} items: they need a 'source_id' attribute."
        )
    return str(sid)


def split_probe_eval(
    rows: Sequence[T], n_probe: int = 292, seed: int = 0
) -> tuple[list[T], list[T]]:
    """Deterministic split into a probing part and an evaluation part, by source row.

    Works on :class:`HaluEvalRow` lists and on :class:`ProbeExample` lists (grouped by
    ``source_id``, so both answers of a row land on the same side). A seeded permutation of the
    distinct source ids picks ``n_probe`` of them for probing; the rest is for evaluation. Each
    part keeps the input order. The two parts never share a source row. A ``datasets.Dataset``
    in the HaluEval QA columns is split as its rows, one in a TruthProbe layout as its examples
    (the parts are then lists of records; :func:`to_dataset` turns one back).

    Returns:
        ``(probe_rows, eval_rows)``.
    """
    if is_dataset(rows):
        dataset: Any = rows
        rows = (
            halueval_rows_from_dataset(dataset)
            if "right_answer" in dataset.column_names
            else _examples_from_dataset(dataset)
        )
    sources = list(dict.fromkeys(_source_of(r) for r in rows))
    if not 0 < n_probe <= len(sources):
        raise ConfigError(
            f"n_probe={n_probe} must be between 1 and the number of source rows ({len(sources)})."
        )
    perm = np.random.default_rng(check_seed(seed)).permutation(len(sources))
    probe_ids = {sources[i] for i in perm[:n_probe]}
    probe = [r for r in rows if _source_of(r) in probe_ids]
    evals = [r for r in rows if _source_of(r) not in probe_ids]
    shared = {_source_of(r) for r in probe} & {_source_of(r) for r in evals}
    assert not shared, f"split leaked source rows {sorted(shared)[:5]}"
    return probe, evals


# --------------------------------------------------------------------------------------------
# Prompt templates
# --------------------------------------------------------------------------------------------

PAPER_TEMPLATE = "Context:\n{context}\n\nQuestion: {question}\nAnswer: {answer}"


@dataclass(frozen=True)
class PromptSpans:
    """Character offsets inside a rendered prompt (``text[start:end]`` slices).

    ``answer_end`` is where the answer ends: the last token ending at or before it is probed.
    """

    context: tuple[int, int]
    question: tuple[int, int]
    answer: tuple[int, int]

    @property
    def answer_end(self) -> int:
        return self.answer[1]


@dataclass(frozen=True)
class PromptTemplate:
    """A plain-text prompt with ``{context}``, ``{question}`` and ``{answer}`` fields.

    The default is the TruthProbe paper's prompt. :meth:`render` also returns the character spans
    of the fields so that activations can find the answer's last token (via a tokenizer's offset
    mapping) and attention analyses can find the context (the evidence).

    A template for image-grounded examples places the image with an ``{image}`` field (at most
    once, before the answer), e.g. :data:`LLAVA_PROBE_TEMPLATE`; :meth:`render` fills it with the
    ``image`` text it is given (the model's image tokens, see :mod:`lineage_lens.images`) or
    leaves it empty (a text-only prompt).
    """

    template: str = PAPER_TEMPLATE
    name: str = "truthprobe"

    def __post_init__(self) -> None:
        fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
        unknown = set(fields) - {"context", "question", "answer", "image"}
        if (
            unknown
            or fields.count("answer") != 1
            or fields.count("image") > 1
            or ("image" in fields and fields.index("image") > fields.index("answer"))
        ):
            raise ConfigError(
                f"template {self.name!r} must contain {{answer}} exactly once, {{image}} at most "
                "once and before the answer, and only the fields {context}, {question}, "
                f"{{answer}}, {{image}} (found {fields})."
            )

    @property
    def has_image(self) -> bool:
        """Whether the template places an image (an ``{image}`` field)."""
        return any(f == "image" for _, f, _, _ in string.Formatter().parse(self.template))

    def format(self, example: ProbeExample) -> str:
        """The prompt text of ``example``."""
        return self.render(example)[0]

    def render(self, example: ProbeExample, *, image: str = "") -> tuple[str, PromptSpans]:
        """``(text, spans)``: the prompt and the character spans of context, question, answer.

        ``image`` is the text that replaces ``{image}`` (empty: no image tokens)."""
        values = {
            "context": example.context,
            "question": example.question,
            "answer": example.answer,
            "image": image,
        }
        parts: list[str] = []
        spans: dict[str, tuple[int, int]] = {}
        pos = 0
        for literal, field, spec, conv in string.Formatter().parse(self.template):
            parts.append(literal)
            pos += len(literal)
            if field is None:
                continue
            value = format(values[field] if conv is None else repr(values[field]), spec or "")
            spans.setdefault(field, (pos, pos + len(value)))
            parts.append(value)
            pos += len(value)
        for missing in ("context", "question"):
            spans.setdefault(missing, (0, 0))
        return "".join(parts), PromptSpans(spans["context"], spans["question"], spans["answer"])

    def to_dict(self) -> dict[str, str]:
        return {"kind": "plain", "template": self.template, "name": self.name}


@dataclass(frozen=True)
class ChatPromptTemplate:
    """A chat prompt: context + question as the user turn, the answer as the assistant turn.

    Rendered with ``tokenizer.apply_chat_template`` (the tokenizer must have a chat template). The
    answer's span is located as the last occurrence of the answer in the rendered text, so the
    probed token is the answer's last token, not the end-of-turn marker.
    """

    tokenizer: Any
    user_template: str = "Context:\n{context}\n\nQuestion: {question}"
    name: str = "truthprobe-chat"

    def render(self, example: ProbeExample) -> tuple[str, PromptSpans]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(
                "the tokenizer has no chat template; use PromptTemplate (plain text) instead."
            )
        user = self.user_template.format(context=example.context, question=example.question)
        messages = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": example.answer},
        ]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        a0 = text.rfind(example.answer)
        c0 = text.find(example.context)
        q0 = text.find(example.question, max(c0, 0))
        if a0 < 0 or c0 < 0 or q0 < 0:
            raise DataError(
                "the chat template changed the context, question or answer text; cannot locate "
                "them in the rendered prompt. Use PromptTemplate instead."
            )
        spans = PromptSpans(
            (c0, c0 + len(example.context)),
            (q0, q0 + len(example.question)),
            (a0, a0 + len(example.answer)),
        )
        return text, spans

    def format(self, example: ProbeExample) -> str:
        return self.render(example)[0]

    def to_dict(self) -> dict[str, str]:
        return {"kind": "chat", "template": self.user_template, "name": self.name}


#: The TruthProbe paper's prompt.
DEFAULT_TEMPLATE = PromptTemplate()

#: LLaVA-1.5's conversation format with an image, a question and the answer (image conditions).
LLAVA_PROBE_TEMPLATE = PromptTemplate(
    "USER: {image}\n{question} ASSISTANT: {answer}", name="truthprobe-llava"
)
