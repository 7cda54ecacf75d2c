"""HaluEval QA as a judgement task: is the shown answer hallucinated? ("Yes"/"No").

The prompt is the official HaluEval QA evaluation (vendored instruction, system message and
``#Knowledge#`` / ``#Question#`` / ``#Answer#`` / ``#Your Judgement#:`` layout), rendered with the
tokenizer's chat template when it has one. For each evaluation row a seed decides, as in the
published pipeline (``random.random() > 0.5``), whether the row shows its hallucinated answer
(ground truth "Yes") or its right answer ("No"); the paper runs three seeds and reports mean ± std.

Scoring: ``mode="logprob"`` (default) compares the next-token log-probabilities of Yes and No;
``mode="generate"`` decodes greedily and parses yes/no, counting unparsed outputs (``n_unparsed``)
instead of mapping them to "No" (see :mod:`lineage_lens.evals._common`). Hallucinated (the model
says "Yes") is the positive class.

Evaluation rows never include probing rows: by default the vendored HaluEval QA is split with
:func:`lineage_lens.data.split_probe_eval` (``n_probe=292``) and only the remainder is evaluated;
explicit ``rows`` are checked against ``exclude_ids``.

:class:`HaluEvalJudgement` holds the evaluation's options as fields (checked when it is made);
its ``evaluate(model, gate)`` runs it and the object is a sweep evaluator
(:func:`lineage_lens.sweep.gating_sweep`). :func:`evaluate_halueval` is its ``evaluate``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lineage_lens._resources import resource_path
from lineage_lens.data import HaluEvalRow, as_halueval_rows, load_halueval_qa, split_probe_eval
from lineage_lens.errors import ConfigError, DataError, check_count, check_seed
from lineage_lens.evals._common import (
    EvalResult,
    Mode,
    PromptItem,
    ResultCache,
    check_mode,
    check_options,
    check_sequence,
    encode_chat,
    gate_description,
    maybe_cache,
    run_prompts,
)
from lineage_lens.hf_datasets import is_dataset
from lineage_lens.identity import record_digest
from lineage_lens.models import model_label
from lineage_lens.stats import binary_metrics
from lineage_lens.sweep import Outcome, PerExample

if TYPE_CHECKING:
    from datasets import Dataset
    from transformer_lens.model_bridge import TransformerBridge

    from lineage_lens.gating import TruthGate

log = logging.getLogger(__name__)

#: The system message of HaluEval's ``evaluate.py`` (its typo "huallucination" kept).
HALUEVAL_SYSTEM = (
    "You are a huallucination detector. You MUST determine if the provided answer contains "
    "hallucination or not for the question based on the world knowledge. The answer you "
    'provided MUST be "Yes" or "No"'
)


def qa_instruction() -> str:
    """The vendored official HaluEval QA evaluation instruction (with its few-shot examples)."""
    return resource_path("halueval", "qa_evaluation_instruction.txt").read_text(encoding="utf-8")


def halueval_user_message(
    knowledge: str, question: str, answer: str, instruction: str | None = None
) -> str:
    """The user message of HaluEval's QA evaluation for one (knowledge, question, answer)."""
    instruction = qa_instruction() if instruction is None else instruction
    return (
        f"{instruction}\n\n#Knowledge#: {knowledge}\n#Question#: {question}"
        f"\n#Answer#: {answer}\n#Your Judgement#:"
    )


def shown_answers(rows: Sequence[HaluEvalRow], seed: int) -> np.ndarray:
    """Per row, ``True`` when the seed shows the hallucinated answer (ground truth "Yes")."""
    return np.random.default_rng(check_seed(seed)).random(len(rows)) > 0.5


