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

from lineage_lens import errors as errors  # cheap; `lineage_lens.errors` loads with the package

__version__ = "0.1.0"

#: Public name -> the module that defines it: the one list of the public names (`__all__` and
#: `dir()` are built from it). One line per name; the module is the one place the idea lives (see
#: docs/library.md, "Layout"). The `if TYPE_CHECKING` imports at the end mirror it for type
#: checkers and IDEs (a test checks they agree).
_EXPORTS: dict[str, str] = {
    # errors (every one a LineageLensError)
    "LineageLensError": "lineage_lens.errors",
    "ConfigError": "lineage_lens.errors",
    "DataError": "lineage_lens.errors",
    "ModelLoadError": "lineage_lens.errors",
    "ShapeMismatchError": "lineage_lens.errors",
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
    "split_probe_eval": "lineage_lens.data",
    "to_dataset": "lineage_lens.hf_datasets",
    "from_dataset": "lineage_lens.records",
    "collect_head_activations": "lineage_lens.capture",
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
    "HaluEvalJudgement": "lineage_lens.evals",
    "PopeAnswers": "lineage_lens.evals",
    "ChairCaptions": "lineage_lens.evals",
    "gating_sweep": "lineage_lens.sweep",
    "transfer_sources": "lineage_lens.sweep",
    "gate_sources": "lineage_lens.sweep",
    "plot_sweep": "lineage_lens.sweep",
    "ScoreSource": "lineage_lens.sweep",
    "GateSettings": "lineage_lens.sweep",
    # the embedded lineage zoo
    "build_zoo": "lineage_lens.zoo",
    "load_zoo": "lineage_lens.zoo",
}

__all__ = sorted(["__version__", *_EXPORTS])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lineage_lens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # the same names for type checkers and IDEs (`X as X`: re-exported)
    from lineage_lens.activations import HeadActivations as HeadActivations
    from lineage_lens.attention import EvidenceAttention as EvidenceAttention
    from lineage_lens.attention import evidence_attention as evidence_attention
    from lineage_lens.baselines import ProbeBaselines as ProbeBaselines
    from lineage_lens.baselines import probe_baselines as probe_baselines
    from lineage_lens.capture import collect_head_activations as collect_head_activations
    from lineage_lens.cka import HeadCKA as HeadCKA
    from lineage_lens.cka import head_cka as head_cka
    from lineage_lens.data import ChatPromptTemplate as ChatPromptTemplate
    from lineage_lens.data import ProbeExample as ProbeExample
    from lineage_lens.data import PromptTemplate as PromptTemplate
    from lineage_lens.data import halueval_probe_examples as halueval_probe_examples
    from lineage_lens.data import load_halueval_qa as load_halueval_qa
    from lineage_lens.data import load_probe_examples as load_probe_examples
    from lineage_lens.data import split_probe_eval as split_probe_eval
    from lineage_lens.errors import ConfigError as ConfigError
    from lineage_lens.errors import DataError as DataError
    from lineage_lens.errors import LineageLensError as LineageLensError
    from lineage_lens.errors import ModelLoadError as ModelLoadError
    from lineage_lens.errors import ShapeMismatchError as ShapeMismatchError
    from lineage_lens.evals import ChairCaptions as ChairCaptions
    from lineage_lens.evals import HaluEvalJudgement as HaluEvalJudgement
    from lineage_lens.evals import PopeAnswers as PopeAnswers
    from lineage_lens.evals import compute_chair as compute_chair
    from lineage_lens.evals import evaluate_chair as evaluate_chair
    from lineage_lens.evals import evaluate_halueval as evaluate_halueval
    from lineage_lens.evals import evaluate_pope as evaluate_pope
    from lineage_lens.gating import TruthGate as TruthGate
    from lineage_lens.gating import control_scores as control_scores
    from lineage_lens.hf_datasets import to_dataset as to_dataset
    from lineage_lens.kvcache import kv_cache_ok as kv_cache_ok
    from lineage_lens.lineage import ScoreComparison as ScoreComparison
    from lineage_lens.lineage import compare_many as compare_many
    from lineage_lens.lineage import compare_scores as compare_scores
    from lineage_lens.models import HeadGeometry as HeadGeometry
    from lineage_lens.models import head_geometry as head_geometry
    from lineage_lens.models import load_model as load_model
    from lineage_lens.probing import HeadProbe as HeadProbe
    from lineage_lens.probing import fit_truth_scores as fit_truth_scores
    from lineage_lens.records import from_dataset as from_dataset
    from lineage_lens.report import LineageReport as LineageReport
    from lineage_lens.report import lineage_report as lineage_report
    from lineage_lens.scores import TruthScores as TruthScores
    from lineage_lens.scores import load_scores as load_scores
    from lineage_lens.sweep import GateSettings as GateSettings
    from lineage_lens.sweep import ScoreSource as ScoreSource
    from lineage_lens.sweep import gate_sources as gate_sources
    from lineage_lens.sweep import gating_sweep as gating_sweep
    from lineage_lens.sweep import plot_sweep as plot_sweep
    from lineage_lens.sweep import transfer_sources as transfer_sources
    from lineage_lens.weights import WeightDrift as WeightDrift
    from lineage_lens.weights import weight_drift as weight_drift
    from lineage_lens.zoo import build_zoo as build_zoo
    from lineage_lens.zoo import load_zoo as load_zoo
