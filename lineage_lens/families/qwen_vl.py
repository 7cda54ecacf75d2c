"""Qwen2.5-VL (``qwen2_5_vl``) and Qwen3-VL (``qwen3_vl``), dynamic resolution:
``<|vision_start|>`` + one ``<|image_pad|>`` per merged patch + ``<|vision_end|>``,
``pixel_values`` (flattened patches), ``image_grid_thw`` and ``mm_token_type_ids``; 3-D mRoPE
positions come from the model (fallback processor ``Qwen2VLImageProcessorPil``). Tiny configs: a
two-layer vision tower of 4x4 patches merged 2x2 and the family's text model with mRoPE."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jaxtyping import Int
from torch import Tensor

from lineage_lens.errors import ConfigError
from lineage_lens.families.registry import Family, register
from lineage_lens.families.tiny import IMAGE_TOKEN, mrope_sections, tiny_builder
from lineage_lens.images import (
    FamilyImageInputs,
    config_token_id,
    hf_model,
    saved_image_processor,
    saved_processor_dir,
    vision_model_config,
)

#: The tiny tokenizer's Qwen-VL image tokens: vision start, image pad, vision end.
TINY_TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")


@dataclass(frozen=True)
class QwenVLImageInputs(FamilyImageInputs):
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
        cfg = vision_model_config(model)
        vcfg = cfg.vision_config
        tok = cls.model_tokenizer(model)
        token_id = config_token_id(cfg, "image_token_id")
        start = cls.token_text(tok, config_token_id(cfg, "vision_start_token_id"))
        end = cls.token_text(tok, config_token_id(cfg, "vision_end_token_id"))
        merge, patch = int(vcfg.spatial_merge_size), int(vcfg.patch_size)
        pdir = saved_processor_dir(cfg)
        if pdir is not None:
            processor = saved_image_processor(pdir)
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
            image_token=cls.token_text(tok, token_id),
            processor=processor,
            image_size=2 * patch * merge,
            processor_dir=pdir,
            before=start,
            after=end,
            takes_position_ids=False,
            merge_size=merge,
        )

    def n_image_tokens(self, image: Any | None = None) -> int:
        grid = self.process([image if image is not None else self.black_image()])
        return int(grid["image_grid_thw"][0].prod()) // self.merge_size**2

    def forward_kwargs(self, images: Sequence[Any]) -> dict[str, Tensor]:
        out = self.process(images)
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
        inner = getattr(hf_model(model), "model", None)
        deltas = getattr(inner, "rope_deltas", None)
        if deltas is None:
            raise ConfigError(
                f"{self.model_type}: the model kept no rope_deltas from the image prompt; run the "
                "prompt through the model (with image_grid_thw and mm_token_type_ids) first."
            )
        text = super().step_position_ids(model, attention_mask)
        pos = text + deltas.to(text.device).reshape(-1, 1)
        return pos[None].expand(3, -1, -1)


def tiny_qwen_vl_processor() -> Any:
    """The tiny Qwen-VL families' image processor: 4x4 patches merged 2x2, 256 to 1024 pixels."""
    import transformers as tf

    return tf.Qwen2VLImageProcessorPil(
        size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32},
        patch_size=4,
        merge_size=2,
        temporal_patch_size=2,
    )


def _make_tiny(version: str) -> Any:
    def make(tok: Any, text_kw: dict[str, Any], d_head: int) -> tuple[Any, Any]:
        import transformers as tf

        d_model = text_kw["hidden_size"]
        ids = [tok.convert_tokens_to_ids(t) for t in TINY_TOKENS]
        rope = {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": mrope_sections(d_head),
        }
        if version == "qwen2_5_vl":
            vision = tf.Qwen2_5_VLVisionConfig(
                depth=2,
                hidden_size=16,
                intermediate_size=32,
                num_heads=2,
                patch_size=4,
                spatial_merge_size=2,
                temporal_patch_size=2,
                window_size=16,
                fullatt_block_indexes=[1],
                out_hidden_size=d_model,
            )
            text = tf.Qwen2_5_VLTextConfig(**text_kw, rope_parameters=rope)
            cls, cfg_cls = tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLConfig
        else:
            vision = tf.Qwen3VLVisionConfig(
                depth=2,
                hidden_size=16,
                intermediate_size=32,
                num_heads=2,
                patch_size=4,
                spatial_merge_size=2,
                temporal_patch_size=2,
                num_position_embeddings=16,
                deepstack_visual_indexes=[0],
                out_hidden_size=d_model,
            )
            rope["mrope_interleaved"] = True
            text = tf.Qwen3VLTextConfig(**text_kw, rope_parameters=rope)
            cls, cfg_cls = tf.Qwen3VLForConditionalGeneration, tf.Qwen3VLConfig
        config = cfg_cls(
            text_config=text.to_dict(),
            vision_config=vision.to_dict(),
            vision_start_token_id=ids[0],
            image_token_id=ids[1],
            vision_end_token_id=ids[2],
            video_token_id=tok.unk_token_id,
            tie_word_embeddings=False,
        )
        return cls(config), tiny_qwen_vl_processor()

    return make


def _family(name: str, architecture: str) -> Family:
    tiny = tiny_builder(
        _make_tiny(name), bos=False, tokens=TINY_TOKENS, placeholders=[IMAGE_TOKEN, *TINY_TOKENS]
    )
    return Family(
        name, (name,), architecture, multimodal=True, image_inputs=QwenVLImageInputs, tiny=tiny
    )


QWEN2_5_VL = register(_family("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"))
QWEN3_VL = register(_family("qwen3_vl", "Qwen3VLForConditionalGeneration"))
