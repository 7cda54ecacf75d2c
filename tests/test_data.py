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
    load_truthprobe_jsonl,
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
    examples = halueval_probe_examples(rows[:3])
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
    ex = load_truthprobe_jsonl(p)
    assert [e.label for e in ex] == [1, 0, 1]
    assert ex[1].source_id == "7" and ex[0].source_id == "line-1" and ex[2].source_id == "line-4"
    assert load_probe_examples(p) == ex
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
        load_truthprobe_jsonl(p)
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
    ex = halueval_probe_examples(rows[:20])
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
