"""Images and prompts for LLaVA-type bridges: the model's Hugging Face image processor, prompts
with image tokens, and the extra forward inputs of an image.

:func:`vision_settings` reads what a LLaVA model needs from its config: the vision tower's image
size and patch size, the number of image tokens per image (``(image_size // patch_size) ** 2`` for
the ``"default"`` feature strategy, which drops CLS; one more for ``"full"``), the image token id
and the normalisation (``image_mean`` / ``image_std`` of a ``preprocessor_config.json`` beside the
weights, else CLIP's constants).

Pixels come from the model's own Hugging Face image processor, PIL backend
(:func:`image_processor`): ``AutoImageProcessor.from_pretrained(model_dir, backend="pil")`` when a
``preprocessor_config.json`` is saved with the model; otherwise (the zoo's members and models saved
without one) the documented fallback ``CLIPImageProcessorPil`` with the vision tower's square size
and no centre crop -- LLaVA-1.5's processor (CLIP's: bicubic resize, rescale, CLIP mean/std),
which for square images equals its shortest-edge resize plus centre crop.
:func:`load_pixel_values` turns image files or PIL images into ``[batch, 3, S, S]``, and
:func:`encode_image_prompt` builds the token ids of a prompt template whose ``{image}`` is replaced
by the right number of image tokens.

:func:`image_inputs` returns the per-model-type *image-input builder* that image-grounded
activation capture uses (:func:`lineage_lens.activations.collect_head_activations` with
``condition="image"`` or ``"black_image"``): the text that stands for an image in a prompt, a
check of the tokenized prompt, and the extra forward kwargs of a batch of images
(``pixel_values`` for LLaVA-1.5; later families add e.g. ``image_sizes`` or ``image_grid_thw``
by registering a builder in :data:`IMAGE_INPUT_BUILDERS`).

Only LLaVA-1.5-style models (one fixed-size image, ``model_type == "llava"``) are supported;
LLaVA-NeXT's any-resolution tiling and Qwen-VL's dynamic resolution need their own builders.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from jaxtyping import Float
from torch import Tensor

from lineage_lens.errors import ConfigError, DataError, ShapeMismatchError
from lineage_lens.zoo.images import CLIP_MEAN, CLIP_STD

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
    #: Folder holding the model's ``preprocessor_config.json`` (``None``: the CLIP fallback).
    processor_dir: str | None = None


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
    processor_dir = None
    src = getattr(cfg, "_name_or_path", None) or getattr(cfg, "name_or_path", None)
    if src and (Path(src) / "preprocessor_config.json").is_file():
        pre = json.loads((Path(src) / "preprocessor_config.json").read_text(encoding="utf-8"))
        mean = tuple(pre.get("image_mean", mean))  # type: ignore[assignment]
        std = tuple(pre.get("image_std", std))  # type: ignore[assignment]
        processor_dir = str(Path(src).resolve())
    return VisionSettings(size, patch, n_tokens, int(token_id), mean, std, processor_dir)


def fallback_image_processor(settings: VisionSettings) -> Any:
    """LLaVA-1.5's image processor (CLIP's, PIL backend) for a model saved without one: bicubic
    resize to the vision tower's square size (no centre crop), rescale to [0, 1], normalise with
    ``settings.mean`` / ``settings.std``."""
    from transformers import CLIPImageProcessorPil

    s = settings.image_size
    return CLIPImageProcessorPil(
        size={"height": s, "width": s},
        do_center_crop=False,
        image_mean=list(settings.mean),
        image_std=list(settings.std),
    )


@functools.lru_cache(maxsize=8)
def image_processor(settings: VisionSettings) -> Any:
    """The model's Hugging Face image processor (PIL backend; no torchvision).

    ``AutoImageProcessor.from_pretrained(settings.processor_dir, backend="pil")`` when the model
    was saved with a ``preprocessor_config.json``, else :func:`fallback_image_processor`.
    """
    if settings.processor_dir is None:
        return fallback_image_processor(settings)
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(settings.processor_dir, backend="pil")
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load the image processor saved in {settings.processor_dir} ({exc}); fix or "
            "remove its preprocessor_config.json."
        ) from exc


def _open_image(image: Any) -> Any:
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise DataError("image file not found.", path=image)
        try:
            with Image.open(image) as im:
                return im.convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"unreadable image ({exc}).", path=image) from exc
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    raise ConfigError(f"an image must be a file path or a PIL image, got {type(image).__name__}.")


def load_pixel_values(
    images: Sequence[Any], settings: VisionSettings
) -> Float[Tensor, "batch 3 size size"]:
    """Image files or PIL images -> ``[batch, 3, S, S]`` float32 pixel values, through the model's
    Hugging Face image processor (:func:`image_processor`)."""
    if not images:
        raise ConfigError("no images given.")
    opened = [_open_image(im) for im in images]
    pixels = image_processor(settings)(images=opened, return_tensors="pt")["pixel_values"]
    s = settings.image_size
    if tuple(pixels.shape[1:]) != (3, s, s):
        raise ShapeMismatchError(
            "pixel_values",
            (len(opened), 3, s, s),
            tuple(pixels.shape),
            "The saved image processor does not make images of the vision tower's size.",
        )
    return pixels.float()


def black_image(settings: VisionSettings) -> Any:
    """A black RGB PIL image of the vision tower's size (the paper's dummy image)."""
    from PIL import Image

    return Image.new("RGB", (settings.image_size, settings.image_size))


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


# --------------------------------------------------------------------------------------------
# Image-input builders (one per model type)
# --------------------------------------------------------------------------------------------


class ImageInputs(Protocol):
    """What image-grounded capture needs from a multimodal model type."""

    model_type: str

    def image_text(self, image: Any | None = None) -> str:
        """The prompt text that stands for ``image`` (replaces ``{image}`` in a template)."""
        ...

    def check_prompt(self, input_ids: Sequence[int], where: str) -> None:
        """Raise unless the tokenized prompt holds the image tokens the model expects."""
        ...

    def forward_kwargs(self, images: Sequence[Any]) -> dict[str, Tensor]:
        """The extra forward inputs of a batch of images, one per prompt."""
        ...

    def black_image(self) -> Any:
        """The black dummy image of the ``"black_image"`` condition."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable provenance (recorded in the activations' meta)."""
        ...


