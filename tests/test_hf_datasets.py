"""Hugging Face datasets: loaders return them, functions that take examples accept them, and a
Dataset row is validated like a JSON line (same messages, ``dataset row N`` for file:line)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

from lineage_lens.data import (
    HaluEvalRow,
    ProbeExample,
    check_two_classes,
    load_halueval_qa,
    load_probe_examples,
    split_probe_eval,
)
from lineage_lens.errors import ConfigError, DataError
from lineage_lens.evals.halueval import eval_rows
from lineage_lens.evals.pope import PopeQuestion, load_pope
from lineage_lens.hf_datasets import is_dataset, to_dataset
from lineage_lens.records import detect_kind, from_dataset


def write_lines(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def tp_row(label="gold", **over):
    row = {"context": "Paris is the capital of France.", "question": "Capital?", "answer": "Paris"}
    row["label"] = label
    row.update(over)
    return row


@pytest.fixture
def image_file(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    for i in range(2):
        PILImage.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(
            tmp_path / "img" / f"{i}.png"
        )
    rows = [
        {"image_path": f"img/{i}.png", "question": "What?", "answer": a, "label": lab}
        for i, (a, lab) in enumerate([("a cat", "gold"), ("a dog", "hallucinated")])
    ]
    return write_lines(tmp_path / "images.jsonl", rows)


# ---- round trips: loader -> Dataset -> records -------------------------------------------


def test_halueval_round_trip():
    rows = load_halueval_qa(limit=12)
    ds = load_halueval_qa(limit=12, as_dataset=True)
    assert isinstance(ds, Dataset) and len(ds) == 12
    assert {"knowledge", "question", "right_answer", "hallucinated_answer"} <= set(ds.column_names)
    assert from_dataset(ds) == rows
    assert detect_kind(ds) == "halueval"
    # row ids survive a split (they are not the Dataset's row index then)
    _, rest = split_probe_eval(rows, n_probe=5, seed=0)
    assert from_dataset(to_dataset(rest), "halueval") == rest
    # functions that take rows or examples accept the Dataset
    assert load_probe_examples(ds) == load_probe_examples(rows)
    assert load_probe_examples("halueval", limit=12, as_dataset=True)["answer"][:2] == [
        rows[0].right_answer,
        rows[0].hallucinated_answer,
    ]
    assert eval_rows(to_dataset(rest)) == rest
    assert split_probe_eval(ds, n_probe=5, seed=0) == split_probe_eval(rows, n_probe=5, seed=0)


def test_halueval_dataset_without_row_id_uses_the_index():
    ds = Dataset.from_dict(
        {
            "knowledge": ["k0", "k1"],
            "question": ["q0", "q1"],
            "right_answer": ["r0", "r1"],
            "hallucinated_answer": ["h0", "h1"],
        }
    )
    assert from_dataset(ds) == [
        HaluEvalRow("0", "k0", "q0", "r0", "h0"),
        HaluEvalRow("1", "k1", "q1", "r1", "h1"),
    ]


def test_truthprobe_text_round_trip(tmp_path):
    p = write_lines(
        tmp_path / "d.jsonl",
        [tp_row("gold"), tp_row("hallucinated", answer="Rome", id=7), tp_row(1)],
    )
    examples = load_probe_examples(p)
    ds = load_probe_examples(p, as_dataset=True)
    assert ds.column_names == ["context", "question", "answer", "label", "source_id"]
    assert from_dataset(ds) == examples
    assert ds["source_id"] == ["line-1", "7", "line-3"]
    check_two_classes(ds)
    # a Dataset read straight from the JSON-lines file gives the same examples, source ids aside
    raw = from_dataset(Dataset.from_json(str(p)))
    assert [(e.context, e.answer, e.label) for e in raw] == [
        (e.context, e.answer, e.label) for e in examples
    ]
    assert [e.source_id for e in raw] == ["row-0", "7", "row-2"]


def test_truthprobe_image_path_round_trip(image_file, tmp_path):
    examples = load_probe_examples(image_file)
    ds = load_probe_examples(image_file, as_dataset=True)
    assert "image_path" in ds.column_names
    assert from_dataset(ds) == examples
    # relative image paths resolve against image_root
    rel = Dataset.from_list([{**r, "image_path": f"img/{i}.png"} for i, r in enumerate(ds)])
    assert [e.image for e in from_dataset(rel, image_root=tmp_path)] == [e.image for e in examples]
    with pytest.raises(DataError, match=r"dataset row 0: image 'img/0.png' not found.*image_root"):
        from_dataset(rel)


def test_truthprobe_pil_image_column(image_file):
    pil = [
        ProbeExample("", "What?", "a cat", 1, "s0", PILImage.open(image_file.parent / "img/0.png")),
        ProbeExample("", "What?", "a dog", 0, "s1", PILImage.open(image_file.parent / "img/1.png")),
    ]
    ds = to_dataset(pil)
    assert isinstance(ds.features["image"], Image)
    back = from_dataset(ds)
    assert [(e.answer, e.label, e.source_id) for e in back] == [
        (e.answer, e.label, e.source_id) for e in pil
    ]
    for got, want in zip(back, pil, strict=True):
        np.testing.assert_array_equal(np.asarray(got.image), np.asarray(want.image))
    # the authors' image layout with an image column of paths instead of image_path
    paths = Dataset.from_dict(
        {
            "image": [str(image_file.parent / "img/0.png")],
            "question": ["What?"],
            "answer": ["a cat"],
            "label": ["gold"],
        }
    )
    (ex,) = from_dataset(paths)
    assert ex.image == image_file.parent / "img/0.png" and ex.context == ""


def test_class_label_and_numpy_format():
    ds = Dataset.from_dict(
        {
            "context": ["c", "c"],
            "question": ["q", "q"],
            "answer": ["a", "b"],
            "label": [0, 1],
        },
        features=Features(
            {
                "context": Value("string"),
                "question": Value("string"),
                "answer": Value("string"),
                "label": ClassLabel(names=["gold", "hallucinated"]),
            }
        ),
    ).with_format("numpy")
    # ClassLabel integers mean their names: 0 is "gold" here
    assert [e.label for e in from_dataset(ds)] == [1, 0]


def test_pope_round_trip(tmp_path):
    qs = load_pope("random", limit=20)
    ds = load_pope("random", limit=20, as_dataset=True)
    assert ds.column_names == ["question_id", "image", "text", "label"]
    assert from_dataset(ds) == qs and detect_kind(ds) == "pope"
    assert load_pope(ds) == qs and load_pope(ds, limit=3) == qs[:3]
    assert isinstance(qs[0], PopeQuestion)


# ---- the same validation errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        (tp_row("maybe"), "unknown label 'maybe'"),
        (tp_row(True), "unknown label True"),
        (tp_row(answer="  "), "field 'answer' is empty"),
        (tp_row(context=3), "field 'context' must be a string, got int"),
    ],
)
def test_bad_value_names_the_row_like_the_file_names_the_line(tmp_path, row, needle):
    rows = [tp_row(), tp_row(), row]
    p = write_lines(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as from_file:
        load_probe_examples(p)
    ds = Dataset.from_dict({"x": [0, 1, 2]}).map(lambda _, i: rows[i], with_indices=True)
    ds = ds.remove_columns("x")
    with pytest.raises(DataError) as from_ds:
        from_dataset(ds, "truthprobe")
    assert str(from_file.value) == f"{p}:3: " + str(from_ds.value).removeprefix("dataset row 2: ")
    assert str(from_ds.value).startswith("dataset row 2: ") and needle in str(from_ds.value)


def test_missing_values_are_missing_fields():
    # rows without a field (None in the Dataset) fail as a JSON line without it would
    ds = Dataset.from_list([tp_row(), {**tp_row(), "answer": None}])
    with pytest.raises(DataError, match=r"^dataset row 1: missing field 'answer'; every row needs"):
        from_dataset(ds)


def test_missing_columns_are_listed_by_name():
    ds = Dataset.from_dict({"question": ["q"], "reply": ["a"]})
    with pytest.raises(DataError) as err:
        from_dataset(ds, "truthprobe")
    msg = str(err.value)
    assert "missing the column(s) 'answer', 'label', 'context' or 'image_path' or 'image'" in msg
    assert "found: question, reply" in msg
    with pytest.raises(DataError, match=r"missing the column\(s\) 'hallucinated_answer'"):
        from_dataset(ds.rename_column("reply", "right_answer").add_column("knowledge", ["k"]))
    with pytest.raises(DataError, match=r"POPE dataset is missing the column\(s\) 'question_id'"):
        load_pope(Dataset.from_dict({"image": ["a.jpg"], "text": ["t"], "label": ["yes"]}))


def test_halueval_and_pope_row_errors():
    halu = load_halueval_qa(limit=3, as_dataset=True)
    bad = halu.map(
        lambda r, i: {"right_answer": " " if i == 1 else r["right_answer"]}, with_indices=True
    )
    with pytest.raises(DataError, match=r"^dataset row 1: field 'right_answer' is empty"):
        from_dataset(bad)
    pope = load_pope("random", limit=3, as_dataset=True)
    maybe = pope.map(lambda r, i: {"label": "maybe" if i == 2 else r["label"]}, with_indices=True)
    with pytest.raises(DataError, match=r"^dataset row 2: label 'maybe' is neither 'yes' nor 'no'"):
        load_pope(maybe)
    twice = to_dataset([PopeQuestion("1", "a.jpg", "t", True)] * 2)
    with pytest.raises(DataError, match="unique per dataset"):
        load_pope(twice)


def test_wrong_objects_say_what_to_pass():
    ds = load_halueval_qa(limit=2, as_dataset=True)
    with pytest.raises(DataError, match=r"DatasetDict with the splits test; pass one split"):
        from_dataset(DatasetDict({"test": ds}), "halueval")
    with pytest.raises(DataError, match="holds no rows"):
        from_dataset(ds.select([]))
    with pytest.raises(DataError, match="no records"):
        to_dataset([])
    with pytest.raises(ConfigError, match="one kind"):
        to_dataset([*load_halueval_qa(limit=1), *load_probe_examples("halueval", limit=1)])
    with pytest.raises(ConfigError, match="unknown dataset kind"):
        from_dataset(ds, "squad")  # type: ignore[arg-type]
    assert is_dataset(ds) and not is_dataset([1])


# ---- functions that take examples ---------------------------------------------------------


def test_collect_head_activations_on_a_dataset_equals_on_the_list(tiny_llama):
    from lineage_lens.capture import collect_head_activations

    examples = load_probe_examples("halueval", limit=3)
    kwargs = {"batch_size": 4, "progress": False}
    want = collect_head_activations(tiny_llama, examples, **kwargs)
    got = collect_head_activations(tiny_llama, to_dataset(examples), **kwargs)
    np.testing.assert_array_equal(got.acts, want.acts)
    np.testing.assert_array_equal(got.labels, want.labels)
    assert list(got.source_ids) == list(want.source_ids)
    # a HaluEval-layout Dataset gives its two examples per row
    rows_ds = load_halueval_qa(limit=3, as_dataset=True)
    np.testing.assert_array_equal(
        collect_head_activations(tiny_llama, rows_ds, **kwargs).acts, want.acts
    )


def test_evaluate_pope_on_a_dataset_equals_on_the_file(tiny_llava, tmp_path):
    from lineage_lens.evals.pope import evaluate_pope

    rng = np.random.default_rng(0)
    for i in range(2):
        PILImage.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
            tmp_path / f"im{i}.png"
        )
    qs = [{"question_id": q, "image": f"im{q % 2}.png", "text": "a cat ?", "label": lab}
          for q, lab in enumerate(["yes", "no", "no"])]  # fmt: skip
    qfile = write_lines(tmp_path / "q.jsonl", qs)
    kwargs = {"batch_size": 2, "progress": False}
    want = evaluate_pope(tiny_llava, tmp_path, [qfile], **kwargs).examples
    ds = load_pope(qfile, as_dataset=True)
    got = evaluate_pope(tiny_llava, tmp_path, {"mine": ds}, **kwargs).examples
    assert list(got["split"].unique()) == ["mine"]
    cols = ["question_id", "label", "log_p_yes", "log_p_no"]
    assert got[cols].equals(want[cols])
    assert evaluate_pope(tiny_llava, tmp_path, ds, **kwargs).examples["split"].iloc[0] == "dataset"


def test_arbitrary_rows_convert_or_raise_a_clean_error():
    """Whatever the column values, a conversion returns records or raises a LineageLensError."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    from lineage_lens.errors import LineageLensError

    fields = ["context", "question", "answer", "label", "knowledge", "right_answer",
              "hallucinated_answer", "question_id", "image", "text", "source_id", "image_path"]  # fmt: skip
    value = st.one_of(
        st.sampled_from(["gold", "hallucinated", "yes", "no", "", " ", "x.png"]),
        st.integers(-2, 2),
        st.booleans(),
        st.floats(allow_nan=True),
        # Arrow stores integers as int64; larger ones are not a Dataset anyone can build.
        st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2),
    )

    @hypothesis.settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @hypothesis.given(
        columns=st.lists(st.sampled_from(fields), min_size=1, max_size=6, unique=True),
        column_value=st.lists(value, min_size=6, max_size=6),
        n=st.integers(1, 3),
    )
    def convert(columns, column_value, n):
        ds = Dataset.from_dict({c: [column_value[i]] * n for i, c in enumerate(columns)})
        for kind in ("truthprobe", "halueval", "pope"):
            try:
                from_dataset(ds, kind)
            except LineageLensError as exc:
                assert str(exc).strip()

    convert()
