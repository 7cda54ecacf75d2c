"""lineage-lens' own TransformerBridge adapters (Qwen2.5-Omni thinker, HF-native InternVL) on tiny
random checkpoints: they boot through ``load_model``, the bridge's logits equal Hugging Face's
(text and image), and capture, gating, cached generation and weight drift work as on the
architectures TransformerLens supports itself.

Families are the keys of ``FAMILIES``; ``omni_full`` is a whole ``Qwen2_5OmniForConditionalGeneration``
checkpoint (thinker, audio tower and a talker decoder) that boots as its thinker.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lineage_lens.adapters import ADAPTERS, register_adapters
from lineage_lens.adapters.tiny import (
    INTERNVL_IMAGE_TOKEN,
    OMNI_IMAGE_TOKEN,
    TINY_OMNI_PATCH,
    TINY_TEXT,
    make_tiny_internvl,
    make_tiny_qwen2_5_omni,
    tiny_internvl_image_tokens,
)
from lineage_lens.capture import collect_head_activations, encode_examples
from lineage_lens.cka import head_cka
from lineage_lens.data import ProbeExample
from lineage_lens.gating import TruthGate
from lineage_lens.models import (
    HeadGeometry,
    attn_hook_name,
    head_geometry,
    is_multimodal,
    load_model,
)
from lineage_lens.scores import TruthScores
from lineage_lens.weights import weight_drift

pytestmark = pytest.mark.model

GEOMETRY = HeadGeometry(
    n_layers=TINY_TEXT["n_layers"],
    n_heads=TINY_TEXT["n_heads"],
    n_kv_heads=TINY_TEXT["n_kv_heads"],
    d_head=TINY_TEXT["d_head"],
    d_model=TINY_TEXT["n_heads"] * TINY_TEXT["d_head"],
)
PROMPT = "Context : the cat is on the tree . Question : where is the cat ? Answer :"
WORDS = [
    "the",
    "cat",
    "is",
    "red",
    "and",
    "the",
    "dog",
    "is",
    "on",
    "the",
    "tree",
    "in",
    "the",
    "house",
    "of",
    "a",
    "big",
    "car",
]

#: family -> (builder of a tiny checkpoint, HF class the bridge wraps)
FAMILIES: dict[str, tuple[Callable[..., Path], str]] = {
    "omni": (make_tiny_qwen2_5_omni, "Qwen2_5OmniThinkerForConditionalGeneration"),
    "omni_full": (
        lambda out, seed=0: make_tiny_qwen2_5_omni(out, seed=seed, full=True, talker=True),
        "Qwen2_5OmniThinkerForConditionalGeneration",
    ),
    "internvl": (make_tiny_internvl, "InternVLForConditionalGeneration"),
}
#: Families of the slower gating and generation tests.
CORE_FAMILIES = ["omni", "internvl"]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: build(root / name, seed=0) for name, (build, _) in FAMILIES.items()}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, family_dirs) -> tuple[str, Any]:
    return request.param, load_model(family_dirs[request.param], device="cpu")


@pytest.fixture(scope="module", params=CORE_FAMILIES)
def core_family(request, family_dirs) -> tuple[str, Any]:
    """The families without ``omni_full``, which boots the same thinker as ``omni``."""
    return request.param, load_model(family_dirs[request.param], device="cpu")


def _hf_model(name: str, directory: Path) -> Any:
    """The same checkpoint loaded by transformers alone (eager attention, like the bridge)."""
    import transformers as tf

    kwargs: dict[str, Any] = {"attn_implementation": "eager"}
    if name == "omni_full":
        kwargs["config"] = tf.AutoConfig.from_pretrained(directory).thinker_config
        kwargs["key_mapping"] = {r"^thinker\.": ""}
    return tf.AutoModelForImageTextToText.from_pretrained(directory, **kwargs).eval()


def _image_inputs(name: str, model: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Tokens of ``PROMPT`` after one tiny image's placeholder tokens, and the image's kwargs."""
    tok = model.tokenizer
    text = tok(PROMPT, add_special_tokens=False).input_ids
    gen = torch.Generator().manual_seed(0)
    if name.startswith("omni"):
        grid = torch.tensor([[1, 4, 4]])  # t, h, w patches: 16 patches, 4 after the 2x2 merge
        patch_dim = 3 * 2 * TINY_OMNI_PATCH**2  # channels x temporal patch x patch x patch
        kw = {"pixel_values": torch.randn(16, patch_dim, generator=gen), "image_grid_thw": grid}
        image = [tok.convert_tokens_to_ids("<|vision_bos|>")]
        image += [tok.convert_tokens_to_ids(OMNI_IMAGE_TOKEN)] * 4
        image += [tok.convert_tokens_to_ids("<|vision_eos|>")]
    else:
        kw = {"pixel_values": torch.randn(1, 3, 16, 16, generator=gen)}
        image = [tok.convert_tokens_to_ids(INTERNVL_IMAGE_TOKEN)] * tiny_internvl_image_tokens()
    return torch.tensor([image + text]), kw


