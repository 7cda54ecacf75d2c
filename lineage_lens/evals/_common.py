"""What every evaluator shares: yes/no scoring, generation, answer parsing, metrics, the cache.

Yes/no scoring (``mode="logprob"``, the default): one forward pass per prompt; at the last position
the log-probability of "Yes" is the maximum over the variants ``Yes``, `` Yes``, ``yes``, `` yes``,
``YES``, `` YES`` that are a single token of the tokenizer (likewise for "No"); the answer is "Yes"
when that beats "No". This is robust to formatting (a model that would write ``" yes."`` or
``"Yes, because"`` is scored the same) and never leaves an answer unparsed. Tokenizers in which no
variant is a single token fall back to the first token of ``"Yes"`` / ``"No"``.

Generation (``mode="generate"``): greedy decoding, then :func:`parse_yes_no` looks for the words
yes / no (case-insensitive, whole words). Outputs with neither or both are *unparsed*: they are
counted (``n_unparsed``) and excluded from the metrics; ``accuracy_all`` additionally reports the
accuracy with every unparsed output counted as wrong (the published HaluEval convention). Nothing
is ever silently mapped to "No".

Batches are left-padded with an attention mask and position ids that restart at each row's first
real token. :class:`ResultCache` stores one JSON line per scored example so that an interrupted
run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from lineage_lens._display import ShortRepr, label
from lineage_lens.batching import (
    MIN_SHARED_PREFIX,
    check_context,
    check_logits,
    fill_prefix_cache,
    logits_checked,
    model_device,
    pad_batch,
    pad_token_id,
    run_on_prefix_cache,
    shared_prefix_length,
    to_model,
)
from lineage_lens.errors import ConfigError, DataError, OutputError
from lineage_lens.fileio import atomic_open
from lineage_lens.identity import file_digests, model_fingerprint
from lineage_lens.images import (
    ImageInputs,
    greedy_generate,
    image_batch_kwargs,
    image_inputs_identity,
)
from lineage_lens.kvcache import kv_cache_ok
from lineage_lens.models import model_label
from lineage_lens.stats import METRIC_NAMES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from transformer_lens.model_bridge import TransformerBridge

    from lineage_lens.gating import TruthGate

log = logging.getLogger(__name__)

Mode = Literal["logprob", "generate"]
MODES: tuple[str, ...] = ("logprob", "generate")

YES_VARIANTS = ("Yes", " Yes", "yes", " yes", "YES", " YES")
NO_VARIANTS = ("No", " No", "no", " no", "NO", " NO")


def check_mode(mode: str) -> Mode:
    if mode not in MODES:
        raise ConfigError(f"mode must be 'logprob' or 'generate', got {mode!r}.")
    return mode  # type: ignore[return-value]


def check_sequence(value: object, name: str) -> tuple[Any, ...]:
    """``value`` (a list, tuple or other iterable, not a string) as a tuple, else a
    :class:`ConfigError` naming the option ``name``."""
    if isinstance(value, (str, bytes, Path)) or not isinstance(value, Iterable):
        raise ConfigError(f"{name} must be a sequence (a list or tuple), got {value!r}.")
    return tuple(value)


def check_options(evaluator: type, options: Mapping[str, Any], caller: str) -> None:
    """Raise :class:`ConfigError` naming every key of ``options`` that is not a field of the
    dataclass ``evaluator`` (the options of ``caller``), with the valid fields."""
    names = [f.name for f in dataclasses.fields(evaluator)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ConfigError(
            f"{caller}() got unknown option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}; its options are the fields of "
            f"{evaluator.__name__}: {', '.join(names)}."
        )


# ------------------------------------------------------------------------------ tokens
def _single_token_ids(tokenizer: Any, variants: Sequence[str]) -> list[int]:
    ids: list[int] = []
    for v in variants:
        toks = tokenizer(v, add_special_tokens=False).input_ids
        unk = getattr(tokenizer, "unk_token_id", None)
        if len(toks) == 1 and toks[0] != unk and toks[0] not in ids:
            ids.append(int(toks[0]))
    return ids


def yes_no_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids standing for "Yes" and for "No" (see the module docstring)."""
    yes = _single_token_ids(tokenizer, YES_VARIANTS)
    no = _single_token_ids(tokenizer, NO_VARIANTS)
    if not yes:
        yes = tokenizer("Yes", add_special_tokens=False).input_ids[:1]
    if not no:
        no = tokenizer("No", add_special_tokens=False).input_ids[:1]
    if not yes or not no or set(yes) & set(no):
        raise ConfigError(
            f"the tokenizer cannot tell 'Yes' {yes} from 'No' {no}; use mode='generate'."
        )
    return yes, no


