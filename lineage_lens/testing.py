"""Tiny, offline, random-init models for tests and examples.

:func:`make_tiny_model` writes a Hugging Face directory (weights, a word-level tokenizer and, for
the vision-language families, the family's Hugging Face image processor config) that boots through
:func:`lineage_lens.models.load_model` without touching a hub, with the tiny-config builder of the
registered family (:attr:`lineage_lens.families.Family.tiny`). Architectures (:data:`ARCHS`, one
per registered family):

* language models: Llama (multi-head or grouped-query attention), Qwen2, Qwen3, Mistral, Phi3
  (fused ``qkv_proj`` / ``gate_up_proj``), Gemma3 text;
* vision-language models: LLaVA-1.5 (tiny CLIP tower, fixed 16x16 images), LLaVA-NeXT (any
  resolution: 16x16 tiles on 16x32 / 32x16 / 32x32 grids), Gemma3 image+text (tiny SigLIP,
  4 soft tokens per image), Qwen2.5-VL and Qwen3-VL (dynamic resolution, 4x4 patches merged 2x2),
  Qwen2.5-Omni's thinker and InternVL (lineage-lens' own adapters).

The tokenizer and the other pieces of the kit (:func:`make_word_tokenizer`,
:func:`tiny_text_kwargs`, :func:`save_tiny`) live in :mod:`lineage_lens.families.tiny`.
``tiny_pixel_values`` makes LLaVA-1.5 images with numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lineage_lens.errors import ConfigError
from lineage_lens.families import FAMILIES, family_by_name
from lineage_lens.families.tiny import (
    BASE_WORDS,
    IMAGE_TOKEN,
    PUNCT,
    SPECIAL_TOKENS,
    TINY_IMAGE_SIZE,
    TINY_IMAGE_TOKENS,
    TINY_N_CTX,
    TINY_PATCH_SIZE,
    make_word_tokenizer,
    save_tiny,
    tiny_text_kwargs,
)

__all__ = [
    "ARCHS",
    "BASE_WORDS",
    "IMAGE_TOKEN",
    "MULTIMODAL_ARCHS",
    "PUNCT",
    "SPECIAL_TOKENS",
    "TINY_IMAGE_SIZE",
    "TINY_IMAGE_TOKENS",
    "TINY_N_CTX",
    "TINY_PATCH_SIZE",
    "Arch",
    "DieOnceEvaluator",
    "make_tiny_model",
    "make_word_tokenizer",
    "save_tiny",
    "tiny_pixel_values",
    "tiny_text_kwargs",
]

#: A :func:`make_tiny_model` architecture: the name of a registered family (:data:`ARCHS`).
Arch = str
#: Every architecture :func:`make_tiny_model` builds: each registered family with a tiny config,
#: in registry order.
ARCHS: tuple[str, ...] = tuple(f.name for f in FAMILIES if f.tiny is not None)
#: The vision-language ones among them.
MULTIMODAL_ARCHS: frozenset[str] = frozenset(
    f.name for f in FAMILIES if f.tiny is not None and f.multimodal
)


def make_tiny_model(
    out_dir: str | Path,
    arch: Arch = "llama",
    *,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    d_head: int = 8,
    seed: int = 0,
    extra_words: list[str] | None = None,
    dtype: torch.dtype = torch.float32,
    n_ctx: int = TINY_N_CTX,
) -> Path:
    """Write a tiny random-init model of ``arch`` with its tokenizer to ``out_dir``; return it.

    ``n_kv_heads < n_heads`` gives grouped-query attention; the hidden size is
    ``n_heads * d_head``. For ``"llava"`` the language model is a tiny Llama and the vision tower
    a tiny CLIP (16x16 images, 8x8 patches, 4 image tokens); the other vision-language families
    are described in the module docstring and save their Hugging Face image processor config
    beside the weights. ``dtype`` is the dtype the weights are saved in; ``n_ctx`` the language
    model's context (``max_position_embeddings``; ``model.cfg.n_ctx`` once loaded).
    """
    if arch not in ARCHS:
        raise ConfigError(f"unknown tiny architecture {arch!r}; use one of {', '.join(ARCHS)}")
    build = family_by_name(arch).tiny
    assert build is not None  # ARCHS holds only families with a tiny config
    return build(
        Path(out_dir),
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_head=d_head,
        seed=seed,
        extra_words=extra_words,
        dtype=dtype,
        n_ctx=n_ctx,
    )


def tiny_pixel_values(
    batch: int = 1, *, image_size: int = TINY_IMAGE_SIZE, seed: int = 0
) -> Float[Tensor, "batch 3 size size"]:
    """Normalised random images for the tiny LLaVA, made with numpy (no image processor)."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((batch, 3, image_size, image_size))).float()


class DieOnceEvaluator:
    """A sweep evaluator that kills its own process (``os._exit``) the first time it is called,
    then behaves as ``inner``: it simulates a cluster worker that dies in the middle of a step
    (the first call creates ``marker``, so the retried task finds it and goes on)."""

    def __init__(self, inner: Any, marker: str | Path):
        self.inner = inner
        self.marker = Path(marker)
        self.task = getattr(inner, "task", None)

    def __call__(self, model: Any, gate: Any) -> Any:
        import os

        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(1)
        return self.inner(model, gate)

    def __repr__(self) -> str:
        return repr(self.inner)
