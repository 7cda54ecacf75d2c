"""Probing data: loaders, bad input, splits and prompt templates."""

from __future__ import annotations

import json

import pytest

from lineage_lens.data import (
    DEFAULT_TEMPLATE,
    HALLUCINATED,
    TRUTHFUL,
    ChatPromptTemplate,
    HaluEvalRow,
    ProbeExample,
    PromptTemplate,
    check_two_classes,
    halueval_probe_examples,
    load_halueval_qa,
    load_probe_examples,
    split_probe_eval,
)
from lineage_lens.errors import ConfigError, DataError


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tp_line(label="gold", **over):
    obj = {"context": "Paris is the capital of France.", "question": "Capital?", "answer": "Paris"}
    obj["label"] = label
    obj.update(over)
    return json.dumps(obj)


def test_vendored_halueval_rows_and_examples():
    rows = load_halueval_qa()
    assert len(rows) == 500
    assert rows[0].row_id == "0" and rows[499].row_id == "499"
    assert rows[1].right_answer == "Delhi"
    examples = load_probe_examples(rows[:3])
    assert [e.label for e in examples] == [TRUTHFUL, HALLUCINATED] * 3
    assert examples[0].source_id == examples[1].source_id == "0"
    assert examples[2].answer == "Delhi" and examples[3].answer == rows[1].hallucinated_answer
    assert examples[0].context == rows[0].knowledge
    assert len(load_halueval_qa(limit=7)) == 7
    assert len(load_probe_examples("halueval", limit=4)) == 8


def test_truthprobe_jsonl(tmp_path):
    p = write_lines(
        tmp_path / "d.jsonl",
        [tp_line("gold"), "", tp_line("hallucinated", answer="Rome", source_id=7), tp_line(1)],
    )
    ex = load_probe_examples(p)
    assert [e.label for e in ex] == [1, 0, 1]
    assert ex[1].source_id == "7" and ex[0].source_id == "line-1" and ex[2].source_id == "line-4"
    assert ex[1] == ProbeExample("Paris is the capital of France.", "Capital?", "Rome", 0, "7")
    check_two_classes(ex)


@pytest.mark.parametrize(
    ("lines", "line", "needle"),
    [
        ([tp_line(), "{not json"], 2, "not valid JSON"),
        (
            [tp_line(), json.dumps({"context": "c", "question": "q", "label": "gold"})],
            2,
            "'answer'",
        ),
        ([tp_line("maybe")], 1, "unknown label"),
        ([tp_line(True)], 1, "unknown label"),
        ([tp_line(), "", "[1, 2]"], 3, "JSON object"),
        ([tp_line(answer="  ")], 1, "empty"),
        ([tp_line(context=3)], 1, "must be a string"),
    ],
)
def test_truthprobe_bad_lines_name_file_and_line(tmp_path, lines, line, needle):
    p = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as err:
        load_probe_examples(p)
    assert err.value.line == line and err.value.path == str(p)
    assert needle in str(err.value) and f"bad.jsonl:{line}:" in str(err.value)


def test_halueval_bad_input(tmp_path):
    p = write_lines(tmp_path / "h.json", [json.dumps({"knowledge": "k", "question": "q"})])
    with pytest.raises(DataError, match="right_answer") as err:
        load_halueval_qa(p)
    assert err.value.line == 1
    empty = tmp_path / "empty.json"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no examples"):
        load_halueval_qa(empty)
    with pytest.raises(DataError, match="not found"):
        load_halueval_qa(tmp_path / "missing.json")
    with pytest.raises(DataError, match="known dataset"):
        load_probe_examples(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError):
        load_halueval_qa(limit=0)


# ---- load_probe_examples: every source kind --------------------------------------------------


def expand(rows):
    """The probing examples of HaluEval rows, built by hand: truthful then hallucinated."""
    return [ex for row in rows for ex in row.probe_examples()]


def test_load_probe_examples_from_halueval_and_halueval_rows(tmp_path):
    rows = load_halueval_qa(limit=5)
    want = expand(rows)
    assert want[0] == ProbeExample(
        rows[0].knowledge, rows[0].question, rows[0].right_answer, TRUTHFUL, "0"
    )
    assert load_probe_examples("halueval", limit=5) == want
    assert load_probe_examples("HaluEval", limit=5) == want
    assert load_probe_examples(limit=5) == want  # the default source
    assert load_probe_examples(rows) == want  # a list of HaluEvalRow
    assert load_probe_examples(iter(load_halueval_qa(limit=9)), limit=5) == want
    # a HaluEval QA JSON-lines file is recognised by its fields
    halu = [
        {"knowledge": f"k{i}", "question": f"q{i}", "right_answer": "r", "hallucinated_answer": "h"}
        for i in range(3)
    ]
    p = write_lines(tmp_path / "qa.json", [json.dumps(r) for r in halu])
    assert load_probe_examples(p) == expand(
        HaluEvalRow(str(i), f"k{i}", f"q{i}", "r", "h") for i in range(3)
    )
    assert load_probe_examples(p, limit=2) == load_probe_examples(p)[:4]


