"""Capture: run prompts through a model and keep every head's ``hook_z`` at one token.

For every example the prompt (see :mod:`lineage_lens.data`) is tokenized with the model's own
Hugging Face tokenizer, run through the model in padded batches, and ``blocks.{l}.attn.hook_z``
(each head's output before ``W_O``) is kept **only at the probed token** — by default the answer's
last token. Nothing of shape ``[batch, pos, ...]`` is cached, and the forward pass stops right
after the last layer's ``hook_z`` (the last MLP, the final norm and the unembedding never run).
Examples whose tokens before the answer are identical (HaluEval's truthful and hallucinated answer
to one context and question) share one pass over that prefix: its key/value cache is reused for
each answer (``share_prefix=True``, the default). The result is a
:class:`~lineage_lens.activations.HeadActivations`.

Tokenization policy (BOS): prompts are encoded with ``tokenizer(text, add_special_tokens=True)``,
i.e. exactly as the Hugging Face model would see them: Llama/Vicuna tokenizers add ``<s>``, the
SmolLM2 tokenizer converted from GGUF adds its BOS (``<|im_start|>``), the tiny test tokenizer adds
``<s>``. ``prepend_bos=True`` forces a BOS token first (what
``model.to_tokens`` does), ``prepend_bos=False`` encodes without special tokens.

The answer's last token is the last non-special token whose character span ends at or before the
end of the answer in the rendered prompt (found through the tokenizer's offset mapping).

Image-grounded Truth Scores (the paper's MLLM scores) probe a multimodal model on image + question
+ answer. The ``condition`` of a capture names the authors' four settings: ``"text"`` (a text
prompt on an LLM), ``"text_only"`` (a text prompt on an MLLM's language model: no image tokens),
``"black_image"`` (the image replaced by a black dummy image) and ``"image"`` (each example's own
image). In the image conditions the template's ``{image}`` becomes the model's image tokens (so
the answer's position counts them) and each batch gets the model's image inputs
(:func:`lineage_lens.images.image_inputs`: ``pixel_values`` from its Hugging Face image processor
for LLaVA-1.5).

A capture with ``out=`` streams into a directory (the activations' files, see
:mod:`lineage_lens.activations`, plus ``progress.json``: the finished batches and the checksum of
each) and resumes after its last finished batch; with ``workers=N`` its batches are shared out
among Ray tasks (:mod:`lineage_lens.cluster`) that write into the same directory.

Typical use::

    model = load_model("smollm2-135m-instruct")
    examples = load_probe_examples("halueval", n_probe=292)  # the probing rows' 584 examples
    acts = collect_head_activations(model, examples, out="acts/smollm2")  # resumable
    acts.acts.shape  # (584, 30, 9, 64)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from lineage_lens.activations import ACTS_FILE, HeadActivations, npy_layout
from lineage_lens.batching import (
    MIN_SHARED_PREFIX,
    check_context,
    fill_prefix_cache,
    group_by_prefix,
    model_device,
    pad_batch,
    pad_token_id,
    run_on_prefix_cache,
    to_model,
)
from lineage_lens.data import (
    DEFAULT_TEMPLATE,
    LLAVA_PROBE_TEMPLATE,
    ChatPromptTemplate,
    ProbeExample,
    PromptSpans,
    PromptTemplate,
    load_probe_examples,
)
from lineage_lens.errors import ConfigError, DataError, ShapeMismatchError
from lineage_lens.families import is_multimodal
from lineage_lens.fileio import atomic_open
from lineage_lens.identity import image_identities, model_fingerprint
from lineage_lens.images import (
    ImageInputs,
    image_batch_kwargs,
    image_inputs,
    image_inputs_identity,
)
from lineage_lens.kvcache import kv_cache_ok
from lineage_lens.models import HeadGeometry, attn_hook_name, head_geometry, model_label

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)

Position = Literal["answer_last", "last"]
POSITIONS: tuple[str, ...] = ("answer_last", "last")

Condition = Literal["text", "text_only", "black_image", "image"]
#: The authors' four capture conditions (see the module docstring).
CONDITIONS: tuple[str, ...] = ("text", "text_only", "black_image", "image")
#: Conditions that feed an image to the model.
IMAGE_CONDITIONS: tuple[str, ...] = ("black_image", "image")

_NP_DTYPES: dict[torch.dtype, type] = {
    torch.float16: np.float16,
    torch.float32: np.float32,
    torch.float64: np.float64,
}
_PROGRESS_FILE = "progress.json"
_SHARD_GLOB = "shard-*-of-*.json"

#: Where a batch's rows go: ``store(batch index, example indices, rows [len(idx), L, H, d_head])``.
_RowStore = Callable[[int, np.ndarray, np.ndarray], None]

# --------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedPrompt:
    """One tokenized prompt.

    Attributes:
        input_ids: token ids (no padding).
        position: index of the probed token in ``input_ids``.
        context_tokens: ``(start, end)`` token slice covering the context (the evidence);
            ``(0, 0)`` when the template has no context.
        answer_tokens: ``(start, end)`` token slice covering the answer.
    """

    input_ids: list[int]
    position: int
    context_tokens: tuple[int, int]
    answer_tokens: tuple[int, int]


def _token_span(offsets: Sequence[tuple[int, int]], span: tuple[int, int]) -> tuple[int, int]:
    start, end = span
    if end <= start:
        return (0, 0)
    idx = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    return (idx[0], idx[-1] + 1) if idx else (0, 0)


def encode_prompt(
    tokenizer: Any,
    text: str,
    spans: PromptSpans,
    *,
    position: Position = "answer_last",
    prepend_bos: bool | None = None,
) -> EncodedPrompt:
    """Tokenize one rendered prompt and locate the probed token (see the module docstring)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            "collecting activations needs a fast (Rust) tokenizer for its offset mapping; load "
            "the model with a tokenizer.json."
        )
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=prepend_bos is not False)
    ids: list[int] = list(enc["input_ids"])
    offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
    bos = tokenizer.bos_token_id
    if prepend_bos and (not ids or ids[0] != bos):
        if bos is None:
            raise ConfigError("prepend_bos=True but the tokenizer has no BOS token.")
        ids.insert(0, bos)
        offsets.insert(0, (0, 0))
    if not ids:
        raise DataError(f"prompt tokenizes to no tokens: {text[:60]!r}")
    answer_tokens = _token_span(offsets, spans.answer)
    if position == "last":
        pos = len(ids) - 1
    else:
        a_start, a_end = spans.answer
        inside = [
            i for i, (a, b) in enumerate(offsets) if b > a and b <= a_end and b > a_start
        ] or [i for i, (a, b) in enumerate(offsets) if b > a and a < a_end and b >= a_end]
        if not inside:
            raise DataError(
                f"no token of the answer found in the prompt {text[:60]!r}...; is the answer "
                "empty or cut off?"
            )
        pos = inside[-1]
    return EncodedPrompt(ids, pos, _token_span(offsets, spans.context), answer_tokens)