def _text_tokens(model: Any) -> torch.Tensor:
    return torch.tensor([model.tokenizer(PROMPT, add_special_tokens=False).input_ids])


def _gate(model: Any, seed: int = 5, **kwargs: Any) -> TruthGate:
    rng = np.random.default_rng(seed)
    scores = TruthScores({"accuracy": rng.uniform(0.45, 0.95, size=head_geometry(model).shape)})
    return TruthGate(scores, alpha=kwargs.pop("alpha", 4.5), **kwargs)


def _examples(n: int = 7) -> list[ProbeExample]:
    out = []
    for i in range(n):
        ctx = " ".join(WORDS[: 3 + (i * 5) % 11])
        ans = " ".join(WORDS[i % 4 : i % 4 + 1 + i % 3])
        out.append(ProbeExample(ctx, "what is the cat ?", ans, i % 2, str(i)))
    return out


def _paired_examples() -> list[ProbeExample]:
    """Pairs sharing contexts long enough for the shared-prefix (KV-cached) capture path."""
    out = []
    for r in range(3):
        ctx = " ".join((WORDS * 3)[r : r + 14 + 3 * r])
        for label, ans in ((1, WORDS[r % 5]), (0, " ".join(WORDS[r % 3 : r % 3 + 2]))):
            out.append(ProbeExample(ctx, "what is the cat ?", ans, label, f"{r}-{label}"))
    return out


def _run_with_cache_reference(model: Any, examples: list[ProbeExample]) -> np.ndarray:
    """One unbatched ``run_with_cache`` per example, ``hook_z`` at its probed token."""
    rows = []
    for enc in encode_examples(model.tokenizer, examples):
        _, cache = model.run_with_cache(torch.tensor([enc.input_ids]))
        z = [cache[attn_hook_name(layer)][0, enc.position] for layer in range(GEOMETRY.n_layers)]
        rows.append(torch.stack(z).float().numpy())
    return np.stack(rows)


# ------------------------------------------------------------------------------ registration
def test_register_adapters_is_idempotent():
    from transformer_lens.factories import architecture_adapter_factory as factory

    register_adapters()
    register_adapters()
    for name, adapter in ADAPTERS.items():
        assert factory.SUPPORTED_ARCHITECTURES[name] is adapter
        assert factory.ArchitectureAdapterFactory._adapters[name] is adapter


# ------------------------------------------------------------------------------ boot, logits
def test_boots_with_hf_logits(family, family_dirs):
    name, model = family
    assert type(model.original_model).__name__ == FAMILIES[name][1]
    assert head_geometry(model) == GEOMETRY
    assert is_multimodal(model)
    hf = _hf_model(name, family_dirs[name])
    tokens = _text_tokens(model)
    image_tokens, image_kw = _image_inputs(name, model)
    mask = torch.ones_like(image_tokens)
    with torch.no_grad():
        assert torch.equal(model(tokens), hf(tokens).logits)
        # with an image (HF given its mask, as transformers' generate does: Omni's mRoPE
        # positions of the image tokens come from it; the bridge assumes it when absent)
        hf_image = hf(image_tokens, attention_mask=mask, **image_kw).logits
        assert torch.equal(model(image_tokens, attention_mask=mask, **image_kw), hf_image)
        bridge_image = model(image_tokens, **image_kw)
        assert torch.equal(bridge_image, hf_image)
        # the image reaches the language model: other pixels, other logits
        other = {**image_kw, "pixel_values": image_kw["pixel_values"] + 1.0}
        assert not torch.allclose(model(image_tokens, **other), bridge_image, atol=1e-4)


