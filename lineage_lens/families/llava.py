"""LLaVA-1.5 (``llava``): ``n_image_tokens`` ``<image>`` tokens of one fixed-size image,
``pixel_values`` ``[batch, 3, S, S]`` from the model's image processor (:func:`~lineage_lens.images.
vision_settings`, :func:`~lineage_lens.images.load_pixel_values`; fallback: CLIP's processor with
the vision tower's square size and no centre crop, which for square images equals its
shortest-edge resize plus centre crop). Tiny config: a Llama language model and a tiny CLIP tower
(16x16 images, 8x8 patches, 4 image tokens)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from lineage_lens.families.registry import Family, register
from lineage_lens.families.tiny import IMAGE_TOKEN, tiny_builder, tiny_clip_config
from lineage_lens.images import (
    FamilyImageInputs,
    VisionSettings,
    image_processor,
    load_pixel_values,
    vision_settings,
)


@dataclass(frozen=True)
class LlavaImageInputs(FamilyImageInputs):
    """LLaVA-1.5: ``n_image_tokens`` image tokens per prompt, ``pixel_values`` from the model's
    image processor (one fixed-size image)."""

    settings: VisionSettings | None = None

    @classmethod
    def from_model(cls, model: Any) -> LlavaImageInputs:
        settings = vision_settings(model)
        tok = cls.model_tokenizer(model)
        return cls(
            model_type="llava",
            tokenizer=tok,
            image_token_id=settings.image_token_id,
            image_token=cls.token_text(tok, settings.image_token_id),
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


def _make_tiny(tok: Any, text_kw: dict[str, Any], d_head: int) -> tuple[Any, None]:
    import transformers as tf

    config = tf.LlavaConfig(
        vision_config=tiny_clip_config(),
        text_config=tf.LlamaConfig(**text_kw),
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    return tf.LlavaForConditionalGeneration(config), None


LLAVA = register(
    Family(
        "llava",
        ("llava",),
        "LlavaForConditionalGeneration",
        multimodal=True,
        image_inputs=LlavaImageInputs,
        tiny=tiny_builder(_make_tiny, placeholders=[IMAGE_TOKEN]),
    )
)
