"""Image-input builders of the adapter families, registered with
:data:`lineage_lens.images.IMAGE_INPUT_BUILDERS` by :func:`lineage_lens.adapters.register_adapters`.

* Qwen2.5-Omni's thinker (``model_type`` ``qwen2_5_omni_thinker``) takes images like Qwen2.5-VL:
  ``<|vision_bos|>`` + one image token per merged patch + ``<|vision_eos|>``, ``pixel_values`` and
  ``image_grid_thw`` from ``Qwen2VLImageProcessor`` (PIL backend), 3-D mRoPE positions derived by
  the model. Unlike Qwen2.5-VL it takes no ``mm_token_type_ids``.
* InternVL (``internvl``): ``<img>`` + ``image_seq_length`` ``<IMG_CONTEXT>`` tokens per tile +
  ``</img>`` (Hugging Face's ``InternVLProcessor`` sequence); ``pixel_values`` ``[tiles, 3, S, S]``
  from ``GotOcr2ImageProcessor`` (PIL backend): the saved processor's dynamic tiling when the model
  was saved with one, else one tile per image with InternVL's ImageNet normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jaxtyping import Int
from torch import Tensor

from lineage_lens.errors import ConfigError
from lineage_lens.images import (
    QwenVLImageInputs,
    _config_token_id,
    _FamilyImageInputs,
    _model_config,
    _processor_dir,
    _saved_processor,
)

#: InternVL's image markers (``InternVLProcessor``: the tokenizer's start/end image tokens).
INTERNVL_START, INTERNVL_END = "<img>", "</img>"


@dataclass(frozen=True)
class QwenOmniImageInputs(QwenVLImageInputs):
    """Qwen2.5-Omni's thinker: Qwen2.5-VL's image inputs without ``mm_token_type_ids``."""

    @classmethod
    def from_model(cls, model: Any) -> QwenOmniImageInputs:
        base = QwenVLImageInputs.from_model(model)  # reads image_token_id (= image_token_index)
        fields = {name: getattr(base, name) for name in base.__dataclass_fields__}
        return cls(**fields)

    def token_kwargs(self, input_ids: Int[Tensor, "batch pos"]) -> dict[str, Tensor]:
        return {}


@dataclass(frozen=True)
class InternVLImageInputs(_FamilyImageInputs):
    """HF-native InternVL: ``image_seq_length`` context tokens per tile between ``<img>`` and
    ``</img>``; ``pixel_values`` of every tile of the batch's images, in order."""

    tokens_per_tile: int = 256

    @classmethod
    def from_model(cls, model: Any) -> InternVLImageInputs:
        cfg = _model_config(model)
        tok = cls._tokenizer(model)
        token_id = _config_token_id(cfg, "image_token_id", "image_token_index")
        start = getattr(tok, "start_image_token", None) or INTERNVL_START
        end = getattr(tok, "end_image_token", None) or INTERNVL_END
        for marker in (start, end):
            if tok.convert_tokens_to_ids(marker) in (None, tok.unk_token_id):
                raise ConfigError(
                    f"the tokenizer has no {marker!r} token, which InternVL prompts put around "
                    "an image; load the model's own tokenizer."
                )
        size = int(_side(cfg.vision_config.image_size))
        pdir = _processor_dir(cfg)
        if pdir is not None:
            processor = _saved_processor(pdir)
        else:
            from transformers import GotOcr2ImageProcessorPil
            from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

            processor = GotOcr2ImageProcessorPil(
                size={"height": size, "width": size},
                crop_to_patches=False,
                image_mean=list(IMAGENET_DEFAULT_MEAN),
                image_std=list(IMAGENET_DEFAULT_STD),
            )
        return cls(
            model_type=cfg.model_type,
            tokenizer=tok,
            image_token_id=token_id,
            image_token=cls._token(tok, token_id),
            processor=processor,
            image_size=size,
            processor_dir=pdir,
            before=start,
            after=end,
            tokens_per_tile=int(cfg.image_seq_length),
        )

    def n_image_tokens(self, image: Any | None = None) -> int:
        out = self._process([image if image is not None else self.black_image()])
        return self.tokens_per_tile * int(out["num_patches"][0])

    def forward_kwargs(self, images: Sequence[Any]) -> dict[str, Tensor]:
        return {"pixel_values": self._process(images)["pixel_values"].float()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tokens_per_tile": self.tokens_per_tile}


def _side(size: Any) -> int:
    """A square vision tower's side (InternViT configs give ``[height, width]``)."""
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ConfigError(f"InternVL image inputs need a square vision tower, got {size}.")
        return int(size[0])
    return int(size)


#: ``model_type`` -> image-input builder, merged into ``lineage_lens.images.IMAGE_INPUT_BUILDERS``.
IMAGE_INPUTS = {
    "qwen2_5_omni_thinker": QwenOmniImageInputs.from_model,
    "internvl": InternVLImageInputs.from_model,
}
