"""Fuzzing the loaders (issue 20): whatever the bytes, a loader returns or raises a
LineageLensError, never another exception (no raw tracebacks for users).

Derandomised and without an example database, so every run tries the same inputs; modest
``max_examples`` keep the file at a few seconds.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lineage_lens.activations import HeadActivations  # noqa: E402
from lineage_lens.data import load_halueval_qa, load_probe_examples  # noqa: E402
from lineage_lens.errors import LineageLensError  # noqa: E402
from lineage_lens.evals import ResultCache  # noqa: E402
from lineage_lens.evals.chair import load_ground_truth  # noqa: E402
from lineage_lens.evals.pope import load_pope  # noqa: E402
from lineage_lens.scores import TruthScores, load_scores  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None)

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = ["context", "question", "answer", "label", "knowledge", "right_answer",
          "hallucinated_answer", "question_id", "image", "text", "source_id"]  # fmt: skip
RECORDS = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=5),
    st.sampled_from(["gold", "hallucinated", "yes", "no", 1, 0, ""]) | JSON_VALUES,
    max_size=8,
)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def loads_or_clean_error(load: Callable[[Path], Any], path: Path) -> None:
    """``load(path)`` either returns or raises a LineageLensError; anything else fails the test."""
    try:
        load(path)
    except LineageLensError as exc:
        assert str(exc).strip(), "an error needs a message"


JSONL_LOADERS = [load_probe_examples, load_halueval_qa, load_pope, ResultCache]


@FUZZ
@given(data=st.binary(max_size=300))
def test_json_lines_loaders_on_arbitrary_bytes(work, data):
    path = work / "bytes.jsonl"
    path.write_bytes(data)
    for load in JSONL_LOADERS:
        loads_or_clean_error(load, path)


@FUZZ
@given(records=st.lists(RECORDS | JSON_VALUES, min_size=1, max_size=4), crlf=st.booleans())
def test_json_lines_loaders_on_arbitrary_json(work, records, crlf):
    path = work / "records.jsonl"
    path.write_text(("\r\n" if crlf else "\n").join(json.dumps(r) for r in records))
    for load in JSONL_LOADERS:
        loads_or_clean_error(load, path)


@FUZZ
@given(value=JSON_VALUES | st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=4))
def test_chair_ground_truth_on_arbitrary_json(work, value):
    path = work / "gt.json"
    path.write_text(json.dumps(value))
    loads_or_clean_error(load_ground_truth, path)


CELLS = st.sampled_from(["", "0", "1", "-1", "0.5", "nan", "inf", "1e300", "x", '"', "2.5"])
CSV_TEXT = st.lists(
    st.lists(CELLS | st.text(alphabet=string.printable, max_size=4), min_size=1, max_size=5),
    max_size=6,
).map(lambda rows: "\n".join(",".join(r) for r in rows))


@FUZZ
@given(
    header=st.sampled_from(["layer,head,accuracy", "layer,head,accuracy,f1", "layer,accuracy", ""]),
    body=CSV_TEXT,
)
def test_score_csv_on_arbitrary_tables(work, header, body):
    path = work / "scores.csv"
    path.write_text(header + "\n" + body)
    loads_or_clean_error(load_scores, path)


@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".npz", ".npy", ".csv"]))
def test_score_loaders_on_arbitrary_bytes(work, data, suffix):
    path = work / f"bytes{suffix}"
    path.write_bytes(data)
    loads_or_clean_error(load_scores, path)
    if suffix == ".npz":
        loads_or_clean_error(HeadActivations.load, path)


@pytest.fixture(scope="module")
def valid_files(work) -> dict[str, bytes]:
    acc = np.linspace(0.4, 0.9, 6).reshape(2, 3)
    scores = TruthScores({"accuracy": acc, "f1": acc}, model="m", n=10, folds=2)
    np.save(work / "valid.npy", acc)
    out = {
        ".npz": scores.save(work / "valid.npz").read_bytes(),
        ".npy": (work / "valid.npy").read_bytes(),
        ".csv": scores.to_csv(work / "valid.csv").read_bytes(),
    }
    return out


@FUZZ
@given(
    suffix=st.sampled_from([".npz", ".npy", ".csv"]),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=3),
)
def test_score_loaders_on_damaged_valid_files(work, valid_files, suffix, cut, flips):
    """Truncated and bit-flipped versions of real score files."""
    data = bytearray(valid_files[suffix])
    for where, xor in flips:
        data[int(where * (len(data) - 1))] ^= xor
    path = work / f"damaged{suffix}"
    path.write_bytes(bytes(data[: int(cut * len(data))] if cut < 0.95 else data))
    loads_or_clean_error(load_scores, path)
