"""Gemma3 image+text (``gemma3``): ``<start_of_image>`` + ``mm_tokens_per_image`` soft tokens +
``<end_of_image>``, ``pixel_values`` and ``token_type_ids`` (bidirectional attention over the
image); fallback processor ``Gemma3ImageProcessorPil``. Tiny config: a Gemma3 text model (one
sliding-window and one full-attention layer) and a tiny SigLIP tower, 4 soft tokens per image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jaxtyping import Int
from torch import Tensor

from lineage_lens.families.registry import Family, register
from lineage_lens.families.text import gemma3_text_kwargs
from lineage_lens.families.tiny import IMAGE_TOKEN, TINY_IMAGE_SIZE, tiny_builder
from lineage_lens.images import (
    FamilyImageInputs,
    config_token_id,
    saved_image_processor,
    saved_processor_dir,
    vision_model_config,
)

#: The tiny tokenizer's Gemma3 image tokens: start of image, soft token, end of image.
TINY_TOKENS = ("<start_of_image>", "<image_soft_token>", "<end_of_image>")


@dataclass(frozen=True)
class Gemma3ImageInputs(FamilyImageInputs):
    """Gemma3 image+text: ``\\n\\n<start_of_image>`` + ``mm_tokens_per_image`` soft tokens +
    ``<end_of_image>\\n\\n`` (Hugging Face's ``Gemma3Processor`` sequence, no pan-and-scan);
    ``pixel_values`` ``[batch, 3, S, S]``; ``token_type_ids`` (1 on image tokens) so image tokens
    attend to each other bidirectionally, as with HF's processor."""

    n_tokens: int = 256

    @classmethod
    def from_model(cls, model: Any) -> Gemma3ImageInputs:
        cfg = vision_model_config(model)
        tok = cls.model_tokenizer(model)
        token_id = config_token_id(cfg, "image_token_index", "image_token_id")
        boi = cls.token_text(tok, config_token_id(cfg, "boi_token_index", "boi_token_id"))
        eoi = cls.token_text(tok, config_token_id(cfg, "eoi_token_index", "eoi_token_id"))
        size = int(cfg.vision_config.image_size)
        pdir = saved_processor_dir(cfg)
        if pdir is not None:
            processor = saved_image_processor(pdir)
        else:
            from transformers import Gemma3ImageProcessorPil

            processor = Gemma3ImageProcessorPil(size={"height": size, "width": size})
        return cls(
            model_type=cfg.model_type,
            tokenizer=tok,
            image_token_id=token_id,
            image_token=cls.token_text(tok, token_id),
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
        out = self.process(images)
        return {"pixel_values": out["pixel_values"].float()}

    def token_kwargs(self, input_ids: Int[Tensor, "batch pos"]) -> dict[str, Tensor]:
        return {"token_type_ids": (input_ids == self.image_token_id).long()}


def _make_tiny(tok: Any, text_kw: dict[str, Any], d_head: int) -> tuple[Any, Any]:
    import torch
    import transformers as tf

    vision = tf.SiglipVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=TINY_IMAGE_SIZE,
        patch_size=4,
        vision_use_head=False,
    )
    ids = [tok.convert_tokens_to_ids(t) for t in TINY_TOKENS]
    config = tf.Gemma3Config(
        text_config=tf.Gemma3TextConfig(**gemma3_text_kwargs(text_kw, d_head)),
        vision_config=vision,
        mm_tokens_per_image=4,
        boi_token_index=ids[0],
        image_token_index=ids[1],
        eoi_token_index=ids[2],
        tie_word_embeddings=False,
    )
    model = tf.Gemma3ForConditionalGeneration(config)
    # Hugging Face's init starts the image projection at zero (every image would embed to zeros).
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.5)
    processor = tf.Gemma3ImageProcessorPil(
        size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    )
    return model, processor


GEMMA3 = register(
    Family(
        "gemma3",
        ("gemma3",),
        "Gemma3ForConditionalGeneration",
        multimodal=True,
        image_inputs=Gemma3ImageInputs,
        tiny=tiny_builder(_make_tiny, tokens=TINY_TOKENS, placeholders=[IMAGE_TOKEN, *TINY_TOKENS]),
    )
)