def test_load_probe_examples_from_truthprobe_files(tmp_path):
    p = write_lines(
        tmp_path / "d.jsonl",
        [tp_line("gold"), "", tp_line("hallucinated", answer="Rome", id=7), tp_line("truthful")],
    )
    ctx, q = "Paris is the capital of France.", "Capital?"
    want = [
        ProbeExample(ctx, q, "Paris", TRUTHFUL, "line-1"),
        ProbeExample(ctx, q, "Rome", HALLUCINATED, "7"),
        ProbeExample(ctx, q, "Paris", TRUTHFUL, "line-4"),
    ]
    assert load_probe_examples(p) == load_probe_examples(str(p)) == want
    assert load_probe_examples(p, limit=2) == want[:2]
    # the image layout: image_path relative to the file's folder, or to image_root
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "img" / "a.png")
    line = {"image_path": "img/a.png", "question": "q?", "answer": "a cat", "label": "gold"}
    images = write_lines(tmp_path / "images.jsonl", [json.dumps(line)])
    want_image = ProbeExample("", "q?", "a cat", TRUTHFUL, "line-1", tmp_path / "img" / "a.png")
    (got,) = load_probe_examples(images)
    assert got == want_image and got.image == want_image.image
    (tmp_path / "sub").mkdir()
    moved = write_lines(tmp_path / "sub" / "images.jsonl", [json.dumps(line)])
    with pytest.raises(DataError, match=r"images\.jsonl:1: image 'img/a\.png' not found"):
        load_probe_examples(moved)
    (got,) = load_probe_examples(moved, image_root=tmp_path)
    assert got.image == tmp_path / "img" / "a.png"


def test_load_probe_examples_of_datasets_and_example_lists():
    from datasets import Dataset

    rows = load_halueval_qa(limit=4)
    assert load_probe_examples(load_halueval_qa(limit=4, as_dataset=True)) == expand(rows)
    assert load_probe_examples(load_halueval_qa(limit=4, as_dataset=True), limit=2) == expand(
        rows[:2]
    )
    ds = Dataset.from_list(
        [json.loads(tp_line("gold")), json.loads(tp_line("hallucinated", answer="Rome"))]
    )
    ctx, q = "Paris is the capital of France.", "Capital?"
    want = [
        ProbeExample(ctx, q, "Paris", TRUTHFUL, "row-0"),
        ProbeExample(ctx, q, "Rome", HALLUCINATED, "row-1"),
    ]
    assert load_probe_examples(ds) == want
    assert load_probe_examples(ds, limit=1) == want[:1]
    assert load_probe_examples(want, as_dataset=True)["source_id"] == ["row-0", "row-1"]
    # a list (or any iterable) of ProbeExample is kept as it is, in a new list
    got = load_probe_examples(want)
    assert got == want and got is not want
    assert load_probe_examples(tuple(want), limit=1) == want[:1]
    assert load_probe_examples([]) == []


