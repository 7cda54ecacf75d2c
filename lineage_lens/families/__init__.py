"""The architectures lineage-lens supports, one module per family, and their registry.

A *family* (:class:`Family`) is one architecture: its Hugging Face ``model_type`` (or types) and
class, whether it takes images and how (its :class:`~lineage_lens.images.FamilyImageInputs`
subclass), the TransformerBridge adapter lineage-lens adds where TransformerLens 4.3 has none, and
the tiny-config builder that :func:`lineage_lens.testing.make_tiny_model` and the conformance test
(``tests/families/test_conformance.py``) use. Each family module declares its families and registers each with
one line; the imports below, one per module, fill :data:`REGISTRY` (``model_type`` -> family).

* :mod:`~lineage_lens.families.text`: Llama, Qwen2, Qwen3, Mistral, Phi3, Gemma3 text;
* :mod:`~lineage_lens.families.llava` (LLaVA-1.5), :mod:`~lineage_lens.families.llava_next`
  (LLaVA-NeXT), :mod:`~lineage_lens.families.gemma3` (Gemma3 image+text),
  :mod:`~lineage_lens.families.qwen_vl` (Qwen2.5-VL, Qwen3-VL);
* with lineage-lens' own adapters: :mod:`~lineage_lens.families.qwen2_5_omni` (Qwen2.5-Omni's
  thinker) and :mod:`~lineage_lens.families.internvl` (HF-native InternVL).

Families import only :mod:`lineage_lens.images` (what all image families share), the registry and
the tiny kit (:mod:`lineage_lens.families.tiny`); :mod:`lineage_lens.models` imports this package
and calls :func:`register_adapters` before every boot. Adding an architecture is one new module
here and one import line below (``docs/architectures.md``).
"""

# isort: off
# The registry first, then the families in registry order (one line per family module).
from lineage_lens.families.registry import (
    FAMILIES,
    REGISTRY,
    VISION_CONFIG_KEYS,
    Family,
    adapters,
    family_by_name,
    family_of,
    is_multimodal,
    register,
    register_adapters,
)
from lineage_lens.families import text
from lineage_lens.families import llava
from lineage_lens.families import llava_next
from lineage_lens.families import gemma3
from lineage_lens.families import qwen_vl
from lineage_lens.families import qwen2_5_omni
from lineage_lens.families import internvl
# isort: on

__all__ = [
    "FAMILIES",
    "REGISTRY",
    "VISION_CONFIG_KEYS",
    "Family",
    "adapters",
    "family_by_name",
    "family_of",
    "gemma3",
    "internvl",
    "is_multimodal",
    "llava",
    "llava_next",
    "qwen2_5_omni",
    "qwen_vl",
    "register",
    "register_adapters",
    "text",
]
