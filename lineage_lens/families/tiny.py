"""The kit every family's tiny-config builder uses: a word-level tokenizer, the text-config fields
of a tiny language model, saving a checkpoint, and the fixes that make a tiny vision-language
model's random init behave.

A family's *tiny builder* (:class:`TinyBuilder`, :attr:`lineage_lens.families.Family.tiny`)
writes an offline, random-init Hugging Face directory (weights, tokenizer and, for a
vision-language family, its image-processor config) that boots through
:func:`lineage_lens.models.load_model`; :func:`lineage_lens.testing.make_tiny_model` calls it by
the family's name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

#: The placeholder image token of the LLaVA families (and every tiny tokenizer's vocabulary).
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

#: The tiny models' context: the vendored HaluEval prompts (up to ~800 tokens of the tiny word
#: tokenizer) fit, as they fit the real models' (lineage_lens.batching.check_context).
TINY_N_CTX = 1024

#: Image side and ViT patch of the tiny fixed-size towers (LLaVA's CLIP, Gemma3's SigLIP side).
TINY_IMAGE_SIZE = 16
TINY_PATCH_SIZE = 8
#: Image tokens a tiny LLaVA expects per image ("default" strategy drops CLS).
TINY_IMAGE_TOKENS = (TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2


class TinyBuilder(Protocol):
    """A family's tiny-config builder: writes a tiny random-init checkpoint of the family with its
    tokenizer (and image processor) to ``out_dir`` and returns it. ``n_kv_heads < n_heads`` gives
    grouped-query attention (``None``: as many as ``n_heads``); the hidden size is
    ``n_heads * d_head``; ``dtype`` is the dtype the weights are saved in; ``n_ctx`` the language
    model's context."""

    def __call__(
        self,
        out_dir: Path,
        *,
        n_layers: int,
        n_heads: int,
        n_kv_heads: int | None,
        d_head: int,
        seed: int,
        extra_words: list[str] | None,
        dtype: torch.dtype,
        n_ctx: int,
    ) -> Path: ...


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


def mrope_sections(d_head: int) -> list[int]:
    """mRoPE's split of the ``d_head / 2`` rotary frequencies over temporal, height and width
    positions (Qwen-VL, Qwen2.5-Omni)."""
    half = d_head // 2
    return [half - 2 * (half // 3), half // 3, half // 3]


def never_predict(output_weight: torch.Tensor, tok: Any, tokens: list[str]) -> None:
    """Zero the unembedding rows of ``tokens`` (those the tokenizer knows): trained models never
    predict image or audio placeholders, a random one might, and a generated placeholder without
    its image would be read as an image slot by the next full forward (of a greedy reference,
    say). A zero logit is never the largest of ~100."""
    ids = [tok.convert_tokens_to_ids(t) for t in tokens]
    ids = [i for i in ids if i is not None and i != tok.unk_token_id]
    with torch.no_grad():
        output_weight[ids] = 0.0


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


def tiny_clip_config() -> Any:
    """The tiny CLIP vision tower of the LLaVA families (16x16 images, 8x8 patches, one layer)."""
    import transformers as tf

    return tf.CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=TINY_IMAGE_SIZE,
        patch_size=TINY_PATCH_SIZE,
        projection_dim=16,
    )


#: What a family's tiny builder supplies to :func:`tiny_builder`: the model (random init, seeded)
#: and its image processor (``None`` for a language model), from the tokenizer, the text-config
#: fields (:func:`tiny_text_kwargs`) and ``d_head``.
TinyMaker = Callable[[Any, dict[str, Any], int], tuple[Any, Any]]


def tiny_builder(
    make: TinyMaker,
    *,
    bos: bool = True,
    tokens: Sequence[str] = (),
    placeholders: Sequence[str] | None = None,
) -> TinyBuilder:
    """A :class:`TinyBuilder` around ``make``: a word-level tokenizer (``bos=False``: no BOS
    token, like Qwen's; ``tokens``: the family's special tokens), the text-config fields, the
    seed, ``make``'s model and processor, zero unembedding rows for ``placeholders`` (a
    vision-language family's image tokens, :func:`never_predict`), then :func:`save_tiny`."""

    def build(
        out_dir: Path,
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
        tok = make_word_tokenizer(extra_words, bos=bos, extra_special=list(tokens))
        text_kw = tiny_text_kwargs(tok, n_layers, n_heads, n_kv_heads, d_head, n_ctx=n_ctx)
        torch.manual_seed(seed)
        model, processor = make(tok, text_kw, d_head)
        if placeholders is not None:
            never_predict(model.get_output_embeddings().weight, tok, list(placeholders))
        return save_tiny(model, tok, processor, Path(out_dir), dtype)

    return build


#: Default geometry of the adapter families' tiny builders (Qwen2.5-Omni thinker, InternVL): 2
#: layers, 4 query heads, 2 key/value heads, d_head 16 (hidden 64).
TINY_TEXT = {"n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_head": 16}
