"""The paper's whole analysis of one ancestor and its descendants, in one call.

:func:`lineage_report` asks the TruthProbe paper's questions of any family :func:`load_model`
accepts (text or multimodal) and writes a self-contained report folder:

1. *Inherited?* Truth Scores of every model on the same probing examples
   (:func:`~lineage_lens.pipeline.score_model`; text context, and for a multimodal model the
   ``text_only`` condition plus ``image`` when every example carries an image), compared with the
   ancestor's (:func:`~lineage_lens.lineage.compare_scores`: bootstrap CIs, permutation p-values,
   top-k overlap against chance), controls included.
2. *How far did the weights move?* :func:`~lineage_lens.weights.weight_drift` and per-head
   :func:`~lineage_lens.cka.head_cka` of the probed activations, where the shapes allow (otherwise
   skipped, with the reason).
3. *Do the top heads attend to the evidence?* :func:`~lineage_lens.attention.evidence_attention`
   from the answer's last token of the truthful examples to the context sentence holding the
   answer, top-k vs bottom-k heads by the model's own Truth Score (paired bootstrap over examples).
4. *Transfer?* Each descendant gated with the ancestor's scores (``inherited``), its own, and a
   random control over several seeds (:func:`~lineage_lens.sweep.gating_sweep`,
   :func:`~lineage_lens.sweep.transfer_sources`) on HaluEval judgements, POPE or CHAIR
   (:mod:`lineage_lens.evals`); the ancestor gated with its own scores as the reference.

Every step is cached under ``out/cache`` by the content identity of the models it reads
(:func:`model_identity`) and its own parameters, so an interrupted run resumes where it stopped,
and adding a descendant computes only that model's steps. Models are loaded one at a time and
released; activations stream to a memmap in the cache; weight drift reads two local checkpoints
tensor by tensor (safetensors), never two models at once.

Typical use::

    report = lineage_report("smollm2-135m-instruct", ["path/to/finetune"], out="report/")
    report.to_frame()          # one row per compared model
    report.plot("inheritance")

or ``lineage-lens report --ancestor A --descendant D --out DIR`` (``docs/report.md``).
"""

from lineage_lens.report.cache import StepCache, examples_identity, model_identity
from lineage_lens.report.plan import EVAL_STAT, EVALS, PROFILES, ReportPlan, top_k
from lineage_lens.report.result import LineageReport, ModelEntry
from lineage_lens.report.run import (
    evidence_inputs,
    evidence_statistic,
    lineage_report,
    make_evaluator,
    report_examples,
)

__all__ = [
    "EVALS",
    "EVAL_STAT",
    "PROFILES",
    "LineageReport",
    "ModelEntry",
    "ReportPlan",
    "StepCache",
    "evidence_inputs",
    "evidence_statistic",
    "examples_identity",
    "lineage_report",
    "make_evaluator",
    "model_identity",
    "report_examples",
    "top_k",
]
