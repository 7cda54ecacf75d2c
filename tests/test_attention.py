"""Attention to evidence: equals hand-computed sums of the pattern; HaluEval spans; images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from lineage_lens.attention import (
    EvidenceAttention,
    evidence_attention,
    halueval_attention_inputs,
    halueval_evidence_spans,
    relative_evidence_attention,
    sentence_spans,
)
from lineage_lens.errors import ConfigError
from lineage_lens.lineage import compare_scores
from lineage_lens.testing import IMAGE_TOKEN, TINY_IMAGE_TOKENS, tiny_pixel_values

PROMPTS = [
    "Context : the cat is red . the dog is blue . Question : what is red ? Answer : the cat",
    "Context : Paris is the capital of France . Answer : Paris",
    "the sun and the moon . Answer : the moon",
]


def _patterns(model, text, **kwargs):
    ids = torch.tensor([model.tokenizer(text)["input_ids"]])
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(ids, names_filter=lambda n: n in names, **kwargs)
    return ids[0], [cache[n][0].double() for n in names]  # each [H, q, k]


def test_equals_hand_computed_sum_of_pattern(tiny_llama):
    # evidence: the first sentence of each prompt's "context" (by characters)
    spans = [[(10, 25)], [(10, 39)], [(0, 7)]]
    res = evidence_attention(tiny_llama, PROMPTS, spans, batch_size=2, progress=False)
    assert res.per_example.shape == (3, 2, 4) and res.values.shape == (2, 4)
    tok = tiny_llama.tokenizer
    for i, text in enumerate(PROMPTS):
        enc = tok(text, return_offsets_mapping=True)
        keys = [
            t
            for t, (a, b) in enumerate(enc["offset_mapping"])
            if b > a and any(a < e and b > s for s, e in spans[i])
        ]
        assert keys and res.n_evidence_tokens[i] == len(keys)
        ids, pats = _patterns(tiny_llama, text)
        q = len(ids) - 1
        assert res.query_positions[i] == q
        for layer, pat in enumerate(pats):
            expected = pat[:, q, keys].sum(-1).numpy()
            np.testing.assert_allclose(res.per_example[i, layer], expected, atol=1e-5)
    np.testing.assert_allclose(res.values, res.per_example.mean(0))


def test_token_spans_and_query_char_end(tiny_llama):
    text = PROMPTS[0]
    end = text.index("Answer") + len("Answer")  # query: the token "Answer"
    by_char = evidence_attention(
        tiny_llama, [text], [[(10, 25)]], query_char_ends=[end], progress=False
    )
    _ids, pats = _patterns(tiny_llama, text)
    offsets = tiny_llama.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    q = max(t for t, (a, b) in enumerate(offsets) if b > a and b <= end)
    assert by_char.query_positions[0] == q
    keys = [t for t, (a, b) in enumerate(offsets) if b > a and a < 25 and b > 10]
    by_token = evidence_attention(
        tiny_llama,
        [text],
        [[(keys[0], keys[-1] + 1)]],
        span_unit="token",
        query_positions=[q],
        progress=False,
    )
    np.testing.assert_allclose(by_char.values, by_token.values)
    np.testing.assert_allclose(by_token.values[1], pats[1][:, q, keys].sum(-1).numpy(), atol=1e-5)


def test_sentence_and_halueval_spans():
    text = "Arthur's Magazine (1844–1846) was a periodical.First for Women is a magazine. It is 3.5 cm."
    sents = [text[s:e] for s, e in sentence_spans(text)]
    assert sents == [
        "Arthur's Magazine (1844–1846) was a periodical.",
        "First for Women is a magazine.",
        "It is 3.5 cm.",
    ]
    spans = halueval_evidence_spans(text, "first for women")
    assert [text[s:e] for s, e in spans] == ["First for Women is a magazine."]
    # fallback: no sentence contains the whole answer -> max word overlap
    spans = halueval_evidence_spans(text, "magazine for women readers")
    assert [text[s:e] for s, e in spans] == ["First for Women is a magazine."]


def test_halueval_attention_inputs_point_into_context():
    from lineage_lens.data import load_halueval_qa

    rows = load_halueval_qa(limit=5)
    prompts, spans, ends = halueval_attention_inputs(rows)
    for row, text, sp, end in zip(rows, prompts, spans, ends, strict=True):
        assert text.endswith(row.right_answer) and end == len(text)
        ctx0 = text.index(row.knowledge)
        for s, e in sp:
            assert ctx0 <= s < e <= ctx0 + len(row.knowledge)
        joined = " ".join(text[s:e] for s, e in sp).lower()
        words = set(row.right_answer.lower().split())
        assert row.right_answer.lower() in joined or words & set(joined.split())
    _, _, ends_h = halueval_attention_inputs(rows, answer="hallucinated")
    assert ends_h != ends


def test_image_evidence_and_overlay(tiny_llava, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    image = " ".join([IMAGE_TOKEN] * TINY_IMAGE_TOKENS)
    prompts = [f"{image} is there a cat in the image ?", f"{image} what is this ?"]
    pixels = tiny_pixel_values(2, seed=1)
    res = evidence_attention(
        tiny_llava,
        prompts,
        image_evidence=True,
        pixel_values=pixels,
        keep_image_attention=True,
        batch_size=2,
        progress=False,
    )
    assert res.image_attention.shape == (2, 2, 4, TINY_IMAGE_TOKENS)
    assert res.image_grid == (2, 2)
    np.testing.assert_allclose(res.per_example, res.image_attention.sum(-1), atol=1e-6)
    ids, pats = _patterns(tiny_llava, prompts[1], pixel_values=pixels[1:2])
    img = (ids == tiny_llava.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)).nonzero().ravel()
    for layer, pat in enumerate(pats):
        expected = pat[:, -1, img].sum(-1).numpy()
        np.testing.assert_allclose(res.per_example[1, layer], expected, atol=1e-5)
    region = np.array([[True, False], [False, False]])
    part = evidence_attention(
        tiny_llava,
        prompts,
        image_evidence=True,
        image_region=region,
        pixel_values=pixels,
        progress=False,
    )
    np.testing.assert_allclose(part.per_example, res.image_attention[..., 0], atol=1e-6)
    assert res.plot_image_overlay(1, 2, example=1).images
    assert res.plot_image_overlay(0, 0, image=np.zeros((16, 16, 3))).images
    back = EvidenceAttention.load(res.save(tmp_path / "att.npz"))
    np.testing.assert_array_equal(back.image_attention, res.image_attention)
    assert back.image_grid == (2, 2)
    with pytest.raises(ConfigError):
        part.plot_image_overlay(0, 0)

    rel = relative_evidence_attention(
        tiny_llava,
        prompts,
        [f"{image} describe the image ."] * 2,
        image_evidence=True,
        pixel_values=pixels,
        progress=False,
    )
    assert rel.kind == "relative" and rel.values.shape == (2, 4)
    gen = np.asarray(rel.meta["generic_mean"])
    np.testing.assert_allclose(rel.values * (gen + 1e-8), res.values, rtol=1e-6)


def test_relative_of_identical_prompts_is_one_and_correlate(tiny_llama):
    import matplotlib

    matplotlib.use("Agg")
    spans = [[(10, 25)], [(10, 39)], [(0, 7)]]
    rel = relative_evidence_attention(tiny_llama, PROMPTS, PROMPTS, spans, spans, progress=False)
    np.testing.assert_allclose(rel.values, 1.0, atol=1e-6)
    att = evidence_attention(tiny_llama, PROMPTS, spans, progress=False)
    scores = np.random.default_rng(0).random(att.values.shape)
    cmp = compare_scores(att, scores, n_resamples=100, n_permutations=100)
    expected = stats.pearsonr(att.values.ravel(), scores.ravel()).statistic
    assert cmp.pearson.r == pytest.approx(expected)
    assert compare_scores(att, 2 * att.values + 1, n_resamples=100).pearson.r == pytest.approx(1)
    assert att.plot_topk(scores, k=3).get_xticklabels()
    assert len(att.to_frame()) == 8
    with pytest.raises(ConfigError):
        evidence_attention(tiny_llama, PROMPTS, progress=False)
