"""Images and prompts for LLaVA-type bridges, without an image processor.

:func:`vision_settings` reads what a LLaVA model needs from its config: the vision tower's image
size and patch size, the number of image tokens per image (``(image_size // patch_size) ** 2`` for
the ``"default"`` feature strategy, which drops CLS; one more for ``"full"``), the image token id
and the normalisation (``image_mean`` / ``image_std`` of a ``preprocessor_config.json`` beside the
weights, else CLIP's constants). :func:`load_pixel_values` resizes and normalises image files into
``[batch, 3, S, S]`` (numpy + PIL), and :func:`encode_image_prompt` builds the token ids of a
prompt template whose ``{image}`` is replaced by the right number of image tokens.

Only LLaVA-1.5-style models (one fixed-size image, ``model_type == "llava"``) are supported;
LLaVA-NeXT's any-resolution tiling needs its processor.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxtyping import Float
from torch import Tensor

from lineage_lens.errors import ConfigError
from lineage_lens.zoo.images import CLIP_MEAN, CLIP_STD, to_pixel_values

#: LLaVA-1.5's conversation format for one image and one question.
LLAVA_TEMPLATE = "USER: {image}\n{question} ASSISTANT:"


@dataclass(frozen=True)
class VisionSettings:
    """What building LLaVA inputs needs: image size, image tokens, normalisation."""

    image_size: int
    patch_size: int
    n_image_tokens: int
    image_token_id: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD


def _hf_model(model: Any) -> Any:
    return getattr(model, "original_model", model)


def vision_settings(model: Any) -> VisionSettings:
    """The :class:`VisionSettings` of a LLaVA bridge (or HF LLaVA model)."""
    hf = _hf_model(model)
    cfg = getattr(hf, "config", None)
    vcfg = getattr(cfg, "vision_config", None)
    if cfg is None or vcfg is None:
        raise ConfigError(
            f"{type(hf).__name__} is not a vision-language model (no vision_config); image "
            "evaluations (POPE, CHAIR captions) need a LLaVA-type model."
        )
    if getattr(cfg, "model_type", "llava") != "llava":
        raise ConfigError(
            f"model_type {cfg.model_type!r} is not supported: only LLaVA-1.5-style models with one "
            "fixed-size image per prompt (model_type 'llava')."
        )
    token_id = getattr(cfg, "image_token_index", None)
    if token_id is None:
        token_id = getattr(cfg, "image_token_id", None)
    if token_id is None:
        raise ConfigError("the model config has no image_token_index / image_token_id.")
    size, patch = int(vcfg.image_size), int(vcfg.patch_size)
    n_tokens = (size // patch) ** 2
    strategy = getattr(cfg, "vision_feature_select_strategy", "default")
    if strategy == "full":
        n_tokens += 1
    elif strategy != "default":
        raise ConfigError(f"unknown vision_feature_select_strategy {strategy!r}.")
    mean, std = CLIP_MEAN, CLIP_STD
    src = getattr(cfg, "_name_or_path", None) or getattr(cfg, "name_or_path", None)
    if src and (Path(src) / "preprocessor_config.json").is_file():
        pre = json.loads((Path(src) / "preprocessor_config.json").read_text(encoding="utf-8"))
        mean = tuple(pre.get("image_mean", mean))  # type: ignore[assignment]
        std = tuple(pre.get("image_std", std))  # type: ignore[assignment]
    return VisionSettings(size, patch, n_tokens, int(token_id), mean, std)


def load_pixel_values(
    paths: Sequence[str | Path], settings: VisionSettings
) -> Float[Tensor, "batch 3 size size"]:
    """Load, resize (bicubic, square) and normalise image files for the vision tower."""
    return to_pixel_values(list(paths), settings.image_size, mean=settings.mean, std=settings.std)


def encode_image_prompt(
    tokenizer: Any, question: str, settings: VisionSettings, template: str = LLAVA_TEMPLATE
) -> list[int]:
    """Token ids of ``template`` with ``{question}`` filled in and ``{image}`` replaced by
    ``settings.n_image_tokens`` image tokens (the text before it gets the tokenizer's BOS)."""
    if template.count("{image}") != 1 or "{question}" not in template:
        raise ConfigError(
            f"the prompt template must contain {{image}} once and {{question}}: {template!r}"
        )
    before, after = template.split("{image}")
    before_ids = list(
        tokenizer(before.format(question=question), add_special_tokens=True).input_ids
    )
    eos = tokenizer.eos_token_id
    if before_ids and eos is not None and before_ids[-1] == eos and eos != tokenizer.bos_token_id:
        before_ids = before_ids[:-1]
    after_ids = list(tokenizer(after.format(question=question), add_special_tokens=False).input_ids)
    return before_ids + [settings.image_token_id] * settings.n_image_tokens + after_ids
