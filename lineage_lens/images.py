"""What every vision-language family shares: the :class:`ImageInputs` protocol and its base
:class:`FamilyImageInputs`, pixels from a Hugging Face image processor (PIL backend, no
torchvision), black dummy images, prompts with image tokens and greedy decoding of image prompts.

Each family's own image inputs (its tokens, processor fallback and extra forward inputs) live in
its module of :mod:`lineage_lens.families` (``docs/architectures.md``), which registers its
builder here by ``model_type`` (:func:`register_image_inputs`, into :data:`IMAGE_INPUT_BUILDERS`);
:func:`image_inputs` returns the builder's :class:`ImageInputs` for a model. A family's
:class:`ImageInputs` says, per image, which tokens stand for it in a prompt
(:meth:`~ImageInputs.image_text` / :meth:`~ImageInputs.image_token_ids`: the number of image
tokens can depend on the image's size), the forward inputs of a batch of images
(:meth:`~ImageInputs.forward_kwargs`) and of the padded tokens (:meth:`~ImageInputs.token_kwargs`),
whether callers may pass position ids, and the position of a key/value-cached decoding step.
Capture (:func:`lineage_lens.activations.collect_head_activations` with ``condition="image"`` or
``"black_image"``), attention to evidence (:func:`lineage_lens.attention.evidence_attention` with
``images=``), POPE and CHAIR captions all use it, and :func:`greedy_generate` decodes image
prompts for the evaluators.

Pixels come from the model's own Hugging Face image processor, PIL backend:
``AutoImageProcessor.from_pretrained(model_dir, backend="pil")`` when a
``preprocessor_config.json`` is saved with the model (:func:`saved_image_processor`); otherwise
each family's documented fallback built from the model config. LLaVA-1.5's fixed-size images
(:class:`VisionSettings`, :func:`vision_settings`, :func:`load_pixel_values`) are also what the
zoo's vision-language members use.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lineage_lens.batching import model_device, to_model
from lineage_lens.errors import ConfigError, DataError, ShapeMismatchError
from lineage_lens.identity import file_digests, image_identity, record_digest

#: CLIP's normalisation constants (LLaVA's vision tower; the zoo's rendered scenes).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

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


def hf_model(model: Any) -> Any:
    """The Hugging Face model of a bridge (its ``original_model``), or ``model`` itself."""
    return getattr(model, "original_model", model)


def vision_settings(model: Any) -> VisionSettings:
    """The :class:`VisionSettings` of a LLaVA bridge (or HF LLaVA model)."""
    hf = hf_model(model)
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
    processor_dir = saved_processor_dir(cfg)
    if processor_dir is not None:
        pre = json.loads((Path(processor_dir) / "preprocessor_config.json").read_text("utf-8"))
        mean = tuple(pre.get("image_mean", mean))  # type: ignore[assignment]
        std = tuple(pre.get("image_std", std))  # type: ignore[assignment]
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


def vision_model_config(model: Any) -> Any:
    """The Hugging Face config of a vision-language model (a bridge or HF model): a
    :class:`~lineage_lens.errors.ConfigError` unless it has a ``vision_config``."""
    cfg = getattr(hf_model(model), "config", None)
    if cfg is None or getattr(cfg, "vision_config", None) is None:
        raise ConfigError(
            f"{type(hf_model(model)).__name__} is not a vision-language model (no vision_config)."
        )
    return cfg


def config_token_id(cfg: Any, *names: str) -> int:
    """The first of the config fields ``names`` that is set (a token id), as an ``int``."""
    for name in names:
        value = getattr(cfg, name, None)
        if value is not None:
            return int(value)
    raise ConfigError(f"the model config has none of {', '.join(names)}.")


def saved_processor_dir(cfg: Any) -> str | None:
    """The model's folder when it was saved with a ``preprocessor_config.json``, else ``None``."""
    src = getattr(cfg, "_name_or_path", None) or getattr(cfg, "name_or_path", None)
    if src and (Path(src) / "preprocessor_config.json").is_file():
        return str(Path(src).resolve())
    return None


def saved_image_processor(processor_dir: str) -> Any:
    """The image processor saved in ``processor_dir`` (PIL backend), memoised by the content of
    its config files (:func:`processor_identity`)."""
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
class FamilyImageInputs:
    """The base of every family's :class:`ImageInputs`: a prompt's image is
    ``before + image_token * n + after`` (text), pixels come from the model's Hugging Face image
    processor (PIL backend). Subclasses (one per family, :mod:`lineage_lens.families`) give a
    ``from_model`` classmethod, the number of image tokens of an image and the forward inputs of
    a batch."""

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
    def model_tokenizer(model: Any) -> Any:
        """The tokenizer of a loaded model (a :class:`~lineage_lens.errors.ConfigError` if none)."""
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError("the model has no tokenizer; load it with load_model().")
        return tokenizer

    @staticmethod
    def token_text(tokenizer: Any, token_id: int) -> str:
        """The token string of ``token_id`` (an image token or marker)."""
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

    def process(self, images: Sequence[Any]) -> Any:
        """Hugging Face's processor outputs (``return_tensors="pt"``) for a batch of images."""
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


#: ``model_type`` -> builder of its :class:`ImageInputs` from a bridge, one entry per model type
#: of each vision-language family. Filled by :func:`register_image_inputs`, which
#: :func:`lineage_lens.families.register` calls for every family it registers (importing
#: :mod:`lineage_lens.families`, as :mod:`lineage_lens.models` does, registers the built-in ones).
IMAGE_INPUT_BUILDERS: dict[str, Callable[[Any], ImageInputs]] = {}


def register_image_inputs(
    model_types: Iterable[str], builder: Callable[[Any], ImageInputs]
) -> None:
    """Make :func:`image_inputs` build a model of each of ``model_types`` with ``builder``.

    A model type registered with another builder is a :class:`~lineage_lens.errors.ConfigError`
    (registering the same builder again does nothing)."""
    for model_type in model_types:
        known = IMAGE_INPUT_BUILDERS.get(model_type)
        if known is not None and known != builder:
            raise ConfigError(
                f"model_type {model_type!r} already has the image-input builder {known!r}; a "
                "model type belongs to one family (lineage_lens.families)."
            )
        IMAGE_INPUT_BUILDERS[model_type] = builder


def image_inputs(model: Any) -> ImageInputs:
    """The :class:`ImageInputs` of ``model``'s type (see :data:`IMAGE_INPUT_BUILDERS`)."""
    cfg = getattr(hf_model(model), "config", None)
    if getattr(cfg, "vision_config", None) is None:
        raise ConfigError(
            f"{type(hf_model(model)).__name__} is not a vision-language model (no "
            "vision_config); image conditions need a multimodal model such as LLaVA."
        )
    model_type = getattr(cfg, "model_type", "")
    builder = IMAGE_INPUT_BUILDERS.get(model_type)
    if builder is None:
        raise ConfigError(
            f"image inputs of model_type {model_type!r} are not supported yet (supported: "
            f"{', '.join(IMAGE_INPUT_BUILDERS) or 'none registered'}); add a family module to "
            "lineage_lens.families (docs/architectures.md, 'Adding an architecture')."
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