@dataclass(frozen=True)
class LlavaImageInputs:
    """LLaVA-1.5: ``n_image_tokens`` image tokens per prompt, ``pixel_values`` from the model's
    image processor."""

    settings: VisionSettings
    image_token: str
    model_type: str = "llava"

    @classmethod
    def from_model(cls, model: Any) -> LlavaImageInputs:
        settings = vision_settings(model)
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError("the model has no tokenizer; load it with load_model().")
        token = tokenizer.convert_ids_to_tokens(settings.image_token_id)
        if not isinstance(token, str) or not token:
            raise ConfigError(
                f"the tokenizer has no token for the image token id {settings.image_token_id}."
            )
        return cls(settings, token)

    def image_text(self, image: Any | None = None) -> str:
        return self.image_token * self.settings.n_image_tokens

    def check_prompt(self, input_ids: Sequence[int], where: str) -> None:
        found = sum(1 for t in input_ids if t == self.settings.image_token_id)
        if found != self.settings.n_image_tokens:
            raise ConfigError(
                f"{where}: the prompt holds {found} image tokens, the model expects "
                f"{self.settings.n_image_tokens}; the tokenizer must encode {self.image_token!r} "
                "as one token and the template must contain {image} once."
            )

    def forward_kwargs(self, images: Sequence[Any]) -> dict[str, Tensor]:
        return {"pixel_values": load_pixel_values(images, self.settings)}

    def black_image(self) -> Any:
        return black_image(self.settings)

    def describe(self) -> dict[str, Any]:
        proc = image_processor(self.settings)
        return {
            "model_type": self.model_type,
            "n_image_tokens": self.settings.n_image_tokens,
            "image_size": self.settings.image_size,
            "image_processor": type(proc).__name__,
            "processor_dir": self.settings.processor_dir,
        }


#: ``model_type`` -> builder of its :class:`ImageInputs` from a bridge.
IMAGE_INPUT_BUILDERS: dict[str, Callable[[Any], ImageInputs]] = {
    "llava": LlavaImageInputs.from_model,
}


def is_multimodal(model: Any) -> bool:
    """Whether ``model`` (a bridge or HF model) has a vision tower config."""
    return getattr(getattr(_hf_model(model), "config", None), "vision_config", None) is not None


def image_inputs(model: Any) -> ImageInputs:
    """The :class:`ImageInputs` of ``model``'s type (see :data:`IMAGE_INPUT_BUILDERS`)."""
    if not is_multimodal(model):
        raise ConfigError(
            f"{type(_hf_model(model)).__name__} is not a vision-language model (no "
            "vision_config); image conditions need a multimodal model such as LLaVA."
        )
    model_type = getattr(_hf_model(model).config, "model_type", "")
    builder = IMAGE_INPUT_BUILDERS.get(model_type)
    if builder is None:
        raise ConfigError(
            f"image inputs of model_type {model_type!r} are not supported yet (supported: "
            f"{', '.join(IMAGE_INPUT_BUILDERS)})."
        )
    return builder(model)


def image_key(image: Any) -> str:
    """A short identity of an image for fingerprints: its path, or a digest of its pixels."""
    if image is None:
        return ""
    if isinstance(image, (str, Path)):
        return str(Path(image).resolve())
    h = hashlib.sha256(f"{getattr(image, 'mode', '')}{getattr(image, 'size', '')}".encode())
    h.update(image.tobytes() if hasattr(image, "tobytes") else repr(image).encode())
    return h.hexdigest()[:16]
