"""Image-grounded Truth Scores on the tiny LLaVA: conditions, batching, loader, HF processor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lineage_lens.capture import collect_head_activations, encode_examples
from lineage_lens.data import LLAVA_PROBE_TEMPLATE, ProbeExample, load_probe_examples
from lineage_lens.errors import ConfigError, DataError
from lineage_lens.images import (
    VisionSettings,
    fallback_image_processor,
    image_inputs,
    load_pixel_values,
)
from lineage_lens.zoo.images import render_scene, sample_scenes, to_pixel_values


def _examples(n: int = 6) -> list[ProbeExample]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 255, (16 + 8 * (i % 3), 16, 3), dtype=np.uint8))
        q = "what is in the image ?" + " the" * i
        out.append(
            ProbeExample("", q, "a cat" if i % 2 else "a dog and a car", i % 2, f"s{i}", img)
        )
    return out


def _reference(model, examples) -> np.ndarray:
    """Per example, unbatched run_with_cache at the answer's last token."""
    inputs = image_inputs(model)
    enc = encode_examples(
        model, examples, prompt_template=LLAVA_PROBE_TEMPLATE, image_text=inputs.image_text()
    )
    refs = []
    for ex, e in zip(examples, enc, strict=True):
        pv = inputs.forward_kwargs([ex.image])["pixel_values"]
        with torch.inference_mode():
            _, cache = model.run_with_cache(torch.tensor([e.input_ids]), pixel_values=pv)
        n_layers = model.cfg.n_layers
        refs.append(
            np.stack(
                [
                    cache[f"blocks.{layer}.attn.hook_z"][0, e.position].numpy()
                    for layer in range(n_layers)
                ]
            )
        )
    return np.stack(refs)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("batch_size", [1, 4, 6])
def test_batched_image_capture_equals_unbatched(tiny_llava, side, batch_size):
    exs = _examples()
    acts = collect_head_activations(
        tiny_llava,
        exs,
        batch_size=batch_size,
        padding_side=side,
        dtype=torch.float32,
        progress=False,
    )
    assert acts.meta["condition"] == "image"
    np.testing.assert_allclose(acts.acts, _reference(tiny_llava, exs), atol=1e-4)


def test_conditions(tiny_llava, tiny_llama):
    exs = _examples(4)
    kw = dict(dtype=torch.float32, progress=False, batch_size=2)
    real = collect_head_activations(tiny_llava, exs, condition="image", **kw)
    black = collect_head_activations(tiny_llava, exs, condition="black_image", **kw)
    text_only = collect_head_activations(
        tiny_llava, exs, condition="text_only", prompt_template=LLAVA_PROBE_TEMPLATE, **kw
    )
    n_img = image_inputs(tiny_llava).settings.n_image_tokens
    assert black.meta["condition"] == "black_image"
    assert np.array_equal(black.n_tokens, real.n_tokens)
    assert not np.allclose(black.acts, real.acts, atol=1e-4)
    # text_only: the same prompt without its image tokens
    text_ids = encode_examples(tiny_llava, exs, prompt_template=LLAVA_PROBE_TEMPLATE)
    image_id = image_inputs(tiny_llava).settings.image_token_id
    assert all(image_id not in e.input_ids for e in text_ids)
    assert np.array_equal(text_only.n_tokens, real.n_tokens - n_img)
    assert text_only.meta["condition"] == "text_only"
    text = collect_head_activations(
        tiny_llama, [ProbeExample("c", "q", "a cat", 1, "x")], condition="text", **kw
    )
    assert text.meta["condition"] == "text"
    with pytest.raises(ConfigError, match="vision"):
        collect_head_activations(tiny_llama, exs, condition="image", **kw)
    no_image = [ProbeExample("", "q", "a cat", 1, "x")]
    with pytest.raises(DataError, match="needs an image"):
        collect_head_activations(tiny_llava, no_image, condition="image", **kw)


def test_jsonl_image_layout(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "a.png")
    rows = [
        {"image_path": "img/a.png", "question": "q?", "answer": "a cat", "label": "gold"},
        {"context": "c", "question": "q?", "answer": "a dog", "label": "hallucinated"},
    ]
    p = tmp_path / "probe.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    exs = load_probe_examples(p)
    assert exs[0].image == tmp_path / "img" / "a.png" and exs[0].context == ""
    assert exs[1].image is None and exs[1].label == 0
    rows.append({"image_path": "img/missing.png", "question": "q", "answer": "a", "label": 1})
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"probe\.jsonl:3.*missing\.png"):
        load_probe_examples(p)


def test_hf_processor_equals_handwritten_clip():
    settings = VisionSettings(32, 8, 16, 4)
    scenes = sample_scenes(3, 0)
    imgs = [Image.fromarray(render_scene(s, 64)) for s in scenes]
    imgs.append(Image.fromarray(render_scene(scenes[0], 32)))
    old = to_pixel_values(imgs, 32)
    assert type(fallback_image_processor(settings)).__name__ == "CLIPImageProcessorPil"
    np.testing.assert_allclose(load_pixel_values(imgs, settings).numpy(), old.numpy(), atol=1e-6)