AnyTemplate = PromptTemplate | ChatPromptTemplate


def _as_template(template: AnyTemplate | str | None) -> AnyTemplate:
    """The prompt template of a capture: ``None`` the paper's
    (:data:`~lineage_lens.data.DEFAULT_TEMPLATE`), a string a
    :class:`~lineage_lens.data.PromptTemplate` named ``"custom"``, a template as it is."""
    if template is None:
        return DEFAULT_TEMPLATE
    if isinstance(template, str):
        return PromptTemplate(template, name="custom")
    if not hasattr(template, "render"):
        raise ConfigError(f"prompt_template must be a PromptTemplate, got {type(template)}.")
    return template


def encode_examples(
    model_or_tokenizer: Any,
    examples: Sequence[ProbeExample],
    *,
    prompt_template: AnyTemplate | str | None = None,
    position: Position = "answer_last",
    prepend_bos: bool | None = None,
    image_text: str = "",
) -> list[EncodedPrompt]:
    """Render and tokenize ``examples`` (the tokenization :func:`collect_head_activations` uses).

    ``image_text`` replaces a template's ``{image}`` (the model's image tokens, see
    :meth:`lineage_lens.images.ImageInputs.image_text`); empty: no image tokens."""
    tokenizer = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    template = _as_template(prompt_template)
    out = []
    for ex in examples:
        text, spans = template.render(ex, image=image_text) if image_text else template.render(ex)
        out.append(
            encode_prompt(tokenizer, text, spans, position=position, prepend_bos=prepend_bos)
        )
    return out


# --------------------------------------------------------------------------------------------
# Capture
# --------------------------------------------------------------------------------------------