def encode_chat(
    tokenizer: Any, user: str, *, system: str | None = None, use_chat_template: bool = True
) -> list[int]:
    """Token ids of a one-turn prompt, ready for the assistant's answer.

    With a chat template (and ``use_chat_template``), the system and user messages are rendered
    with the generation prompt; otherwise the plain text ``system + "\\n\\n" + user`` is used with
    the tokenizer's special tokens (BOS).
    """
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False).input_ids)
    text = f"{system}\n\n{user}" if system else user
    return list(tokenizer(text, add_special_tokens=True).input_ids)


def parse_yes_no(text: str) -> Literal["yes", "no"] | None:
    """``"yes"`` or ``"no"`` when exactly one of the words occurs in ``text``, else ``None``."""
    words = set(re.findall(r"[a-z]+", text.lower()))
    has_yes, has_no = "yes" in words, "no" in words
    if has_yes == has_no:
        return None
    return "yes" if has_yes else "no"


# ------------------------------------------------------------------------------ batching
@dataclass(frozen=True)
class PromptItem:
    """One prompt to score: a unique ``key``, its token ids and, for MLLMs, an image file."""

    key: str
    input_ids: tuple[int, ...]
    image: str | None = None


def prompt_identities(items: Sequence[PromptItem]) -> list[str]:
    """Per item, the content identity of what the model reads for it: its token ids (the
    question, answer and instruction text as tokenized) and its image file's bytes
    (:func:`lineage_lens.identity.file_digests`, indexed). Cached results are keyed by it, so a
    question or image changed under the same key is computed again. Labels are not part of it:
    a record is the model's answer, and the metrics are computed from the labels read anew."""
    images = [it.image for it in items if it.image is not None]
    digests = iter(file_digests(images))
    out = []
    for it in items:
        h = hashlib.sha256(np.asarray(it.input_ids, dtype=np.int64).tobytes())
        h.update(b"|" + (next(digests) if it.image is not None else "").encode())
        out.append(h.hexdigest()[:32])
    return out


def gate_context(
    model: TransformerBridge, gate: TruthGate | None
) -> contextlib.AbstractContextManager:
    """``gate.applied(model)`` or a no-op context."""
    return gate.applied(model) if gate is not None else contextlib.nullcontext()


def gate_description(gate: TruthGate | None) -> dict[str, Any] | None:
    """JSON-able description of a gate (its parameters and a digest of its gate values)."""
    if gate is None:
        return None
    digest = hashlib.sha256(gate.gates.numpy().astype(np.float32).tobytes()).hexdigest()[:16]
    return {**gate.params(), "scores_model": gate.scores.model, "gates_sha": digest}