def eval_rows(
    rows: Sequence[HaluEvalRow] | Dataset | None = None,
    *,
    n_probe: int = 292,
    split_seed: int = 0,
    exclude_ids: Iterable[str] | None = None,
) -> list[HaluEvalRow]:
    """The evaluation rows: the vendored HaluEval QA minus its probing split, or ``rows``.

    Raises :class:`DataError` if any evaluation row is among ``exclude_ids`` (probing rows).
    """
    if rows is None:
        probe, rest = split_probe_eval(load_halueval_qa(), n_probe=n_probe, seed=split_seed)
        excluded = {r.row_id for r in probe} | set(exclude_ids or ())
        rows = rest
    else:
        rows = as_halueval_rows(rows)
        excluded = set(exclude_ids or ())
    if not rows:
        raise DataError("no HaluEval rows to evaluate.")
    leaked = sorted({r.row_id for r in rows} & {str(i) for i in excluded})
    if leaked:
        raise DataError(
            f"{len(leaked)} evaluation rows were used for probing (row ids {leaked[:5]}); "
            "evaluate on the remainder of split_probe_eval."
        )
    assert not {r.row_id for r in rows} & {str(i) for i in excluded}
    return list(rows)


def halueval_inputs_identity(
    rows: Sequence[HaluEvalRow] | Dataset | None = None,
    *,
    n_probe: int = 292,
    split_seed: int = 0,
    exclude_ids: Iterable[str] | None = None,
    limit: int | None = None,
    instruction: str | None = None,
) -> str:
    """The content identity of what :func:`evaluate_halueval` reads with these arguments: the
    text of every evaluation row (:func:`eval_rows`, the first ``limit``), the instruction
    (vendored or given) and the system message."""
    evaluated = eval_rows(rows, n_probe=n_probe, split_seed=split_seed, exclude_ids=exclude_ids)
    if limit is not None:
        evaluated = evaluated[: max(limit, 0)]
    return record_digest(
        {
            "rows": [dataclasses.asdict(r) for r in evaluated],
            "instruction": qa_instruction() if instruction is None else instruction,
            "system": HALUEVAL_SYSTEM,
        }
    )


def distinct_margins(examples: pd.DataFrame) -> pd.Series:
    """HaluEval ``log p(Yes) - log p(No)`` per distinct prompt ``(row_id, hallucinated)``,
    sorted (answer seeds that show a row the same answer repeat the same prompt)."""
    first = examples.drop_duplicates(["row_id", "hallucinated"]).set_index(
        ["row_id", "hallucinated"]
    )
    return (first["log_p_yes"] - first["log_p_no"]).sort_index()