def collect_head_activations(
    model: Any,
    examples: Sequence[ProbeExample] | Dataset,
    *,
    batch_size: int = 16,
    position: Position = "answer_last",
    prompt_template: AnyTemplate | str | None = None,
    dtype: torch.dtype = torch.float16,
    out: str | Path | None = None,
    padding_side: Literal["left", "right"] = "right",
    prepend_bos: bool | None = None,
    sort_by_length: bool = True,
    stop_early: bool = True,
    share_prefix: bool = True,
    condition: Condition | None = None,
    progress: bool = True,
    workers: int = 1,
    address: str | None = None,
) -> HeadActivations:
    """Capture every head's ``hook_z`` vector at one token of each example.

    Args:
        model: a ``TransformerBridge`` (see :func:`lineage_lens.models.load_model`). On multimodal
            bridges only the language-model blocks are read.
        examples: the probing examples (labels 1 = truthful, 0 = hallucinated), or a
            ``datasets.Dataset`` of them (see :mod:`lineage_lens.hf_datasets`).
        batch_size: examples per forward pass.
        position: ``"answer_last"`` (the answer's last token, the paper's choice) or ``"last"``
            (the prompt's last token).
        prompt_template: a :class:`~lineage_lens.data.PromptTemplate`,
            :class:`~lineage_lens.data.ChatPromptTemplate` or template string; default the paper's
            (:data:`~lineage_lens.data.LLAVA_PROBE_TEMPLATE` in the image conditions, whose
            templates must place ``{image}``).
        dtype: dtype of the stored vectors (float16 halves the memory; use float32 for exactness).
        out: a directory to stream into (``acts.npy`` memmap + ``meta.json`` + ``progress.json``,
            flushed after each batch). Calling again with the same ``out`` resumes after the last
            finished batch; a finished ``out`` is simply loaded.
        padding_side: where padding goes in a batch; results do not depend on it (up to float
            rounding), it only matters for speed on some kernels.
        prepend_bos: ``None`` = the tokenizer's own special tokens; ``True`` force a BOS;
            ``False`` none.
        sort_by_length: batch prompts of similar length together (less padding); results are
            returned in the input order either way.
        stop_early: stop the forward pass right after the last layer's ``hook_z``.
        share_prefix: examples whose tokens before the answer are identical (a HaluEval row's
            truthful and hallucinated answers share context and question) run that prefix once:
            its key/value cache is reused for each answer, which then runs alone (right-padded,
            positions continuing after the prefix). The vectors equal those of the full prompts
            up to float rounding; only prefixes of at least :data:`MIN_SHARED_PREFIX` tokens are
            shared. Image conditions never share prefixes.
        condition: ``"text"`` (text prompt, any model), ``"text_only"`` (text prompt on a
            multimodal model; a template's ``{image}`` is left empty), ``"black_image"`` (a black
            image of the vision tower's size for every example) or ``"image"`` (each example's
            own ``image``, required). Default: ``"image"`` when any example carries an image,
            else ``"text_only"`` on a multimodal model and ``"text"`` otherwise. Recorded as
            ``meta["condition"]``.
        progress: show a tqdm bar.
        workers: data-parallel capture over this many Ray tasks (``pip install
            'lineage-lens[cluster]'``; ``out`` required, on a folder every worker sees; ``model``
            loaded by :func:`~lineage_lens.models.load_model`, which each worker calls again).
            Worker ``i`` captures batches ``i, i + workers, ...`` and writes their rows into the
            one ``acts.npy``; this process then verifies each batch's checksum, records it and
            captures any batch still missing. The batches are the same as in one process, so
            the result equals the single-process capture.
        address: the Ray cluster of ``workers`` (default: ``RAY_ADDRESS``, else a local one).

    Returns:
        :class:`HeadActivations` with ``acts`` of shape ``[n, n_layers, n_heads, d_head]``.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}.")
    options = {
        "batch_size": batch_size,
        "position": position,
        "prompt_template": prompt_template,
        "dtype": dtype,
        "out": out,
        "padding_side": padding_side,
        "prepend_bos": prepend_bos,
        "sort_by_length": sort_by_length,
        "stop_early": stop_early,
        "share_prefix": share_prefix,
        "condition": condition,
    }
    if workers > 1:
        examples = load_probe_examples(examples)
        _capture_on_ray(model, examples, options, workers, address, progress)
    result = _capture(model, examples, progress=progress, shard=None, **options)
    assert result is not None  # only a shard returns nothing
    return result


def _capture(
    model: Any,
    examples: Sequence[ProbeExample] | Dataset,
    *,
    batch_size: int,
    position: Position,
    prompt_template: AnyTemplate | str | None,
    dtype: torch.dtype,
    out: str | Path | None,
    padding_side: Literal["left", "right"],
    prepend_bos: bool | None,
    sort_by_length: bool,
    stop_early: bool,
    share_prefix: bool,
    condition: Condition | None,
    progress: bool,
    shard: tuple[int, int] | None,
) -> HeadActivations | None:
    """The capture of :func:`collect_head_activations`; with ``shard=(i, n)`` only batches
    ``i, i + n, ...`` not yet done, their rows written into ``out`` and recorded in its shard
    file (nothing returned).

    Its steps: check the options (:func:`_check_options`), prepare the prompts and their batches
    (:func:`_plan_capture`), then run the batches (:func:`_run_batches`) into memory
    (:func:`_capture_in_memory`), into ``out``, resuming what it holds
    (:func:`_capture_into`), or for one shard into its rows of ``out``
    (:func:`_capture_shard`).
    """
    _check_options(position=position, padding_side=padding_side, batch_size=batch_size, dtype=dtype)
    plan = _plan_capture(
        model,
        examples,
        batch_size=batch_size,
        position=position,
        prompt_template=prompt_template,
        dtype=dtype,
        padding_side=padding_side,
        prepend_bos=prepend_bos,
        sort_by_length=sort_by_length,
        stop_early=stop_early,
        share_prefix=share_prefix,
        condition=condition,
    )
    if out is None:
        return _capture_in_memory(plan, progress=progress)
    if shard is not None:
        _capture_shard(plan, Path(out), shard, progress=progress)
        return None
    return _capture_into(plan, Path(out), progress=progress)


def _check_options(
    *, position: str, padding_side: str, batch_size: Any, dtype: torch.dtype
) -> None:
    """A :class:`ConfigError` for an option of a capture that is not one it knows."""
    if position not in POSITIONS:
        raise ConfigError(f"position must be one of {POSITIONS}, got {position!r}.")
    if padding_side not in ("left", "right"):
        raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if dtype not in _NP_DTYPES:
        raise ConfigError(f"dtype must be one of {list(_NP_DTYPES)}, got {dtype}.")


# --------------------------------------------------------------------------------------------
# Preparing a capture: prompts, tokens, batches
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _CapturePlan:
    """What a capture runs, fixed before its first forward pass (see :func:`_plan_capture`).

    Attributes:
        model: the bridge the batches run through.
        examples, labels: the examples (``[n]`` labels), in the order of the result's rows.
        encoded: each example's prompt, tokenized, with its probed position.
        template, condition: the prompt template and the capture condition, resolved.
        img_in, images: in the image conditions the model's image inputs and each example's
            image (its own or a black one); else ``None`` and ``[]``.
        geometry: the model's ``n_layers``, ``n_heads``, ``d_head``.
        keys: per example, its tokens before the answer when prefixes are shared (``()``: not
            shared, see :func:`prefix_keys`).
        batches: the example indices of each batch, in the order the batches run.
        pad_id: the tokenizer's padding token.
        position ... stop_early: the options of :func:`collect_head_activations`.
    """

    model: Any
    examples: list[ProbeExample]
    labels: Int[np.ndarray, " n"]
    encoded: list[EncodedPrompt]
    template: AnyTemplate
    condition: str
    img_in: ImageInputs | None
    images: list[Any]
    geometry: HeadGeometry
    keys: list[tuple[int, ...]]
    batches: list[Int[np.ndarray, " batch"]]
    pad_id: int
    position: Position
    dtype: torch.dtype
    batch_size: int
    padding_side: Literal["left", "right"]
    prepend_bos: bool | None
    sort_by_length: bool
    stop_early: bool

    @property
    def np_dtype(self) -> type:
        """The numpy dtype of the stored vectors."""
        return _NP_DTYPES[self.dtype]

    @property
    def acts_shape(self) -> tuple[int, int, int, int]:
        """``(n, n_layers, n_heads, d_head)``: the shape of the result's ``acts``."""
        g = self.geometry
        return (len(self.examples), g.n_layers, g.n_heads, g.d_head)

    def result(
        self, acts: Float[np.ndarray, "n layer head d_head"] | None = None
    ) -> HeadActivations:
        """The :class:`HeadActivations` of ``acts`` with this capture's provenance; without
        ``acts`` a placeholder of shape ``[n, 0, 0, 0]`` (its metadata is what ``out`` records)."""
        n = len(self.examples)
        return HeadActivations(
            acts=np.zeros((n, 0, 0, 0)) if acts is None else acts,
            labels=self.labels,
            source_ids=[ex.source_id for ex in self.examples],
            model=model_label(self.model),
            template=self.template.name,
            position=self.position,
            dtype=str(self.dtype).removeprefix("torch."),
            token_positions=np.array([e.position for e in self.encoded], dtype=np.int64),
            n_tokens=np.array([len(e.input_ids) for e in self.encoded], dtype=np.int64),
            meta={
                "geometry": self.geometry.to_dict(),
                "prepend_bos": self.prepend_bos,
                "template": self.template.to_dict(),
                "hook": "blocks.{l}.attn.hook_z",
                "padding_side": self.padding_side,
                "batch_size": self.batch_size,
                "condition": self.condition,
                "image_inputs": None if self.img_in is None else self.img_in.describe(),
            },
        )

    def fingerprint(self) -> str:
        """What a resumed capture must match: the model's content, the settings, every prompt's
        tokens and label, and every image's content (a file's bytes, not its path)."""
        return _fingerprint(
            {
                "model": model_label(self.model),
                "model_sha": model_fingerprint(self.model),
                "image_inputs": None if self.img_in is None else image_inputs_identity(self.img_in),
                "geometry": self.geometry.to_dict(),
                "template": self.template.to_dict(),
                "position": self.position,
                "dtype": str(self.dtype),
                "batch_size": self.batch_size,
                "sort": self.sort_by_length,
                "share_prefix": bool(any(self.keys)),
                "condition": self.condition,
                "images": image_identities(self.images),
            },
            self.encoded,
            self.labels,
        )


