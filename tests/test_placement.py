"""Models larger than one device: ``load_model(device_map=..., offload_folder=...)`` spreads or
offloads layers through Accelerate, and capture, gating hooks, W_O folding and generation give
the numbers of the same model on one device (here on CPU, with a layer offloaded to disk)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lineage_lens.errors import ConfigError

pytestmark = pytest.mark.model

PROMPTS = ["the cat sat on the mat", "a dog ran in the park and the cat sat"]


@pytest.fixture(scope="module")
def offloaded(tiny_dirs, tmp_path_factory):
    """The tiny Llama with layer 1 offloaded to disk (its parameters on the meta device)."""
    from lineage_lens.models import load_model

    device_map = {
        "model.embed_tokens": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    folder = tmp_path_factory.mktemp("offload")
    return load_model(tiny_dirs["llama"], device_map=device_map, offload_folder=folder)


def _logits(model, prompt: str) -> torch.Tensor:
    ids = model.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        return model(ids).float()


def _gate(model, alpha: float = 2.0):
    from lineage_lens.gating import TruthGate
    from lineage_lens.models import head_geometry

    geo = head_geometry(model)
    scores = np.random.default_rng(0).uniform(0.4, 0.9, size=(geo.n_layers, geo.n_heads))
    return TruthGate(scores, alpha=alpha)


def test_offloaded_layer_is_really_offloaded(offloaded):
    from lineage_lens.placement import is_offloaded, offload_map

    assert is_offloaded(offloaded)
    o_proj = offloaded.blocks[1].attn.o.original_component
    assert o_proj.weight.device.type == "meta"
    assert offload_map(o_proj) is not None


def test_forward_and_capture_equal_one_device(tiny_llama, offloaded):
    from lineage_lens.data import ProbeExample
    from lineage_lens.pipeline import collect_head_activations

    for p in PROMPTS:
        torch.testing.assert_close(_logits(offloaded, p), _logits(tiny_llama, p))
    examples = [
        ProbeExample("the cat sat", "where?", a, i % 2, f"r{i}")
        for i, a in enumerate(["on the mat", "in the park", "on a hat", "at home"])
    ]
    kw = {"batch_size": 2, "dtype": torch.float32, "progress": False}
    a = collect_head_activations(offloaded, examples, **kw)
    b = collect_head_activations(tiny_llama, examples, **kw)
    np.testing.assert_allclose(a.acts, b.acts, rtol=0, atol=1e-6)


@pytest.mark.parametrize("placement", ["z", "reference", "fold"])
def test_gating_equals_one_device(tiny_llama, offloaded, placement):
    gate = _gate(tiny_llama)
    for p in PROMPTS:
        with gate.applied(tiny_llama, placement=placement):
            want = _logits(tiny_llama, p)
        with gate.applied(offloaded, placement=placement):
            got = _logits(offloaded, p)
        torch.testing.assert_close(got, want)
        assert not torch.allclose(want, _logits(tiny_llama, p))  # the gate changed something


def test_fold_restores_offloaded_weights_bit_exactly(offloaded):
    from lineage_lens.placement import WeightSlot

    slot = WeightSlot(offloaded.blocks[1].attn.o.original_component)
    before = slot.read().clone()
    ungated = _logits(offloaded, PROMPTS[0])
    gate = _gate(offloaded, alpha=3.0)
    with gate.fold(offloaded):
        assert not torch.equal(slot.read(), before)
        folded = _logits(offloaded, PROMPTS[0])
    assert torch.equal(slot.read(), before)
    assert torch.equal(_logits(offloaded, PROMPTS[0]), ungated)
    assert not torch.allclose(folded, ungated)
    # the replaced values are dropped again: the weight is read from the offload folder
    store = slot.module._hf_hook.weights_map.dataset
    assert not any(k.startswith("model.layers.1.self_attn.o_proj") for k in store.state_dict)


def test_generation_equals_one_device(tiny_llama, offloaded):
    gate = _gate(tiny_llama)
    for model_gate in (None, gate):
        outs = []
        for model in (tiny_llama, offloaded):
            ids = model.tokenizer(PROMPTS[1], return_tensors="pt").input_ids
            ctx = model_gate.applied(model) if model_gate is not None else _null()
            with ctx, torch.inference_mode():
                outs.append(model.generate(ids, max_new_tokens=6, do_sample=False, verbose=False))
        assert torch.equal(outs[0], outs[1])


def test_offload_options_need_a_device_map(tiny_dirs, tmp_path):
    from lineage_lens.models import load_model

    with pytest.raises(ConfigError, match="need a device_map"):
        load_model(tiny_dirs["llama"], offload_folder=tmp_path)


def test_a_map_mixing_gpu_layers_and_offload_is_one_config_error(tiny_dirs):
    """TransformerLens refuses such a map with a bare ValueError; load_model says what to do
    before any weights are read (no GPU needed to check it)."""
    from lineage_lens.models import load_model

    with pytest.raises(ConfigError, match="mixes CPU/disk offload with GPU layers"):
        load_model(tiny_dirs["llama"], device_map={"model.layers.0": 0, "model.layers.1": "cpu"})


def _null():
    import contextlib

    return contextlib.nullcontext()
