"""Per-head activations at one token: the probing features of TruthProbe.

For every example the prompt (see :mod:`lineage_lens.data`) is tokenized with the model's own
Hugging Face tokenizer, run through the model in padded batches, and ``blocks.{l}.attn.hook_z``
(each head's output before ``W_O``) is kept **only at the probed token** — by default the answer's
last token. Nothing of shape ``[batch, pos, ...]`` is cached, and the forward pass stops right
after the last layer's ``hook_z`` (the last MLP, the final norm and the unembedding never run).
Examples whose tokens before the answer are identical (HaluEval's truthful and hallucinated answer
to one context and question) share one pass over that prefix: its key/value cache is reused for
each answer (``share_prefix=True``, the default).

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

Typical use::

    model = load_model("smollm2-135m-instruct")
    examples = halueval_probe_examples(split_probe_eval(load_halueval_qa())[0])
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
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from lineage_lens._display import ShortRepr, label
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
    as_probe_examples,
)
from lineage_lens.errors import ConfigError, DataError, ShapeMismatchError
from lineage_lens.fileio import atomic_open, atomic_path
from lineage_lens.identity import image_identities, model_fingerprint
from lineage_lens.images import (
    ImageInputs,
    image_batch_kwargs,
    image_inputs,
    image_inputs_identity,
    is_multimodal,
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
_ACTS_FILE = "acts.npy"
_META_FILE = "meta.json"
_PROGRESS_FILE = "progress.json"


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@dataclass(repr=False)
class HeadActivations(ShortRepr):
    """Per-head vectors of ``n`` examples at one token position, with their labels.

    Attributes:
        acts: ``[n, n_layers, n_heads, d_head]``; ``acts[i, l, h]`` is ``blocks.{l}.attn.hook_z``
            of example ``i``, head ``h``, at the probed token. A numpy array or memmap.
        labels: ``[n]`` ints, 1 = truthful, 0 = hallucinated.
        source_ids: source row of each example (examples of one row share it).
        model, template, position, dtype: provenance of the capture.
        token_positions: ``[n]`` index of the probed token in the example's own (unpadded) tokens.
        n_tokens: ``[n]`` number of tokens of each prompt.
        meta: further provenance (JSON-serialisable), e.g. ``geometry`` and ``prepend_bos``.
    """

    acts: Float[np.ndarray, "n layer head d_head"]
    labels: Int[np.ndarray, " n"]
    source_ids: list[str]
    model: str = ""
    template: str = ""
    position: str = "answer_last"
    dtype: str = "float16"
    token_positions: Int[np.ndarray, " n"] | None = None
    n_tokens: Int[np.ndarray, " n"] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.acts, np.ndarray):
            self.acts = np.asarray(self.acts)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.source_ids = [str(s) for s in self.source_ids]
        if self.acts.ndim != 4:
            raise ShapeMismatchError(
                "HeadActivations.acts", "[n, n_layers, n_heads, d_head]", tuple(self.acts.shape)
            )
        n = self.acts.shape[0]
        for name in ("labels", "token_positions", "n_tokens"):
            arr = getattr(self, name)
            if arr is not None and np.asarray(arr).shape != (n,):
                raise ShapeMismatchError(
                    f"HeadActivations.{name}", (n,), np.asarray(arr).shape, "one per example."
                )
        if len(self.source_ids) != n:
            raise ShapeMismatchError("HeadActivations.source_ids", (n,), (len(self.source_ids),))

    def __len__(self) -> int:
        return int(self.acts.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.acts.shape[1])

    @property
    def n_heads(self) -> int:
        return int(self.acts.shape[2])

    @property
    def d_head(self) -> int:
        return int(self.acts.shape[3])

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_layers, n_heads)``: the shape of the Truth Scores fitted on these activations."""
        return (self.n_layers, self.n_heads)

    @property
    def geometry(self) -> HeadGeometry | None:
        """The model's :class:`HeadGeometry` when it was recorded at capture time."""
        g = self.meta.get("geometry")
        return HeadGeometry(**g) if g else None

    def head(self, layer: int, head: int) -> Float[np.ndarray, "n d_head"]:
        """Features of one head, ``[n, d_head]`` as float32 (what a probe is fitted on)."""
        return np.asarray(self.acts[:, layer, head, :], dtype=np.float32)

    def subset(self, index: Sequence[int] | np.ndarray) -> HeadActivations:
        """The examples at ``index`` (a new in-memory object)."""
        idx = np.asarray(index)
        pick = lambda a: None if a is None else np.asarray(a)[idx]  # noqa: E731
        return HeadActivations(
            acts=np.asarray(self.acts[idx]),
            labels=self.labels[idx],
            source_ids=[self.source_ids[i] for i in idx.tolist()],
            model=self.model,
            template=self.template,
            position=self.position,
            dtype=self.dtype,
            token_positions=pick(self.token_positions),
            n_tokens=pick(self.n_tokens),
            meta=dict(self.meta),
        )

    def _repr_fields(self) -> list[tuple[str, str]]:
        n_true = int(self.labels.sum())
        kind = "memmap" if isinstance(self.acts, np.memmap) else "in memory"
        return [
            ("model", label(self.model)),
            ("n", str(len(self))),
            ("shape", f"{self.shape} (d_head {self.d_head})"),
            ("acts", f"{self.acts.dtype} {kind}"),
            ("labels", f"{n_true} truthful / {len(self) - n_true} hallucinated"),
            ("sources", str(len(set(self.source_ids)))),
            ("position", repr(self.position)),
        ]

    def to_frame(self) -> pd.DataFrame:
        """One row per example: ``label``, ``source_id``, ``token_position``, ``n_tokens``."""
        df = pd.DataFrame({"label": self.labels, "source_id": self.source_ids})
        if self.token_positions is not None:
            df["token_position"] = self.token_positions
        if self.n_tokens is not None:
            df["n_tokens"] = self.n_tokens
        df.index.name = "example"
        return df

    def _meta_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels.tolist(),
            "source_ids": self.source_ids,
            "model": self.model,
            "template": self.template,
            "position": self.position,
            "dtype": self.dtype,
            "token_positions": None
            if self.token_positions is None
            else np.asarray(self.token_positions).tolist(),
            "n_tokens": None if self.n_tokens is None else np.asarray(self.n_tokens).tolist(),
            "meta": self.meta,
        }

    @classmethod
    def _from_meta(cls, acts: np.ndarray, meta: dict[str, Any]) -> HeadActivations:
        return cls(
            acts=acts,
            labels=np.asarray(meta["labels"]),
            source_ids=meta["source_ids"],
            model=meta.get("model", ""),
            template=meta.get("template", ""),
            position=meta.get("position", "answer_last"),
            dtype=meta.get("dtype", str(acts.dtype)),
            token_positions=None
            if meta.get("token_positions") is None
            else np.asarray(meta["token_positions"]),
            n_tokens=None if meta.get("n_tokens") is None else np.asarray(meta["n_tokens"]),
            meta=meta.get("meta", {}),
        )

    def save(self, path: str | Path) -> Path:
        """Write to ``path``: a ``.npz`` file, or else a directory (``acts.npy`` + ``meta.json``).

        Both are written atomically. A directory can be opened memory-mapped by :meth:`load`.
        """
        path = Path(path)
        meta = self._meta_dict()
        if path.suffix == ".npz":
            with atomic_path(path) as tmp:
                np.savez(tmp, acts=np.asarray(self.acts), meta=np.array(json.dumps(meta)))
            return path
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / _ACTS_FILE) as tmp:
            np.save(tmp, np.asarray(self.acts))
        _write_json(path / _META_FILE, {**meta, "complete": True})
        return path

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = True) -> HeadActivations:
        """Read what :meth:`save` or ``collect_head_activations(out=...)`` wrote.

        Directories are memory-mapped read-only unless ``mmap=False``.
        """
        path = Path(path)
        if path.is_file() and path.suffix == ".npz":
            try:
                with np.load(path, allow_pickle=False) as z:
                    if "acts" not in z or "meta" not in z:
                        raise DataError(
                            "not a HeadActivations .npz (needs 'acts' and 'meta').", path=path
                        )
                    return cls._from_meta(z["acts"], json.loads(str(z["meta"])))
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                if isinstance(exc, DataError):
                    raise
                raise DataError(f"unreadable .npz ({exc}); is it truncated?", path=path) from exc
        meta_path = path / _META_FILE
        if not meta_path.is_file() or not (path / _ACTS_FILE).is_file():
            raise DataError(
                f"not a HeadActivations directory or .npz file (needs {_ACTS_FILE} and "
                f"{_META_FILE}).",
                path=path,
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"unreadable meta file ({exc}).", path=meta_path) from exc
        if not isinstance(meta, dict) or not meta.get("complete", False):
            raise DataError(
                "the capture in this directory is incomplete; call collect_head_activations "
                "again with the same out= to resume it.",
                path=path,
            )
        acts_path = path / _ACTS_FILE
        shape, dtype, offset = _npy_layout(acts_path)
        if acts_path.stat().st_size != offset + int(np.prod(shape)) * dtype.itemsize:
            raise DataError(
                f"the file is {acts_path.stat().st_size} bytes, not the "
                f"{offset + int(np.prod(shape)) * dtype.itemsize} its header promises (shape "
                f"{shape}, {dtype}): it was truncated or changed. Capture it again.",
                path=acts_path,
            )
        acts = np.load(acts_path, mmap_mode="r" if mmap else None)
        return cls._from_meta(acts, meta)