def _plan_capture(
    model: Any,
    examples: Sequence[ProbeExample] | Dataset,
    *,
    batch_size: int,
    position: Position,
    prompt_template: AnyTemplate | str | None,
    dtype: torch.dtype,
    padding_side: Literal["left", "right"],
    prepend_bos: bool | None,
    sort_by_length: bool,
    stop_early: bool,
    share_prefix: bool,
    condition: Condition | None,
) -> _CapturePlan:
    """Prepare a capture: the examples, their condition, template and images, their prompts
    tokenized (and checked against the model's context) and the batches to run."""
    examples = load_probe_examples(examples)
    if not examples:
        raise DataError("no examples to collect activations for; load a dataset first.")
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError("the model has no tokenizer; load it with load_model().")
    pad_id = pad_token_id(tokenizer)
    condition = _resolve_condition(model, examples, condition)
    template, img_in, images = _condition_inputs(model, examples, condition, prompt_template)
    geometry = head_geometry(model)
    labels = np.array([ex.label for ex in examples], dtype=np.int64)
    encoded = _encode_for_capture(
        model,
        tokenizer,
        examples,
        template,
        img_in,
        images,
        position=position,
        prepend_bos=prepend_bos,
    )
    keys, batches = _plan_batches(
        model,
        encoded,
        batch_size,
        sort=sort_by_length,
        share=share_prefix and img_in is None,
    )
    return _CapturePlan(
        model=model,
        examples=examples,
        labels=labels,
        encoded=encoded,
        template=template,
        condition=condition,
        img_in=img_in,
        images=images,
        geometry=geometry,
        keys=keys,
        batches=batches,
        pad_id=pad_id,
        position=position,
        dtype=dtype,
        batch_size=batch_size,
        padding_side=padding_side,
        prepend_bos=prepend_bos,
        sort_by_length=sort_by_length,
        stop_early=stop_early,
    )


def _resolve_condition(model: Any, examples: Sequence[ProbeExample], condition: str | None) -> str:
    """The capture condition (default from the examples and the model), validated."""
    multimodal = is_multimodal(model)
    if condition is None:
        if any(ex.image is not None for ex in examples):
            condition = "image"
        else:
            condition = "text_only" if multimodal else "text"
    if condition not in CONDITIONS:
        raise ConfigError(f"condition must be one of {CONDITIONS}, got {condition!r}.")
    if condition != "text" and not multimodal:
        raise ConfigError(
            f"condition {condition!r} needs a vision-language model; {model_label(model)} has no "
            "vision tower. Use condition='text'."
        )
    if condition == "image":
        missing = [i for i, ex in enumerate(examples) if ex.image is None]
        if missing:
            raise DataError(
                f"condition 'image' needs an image on every example; {len(missing)} have none "
                f"(e.g. examples {missing[:5]}). Give them images, or use 'black_image' or "
                "'text_only'."
            )
    return condition


def _condition_inputs(
    model: Any,
    examples: Sequence[ProbeExample],
    condition: str,
    prompt_template: AnyTemplate | str | None,
) -> tuple[AnyTemplate, ImageInputs | None, list[Any]]:
    """The prompt template of a capture in ``condition`` and, in the image conditions, the
    model's image inputs and each example's image (its own, or one black image); else ``None``
    and ``[]``."""
    if condition not in IMAGE_CONDITIONS:
        return _as_template(prompt_template), None, []
    img_in = image_inputs(model)
    template = _as_template(LLAVA_PROBE_TEMPLATE if prompt_template is None else prompt_template)
    if not getattr(template, "has_image", False):
        raise ConfigError(
            f"condition {condition!r} needs a PromptTemplate with an {{image}} field (e.g. "
            "lineage_lens.data.LLAVA_PROBE_TEMPLATE); got "
            f"{getattr(template, 'name', template)!r}."
        )
    black = img_in.black_image() if condition == "black_image" else None
    images = [ex.image if black is None else black for ex in examples]
    return template, img_in, images


def _encode_for_capture(
    model: Any,
    tokenizer: Any,
    examples: Sequence[ProbeExample],
    template: AnyTemplate,
    img_in: ImageInputs | None,
    images: Sequence[Any],
    *,
    position: Position,
    prepend_bos: bool | None,
) -> list[EncodedPrompt]:
    """Every example's prompt, tokenized (with its images' tokens in the image conditions), each
    checked to fit the model's context (and, with images, to hold the image's tokens)."""
    encode = functools.partial(
        encode_examples,
        tokenizer,
        prompt_template=template,
        position=position,
        prepend_bos=prepend_bos,
    )
    if img_in is None:
        encoded = encode(examples)
    else:  # an image's tokens can depend on its size (LLaVA-NeXT, Qwen-VL): one image at a time
        encoded = [
            encode([ex], image_text=img_in.image_text(im))[0]
            for ex, im in zip(examples, images, strict=True)
        ]
        for i, e in enumerate(encoded):
            img_in.check_prompt(e.input_ids, f"example {i} ({examples[i].source_id})", images[i])
    check_context(
        model,
        [e.input_ids for e in encoded],
        [f"example {i} ({ex.source_id})" for i, ex in enumerate(examples)],
    )
    return encoded


