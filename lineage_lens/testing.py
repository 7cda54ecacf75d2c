"""Tiny, offline, random-init models for tests and examples.

:func:`make_tiny_model` writes a Hugging Face directory (weights, a word-level tokenizer and, for
the vision-language families, the family's Hugging Face image processor config) that boots through
:func:`lineage_lens.models.load_model` without touching a hub. Architectures (:data:`ARCHS`):

* language models: Llama (multi-head or grouped-query attention), Qwen2, Qwen3, Mistral, Phi3
  (fused ``qkv_proj`` / ``gate_up_proj``), Gemma3 text;
* vision-language models: LLaVA-1.5 (tiny CLIP tower, fixed 16x16 images), LLaVA-NeXT (any
  resolution: 16x16 tiles on 16x32 / 32x16 / 32x32 grids), Gemma3 image+text (tiny SigLIP,
  4 soft tokens per image), Qwen2.5-VL and Qwen3-VL (dynamic resolution, 4x4 patches merged 2x2).

``tiny_pixel_values`` makes LLaVA-1.5 images with numpy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

Arch = Literal[
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "phi3",
    "gemma3_text",
    "llava",
    "llava_next",
    "gemma3",
    "qwen2_5_vl",
    "qwen3_vl",
]
#: Every architecture :func:`make_tiny_model` builds.
ARCHS: tuple[str, ...] = (
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "phi3",
    "gemma3_text",
    "llava",
    "llava_next",
    "gemma3",
    "qwen2_5_vl",
    "qwen3_vl",
)
#: The vision-language ones among them.
MULTIMODAL_ARCHS: frozenset[str] = frozenset(
    {"llava", "llava_next", "gemma3", "qwen2_5_vl", "qwen3_vl"}
)
#: Tokenizers without a BOS token (like the real Qwen tokenizers).
_NO_BOS = frozenset({"qwen2", "qwen3", "qwen2_5_vl", "qwen3_vl"})
#: Extra special tokens of a family's prompts (appended after the base vocabulary).
FAMILY_TOKENS: dict[str, list[str]] = {
    "gemma3": ["<start_of_image>", "<image_soft_token>", "<end_of_image>"],
    "qwen2_5_vl": ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"],
    "qwen3_vl": ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"],
}

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", IMAGE_TOKEN]

#: Words the tiny tokenizer knows; anything else becomes ``<unk>``.
BASE_WORDS = [
    "Context",
    "Question",
    "Answer",
    "Yes",
    "No",
    "yes",
    "no",
    "the",
    "a",
    "an",
    "is",
    "are",
    "was",
    "of",
    "in",
    "on",
    "at",
    "to",
    "and",
    "or",
    "not",
    "it",
    "this",
    "that",
    "what",
    "who",
    "where",
    "which",
    "when",
    "how",
    "many",
    "there",
    "image",
    "picture",
    "describe",
    "detail",
    "please",
    "object",
    "cat",
    "dog",
    "car",
    "tree",
    "house",
    "red",
    "blue",
    "green",
    "big",
    "small",
    "one",
    "two",
    "three",
    "four",
    "five",
    "Paris",
    "France",
    "Rome",
    "Italy",
    "capital",
    "city",
    "river",
    "born",
    "year",
    "man",
    "woman",
    "book",
    "table",
    "chair",
    "cup",
    "ball",
    "bird",
    "fish",
    "sun",
    "moon",
    "true",
    "false",
    "answer",
    "question",
    "context",
    "knowledge",
    "hallucinated",
]
PUNCT = list(":?.,!;'\"()-\n")

TINY_IMAGE_SIZE = 16
TINY_PATCH_SIZE = 8
#: Image tokens a tiny LLaVA expects per image ("default" strategy drops CLS).
TINY_IMAGE_TOKENS = (TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2


def make_word_tokenizer(
    extra_words: list[str] | None = None,
    *,
    bos: bool = True,
    extra_special: list[str] | None = None,
):
    """A word-level ``PreTrainedTokenizerFast`` over :data:`BASE_WORDS` (plus ``extra_words``).

    ``bos=False`` declares no BOS token, like Qwen2's tokenizers. ``extra_special`` are special
    tokens appended after the vocabulary (a family's image markers), so the ids of the base
    vocabulary never change.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = list(extra_special or [])
    words = list(
        dict.fromkeys(SPECIAL_TOKENS + BASE_WORDS + PUNCT + list(extra_words or []) + special)
    )
    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    if special:
        from tokenizers import AddedToken

        tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>" if bos else None,
        eos_token="</s>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


#: The tiny models' context: the vendored HaluEval prompts (up to ~800 tokens of the tiny word
#: tokenizer) fit, as they fit the real models' (lineage_lens.batching.check_context).
TINY_N_CTX = 1024


def make_tiny_model(
    out_dir: str | Path,
    arch: Arch = "llama",
    *,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    d_head: int = 8,
    seed: int = 0,
    extra_words: list[str] | None = None,
    dtype: torch.dtype = torch.float32,
    n_ctx: int = TINY_N_CTX,
) -> Path:
    """Write a tiny random-init model of ``arch`` with its tokenizer to ``out_dir``; return it.

    ``n_kv_heads < n_heads`` gives grouped-query attention; the hidden size is
    ``n_heads * d_head``. For ``"llava"`` the language model is a tiny Llama and the vision tower
    a tiny CLIP (16x16 images, 8x8 patches, 4 image tokens); the other vision-language families
    are described in the module docstring and save their Hugging Face image processor config
    beside the weights. ``dtype`` is the dtype the weights are saved in; ``n_ctx`` the language
    model's context (``max_position_embeddings``; ``model.cfg.n_ctx`` once loaded).
    """
    import transformers as tf

    if arch not in ARCHS:
        raise ValueError(f"unknown tiny architecture {arch!r}; use one of {', '.join(ARCHS)}")
    out_dir = Path(out_dir)
    # Qwen tokenizers have no BOS token; TransformerLens re-creates a tokenizer that declares
    # one through AutoTokenizer, which would swap in Qwen2's own BPE class.
    tok = make_word_tokenizer(
        extra_words, bos=arch not in _NO_BOS, extra_special=FAMILY_TOKENS.get(arch)
    )
    d_model = n_heads * d_head
    text_kw = tiny_text_kwargs(tok, n_layers, n_heads, n_kv_heads, d_head, n_ctx=n_ctx)
    # mRoPE (Qwen-VL): the rotary half-dimension split over temporal / height / width positions.
    half = d_head // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    processor: Any = None
    torch.manual_seed(seed)
    if arch == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**text_kw))
    elif arch == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**text_kw))
    elif arch == "qwen3":
        model = tf.Qwen3ForCausalLM(tf.Qwen3Config(**text_kw))
    elif arch == "mistral":
        model = tf.MistralForCausalLM(tf.MistralConfig(sliding_window=None, **text_kw))
    elif arch == "phi3":
        phi_kw = {k: v for k, v in text_kw.items() if k != "head_dim"}
        model = tf.Phi3ForCausalLM(tf.Phi3Config(**phi_kw))
    elif arch == "gemma3_text":
        model = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**_gemma3_text_kw(text_kw, d_head)))
    elif arch == "llava":
        config = tf.LlavaConfig(
            vision_config=_tiny_clip(tf),
            text_config=tf.LlamaConfig(**text_kw),
            image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
            vision_feature_select_strategy="default",
            vision_feature_layer=-1,
        )
        model = tf.LlavaForConditionalGeneration(config)
    elif arch == "llava_next":
        pinpoints = [[16, 32], [32, 16], [32, 32]]
        config = tf.LlavaNextConfig(
            vision_config=_tiny_clip(tf),
            text_config=tf.LlamaConfig(**text_kw),
            image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
            vision_feature_select_strategy="default",
            vision_feature_layer=-1,
            image_grid_pinpoints=pinpoints,
            image_seq_length=TINY_IMAGE_TOKENS,
        )
        model = tf.LlavaNextForConditionalGeneration(config)
        processor = tf.LlavaNextImageProcessorPil(
            size={"shortest_edge": TINY_IMAGE_SIZE},
            crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
            image_grid_pinpoints=pinpoints,
        )
    elif arch == "gemma3":
        vision = tf.SiglipVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=TINY_IMAGE_SIZE,
            patch_size=4,
            vision_use_head=False,
        )
        ids = [tok.convert_tokens_to_ids(t) for t in FAMILY_TOKENS["gemma3"]]
        config = tf.Gemma3Config(
            text_config=tf.Gemma3TextConfig(**_gemma3_text_kw(text_kw, d_head)),
            vision_config=vision,
            mm_tokens_per_image=4,
            boi_token_index=ids[0],
            image_token_index=ids[1],
            eoi_token_index=ids[2],
            tie_word_embeddings=False,
        )
        model = tf.Gemma3ForConditionalGeneration(config)
        processor = tf.Gemma3ImageProcessorPil(
            size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
        )
    elif arch in ("qwen2_5_vl", "qwen3_vl"):
        ids = [tok.convert_tokens_to_ids(t) for t in FAMILY_TOKENS[arch]]
        rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope}
        if arch == "qwen2_5_vl":
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
        model = cls(config)
        processor = tf.Qwen2VLImageProcessorPil(
            size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32},
            patch_size=4,
            merge_size=2,
            temporal_patch_size=2,
        )
    if arch in MULTIMODAL_ARCHS:
        _make_images_matter(model, tok, arch)
    return save_tiny(model, tok, processor, out_dir, dtype)