def test_n_probe_is_the_probing_part_of_the_row_split(tmp_path):
    rows = load_halueval_qa()
    for n, seed in [(292, 0), (20, 1)]:
        probe_rows, _ = split_probe_eval(rows, n_probe=n, seed=seed)
        want = expand(probe_rows)
        assert load_probe_examples("halueval", n_probe=n, split_seed=seed) == want
        assert load_probe_examples(rows, n_probe=n, split_seed=seed) == want
        assert len(want) == 2 * n
    # limit reads the first rows, then the split picks among them
    probe_rows, _ = split_probe_eval(rows[:10], n_probe=3, seed=2)
    assert load_probe_examples("halueval", limit=10, n_probe=3, split_seed=2) == expand(probe_rows)
    # a HaluEval Dataset is split by its rows too
    ds = load_halueval_qa(limit=30, as_dataset=True)
    assert load_probe_examples(ds, n_probe=7, split_seed=4) == expand(
        split_probe_eval(rows[:30], n_probe=7, seed=4)[0]
    )
    # other sources: split as examples, grouped by source_id
    lines = [tp_line("gold", source_id=i // 2) for i in range(12)]
    p = write_lines(tmp_path / "d.jsonl", lines)
    examples = load_probe_examples(p)
    probe, _ = split_probe_eval(examples, n_probe=2, seed=5)
    assert load_probe_examples(p, n_probe=2, split_seed=5) == probe and len(probe) == 4
    assert load_probe_examples(examples, n_probe=2, split_seed=5) == probe
    with pytest.raises(ConfigError, match="n_probe=501"):
        load_probe_examples("halueval", n_probe=501)


@pytest.mark.parametrize(
    "source",
    [
        42,
        None,
        b"halueval",
        {"context": "c", "question": "q", "answer": "a", "label": "gold"},
        ["halueval"],
        [ProbeExample("c", "q", "a", 1, "0"), HaluEvalRow("1", "k", "q", "r", "h")],
    ],
)
def test_a_wrong_source_type_is_a_config_error(source):
    with pytest.raises(ConfigError, match=r"source must be 'halueval', the path of a JSON-lines"):
        load_probe_examples(source)


def test_halueval_probe_examples_is_a_deprecated_alias():
    rows = load_halueval_qa(limit=3)
    with pytest.warns(DeprecationWarning, match=r"use load_probe_examples\(rows\)"):
        got = halueval_probe_examples(rows)
    assert got == load_probe_examples(rows) == expand(rows)


def test_check_two_classes():
    one = [ProbeExample("c", "q", "a", 1, str(i)) for i in range(3)]
    with pytest.raises(DataError, match="only one class"):
        check_two_classes(one)
    with pytest.raises(DataError, match="no examples"):
        check_two_classes([])
    check_two_classes([*one, ProbeExample("c", "q", "b", 0, "9")])


def test_split_is_deterministic_and_disjoint():
    rows = load_halueval_qa()
    probe, evals = split_probe_eval(rows, n_probe=292, seed=0)
    assert len(probe) == 292 and len(evals) == 208
    assert {r.row_id for r in probe}.isdisjoint(r.row_id for r in evals)
    assert split_probe_eval(rows, 292, 0) == (probe, evals)
    assert split_probe_eval(rows, 292, 1)[0] != probe
    # ProbeExamples are grouped by source row: both answers of a row land on one side.
    ex = load_probe_examples(rows[:20])
    p_ex, e_ex = split_probe_eval(ex, n_probe=5, seed=3)
    assert len(p_ex) == 10 and len(e_ex) == 30
    assert {e.source_id for e in p_ex}.isdisjoint(e.source_id for e in e_ex)
    # the same seed picks the same rows whether given rows or their examples
    assert {e.source_id for e in p_ex} == {r.row_id for r in split_probe_eval(rows[:20], 5, 3)[0]}
    with pytest.raises(ConfigError):
        split_probe_eval(rows[:3], n_probe=4)


def test_prompt_template_spans():
    ex = ProbeExample("Paris is in France.", "Where is Paris?", "France", 1, "0")
    text, spans = DEFAULT_TEMPLATE.render(ex)
    assert text == "Context:\nParis is in France.\n\nQuestion: Where is Paris?\nAnswer: France"
    assert text[slice(*spans.context)] == ex.context
    assert text[slice(*spans.question)] == ex.question
    assert text[slice(*spans.answer)] == ex.answer and spans.answer_end == len(text)
    assert DEFAULT_TEMPLATE.format(ex) == text
    custom = PromptTemplate("Q: {question}\nA: {answer}.\n", name="short")
    text2, spans2 = custom.render(ex)
    assert text2[: spans2.answer_end].endswith("France") and spans2.context == (0, 0)
    with pytest.raises(ConfigError):
        PromptTemplate("no answer field {context}")
    with pytest.raises(ConfigError):
        PromptTemplate("{answer} {bogus}")


def test_chat_template_spans(tiny_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    ex = ProbeExample("Paris is in France.", "Where is Paris?", "France", 1, "0")
    with pytest.raises(ConfigError, match="chat template"):
        ChatPromptTemplate(tok).render(ex)
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    )
    text, spans = ChatPromptTemplate(tok).render(ex)
    assert text[slice(*spans.answer)] == "France" and text[spans.answer_end :] == "</s>\n"
    assert text[slice(*spans.context)] == ex.context


def test_halueval_row_probe_examples():
    row = HaluEvalRow("3", "k", "q", "good", "bad")
    good, bad = row.probe_examples()
    assert good.label == 1 and bad.label == 0 and good.source_id == bad.source_id == "3"
