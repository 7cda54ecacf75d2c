"""Truth Scores: one logistic probe per attention head, fitted for all heads at once.

A head's *Truth Score* is the k-fold cross-validated accuracy of a linear probe that predicts, from
the head's ``hook_z`` vector at the answer's last token, whether the answer is truthful
(label ``1``) or hallucinated (label ``0``). The positive class of precision, recall, F1 and AUROC
is therefore **truthful** (label 1).

Every head gets its own probe, but nothing loops over heads: the ``n_layers * n_heads`` heads are a
batch axis of tensors (processed in memory-bounded chunks of heads), and each fold fits all of them
together.

Three solvers:

``"newton"`` (default)
    L2-regularised logistic regression solved exactly by batched Newton (IRLS) steps with a
    vectorised Armijo line search: per head the ``[d+1, d+1]`` Hessian is built with one batched
    matmul and solved by a batched Cholesky factorisation, in float64. It minimises, per head,
    ``sum_i BCE(y_i, w.x_i + b) + l2/2 * ||w||^2`` (the intercept ``b`` is not penalised) on
    features standardised with the training fold's mean and standard deviation -- the same model as
    ``sklearn.linear_model.LogisticRegression(C=1/l2)`` after a ``StandardScaler``. The default
    ``l2=1.0`` is scikit-learn's default ``C=1``.

``"adamw"``
    The TruthProbe paper's recipe, for parity: a linear probe (zero init, BCE loss) trained with
    AdamW (lr 1e-2, weight decay 1e-3 on weight and bias), 200 epochs of shuffled mini-batches of
    512, in float32, on our folds and standardised features. Each head follows the trajectory a
    per-head ``nn.Linear`` loop with the same folds, shuffles and standardisation gives it;
    ``l2`` is ignored. It is *not* the authors' published procedure (their folds, raw features,
    unshuffled batches and all-heads loss differ: 0.025 mean |Δaccuracy| per head on Vicuna-sized
    data, issue 19); ``"truthprobe"`` is. On the CPU a compiled kernel
    (:mod:`lineage_lens._recipe_kernel`, numba) trains each head in cache, heads spread over
    threads; on other devices batched tensor operations do (:func:`adamw_logistic`).

``"truthprobe"``
    The authors' published procedure exactly (TruthProbe's ``vectorized_linear_probe``,
    ``probing/probe_vicuna_series.py``): unstratified, ungrouped ``KFold(folds, shuffle=True,
    random_state=seed)`` over the example order given (seed 42 by default, theirs), raw features
    (no standardisation), zero-initialised weights and bias, AdamW (lr 1e-2, weight decay 1e-3,
    torch defaults otherwise) on one mean BCE-with-logits over the batch *and all
    ``n_layers * n_heads`` heads* (their single ``[L, H, d]`` tensor: each head's gradient is
    divided by the head count, which moves Adam only through its ``eps``), mini-batches of 512 in
    index order without shuffling, 200 epochs, prediction ``float32 sigmoid(logit) > 0.5``, and
    each metric the mean of its per-fold values. It runs through the same compiled kernel as
    ``"adamw"``; use it to reproduce published score files (``cv5_head_metrics.csv``).
    Its folds can put the truthful and hallucinated answers of one source row on both sides of
    a split -- that is the authors' choice, kept on purpose. Identical examples are the one
    exception (below): their ``KFold`` runs over groups of identical examples, which is the
    authors' ``KFold`` exactly when there are none.

Folds: ``"newton"`` and ``"adamw"`` cross-validate with ``StratifiedGroupKFold`` by source row
whenever groups are known (the ``source_ids`` of a HeadActivations, or ``groups=``), so the two
answers of one HaluEval row never sit on both sides of a split, and with ``StratifiedKFold``
otherwise. Every solver keeps identical examples -- the same label and the same
``example_keys`` (prompt text and image content; :func:`lineage_lens.pipeline.score_model`
passes them), or without keys exactly the same activations -- in one fold: they join one group,
together with everything their groups hold (a union of the groups), so copies can never sit on
both sides of a split and inflate the scores. Such copies are still reported with
``warnings.warn``.

Which to use (BENCHMARKS.md 7a, 2 CPU cores, 32x32 heads of 128 dims): on a CPU ``"adamw"`` is
the faster solver at every size measured -- N=292: 4.1 s against Newton's 21 s; N=2726: 42 s
against 69 s; 109x and 49x the paper's per-head loop -- and it gives the recipe's scores. Newton
is the default because its result is the unique optimum of a stated objective (it does not
depend on shuffles, epochs or a learning rate); its scores come within 0.0045 of the recipe's at
N=2726 (fold-seed noise 0.007) but differ by 0.011-0.012 accuracy per head at a few hundred
examples.

Typical use::

    acts = collect_head_activations(model, examples)   # HeadActivations [N, L, H, d]
    scores = fit_truth_scores(acts, model="smollm2", dataset="halueval")
    scores.top_k(5)

The package holds one concept per module:

* :mod:`~lineage_lens.probing.fit`: :func:`fit_truth_scores` and :class:`HeadProbe`, the
  cross-validation driver over chunks of heads;
* :mod:`~lineage_lens.probing.folds`: the folds, the group checks and identical examples;
* :mod:`~lineage_lens.probing.newton`: :func:`standardize`, :func:`newton_logistic` and the
  memory-bounded chunks of heads;
* :mod:`~lineage_lens.probing.adamw`: the paper's AdamW recipe, :func:`adamw_logistic`;
* :mod:`~lineage_lens.probing.metrics`: :func:`head_metrics`.
"""

from __future__ import annotations

from lineage_lens.probing.adamw import (
    ADAMW_BLOCK_BYTES,
    ADAMW_RECIPE,
    BACKENDS,
    Backend,
    adamw_logistic,
)
from lineage_lens.probing.fit import (
    SOLVERS,
    TRUTHPROBE_SEED,
    HeadProbe,
    Solver,
    fit_truth_scores,
)
from lineage_lens.probing.metrics import head_metrics
from lineage_lens.probing.newton import DEFAULT_MEMORY_BYTES, newton_logistic, standardize

__all__ = [
    "ADAMW_BLOCK_BYTES",
    "ADAMW_RECIPE",
    "BACKENDS",
    "DEFAULT_MEMORY_BYTES",
    "SOLVERS",
    "TRUTHPROBE_SEED",
    "Backend",
    "HeadProbe",
    "Solver",
    "adamw_logistic",
    "fit_truth_scores",
    "head_metrics",
    "newton_logistic",
    "standardize",
]
