"""POPE: question files, image checks, LLaVA inputs, both scoring modes on the tiny LLaVA."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lineage_lens.errors import ConfigError, DataError
from lineage_lens.evals.pope import POPE_SPLITS, PopeAnswers, evaluate_pope, load_pope
from lineage_lens.images import encode_image_prompt, load_pixel_values, vision_settings
from lineage_lens.testing import TINY_IMAGE_SIZE, TINY_IMAGE_TOKENS

QUESTIONS = [(0, "yes"), (0, "no"), (1, "yes"), (2, "no")]


@pytest.fixture
def pope_set(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
            img_dir / f"im{i}.png"
        )
    qfile = tmp_path / "questions.json"
    with open(qfile, "w") as fh:
        for qid, (im, label) in enumerate(QUESTIONS):
            row = {
                "question_id": qid,
                "image": f"im{im}.png",
                "text": "is there a cat in the image ?",
                "label": label,
            }
            fh.write(json.dumps(row) + "\n")
    return img_dir, qfile


def test_vendored_splits_load() -> None:
    for split in POPE_SPLITS:
        qs = load_pope(split, limit=10)
        assert len(qs) == 10 and qs[0].image.startswith("COCO_val2014_")
    full = load_pope("random")
    assert len(full) == 3000 and sum(q.label for q in full) == 1500


def test_bad_labels_and_fields(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        '{"question_id": 1, "image": "a.png", "text": "x", "label": "yes"}\n'
        '{"question_id": 2, "image": "a.png", "text": "x", "label": "maybe"}\n'
    )
    with pytest.raises(DataError, match=r"bad.json:2: label 'maybe'"):
        load_pope(bad)
    missing = tmp_path / "missing.json"
    missing.write_text('{"question_id": 1, "image": "a.png", "label": "yes"}\n')
    with pytest.raises(DataError, match="fields"):
        load_pope(missing)
    with pytest.raises(DataError, match="not a vendored split"):
        load_pope("nonsense")


def test_missing_images_named(tiny_llava, pope_set, tmp_path) -> None:
    _, qfile = pope_set
    empty = tmp_path / "empty_images"
    empty.mkdir()
    with pytest.raises(DataError, match=r"3 of 3 images are missing from .*empty_images"):
        evaluate_pope(tiny_llava, empty, [qfile], progress=False)


def test_llava_inputs(tiny_llava, pope_set) -> None:
    img_dir, _ = pope_set
    s = vision_settings(tiny_llava)
    assert s.image_size == TINY_IMAGE_SIZE and s.n_image_tokens == TINY_IMAGE_TOKENS
    ids = encode_image_prompt(tiny_llava.tokenizer, "is there a cat ?", s)
    assert ids.count(s.image_token_id) == TINY_IMAGE_TOKENS
    pv = load_pixel_values([img_dir / "im0.png", img_dir / "im1.png"], s)
    assert pv.shape == (2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE) and torch.isfinite(pv).all()
    with pytest.raises(ConfigError, match="image"):
        encode_image_prompt(tiny_llava.tokenizer, "q", s, "no placeholder {question}")


def test_text_model_is_rejected(tiny_llama) -> None:
    with pytest.raises(ConfigError, match="vision"):
        vision_settings(tiny_llama)


def test_logprob_and_generate_modes(tiny_llava, pope_set) -> None:
    img_dir, qfile = pope_set
    res = evaluate_pope(tiny_llava, img_dir, [qfile, qfile], batch_size=3, progress=False)
    assert len(res.metrics) == 1  # the same file twice is one split
    m = res.metrics.iloc[0]
    assert m["n"] == 4 and m["n_unparsed"] == 0
    ex = res.examples
    pred = ex["answer"] == "yes"
    assert m["accuracy"] == pytest.approx(float((pred == ex["label"]).mean()))
    assert m["yes_ratio"] == pytest.approx(float(pred.mean()))
    # images matter: the same question on different images gets different scores
    assert ex["log_p_yes"].nunique() > 1
    gen = evaluate_pope(
        tiny_llava, img_dir, [qfile], mode="generate", max_new_tokens=2, progress=False
    )
    assert gen.examples["text"].map(type).eq(str).all()
    assert int(gen.metrics["n_unparsed"].iloc[0]) == int(gen.examples["answer"].isna().sum())


# ------------------------------------------------------------------ the evaluator class
def test_evaluate_pope_is_the_class_evaluate(tiny_llava, pope_set) -> None:
    from lineage_lens.gating import TruthGate
    from lineage_lens.models import head_geometry

    img_dir, qfile = pope_set
    geo = head_geometry(tiny_llava)
    gate = TruthGate(np.random.default_rng(0).random((geo.n_layers, geo.n_heads)), alpha=2.0)
    options = {"batch_size": 3, "progress": False}
    pope = PopeAnswers(img_dir, [qfile], **options)
    assert pope.splits == (qfile,) and PopeAnswers(img_dir, qfile).splits == (qfile,)
    for g in (None, gate):
        by_function = evaluate_pope(tiny_llava, img_dir, [qfile], gate=g, **options)
        by_class = pope.evaluate(tiny_llava, g)
        pd.testing.assert_frame_equal(by_function.metrics, by_class.metrics)
        pd.testing.assert_frame_equal(by_function.examples, by_class.examples)
        assert by_function.config == by_class.config
    outcome = pope(tiny_llava, gate)  # the sweep evaluator
    assert outcome.metrics["pope_n"] == len(QUESTIONS) and set(outcome.paired) == {"pope_accuracy"}
    assert outcome.metrics["accuracy"] == pytest.approx(by_function.summary()["accuracy"])


def test_evaluate_pope_unknown_option_names_it_and_the_fields(pope_set) -> None:
    img_dir, qfile = pope_set
    with pytest.raises(ConfigError, match=r"unknown options 'prompt', 'seeds'.*PopeAnswers: image"):
        evaluate_pope(None, img_dir, [qfile], prompt="x", seeds=(0,))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"splits": ()}, "at least one POPE split"),
        ({"mode": "guess"}, "mode must be 'logprob' or 'generate', got 'guess'"),
        ({"prompt_template": "no image {question}"}, r"\{image\} once and \{question\}"),
        ({"prompt_template": "{image} {image} {question}"}, r"\{image\} once"),
        ({"limit": -1}, "limit must be an integer >= 1, got -1"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"max_new_tokens": True}, "max_new_tokens must be"),
    ],
)
def test_bad_pope_options_fail_when_the_evaluator_is_made(pope_set, options, pattern) -> None:
    img_dir, _ = pope_set
    with pytest.raises(ConfigError, match=pattern):
        PopeAnswers(img_dir, **options)
    with pytest.raises(ConfigError, match=pattern):  # the function: before any model work
        evaluate_pope(None, img_dir, **options)  # type: ignore[arg-type]
