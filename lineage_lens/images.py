"""Images and prompts for vision-language bridges: each family's Hugging Face image processor
(PIL backend, no torchvision), prompts with image tokens, and the extra forward inputs of images.

Every family is one *image-input builder* (:class:`ImageInputs`), registered by ``model_type`` in
:data:`IMAGE_INPUT_BUILDERS` and returned by :func:`image_inputs`. It says, per image, which tokens
stand for it in a prompt (:meth:`~ImageInputs.image_text` / :meth:`~ImageInputs.image_token_ids`:
the number of image tokens can depend on the image's size), the forward inputs of a batch of
images (:meth:`~ImageInputs.forward_kwargs`) and of the padded tokens
(:meth:`~ImageInputs.token_kwargs`), whether callers may pass position ids, and the position of a
key/value-cached decoding step. Capture (:func:`lineage_lens.activations.collect_head_activations`
with ``condition="image"`` or ``"black_image"``), attention to evidence
(:func:`lineage_lens.attention.evidence_attention` with ``images=``), POPE and CHAIR captions all
use it, and :func:`greedy_generate` decodes image prompts for the evaluators.

Families (``docs/architectures.md``):

* ``llava`` (LLaVA-1.5): ``n_image_tokens`` image tokens of one fixed-size image,
  ``pixel_values`` (:func:`vision_settings`, :func:`load_pixel_values`);
* ``llava_next`` (LLaVA-NeXT, any resolution): tiles on the best ``image_grid_pinpoints`` grid,
  ``pixel_values`` ``[batch, tiles, 3, S, S]`` and ``image_sizes``;
* ``gemma3`` (image+text): ``<start_of_image>`` + ``mm_tokens_per_image`` soft tokens +
  ``<end_of_image>``, ``pixel_values`` and ``token_type_ids`` (bidirectional attention over the
  image);
* ``qwen2_5_vl`` and ``qwen3_vl`` (dynamic resolution): ``<|vision_start|>`` + one
  ``<|image_pad|>`` per merged patch + ``<|vision_end|>``, ``pixel_values`` (flattened patches),
  ``image_grid_thw`` and ``mm_token_type_ids``; 3-D mRoPE positions come from the model.

Pixels come from the model's own Hugging Face image processor, PIL backend:
``AutoImageProcessor.from_pretrained(model_dir, backend="pil")`` when a
``preprocessor_config.json`` is saved with the model; otherwise each family's documented fallback
built from the model config (LLaVA-1.5: ``CLIPImageProcessorPil`` with the vision tower's square
size and no centre crop, which for square images equals its shortest-edge resize plus centre crop;
``LlavaNextImageProcessorPil``, ``Gemma3ImageProcessorPil``, ``Qwen2VLImageProcessorPil``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lineage_lens.errors import ConfigError, DataError, ShapeMismatchError
from lineage_lens.identity import file_digests, image_identity, record_digest
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
            f"vision_settings describes LLaVA-1.5's fixed-size images (model_type 'llava'), not "
            f"model_type {cfg.model_type!r}; use lineage_lens.images.image_inputs(model), which "
            f"covers {', '.join(IMAGE_INPUT_BUILDERS)}."
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


#: The files a saved image processor is read from (``AutoImageProcessor.from_pretrained``).
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def processor_identity(processor_dir: str | Path | None) -> str:
    """The content identity of a saved image processor: the bytes of its config files
    (:data:`PROCESSOR_FILES`); ``""`` for none. Processors are memoised by it, so a config edited
    in place is read again."""
    if processor_dir is None:
        return ""
    files = [Path(processor_dir) / n for n in PROCESSOR_FILES]
    files = [f for f in files if f.is_file()]
    return record_digest(dict(zip([f.name for f in files], file_digests(files), strict=True)))


def image_inputs_identity(inputs: ImageInputs) -> str:
    """The content identity of how a model family turns image files into model inputs: its
    :meth:`ImageInputs.describe` (without the processor's folder) and the processor's config
    files (:func:`processor_identity`)."""
    desc = dict(inputs.describe())
    return record_digest(
        {"inputs": desc, "processor": processor_identity(desc.pop("processor_dir", None))}
    )


def image_processor(settings: VisionSettings) -> Any:
    """The model's Hugging Face image processor (PIL backend; no torchvision).

    ``AutoImageProcessor.from_pretrained(settings.processor_dir, backend="pil")`` when the model
    was saved with a ``preprocessor_config.json``, else :func:`fallback_image_processor`.
    Memoised by ``settings`` and the content of the saved config (:func:`processor_identity`).
    """
    return _image_processor(settings, processor_identity(settings.processor_dir))


@functools.lru_cache(maxsize=8)
def _image_processor(settings: VisionSettings, identity: str) -> Any:
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


def open_image(image: Any) -> Any:
    """An image file or PIL image as an RGB PIL image.

    A file that is missing, unreadable (truncated, not an image) or larger than PIL's
    decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``; also its warning when warnings are
    errors) is a :class:`~lineage_lens.errors.DataError` naming the file."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise DataError("image file not found.", path=image)
        try:
            with Image.open(image) as im:
                return im.convert("RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            what = str(exc).rstrip(".")  # "Image size (N pixels) exceeds limit of M pixels, ..."
            raise DataError(
                f"PIL refuses this image as a possible decompression bomb ({what}). If you trust "
                "the file, raise the limit before loading: PIL.Image.MAX_IMAGE_PIXELS = "
                "<pixels> (None: no limit); PIL errors above twice the limit.",
                path=image,
            ) from exc
        except OSError as exc:  # UnidentifiedImageError, truncated or corrupt data
            raise DataError(f"unreadable image ({exc}).", path=image) from exc
    if isinstance(image, Image.Image):
        try:
            return image.convert("RGB")
        except OSError as exc:  # a lazily opened file that turns out truncated
            where = getattr(image, "filename", "") or None
            raise DataError(f"unreadable image ({exc}).", path=where) from exc
    raise ConfigError(f"an image must be a file path or a PIL image, got {type(image).__name__}.")


def load_pixel_values(
    images: Sequence[Any], settings: VisionSettings
) -> Float[Tensor, "batch 3 size size"]:
    """Image files or PIL images -> ``[batch, 3, S, S]`` float32 pixel values, through the model's
    Hugging Face image processor (:func:`image_processor`)."""
    if not images:
        raise ConfigError("no images given.")
    opened = [open_image(im) for im in images]
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


# --------------------------------------------------------------------------------------------
# Image-input builders (one per model type)
# --------------------------------------------------------------------------------------------


class ImageInputs(Protocol):
    """What a multimodal model type needs to run prompts with images, written once per family and
    used by capture (:mod:`lineage_lens.activations`), attention to evidence
    (:mod:`lineage_lens.attention`) and the image evaluators (POPE, CHAIR captions)."""

    model_type: str
    #: Whether callers may pass padding-aware ``position_ids``. ``False`` for mRoPE models
    #: (Qwen-VL), whose 3-D positions the model derives itself from the tokens, the attention mask
    #: and ``image_grid_thw``.
    takes_position_ids: bool

    def image_text(self, image: Any | None = None) -> str:
        """The prompt text that stands for ``image`` (replaces ``{image}`` in a template)."""
        ...

    def image_token_ids(self, image: Any | None = None) -> list[int]:
        """The token ids that stand for ``image`` (its markers and image tokens)."""
        ...

    def check_prompt(self, input_ids: Sequence[int], where: str, image: Any | None = None) -> None:
        """Raise unless the tokenized prompt holds the image tokens ``image`` needs."""
        ...

    def forward_kwargs(self, images: Sequence[Any]) -> dict[str, Tensor]:
        """The extra forward inputs of a batch of images, one per prompt."""
        ...

    def token_kwargs(self, input_ids: Int[Tensor, "batch pos"]) -> dict[str, Tensor]:
        """Extra forward inputs derived from the padded token batch (e.g. Gemma3's
        ``token_type_ids``, Qwen-VL's ``mm_token_type_ids``); empty for most families."""
        ...

    def black_image(self) -> Any:
        """The black dummy image of the ``"black_image"`` condition."""
        ...

    def step_position_ids(
        self, model: Any, attention_mask: Int[Tensor, "batch pos"]
    ) -> Int[Tensor, "*streams batch 1"]:
        """Position ids of the last token of ``attention_mask`` in a key/value-cached decoding
        step after an image prompt (``[batch, 1]``; mRoPE: ``[3, batch, 1]``)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable provenance (recorded in the activations' meta)."""
        ...


def _model_config(model: Any) -> Any:
    cfg = getattr(_hf_model(model), "config", None)
    if cfg is None or getattr(cfg, "vision_config", None) is None:
        raise ConfigError(
            f"{type(_hf_model(model)).__name__} is not a vision-language model (no vision_config)."
        )
    return cfg


def _config_token_id(cfg: Any, *names: str) -> int:
    for name in names:
        value = getattr(cfg, name, None)
        if value is not None:
            return int(value)
    raise ConfigError(f"the model config has none of {', '.join(names)}.")


def _processor_dir(cfg: Any) -> str | None:
    src = getattr(cfg, "_name_or_path", None) or getattr(cfg, "name_or_path", None)
    if src and (Path(src) / "preprocessor_config.json").is_file():
        return str(Path(src).resolve())
    return None


def _saved_processor(processor_dir: str) -> Any:
    return _load_saved_processor(processor_dir, processor_identity(processor_dir))


@functools.lru_cache(maxsize=16)
def _load_saved_processor(processor_dir: str, identity: str) -> Any:
    """The processor saved in ``processor_dir``, memoised by the content of its config files."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(processor_dir, backend="pil")
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load the image processor saved in {processor_dir} ({exc}); fix or remove "
            "its preprocessor_config.json."
        ) from exc


@dataclass(frozen=True)
class _FamilyImageInputs:
    """Shared machinery: a prompt's image is ``before + image_token * n + after`` (text), pixels
    come from the model's Hugging Face image processor (PIL backend). Subclasses give the number of
    image tokens of an image and the forward inputs of a batch."""

    model_type: str
    tokenizer: Any
    image_token_id: int
    image_token: str
    processor: Any
    #: Side of the black dummy image.
    image_size: int
    processor_dir: str | None
    before: str = ""
    after: str = ""
    takes_position_ids: bool = True

    @staticmethod
    def _tokenizer(model: Any) -> Any:
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError("the model has no tokenizer; load it with load_model().")
        return tokenizer

    @staticmethod
    def _token(tokenizer: Any, token_id: int) -> str:
        token = tokenizer.convert_ids_to_tokens(token_id)
        if not isinstance(token, str) or not token:
            raise ConfigError(f"the tokenizer has no token for the image token id {token_id}.")
        return token

    def n_image_tokens(self, image: Any | None = None) -> int:
        raise NotImplementedError

    def image_text(self, image: Any | None = None) -> str:
        return self.before + self.image_token * self.n_image_tokens(image) + self.after

    def image_token_ids(self, image: Any | None = None) -> list[int]:
        def ids(text: str) -> list[int]:
            return list(self.tokenizer(text, add_special_tokens=False).input_ids) if text else []

        n = self.n_image_tokens(image)
        return ids(self.before) + [self.image_token_id] * n + ids(self.after)

    def check_prompt(self, input_ids: Sequence[int], where: str, image: Any | None = None) -> None:
        found = sum(1 for t in input_ids if t == self.image_token_id)
        expected = self.n_image_tokens(image)
        if found != expected:
            raise ConfigError(
                f"{where}: the prompt holds {found} image tokens, the model expects {expected}; "
                f"the tokenizer must encode {self.image_token!r} as one token and the template "
                "must contain {image} once."
            )

    def token_kwargs(self, input_ids: Int[Tensor, "batch pos"]) -> dict[str, Tensor]:
        return {}

    def black_image(self) -> Any:
        from PIL import Image

        return Image.new("RGB", (self.image_size, self.image_size))

    def step_position_ids(
        self, model: Any, attention_mask: Int[Tensor, "batch pos"]
    ) -> Int[Tensor, "batch 1"]:
        return attention_mask.long().sum(dim=1, keepdim=True) - 1

    def _process(self, images: Sequence[Any]) -> Any:
        if not images:
            raise ConfigError("no images given.")
        return self.processor(images=[open_image(im) for im in images], return_tensors="pt")

    def describe(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "image_token": self.image_token,
            "image_processor": type(self.processor).__name__,
            "processor_dir": self.processor_dir,
        }


@dataclass(frozen=True)
class LlavaImageInputs(_FamilyImageInputs):
    """LLaVA-1.5: ``n_image_tokens`` image tokens per prompt, ``pixel_values`` from the model's
    image processor (one fixed-size image)."""

    settings: VisionSettings | None = None

    @classmethod
    def from_model(cls, model: Any) -> LlavaImageInputs:
        settings = vision_settings(model)
        tok = cls._tokenizer(model)
        return cls(
            model_type="llava",
            tokenizer=tok,
            image_token_id=settings.image_token_id,
            image_token=cls._token(tok, settings.image_token_id),
            processor=image_processor(settings),
            image_size=settings.image_size,
            processor_dir=settings.processor_dir,
            settings=settings,
        )

    def n_image_tokens(self, image: Any | None = None) -> int:
        assert self.settings is not None
        return self.settings.n_image_tokens

    def forward_kwargs(self, images: Sequence[Any]) -> dict[str, Tensor]:
        assert self.settings is not None
        return {"pixel_values": load_pixel_values(images, self.settings)}

    def describe(self) -> dict[str, Any]:
        assert self.settings is not None
        return {
            **super().describe(),
            "n_image_tokens": self.settings.n_image_tokens,
            "image_size": self.settings.image_size,
        }


@dataclass(frozen=True)
class LlavaNextImageInputs(_FamilyImageInputs):
    """LLaVA-NeXT (any resolution): the image is tiled on the best of ``image_grid_pinpoints``;
    its image tokens are the base tile's patches plus the unpadded tiles' patches and one newline
    token per row (Hugging Face's ``LlavaNextProcessor`` count); forward inputs ``pixel_values``
    ``[batch, tiles, 3, S, S]`` and ``image_sizes`` ``[batch, 2]`` (original height, width)."""

    patch_size: int = 14
    pinpoints: tuple[tuple[int, int], ...] = ()
    extra_tokens: int = 0

    @classmethod
    def from_model(cls, model: Any) -> LlavaNextImageInputs:
        cfg = _model_config(model)
        vcfg = cfg.vision_config
        tok = cls._tokenizer(model)
        token_id = _config_token_id(cfg, "image_token_index", "image_token_id")
        size = int(vcfg.image_size)
        pinpoints = tuple(tuple(int(v) for v in p) for p in cfg.image_grid_pinpoints)
        pdir = _processor_dir(cfg)
        if pdir is not None:
            processor = _saved_processor(pdir)
        else:
            from transformers import LlavaNextImageProcessorPil

            processor = LlavaNextImageProcessorPil(
                size={"shortest_edge": size},
                crop_size={"height": size, "width": size},
                image_grid_pinpoints=[list(p) for p in pinpoints],
                image_mean=list(CLIP_MEAN),
                image_std=list(CLIP_STD),
            )
        strategy = getattr(cfg, "vision_feature_select_strategy", "default")
        if strategy not in ("default", "full"):
            raise ConfigError(f"unknown vision_feature_select_strategy {strategy!r}.")
        return cls(
            model_type=cfg.model_type,
            tokenizer=tok,
            image_token_id=token_id,
            image_token=cls._token(tok, token_id),
            processor=processor,
            image_size=size,
            processor_dir=pdir,
            patch_size=int(vcfg.patch_size),
            pinpoints=pinpoints,
            extra_tokens=1 if strategy == "full" else 0,
        )

    def n_image_tokens(self, image: Any | None = None) -> int:
        from transformers.image_processing_utils import select_best_resolution

        width, height = open_image(image if image is not None else self.black_image()).size
        best_h, best_w = select_best_resolution([height, width], [list(p) for p in self.pinpoints])
        side = self.image_size // self.patch_size
        cur_h, cur_w = side * (best_h // self.image_size), side * (best_w // self.image_size)
        if width / height > cur_w / cur_h:
            new_h = int(round(height * (cur_w / width), 7))
            cur_h -= 2 * ((cur_h - new_h) // 2)
        else:
            new_w = int(round(width * (cur_h / height), 7))
            cur_w -= 2 * ((cur_w - new_w) // 2)
        return cur_h * cur_w + cur_h + side * side + self.extra_tokens

    def forward_kwargs(self, images: Sequence[Any]) -> dict[str, Tensor]:
        out = self._process(images)
        return {"pixel_values": out["pixel_values"].float(), "image_sizes": out["image_sizes"]}


@dataclass(frozen=True)
class Gemma3ImageInputs(_FamilyImageInputs):
    """Gemma3 image+text: ``\\n\\n<start_of_image>`` + ``mm_tokens_per_image`` soft tokens +
    ``<end_of_image>\\n\\n`` (Hugging Face's ``Gemma3Processor`` sequence, no pan-and-scan);
    ``pixel_values`` ``[batch, 3, S, S]``; ``token_type_ids`` (1 on image tokens) so image tokens
    attend to each other bidirectionally, as with HF's processor."""

    n_tokens: int = 256

    @classmethod
    def from_model(cls, model: Any) -> Gemma3ImageInputs:
        cfg = _model_config(model)
        tok = cls._tokenizer(model)
        token_id = _config_token_id(cfg, "image_token_index", "image_token_id")
        boi = cls._token(tok, _config_token_id(cfg, "boi_token_index", "boi_token_id"))
        eoi = cls._token(tok, _config_token_id(cfg, "eoi_token_index", "eoi_token_id"))
        size = int(cfg.vision_config.image_size)
        pdir = _processor_dir(cfg)
        if pdir is not None:
            processor = _saved_processor(pdir)
        else:
            from transformers import Gemma3ImageProcessorPil

            processor = Gemma3ImageProcessorPil(size={"height": size, "width": size})
        return cls(
            model_type=cfg.model_type,
            tokenizer=tok,
            image_token_id=token_id,
            image_token=cls._token(tok, token_id),
            processor=processor,
            image_size=size,
            processor_dir=pdir,
            before=f"\n\n{boi}",
            after=f"{eoi}\n\n",
            n_tokens=int(cfg.mm_tokens_per_image),
        )

    def n_image_tokens(self, image: Any | None = None) -> int:
        return self.n_tokens

    def forward_kwargs(self, images: Sequence[Any]) -> dict[str, Tensor]:
        out = self._process(images)
        return {"pixel_values": out["pixel_values"].float()}

    def token_kwargs(self, input_ids: Int[Tensor, "batch pos"]) -> dict[str, Tensor]:
        return {"token_type_ids": (input_ids == self.image_token_id).long()}


@dataclass(frozen=True)
class QwenVLImageInputs(_FamilyImageInputs):
    """Qwen2.5-VL and Qwen3-VL (dynamic resolution): ``<|vision_start|>`` + one ``<|image_pad|>``
    per merged patch + ``<|vision_end|>``; forward inputs ``pixel_values`` (flattened patches of
    the batch) and ``image_grid_thw`` ``[batch, 3]`` from ``Qwen2VLImageProcessor`` (PIL backend),
    and ``mm_token_type_ids`` from the tokens, from which the model derives its 3-D mRoPE positions
    (so callers pass no ``position_ids``). Qwen-VL has no fixed image size: the black dummy image
    is ``2 * patch_size * merge_size`` pixels square (the processor resizes it within its
    ``min_pixels`` / ``max_pixels``, which decide its image tokens)."""

    merge_size: int = 2

    @classmethod
    def from_model(cls, model: Any) -> QwenVLImageInputs:
        cfg = _model_config(model)
        vcfg = cfg.vision_config
        tok = cls._tokenizer(model)
        token_id = _config_token_id(cfg, "image_token_id")
        start = cls._token(tok, _config_token_id(cfg, "vision_start_token_id"))
        end = cls._token(tok, _config_token_id(cfg, "vision_end_token_id"))
        merge, patch = int(vcfg.spatial_merge_size), int(vcfg.patch_size)
        pdir = _processor_dir(cfg)
        if pdir is not None:
            processor = _saved_processor(pdir)
        else:
            from transformers import Qwen2VLImageProcessorPil

            processor = Qwen2VLImageProcessorPil(
                patch_size=patch,
                merge_size=merge,
                temporal_patch_size=int(getattr(vcfg, "temporal_patch_size", 2)),
            )
        if int(processor.patch_size) != patch or int(processor.merge_size) != merge:
            raise ConfigError(
                f"the saved image processor's patch_size/merge_size ({processor.patch_size}/"
                f"{processor.merge_size}) differ from the vision tower's ({patch}/{merge}); fix "
                "its preprocessor_config.json."
            )
        return cls(
            model_type=cfg.model_type,
            tokenizer=tok,
            image_token_id=token_id,
            image_token=cls._token(tok, token_id),
            processor=processor,
            image_size=2 * patch * merge,
            processor_dir=pdir,
            before=start,
            after=end,
            takes_position_ids=False,
            merge_size=merge,
        )

    def n_image_tokens(self, image: Any | None = None) -> int:
        grid = self._process([image if image is not None else self.black_image()])
        return int(grid["image_grid_thw"][0].prod()) // self.merge_size**2

    def forward_kwargs(self, images: Sequence[Any]) -> dict[str, Tensor]:
        out = self._process(images)
        return {
            "pixel_values": out["pixel_values"].float(),
            "image_grid_thw": out["image_grid_thw"],
        }

    def token_kwargs(self, input_ids: Int[Tensor, "batch pos"]) -> dict[str, Tensor]:
        return {"mm_token_type_ids": (input_ids == self.image_token_id).int()}

    def step_position_ids(
        self, model: Any, attention_mask: Int[Tensor, "batch pos"]
    ) -> Int[Tensor, "3 batch 1"]:
        """The text position plus the prompt's mRoPE offset (``rope_deltas``, which the model
        stored when it ran the prompt), on all three position streams -- what Hugging Face's own
        ``generate`` passes."""
        inner = getattr(_hf_model(model), "model", None)
        deltas = getattr(inner, "rope_deltas", None)
        if deltas is None:
            raise ConfigError(
                f"{self.model_type}: the model kept no rope_deltas from the image prompt; run the "
                "prompt through the model (with image_grid_thw and mm_token_type_ids) first."
            )
        text = super().step_position_ids(model, attention_mask)
        pos = text + deltas.to(text.device).reshape(-1, 1)
        return pos[None].expand(3, -1, -1)


#: ``model_type`` -> builder of its :class:`ImageInputs` from a bridge. One entry per family.
IMAGE_INPUT_BUILDERS: dict[str, Callable[[Any], ImageInputs]] = {
    "llava": LlavaImageInputs.from_model,
    "llava_next": LlavaNextImageInputs.from_model,
    "gemma3": Gemma3ImageInputs.from_model,
    "qwen2_5_vl": QwenVLImageInputs.from_model,
    "qwen3_vl": QwenVLImageInputs.from_model,
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
            f"{', '.join(IMAGE_INPUT_BUILDERS)}); register a builder in "
            "lineage_lens.images.IMAGE_INPUT_BUILDERS."
        )
    return builder(model)


def encode_image_prompt(
    tokenizer: Any,
    question: str,
    inputs: ImageInputs | VisionSettings,
    template: str = LLAVA_TEMPLATE,
    image: Any | None = None,
) -> list[int]:
    """Token ids of ``template`` with ``{question}`` filled in and ``{image}`` replaced by the
    tokens that stand for ``image`` (:meth:`ImageInputs.image_token_ids`; the text before it gets
    the tokenizer's BOS). A :class:`VisionSettings` gives LLaVA-1.5's fixed image tokens."""
    if template.count("{image}") != 1 or "{question}" not in template:
        raise ConfigError(
            f"the prompt template must contain {{image}} once and {{question}}: {template!r}"
        )
    if isinstance(inputs, VisionSettings):
        image_ids = [inputs.image_token_id] * inputs.n_image_tokens
    else:
        image_ids = inputs.image_token_ids(image)
    before, after = template.split("{image}")
    before_ids = list(
        tokenizer(before.format(question=question), add_special_tokens=True).input_ids
    )
    eos = tokenizer.eos_token_id
    if before_ids and eos is not None and before_ids[-1] == eos and eos != tokenizer.bos_token_id:
        before_ids = before_ids[:-1]
    after_ids = list(tokenizer(after.format(question=question), add_special_tokens=False).input_ids)
    return before_ids + image_ids + after_ids


def image_batch_kwargs(
    inputs: ImageInputs, images: Sequence[Any], input_ids: Int[Tensor, "batch pos"]
) -> dict[str, Tensor]:
    """Every extra forward input of a padded batch of image prompts (images one per row)."""
    return {**inputs.forward_kwargs(images), **inputs.token_kwargs(input_ids)}


def image_key(image: Any) -> str:
    """A short content identity of an image for fingerprints: the sha256 of a path's file bytes
    (indexed, :func:`lineage_lens.identity.image_identity`), or of an in-memory image's pixels;
    ``""`` for none. A file whose pixels change under the same path gets a new key."""
    return image_identity(image)


def greedy_generate(
    model: Any,
    input_ids: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"],
    inputs: ImageInputs,
    images: Sequence[Any],
    max_new_tokens: int,
    *,
    eos_token_id: int | None = None,
    use_cache: bool = True,
) -> Int[Tensor, "batch new"]:
    """Greedy continuations of a left-padded batch of image prompts (one image per row).

    lineage-lens decodes image prompts itself instead of calling ``TransformerBridge.generate``,
    which TransformerLens 4.3 gets wrong for some families: with Qwen2.5-VL and Qwen3-VL images
    its key/value-cached decoding fails with a size mismatch (it hands the model only the attention
    mask, from which Hugging Face's mRoPE code derives positions for the whole sequence), and its
    uncached path passes the image inputs to the first step only. Here the prompt runs once with
    every image input (:func:`image_batch_kwargs`) into a ``DynamicCache``; each step then runs
    the new token with the grown attention mask and the family's
    :meth:`ImageInputs.step_position_ids`. With ``use_cache=False`` (a model whose cache cannot
    be trusted, see :func:`lineage_lens.kvcache.kv_cache_ok`) every step is a full forward with
    all image inputs. Hooks on the model (a gate) apply to every step. Rows that reached
    ``eos_token_id`` keep emitting it.
    """
    from transformers import DynamicCache

    from lineage_lens.batching import model_device, to_model

    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    device = model_device(model)
    ids, mask = input_ids.to(device), attention_mask.to(device).long()
    image_kw = to_model(inputs.forward_kwargs(images), model)
    n_prompt = ids.shape[1]
    cache = DynamicCache() if use_cache else None
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    with torch.inference_mode():
        for step in range(max_new_tokens):
            if cache is None or step == 0:
                kw: dict[str, Any] = {"attention_mask": mask, **image_kw}
                kw.update(to_model(inputs.token_kwargs(ids.cpu()), model))
                if inputs.takes_position_ids:
                    kw["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0)
                if cache is not None:
                    kw.update(past_key_values=cache, use_cache=True)
                logits = model(ids, **kw)
            else:
                logits = model(
                    ids[:, -1:],
                    attention_mask=mask,
                    position_ids=inputs.step_position_ids(model, mask),
                    past_key_values=cache,
                    use_cache=True,
                )
            nxt = logits[:, -1].argmax(dim=-1)
            if eos_token_id is not None:
                nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
                finished |= nxt == eos_token_id
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            if eos_token_id is not None and bool(finished.all()):
                break
    return ids[:, n_prompt:].cpu()
