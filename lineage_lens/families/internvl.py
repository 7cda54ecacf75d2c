"""HF-native InternVL (``internvl``, ``InternVLForConditionalGeneration``): the TransformerBridge
adapter TransformerLens 4.3 lacks, its image inputs and its tiny checkpoints.

transformers' InternVL port (InternVL2.5/3 ``-hf`` checkpoints) has LLaVA's layout: an InternViT
vision tower at ``model.vision_tower`` (pre-norm layers with layer scale, ``attention.q/k/v_proj``
and ``projection_layer``), a pixel-shuffle + MLP projector at ``model.multi_modal_projector`` and
a decoder-only language model at ``model.language_model`` (Qwen2 for InternVL3, or Llama) with the
``lm_head`` at the top. The language model maps like TransformerLens' LLaVA adapter: rotary
embeddings from ``model.language_model.rotary_emb``, attention re-implemented by TransformerLens
(``hook_z``, ``hook_pattern`` and the rest fire inside the computation). InternViT has no
TransformerLens bridge; it is wrapped whole, so ``vision_encoder.hook_in``/``hook_out`` see the
pixels and the last hidden state.

Images (:class:`InternVLImageInputs`): ``<img>`` + ``image_seq_length`` ``<IMG_CONTEXT>`` tokens
per tile + ``</img>`` (Hugging Face's ``InternVLProcessor`` sequence); ``pixel_values``
``[tiles, 3, S, S]`` from ``GotOcr2ImageProcessor`` (PIL backend): the saved processor's dynamic
tiling when the model was saved with one, else one tile per image with InternVL's ImageNet
normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
from transformer_lens.model_bridge.generalized_components import (
    BlockBridge,
    EmbeddingBridge,
    RMSNormalizationBridge,
    RotaryEmbeddingBridge,
    UnembeddingBridge,
    VisionProjectionBridge,
)
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

from lineage_lens.errors import ConfigError
from lineage_lens.families.registry import Family, register
from lineage_lens.families.tiny import (
    TINY_N_CTX,
    TINY_TEXT,
    make_word_tokenizer,
    never_predict,
    save_tiny,
    tiny_text_kwargs,
)
from lineage_lens.images import (
    FamilyImageInputs,
    config_token_id,
    saved_image_processor,
    saved_processor_dir,
    vision_model_config,
)

ARCHITECTURE = "InternVLForConditionalGeneration"
#: Text model types whose q/k/v projections carry biases.
_QKV_BIAS_TEXT_MODELS = frozenset({"qwen2"})
#: InternVL's image markers (``InternVLProcessor``: the tokenizer's start/end image tokens).
INTERNVL_START, INTERNVL_END = "<img>", "</img>"


class InternVLAdapter(ArchitectureAdapter):
    """Architecture adapter for ``InternVLForConditionalGeneration``."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.cfg.is_multimodal = True
        self._set_rms_rotary_defaults()
        self.cfg.attn_implementation = "eager"
        self._extract_vision_dims(cfg)
        text_type = getattr(getattr(cfg, "text_config", None), "model_type", None)
        qkv_bias = text_type in _QKV_BIAS_TEXT_MODELS or bool(getattr(cfg, "attention_bias", 0))
        if text_type in _QKV_BIAS_TEXT_MODELS:
            self.cfg.default_prepend_bos = False  # Qwen tokenizers have no BOS token
        self.weight_processing_conversions = {
            **self._qkvo_weight_conversions(include_biases=qkv_bias),
        }
        self.component_mapping = {
            "vision_encoder": GeneralizedComponent(name="model.vision_tower"),
            "vision_projector": VisionProjectionBridge(name="model.multi_modal_projector"),
            "embed": EmbeddingBridge(name="model.language_model.embed_tokens"),
            "rotary_emb": RotaryEmbeddingBridge(name="model.language_model.rotary_emb"),
            "blocks": BlockBridge(
                name="model.language_model.layers",
                submodules={
                    "ln1": RMSNormalizationBridge(name="input_layernorm", config=self.cfg),
                    "ln2": RMSNormalizationBridge(name="post_attention_layernorm", config=self.cfg),
                    "attn": self._build_attention_bridge(),
                    "mlp": self._gated_mlp(),
                },
            ),
            "ln_final": RMSNormalizationBridge(name="model.language_model.norm", config=self.cfg),
            "unembed": UnembeddingBridge(name="lm_head", config=self.cfg),
        }


