"""Tiny, offline, random-init models for tests and examples.

Each factory writes a Hugging Face directory (weights + a word-level tokenizer) that boots through
``TransformerBridge.boot_transformers(directory)`` without touching a hub. Architectures: Llama
(multi-head or grouped-query attention), Qwen2, Mistral, and a tiny LLaVA whose vision tower is a
tiny CLIP; ``tiny_pixel_values`` makes its images with numpy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

Arch = Literal["llama", "qwen2", "mistral", "llava"]

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


def make_word_tokenizer(extra_words: list[str] | None = None, *, bos: bool = True):
    """A word-level ``PreTrainedTokenizerFast`` over :data:`BASE_WORDS` (plus ``extra_words``).

    ``bos=False`` declares no BOS token, like Qwen2's tokenizers.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys(SPECIAL_TOKENS + BASE_WORDS + PUNCT + list(extra_words or [])))
    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>" if bos else None,
        eos_token="</s>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


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
) -> Path:
    """Write a tiny random-init model of ``arch`` with its tokenizer to ``out_dir``; return it.

    ``n_kv_heads < n_heads`` gives grouped-query attention. For ``"llava"`` the language model is
    a tiny Llama and the vision tower a tiny CLIP (16x16 images, 8x8 patches, 4 image tokens).
    """
    import transformers as tf

    out_dir = Path(out_dir)
    # Qwen2 tokenizers have no BOS token; TransformerLens re-creates a tokenizer that declares
    # one through AutoTokenizer, which would swap in Qwen2's own BPE class.
    tok = make_word_tokenizer(extra_words, bos=arch != "qwen2")
    vocab_size = len(tok)
    d_model = n_heads * d_head
    text_kw = dict(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads or n_heads,
        head_dim=d_head,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**text_kw))
    elif arch == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**text_kw))
    elif arch == "mistral":
        model = tf.MistralForCausalLM(tf.MistralConfig(sliding_window=None, **text_kw))
    elif arch == "llava":
        vision = tf.CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=TINY_IMAGE_SIZE,
            patch_size=TINY_PATCH_SIZE,
            projection_dim=16,
        )
        config = tf.LlavaConfig(
            vision_config=vision,
            text_config=tf.LlamaConfig(**text_kw),
            image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
            vision_feature_select_strategy="default",
            vision_feature_layer=-1,
        )
        model = tf.LlavaForConditionalGeneration(config)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; use llama, qwen2, mistral or llava")
    model.eval()
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    # Pin the generic fast tokenizer class: otherwise AutoTokenizer picks the architecture's own
    # class (e.g. Qwen2Tokenizer), which rebuilds a BPE pipeline around the word-level vocabulary.
    config_path = out_dir / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config["tokenizer_class"] = "TokenizersBackend"
    config_path.write_text(json.dumps(tok_config, indent=2))
    return out_dir


def tiny_pixel_values(
    batch: int = 1, *, image_size: int = TINY_IMAGE_SIZE, seed: int = 0
) -> Float[Tensor, "batch 3 size size"]:
    """Normalised random images for the tiny LLaVA, made with numpy (no image processor)."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((batch, 3, image_size, image_size))).float()