def run_prompts(
    model: TransformerBridge,
    items: Sequence[PromptItem],
    *,
    mode: Mode = "logprob",
    batch_size: int = 8,
    max_new_tokens: int = 8,
    gate: TruthGate | None = None,
    cache: ResultCache | None = None,
    setting: Mapping[str, Any] | None = None,
    progress: bool = True,
    desc: str = "eval",
    pixel_loader: Callable[[Sequence[str]], Tensor] | None = None,
    share_prefix: bool = True,
    image_inputs: ImageInputs | None = None,
) -> dict[str, dict[str, Any]]:
    """Score or continue every prompt; return ``{key: record}``.

    Records hold ``log_p_yes``, ``log_p_no`` and ``answer`` (``"yes"``/``"no"``) in ``"logprob"``
    mode, and ``text`` plus ``answer`` (``None`` when unparsed) in ``"generate"`` mode. Items with
    an ``image`` need ``image_inputs`` (the model family's :class:`~lineage_lens.images.ImageInputs`:
    every image forward input, e.g. ``image_sizes`` or ``image_grid_thw``) or, for LLaVA-1.5-style
    models, ``pixel_loader`` (paths -> ``[batch, 3, S, S]``). With a ``cache``, records
    already stored under ``setting``, the model's content and the prompt's content (its tokens and
    image bytes, :func:`prompt_identities`) are reused and new ones appended after each batch.

    With ``share_prefix`` (logprob mode, text-only prompts), the longest token prefix common to
    all prompts (e.g. HaluEval's instruction with its few-shot examples, ~600 tokens) is run once,
    under the same gate, and its key/value cache is reused by every batch, which then runs only
    each prompt's own tokens (right-padded, positions continuing after the prefix). The logits are
    those of the full prompts (tested to float tolerance); any hooks see only the new positions.

    Every prompt, with ``max_new_tokens`` in generate mode, must fit the model's context
    (:func:`~lineage_lens.batching.check_context`: a :class:`DataError` before anything runs), and
    the logits of every forward are checked (:func:`~lineage_lens.batching.check_logits`: NaN,
    inf or all-equal logits raise :class:`~lineage_lens.errors.ModelOutputError`).
    """
    mode = check_mode(mode)
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        raise DataError("prompt keys must be unique.")
    n_new = max_new_tokens if mode == "generate" else 0
    check_context(model, [it.input_ids for it in items], keys, new_tokens=n_new)
    alpha = None if gate is None else gate.alpha
    setting = dict(setting or {})
    setting.update(
        {
            "mode": mode,
            "model": model_label(model),
            "model_sha": model_fingerprint(model),
            "gate": gate_description(gate),
        }
    )
    if mode == "generate":
        setting["max_new_tokens"] = max_new_tokens
    if image_inputs is not None:  # how image files become pixels (the processor's config)
        setting["image_inputs"] = image_inputs_identity(image_inputs)
    prefix = setting_digest(setting)
    results: dict[str, dict[str, Any]] = {}
    todo = list(items)
    cache_keys: dict[str, str] = {}
    if cache is not None:
        # the setting, then what the model reads (tokens, image bytes), then the item's key
        content = prompt_identities(items)
        cache_keys = {
            it.key: f"{prefix}:{c}:{it.key}" for it, c in zip(items, content, strict=True)
        }
        todo = []
        for it in items:
            rec = cache.get(cache_keys[it.key])
            if rec is None:
                todo.append(it)
            else:
                results[it.key] = rec
        if results:
            log.info("%s: %d of %d results from the cache", desc, len(results), len(items))
    if not todo:
        return results
    tok = model.tokenizer
    pad = pad_token_id(tok)
    device = model_device(model)
    yes_ids, no_ids = yes_no_token_ids(tok)
    eos = tok.eos_token_id
    # Sort by length so batches pad little; results are keyed, order does not matter.
    todo.sort(key=lambda it: len(it.input_ids))
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    text_only = all(it.image is None for it in todo)
    n_prefix = shared_prefix_length([it.input_ids for it in todo]) if text_only else 0
    use_prefix = share_prefix and mode == "logprob" and n_prefix >= MIN_SHARED_PREFIX
    use_prefix = use_prefix and kv_cache_ok(model)
    use_cache = mode == "generate" and kv_cache_ok(model)  # else each step runs the whole prompt
    bar = tqdm(total=len(todo), disable=not progress, desc=desc, unit="ex")
    try:
        with gate_context(model, gate), torch.inference_mode():
            if use_prefix:
                prefix_cache = fill_prefix_cache(model, [todo[0].input_ids[:n_prefix]], pad)
                log.info("%s: %d shared prefix tokens computed once", desc, n_prefix)
            for batch in batches:
                if use_prefix:
                    logits, suffixes = run_on_prefix_cache(
                        model,
                        prefix_cache,
                        [0] * len(batch),
                        [it.input_ids[n_prefix:] for it in batch],
                        pad,
                        keep_prefix=True,
                    )
                    last = (suffixes.attention_mask.sum(dim=1) - 1).to(device)
                    rows = torch.arange(len(batch), device=device)
                    logits = logits[rows, last]
                    check_logits(logits, [it.key for it in batch], alpha=alpha)
                    recs = _yes_no_records(logits, yes_ids, no_ids)
                    for it, rec in zip(batch, recs, strict=True):
                        results[it.key] = rec
                        if cache is not None:
                            cache.put(cache_keys[it.key], rec)
                    bar.update(len(batch))
                    continue
                ids, mask, pos, _ = pad_batch([it.input_ids for it in batch], pad)
                kwargs: dict[str, Any] = {"attention_mask": mask.to(device)}
                images = [it.image for it in batch]
                positions = True
                if any(im is not None for im in images):
                    if (pixel_loader is None and image_inputs is None) or any(
                        im is None for im in images
                    ):
                        raise ConfigError(
                            "prompts with images need image_inputs (or a pixel_loader) and an "
                            "image on every item."
                        )
                    if image_inputs is not None:  # the family's own inputs (lineage_lens.images)
                        extra = image_batch_kwargs(image_inputs, images, ids)
                        kwargs.update(to_model(extra, model))
                        positions = image_inputs.takes_position_ids
                    else:
                        kwargs["pixel_values"] = pixel_loader(images).to(device)  # type: ignore[misc,arg-type]
                if mode == "logprob":
                    if positions:
                        kwargs["position_ids"] = pos.to(device)
                    logits = model(ids.to(device), **kwargs)[:, -1]
                    check_logits(logits, [it.key for it in batch], alpha=alpha)
                    recs = _yes_no_records(logits, yes_ids, no_ids)
                else:
                    # every step's logits are checked (check_logits)
                    checked = logits_checked(model, [it.key for it in batch], alpha=alpha)
                    if image_inputs is not None and any(im is not None for im in images):
                        # image prompts decode in lineage_lens.images (TransformerLens' generate
                        # mishandles some families' image inputs)
                        with checked:
                            new_tokens = greedy_generate(
                                model,
                                ids,
                                mask,
                                image_inputs,
                                images,
                                max_new_tokens,
                                eos_token_id=eos,
                                use_cache=use_cache,
                            )
                    else:
                        with checked:
                            out = model.generate(
                                ids.to(device),
                                max_new_tokens=max_new_tokens,
                                do_sample=False,
                                verbose=False,
                                return_type="tokens",
                                use_past_kv_cache=use_cache,
                                **kwargs,
                            )
                        new_tokens = out[:, ids.shape[1] :]
                    recs = []
                    for row in new_tokens.tolist():
                        if eos is not None and eos in row:
                            row = row[: row.index(eos)]
                        text = tok.decode(row, skip_special_tokens=True)
                        recs.append({"text": text, "answer": parse_yes_no(text)})
                for it, rec in zip(batch, recs, strict=True):
                    results[it.key] = rec
                    if cache is not None:
                        cache.put(cache_keys[it.key], rec)
                bar.update(len(batch))
    finally:
        bar.close()
    return results