def prefix_keys(encoded: Sequence[EncodedPrompt]) -> list[tuple[int, ...]]:
    """Per example, the tokens before its answer (empty when it has no answer span, a prefix
    shorter than :data:`MIN_SHARED_PREFIX`, or the probed token inside that prefix)."""
    keys = []
    for e in encoded:
        start = e.answer_tokens[0]
        ok = MIN_SHARED_PREFIX <= start <= e.position and start < len(e.input_ids)
        keys.append(tuple(e.input_ids[:start]) if ok else ())
    return keys


def _plan_batches(
    model: Any, encoded: Sequence[EncodedPrompt], batch_size: int, *, sort: bool, share: bool
) -> tuple[list[tuple[int, ...]], list[np.ndarray]]:
    """``(keys, batches)``: per example the prefix it shares (:func:`prefix_keys` when ``share``
    and the model's key/value cache can be trusted, else none), and the example indices of each
    batch (whole groups of a shared prefix together; longest prompts first when ``sort``)."""
    n = len(encoded)
    lengths = np.array([len(e.input_ids) for e in encoded])
    keys = prefix_keys(encoded) if share else [()] * n
    if any(keys) and not kv_cache_ok(model):
        keys = [()] * n  # the cache cannot be trusted here: full prompts (lineage_lens.kvcache)
    if any(keys):
        return keys, _grouped_batches(keys, lengths, batch_size, sort)
    order = np.arange(n)
    if sort:
        order = np.argsort(-lengths, kind="stable")  # longest first: memory errors show early
    return keys, [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _grouped_batches(
    keys: Sequence[tuple[int, ...]], lengths: np.ndarray, batch_size: int, sort: bool
) -> list[np.ndarray]:
    """Batches of whole groups of examples that share a prefix, longest first when ``sort``; a
    group larger than ``batch_size`` is split; examples without a prefix are batched apart."""
    groups = group_by_prefix(keys, range(len(keys)))
    batches: list[list[int]] = []
    for shared in (True, False):  # never mix examples with and without a prefix in one batch
        parts = [
            g[j : j + batch_size]
            for key, g in groups.items()
            if isinstance(key, tuple) == shared
            for j in range(0, len(g), batch_size)
        ]
        if sort:
            parts.sort(key=lambda g: -int(lengths[g].max()))
        batches.append([])
        for g in parts:
            if len(batches[-1]) + len(g) > batch_size:
                batches.append([])
            batches[-1].extend(g)
    return [np.array(b) for b in batches if b]


def _fingerprint(
    parts: dict[str, Any], encoded: Sequence[EncodedPrompt], labels: Int[np.ndarray, " n"]
) -> str:
    """32 hex digits of the sha256 of ``parts`` (JSON), every prompt's tokens and probed position,
    and every label."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True).encode())
    for e, y in zip(encoded, labels, strict=True):
        h.update(np.asarray(e.input_ids, dtype=np.int64).tobytes())
        h.update(f"|{e.position}|{y};".encode())
    return h.hexdigest()[:32]


# --------------------------------------------------------------------------------------------
# Running the batches
# --------------------------------------------------------------------------------------------


class _StopForwardError(Exception):
    """Raised inside the last needed hook to skip the rest of the forward pass."""


class _HookZRecorder:
    """The forward hooks of a capture: each layer's ``hook_z`` at one position per row, kept in
    one small ``[rows, n_layers, n_heads, d_head]`` float32 buffer on the model's device (copied
    to the host once per batch)."""

    def __init__(
        self, geometry: HeadGeometry, rows: int, device: torch.device, *, stop_early: bool
    ) -> None:
        self.n_layers, self.n_heads, self.d_head = (
            geometry.n_layers,
            geometry.n_heads,
            geometry.d_head,
        )
        self.stop_early = stop_early
        self.buf: Float[Tensor, "rows layer head d_head"] = torch.zeros(
            (rows, self.n_layers, self.n_heads, self.d_head), dtype=torch.float32, device=device
        )
        self.positions: Int[Tensor, " batch"] | None = None
        #: ``(hook name, hook)`` of every layer, for ``model.run_with_hooks(fwd_hooks=...)``.
        self.hooks = [
            (attn_hook_name(layer, "hook_z"), self._hook(layer)) for layer in range(self.n_layers)
        ]

    def record_at(self, positions: Int[Tensor, " batch"] | None) -> None:
        """Record the next forward passes at ``positions`` (one per row of the batch); ``None``
        records nothing and stops each pass after the last layer's attention (a prefix pass,
        which only fills the key/value caches)."""
        self.positions = positions

    def rows(self, n: int, np_dtype: type) -> Float[np.ndarray, "n layer head d_head"]:
        """The first ``n`` recorded rows on the host, as ``np_dtype``."""
        return self.buf[:n].cpu().numpy().astype(np_dtype, copy=False)

    def _hook(self, layer: int) -> Callable[[Tensor, Any], None]:
        H, D, last = self.n_heads, self.d_head, self.n_layers - 1

        def hook_fn(z: Tensor, hook: Any) -> None:
            b = z.shape[0]
            if z.ndim == 3 and z.shape[-1] == H * D:
                z = z.view(b, z.shape[1], H, D)
            if z.ndim != 4 or z.shape[2:] != (H, D):
                raise ShapeMismatchError(
                    f"{hook.name}", "[batch, pos, n_heads, d_head]", tuple(z.shape)
                )
            if self.positions is not None:
                pos = self.positions.to(z.device)
                self.buf[:b, layer] = z[torch.arange(b, device=z.device), pos].float()
            if layer == last and (self.stop_early or self.positions is None):
                raise _StopForwardError  # a prefix pass only needs the caches, filled by now

        return hook_fn


def _run_batches(
    plan: _CapturePlan, todo: Sequence[int], store: _RowStore, *, progress: bool
) -> None:
    """Run the batches ``todo`` (indices into ``plan.batches``) through the model and hand each
    one's rows to ``store``, batch by batch; the progress bar counts the other batches as done."""
    model, batches = plan.model, plan.batches
    device = model_device(model)
    rows = max(len(b) for b in batches)  # not batch_size: batch_size=10**9 must not allocate it
    recorder = _HookZRecorder(plan.geometry, rows, device, stop_early=plan.stop_early)
    bar = tqdm(
        total=len(batches),
        initial=len(batches) - len(todo),
        disable=not progress,
        desc=f"hook_z of {model_label(model)}",
        unit="batch",
    )
    try:
        with torch.inference_mode():
            for bi in todo:
                idx = _forward_batch(plan, recorder, batches[bi], device)
                store(bi, idx, recorder.rows(len(idx), plan.np_dtype))
                bar.update()
    finally:
        bar.close()


