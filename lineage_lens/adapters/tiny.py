"""Tiny, offline, random-init checkpoints of the families the lineage-lens adapters add, kept
under their old import path: the builders live with their families
(:func:`lineage_lens.families.qwen2_5_omni.make_tiny_qwen2_5_omni`,
:func:`lineage_lens.families.internvl.make_tiny_internvl`); by default 2 language-model layers,
hidden size 64 (:data:`TINY_TEXT`), towers of one layer.
"""

from __future__ import annotations

from lineage_lens.families.internvl import (
    INTERNVL_IMAGE_TOKEN,
    INTERNVL_SPECIAL_TOKENS,
    TINY_INTERNVL_IMAGE,
    TINY_INTERNVL_PATCH,
    make_tiny_internvl,
    tiny_internvl_image_tokens,
)
from lineage_lens.families.qwen2_5_omni import (
    OMNI_IMAGE_TOKEN,
    OMNI_SPECIAL_TOKENS,
    TINY_OMNI_PATCH,
    make_tiny_qwen2_5_omni,
    tiny_qwen2_5_omni_thinker_config,
)
from lineage_lens.families.tiny import TINY_TEXT

__all__ = [
    "INTERNVL_IMAGE_TOKEN",
    "INTERNVL_SPECIAL_TOKENS",
    "OMNI_IMAGE_TOKEN",
    "OMNI_SPECIAL_TOKENS",
    "TINY_INTERNVL_IMAGE",
    "TINY_INTERNVL_PATCH",
    "TINY_OMNI_PATCH",
    "TINY_TEXT",
    "make_tiny_internvl",
    "make_tiny_qwen2_5_omni",
    "tiny_internvl_image_tokens",
    "tiny_qwen2_5_omni_thinker_config",
]
