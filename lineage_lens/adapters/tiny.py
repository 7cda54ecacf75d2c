"""Tiny, offline, random-init checkpoints of the families the lineage-lens adapters add.

Each builder writes a Hugging Face directory (weights, the word-level tokenizer of
:func:`lineage_lens.testing.make_word_tokenizer` and the family's image-processor config) that
boots through :func:`lineage_lens.models.load_model`: by default 2 language-model layers, hidden
size 64 (the geometry arguments of :func:`lineage_lens.testing.make_tiny_model`), and towers of
one layer, so a test boots one in about a second.

* :func:`make_tiny_qwen2_5_omni` -- a ``Qwen2_5OmniThinkerForConditionalGeneration`` (Qwen2.5 text
  decoder with mRoPE, a windowed ViT and a Whisper-style audio tower), or with ``full=True`` a
  ``Qwen2_5OmniForConditionalGeneration`` checkpoint whose weights sit under ``thinker.*`` (and,
  with ``talker=True``, a second decoder under ``talker.*``: a checkpoint with several towers).
* :func:`make_tiny_internvl` -- an HF-native ``InternVLForConditionalGeneration`` (InternViT, a
  pixel-shuffle projector and a Qwen2 decoder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from lineage_lens.errors import ConfigError
from lineage_lens.testing import make_word_tokenizer, save_tiny, tiny_text_kwargs

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
INTERNVL_IMAGE_TOKEN = "<IMG_CONTEXT>"
INTERNVL_SPECIAL_TOKENS = (INTERNVL_IMAGE_TOKEN, "<img>", "</img>")

#: Default geometry of the tiny language models: 2 layers, 4 query heads, 2 key/value heads,
#: d_head 16 (hidden 64). The builders take the same geometry arguments as
#: :func:`lineage_lens.testing.make_tiny_model`.
TINY_TEXT = {"n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_head": 16}
#: Image side and ViT patch of the tiny towers.
TINY_OMNI_PATCH = 4
TINY_INTERNVL_IMAGE = 16
TINY_INTERNVL_PATCH = 4


def _tokenizer(special: tuple[str, ...], extra_words: list[str] | None) -> Any:
    # Qwen tokenizers have no BOS token; the placeholders are special tokens after the vocabulary.
    return make_word_tokenizer(extra_words, bos=False, extra_special=list(special))


def _never_predict(head: torch.nn.Linear, tok: Any, special: tuple[str, ...]) -> None:
    """Zero the unembedding rows of ``special``: trained models never predict image or audio
    placeholders, a random one might, and a generated placeholder without its image breaks the
    next full forward (of a greedy reference, say). A zero logit is never the largest of ~100."""
    with torch.no_grad():
        head.weight[[tok.convert_tokens_to_ids(t) for t in special]] = 0.0


def tiny_qwen2_5_omni_thinker_config(
    tok: Any,
    *,
    n_layers: int = TINY_TEXT["n_layers"],
    n_heads: int = TINY_TEXT["n_heads"],
    n_kv_heads: int | None = TINY_TEXT["n_kv_heads"],
    d_head: int = TINY_TEXT["d_head"],
) -> Any:
    """A ``Qwen2_5OmniThinkerConfig`` with a tiny text model and one-layer towers."""
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import (
        Qwen2_5OmniAudioEncoderConfig,
        Qwen2_5OmniTextConfig,
        Qwen2_5OmniThinkerConfig,
        Qwen2_5OmniVisionEncoderConfig,
    )

    text = tiny_text_kwargs(tok, n_layers, n_heads, n_kv_heads, d_head)
    d_model = text["hidden_size"]
    # mRoPE splits the d_head/2 rotary frequencies into temporal/height/width sections.
    half = d_head // 2
    sections = [half - 2 * (half // 3), half // 3, half // 3]
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
    tok = _tokenizer(OMNI_SPECIAL_TOKENS, extra_words)
    geometry = {"n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_kv_heads}
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
        _never_predict(thinker.lm_head, tok, OMNI_SPECIAL_TOKENS)
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
    _never_predict(model.thinker.lm_head, tok, OMNI_SPECIAL_TOKENS)
    return save_tiny(model, tok, processor, out_dir, dtype)


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
    tok = _tokenizer(INTERNVL_SPECIAL_TOKENS, extra_words)
    vision = tf.InternVLVisionConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=[TINY_INTERNVL_IMAGE, TINY_INTERNVL_IMAGE],
        patch_size=[TINY_INTERNVL_PATCH, TINY_INTERNVL_PATCH],
    )
    text = tiny_text_kwargs(tok, n_layers, n_heads, n_kv_heads, d_head)
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
    _never_predict(model.lm_head, tok, INTERNVL_SPECIAL_TOKENS)
    return save_tiny(model, tok, processor, out_dir, dtype)


def tiny_internvl_image_tokens() -> int:
    """Image tokens per image of the tiny InternVL (patches after a 0.5 pixel shuffle)."""
    return ((TINY_INTERNVL_IMAGE // TINY_INTERNVL_PATCH) // 2) ** 2