def _forward_batch(
    plan: _CapturePlan, recorder: _HookZRecorder, idx: np.ndarray, device: torch.device
) -> np.ndarray:
    """Run the examples ``idx`` as one padded batch (or, when they share prefixes, through
    :func:`_forward_shared`) with ``recorder``'s hooks. Returns the example order of the
    recorded rows."""
    keys, encoded, img_in = plan.keys, plan.encoded, plan.img_in
    if keys[idx[0]] and len({keys[i] for i in idx}) < len(idx):
        return _forward_shared(plan.model, recorder, encoded, keys, idx, plan.pad_id)
    batch = pad_batch([encoded[i].input_ids for i in idx], plan.pad_id, plan.padding_side)
    pos = batch.offsets + torch.tensor([encoded[i].position for i in idx])
    recorder.record_at(pos.to(device))
    kwargs: dict[str, Any] = {"attention_mask": batch.attention_mask.to(device)}
    if plan.padding_side == "left" and (img_in is None or img_in.takes_position_ids):
        kwargs["position_ids"] = batch.position_ids.to(device)
    if img_in is not None:
        batch_images = [plan.images[i] for i in idx]
        extra = image_batch_kwargs(img_in, batch_images, batch.input_ids)
        kwargs.update(to_model(extra, plan.model))
    with contextlib.suppress(_StopForwardError):
        plan.model.run_with_hooks(batch.input_ids.to(device), fwd_hooks=recorder.hooks, **kwargs)
    return idx


def _forward_shared(
    model: Any,
    recorder: _HookZRecorder,
    encoded: Sequence[EncodedPrompt],
    keys: Sequence[tuple[int, ...]],
    idx: np.ndarray,
    pad_id: int,
) -> np.ndarray:
    """Run a batch whose examples share prefixes: each distinct prefix once (to the last layer's
    attention, which fills the key/value cache), then every example's own tokens on its prefix's
    cache (:mod:`lineage_lens.batching`). Returns the example order of the captured rows."""
    if any(not keys[i] for i in idx):
        raise ConfigError("every example of a shared-prefix batch needs a prefix.")
    groups = group_by_prefix(keys, idx)
    order = [i for members in groups.values() for i in members]
    rows = [g for g, members in enumerate(groups.values()) for _ in members]

    def forward(ids: Tensor, **kwargs: Any) -> None:
        with contextlib.suppress(_StopForwardError):
            model.run_with_hooks(ids, fwd_hooks=recorder.hooks, **kwargs)

    recorder.record_at(None)
    prefix = fill_prefix_cache(
        model, [keys[m[0]] for m in groups.values()], pad_id, forward=forward
    )
    suffix_pos = torch.tensor([encoded[i].position - len(keys[i]) for i in order])
    recorder.record_at(suffix_pos.to(model_device(model)))
    run_on_prefix_cache(
        model,
        prefix,
        rows,
        [encoded[i].input_ids[len(keys[i]) :] for i in order],
        pad_id,
        forward=forward,
    )
    return np.array(order)


# --------------------------------------------------------------------------------------------
# Where the rows go: memory, a resumable out directory, one shard's rows of it
# --------------------------------------------------------------------------------------------


def _capture_in_memory(plan: _CapturePlan, *, progress: bool) -> HeadActivations:
    """Run every batch into an in-memory array."""
    acts = np.zeros(plan.acts_shape, dtype=plan.np_dtype)
    store = functools.partial(_store_in_memory, acts)
    _run_batches(plan, range(len(plan.batches)), store, progress=progress)
    return plan.result(acts)


def _capture_into(plan: _CapturePlan, out: Path, *, progress: bool) -> HeadActivations:
    """Stream the capture into ``out``: resume after its last finished batch (taking in what
    shards of a data-parallel capture wrote), run the rest, each batch flushed and recorded in
    ``progress.json``, then mark it complete and load it memory-mapped."""
    fingerprint, acts, done = _resume(plan, out)
    done = _merge_shards(out, acts, plan.batches, done, fingerprint)
    if done == len(plan.batches):
        log.info("%s is already complete; loading it", out)
    else:
        store = functools.partial(_store_streamed, out, acts, plan.batches, fingerprint)
        _run_batches(plan, range(done, len(plan.batches)), store, progress=progress)
        del store
    del acts
    return _finish_out(out, plan)


def _capture_shard(
    plan: _CapturePlan, out: Path, shard: tuple[int, int], *, progress: bool
) -> None:
    """Capture shard ``shard = (i, n)`` of a data-parallel capture into ``out``: the batches
    ``i, i + n, ...`` that neither ``progress.json`` nor this shard's file records, each one's
    rows written in place (:func:`_write_rows`) and recorded with its checksum in the shard's
    file (the driver merges them, :func:`_merge_shards`)."""
    fingerprint, acts, done = _resume(plan, out)
    del acts  # a shard writes its rows with positioned writes (see _write_rows)
    written = _read_shard(out, shard, fingerprint)
    todo = [b for b in range(done, len(plan.batches)) if b % shard[1] == shard[0]]
    todo = [b for b in todo if b not in written]
    if todo:
        store = functools.partial(_store_shard, out, shard, fingerprint)
        _run_batches(plan, todo, store, progress=progress)


