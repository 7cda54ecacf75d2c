"""TransformerBridge adapter for HF-native InternVL (``InternVLForConditionalGeneration``).

transformers' InternVL port (InternVL2.5/3 ``-hf`` checkpoints) has LLaVA's layout: an InternViT
vision tower at ``model.vision_tower`` (pre-norm layers with layer scale, ``attention.q/k/v_proj``
and ``projection_layer``), a pixel-shuffle + MLP projector at ``model.multi_modal_projector`` and
a decoder-only language model at ``model.language_model`` (Qwen2 for InternVL3, or Llama) with the
``lm_head`` at the top. The language model maps like TransformerLens' LLaVA adapter: rotary
embeddings from ``model.language_model.rotary_emb``, attention re-implemented by TransformerLens
(``hook_z``, ``hook_pattern`` and the rest fire inside the computation). InternViT has no
TransformerLens bridge; it is wrapped whole, so ``vision_encoder.hook_in``/``hook_out`` see the
pixels and the last hidden state.
"""

from __future__ import annotations

from typing import Any

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

ARCHITECTURE = "InternVLForConditionalGeneration"
#: Text model types whose q/k/v projections carry biases.
_QKV_BIAS_TEXT_MODELS = frozenset({"qwen2"})


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