@dataclass(frozen=True)
class HaluEvalJudgement:
    """HaluEval QA hallucination judgement: the evaluation and its options as fields.

    :meth:`evaluate` runs it (as :func:`evaluate_halueval` does); calling the object,
    ``judgement(model, gate)``, is the sweep evaluator of
    :func:`lineage_lens.sweep.gating_sweep`: ``metrics`` mean ± std over the seeds, one group
    per seed, and the paired statistic ``auroc`` (of ``log p(yes) - log p(no)`` per distinct
    prompt, :func:`distinct_margins`), or ``accuracy_all`` when generating.

    Args:
        rows: evaluation rows (default: the vendored HaluEval QA minus the ``n_probe`` probing
            rows of ``split_probe_eval(..., seed=split_seed)``); a ``datasets.Dataset`` in the
            HaluEval QA columns works too.
        seeds: each seed picks which answer every row shows; metrics are reported per seed.
        mode: ``"logprob"`` (yes/no next-token comparison) or ``"generate"`` (greedy + parse).
        n_probe, split_seed: the probing split of the vendored rows left out of the evaluation.
        exclude_ids: row ids that must not be evaluated (the probing rows of your scores).
        limit: evaluate only the first ``limit`` rows.
        batch_size, max_new_tokens: batching and generation length.
        use_chat_template: wrap the prompt in the tokenizer's chat template when it has one.
        instruction: replace the vendored instruction.
        cache: a :class:`ResultCache` or its path; finished examples are reused.
        progress: show a progress bar.

    Raises:
        ConfigError: on construction, for a mode other than ``logprob``/``generate``, no seeds
            or a seed outside numpy's range, or a ``n_probe``, ``limit``, ``batch_size`` or
            ``max_new_tokens`` that is not a positive integer.
    """

    task = "halueval"
    rows: Sequence[HaluEvalRow] | Dataset | None = None
    seeds: Sequence[int] = (0, 1, 2)
    mode: Mode = "logprob"
    n_probe: int = 292
    split_seed: int = 0
    exclude_ids: Sequence[str] | None = None
    limit: int | None = None
    batch_size: int = 8
    max_new_tokens: int = 8
    use_chat_template: bool = True
    instruction: str | None = None
    cache: ResultCache | str | Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        check_mode(self.mode)
        seeds = check_sequence(self.seeds, "seeds")
        if not seeds:
            raise ConfigError("give at least one seed (seeds=).")
        object.__setattr__(self, "seeds", tuple(check_seed(s, "a seed") for s in seeds))
        if self.rows is not None and not is_dataset(self.rows):
            object.__setattr__(self, "rows", check_sequence(self.rows, "rows"))
        if self.exclude_ids is not None:
            object.__setattr__(self, "exclude_ids", check_sequence(self.exclude_ids, "exclude_ids"))
        check_count(self.n_probe, "n_probe")
        check_seed(self.split_seed, "split_seed")
        check_count(self.limit, "limit", optional=True)
        check_count(self.batch_size, "batch_size")
        check_count(self.max_new_tokens, "max_new_tokens")
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise ConfigError(
                f"instruction must be a string, got {type(self.instruction).__name__}."
            )

    def inputs_identity(self) -> str:
        """The content identity of the rows and instruction this evaluation reads
        (:func:`halueval_inputs_identity`)."""
        return halueval_inputs_identity(
            self.rows,
            n_probe=self.n_probe,
            split_seed=self.split_seed,
            exclude_ids=self.exclude_ids,
            limit=self.limit,
            instruction=self.instruction,
        )

    def evaluate(self, model: TransformerBridge, gate: TruthGate | None = None) -> EvalResult:
        """Evaluate ``model`` (gated with ``gate``, a :class:`~lineage_lens.gating.TruthGate`,
        if given) as a HaluEval QA hallucination judge.

        Returns:
            an :class:`EvalResult`: ``metrics`` has one row per seed, ``summary()`` mean ± std.
        """
        mode = self.mode
        seeds = list(self.seeds)
        rows = eval_rows(
            self.rows,
            n_probe=self.n_probe,
            split_seed=self.split_seed,
            exclude_ids=self.exclude_ids,
        )
        if self.limit is not None:
            rows = rows[: self.limit]
        tok = model.tokenizer
        instr = qa_instruction() if self.instruction is None else self.instruction
        encoded: dict[tuple[str, bool], tuple[int, ...]] = {}
        items: list[PromptItem] = []
        plan: list[tuple[int, HaluEvalRow, bool]] = []
        for seed in seeds:
            for row, halluc in zip(rows, shown_answers(rows, seed), strict=True):
                halluc = bool(halluc)
                plan.append((int(seed), row, halluc))
                key = (row.row_id, halluc)
                if key not in encoded:
                    answer = row.hallucinated_answer if halluc else row.right_answer
                    user = halueval_user_message(row.knowledge, row.question, answer, instr)
                    ids = encode_chat(
                        tok, user, system=HALUEVAL_SYSTEM, use_chat_template=self.use_chat_template
                    )
                    encoded[key] = tuple(ids)
                    items.append(PromptItem(f"{row.row_id}:{'h' if halluc else 'r'}", tuple(ids)))
        setting = {
            "task": "halueval",
            "chat": self.use_chat_template,
            "instruction": instr if self.instruction is not None else "vendored",
        }
        with maybe_cache(self.cache) as c:
            records = run_prompts(
                model,
                items,
                mode=mode,
                batch_size=self.batch_size,
                max_new_tokens=self.max_new_tokens,
                gate=gate,
                cache=c,
                setting=setting,
                progress=self.progress,
                desc=f"HaluEval {mode}",
            )
        ex_rows = []
        for seed, row, halluc in plan:
            rec = records[f"{row.row_id}:{'h' if halluc else 'r'}"]
            ex_rows.append(
                {
                    "seed": seed,
                    "row_id": row.row_id,
                    "hallucinated": halluc,
                    "answer": rec.get("answer"),
                    "log_p_yes": rec.get("log_p_yes"),
                    "log_p_no": rec.get("log_p_no"),
                    "text": rec.get("text"),
                }
            )
        examples = pd.DataFrame(ex_rows)
        metric_rows = []
        for seed, grp in examples.groupby("seed", sort=False):
            pred = [None if pd.isna(a) else a == "yes" for a in grp["answer"]]
            margin = None
            if mode == "logprob":  # "Yes" = hallucinated, the positive class
                margin = (grp["log_p_yes"] - grp["log_p_no"]).to_numpy(dtype=float)
            metric_rows.append(
                {"seed": seed, **binary_metrics(grp["hallucinated"].tolist(), pred, margin)}
            )
        config = {
            "model": model_label(model),
            "mode": mode,
            "seeds": seeds,
            "n_rows": len(rows),
            "n_probe": self.n_probe if self.exclude_ids is None else None,
            "split_seed": self.split_seed,
            "gate": gate_description(gate),
            "chat": self.use_chat_template,
        }
        return EvalResult("halueval", pd.DataFrame(metric_rows), examples, config)

    def __call__(self, model: TransformerBridge, gate: TruthGate | None) -> Outcome:
        """The sweep evaluator: :meth:`evaluate` as an :class:`~lineage_lens.sweep.Outcome`."""
        res = self.evaluate(model, gate)
        groups = res.metrics.to_dict(orient="records")
        if res.config["mode"] == "logprob":
            margins = distinct_margins(res.examples)
            truth = margins.index.get_level_values("hallucinated")
            paired = {"auroc": PerExample.auroc(truth, margins.to_numpy(), margins.index)}
        else:
            ex = res.examples
            correct = (ex["answer"] == "yes") == ex["hallucinated"].astype(bool)
            ids = list(zip(ex["seed"], ex["row_id"], strict=True))
            paired = {"accuracy_all": PerExample.mean(correct.to_numpy(dtype=float), ids)}
        return Outcome(res.summary(), paired, groups, {"config": res.config})


def evaluate_halueval(
    model: TransformerBridge,
    rows: Sequence[HaluEvalRow] | Dataset | None = None,
    *,
    gate: TruthGate | None = None,
    **options: Any,
) -> EvalResult:
    """Evaluate ``model`` as a HaluEval QA hallucination judge:
    ``HaluEvalJudgement(rows=rows, **options).evaluate(model, gate)``.

    Args:
        model: a loaded bridge.
        rows: evaluation rows (default: the vendored HaluEval QA minus its probing rows).
        gate: a :class:`~lineage_lens.gating.TruthGate` applied during the evaluation.
        options: the other fields of :class:`HaluEvalJudgement` (``seeds``, ``mode``,
            ``n_probe``, ``split_seed``, ``exclude_ids``, ``limit``, ``batch_size``,
            ``max_new_tokens``, ``use_chat_template``, ``instruction``, ``cache``,
            ``progress``); an unknown one is a :class:`ConfigError`.

    Returns:
        an :class:`EvalResult`: ``metrics`` has one row per seed, ``summary()`` mean ± std.
    """
    check_options(HaluEvalJudgement, options, "evaluate_halueval")
    return HaluEvalJudgement(rows=rows, **options).evaluate(model, gate)