def _store_in_memory(acts: np.ndarray, bi: int, idx: np.ndarray, rows: np.ndarray) -> None:
    """A :data:`_RowStore` into ``acts``."""
    acts[idx] = rows


def _store_streamed(
    out: Path,
    acts: np.memmap,
    batches: Sequence[np.ndarray],
    fingerprint: str,
    bi: int,
    idx: np.ndarray,
    rows: np.ndarray,
) -> None:
    """A :data:`_RowStore` into the memmap of ``out``: flushed, then recorded as done in
    ``progress.json`` with its checksum."""
    acts[idx] = rows
    acts.flush()
    _mark_done(out, acts, batches, bi, fingerprint)


def _store_shard(
    out: Path,
    shard: tuple[int, int],
    fingerprint: str,
    bi: int,
    idx: np.ndarray,
    rows: np.ndarray,
) -> None:
    """A :data:`_RowStore` of a shard: positioned writes into ``out``'s ``acts.npy``, recorded
    with their checksum in the shard's file."""
    _write_rows(out, idx, rows)
    _record_shard(out, shard, fingerprint, bi, idx, rows)


# --------------------------------------------------------------------------------------------
# A resumable out directory: acts.npy memmap + meta.json + progress.json
# --------------------------------------------------------------------------------------------


def _resume(plan: _CapturePlan, out: Path) -> tuple[str, np.memmap, int]:
    """Open ``out`` for ``plan`` (create it, or verify what it holds, see :func:`_open_out`)
    under its lock: the shards of one capture may open it at once. Returns the capture's
    fingerprint, the memmap of its ``acts.npy`` and the number of batches finished."""
    fingerprint = plan.fingerprint()
    with _out_lock(out):
        acts, done = _open_out(out, plan, fingerprint)
    return fingerprint, acts, done


def _open_out(out: Path, plan: _CapturePlan, fingerprint: str) -> tuple[np.memmap, int]:
    """Open (or create) the streaming directory; return the memmap and finished batches.

    Before resuming, ``acts.npy`` must have exactly the size its header promises (a truncated
    file would otherwise be zero-extended by the memmap and read as finished rows) and every
    finished batch must still have the sha256 recorded in ``progress.json`` when it was written.
    Any mismatch raises :class:`DataError` naming the file; nothing is deleted or overwritten, so
    the user decides (delete the directory to capture again). Restarting silently would discard
    data without telling anyone.
    """
    progress_path = out / _PROGRESS_FILE
    acts_path = out / ACTS_FILE
    shape, np_dtype, batches = plan.acts_shape, plan.np_dtype, plan.batches
    n_batches = len(batches)
    again = f"Delete {out} (or pass another out= directory) and capture again."
    if progress_path.is_file() and acts_path.is_file():
        try:
            prog = json.loads(progress_path.read_text(encoding="utf-8"))
            done, total = int(prog["done"]), int(prog["total"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"unreadable progress file ({exc}). {again}", path=progress_path
            ) from exc
        if prog.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{out} holds activations of a different run (other model, examples, template, "
                "position, dtype or batch size). Delete it or pass another out= directory."
            )
        if total != n_batches or not 0 <= done <= total:
            raise DataError(
                f"progress says {done}/{total} batches, expected ?/{n_batches}. {again}",
                path=progress_path,
            )
        file_shape, file_dtype, offset = npy_layout(acts_path)
        if file_shape != shape or file_dtype != np.dtype(np_dtype):
            raise ShapeMismatchError(
                f"{acts_path} ({file_dtype})",
                shape,
                file_shape,
                f"Expected {np.dtype(np_dtype)}. {again}",
            )
        expected = offset + int(np.prod(shape)) * file_dtype.itemsize
        size = acts_path.stat().st_size
        if size != expected:
            raise DataError(
                f"the file is {size} bytes but its header promises {expected} (shape {shape}, "
                f"{file_dtype}): it was truncated or changed after the capture. {again}",
                path=acts_path,
            )
        sums = prog.get("sha256")
        if done and (not isinstance(sums, list) or len(sums) < done):
            raise DataError(
                f"no checksums of the {done} finished batches (written by an older lineage-lens "
                f"or edited), so they cannot be verified. {again}",
                path=progress_path,
            )
        acts = np.lib.format.open_memmap(acts_path, mode="r+")
        for bi in range(done):
            if _batch_digest(acts, batches[bi]) != sums[bi]:
                rows = np.sort(batches[bi])
                del acts
                raise DataError(
                    f"finished batch {bi} (rows {rows.tolist()}) does not match its checksum in "
                    f"{progress_path.name}: the file was changed after it was written. {again}",
                    path=acts_path,
                )
        log.info("Resuming %s after %d/%d batches (checksums verified)", out, done, total)
        return acts, done
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={str(out)!r} is a file; pass a new or empty directory.")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(
            f"{out} exists and is not a resumable capture; pass an empty or new directory."
        )
    out.mkdir(parents=True, exist_ok=True)
    acts = np.lib.format.open_memmap(acts_path, mode="w+", dtype=np_dtype, shape=shape)
    plan.result().write_meta(out, complete=False)
    _write_json(
        progress_path, {"fingerprint": fingerprint, "done": 0, "total": n_batches, "sha256": []}
    )
    return acts, 0


def _batch_digest(acts: np.ndarray, rows: np.ndarray) -> str:
    """sha256 of the stored rows of one batch (in row order, so independent of capture order)."""
    return hashlib.sha256(np.ascontiguousarray(acts[np.sort(rows)]).tobytes()).hexdigest()