def test_full_omni_checkpoint_boots_its_thinker_weights(family_dirs):
    model = load_model(family_dirs["omni_full"], device="cpu")
    saved = load_file(str(family_dirs["omni_full"] / "model.safetensors"))
    assert any(key.startswith("talker.") for key in saved)  # a checkpoint with several towers
    for layer in range(GEOMETRY.n_layers):
        for proj in "qkvo":
            weight = getattr(model.blocks[layer].attn, proj).original_component.weight
            key = f"thinker.model.layers.{layer}.self_attn.{proj}_proj.weight"
            assert torch.equal(weight, saved[key])
    assert torch.equal(model.original_model.lm_head.weight, saved["thinker.lm_head.weight"])


def test_internvl_with_a_llama_language_model(tmp_path):
    """InternVL's adapter reads the text model from the config: a Llama decoder (no q/k/v
    biases) boots with HF's logits and gates as the Qwen2 one does."""
    directory = make_tiny_internvl(tmp_path / "internvl_llama", text_model="llama", seed=3)
    model = load_model(directory, device="cpu")
    hf = _hf_model("internvl", directory)
    assert hf.config.text_config.model_type == "llama"
    tokens, kw = _image_inputs("internvl", model)
    with torch.no_grad():
        base = model(tokens, **kw)
        assert torch.equal(base, hf(tokens, **kw).logits)
        gate = _gate(model, seed=3)
        with gate.applied(model, "z"):
            z_logits = model(tokens, **kw)
        with gate.applied(model, "fold"):
            fold_logits = model(tokens, **kw)
    assert not torch.allclose(z_logits, base, atol=1e-4)
    torch.testing.assert_close(z_logits, fold_logits, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------ hooks, gating
def test_hook_z_shape_and_edits_reach_the_logits(family):
    _, model = family
    tokens = _text_tokens(model)
    _, cache = model.run_with_cache(tokens)
    n_pos = tokens.shape[1]
    for layer in range(GEOMETRY.n_layers):
        z = cache[attn_hook_name(layer)]
        assert z.shape == (1, n_pos, GEOMETRY.n_heads, GEOMETRY.d_head)
        pattern = cache[attn_hook_name(layer, "hook_pattern")]
        assert pattern.shape == (1, GEOMETRY.n_heads, n_pos, n_pos)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(1, GEOMETRY.n_heads, n_pos))

    def zero_head(z: torch.Tensor, hook: Any) -> torch.Tensor:
        z = z.clone()
        z[:, :, 1] = 0.0
        return z

    base = model(tokens)
    edited = model.run_with_hooks(tokens, fwd_hooks=[(attn_hook_name(1), zero_head)])
    assert not torch.allclose(edited, base, atol=1e-4)
    assert torch.equal(model(tokens), base)


@pytest.mark.parametrize("image", [False, True], ids=["text", "image"])
def test_gating_identities(core_family, image):
    """alpha 0 leaves logits bit-identical in every placement; z == fold; fold restores exactly."""
    name, model = core_family
    tokens, kw = _image_inputs(name, model) if image else (_text_tokens(model), {})
    with torch.no_grad():
        base = model(tokens, **kw)
        for placement in ("z", "fold", "reference"):
            with _gate(model, alpha=0.0).applied(model, placement):
                assert torch.equal(model(tokens, **kw), base)
        gate = _gate(model, seed=3)
        w_o = [b.attn.o.original_component.weight.detach().clone() for b in model.blocks]
        with gate.applied(model, "z"):
            z_logits = model(tokens, **kw)
        with gate.applied(model, "fold"):
            fold_logits = model(tokens, **kw)
        assert not torch.allclose(z_logits, base, atol=1e-4)
        torch.testing.assert_close(z_logits, fold_logits, rtol=0, atol=1e-5)
        for block, before in zip(model.blocks, w_o, strict=True):
            assert torch.equal(block.attn.o.original_component.weight, before)
        assert torch.equal(model(tokens, **kw), base)