def _yes_no_records(
    logits: Float[Tensor, "batch vocab"], yes_ids: list[int], no_ids: list[int]
) -> list[dict[str, Any]]:
    logp = torch.log_softmax(logits.float(), dim=-1)
    p_yes = logp[:, yes_ids].max(dim=-1).values.cpu().numpy()
    p_no = logp[:, no_ids].max(dim=-1).values.cpu().numpy()
    return [
        {"log_p_yes": float(y), "log_p_no": float(n), "answer": "yes" if y > n else "no"}
        for y, n in zip(p_yes, p_no, strict=True)
    ]


# ------------------------------------------------------------------------------ cache
def setting_digest(setting: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-able setting (the cache key prefix)."""
    return hashlib.sha256(json.dumps(setting, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def _ends_with_newline(path: Path) -> bool:
    """Whether a file is empty or its last byte is a newline."""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        if fh.tell() == 0:
            return True
        fh.seek(-1, 2)
        return fh.read(1) == b"\n"


class ResultCache:
    """A per-example result cache: one JSON line ``{"key": ..., "record": {...}}`` per result.

    Lines are appended and flushed after each batch (an append-only log, so it is not written
    atomically); a truncated last line from an interrupted run is ignored on reading.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._data: dict[str, dict[str, Any]] = {}
        if self.path.is_dir():
            raise OutputError(f"cannot use {self.path} as a cache file: it is a directory.")
        if self.path.is_file():
            try:
                with open(self.path, "rb") as fh:
                    lines = fh.read().split(b"\n")
            except OSError as exc:
                raise DataError(
                    f"cannot read the cache ({exc.strerror or exc}).", path=path
                ) from exc
            for lineno, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line.decode("utf-8"))
                    self._data[str(obj["key"])] = dict(obj["record"])
                except (ValueError, KeyError, TypeError, RecursionError):  # incl. non-UTF-8
                    log.warning("%s:%d: unreadable cache line ignored", self.path, lineno)
        self._fh: Any = None
        self._torn = False

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._data.get(key)

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        line = json.dumps({"key": key, "record": record}) + "\n"
        try:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._torn = self.path.is_file() and not _ends_with_newline(self.path)
                self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            # After a torn last line (an interrupted run, a full disk), start on a fresh line so
            # that only the torn line is lost, not this record too.
            self._fh.write("\n" + line if self._torn else line)
            self._fh.flush()
            self._torn = False
        except OSError as exc:  # disk full, no permission, ...: a truncated last line is ignored
            self._torn = True
            raise OutputError(
                f"cannot append to the result cache {self.path}: {exc.strerror or exc}; free "
                "disk space or pass another output directory (finished results stay cached)."
            ) from exc
        self._data[key] = dict(record)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ResultCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


