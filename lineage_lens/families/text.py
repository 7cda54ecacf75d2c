"""The language-model families TransformerLens 4.3 boots itself: Llama, Qwen2, Qwen3, Mistral,
Phi3 (fused ``qkv_proj`` / ``gate_up_proj``) and Gemma3 text (sliding-window and full attention
layers). They take no images; each registers its tiny config (a word-level tokenizer, 2 layers by
default)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lineage_lens.families.registry import Family, register
from lineage_lens.families.tiny import TinyBuilder, tiny_builder


def gemma3_text_kwargs(text_kw: dict[str, Any], d_head: int) -> dict[str, Any]:
    """Gemma3 text config: one sliding-window layer then full attention (both kinds tested)."""
    n = text_kw["num_hidden_layers"]
    kinds = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    return {**text_kw, "layer_types": kinds, "sliding_window": 64, "query_pre_attn_scalar": d_head}


def tiny_text_builder(
    model_class: str,
    config_class: str,
    *,
    bos: bool = True,
    config_kwargs: Callable[[dict[str, Any], int], dict[str, Any]] | None = None,
) -> TinyBuilder:
    """The tiny builder of a decoder-only language model: ``transformers.<model_class>`` over a
    ``transformers.<config_class>`` of :func:`~lineage_lens.families.tiny.tiny_text_kwargs`
    (``config_kwargs`` adjusts them); ``bos=False`` for tokenizers without a BOS token (Qwen)."""

    def make(tok: Any, text_kw: dict[str, Any], d_head: int) -> tuple[Any, None]:
        import transformers as tf

        if config_kwargs is not None:
            text_kw = config_kwargs(text_kw, d_head)
        return getattr(tf, model_class)(getattr(tf, config_class)(**text_kw)), None

    return tiny_builder(make, bos=bos)


def _mistral_kwargs(text_kw: dict[str, Any], d_head: int) -> dict[str, Any]:
    return {"sliding_window": None, **text_kw}


def _phi3_kwargs(text_kw: dict[str, Any], d_head: int) -> dict[str, Any]:
    return {k: v for k, v in text_kw.items() if k != "head_dim"}


def text_family(
    name: str,
    architecture: str,
    config_class: str,
    *,
    bos: bool = True,
    config_kwargs: Callable[[dict[str, Any], int], dict[str, Any]] | None = None,
) -> Family:
    """The :class:`~lineage_lens.families.Family` of a language model whose ``model_type`` is
    ``name``, with its tiny builder (:func:`tiny_text_builder`)."""
    tiny = tiny_text_builder(architecture, config_class, bos=bos, config_kwargs=config_kwargs)
    return Family(name, (name,), architecture, tiny=tiny)


LLAMA = register(text_family("llama", "LlamaForCausalLM", "LlamaConfig"))
QWEN2 = register(text_family("qwen2", "Qwen2ForCausalLM", "Qwen2Config", bos=False))
QWEN3 = register(text_family("qwen3", "Qwen3ForCausalLM", "Qwen3Config", bos=False))
MISTRAL = register(
    text_family("mistral", "MistralForCausalLM", "MistralConfig", config_kwargs=_mistral_kwargs)
)
PHI3 = register(text_family("phi3", "Phi3ForCausalLM", "Phi3Config", config_kwargs=_phi3_kwargs))
GEMMA3_TEXT = register(
    text_family(
        "gemma3_text", "Gemma3ForCausalLM", "Gemma3TextConfig", config_kwargs=gemma3_text_kwargs
    )
)