def _mark_done(
    out: Path, acts: np.ndarray, batches: Sequence[np.ndarray], bi: int, fingerprint: str
) -> None:
    """Record batch ``bi`` as finished in ``progress.json``, with the checksum of its rows."""
    path = out / _PROGRESS_FILE
    prog = json.loads(path.read_text())
    sums = [str(x) for x in prog.get("sha256", [])][:bi]
    sums.append(_batch_digest(acts, batches[bi]))
    _write_json(
        path, {"fingerprint": fingerprint, "done": bi + 1, "total": len(batches), "sha256": sums}
    )


def _finish_out(out: Path, plan: _CapturePlan) -> HeadActivations:
    """Mark a streamed capture complete (every batch is in ``progress.json``) and load it."""
    plan.result().write_meta(out, complete=True)
    for file in out.glob(_SHARD_GLOB):  # merged into progress.json
        file.unlink(missing_ok=True)
    return HeadActivations.load(out)


@contextlib.contextmanager
def _out_lock(out: Path) -> Iterator[None]:
    """Hold a lock beside ``out`` while it is created or checked (shards start together)."""
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(out.parent / f".{out.name}.lock"):
        yield


def _write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh)


# --------------------------------------------------------------------------------------------
# Data-parallel capture: shards on Ray workers, merged by the driver
# --------------------------------------------------------------------------------------------


def _capture_on_ray(
    model: Any,
    examples: list[ProbeExample],
    options: dict[str, Any],
    workers: int,
    address: str | None,
    progress: bool,
) -> None:
    """Run the shards of a data-parallel capture as Ray tasks (see ``workers``)."""
    from lineage_lens.cluster import ray_session, run_tasks
    from lineage_lens.models import load_arguments

    if options["out"] is None:
        raise ConfigError(
            "workers > 1 writes one memmap from every worker: pass out= (a folder every worker "
            "sees)."
        )
    load_args = load_arguments(model)
    if load_args is None:
        raise ConfigError(
            "workers > 1 loads the model again in every worker: load it with "
            "lineage_lens.models.load_model (or lineage_lens.load_model)."
        )
    device = load_args.get("device") or (str(model_device(model)))
    with ray_session(address) as ray:
        shared = ray.put(examples)
        calls = [(load_args, shared, options, (i, workers)) for i in range(workers)]
        run_tasks(
            capture_shard_task,
            calls,
            device=device,
            desc=f"hook_z on {workers} workers",
            progress=progress,
        )


def capture_shard_task(
    load_args: dict[str, Any],
    examples: list[ProbeExample],
    options: dict[str, Any],
    shard: tuple[int, int],
) -> int:
    """One Ray task of a data-parallel capture: load the model and capture shard ``shard``
    (``(i, n)``) into ``options["out"]``; returns the number of batches it wrote."""
    from lineage_lens.models import load_model

    model = load_model(**load_args)
    _capture(model, examples, progress=False, shard=shard, **options)
    return len(_read_shard(Path(options["out"]), shard, None))


def _shard_file(out: Path, shard: tuple[int, int]) -> Path:
    return out / f"shard-{shard[0]}-of-{shard[1]}.json"


def _read_shard(out: Path, shard: tuple[int, int], fingerprint: str | None) -> dict[int, str]:
    """Batches a shard has written (batch -> checksum of its rows), if its file belongs to the
    capture of ``fingerprint`` (``None``: any)."""
    path = _shard_file(out, shard)
    try:
        prog = json.loads(path.read_text(encoding="utf-8"))
        if fingerprint is not None and prog.get("fingerprint") != fingerprint:
            return {}
        return {int(k): str(v) for k, v in prog["sha256"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _record_shard(
    out: Path,
    shard: tuple[int, int],
    fingerprint: str,
    bi: int,
    idx: np.ndarray,
    rows: np.ndarray,
) -> None:
    """Record (atomically) that this shard wrote batch ``bi``, with the checksum of its rows in
    row order (what :func:`_batch_digest` of the finished memmap gives)."""
    sums = _read_shard(out, shard, fingerprint)
    order = np.argsort(np.asarray(idx), kind="stable")
    sums[bi] = hashlib.sha256(np.ascontiguousarray(rows[order]).tobytes()).hexdigest()
    _write_json(_shard_file(out, shard), {"fingerprint": fingerprint, "sha256": sums})


def _write_rows(out: Path, idx: np.ndarray, rows: np.ndarray) -> None:
    """Write ``rows`` at rows ``idx`` of ``out/acts.npy`` with positioned writes (each a
    disjoint byte range, so shards on other hosts of a shared file system cannot overwrite one
    another, as whole memory-mapped pages could), then flush them to disk."""
    path = out / ACTS_FILE
    _, dtype, offset = npy_layout(path)
    rows = np.ascontiguousarray(rows, dtype=dtype)
    size = rows[0].nbytes if len(rows) else 0
    with open(path, "r+b") as fh:
        for r, row in zip(np.asarray(idx), rows, strict=True):
            fh.seek(offset + int(r) * size)
            fh.write(row.tobytes())
        fh.flush()
        os.fsync(fh.fileno())


def _merge_shards(
    out: Path, acts: np.ndarray, batches: Sequence[np.ndarray], done: int, fingerprint: str
) -> int:
    """Record as done, in order, every batch after ``done`` that a shard of this capture wrote
    and whose rows still match the shard's checksum; the first batch missing or not matching
    stops it (this process captures the rest). Returns the new ``done``."""
    written: dict[int, str] = {}
    for file in out.glob(_SHARD_GLOB):
        try:
            prog = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(prog, dict) and prog.get("fingerprint") == fingerprint:
            written.update({int(k): str(v) for k, v in prog.get("sha256", {}).items()})
    while done < len(batches) and done in written:
        if _batch_digest(acts, batches[done]) != written[done]:
            log.warning("%s: batch %d does not match its shard's checksum; capturing it", out, done)
            break
        _mark_done(out, acts, batches, done, fingerprint)
        done += 1
    return done