@contextlib.contextmanager
def maybe_cache(cache: ResultCache | str | Path | None) -> Iterator[ResultCache | None]:
    """Open a cache from a path (closing it afterwards), or pass an open one / ``None`` through."""
    if cache is None or isinstance(cache, ResultCache):
        yield cache
        return
    with ResultCache(cache) as c:
        yield c


# ------------------------------------------------------------------------------ results
@dataclass(repr=False)
class EvalResult(ShortRepr):
    """Results of a yes/no evaluation (HaluEval or POPE).

    Attributes:
        task: ``"halueval"`` or ``"pope"``.
        metrics: one row per group (HaluEval: per answer seed; POPE: per split) with ``accuracy,
            precision, recall, f1, yes_ratio, n, n_unparsed, accuracy_all``.
        examples: one row per example: its key, group, label, prediction and scores or text.
        config: how it was run (model, mode, gate, ...).
    """

    task: str
    metrics: pd.DataFrame
    examples: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """The per-group metrics."""
        return self.metrics.copy()

    def _metric_names(self) -> tuple[str, ...]:
        extra = ("auroc",) if "auroc" in self.metrics.columns else ()
        return (*METRIC_NAMES, "accuracy_all", *extra)

    def summary(self) -> dict[str, float]:
        """Mean and (sample) standard deviation of each metric over the groups."""
        out: dict[str, float] = {}
        for name in self._metric_names():
            vals = self.metrics[name].astype(float)
            out[name] = float(vals.mean())
            out[f"{name}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out["n"] = float(self.metrics["n"].sum())
        out["n_unparsed"] = float(self.metrics["n_unparsed"].sum())
        return out

    def summary_text(self) -> str:
        s = self.summary()
        parts = [f"{k} {s[k]:.4f} ± {s[k + '_std']:.4f}" for k in self._metric_names()]
        return (
            f"{self.task} ({len(self.metrics)} groups, n={int(s['n'])}, "
            f"unparsed={int(s['n_unparsed'])}): " + ", ".join(parts)
        )

    def _repr_fields(self) -> list[tuple[str, str]]:
        fields = [
            ("task", repr(self.task)),
            ("model", label(self.config.get("model"))),
            ("mode", label(self.config.get("mode"))),
            ("groups", str(len(self.metrics))),
        ]
        if self.metrics.empty or not set(METRIC_NAMES) <= set(self.metrics.columns):
            return fields
        s = self.summary()
        fields.append(("n", str(int(s["n"]))))
        fields += [(k, f"{s[k]:.4f} ± {s[k + '_std']:.4f}") for k in ("accuracy", "f1")]
        return [*fields, ("unparsed", str(int(s["n_unparsed"])))]

    def save(self, path: str | Path) -> Path:
        """Write everything as one JSON file (atomically)."""
        payload = {
            "task": self.task,
            "config": self.config,
            "summary": self.summary(),
            "metrics": self.metrics.to_dict(orient="records"),
            "examples": self.examples.to_dict(orient="records"),
        }
        with atomic_open(path, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=1, default=str)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> EvalResult:
        p = Path(path)
        if not p.is_file():
            raise DataError("result file not found.", path=p)
        d = json.loads(p.read_text(encoding="utf-8"))
        return cls(d["task"], pd.DataFrame(d["metrics"]), pd.DataFrame(d["examples"]), d["config"])

    def plot(self, ax: Axes | None = None) -> Axes:
        """Bar chart of the mean metrics with their standard deviation as error bars."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3))
        s = self.summary()
        ax.bar(
            list(METRIC_NAMES),
            [s[k] for k in METRIC_NAMES],
            yerr=[s[k + "_std"] for k in METRIC_NAMES],
            capsize=3,
        )
        ax.set_ylim(0, 1)
        ax.set_title(f"{self.task} (n={int(s['n'])})")
        return ax
