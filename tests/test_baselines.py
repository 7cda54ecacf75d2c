"""Probe baselines (issue 20, item 8): answer-only prompts and a random-init twin as a floor."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

from lineage_lens.baselines import (
    ANSWER_ONLY_TEMPLATE,
    ProbeBaselines,
    answer_only_examples,
    probe_baselines,
    random_init_model,
)
from lineage_lens.capture import encode_examples
from lineage_lens.data import DEFAULT_TEMPLATE, ProbeExample
from lineage_lens.errors import ConfigError, DataError, ShapeMismatchError
from lineage_lens.models import head_geometry
from lineage_lens.probing import fit_truth_scores
from lineage_lens.scores import TruthScores

matplotlib.use("Agg")

COLORS = ["red", "blue", "green"]
OBJECTS = ["cat", "dog", "car", "tree", "house", "book", "table", "chair"]


def _examples(n_rows: int = 12) -> list[ProbeExample]:
    """Synthetic rows: a context naming an object's colour, a truthful and a wrong answer.

    Every answer text is distinct, so no two prompts (full or answer-only) are copies."""
    pairs = list(itertools.product(COLORS, OBJECTS))
    out = []
    for i in range(n_rows):
        color, obj = pairs[i % len(pairs)]
        wrong = COLORS[(COLORS.index(color) + 1) % len(COLORS)]
        context = f"the {obj} in the house is {color} and big"
        question = f"what is the {obj} ?"
        out.append(ProbeExample(context, question, f"the {obj} is {color}", 1, str(i)))
        out.append(ProbeExample(context, question, f"a {obj} was {wrong}", 0, str(i)))
    return out


def _weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.original_model.parameters()]


def test_answer_only_prompts_hold_no_context_or_question(tiny_llama):
    examples = _examples(4)
    stripped = answer_only_examples(examples)
    assert [(e.answer, e.label, e.source_id) for e in stripped] == [
        (e.answer, e.label, e.source_id) for e in examples
    ]
    for ex, full in zip(stripped, examples, strict=True):
        text, spans = ANSWER_ONLY_TEMPLATE.render(ex)
        assert text == f"Answer: {full.answer}"
        assert full.context not in text and "Context" not in text and "Question" not in text
        assert spans.context == spans.question == (0, 0)
        assert text[slice(*spans.answer)] == full.answer
    # tokenised as the capture does: no context tokens, the probed token ends the answer
    for enc in encode_examples(tiny_llama, stripped, prompt_template=ANSWER_ONLY_TEMPLATE):
        assert enc.context_tokens == (0, 0)
        assert enc.position == len(enc.input_ids) - 1
    # the paper's template would keep its labels around the empty fields
    assert "Context" in DEFAULT_TEMPLATE.format(stripped[0])


@pytest.mark.parametrize("arch", ["llama", "gqa", "llava"])
def test_random_init_twin_same_geometry_new_weights(tiny_dirs, arch):
    from lineage_lens.models import load_model

    original = load_model(tiny_dirs[arch], device="cpu")
    rng_state = torch.get_rng_state()
    twin = random_init_model(tiny_dirs[arch], seed=3)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG is untouched
    assert head_geometry(twin) == head_geometry(original)
    a, b = _weights(original), _weights(twin)
    assert [w.shape for w in a] == [w.shape for w in b]
    assert not any(torch.equal(x, y) for x, y in zip(a, b, strict=True) if x.std() > 0)
    # the tokenizer is kept
    text = "Context: the cat is red . Answer: red"
    assert twin.tokenizer(text)["input_ids"] == original.tokenizer(text)["input_ids"]
    assert "random-init" in twin.cfg.model_name


def test_random_init_twin_is_reproducible_from_a_bridge_or_a_directory(tiny_dirs, tiny_llama):
    from_bridge = random_init_model(tiny_llama, seed=5)
    from_dir = random_init_model(tiny_dirs["llama"], seed=5)
    other_seed = random_init_model(tiny_llama, seed=6)
    same = zip(_weights(from_bridge), _weights(from_dir), strict=True)
    assert all(torch.equal(x, y) for x, y in same)
    differ = zip(_weights(from_bridge), _weights(other_seed), strict=True)
    assert not all(torch.equal(x, y) for x, y in differ)
    logits = from_bridge(torch.tensor([[2, 7, 9]]))
    assert torch.isfinite(logits).all()
    # the directory the twin was booted from is gone
    scratch = Path(tempfile.gettempdir()).glob(f".lineage-lens-random-init.tmp.*.{os.getpid()}.*")
    assert list(scratch) == []


def test_probe_baselines_floors_per_head(tiny_llama, tmp_path):
    examples = _examples()
    scores = TruthScores(
        {"accuracy": np.full((2, 4), 0.9), "auroc": np.full((2, 4), 0.95)}, model="llama"
    )
    twin = random_init_model(tiny_llama, seed=0)
    base = probe_baselines(
        tiny_llama, examples, scores=scores, twin=twin, folds=3, progress=False, dataset="toy"
    )
    assert base.shape == head_geometry(tiny_llama).shape == (2, 4)
    for part in (base.answer_only, base.random_init):
        assert part.shape == (2, 4) and part.n == len(examples) and part.folds == 3
        assert ((part.accuracy >= 0) & (part.accuracy <= 1)).all()
    # the baselines are the library's own capture + fit on the rewritten inputs
    from lineage_lens.capture import collect_head_activations

    acts = collect_head_activations(
        tiny_llama,
        answer_only_examples(examples),
        prompt_template=ANSWER_ONLY_TEMPLATE,
        dtype=torch.float32,
        progress=False,
    )
    direct = fit_truth_scores(acts, folds=3, progress=False)
    np.testing.assert_allclose(base.answer_only.accuracy, direct.accuracy)
    frame = base.to_frame()
    assert list(frame.columns) == [
        "layer",
        "head",
        "answer_only",
        "random_init",
        "floor",
        "score",
        "margin",
    ]
    assert len(frame) == 8
    np.testing.assert_allclose(frame["floor"], np.maximum(frame.answer_only, frame.random_init))
    np.testing.assert_allclose(frame["margin"], 0.9 - frame["floor"])
    np.testing.assert_allclose(base.to_frame("auroc")["margin"], 0.95 - base.floor("auroc").ravel())
    text = repr(base)
    assert "ProbeBaselines" in text and "floor=" in text and len(text) < 300
    # same inputs, same twin seed: the same floors (a fresh twin built from init_seed=0)
    again = probe_baselines(tiny_llama, examples, folds=3, progress=False, dataset="toy")
    np.testing.assert_array_equal(again.random_init.accuracy, base.random_init.accuracy)
    np.testing.assert_array_equal(again.answer_only.accuracy, base.answer_only.accuracy)
    assert again.scores is None and list(again.to_frame().columns)[-1] == "floor"
    with pytest.raises(ConfigError, match="no model scores"):
        again.margin()
    # save / load
    path = base.save(tmp_path / "floors.npz")
    loaded = ProbeBaselines.load(path)
    assert loaded.to_frame().equals(frame)
    assert loaded.random_init.model == base.random_init.model and loaded.dataset == "toy"
    assert loaded.scores is not None and loaded.scores.metrics.keys() == scores.metrics.keys()
    assert ProbeBaselines.load(again.save(tmp_path / "b.npz")).scores is None
    # plots
    assert base.heatmap("margin").get_title().endswith("margin accuracy")
    assert len(base.plot().get_lines()) == 3


def test_probe_baselines_errors(tiny_llama, tmp_path):
    examples = _examples(4)
    with pytest.raises(DataError, match="one class"):
        probe_baselines(tiny_llama, [e for e in examples if e.label == 1], progress=False)
    wrong = TruthScores({"accuracy": np.zeros((3, 4))})
    with pytest.raises(ShapeMismatchError):
        probe_baselines(tiny_llama, examples, scores=wrong, progress=False)
    parts = TruthScores({"accuracy": np.zeros((2, 4))})
    with pytest.raises(ShapeMismatchError):
        ProbeBaselines(parts, TruthScores({"accuracy": np.zeros((2, 3))}))
    with pytest.raises(ConfigError, match="kind"):
        ProbeBaselines(parts, parts).get("ceiling")
    with pytest.raises(ConfigError, match=".npz"):
        ProbeBaselines(parts, parts).save(tmp_path / "x.csv")
    parts.save(tmp_path / "scores.npz")
    with pytest.raises(DataError, match="probe-baselines"):
        ProbeBaselines.load(tmp_path / "scores.npz")