def tiny_text_kwargs(
    tok: Any,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int | None,
    d_head: int,
    *,
    n_ctx: int = TINY_N_CTX,
) -> dict[str, Any]:
    """The Hugging Face text-config fields of a tiny language model over ``tok``'s vocabulary
    (hidden ``n_heads * d_head``, MLP twice that, untied embeddings, ``n_ctx`` positions)."""
    d_model = n_heads * d_head
    return dict(
        vocab_size=len(tok),
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads or n_heads,
        head_dim=d_head,
        max_position_embeddings=n_ctx,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )


def save_tiny(
    model: Any, tok: Any, processor: Any | None, out_dir: Path, dtype: torch.dtype
) -> Path:
    """Save a tiny model in ``dtype`` with its tokenizer (and image processor) to ``out_dir``."""
    model.eval()
    model.to(dtype)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    if processor is not None:
        processor.save_pretrained(out_dir)
    # Pin the generic fast tokenizer class: otherwise AutoTokenizer picks the architecture's own
    # class (e.g. Qwen2Tokenizer), which rebuilds a BPE pipeline around the word-level vocabulary.
    config_path = out_dir / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config["tokenizer_class"] = "TokenizersBackend"
    config_path.write_text(json.dumps(tok_config, indent=2))
    return out_dir


