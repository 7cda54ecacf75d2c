"""The family registry (:mod:`lineage_lens.families`): every registered family has a tiny config
and is in the conformance parametrisation of ``tests/families/test_conformance.py``; no ``model_type``
belongs to two families; image inputs, adapters, ``make_tiny_model`` and ``is_multimodal`` all
follow the registry. No model is built here."""

from __future__ import annotations

import pytest

from lineage_lens import images, models, testing
from lineage_lens.adapters import ADAPTERS
from lineage_lens.errors import ConfigError
from lineage_lens.families import (
    FAMILIES,
    REGISTRY,
    Family,
    adapters,
    family_by_name,
    family_of,
    is_multimodal,
    register,
)
from tests.families.test_conformance import CONFORMANCE, MULTIMODAL


def test_every_family_has_a_tiny_config_and_is_in_the_conformance_test():
    assert FAMILIES, "no family registered"
    assert all(f.tiny is not None for f in FAMILIES), [f.name for f in FAMILIES if f.tiny is None]
    assert [f.name for f in CONFORMANCE] == [f.name for f in FAMILIES]
    assert [f.name for f in MULTIMODAL] == [f.name for f in FAMILIES if f.multimodal]
    assert tuple(f.name for f in FAMILIES) == testing.ARCHS
    assert {f.name for f in FAMILIES if f.multimodal} == testing.MULTIMODAL_ARCHS


def test_no_model_type_belongs_to_two_families():
    types = [t for f in FAMILIES for t in f.model_types]
    assert len(types) == len(set(types)), sorted(t for t in types if types.count(t) > 1)
    assert set(types) == set(REGISTRY)
    assert all(t in REGISTRY[t].model_types for t in types)
    names = [f.name for f in FAMILIES]
    assert len(names) == len(set(names))
    assert all(family_by_name(n).name == n for n in names)


def test_register_refuses_a_taken_model_type_or_name():
    before = (list(FAMILIES), dict(REGISTRY))
    with pytest.raises(ConfigError, match="llama"):
        register(Family("llama2", ("llama",), "LlamaForCausalLM"))
    with pytest.raises(ConfigError, match="registered already"):
        register(Family("llava", ("llava_brand_new",), "LlavaForConditionalGeneration"))
    with pytest.raises(ConfigError, match="image_inputs"):
        Family("vlm", ("vlm",), "VlmForConditionalGeneration", multimodal=True)
    assert before == (FAMILIES, REGISTRY)


def test_image_inputs_adapters_and_tiny_names_follow_the_registry():
    multimodal = {t: f for t, f in REGISTRY.items() if f.multimodal}
    assert set(images.IMAGE_INPUT_BUILDERS) == set(multimodal)
    for model_type, family in multimodal.items():
        assert images.IMAGE_INPUT_BUILDERS[model_type] == family.image_inputs.from_model
    assert adapters() == ADAPTERS
    assert set(ADAPTERS) == {
        "Qwen2_5OmniThinkerForConditionalGeneration",
        "InternVLForConditionalGeneration",
    }
    with pytest.raises(ConfigError, match="unknown tiny architecture"):
        testing.make_tiny_model("unused", "no_such_arch")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"model_type": "llama"}, False),
        ({"model_type": "gemma3_text"}, False),
        ({"model_type": "llava", "vision_config": {}}, True),
        ({"model_type": "qwen2_5_omni", "thinker_config": {}}, True),  # boots as its thinker
        ({"model_type": "unregistered_vlm", "vision_config": {}}, True),
        ({"model_type": "unregistered_vlm", "visual": {}}, True),
        ({"model_type": "unregistered_lm"}, False),
    ],
)
def test_is_multimodal_by_family_else_by_config(config, expected):
    assert is_multimodal(config) is expected
    assert (family_of(config) is not None) == (config["model_type"] in REGISTRY)
    assert models.is_multimodal is is_multimodal  # one function, importable from models too