def test_weight_access_matches_hf_projections(family):
    """``W_Q``/``W_K``/``W_V``/``W_O`` are the HF projections split per head (GQA: kv heads)."""
    _, model = family
    g = GEOMETRY
    shapes = {
        "W_Q": (g.n_layers, g.n_heads, g.d_model, g.d_head),
        "W_K": (g.n_layers, g.n_kv_heads, g.d_model, g.d_head),
        "W_V": (g.n_layers, g.n_kv_heads, g.d_model, g.d_head),
        "W_O": (g.n_layers, g.n_heads, g.d_head, g.d_model),
    }
    for name, shape in shapes.items():
        assert tuple(getattr(model, name).shape) == shape
    for layer in range(g.n_layers):
        attn = model.blocks[layer].attn
        for head in range(g.n_heads):
            rows = slice(head * g.d_head, (head + 1) * g.d_head)
            assert torch.equal(model.W_Q[layer, head], attn.q.original_component.weight[rows].T)
            assert torch.equal(model.W_O[layer, head], attn.o.original_component.weight[:, rows].T)
        for head in range(g.n_kv_heads):
            rows = slice(head * g.d_head, (head + 1) * g.d_head)
            assert torch.equal(model.W_K[layer, head], attn.k.original_component.weight[rows].T)
            assert torch.equal(model.W_V[layer, head], attn.v.original_component.weight[rows].T)


def test_evidence_attention_batched_equals_single(core_family):
    from lineage_lens.attention import evidence_attention

    _, model = core_family
    prompts = [
        "Context : the cat is on the tree . Answer : tree",
        "Context : the dog is in the big house of a man . Answer : house",
        "Context : a red car . Answer : car",
    ]
    spans = [[(10, 13 + i)] for i in range(len(prompts))]
    batched = evidence_attention(model, prompts, spans, batch_size=3, progress=False)
    single = evidence_attention(model, prompts, spans, batch_size=1, progress=False)
    assert batched.values.shape == GEOMETRY.shape
    assert np.all(batched.per_example > 0) and np.all(batched.per_example <= 1 + 1e-6)
    np.testing.assert_allclose(batched.per_example, single.per_example, atol=1e-5)


# ------------------------------------------------------------------------------ capture
@pytest.mark.parametrize("side", ["left", "right"])
def test_capture_batched_equals_unbatched_run_with_cache(family, side):
    _, model = family
    examples = _examples()
    reference = _run_with_cache_reference(model, examples)
    acts = collect_head_activations(
        model, examples, batch_size=4, padding_side=side, dtype=torch.float32, progress=False
    )
    assert acts.acts.shape == (len(examples), *GEOMETRY.shape, GEOMETRY.d_head)
    np.testing.assert_allclose(acts.acts, reference, atol=1e-4)
    cka = head_cka(acts, reference, progress=False)  # CKA of a capture with itself is 1
    np.testing.assert_allclose(cka.values, 1.0, atol=1e-6)


def test_shared_prefix_capture_equals_run_with_cache(core_family):
    _, model = core_family
    examples = _paired_examples()
    reference = _run_with_cache_reference(model, examples)
    shared = collect_head_activations(
        model, examples, batch_size=6, dtype=torch.float32, progress=False
    )
    np.testing.assert_allclose(shared.acts, reference, atol=1e-4)


# ------------------------------------------------------------------------------ generation
def _greedy_full_forwards(model: Any, tokens: torch.Tensor, kw: dict, n: int) -> torch.Tensor:
    for _ in range(n):
        logits = model(tokens, **kw)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens


@pytest.mark.parametrize("image", [False, True], ids=["text", "image"])
@pytest.mark.parametrize("placement", [None, "z", "fold"])
def test_cached_generate_equals_greedy_full_forwards(core_family, placement, image):
    name, model = core_family
    tokens, kw = _image_inputs(name, model) if image else (_text_tokens(model), {})
    gate = _gate(model) if placement else None
    with gate.applied(model, placement) if gate else contextlib.nullcontext(), torch.no_grad():
        generated = model.generate(
            tokens,
            max_new_tokens=6,
            do_sample=False,
            verbose=False,
            return_type="tokens",
            use_past_kv_cache=True,
            stop_at_eos=False,
            **kw,
        )
        reference = _greedy_full_forwards(model, tokens, kw, 6)
    assert torch.equal(generated.cpu(), reference)