def _write_json(path: Path, obj: Any) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh)


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


class _StopForwardError(Exception):
    """Raised inside the last needed hook to skip the rest of the forward pass."""


def _fingerprint(parts: dict[str, Any], encoded: Sequence[EncodedPrompt], labels) -> str:
    h = hashlib.sha256(json.dumps(parts, sort_keys=True).encode())
    for e, y in zip(encoded, labels, strict=True):
        h.update(np.asarray(e.input_ids, dtype=np.int64).tobytes())
        h.update(f"|{e.position}|{y};".encode())
    return h.hexdigest()[:32]


def prefix_keys(encoded: Sequence[EncodedPrompt]) -> list[tuple[int, ...]]:
    """Per example, the tokens before its answer (empty when it has no answer span, a prefix
    shorter than :data:`MIN_SHARED_PREFIX`, or the probed token inside that prefix)."""
    keys = []
    for e in encoded:
        start = e.answer_tokens[0]
        ok = MIN_SHARED_PREFIX <= start <= e.position and start < len(e.input_ids)
        keys.append(tuple(e.input_ids[:start]) if ok else ())
    return keys


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
        examples = as_probe_examples(examples)
        _capture_on_ray(model, examples, options, workers, address, progress)
    result = _capture(model, examples, progress=progress, shard=None, **options)
    assert result is not None  # only a shard returns nothing
    return result


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
    file (nothing returned)."""
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
    examples = as_probe_examples(examples)
    if not examples:
        raise DataError("no examples to collect activations for; load a dataset first.")
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError("the model has no tokenizer; load it with load_model().")
    pad_id = pad_token_id(tokenizer)

    condition = _resolve_condition(model, examples, condition)
    img_in: ImageInputs | None = None
    images: list[Any] = []
    if condition in IMAGE_CONDITIONS:
        img_in = image_inputs(model)
        template = _as_template(
            LLAVA_PROBE_TEMPLATE if prompt_template is None else prompt_template
        )
        if not getattr(template, "has_image", False):
            raise ConfigError(
                f"condition {condition!r} needs a PromptTemplate with an {{image}} field (e.g. "
                "lineage_lens.data.LLAVA_PROBE_TEMPLATE); got "
                f"{getattr(template, 'name', template)!r}."
            )
        black = img_in.black_image() if condition == "black_image" else None
        images = [ex.image if black is None else black for ex in examples]
    else:
        template = _as_template(prompt_template)
    geo = head_geometry(model)
    L, H, D = geo.n_layers, geo.n_heads, geo.d_head
    n = len(examples)
    labels = np.array([ex.label for ex in examples], dtype=np.int64)
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

    lengths = np.array([len(e.input_ids) for e in encoded])
    keys = prefix_keys(encoded) if share_prefix and img_in is None else [()] * n
    if any(keys) and not kv_cache_ok(model):
        keys = [()] * n  # the cache cannot be trusted here: full prompts (lineage_lens.kvcache)
    if any(keys):
        batches = _grouped_batches(keys, lengths, batch_size, sort_by_length)
    else:
        order = np.arange(n)
        if sort_by_length:
            order = np.argsort(-lengths, kind="stable")  # longest first: memory errors show early
        batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]

    def make_result(acts: np.ndarray) -> HeadActivations:
        return HeadActivations(
            acts=acts,
            labels=labels,
            source_ids=[ex.source_id for ex in examples],
            model=model_label(model),
            template=template.name,
            position=position,
            dtype=str(dtype).removeprefix("torch."),
            token_positions=np.array([e.position for e in encoded], dtype=np.int64),
            n_tokens=np.array([len(e.input_ids) for e in encoded], dtype=np.int64),
            meta={
                "geometry": geo.to_dict(),
                "prepend_bos": prepend_bos,
                "template": template.to_dict(),
                "hook": "blocks.{l}.attn.hook_z",
                "padding_side": padding_side,
                "batch_size": batch_size,
                "condition": condition,
                "image_inputs": None if img_in is None else img_in.describe(),
            },
        )

    # What a resumed capture must match: the model's content, the settings, every prompt's
    # tokens and label, and every image's content (a file's bytes, not its path).
    fingerprint = ""
    if out is not None:
        fingerprint = _fingerprint(
            {
                "model": model_label(model),
                "model_sha": model_fingerprint(model),
                "image_inputs": None if img_in is None else image_inputs_identity(img_in),
                "geometry": geo.to_dict(),
                "template": template.to_dict(),
                "position": position,
                "dtype": str(dtype),
                "batch_size": batch_size,
                "sort": sort_by_length,
                "share_prefix": bool(any(keys)),
                "condition": condition,
                "images": image_identities(images),
            },
            encoded,
            labels,
        )

    done = 0
    todo = list(range(len(batches)))
    if out is None:
        acts = np.zeros((n, L, H, D), dtype=_NP_DTYPES[dtype])
    else:
        with _out_lock(Path(out)):  # shards of one capture may open it at once
            acts, done = _open_out(
                Path(out),
                make_result(np.zeros((n, 0, 0, 0))),
                (L, H, D),
                _NP_DTYPES[dtype],
                fingerprint,
                batches,
            )
        if shard is not None:
            written = _read_shard(Path(out), shard, fingerprint)
            todo = [b for b in range(done, len(batches)) if b % shard[1] == shard[0]]
            todo = [b for b in todo if b not in written]
            del acts  # a shard writes its rows with positioned writes (see _write_rows)
            acts = np.zeros((0, L, H, D), dtype=_NP_DTYPES[dtype])
            if not todo:
                return None
        else:
            done = _merge_shards(Path(out), acts, batches, done, fingerprint)
            todo = list(range(done, len(batches)))
            if done == len(batches):
                log.info("%s is already complete; loading it", out)
                del acts
                _finish_out(Path(out), make_result(np.zeros((n, 0, 0, 0))))
                return HeadActivations.load(out)

    device = model_device(model)
    # One small [batch, L, H, d_head] buffer on the model's device, copied to the host once per batch.
    rows = max(len(b) for b in batches)  # not batch_size: batch_size=10**9 must not allocate it
    buf = torch.zeros((rows, L, H, D), dtype=torch.float32, device=device)
    state: dict[str, Any] = {}

    def make_hook(layer: int):
        def hook_fn(z: Tensor, hook: Any) -> None:
            b = z.shape[0]
            if z.ndim == 3 and z.shape[-1] == H * D:
                z = z.view(b, z.shape[1], H, D)
            if z.ndim != 4 or z.shape[2:] != (H, D):
                raise ShapeMismatchError(
                    f"{hook.name}", "[batch, pos, n_heads, d_head]", tuple(z.shape)
                )
            if state["capture"]:
                pos = state["pos"].to(z.device)
                buf[:b, layer] = z[torch.arange(b, device=z.device), pos].float()
            if layer == L - 1 and (stop_early or not state["capture"]):
                raise _StopForwardError  # a prefix pass only needs the caches, filled by now

        return hook_fn

    hooks = [(attn_hook_name(layer, "hook_z"), make_hook(layer)) for layer in range(L)]
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
                idx = batches[bi]
                if keys[idx[0]] and len({keys[i] for i in idx}) < len(idx):
                    idx = _forward_shared(model, hooks, state, encoded, keys, idx, pad_id)
                else:
                    batch = pad_batch([encoded[i].input_ids for i in idx], pad_id, padding_side)
                    pos = batch.offsets + torch.tensor([encoded[i].position for i in idx])
                    state["pos"], state["capture"] = pos.to(device), True
                    kwargs: dict[str, Any] = {"attention_mask": batch.attention_mask.to(device)}
                    if padding_side == "left" and (img_in is None or img_in.takes_position_ids):
                        kwargs["position_ids"] = batch.position_ids.to(device)
                    if img_in is not None:
                        batch_images = [images[i] for i in idx]
                        extra = image_batch_kwargs(img_in, batch_images, batch.input_ids)
                        kwargs.update(to_model(extra, model))
                    with contextlib.suppress(_StopForwardError):
                        model.run_with_hooks(batch.input_ids.to(device), fwd_hooks=hooks, **kwargs)
                rows = buf[: len(idx)].cpu().numpy().astype(acts.dtype, copy=False)
                if shard is not None:
                    _write_rows(Path(out), idx, rows)
                    _record_shard(Path(out), shard, fingerprint, bi, idx, rows)
                    bar.update()
                    continue
                acts[idx] = rows
                if out is not None:
                    acts.flush()
                    _mark_done(Path(out), acts, batches, bi, fingerprint)
                bar.update()
    finally:
        bar.close()

    if shard is not None:
        return None
    if out is not None:
        del acts
        _finish_out(Path(out), make_result(np.zeros((n, 0, 0, 0))))
        return HeadActivations.load(out)
    return make_result(acts)


def _finish_out(out: Path, result: HeadActivations) -> None:
    """Mark a streamed capture complete (every batch is in ``progress.json``)."""
    _write_json(out / _META_FILE, {**result._meta_dict(), "complete": True})
    for file in out.glob(_SHARD_GLOB):  # merged into progress.json
        file.unlink(missing_ok=True)


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


def _forward_shared(
    model: Any,
    hooks: list[tuple[str, Any]],
    state: dict[str, Any],
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
            model.run_with_hooks(ids, fwd_hooks=hooks, **kwargs)

    state["capture"] = False
    prefix = fill_prefix_cache(
        model, [keys[m[0]] for m in groups.values()], pad_id, forward=forward
    )
    suffix_pos = torch.tensor([encoded[i].position - len(keys[i]) for i in order])
    state["pos"], state["capture"] = suffix_pos.to(model_device(model)), True
    run_on_prefix_cache(
        model,
        prefix,
        rows,
        [encoded[i].input_ids[len(keys[i]) :] for i in order],
        pad_id,
        forward=forward,
    )
    return np.array(order)


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


_SHARD_GLOB = "shard-*-of-*.json"


def _shard_file(out: Path, shard: tuple[int, int]) -> Path:
    return out / f"shard-{shard[0]}-of-{shard[1]}.json"


@contextlib.contextmanager
def _out_lock(out: Path) -> Iterator[None]:
    """Hold a lock beside ``out`` while it is created or checked (shards start together)."""
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(out.parent / f".{out.name}.lock"):
        yield


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
    path = out / _ACTS_FILE
    _, dtype, offset = _npy_layout(path)
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


def _npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, offset of the data)`` from a ``.npy`` header, or a :class:`DataError`."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(fh)
            return tuple(shape), np.dtype(dtype), fh.tell()
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(
            f"unreadable .npy header ({exc}); the capture cannot be resumed. Delete "
            f"{path.parent} (or pass another out= directory) and capture again.",
            path=path,
        ) from exc


def _open_out(
    out: Path,
    result: HeadActivations,
    geometry: tuple[int, int, int],
    np_dtype: type,
    fingerprint: str,
    batches: Sequence[np.ndarray],
) -> tuple[np.memmap, int]:
    """Open (or create) the streaming directory; return the memmap and finished batches.

    Before resuming, ``acts.npy`` must have exactly the size its header promises (a truncated
    file would otherwise be zero-extended by the memmap and read as finished rows) and every
    finished batch must still have the sha256 recorded in ``progress.json`` when it was written.
    Any mismatch raises :class:`DataError` naming the file; nothing is deleted or overwritten, so
    the user decides (delete the directory to capture again). Restarting silently would discard
    data without telling anyone.
    """
    progress_path = out / _PROGRESS_FILE
    acts_path = out / _ACTS_FILE
    shape = (len(result), *geometry)
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
        file_shape, file_dtype, offset = _npy_layout(acts_path)
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
    _write_json(out / _META_FILE, {**result._meta_dict(), "complete": False})
    _write_json(
        progress_path, {"fingerprint": fingerprint, "done": 0, "total": n_batches, "sha256": []}
    )
    return acts, 0
