"""Probe baselines: a floor for Truth Scores.

A head's Truth Score is the cross-validated accuracy of a linear probe at the answer's last token.
Part of it may owe nothing to whether the model tracks the context: the answer's wording alone can
separate gold from hallucinated answers (length, specificity), and a random projection of the
tokens -- which any network of the same shape computes -- may already carry that signal. Two
baselines run the *same* capture and probe (:func:`~lineage_lens.capture.collect_head_activations`
and :func:`~lineage_lens.probing.fit_truth_scores`) where that explanation is all there is:

* **answer only** -- the same model on prompts holding only the answer
  (:data:`ANSWER_ONLY_TEMPLATE`, ``"Answer: {answer}"``): no context, no question;
* **random init** -- a twin of the model with the same config (same geometry, same tokenizer) and
  freshly initialised weights (:func:`random_init_model`), on the full prompts.

The per-head **floor** is the larger of the two accuracies; a Truth Score means something about
the model's use of the context only where it clears the floor. Typical use::

    base = probe_baselines(model, examples, scores=scores)   # scores: the model's TruthScores
    base.to_frame()          # per head: answer_only, random_init, floor, score, margin
    base.heatmap("margin")
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from transformer_lens.model_bridge import TransformerBridge

from lineage_lens._display import ShortRepr, label, number
from lineage_lens.capture import AnyTemplate, collect_head_activations
from lineage_lens.data import ProbeExample, PromptTemplate, check_two_classes, load_probe_examples
from lineage_lens.errors import ConfigError, DataError, ModelLoadError, check_seed
from lineage_lens.fileio import tmp_build_dir
from lineage_lens.headmap import draw_heatmap, read_npz, write_npz
from lineage_lens.models import head_geometry, load_model, model_label
from lineage_lens.probing import Solver, fit_truth_scores
from lineage_lens.scores import TruthScores

if TYPE_CHECKING:
    from datasets import Dataset
    from matplotlib.axes import Axes

log = logging.getLogger(__name__)

#: The answer-only prompt: the answer after the paper template's ``Answer:`` cue, nothing else.
ANSWER_ONLY_TEMPLATE = PromptTemplate("Answer: {answer}", name="answer-only")

#: The per-head columns of :meth:`ProbeBaselines.to_frame` / arrays of :meth:`ProbeBaselines.get`.
KINDS: tuple[str, ...] = ("answer_only", "random_init", "floor", "score", "margin")


def answer_only_examples(examples: Sequence[ProbeExample]) -> list[ProbeExample]:
    """The same examples (answer, label, source id) with the context and the question removed.

    Render them with :data:`ANSWER_ONLY_TEMPLATE`: the paper's template would keep its
    ``Context:`` and ``Question:`` labels around the empty fields.
    """
    return [replace(ex, context="", question="") for ex in examples]


def random_init_model(
    model_or_dir: TransformerBridge | str | Path,
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> TransformerBridge:
    """A twin of a model: the same config and tokenizer, freshly initialised weights.

    Args:
        model_or_dir: a loaded ``TransformerBridge`` or anything :func:`~lineage_lens.models.
            load_model` accepts (a HF directory, a ``.gguf`` file, a packaged alias); only its
            config and tokenizer are read.
        seed: seeds the initialisation (the global torch RNG is left untouched); the same seed
            gives the same weights.
        device: defaults to the device of a given bridge, else :func:`load_model`'s default.
        dtype: parameter dtype of the twin.

    The Hugging Face class of the model is built from its config (the architecture's own
    initialisation), saved with the tokenizer into a temporary directory and booted through
    :func:`~lineage_lens.models.load_model`, exactly like a model from disk; the directory is
    deleted afterwards.
    """
    seed = check_seed(seed)
    if isinstance(model_or_dir, TransformerBridge):
        hf_model = model_or_dir.original_model
        config = copy.deepcopy(hf_model.config)
        model_class = type(hf_model)
        tokenizer = model_or_dir.tokenizer
        boot_tokenizer = copy.deepcopy(tokenizer)  # exactly the bridge's, not shared with it
        label = model_label(model_or_dir)
        if device is None:
            device = next(model_or_dir.parameters()).device
    else:
        config, model_class, tokenizer = _config_class_tokenizer(model_or_dir)
        boot_tokenizer = None  # load_model reads the saved files, as for the original
        label = Path(str(model_or_dir)).name or str(model_or_dir)
    if tokenizer is None:
        raise ModelLoadError(f"{label} has no tokenizer; load it with load_model().")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf_twin = model_class(config)
    with tmp_build_dir(Path(tempfile.gettempdir()), "lineage-lens-random-init") as tmp:
        hf_twin.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del hf_twin
        twin = load_model(tmp, device=device, dtype=dtype, tokenizer=boot_tokenizer)
    twin.cfg.model_name = f"{label}-random-init-{seed}"
    log.info("Built a random-init twin of %s (seed %d)", label, seed)
    return twin


def _config_class_tokenizer(name_or_path: str | Path) -> tuple[Any, type, Any]:
    import transformers

    from lineage_lens.models import declared_generic_tokenizer, resolve_model_path

    source = resolve_model_path(name_or_path)
    config = transformers.AutoConfig.from_pretrained(source)
    architectures = getattr(config, "architectures", None) or []
    model_class = getattr(transformers, architectures[0], None) if architectures else None
    if model_class is None:
        raise ModelLoadError(
            f"the config of {name_or_path!r} names no Hugging Face model class "
            f"(architectures={architectures}); load the model and pass the TransformerBridge."
        )
    tokenizer = declared_generic_tokenizer(source)
    if tokenizer is None:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    return config, model_class, tokenizer


@dataclass(repr=False)
class ProbeBaselines(ShortRepr):
    """Per-head Truth Score floors of one model on one set of probing examples.

    Attributes:
        answer_only: the model's Truth Scores on answer-only prompts.
        random_init: the Truth Scores of its random-init twin on the full prompts.
        scores: the model's own Truth Scores on the full prompts, when given (for the margin).
        model, dataset: what was probed; init_seed: the twin's initialisation seed.
        meta: further provenance (JSON-serialisable).
    """

    answer_only: TruthScores
    random_init: TruthScores
    scores: TruthScores | None = None
    model: str = ""
    dataset: str = ""
    init_seed: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.random_init.check_shape(self.answer_only.shape, "the answer-only baseline")
        if self.scores is not None:
            self.scores.check_shape(self.answer_only.shape, "its baselines")

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_layers, n_heads)``."""
        return self.answer_only.shape

    def floor(self, metric: str = "accuracy") -> Float[np.ndarray, "layer head"]:
        """Per head, the larger of the two baselines."""
        return np.maximum(self.answer_only.get(metric), self.random_init.get(metric))

    def margin(self, metric: str = "accuracy") -> Float[np.ndarray, "layer head"]:
        """Per head, the model's score minus the floor (needs ``scores``)."""
        if self.scores is None:
            raise ConfigError(
                "these baselines hold no model scores; pass scores= to probe_baselines "
                "or build ProbeBaselines(..., scores=...)."
            )
        return self.scores.get(metric) - self.floor(metric)

    def get(self, kind: str = "floor", metric: str = "accuracy") -> Float[np.ndarray, "layer head"]:
        """The ``[n_layers, n_heads]`` array of one of :data:`KINDS`."""
        if kind == "answer_only":
            return self.answer_only.get(metric)
        if kind == "random_init":
            return self.random_init.get(metric)
        if kind == "floor":
            return self.floor(metric)
        if kind == "margin":
            return self.margin(metric)
        if kind == "score":
            if self.scores is None:
                raise ConfigError("these baselines hold no model scores (scores=None).")
            return self.scores.get(metric)
        raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}.")

    def to_frame(self, metric: str = "accuracy") -> pd.DataFrame:
        """One row per head: ``layer, head, answer_only, random_init, floor`` (of ``metric``),
        plus ``score`` and ``margin`` (score minus floor) when the model's scores are held."""
        n_layers, n_heads = self.shape
        layers, heads = np.divmod(np.arange(n_layers * n_heads), n_heads)
        frame = pd.DataFrame({"layer": layers, "head": heads})
        kinds = KINDS if self.scores is not None else KINDS[:3]
        for kind in kinds:
            frame[kind] = self.get(kind, metric).ravel()
        return frame

    def _repr_fields(self) -> list[tuple[str, str]]:
        kinds = KINDS if self.scores is not None else KINDS[:3]
        return [
            ("model", label(self.model)),
            ("dataset", label(self.dataset)),
            ("shape", str(self.shape)),
            ("n", number(self.answer_only.n)),
            ("init_seed", number(self.init_seed)),
            ("metric", "mean accuracy"),
            *((kind, f"{self.get(kind).mean():.3f}") for kind in kinds),
        ]

    # -------------------------------------------------------------------- I/O
    def save(self, path: str | Path) -> Path:
        """Write one ``.npz`` (every metric of each part + JSON provenance), atomically."""
        parts = self._parts()
        arrays = {
            f"{part}__{metric}": values
            for part, scores in parts.items()
            for metric, values in scores.metrics.items()
        }
        meta = {
            "kind": "probe_baselines",
            "model": self.model,
            "dataset": self.dataset,
            "init_seed": self.init_seed,
            "meta": self.meta,
            "parts": {part: scores._meta_dict() for part, scores in parts.items()},
        }
        return write_npz(path, arrays, meta, owner="ProbeBaselines")

    @classmethod
    def load(cls, path: str | Path) -> ProbeBaselines:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        all_arrays, meta = read_npz(path, "probe-baselines")
        arrays = {k: v for k, v in all_arrays.items() if "__" in k}
        if meta.get("kind") != "probe_baselines":
            raise DataError(
                "not a probe-baselines file (written by ProbeBaselines.save)", path=path
            )
        parts: dict[str, TruthScores] = {}
        try:
            for part, part_meta in meta["parts"].items():
                metrics = {
                    k.split("__", 1)[1]: v for k, v in arrays.items() if k.startswith(part + "__")
                }
                extra = part_meta.pop("meta", {})
                parts[part] = TruthScores(metrics, **part_meta, meta=extra)
            return cls(
                parts["answer_only"],
                parts["random_init"],
                parts.get("scores"),
                model=meta.get("model", ""),
                dataset=meta.get("dataset", ""),
                init_seed=meta.get("init_seed"),
                meta=meta.get("meta", {}),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"not a lineage-lens probe-baselines file ({exc})", path=path) from exc

    def _parts(self) -> dict[str, TruthScores]:
        parts = {"answer_only": self.answer_only, "random_init": self.random_init}
        if self.scores is not None:
            parts["scores"] = self.scores
        return parts

    # ------------------------------------------------------------------- plot
    def heatmap(
        self,
        kind: str = "floor",
        metric: str = "accuracy",
        *,
        ax: Axes | None = None,
        cmap: str | None = None,
        title: str | None = None,
        vmin: float | None = None,
        vmax: float | None = None,
    ) -> Axes:
        """Layer x head heatmap of one of :data:`KINDS` (``"margin"``: diverging, centred on 0)."""
        values = self.get(kind, metric)
        if kind == "margin" and vmin is None and vmax is None:
            bound = float(np.abs(values).max()) or 1.0
            vmin, vmax = -bound, bound
        return draw_heatmap(
            values,
            ax=ax,
            cmap=cmap or ("RdBu" if kind == "margin" else "viridis"),
            title=title if title is not None else f"{self.model or 'model'}: {kind} {metric}",
            label=f"{kind} {metric}",
            vmin=vmin,
            vmax=vmax,
        )

    def plot(self, metric: str = "accuracy", *, ax: Axes | None = None) -> Axes:
        """Per layer, the best head of each baseline (and of the model's scores, when held)."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3))
        x = np.arange(self.shape[0])
        for kind in ("answer_only", "random_init", "score"):
            if kind == "score" and self.scores is None:
                continue
            ax.plot(x, self.get(kind, metric).max(axis=1), marker="o", ms=3, label=kind)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"best head's {metric}")
        ax.set_title(f"{self.model or 'model'}: Truth Score floors")
        ax.legend(fontsize="small")
        return ax


def probe_baselines(
    model: TransformerBridge,
    examples: Sequence[ProbeExample] | Dataset,
    *,
    scores: TruthScores | None = None,
    twin: TransformerBridge | None = None,
    init_seed: int = 0,
    seed: int = 0,
    folds: int = 5,
    solver: Solver = "newton",
    batch_size: int = 16,
    prompt_template: AnyTemplate | str | None = None,
    answer_template: AnyTemplate | str = ANSWER_ONLY_TEMPLATE,
    dataset: str = "",
    progress: bool = True,
    **capture: Any,
) -> ProbeBaselines:
    """Truth Score floors of ``model`` on ``examples``: answer-only prompts and a random-init twin.

    Args:
        model: a ``TransformerBridge``.
        examples: the probing examples the model's Truth Scores come from (both labels), or a
            ``datasets.Dataset`` of them.
        scores: the model's Truth Scores on these examples, kept for the margin (optional).
        twin: a random-init twin to reuse; default :func:`random_init_model` with ``init_seed``.
        init_seed: seeds the twin's initialisation.
        seed, folds, solver: the probe's folds and solver, as in
            :func:`~lineage_lens.probing.fit_truth_scores` (use those of ``scores``).
        batch_size: examples per forward pass.
        prompt_template: the full prompt of the twin (default the paper's; use that of ``scores``).
        answer_template: the answer-only prompt (default :data:`ANSWER_ONLY_TEMPLATE`).
        dataset: provenance.
        progress: show tqdm bars.
        capture: further options of :func:`~lineage_lens.capture.collect_head_activations`
            (``position``, ``prepend_bos``, ...); activations are captured in float32.
    """
    examples = load_probe_examples(examples)
    check_two_classes(examples)
    check_seed(seed)  # both seeds before any capture
    check_seed(init_seed, "init_seed")
    label = model_label(model)
    if scores is not None:
        scores.check_shape(head_geometry(model).shape, label)
        if scores.n is not None and scores.n != len(examples):
            log.warning(
                "the given scores come from %d examples, the baselines from %d: a floor is only "
                "comparable on the same examples",
                scores.n,
                len(examples),
            )
    capture.setdefault("dtype", torch.float32)
    fit = {"folds": folds, "solver": solver, "seed": seed, "dataset": dataset, "progress": progress}

    acts = collect_head_activations(
        model,
        answer_only_examples(examples),
        batch_size=batch_size,
        prompt_template=answer_template,
        progress=progress,
        **capture,
    )
    answer_only = fit_truth_scores(acts, model=f"{label} (answer only)", **fit)
    del acts

    if twin is None:
        twin = random_init_model(model, seed=init_seed)
    else:
        head_geometry(model).check_same(head_geometry(twin), "random-init twin geometry")
    acts = collect_head_activations(
        twin,
        examples,
        batch_size=batch_size,
        prompt_template=prompt_template,
        progress=progress,
        **capture,
    )
    random_init = fit_truth_scores(acts, model=model_label(twin), **fit)
    log.info(
        "Truth Score floors of %s: answer-only mean %.3f, random-init mean %.3f",
        label,
        answer_only.accuracy.mean(),
        random_init.accuracy.mean(),
    )
    return ProbeBaselines(
        answer_only,
        random_init,
        scores,
        model=label,
        dataset=dataset,
        init_seed=init_seed,
        meta={"n": len(examples), "answer_template": _template_name(answer_template)},
    )


def _template_name(template: AnyTemplate | str) -> str:
    return template if isinstance(template, str) else template.name


__all__ = [
    "ANSWER_ONLY_TEMPLATE",
    "KINDS",
    "ProbeBaselines",
    "answer_only_examples",
    "probe_baselines",
    "random_init_model",
]