def _make_images_matter(model: Any, tok: Any, arch: str) -> None:
    """Two fixes of the random init so a tiny vision-language model behaves like a trained one
    where tests need it: Gemma3's image projection starts at zero in Hugging Face's init (every
    image would embed to zeros), and the image placeholder tokens get zero output embeddings so
    greedy decoding never emits them (a generated placeholder would be read as an image slot)."""
    with torch.no_grad():
        if arch == "gemma3":
            proj = model.model.multi_modal_projector.mm_input_projection_weight
            proj.normal_(0.0, 0.5)
        placeholders = [IMAGE_TOKEN, *FAMILY_TOKENS.get(arch, [])]
        ids = [tok.convert_tokens_to_ids(t) for t in placeholders]
        ids = [i for i in ids if i is not None and i != tok.unk_token_id]
        model.get_output_embeddings().weight[ids] = 0.0


def _tiny_clip(tf: Any) -> Any:
    return tf.CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=TINY_IMAGE_SIZE,
        patch_size=TINY_PATCH_SIZE,
        projection_dim=16,
    )


def _gemma3_text_kw(text_kw: dict[str, Any], d_head: int) -> dict[str, Any]:
    """Gemma3 text config: one sliding-window layer then full attention (both kinds tested)."""
    n = text_kw["num_hidden_layers"]
    kinds = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    return {**text_kw, "layer_types": kinds, "sliding_window": 64, "query_pre_attn_scalar": d_head}


def tiny_pixel_values(
    batch: int = 1, *, image_size: int = TINY_IMAGE_SIZE, seed: int = 0
) -> Float[Tensor, "batch 3 size size"]:
    """Normalised random images for the tiny LLaVA, made with numpy (no image processor)."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((batch, 3, image_size, image_size))).float()


class DieOnceEvaluator:
    """A sweep evaluator that kills its own process (``os._exit``) the first time it is called,
    then behaves as ``inner``: it simulates a cluster worker that dies in the middle of a step
    (the first call creates ``marker``, so the retried task finds it and goes on)."""

    def __init__(self, inner: Any, marker: str | Path):
        self.inner = inner
        self.marker = Path(marker)
        self.task = getattr(inner, "task", None)

    def __call__(self, model: Any, gate: Any) -> Any:
        import os

        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(1)
        return self.inner(model, gate)

    def __repr__(self) -> str:
        return repr(self.inner)