# ------------------------------------------------------------------------------ weight drift
def _perturbed_copy(src: Path, dst: Path, lm_prefix: str, other_towers: list[str]) -> Path:
    """``src`` with query head 1 of layer 0 of the language model nudged, and every attention
    weight of the other towers (audio, talker, vision) changed a lot."""
    shutil.copytree(src, dst)
    sd = load_file(str(src / "model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    d_head = GEOMETRY.d_head
    sd[f"{lm_prefix}layers.0.self_attn.q_proj.weight"][d_head : 2 * d_head] += 0.1 * torch.randn(
        d_head, GEOMETRY.d_model, generator=gen
    )
    n_tower = 0
    for key, value in sd.items():
        if any(key.startswith(t) for t in other_towers) and "proj" in key and value.ndim == 2:
            value += torch.randn(value.shape, generator=gen)
            n_tower += 1
    assert n_tower > 0
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


DRIFT_LAYOUTS = {
    "omni": ("model.", ["audio_tower.", "visual."]),
    "omni_full": ("thinker.model.", ["thinker.audio_tower.", "thinker.visual.", "talker."]),
    "internvl": ("language_model.model.", ["vision_tower.", "multi_modal_projector."]),
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_weight_drift_selects_the_language_model(name, family_dirs, tmp_path):
    base = family_dirs[name]
    lm_prefix, towers = DRIFT_LAYOUTS[name]
    child = _perturbed_copy(base, tmp_path / "child", lm_prefix, towers)
    from_dirs = weight_drift(base, child)
    assert from_dirs.shape == GEOMETRY.shape
    assert from_dirs.changed_heads(name="q_rel") == [(0, 1)]
    assert from_dirs.changed_heads(name="k_rel") == from_dirs.changed_heads(name="o_rel") == []
    from_bridges = weight_drift(load_model(base, device="cpu"), load_model(child, device="cpu"))
    for key in ("q_rel", "qk_rel", "ov_rel", "v_cos"):
        np.testing.assert_allclose(from_bridges.get(key), from_dirs.get(key), atol=1e-12)


# ------------------------------------------------------------------------------ image capture
def _image_examples(n: int = 5) -> list[ProbeExample]:
    """Examples with images of different sizes (Omni's dynamic resolution: different token
    counts per image)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 255, (56 + 8 * (i % 3), 56, 3), dtype=np.uint8))
        q = "what is in the image ?" + " the" * i
        answer = "a cat" if i % 2 else "a dog and a car"
        out.append(ProbeExample("", q, answer, i % 2, f"s{i}", img))
    return out


def _image_reference(model: Any, examples: list[ProbeExample]) -> np.ndarray:
    """Per example, unbatched ``run_with_cache`` with its image, ``hook_z`` at the probed token."""
    from lineage_lens.data import LLAVA_PROBE_TEMPLATE
    from lineage_lens.images import image_batch_kwargs, image_inputs

    inputs = image_inputs(model)
    rows = []
    for ex in examples:
        (enc,) = encode_examples(
            model.tokenizer,
            [ex],
            prompt_template=LLAVA_PROBE_TEMPLATE,
            image_text=inputs.image_text(ex.image),
        )
        tokens = torch.tensor([enc.input_ids])
        kw = image_batch_kwargs(inputs, [ex.image], tokens)
        with torch.inference_mode():
            _, cache = model.run_with_cache(tokens, **kw)
        z = [cache[attn_hook_name(layer)][0, enc.position] for layer in range(GEOMETRY.n_layers)]
        rows.append(torch.stack(z).float().numpy())
    return np.stack(rows)


@pytest.mark.parametrize("side", ["left", "right"])
def test_image_capture_batched_equals_unbatched(core_family, side):
    from lineage_lens.images import image_inputs

    name, model = core_family
    inputs = image_inputs(model)
    assert inputs.model_type == model.original_model.config.model_type
    examples = _image_examples()
    if name == "omni":  # dynamic resolution: the images' token counts differ
        assert len({inputs.n_image_tokens(ex.image) for ex in examples}) > 1
    acts = collect_head_activations(
        model, examples, batch_size=4, padding_side=side, dtype=torch.float32, progress=False
    )
    assert acts.meta["condition"] == "image"
    np.testing.assert_allclose(acts.acts, _image_reference(model, examples), atol=1e-4)
