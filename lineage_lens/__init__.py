"""lineage-lens: is head-level context-truthfulness inherited along a model lineage?

The front door for notebooks::

    import lineage_lens as ll

    model = ll.load_model("smollm2-135m-instruct")
    examples = ll.load_probe_examples("halueval", limit=300)
    acts = ll.collect_head_activations(model, examples)      # HeadActivations [n, L, H, d_head]
    scores = ll.fit_truth_scores(acts)                       # TruthScores [L, H]
    gate = ll.TruthGate(scores, alpha=4.5)                   # with gate.applied(model): ...
    ll.compare_scores(scores, other_scores)                  # inheritance statistics

Names are imported lazily on first use (PEP 562), so ``import lineage_lens`` stays cheap and
``from lineage_lens.errors import ...`` in a worker does not load TransformerLens.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lineage_lens.errors import (
    ConfigError,
    DataError,
    LineageLensError,
    ModelLoadError,
    ShapeMismatchError,
)

__version__ = "0.1.0"

#: Public name -> the module that defines it. One line per name; the module is the one place the
#: idea lives (see README, "Layout").
_EXPORTS: dict[str, str] = {
    # models -> activations
    "load_model": "lineage_lens.models",
    "HeadGeometry": "lineage_lens.models",
    "head_geometry": "lineage_lens.models",
    "kv_cache_ok": "lineage_lens.kvcache",
    "ProbeExample": "lineage_lens.data",
    "PromptTemplate": "lineage_lens.data",
    "ChatPromptTemplate": "lineage_lens.data",
    "load_probe_examples": "lineage_lens.data",
    "load_halueval_qa": "lineage_lens.data",
    "halueval_probe_examples": "lineage_lens.data",
    "load_truthprobe_jsonl": "lineage_lens.data",
    "split_probe_eval": "lineage_lens.data",
    "to_dataset": "lineage_lens.hf_datasets",
    "from_dataset": "lineage_lens.hf_datasets",
    "collect_head_activations": "lineage_lens.activations",
    "HeadActivations": "lineage_lens.activations",
    # -> scores
    "fit_truth_scores": "lineage_lens.probing",
    "HeadProbe": "lineage_lens.probing",
    "TruthScores": "lineage_lens.scores",
    "load_scores": "lineage_lens.scores",
    "probe_baselines": "lineage_lens.baselines",
    "ProbeBaselines": "lineage_lens.baselines",
    # -> comparisons
    "compare_scores": "lineage_lens.lineage",
    "compare_many": "lineage_lens.lineage",
    "ScoreComparison": "lineage_lens.lineage",
    "weight_drift": "lineage_lens.weights",
    "WeightDrift": "lineage_lens.weights",
    "head_cka": "lineage_lens.cka",
    "HeadCKA": "lineage_lens.cka",
    "evidence_attention": "lineage_lens.attention",
    "EvidenceAttention": "lineage_lens.attention",
    "lineage_report": "lineage_lens.report",
    "LineageReport": "lineage_lens.report",
    # -> gates -> evaluations
    "TruthGate": "lineage_lens.gating",
    "control_scores": "lineage_lens.gating",
    "evaluate_halueval": "lineage_lens.evals",
    "evaluate_pope": "lineage_lens.evals",
    "evaluate_chair": "lineage_lens.evals",
    "compute_chair": "lineage_lens.evals",
    "run_sweep": "lineage_lens.evals",
    "HaluEvalJudgement": "lineage_lens.evals.outcomes",
    "PopeAnswers": "lineage_lens.evals.outcomes",
    "ChairCaptions": "lineage_lens.evals.outcomes",
    "gating_sweep": "lineage_lens.sweep",
    "transfer_sources": "lineage_lens.sweep",
    "ScoreSource": "lineage_lens.sweep",
    "GateSettings": "lineage_lens.sweep",
    # the embedded lineage zoo
    "build_zoo": "lineage_lens.zoo",
    "load_zoo": "lineage_lens.zoo",
}

#: Kept literal (not built from _EXPORTS) so linters and IDEs see it; a test checks they agree.
__all__ = [
    "ChairCaptions",
    "ChatPromptTemplate",
    "ConfigError",
    "DataError",
    "EvidenceAttention",
    "GateSettings",
    "HaluEvalJudgement",
    "HeadActivations",
    "HeadCKA",
    "HeadGeometry",
    "HeadProbe",
    "LineageLensError",
    "LineageReport",
    "ModelLoadError",
    "PopeAnswers",
    "ProbeBaselines",
    "ProbeExample",
    "PromptTemplate",
    "ScoreComparison",
    "ScoreSource",
    "ShapeMismatchError",
    "TruthGate",
    "TruthScores",
    "WeightDrift",
    "__version__",
    "build_zoo",
    "collect_head_activations",
    "compare_many",
    "compare_scores",
    "compute_chair",
    "control_scores",
    "evaluate_chair",
    "evaluate_halueval",
    "evaluate_pope",
    "evidence_attention",
    "fit_truth_scores",
    "from_dataset",
    "gating_sweep",
    "halueval_probe_examples",
    "head_cka",
    "head_geometry",
    "kv_cache_ok",
    "lineage_report",
    "load_halueval_qa",
    "load_model",
    "load_probe_examples",
    "load_scores",
    "load_truthprobe_jsonl",
    "load_zoo",
    "probe_baselines",
    "run_sweep",
    "split_probe_eval",
    "to_dataset",
    "transfer_sources",
    "weight_drift",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lineage_lens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from lineage_lens.activations import HeadActivations, collect_head_activations
    from lineage_lens.attention import EvidenceAttention, evidence_attention
    from lineage_lens.baselines import ProbeBaselines, probe_baselines
    from lineage_lens.cka import HeadCKA, head_cka
    from lineage_lens.data import (
        ChatPromptTemplate,
        ProbeExample,
        PromptTemplate,
        halueval_probe_examples,
        load_halueval_qa,
        load_probe_examples,
        load_truthprobe_jsonl,
        split_probe_eval,
    )
    from lineage_lens.evals import (
        compute_chair,
        evaluate_chair,
        evaluate_halueval,
        evaluate_pope,
        run_sweep,
    )
    from lineage_lens.evals.outcomes import ChairCaptions, HaluEvalJudgement, PopeAnswers
    from lineage_lens.gating import TruthGate, control_scores
    from lineage_lens.hf_datasets import from_dataset, to_dataset
    from lineage_lens.kvcache import kv_cache_ok
    from lineage_lens.lineage import ScoreComparison, compare_many, compare_scores
    from lineage_lens.models import HeadGeometry, head_geometry, load_model
    from lineage_lens.probing import HeadProbe, fit_truth_scores
    from lineage_lens.report import LineageReport, lineage_report
    from lineage_lens.scores import TruthScores, load_scores
    from lineage_lens.sweep import GateSettings, ScoreSource, gating_sweep, transfer_sources
    from lineage_lens.weights import WeightDrift, weight_drift
    from lineage_lens.zoo import build_zoo, load_zoo
