"""TransformerBridge adapter for Qwen2.5-Omni's thinker.

``Qwen2_5OmniThinkerForConditionalGeneration`` (transformers >= 5) holds a Qwen2.5 text decoder at
``model.language_model`` (Qwen2 layout: q/k/v biases, RMS norms, gated MLP) with a top-level
``lm_head``, a windowed ViT at ``model.visual`` (the Qwen2.5-VL tower, patch merger at
``model.visual.merger``) and a Whisper-style audio encoder at ``model.audio_tower``. Text attention
uses mRoPE (three position streams split across the rotary channels, positions computed by the
thinker's ``get_rope_index`` from the attention mask and the image/audio grids), so attention runs
HF-native, as in TransformerLens' own Qwen2.5-VL adapter: ``hook_z`` is the input of ``o_proj``
(edits to it change the output) and ``hook_pattern`` reports HF's attention weights after the fact.

A full ``Qwen2_5OmniForConditionalGeneration`` checkpoint (thinker, talker, token-to-wave) boots
as its thinker: :func:`lineage_lens.adapters.register_adapters` makes the boot read the full
config's ``thinker_config``, and :meth:`Qwen25OmniThinkerAdapter.prepare_loading` maps the
checkpoint's ``thinker.*`` weights onto the thinker (the talker's are left unread).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor
from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
from transformer_lens.model_bridge.generalized_components import (
    AttentionBridge,
    BlockBridge,
    EmbeddingBridge,
    LinearBridge,
    RMSNormalizationBridge,
    UnembeddingBridge,
    VisionProjectionBridge,
)
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
from transformer_lens.model_bridge.generalized_components.qwen3_5_vision_encoder import (
    Qwen3_5VisionBlockBridge,
    Qwen3_5VisionEncoderBridge,
)

THINKER_ARCHITECTURE = "Qwen2_5OmniThinkerForConditionalGeneration"
FULL_ARCHITECTURE = "Qwen2_5OmniForConditionalGeneration"
#: Set on a thinker config taken out of a full checkpoint: the prefix of its weights there.
WEIGHT_PREFIX_ATTR = "lineage_lens_weight_prefix"
_POSITIONS_MARK = "_lineage_lens_positions"


class Qwen25OmniThinkerAdapter(ArchitectureAdapter):
    """Architecture adapter for ``Qwen2_5OmniThinkerForConditionalGeneration``."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.cfg.is_multimodal = True
        self._set_rms_rotary_defaults()
        self.cfg.attn_implementation = "eager"
        # Qwen tokenizers have no BOS token (see TransformerLens' Qwen2 adapter).
        self.cfg.default_prepend_bos = False
        self._extract_vision_dims(cfg)
        # The text decoder keeps Qwen2's q/k/v biases (per kv head for K and V).
        self.weight_processing_conversions = {
            **self._qkvo_weight_conversions(include_biases=True),
        }
        self.component_mapping = {
            "vision_encoder": Qwen3_5VisionEncoderBridge(
                name="model.visual",
                config=self.cfg,
                submodules={
                    "pos_embed": GeneralizedComponent(name="rotary_pos_emb"),
                    "blocks": Qwen3_5VisionBlockBridge(
                        name="blocks",
                        submodules={
                            # Omni's vision attention has separate q/k/v (Qwen2.5-VL fuses qkv).
                            "attn": GeneralizedComponent(
                                name="attn",
                                submodules={
                                    "q": LinearBridge(name="q"),
                                    "k": LinearBridge(name="k"),
                                    "v": LinearBridge(name="v"),
                                    "proj": LinearBridge(name="proj"),
                                },
                            ),
                            "mlp": GeneralizedComponent(
                                name="mlp",
                                submodules={
                                    "gate": LinearBridge(name="gate_proj"),
                                    "in": LinearBridge(name="up_proj"),
                                    "out": LinearBridge(name="down_proj"),
                                },
                            ),
                        },
                    ),
                },
            ),
            "vision_projector": VisionProjectionBridge(name="model.visual.merger"),
            "audio_encoder": GeneralizedComponent(name="model.audio_tower"),
            "embed": EmbeddingBridge(name="model.language_model.embed_tokens"),
            "blocks": BlockBridge(
                name="model.language_model.layers",
                submodules={
                    "ln1": RMSNormalizationBridge(name="input_layernorm", config=self.cfg),
                    "ln2": RMSNormalizationBridge(name="post_attention_layernorm", config=self.cfg),
                    # mRoPE lives in HF's forward: keep HF's attention, hook o_proj's input.
                    "attn": AttentionBridge(
                        name="self_attn",
                        config=self.cfg,
                        submodules={
                            "q": LinearBridge(name="q_proj"),
                            "k": LinearBridge(name="k_proj"),
                            "v": LinearBridge(name="v_proj"),
                            "o": LinearBridge(name="o_proj"),
                        },
                        maintain_native_attention=True,
                        requires_attention_mask=True,
                    ),
                    "mlp": self._gated_mlp(),
                },
            ),
            "ln_final": RMSNormalizationBridge(name="model.language_model.norm", config=self.cfg),
            "unembed": UnembeddingBridge(name="lm_head", config=self.cfg),
        }

    def prepare_loading(self, model_name: str, model_kwargs: dict) -> None:
        """Read a full Omni checkpoint's ``thinker.*`` weights into the thinker."""
        super().prepare_loading(model_name, model_kwargs)
        prefix = getattr(model_kwargs.get("config"), WEIGHT_PREFIX_ATTR, None)
        if prefix:
            model_kwargs["key_mapping"] = {"^" + re.escape(prefix): ""}

    def prepare_model(self, hf_model: Any) -> None:
        """Make the thinker's mRoPE positions right for forwards the bridge drives itself.

        TransformerLens calls the thinker's ``forward`` directly (prefill, then one token at a
        time on the cache), where transformers' ``generate`` would prepare the inputs. Two gaps of
        the thinker's ``compute_3d_position_ids`` show there: without an ``attention_mask`` it
        falls back to 1-D positions, wrong for image tokens; and on a cached step with the full
        ``attention_mask`` it returns positions for every column instead of the new tokens (a
        shape error). The wrapper assumes an all-ones mask over cache + input when none is given
        and keeps the last ``inputs_embeds.shape[1]`` positions.
        """
        super().prepare_model(hf_model)
        inner = getattr(hf_model, "model", None)
        original = getattr(inner, "compute_3d_position_ids", None)
        if original is None or getattr(original, _POSITIONS_MARK, False):
            return

        def compute_3d_position_ids(
            input_ids: Tensor | None,
            image_grid_thw: Tensor | None,
            video_grid_thw: Tensor | None,
            inputs_embeds: Tensor | None,
            attention_mask: Tensor | None,
            past_key_values: Any,
            **kwargs: Any,
        ) -> Tensor | None:
            n_new = inputs_embeds.shape[1] if inputs_embeds is not None else None
            if attention_mask is None and input_ids is not None:
                n_past = 0 if past_key_values is None else past_key_values.get_seq_length()
                attention_mask = torch.ones(
                    input_ids.shape[0], n_past + input_ids.shape[1], device=input_ids.device
                )
            positions = original(
                input_ids=input_ids,
                image_grid_thw=image_grid_thw,
                video_grid_thw=video_grid_thw,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                past_key_values=past_key_values,
                **kwargs,
            )
            if positions is not None and n_new is not None and positions.shape[-1] > n_new:
                positions = positions[..., -n_new:]
            return positions

        setattr(compute_3d_position_ids, _POSITIONS_MARK, True)
        inner.compute_3d_position_ids = compute_3d_position_ids


def thinker_config_of(config: Any) -> Any:
    """The thinker config of a full Qwen2.5-Omni config (marked with its weight prefix), else
    ``config`` unchanged."""
    if getattr(config, "model_type", None) != "qwen2_5_omni":
        return config
    thinker = config.thinker_config
    thinker.architectures = [THINKER_ARCHITECTURE]
    setattr(thinker, WEIGHT_PREFIX_ATTR, "thinker.")
    return thinker
