"""CHAIR: singularisation, phrases, hand-computed metrics, file formats, bad input, regression."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lineage_lens._resources import resource_path
from lineage_lens.cli import app
from lineage_lens.errors import DataError
from lineage_lens.evals.chair import (
    ChairResult,
    ObjectVocabulary,
    compute_chair,
    load_captions,
    load_ground_truth,
    singularize,
)


@pytest.mark.parametrize(
    ("plural", "singular"),
    [
        ("people", "person"),
        ("children", "child"),
        ("mice", "mouse"),
        ("knives", "knife"),
        ("buses", "bus"),
        ("glasses", "glass"),
        ("benches", "bench"),
        ("skis", "ski"),
        ("cherries", "cherry"),
        ("boxes", "box"),
        ("horses", "horse"),
        ("giraffes", "giraffe"),
        ("sandwiches", "sandwich"),
        ("ties", "tie"),
        ("oxen", "ox"),
        ("sheep", "sheep"),
        ("bus", "bus"),
        ("glass", "glass"),
        ("tennis", "tennis"),
        ("scissors", "scissors"),
        ("dog", "dog"),
    ],
)
def test_singularize(plural: str, singular: str) -> None:
    assert singularize(plural) == singular


def test_singularize_prefers_vocabulary_words() -> None:
    assert singularize("cookies") == "cookie"
    assert singularize("hoodies", {"hoodie"}) == "hoodie"
    assert singularize("selfies") == "selfy"  # no vocabulary: the default rule
    assert singularize("selfies", {"selfie"}) == "selfie"


def test_coco_vocabulary_phrases_and_special_cases() -> None:
    vocab = ObjectVocabulary.coco()
    assert len(vocab.classes) == 80
    words = vocab.words("Two HOT DOGS, a teddy-bear? No: teddy bears, motor bikes and cell phones.")
    assert "hot dog" in words and "teddy bear" in words
    assert "motor bike" in words and "cell phone" in words
    classes = [m.cls for m in vocab.mentions("Two hot dogs near motor bikes and cell phones")]
    assert classes == ["hot dog", "motorcycle", "cell phone"]
    # baby / adult animals are the animal, not a person; passenger jets are airplanes
    assert [m.cls for m in vocab.mentions("a baby elephant and an adult giraffe")] == [
        "elephant",
        "giraffe",
    ]
    assert [m.cls for m in vocab.mentions("a passenger jet")] == ["airplane"]
    # toilet seat is a toilet, and "seat" does not fire chair when a toilet is mentioned
    assert [m.cls for m in vocab.mentions("the toilet seat is up")] == ["toilet"]
    assert [m.cls for m in vocab.mentions("a toilet and its seat")] == ["toilet"]
    assert [m.cls for m in vocab.mentions("a seat")] == ["chair"]
    # train tracks are no train; three-word phrases work; hyphenated words stay whole
    assert vocab.mentions("train tracks in the snow") == []
    assert [m.cls for m in vocab.mentions("a stove top oven")] == ["oven"]
    assert vocab.mentions("a remote-controlled toy") == []
    assert [m.cls for m in vocab.mentions("Several people, two men and children")] == ["person"] * 3


HAND_GT = {"1": ["dog", "person"], "2": ["cat"], "3": ["car", "bus"]}
HAND_CAPTIONS = [
    # mentions {dog, person, frisbee}: frisbee hallucinated (once even if repeated)
    {"image_id": 1, "caption": "A man throws a frisbee to his dogs. The frisbee is red."},
    # mentions {cat}: correct
    {"image_id": 2, "caption": "A kitten sleeps."},
    # mentions {bus, truck, person}: truck and person hallucinated
    {"image_id": 3, "caption": "Buses and a truck; a woman waits."},
]


def test_hand_computed_metrics() -> None:
    res = compute_chair(HAND_CAPTIONS, ground_truth=HAND_GT)
    m = res.metrics
    assert m["n"] == 3 and m["n_skipped"] == 0
    assert m["chair_s"] == pytest.approx(2 / 3)
    assert m["n_mentions"] == 3 + 1 + 3 and m["n_hallucinated"] == 1 + 0 + 2
    assert m["chair_i"] == pytest.approx(3 / 7)
    assert m["recall"] == pytest.approx((2 + 1 + 1) / (2 + 1 + 2))
    assert m["mean_length"] == pytest.approx((12 + 3 + 7) / 3)
    first = res.per_caption.iloc[0]
    assert first["hallucinated"] == ["frisbee"] and first["hallucinated_words"] == ["frisbee"]
    assert res.per_caption.iloc[2]["hallucinated"] == ["truck", "person"]
    # counting every mention (original CHAIR): frisbee twice, man + dog once each in caption 1
    every = compute_chair(HAND_CAPTIONS, ground_truth=HAND_GT, count_once=False).metrics
    assert every["n_mentions"] == 4 + 1 + 3 and every["n_hallucinated"] == 2 + 0 + 2
    assert every["chair_i"] == pytest.approx(4 / 8)


def test_custom_vocabulary_plugs_in() -> None:
    vocab = ObjectVocabulary.from_classes(["cat", "dog", "ball"], name="zoo")
    res = compute_chair(
        [{"image_id": "a", "caption": "There is a cat and two balls."}],
        vocabulary=vocab,
        ground_truth={"a": ["cat"]},
    )
    assert res["chair_s"] == 1.0 and res["chair_i"] == 0.5 and res["recall"] == 1.0


def test_caption_file_formats(tmp_path) -> None:
    recs = [{"image_id": 1, "caption": "a dog"}, {"image_id": 2, "text": "a cat"}]
    (tmp_path / "list.json").write_text(json.dumps(recs))
    (tmp_path / "lines.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    (tmp_path / "concat.json").write_text("".join(json.dumps(r, indent=4) for r in recs))
    for name in ("list.json", "lines.jsonl", "concat.json"):
        caps = load_captions(tmp_path / name)
        assert [(c.image_id, c.caption) for c in caps] == [("1", "a dog"), ("2", "a cat")]


def test_bad_caption_files(tmp_path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("  \n")
    with pytest.raises(DataError, match="empty"):
        load_captions(empty)
    bad = tmp_path / "bad.json"
    bad.write_text('{"image_id": 1, "caption": "x"}\n{"image_id": 2,')
    with pytest.raises(DataError, match="line 2|:2:"):
        load_captions(bad)
    no_text = tmp_path / "notext.json"
    no_text.write_text('[{"image_id": 1}]')
    with pytest.raises(DataError, match="caption"):
        load_captions(no_text)


def test_unknown_image_ids() -> None:
    caps = [*HAND_CAPTIONS, {"image_id": 99, "caption": "a dog"}]
    res = compute_chair(caps, ground_truth=HAND_GT)
    assert res["n"] == 3 and res["n_skipped"] == 1 and res.skipped_ids == ["99"]
    with pytest.raises(DataError, match="1 of 4 captions"):
        compute_chair(caps, ground_truth=HAND_GT, on_missing="error")
    with pytest.raises(DataError, match="without ground truth"):
        compute_chair([{"image_id": 99, "caption": "a dog"}], ground_truth=HAND_GT)


def test_ground_truth_must_match_vocabulary(tmp_path) -> None:
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"1": ["dog", "unicorn"]}))
    with pytest.raises(DataError, match="unicorn"):
        load_ground_truth(gt, ObjectVocabulary.coco())


def test_vendored_llava_captions_regression(tmp_path) -> None:
    """Numbers measured on the vendored 2000 LLaVA-13B captions (all have ground truth)."""
    res = compute_chair(resource_path("chair", "captions_llava_instruction1.json"))
    m = res.metrics
    assert (m["n"], m["n_skipped"], m["n_mentions"], m["n_hallucinated"]) == (2000, 0, 7158, 2226)
    assert m["chair_s"] == pytest.approx(0.629)
    assert m["chair_i"] == pytest.approx(2226 / 7158)
    assert m["recall"] == pytest.approx(0.7743758831841734)
    assert m["mean_length"] == pytest.approx(91.3005)
    every = compute_chair(
        resource_path("chair", "captions_llava_instruction1.json"), count_once=False
    ).metrics
    assert (every["n_mentions"], every["n_hallucinated"]) == (15066, 2804)
    path = res.save(tmp_path / "chair.json")
    back = ChairResult.load(path)
    assert back.metrics == m and len(back.per_caption) == 2000


def test_cli_scores_caption_file(tmp_path) -> None:
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps(HAND_CAPTIONS))
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(HAND_GT))
    out = tmp_path / "metrics.json"
    result = CliRunner().invoke(
        app,
        ["eval", "chair", "--captions", str(caps), "--ground-truth", str(gt), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "CHAIR_s 0.6667" in result.output and "n       3" in result.output
    details = json.loads(out.read_text())
    assert details["per_caption"][0]["hallucinated_words"] == ["frisbee"]
    empty = tmp_path / "empty.json"
    empty.write_text("")
    bad = CliRunner().invoke(app, ["eval", "chair", "--captions", str(empty)])
    assert bad.exit_code != 0 and isinstance(bad.exception, DataError)
