"""Qwen2.5-Omni's thinker (``qwen2_5_omni_thinker``; a whole ``qwen2_5_omni`` checkpoint boots as
its thinker): the TransformerBridge adapter TransformerLens 4.3 lacks, its image inputs and its
tiny checkpoints.

``Qwen2_5OmniThinkerForConditionalGeneration`` (transformers >= 5) holds a Qwen2.5 text decoder at
``model.language_model`` (Qwen2 layout: q/k/v biases, RMS norms, gated MLP) with a top-level
``lm_head``, a windowed ViT at ``model.visual`` (the Qwen2.5-VL tower, patch merger at
``model.visual.merger``) and a Whisper-style audio encoder at ``model.audio_tower``. Text attention
uses mRoPE (three position streams split across the rotary channels, positions computed by the
thinker's ``get_rope_index`` from the attention mask and the image/audio grids), so attention runs
HF-native, as in TransformerLens' own Qwen2.5-VL adapter: ``hook_z`` is the input of ``o_proj``
(edits to it change the output) and ``hook_pattern`` reports HF's attention weights after the fact.

A full ``Qwen2_5OmniForConditionalGeneration`` checkpoint (thinker, talker, token-to-wave) boots
as its thinker: :func:`boot_full_checkpoints_as_thinker` (run by
:func:`lineage_lens.families.register_adapters`) makes the boot read the full config's
``thinker_config``, and :meth:`Qwen25OmniThinkerAdapter.prepare_loading` maps the checkpoint's
``thinker.*`` weights onto the thinker (the talker's are left unread).

Images go in like Qwen2.5-VL's (:class:`QwenOmniImageInputs`): ``<|vision_bos|>`` + one image
token per merged patch + ``<|vision_eos|>``, ``pixel_values`` and ``image_grid_thw`` from
``Qwen2VLImageProcessor`` (PIL backend), 3-D mRoPE positions derived by the model; unlike
Qwen2.5-VL it takes no ``mm_token_type_ids``.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
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

from lineage_lens.families.qwen_vl import QwenVLImageInputs
from lineage_lens.families.registry import Family, register
from lineage_lens.families.tiny import (
    TINY_N_CTX,
    TINY_TEXT,
    make_word_tokenizer,
    mrope_sections,
    never_predict,
    save_tiny,
    tiny_text_kwargs,
)

log = logging.getLogger(__name__)

THINKER_ARCHITECTURE = "Qwen2_5OmniThinkerForConditionalGeneration"
FULL_ARCHITECTURE = "Qwen2_5OmniForConditionalGeneration"
#: Set on a thinker config taken out of a full checkpoint: the prefix of its weights there.
WEIGHT_PREFIX_ATTR = "lineage_lens_weight_prefix"
_POSITIONS_MARK = "_lineage_lens_positions"
_AUTOCONFIG_MARK = "_lineage_lens_omni_thinker"


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


def boot_full_checkpoints_as_thinker() -> None:
    """Make TransformerLens' boot read a full Qwen2.5-Omni checkpoint as its thinker (idempotent).

    ``boot_transformers`` derives the bridge config from the checkpoint's top-level config, which
    for a full Omni checkpoint holds only sub-configs (thinker, talker, token2wav); the thinker is
    the language model lineage-lens studies. The wrapper of TransformerLens' config loading
    leaves every other config unchanged; the full architecture is marked multimodal (loaded with
    ``AutoModelForImageTextToText``).
    """
    from transformer_lens.utilities import architectures, hf_utils

    architectures.MULTIMODAL_ARCHITECTURES.add(FULL_ARCHITECTURE)
    original = hf_utils.autoconfig_with_remote_post_init_compat
    if getattr(original, _AUTOCONFIG_MARK, False):
        return

    @functools.wraps(original)
    def autoconfig(*args: Any, **kwargs: Any) -> Any:
        config = original(*args, **kwargs)
        thinker = thinker_config_of(config)
        if thinker is not config:
            log.info("Booting the thinker of a full Qwen2.5-Omni checkpoint (talker unread).")
        return thinker

    setattr(autoconfig, _AUTOCONFIG_MARK, True)
    hf_utils.autoconfig_with_remote_post_init_compat = autoconfig


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


# --------------------------------------------------------------------------------------------
# Tiny checkpoints
# --------------------------------------------------------------------------------------------

#: Placeholder tokens of the tiny checkpoints (each is one token of the tiny tokenizer).
OMNI_IMAGE_TOKEN = "<|IMAGE|>"
OMNI_SPECIAL_TOKENS = (
    OMNI_IMAGE_TOKEN,
    "<|AUDIO|>",
    "<|VIDEO|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
)
#: ViT patch of the tiny towers.
TINY_OMNI_PATCH = 4


def tiny_qwen2_5_omni_thinker_config(
    tok: Any,
    *,
    n_layers: int = TINY_TEXT["n_layers"],
    n_heads: int = TINY_TEXT["n_heads"],
    n_kv_heads: int | None = TINY_TEXT["n_kv_heads"],
    d_head: int = TINY_TEXT["d_head"],
    n_ctx: int = TINY_N_CTX,
) -> Any:
    """A ``Qwen2_5OmniThinkerConfig`` with a tiny text model and one-layer towers."""
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import (
        Qwen2_5OmniAudioEncoderConfig,
        Qwen2_5OmniTextConfig,
        Qwen2_5OmniThinkerConfig,
        Qwen2_5OmniVisionEncoderConfig,
    )

    text = tiny_text_kwargs(tok, n_layers, n_heads, n_kv_heads, d_head, n_ctx=n_ctx)
    d_model = text["hidden_size"]
    sections = mrope_sections(d_head)  # temporal / height / width rotary frequencies
    text_config = Qwen2_5OmniTextConfig(
        **text,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": sections},
    )
    vision_config = Qwen2_5OmniVisionEncoderConfig(
        depth=1,
        hidden_size=16,
        intermediate_size=32,
        num_heads=2,
        patch_size=TINY_OMNI_PATCH,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=4 * TINY_OMNI_PATCH,
        out_hidden_size=d_model,
        fullatt_block_indexes=[0],
    )
    audio_config = Qwen2_5OmniAudioEncoderConfig(
        num_mel_bins=8,
        encoder_layers=1,
        encoder_attention_heads=2,
        encoder_ffn_dim=32,
        d_model=16,
        output_dim=d_model,
        max_source_positions=64,
        n_window=4,
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in OMNI_SPECIAL_TOKENS}
    config = Qwen2_5OmniThinkerConfig(
        text_config=text_config,
        vision_config=vision_config,
        audio_config=audio_config,
        image_token_index=ids[OMNI_IMAGE_TOKEN],
        audio_token_index=ids["<|AUDIO|>"],
        video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
        user_token_id=tok.convert_tokens_to_ids("the"),
    )
    config.vision_start_token_id = ids["<|vision_bos|>"]
    config.vision_end_token_id = ids["<|vision_eos|>"]
    config.pad_token_id = tok.pad_token_id
    config.eos_token_id = tok.eos_token_id
    return config


def make_tiny_qwen2_5_omni(
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
    full: bool = False,
    talker: bool = False,
) -> Path:
    """Write a tiny Qwen2.5-Omni checkpoint with its tokenizer and image processor to ``out_dir``.

    ``full=False`` saves the thinker alone (``Qwen2_5OmniThinkerForConditionalGeneration``);
    ``full=True`` the whole ``Qwen2_5OmniForConditionalGeneration`` (thinker weights under
    ``thinker.*``), with ``talker=True`` also a tiny talker decoder under ``talker.*`` (its
    token-to-wave vocoder is left out: it has no attention heads the library compares). Images go
    through ``Qwen2VLImageProcessor`` (4x4 patches, 2x2 merge, 256 to 1024 pixels).
    """
    import transformers as tf
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import (
        Qwen2_5OmniConfig,
        Qwen2_5OmniTalkerConfig,
    )

    out_dir = Path(out_dir)
    # Qwen tokenizers have no BOS token; the placeholders are special tokens after the vocabulary.
    tok = make_word_tokenizer(extra_words, bos=False, extra_special=list(OMNI_SPECIAL_TOKENS))
    geometry = {"n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_kv_heads, "n_ctx": n_ctx}
    thinker_config = tiny_qwen2_5_omni_thinker_config(tok, d_head=d_head, **geometry)
    processor = tf.Qwen2VLImageProcessorPil(
        size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32},
        patch_size=TINY_OMNI_PATCH,
        merge_size=2,
        temporal_patch_size=2,
    )
    torch.manual_seed(seed)
    if not full:
        thinker = tf.Qwen2_5OmniThinkerForConditionalGeneration(thinker_config)
        never_predict(thinker.lm_head.weight, tok, list(OMNI_SPECIAL_TOKENS))
        return save_tiny(thinker, tok, processor, out_dir, dtype)
    talker_config = Qwen2_5OmniTalkerConfig(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        embedding_size=n_heads * d_head,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
    )
    config = Qwen2_5OmniConfig(
        thinker_config=thinker_config.to_dict(),
        talker_config=talker_config.to_dict(),
        enable_audio_output=False,
    )
    model = tf.Qwen2_5OmniForConditionalGeneration(config)
    if talker:
        model.talker = tf.Qwen2_5OmniTalkerForConditionalGeneration(config.talker_config)
    never_predict(model.thinker.lm_head.weight, tok, list(OMNI_SPECIAL_TOKENS))
    return save_tiny(model, tok, processor, out_dir, dtype)


QWEN2_5_OMNI = register(
    Family(
        "qwen2_5_omni_thinker",
        ("qwen2_5_omni_thinker", "qwen2_5_omni"),
        THINKER_ARCHITECTURE,
        multimodal=True,
        image_inputs=QwenOmniImageInputs,
        adapter=Qwen25OmniThinkerAdapter,
        on_register=boot_full_checkpoints_as_thinker,
        tiny=make_tiny_qwen2_5_omni,
    )
)