@dataclass(frozen=True)
class InternVLImageInputs(FamilyImageInputs):
    """HF-native InternVL: ``image_seq_length`` context tokens per tile between ``<img>`` and
    ``</img>``; ``pixel_values`` of every tile of the batch's images, in order."""

    tokens_per_tile: int = 256

    @classmethod
    def from_model(cls, model: Any) -> InternVLImageInputs:
        cfg = vision_model_config(model)
        tok = cls.model_tokenizer(model)
        token_id = config_token_id(cfg, "image_token_id", "image_token_index")
        start = getattr(tok, "start_image_token", None) or INTERNVL_START
        end = getattr(tok, "end_image_token", None) or INTERNVL_END
        for marker in (start, end):
            if tok.convert_tokens_to_ids(marker) in (None, tok.unk_token_id):
                raise ConfigError(
                    f"the tokenizer has no {marker!r} token, which InternVL prompts put around "
                    "an image; load the model's own tokenizer."
                )
        size = int(_side(cfg.vision_config.image_size))
        pdir = saved_processor_dir(cfg)
        if pdir is not None:
            processor = saved_image_processor(pdir)
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
            image_token=cls.token_text(tok, token_id),
            processor=processor,
            image_size=size,
            processor_dir=pdir,
            before=start,
            after=end,
            tokens_per_tile=int(cfg.image_seq_length),
        )

    def n_image_tokens(self, image: Any | None = None) -> int:
        out = self.process([image if image is not None else self.black_image()])
        return self.tokens_per_tile * int(out["num_patches"][0])

    def forward_kwargs(self, images: Sequence[Any]) -> dict[str, Tensor]:
        return {"pixel_values": self.process(images)["pixel_values"].float()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tokens_per_tile": self.tokens_per_tile}


def _side(size: Any) -> int:
    """A square vision tower's side (InternViT configs give ``[height, width]``)."""
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ConfigError(f"InternVL image inputs need a square vision tower, got {size}.")
        return int(size[0])
    return int(size)


# --------------------------------------------------------------------------------------------
# Tiny checkpoints
# --------------------------------------------------------------------------------------------

#: Placeholder tokens of the tiny checkpoints (each is one token of the tiny tokenizer).
INTERNVL_IMAGE_TOKEN = "<IMG_CONTEXT>"
INTERNVL_SPECIAL_TOKENS = (INTERNVL_IMAGE_TOKEN, INTERNVL_START, INTERNVL_END)
#: Image side and ViT patch of the tiny tower.
TINY_INTERNVL_IMAGE = 16
TINY_INTERNVL_PATCH = 4


def make_tiny_internvl(
    out_dir: str | Path,
    *,
    n_layers: int = TINY_TEXT["n_layers"],
    n_heads: int = TINY_TEXT["n_heads"],
    n_kv_heads: int | None = TINY_TEXT["n_kv_heads"],
    d_head: int = TINY_TEXT["d_head"],
    seed: int = 0,
    extra_words: list[str] | None = None,
    dtype: torch.dtype = torch.float32,
    n_ctx: int = TINY_N_CTX,
    text_model: Literal["qwen2", "llama"] = "qwen2",
) -> Path:
    """Write a tiny ``InternVLForConditionalGeneration`` with its tokenizer and image processor.

    16x16 images (one tile: ``GotOcr2ImageProcessor`` without cropping, ImageNet normalisation as
    InternVL's), 4x4 patches, one vision layer; the pixel-shuffle projector (downsample 0.5) turns
    the 16 patches into :func:`tiny_internvl_image_tokens` image tokens. The language model is a
    Qwen2 decoder, as in InternVL3, or with ``text_model="llama"`` a Llama decoder.
    """
    import transformers as tf
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    out_dir = Path(out_dir)
    tok = make_word_tokenizer(extra_words, bos=False, extra_special=list(INTERNVL_SPECIAL_TOKENS))
    vision = tf.InternVLVisionConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=[TINY_INTERNVL_IMAGE, TINY_INTERNVL_IMAGE],
        patch_size=[TINY_INTERNVL_PATCH, TINY_INTERNVL_PATCH],
    )
    text = tiny_text_kwargs(tok, n_layers, n_heads, n_kv_heads, d_head, n_ctx=n_ctx)
    text_configs = {"qwen2": tf.Qwen2Config, "llama": tf.LlamaConfig}
    if text_model not in text_configs:
        raise ConfigError(f"text_model must be 'qwen2' or 'llama', got {text_model!r}.")
    config = tf.InternVLConfig(
        vision_config=vision,
        text_config=text_configs[text_model](**text),
        image_token_id=tok.convert_tokens_to_ids(INTERNVL_IMAGE_TOKEN),
        image_seq_length=tiny_internvl_image_tokens(),
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    processor = tf.GotOcr2ImageProcessorPil(
        size={"height": TINY_INTERNVL_IMAGE, "width": TINY_INTERNVL_IMAGE},
        crop_to_patches=False,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
    )
    torch.manual_seed(seed)
    model = tf.InternVLForConditionalGeneration(config)
    never_predict(model.lm_head.weight, tok, list(INTERNVL_SPECIAL_TOKENS))
    return save_tiny(model, tok, processor, out_dir, dtype)


def tiny_internvl_image_tokens() -> int:
    """Image tokens per image of the tiny InternVL (patches after a 0.5 pixel shuffle)."""
    return ((TINY_INTERNVL_IMAGE // TINY_INTERNVL_PATCH) // 2) ** 2


INTERNVL = register(
    Family(
        "internvl",
        ("internvl",),
        ARCHITECTURE,
        multimodal=True,
        image_inputs=InternVLImageInputs,
        adapter=InternVLAdapter,
        tiny=make_tiny_internvl,
    )
)
