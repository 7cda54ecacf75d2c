"""Attention to evidence: how much each head attends from the answer to the supporting context.

For every prompt, the attention pattern row of one *query* token (by default the prompt's last
token, i.e. the token from which the next one is generated; for probing prompts the answer's last
token) is summed over the *evidence* key tokens:

* for HaluEval, the knowledge sentence(s) that contain the right answer
  (:func:`halueval_evidence_spans`, :func:`halueval_attention_inputs`);
* for a multimodal model, the image-token span or a region of it (``image_evidence=True``).

Only the needed query row of ``blocks.{l}.attn.hook_pattern`` is kept; full patterns are never
stored. :func:`relative_evidence_attention` is the variant of the paper's Section 5: attention
under a specific query divided by attention under a generic query ("Describe the image.").

Typical use::

    prompts, spans, ends = halueval_attention_inputs(load_halueval_qa(limit=50))
    att = evidence_attention(model, prompts, spans, query_char_ends=ends)
    compare_scores(att, truth_scores).summary()  # lineage_lens.lineage
    att.plot_topk(truth_scores, k=10)
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from lineage_lens._display import label
from lineage_lens.batching import check_context, model_device, pad_batch, pad_token_id, to_model
from lineage_lens.errors import ConfigError, DataError, ShapeMismatchError
from lineage_lens.headmap import HeadMap
from lineage_lens.images import image_batch_kwargs, image_inputs
from lineage_lens.models import attn_hook_name, head_geometry, model_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from lineage_lens.data import HaluEvalRow, PromptTemplate

log = logging.getLogger(__name__)

Span = tuple[int, int]

# --------------------------------------------------------------------------------------------
# Evidence spans for HaluEval
# --------------------------------------------------------------------------------------------

# A sentence ends at . ! ? (optionally followed by a closing quote/bracket) when what follows
# starts a new sentence: whitespace then a capital letter, digit or quote, or -- as HaluEval
# concatenates its knowledge sentences without a space ("...century.First for Women...") -- directly
# a capital letter or quote (so "3.5" is not split).
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?(?:\s+(?=[A-Z0-9\"“])|(?=[A-Z\"“]))")
_WORD = re.compile(r"\w+")


def sentence_spans(text: str) -> list[Span]:
    """Character spans of the sentences of ``text`` (leading/trailing whitespace excluded)."""
    spans: list[Span] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        end = m.start() + len(m.group(0).rstrip())
        if end > start:
            spans.append((start, end))
        start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    out = []
    for s, e in spans:
        seg = text[s:e]
        s2 = s + (len(seg) - len(seg.lstrip()))
        e2 = e - (len(seg) - len(seg.rstrip()))
        if e2 > s2:
            out.append((s2, e2))
    return out


def halueval_evidence_spans(knowledge: str, right_answer: str) -> list[Span]:
    """Spans of the ``knowledge`` sentences that contain ``right_answer`` (case-insensitive).

    When no sentence contains the whole answer, falls back to the sentence sharing the most
    word tokens with it (ties: the first). Returns character spans within ``knowledge``.
    """
    sents = sentence_spans(knowledge)
    if not sents:
        raise DataError("empty knowledge: no evidence sentence to attend to")
    answer = right_answer.strip().lower()
    if answer:
        hits = [(s, e) for s, e in sents if answer in knowledge[s:e].lower()]
        if hits:
            return hits
    words = set(_WORD.findall(answer))
    overlaps = [len(words & set(_WORD.findall(knowledge[s:e].lower()))) for s, e in sents]
    return [sents[int(np.argmax(overlaps))]]


def halueval_attention_inputs(
    rows: Sequence[HaluEvalRow],
    *,
    template: PromptTemplate | None = None,
    answer: Literal["right", "hallucinated"] = "right",
) -> tuple[list[str], list[list[Span]], list[int]]:
    """Prompts, evidence spans and query ends for :func:`evidence_attention` on HaluEval rows.

    Each row is rendered with ``template`` (default: the paper's) and the ``answer`` candidate;
    the evidence is the knowledge sentence(s) containing the *right* answer, shifted to prompt
    coordinates; the query is the answer's last token (pass the third list as
    ``query_char_ends``).
    """
    from lineage_lens.data import DEFAULT_TEMPLATE, HALLUCINATED, TRUTHFUL, ProbeExample

    if answer not in ("right", "hallucinated"):
        raise ConfigError(f"answer must be 'right' or 'hallucinated', got {answer!r}")
    template = template or DEFAULT_TEMPLATE
    prompts, spans, ends = [], [], []
    for row in rows:
        cand = row.right_answer if answer == "right" else row.hallucinated_answer
        label = TRUTHFUL if answer == "right" else HALLUCINATED
        text, pspans = template.render(
            ProbeExample(row.knowledge, row.question, cand, label, row.row_id)
        )
        c0, c1 = pspans.context
        if c1 <= c0:
            raise ConfigError("the template has no {context}: no evidence to attend to")
        ev = halueval_evidence_spans(row.knowledge, row.right_answer)
        prompts.append(text)
        spans.append([(c0 + s, c0 + e) for s, e in ev])
        ends.append(pspans.answer_end)
    return prompts, spans, ends


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@dataclass(repr=False)
class EvidenceAttention(HeadMap):
    """Per-head attention mass on evidence tokens.

    Attributes:
        values: ``[L, H]`` mean over examples (for the relative variant: the ratio of the mean
            specific to the mean generic attention).
        per_example: ``[n, L, H]`` attention mass of each example (relative: per-example ratios).
        n_evidence_tokens: ``[n]`` evidence tokens per example; query_positions: ``[n]`` token
            index of the query token.
        image_attention: optional ``[n, L, H, n_image_tokens]`` attention on each image token.
        image_grid: ``(rows, cols)`` of the image tokens, for overlays.
        kind: ``"absolute"`` or ``"relative"``; model: label.
    """

    values: Float[np.ndarray, "layer head"]
    per_example: Float[np.ndarray, "n layer head"]
    n_evidence_tokens: np.ndarray
    query_positions: np.ndarray
    image_attention: Float[np.ndarray, "n layer head image"] | None = None
    image_grid: tuple[int, int] | None = None
    kind: str = "absolute"
    model: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.per_example.shape[0])

    def head_maps(self) -> dict[str, Float[np.ndarray, "layer head"]]:
        """``attention`` (the mean over examples) and its ``std`` over examples, per head."""
        return {"attention": self.values, "std": self.per_example.std(axis=0)}

    def _provenance(self) -> list[tuple[str, str]]:
        rows = [("model", label(self.model)), ("kind", repr(self.kind)), ("n", str(len(self)))]
        if self.image_grid is not None:
            rows.append(("image grid", str(tuple(self.image_grid))))
        return rows

    def _correlation_name(self) -> str:
        return f"{self.kind} evidence attention"

    # --- I/O
    def _npz_payload(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {
            "values": self.values,
            "per_example": self.per_example,
            "n_evidence_tokens": self.n_evidence_tokens,
            "query_positions": self.query_positions,
        }
        if self.image_attention is not None:
            arrays["image_attention"] = self.image_attention
        meta = {
            "image_grid": self.image_grid,
            "kind": self.kind,
            "model": self.model,
            "meta": self.meta,
        }
        return arrays, meta

    @classmethod
    def _from_npz(
        cls, arrays: dict[str, np.ndarray], meta: dict[str, Any], path: Path
    ) -> EvidenceAttention:
        grid = meta.get("image_grid")
        return cls(
            arrays["values"],
            arrays["per_example"],
            arrays["n_evidence_tokens"],
            arrays["query_positions"],
            arrays.get("image_attention"),
            tuple(grid) if grid else None,  # type: ignore[arg-type]
            meta.get("kind", "absolute"),
            meta.get("model", ""),
            meta.get("meta", {}),
        )

    # --- plots
    def _title(self, metric: str) -> str:
        what = "attention to evidence" if metric == "attention" else f"{metric} of attention"
        return f"{self.kind} {what}: {self.model}"

    def _heatmap_style(self, metric: str, values: np.ndarray) -> dict[str, Any]:
        unit = "attention mass" if self.kind == "absolute" else "ratio"
        return {"label": unit if metric == "attention" else f"{metric} of {unit}"}

    def plot(self, *, ax: Axes | None = None) -> Axes:
        """Same as :meth:`heatmap`."""
        return self.heatmap(ax=ax)

    def plot_topk(self, scores: Any, k: int = 10, *, ax: Axes | None = None) -> Axes:
        """Evidence attention of the top-k vs the bottom-k heads by ``scores`` (box + points).

        Each point is one head's mean attention; the boxes summarise the per-example values of
        those heads.
        """
        import matplotlib.pyplot as plt

        from lineage_lens.lineage import as_score_array

        arr, _ = as_score_array(scores)
        if arr.shape != self.shape:
            raise ShapeMismatchError("scores vs attention", self.shape, arr.shape)
        flat = arr.ravel()
        if not 0 < k <= flat.size // 2:
            raise ConfigError(f"k must be in 1..{flat.size // 2}, got {k}")
        order = np.lexsort((np.arange(flat.size), -flat))
        groups = {f"top-{k}": order[:k], f"bottom-{k}": order[-k:]}
        per = self.per_example.reshape(len(self), -1)
        if ax is None:
            _, ax = plt.subplots(figsize=(4, 3.5))
        data = [per[:, idx].ravel() for idx in groups.values()]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks([1, 2], list(groups))
        rng = np.random.default_rng(0)
        for i, idx in enumerate(groups.values(), start=1):
            ax.scatter(
                i + rng.uniform(-0.12, 0.12, len(idx)), self.values.ravel()[idx], s=12, zorder=3
            )
        ax.set_ylabel("attention to evidence" if self.kind == "absolute" else "relative attention")
        ax.set_title(f"heads by score ({self.model})")
        return ax

    def plot_image_overlay(
        self,
        layer: int,
        head: int,
        *,
        example: int = 0,
        image: np.ndarray | None = None,
        ax: Axes | None = None,
        alpha: float = 0.6,
    ) -> Axes:
        """One head's attention on the image tokens, reshaped to the patch grid.

        ``image`` (``[height, width(, 3)]``) is drawn underneath when given. Needs a result
        computed with ``keep_image_attention=True``.
        """
        import matplotlib.pyplot as plt

        if self.image_attention is None or self.image_grid is None:
            raise ConfigError(
                "no per-image-token attention stored; call evidence_attention(..., "
                "image_evidence=True, keep_image_attention=True)"
            )
        grid = self.image_attention[example, layer, head].reshape(self.image_grid)
        if ax is None:
            _, ax = plt.subplots(figsize=(4, 4))
        if image is not None:
            img = np.asarray(image)
            ax.imshow(img)
            extent = (-0.5, img.shape[1] - 0.5, img.shape[0] - 0.5, -0.5)
            ax.imshow(grid, cmap="inferno", alpha=alpha, extent=extent, interpolation="nearest")
        else:
            im = ax.imshow(grid, cmap="inferno", interpolation="nearest")
            ax.figure.colorbar(im, ax=ax, label="attention")
        ax.set_title(f"L{layer}H{head} attention on image (example {example})")
        ax.set_xticks([])
        ax.set_yticks([])
        return ax


# --------------------------------------------------------------------------------------------
# Computation
# --------------------------------------------------------------------------------------------


def image_token_id(model: Any) -> int:
    """The id of the image placeholder token of a LLaVA-type model."""
    cfg = getattr(getattr(model, "original_model", None), "config", None)
    for name in ("image_token_index", "image_token_id"):
        value = getattr(cfg, name, None)
        if value is not None:
            return int(value)
    tok = model.tokenizer
    tid = tok.convert_tokens_to_ids("<image>")
    if tid is None or tid == tok.unk_token_id:
        raise ConfigError("this model has no image token; image_evidence needs a LLaVA-type model")
    return int(tid)


def _tokenize(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("evidence attention needs a fast tokenizer (offset mapping)")
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _char_spans_to_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[Span]) -> np.ndarray:
    """Tokens whose (non-empty) character range overlaps any span."""
    mask = np.zeros(len(offsets), dtype=bool)
    for i, (a, b) in enumerate(offsets):
        if b > a and any(a < e and b > s for s, e in spans):
            mask[i] = True
    return mask


def _query_from_char_end(offsets: Sequence[tuple[int, int]], end: int) -> int:
    inside = [i for i, (a, b) in enumerate(offsets) if b > a and b <= end]
    if not inside:
        raise DataError(f"no token ends at or before character {end}")
    return inside[-1]


def _region_mask(region: np.ndarray | None, n_image: int) -> np.ndarray:
    if region is None:
        return np.ones(n_image, dtype=bool)
    region = np.asarray(region, dtype=bool).ravel()
    if region.size != n_image:
        raise ShapeMismatchError("image_region", n_image, region.size, "One flag per image token.")
    return region


def plot_top_bottom(
    ax: Axes, frame: Any, by: str, k: int, *, fontsize: float | None = None
) -> list[str]:
    """Bars (mean) and points (one per head) of each ``by`` value's top-``k`` vs bottom-``k``
    heads' attention to the evidence, on ``ax``; ``frame`` holds the columns ``by``, ``group``
    (``top-k`` / ``bottom-k``) and ``attention``. Returns the ``by`` values in plotted order."""
    names = list(dict.fromkeys(frame[by]))
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        for j, (group, colour) in enumerate(((f"top-{k}", "C0"), (f"bottom-{k}", "C3"))):
            vals = frame[(frame[by] == name) & (frame["group"] == group)]["attention"]
            x = i + (j - 0.5) * 0.35
            ax.bar(x, vals.mean(), 0.33, color=colour, alpha=0.5, label=group if i == 0 else None)
            ax.scatter(x + rng.uniform(-0.08, 0.08, len(vals)), vals, s=10, color=colour)
    ax.set_xticks(range(len(names)), names, fontsize=fontsize)
    ax.set_ylabel("attention to the evidence sentence")
    return names


def evidence_attention(
    model: Any,
    prompts: Sequence[str],
    evidence_spans: Sequence[Sequence[Span]] | None = None,
    *,
    span_unit: Literal["char", "token"] = "char",
    query_positions: Sequence[int] | None = None,
    query_char_ends: Sequence[int] | None = None,
    image_evidence: bool = False,
    image_region: np.ndarray | None = None,
    pixel_values: Tensor | None = None,
    keep_image_attention: bool = False,
    batch_size: int = 8,
    progress: bool = True,
    images: Sequence[Any] | None = None,
) -> EvidenceAttention:
    """Per-head attention mass from a query token onto evidence tokens, averaged over prompts.

    Args:
        model: a ``TransformerBridge`` (language-model blocks are read).
        prompts: the texts, tokenized with the model's tokenizer (special tokens added as the HF
            model would, e.g. Llama's BOS).
        evidence_spans: per prompt, ``(start, end)`` spans of the evidence: character offsets in
            the prompt (``span_unit="char"``) or token indices (``"token"``, end exclusive).
            Omit with ``image_evidence=True``.
        query_positions: per prompt, the query token index; default: the last token.
        query_char_ends: alternatively, per prompt a character offset: the query is the last
            token ending at or before it (e.g. the answer's end, as in probing).
        image_evidence: evidence = the image placeholder tokens (LLaVA-type models); with
            ``image_region`` (one flag per image token, or a ``[rows, cols]`` mask) only a region.
        pixel_values: ``[n, 3, h, w]`` images, one per prompt (LLaVA-1.5-style models).
        images: alternatively, one image (path or PIL image) per prompt, turned into the model
            family's forward inputs by :func:`lineage_lens.images.image_inputs` (every supported
            vision-language family: ``image_sizes``, ``image_grid_thw``, token types, ...). Each
            prompt must then hold that image's tokens
            (:meth:`~lineage_lens.images.ImageInputs.image_text`).
        keep_image_attention: also store the attention on every image token (for overlays).
        batch_size: prompts per forward pass (right-padded; padding never affects real tokens
            under causal attention).

    Returns:
        :class:`EvidenceAttention` with ``values [L, H]`` and ``per_example [n, L, H]``.
    """
    n = len(prompts)
    if n == 0:
        raise DataError("no prompts")
    if not image_evidence and evidence_spans is None:
        raise ConfigError("pass evidence_spans, or image_evidence=True for image tokens")
    if evidence_spans is not None and len(evidence_spans) != n:
        raise ShapeMismatchError("evidence_spans", n, len(evidence_spans), "One list per prompt.")
    if span_unit not in ("char", "token"):
        raise ConfigError(f"span_unit must be 'char' or 'token', got {span_unit!r}")
    if query_positions is not None and query_char_ends is not None:
        raise ConfigError("pass query_positions or query_char_ends, not both")
    for name, seq in (("query_positions", query_positions), ("query_char_ends", query_char_ends)):
        if seq is not None and len(seq) != n:
            raise ShapeMismatchError(name, n, len(seq), "One per prompt.")
    if pixel_values is not None and pixel_values.shape[0] != n:
        raise ShapeMismatchError("pixel_values", n, pixel_values.shape[0], "One image per prompt.")
    if images is not None and len(images) != n:
        raise ShapeMismatchError("images", n, len(images), "One image per prompt.")
    if images is not None and pixel_values is not None:
        raise ConfigError("pass images or pixel_values, not both")
    img_in = image_inputs(model) if images is not None else None
    if keep_image_attention and not image_evidence:
        raise ConfigError("keep_image_attention needs image_evidence=True")

    geo = head_geometry(model)
    L, H = geo.shape
    tok = model.tokenizer
    img_id = image_token_id(model) if image_evidence else None

    ids_list: list[list[int]] = []
    masks: list[np.ndarray] = []
    qpos: list[int] = []
    img_pos: list[np.ndarray] = []
    for i, text in enumerate(prompts):
        ids, offsets = _tokenize(tok, text)
        if image_evidence:
            positions = np.flatnonzero(np.asarray(ids) == img_id)
            if positions.size == 0:
                raise DataError(f"prompt {i} has no image token ({img_id})")
            same_size_needed = keep_image_attention or image_region is not None
            if same_size_needed and img_pos and positions.size != img_pos[0].size:
                raise DataError(
                    "prompts have different numbers of image tokens (images of different sizes "
                    "on an any-resolution model); keep_image_attention and image_region need "
                    "images of one size"
                )
            region = _region_mask(image_region, positions.size)
            mask = np.zeros(len(ids), dtype=bool)
            mask[positions[region]] = True
            img_pos.append(positions)
        elif span_unit == "char":
            mask = _char_spans_to_mask(offsets, evidence_spans[i])  # type: ignore[index]
        else:
            mask = np.zeros(len(ids), dtype=bool)
            for s, e in evidence_spans[i]:  # type: ignore[index]
                if not 0 <= s < e <= len(ids):
                    raise DataError(f"prompt {i}: token span ({s}, {e}) outside 0..{len(ids)}")
                mask[s:e] = True
        if query_positions is not None:
            q = int(query_positions[i])
            q = q + len(ids) if q < 0 else q
            if not 0 <= q < len(ids):
                raise DataError(f"prompt {i}: query position {query_positions[i]} out of range")
        elif query_char_ends is not None:
            q = _query_from_char_end(offsets, int(query_char_ends[i]))
        else:
            q = len(ids) - 1
        if not mask.any():
            log.warning("prompt %d: no token falls in its evidence spans", i)
        if mask[q + 1 :].any():
            log.warning("prompt %d: evidence after the query token gets no (causal) attention", i)
        ids_list.append(ids)
        masks.append(mask)
        qpos.append(q)
    check_context(model, ids_list)

    device = model_device(model)
    pad_id = pad_token_id(tok)
    per_example = np.zeros((n, L, H), dtype=np.float64)
    n_img = img_pos[0].size if img_pos else 0
    image_att = np.zeros((n, L, H, n_img), dtype=np.float32) if keep_image_attention else None

    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="evidence attention", disable=not progress, leave=False):
        idx = list(range(start, min(n, start + batch_size)))
        ids_t, att_mask, _, _ = pad_batch([ids_list[i] for i in idx], pad_id, "right")
        ev = torch.zeros(ids_t.shape, dtype=torch.float32)
        for j, i in enumerate(idx):
            ev[j, : len(ids_list[i])] = torch.from_numpy(masks[i].astype(np.float32))
        q_t = torch.tensor([qpos[i] for i in idx])
        rows = torch.arange(len(idx))
        img_t = (
            torch.from_numpy(np.stack([img_pos[i] for i in idx])) if image_att is not None else None
        )
        ev_d, q_d, rows_d = ev.to(device), q_t.to(device), rows.to(device)

        def make_hook(
            layer: int,
            idx: list[int] = idx,
            img_t: Tensor | None = img_t,
            ev_d: Tensor = ev_d,
            q_d: Tensor = q_d,
            rows_d: Tensor = rows_d,
        ):
            def hook_fn(pattern: Tensor, hook: Any) -> None:
                row = pattern[rows_d, :, q_d, :].float()  # [b, H, k]
                mass = (row * ev_d[:, None, :]).sum(-1)
                per_example[idx, layer] = mass.detach().cpu().double().numpy()
                if image_att is not None and img_t is not None:
                    gathered = torch.gather(
                        row, 2, img_t.to(row.device)[:, None, :].expand(-1, row.shape[1], -1)
                    )
                    image_att[idx, layer] = gathered.detach().cpu().numpy()

            return hook_fn

        hooks = [(attn_hook_name(layer, "hook_pattern"), make_hook(layer)) for layer in range(L)]
        kwargs: dict[str, Any] = {"attention_mask": att_mask.to(device)}
        if pixel_values is not None:
            kwargs["pixel_values"] = pixel_values[idx].to(device)
        if img_in is not None and images is not None:
            extra = image_batch_kwargs(img_in, [images[i] for i in idx], ids_t)
            kwargs.update(to_model(extra, model))
        with torch.no_grad():
            model.run_with_hooks(ids_t.to(device), fwd_hooks=hooks, **kwargs)

    grid = None
    if image_att is not None:
        side = math.isqrt(n_img)
        grid = (side, side) if side * side == n_img else (1, n_img)
    return EvidenceAttention(
        per_example.mean(axis=0),
        per_example,
        np.array([int(m.sum()) for m in masks]),
        np.array(qpos),
        image_att,
        grid,
        "absolute",
        model_label(model),
        {"image_evidence": image_evidence, "span_unit": span_unit},
    )


def relative_evidence_attention(
    model: Any,
    specific_prompts: Sequence[str],
    generic_prompts: Sequence[str],
    specific_spans: Sequence[Sequence[Span]] | None = None,
    generic_spans: Sequence[Sequence[Span]] | None = None,
    *,
    eps: float = 1e-8,
    **kwargs: Any,
) -> EvidenceAttention:
    """Attention to evidence under specific queries divided by that under generic queries.

    The paper's Section 5 variant: e.g. for an MLLM, attention to the image tokens when asked
    "Is there a dog in the image?" relative to "Describe the image." on the same image. Prompts
    are paired (same length, same images); both sets are measured with :func:`evidence_attention`
    (``kwargs`` go to both, e.g. ``image_evidence=True, pixel_values=...``).

    Returns:
        :class:`EvidenceAttention` of kind ``"relative"``: ``values`` = mean specific / mean
        generic attention per head; ``per_example`` = per-prompt ratios. Values above 1 mean the
        head looks more at the evidence when the question is specific.
    """
    if len(specific_prompts) != len(generic_prompts):
        raise ShapeMismatchError(
            "generic prompts", len(specific_prompts), len(generic_prompts), "Prompts are paired."
        )
    kwargs.pop("keep_image_attention", None)
    spec = evidence_attention(model, specific_prompts, specific_spans, **kwargs)
    gen = evidence_attention(model, generic_prompts, generic_spans, **kwargs)
    return EvidenceAttention(
        spec.values / (gen.values + eps),
        spec.per_example / (gen.per_example + eps),
        spec.n_evidence_tokens,
        spec.query_positions,
        None,
        None,
        "relative",
        spec.model,
        {
            **spec.meta,
            "specific_mean": spec.values.tolist(),
            "generic_mean": gen.values.tolist(),
            "eps": eps,
        },
    )
