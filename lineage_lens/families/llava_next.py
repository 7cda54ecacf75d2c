"""LLaVA-NeXT (``llava_next``, any resolution): each image is tiled on the best of
``image_grid_pinpoints``; ``pixel_values`` ``[batch, tiles, 3, S, S]`` and ``image_sizes``
(fallback processor: ``LlavaNextImageProcessorPil`` with CLIP's normalisation). Tiny config: a
Llama language model and the tiny CLIP tower, 16x16 tiles on 16x32 / 32x16 / 32x32 grids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from lineage_lens.errors import ConfigError
from lineage_lens.families.registry import Family, register
from lineage_lens.families.tiny import (
    IMAGE_TOKEN,
    TINY_IMAGE_SIZE,
    TINY_IMAGE_TOKENS,
    tiny_builder,
    tiny_clip_config,
)
from lineage_lens.images import (
    CLIP_MEAN,
    CLIP_STD,
    FamilyImageInputs,
    config_token_id,
    open_image,
    saved_image_processor,
    saved_processor_dir,
    vision_model_config,
)


@dataclass(frozen=True)
class LlavaNextImageInputs(FamilyImageInputs):
    """LLaVA-NeXT (any resolution): the image is tiled on the best of ``image_grid_pinpoints``;
    its image tokens are the base tile's patches plus the unpadded tiles' patches and one newline
    token per row (Hugging Face's ``LlavaNextProcessor`` count); forward inputs ``pixel_values``
    ``[batch, tiles, 3, S, S]`` and ``image_sizes`` ``[batch, 2]`` (original height, width)."""

    patch_size: int = 14
    pinpoints: tuple[tuple[int, int], ...] = ()
    extra_tokens: int = 0

    @classmethod
    def from_model(cls, model: Any) -> LlavaNextImageInputs:
        cfg = vision_model_config(model)
        vcfg = cfg.vision_config
        tok = cls.model_tokenizer(model)
        token_id = config_token_id(cfg, "image_token_index", "image_token_id")
        size = int(vcfg.image_size)
        pinpoints = tuple(tuple(int(v) for v in p) for p in cfg.image_grid_pinpoints)
        pdir = saved_processor_dir(cfg)
        if pdir is not None:
            processor = saved_image_processor(pdir)
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
            image_token=cls.token_text(tok, token_id),
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
        out = self.process(images)
        return {"pixel_values": out["pixel_values"].float(), "image_sizes": out["image_sizes"]}


#: The tiny config's ``image_grid_pinpoints``.
TINY_PINPOINTS = [[16, 32], [32, 16], [32, 32]]


def _make_tiny(tok: Any, text_kw: dict[str, Any], d_head: int) -> tuple[Any, Any]:
    import transformers as tf

    config = tf.LlavaNextConfig(
        vision_config=tiny_clip_config(),
        text_config=tf.LlamaConfig(**text_kw),
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_grid_pinpoints=TINY_PINPOINTS,
        image_seq_length=TINY_IMAGE_TOKENS,
    )
    processor = tf.LlavaNextImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE_SIZE},
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        image_grid_pinpoints=TINY_PINPOINTS,
    )
    return tf.LlavaNextForConditionalGeneration(config), processor


LLAVA_NEXT = register(
    Family(
        "llava_next",
        ("llava_next",),
        "LlavaNextForConditionalGeneration",
        multimodal=True,
        image_inputs=LlavaNextImageInputs,
        tiny=tiny_builder(_make_tiny, placeholders=[IMAGE_TOKEN]),
    )
)
