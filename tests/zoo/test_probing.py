"""The zoo's probing data: image-grounded examples from rendered scenes, and the text examples.

Fast tier: determinism, balance, group structure, distinct prompts, what the images show, the
JSON-lines round trip. Model tier: image-condition capture on the tiny LLaVA and Truth Scores.
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
import torch

from lineage_lens.data import HALLUCINATED, TRUTHFUL, load_probe_examples
from lineage_lens.errors import ConfigError
from lineage_lens.zoo import scene_probe_examples, world_probe_examples, write_scene_probe_set
from lineage_lens.zoo.images import (
    CAPTION_PROMPT,
    COOCCUR,
    ICONS,
    OBJECTS,
    SCENE_PROBE_KINDS,
)
from lineage_lens.zoo.world import World


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _shown(image) -> set[str]:
    """Objects whose icon colour covers at least a few pixels (icons are 9+ pixels wide at 32)."""
    arr = _pixels(image)
    out = set()
    for obj, (_, colour) in ICONS.items():
        near = np.abs(arr - np.asarray(colour)).max(-1) <= 30
        if near.sum() >= 12:
            out.add(obj)
    return out


def _pairs(examples):
    assert len(examples) % 2 == 0
    return list(zip(examples[::2], examples[1::2], strict=True))


def _named(answer: str) -> list[str]:
    return [w.strip(".,") for w in answer.split() if w.strip(".,") in OBJECTS]


def test_scene_examples_are_deterministic_and_seeded():
    a = scene_probe_examples(40, seed=3)
    b = scene_probe_examples(40, seed=3)
    assert [(e.question, e.answer, e.label, e.source_id) for e in a] == [
        (e.question, e.answer, e.label, e.source_id) for e in b
    ]
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(_pixels(x.image), _pixels(y.image))
    c = scene_probe_examples(40, seed=4)
    assert [_pixels(e.image).tobytes() for e in a] != [_pixels(e.image).tobytes() for e in c]
    assert {e.source_id for e in c}.isdisjoint({e.source_id for e in a})


@pytest.mark.parametrize("kinds", [SCENE_PROBE_KINDS, ("existence",), ("caption",)])
def test_scene_examples_balanced_and_grouped(kinds):
    n = 60
    ex = scene_probe_examples(n, seed=0, kinds=kinds)
    assert len(ex) == 2 * n
    assert Counter(e.label for e in ex) == {TRUTHFUL: n, HALLUCINATED: n}
    groups = Counter(e.source_id for e in ex)
    assert len(groups) == n and set(groups.values()) == {2}
    for truthful, hallucinated in _pairs(ex):
        assert (truthful.label, hallucinated.label) == (TRUTHFUL, HALLUCINATED)
        assert truthful.source_id == hallucinated.source_id
        assert truthful.question == hallucinated.question and truthful.context == ""
        assert truthful.image is hallucinated.image  # one scene per group
        assert truthful.answer != hallucinated.answer
    asked = Counter(t.question == CAPTION_PROMPT for t, _ in _pairs(ex))
    assert asked[True] == n * kinds.count("caption") // len(kinds)
    existence = [t for t, _ in _pairs(ex) if t.question != CAPTION_PROMPT]
    # the answer word says nothing about the label: truthful "yes" and "no" equally often
    yes = sum(t.answer == "yes" for t in existence)
    assert abs(yes - (len(existence) - yes)) <= 1


def test_scene_examples_say_what_the_image_shows():
    ex = scene_probe_examples(80, seed=1)
    companions = 0
    for truthful, hallucinated in _pairs(ex):
        shown = _shown(truthful.image)
        assert 1 <= len(shown) <= 3
        if truthful.question == CAPTION_PROMPT:
            assert set(_named(truthful.answer)) == shown
            wrong = [o for o in _named(hallucinated.answer) if o not in shown]
            assert len(wrong) == 1 and len(_named(hallucinated.answer)) == len(shown)
            continue
        obj = next(o for o in OBJECTS if f" {o} " in truthful.question)
        assert truthful.answer == ("yes" if obj in shown else "no")
        absent_partners = {COOCCUR[o] for o in shown} - shown
        if obj not in shown and absent_partners:
            assert obj in absent_partners  # the usual companion that is absent
            companions += 1
    assert companions > 5


def test_scene_examples_have_no_prompt_in_two_groups():
    ex = scene_probe_examples(200, seed=0)
    keys = Counter((e.question, e.answer, _pixels(e.image).tobytes()) for e in ex)
    assert max(keys.values()) == 1
    # the layout (object in cell) is never repeated with the same question: one-object captioned
    # scenes have 10 objects x 4 cells = 40 layouts, so a 41st item cannot be drawn
    one = scene_probe_examples(40, seed=0, kinds=("caption",), max_objects=1)
    assert len({_pixels(e.image).tobytes() for e in one}) == 40
    with pytest.raises(ConfigError, match="distinct scenes"):
        scene_probe_examples(41, seed=0, kinds=("caption",), max_objects=1)


def test_scene_examples_bad_arguments():
    with pytest.raises(ConfigError, match="at least 1"):
        scene_probe_examples(0)
    with pytest.raises(ConfigError, match="kinds"):
        scene_probe_examples(4, kinds=("colour",))
    with pytest.raises(ConfigError, match="kinds"):
        scene_probe_examples(4, kinds=())
    with pytest.raises(ConfigError, match="image size"):
        scene_probe_examples(4, size=15)


def test_scene_probe_set_round_trips_through_the_image_loader(tmp_path):
    path = write_scene_probe_set(tmp_path / "set", n=12, seed=2, size=32)
    loaded = load_probe_examples(path)
    made = scene_probe_examples(12, seed=2, size=32)
    assert len(loaded) == len(made) == 24
    for got, want in zip(loaded, made, strict=True):
        assert (got.question, got.answer, got.label, got.source_id, got.context) == (
            want.question,
            want.answer,
            want.label,
            want.source_id,
            want.context,
        )
        assert got.image.parent == tmp_path / "set" / "images"
        from PIL import Image

        with Image.open(got.image) as im:
            assert np.array_equal(_pixels(im), _pixels(want.image))


def test_world_probe_examples_never_repeat_an_item_across_groups():
    # the base member's world (seed 0, 24 people): 500 items drew 6 repeats before the redraw
    world = World.generate(0, 24)
    ex = world_probe_examples(world, n=500, seed=0)
    truthful = Counter((e.context, e.question) for e in ex if e.label == TRUTHFUL)
    assert len(truthful) == 500
    prompts = Counter((e.context, e.question, e.answer) for e in ex)
    assert max(prompts.values()) == 1
    with pytest.raises(ConfigError, match="distinct probing items"):
        world_probe_examples(World.generate(0, 2), n=500)


@pytest.mark.model
def test_image_context_truth_scores_on_tiny_llava(tiny_llava):
    from lineage_lens.capture import collect_head_activations
    from lineage_lens.probing import fit_truth_scores
    from lineage_lens.zoo.train import VLM_PROBE_TEMPLATE

    ex = scene_probe_examples(30, seed=0, size=16)
    kw = dict(prompt_template=VLM_PROBE_TEMPLATE, batch_size=8, dtype=torch.float32)
    acts = collect_head_activations(tiny_llava, ex, condition="image", progress=False, **kw)
    cfg = tiny_llava.cfg
    assert acts.acts.shape == (60, cfg.n_layers, cfg.n_heads, cfg.d_head)
    assert acts.meta["condition"] == "image"
    assert list(acts.source_ids) == [e.source_id for e in ex]
    assert list(acts.labels) == [e.label for e in ex]
    # the two answers of a scene differ, and no example copies another group's activations
    flat = acts.acts.reshape(len(ex), -1)
    assert not np.allclose(flat[0::2], flat[1::2])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the cross-group duplicate warning
        scores = fit_truth_scores(acts, folds=5, seed=0, progress=False)
    assert scores.accuracy.shape == (cfg.n_layers, cfg.n_heads)
    assert np.isfinite(scores.accuracy).all()
    assert ((scores.accuracy >= 0) & (scores.accuracy <= 1)).all()
    again = fit_truth_scores(
        collect_head_activations(tiny_llava, ex, condition="image", progress=False, **kw),
        folds=5,
        seed=0,
        progress=False,
    )
    np.testing.assert_array_equal(again.accuracy, scores.accuracy)
    # the same examples with a black image instead of the scene change the activations
    black = collect_head_activations(tiny_llava, ex, condition="black_image", progress=False, **kw)
    assert not np.allclose(black.acts, acts.acts)
