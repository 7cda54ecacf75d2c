"""Activation capture: batching invariance, agreement with run_with_cache, memmap resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lineage_lens.activations import HeadActivations
from lineage_lens.capture import collect_head_activations, encode_examples
from lineage_lens.data import ProbeExample, PromptTemplate
from lineage_lens.errors import ConfigError, DataError

WORDS = [
    "the",
    "cat",
    "is",
    "red",
    "and",
    "the",
    "dog",
    "is",
    "blue",
    "on",
    "a",
    "big",
    "table",
    "in",
    "the",
    "house",
]


def make_examples(n: int = 7) -> list[ProbeExample]:
    """Tiny-vocabulary examples of different lengths, alternating labels."""
    out = []
    for i in range(n):
        ctx = " ".join(WORDS[: 3 + (i * 5) % 11])
        ans = " ".join(WORDS[i % 4 : i % 4 + 1 + i % 3])
        out.append(ProbeExample(ctx, "what is the cat ?", ans, i % 2, str(i // 2)))
    return out


def single_runs(model, examples, **kw) -> np.ndarray:
    return np.concatenate(
        [
            collect_head_activations(
                model, [ex], batch_size=1, dtype=torch.float32, progress=False, **kw
            ).acts
            for ex in examples
        ]
    )


@pytest.mark.model  # the fixture is looked up by name
@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gqa"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_equals_alone(request, fixture, side):
    model = request.getfixturevalue(fixture)
    examples = make_examples(7)
    alone = single_runs(model, examples)
    batched = collect_head_activations(
        model, examples, batch_size=4, padding_side=side, dtype=torch.float32, progress=False
    )
    assert batched.acts.shape == (7, 2, 4, 8) == alone.shape
    np.testing.assert_allclose(batched.acts, alone, atol=1e-4)
    assert batched.labels.tolist() == [ex.label for ex in examples]
    assert batched.source_ids == [ex.source_id for ex in examples]
    # without length sorting the same vectors come back too
    unsorted = collect_head_activations(
        model, examples, batch_size=3, padding_side=side, dtype=torch.float32,
        sort_by_length=False, progress=False,
    )  # fmt: skip
    np.testing.assert_allclose(unsorted.acts, alone, atol=1e-4)


@pytest.mark.parametrize("arch", ["mistral"])
def test_batched_equals_alone_other_archs(tiny_dirs, arch):
    from lineage_lens.models import load_model

    model = load_model(tiny_dirs[arch], device="cpu")
    examples = make_examples(4)
    batched = collect_head_activations(
        model, examples, batch_size=4, padding_side="left", dtype=torch.float32, progress=False
    )
    np.testing.assert_allclose(batched.acts, single_runs(model, examples), atol=1e-4)


def test_matches_run_with_cache_at_answer_token(tiny_gqa):
    model = tiny_gqa
    ex = make_examples(4)[3]
    acts = collect_head_activations(model, [ex], dtype=torch.float32, progress=False)
    (enc,) = encode_examples(model, [ex])
    text = PromptTemplate().format(ex)
    # the probed token is the answer's last word: the prompt ends with the answer
    assert enc.position == len(enc.input_ids) - 1
    assert model.tokenizer.decode([enc.input_ids[enc.position]]) == ex.answer.split()[-1]
    tokens = torch.tensor([model.tokenizer(text)["input_ids"]])
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
    for layer in range(2):
        z = cache[f"blocks.{layer}.attn.hook_z"][0, enc.position]
        np.testing.assert_allclose(acts.acts[0, layer], z.numpy(), atol=1e-5)
    # the stored row is per head: head h of layer l is acts[:, l, h]
    np.testing.assert_allclose(
        acts.head(1, 2)[0], cache["blocks.1.attn.hook_z"][0, -1, 2], atol=1e-5
    )
    # stopping the forward early does not change the vectors
    full = collect_head_activations(
        model, [ex], dtype=torch.float32, stop_early=False, progress=False
    )
    np.testing.assert_array_equal(full.acts, acts.acts)


def test_answer_position_with_trailing_text_and_forced_bos(tiny_llama):
    template = PromptTemplate("Question: {question}\nAnswer: {answer}. Context: {context}")
    ex = ProbeExample("the dog", "what ?", "a red cat", 1, "0")
    (enc,) = encode_examples(tiny_llama, [ex], prompt_template=template)
    tok = tiny_llama.tokenizer
    assert tok.decode([enc.input_ids[enc.position]]) == "cat"
    assert tok.decode([enc.input_ids[enc.position + 1]]) == "."
    s, e = enc.answer_tokens
    assert tok.decode(enc.input_ids[s:e]) == "a red cat"
    s, e = enc.context_tokens
    assert tok.decode(enc.input_ids[s:e]) == "the dog"
    (last,) = encode_examples(tiny_llama, [ex], prompt_template=template, position="last")
    assert last.position == len(last.input_ids) - 1
    # the tiny tokenizer adds <s> itself; prepend_bos=False removes it, True keeps exactly one
    (no_bos,) = encode_examples(tiny_llama, [ex], prepend_bos=False)
    (bos,) = encode_examples(tiny_llama, [ex], prepend_bos=True)
    assert bos.input_ids == [tok.bos_token_id, *no_bos.input_ids]
    assert bos.position == no_bos.position + 1


def test_memmap_resume_equals_uninterrupted(tiny_llama, tmp_path):
    examples = make_examples(9)
    kw = {"batch_size": 2, "dtype": torch.float32, "progress": False}
    ref = collect_head_activations(tiny_llama, examples, **kw)
    out = tmp_path / "acts"
    calls = {"n": 0}

    def crash_after_three_batches(x, hook):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("simulated interruption")

    with (
        tiny_llama.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", crash_after_three_batches)]),
        pytest.raises(KeyboardInterrupt),
    ):
        collect_head_activations(tiny_llama, examples, out=out, **kw)
    assert calls["n"] == 4
    with pytest.raises(DataError, match="incomplete"):
        HeadActivations.load(out)
    assert '"done": 3' in (out / "progress.json").read_text()
    resumed = collect_head_activations(tiny_llama, examples, out=out, **kw)
    assert isinstance(resumed.acts, np.memmap)
    np.testing.assert_array_equal(resumed.acts, ref.acts)
    assert resumed.labels.tolist() == ref.labels.tolist()
    again = collect_head_activations(tiny_llama, examples, out=out, **kw)  # complete: just loads
    np.testing.assert_array_equal(again.acts, ref.acts)
    with pytest.raises(ConfigError, match="different run"):
        collect_head_activations(tiny_llama, examples[:5], out=out, **kw)


def test_save_load_roundtrip_and_frame(tiny_llama, tmp_path):
    acts = collect_head_activations(tiny_llama, make_examples(4), progress=False)
    assert acts.acts.dtype == np.float16 and len(acts) == 4
    assert (acts.n_layers, acts.n_heads, acts.d_head) == (2, 4, 8) and acts.shape == (2, 4)
    assert acts.geometry.n_kv_heads == 4
    for path in (tmp_path / "a.npz", tmp_path / "a_dir"):
        acts.save(path)
        back = HeadActivations.load(path)
        np.testing.assert_array_equal(back.acts, acts.acts)
        assert back.source_ids == acts.source_ids and back.model == acts.model
        assert back.to_frame().equals(acts.to_frame())
    df = acts.to_frame()
    assert list(df.columns) == ["label", "source_id", "token_position", "n_tokens"]
    sub = acts.subset([3, 1])
    np.testing.assert_array_equal(sub.acts, acts.acts[[3, 1]])
    assert sub.labels.tolist() == [acts.labels[3], acts.labels[1]]
    with pytest.raises(DataError):
        HeadActivations.load(tmp_path / "nothing")


def test_bad_inputs(tiny_llama, tmp_path):
    with pytest.raises(DataError, match="no examples"):
        collect_head_activations(tiny_llama, [], progress=False)
    ex = make_examples(2)
    with pytest.raises(ConfigError):
        collect_head_activations(tiny_llama, ex, position="first", progress=False)
    with pytest.raises(ConfigError):
        collect_head_activations(tiny_llama, ex, padding_side="middle", progress=False)
    with pytest.raises(ConfigError):
        collect_head_activations(tiny_llama, ex, batch_size=0, progress=False)
    with pytest.raises(ConfigError):
        collect_head_activations(tiny_llama, ex, dtype=torch.int8, progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "other.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a resumable"):
        collect_head_activations(tiny_llama, ex, out=tmp_path / "busy", progress=False)


def test_llava_text_only_hooks_language_blocks(tiny_llava):
    acts = collect_head_activations(tiny_llava, make_examples(3), batch_size=2, progress=False)
    assert acts.acts.shape[1:] == (2, 4, 8)
    assert np.isfinite(acts.acts).all()


@pytest.mark.slow
def test_smollm2_answer_token_and_batching():
    from lineage_lens.data import load_probe_examples
    from lineage_lens.models import load_model

    model = load_model("smollm2-135m-instruct", device="cpu")
    examples = load_probe_examples("halueval", limit=1)
    tok = model.tokenizer
    enc = encode_examples(model, examples)
    # the tokenizer's own special tokens are kept (the GGUF SmolLM2 tokenizer adds its BOS,
    # <|im_start|>); the probed token ends the answer
    text = PromptTemplate().format(examples[0])
    assert enc[0].input_ids == tok(text)["input_ids"]
    assert tok.decode(enc[0].input_ids[: enc[0].position + 1]).endswith("Arthur's Magazine")
    assert tok.decode(enc[1].input_ids[: enc[1].position + 1]).endswith("was started first.")
    batched = collect_head_activations(model, examples, dtype=torch.float32, progress=False)
    assert batched.acts.shape == (2, 30, 9, 64)
    np.testing.assert_allclose(batched.acts, single_runs(model, examples), atol=1e-4)
