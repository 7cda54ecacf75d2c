"""The run of a lineage report (:func:`lineage_report`): inputs, the steps per model and per
pair, each cached (:mod:`lineage_lens.report.cache`), and the assembled
:class:`~lineage_lens.report.result.LineageReport`."""

from __future__ import annotations

import gc
import logging
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lineage_lens.cluster import check_executor, import_ray, ray_session, run_tasks
from lineage_lens.errors import ConfigError, DataError, ShapeMismatchError
from lineage_lens.fileio import atomic_open
from lineage_lens.report.cache import (
    StepCache,
    examples_identity,
    file_identity,
    json_digest,
    model_identity,
)
from lineage_lens.report.plan import EVAL_STAT, EVALS, PROFILES, PROJECTIONS, ReportPlan, top_k
from lineage_lens.report.result import LineageReport, ModelEntry, rank_heads

if TYPE_CHECKING:
    from lineage_lens.attention import EvidenceAttention
    from lineage_lens.data import ProbeExample
    from lineage_lens.scores import TruthScores

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def report_examples(data: Any, n_probe: int, seed: int) -> tuple[list[ProbeExample], str, bool]:
    """The probing examples of ``data`` (any source :func:`~lineage_lens.data.load_probe_examples`
    reads: ``"halueval"``, a JSON-lines file, a ``datasets.Dataset``, a list of
    :class:`~lineage_lens.data.ProbeExample` or of HaluEval rows), the probing part of its
    ``n_probe``-row split by ``seed`` (0: all of a source other than ``"halueval"``), with a
    label of the data and whether they are the vendored HaluEval's probing rows (whose
    evaluation rows the HaluEval judgement then excludes). Validated before any model loads
    (DataError naming missing columns or bad lines; both classes present)."""
    from lineage_lens.data import check_two_classes, load_probe_examples
    from lineage_lens.hf_datasets import is_dataset

    is_halueval = isinstance(data, (str, Path)) and str(data).lower() == "halueval"
    n = n_probe if n_probe or is_halueval else None
    examples = load_probe_examples(data, n_probe=n, split_seed=seed)
    if isinstance(data, (str, Path)):
        label = "halueval" if is_halueval else str(data)
    elif is_dataset(data):
        label = f"datasets.Dataset ({len(data)} rows)"
    else:
        label = f"{len(examples)} ProbeExample objects"
    check_two_classes(examples)
    return examples, label, is_halueval


def _labels(sources: Sequence[str | Path], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(sources):
            raise ConfigError(
                f"names must give one label per model ({len(sources)}: ancestor, descendants, "
                f"controls), got {len(names)}."
            )
        labels = [str(n) for n in names]
    else:
        labels = [Path(str(s).rstrip("/")).name or str(s) for s in sources]
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab}-{seen[lab]}")
    return out


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("lineage-lens", "transformer-lens", "transformers", "torch", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """State of one :func:`lineage_report` run (not public)."""

    cache: StepCache
    plan: ReportPlan
    examples: list[ProbeExample]
    data_id: str
    data_label: str
    is_halueval: bool
    evaluation: str
    evaluator: Any
    eval_key: dict[str, Any]
    device: str | None
    progress: bool
    entries: list[ModelEntry] = field(default_factory=list)
    score_files: dict[str, Path] = field(default_factory=dict)
    score_keys: dict[str, str] = field(default_factory=dict)
    acts_dirs: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def conditions(self, multimodal: bool) -> list[str]:
        if not multimodal:
            return ["text"]
        conds = ["text_only"]
        if all(ex.image is not None for ex in self.examples):
            conds.append("image")
        return conds

    def score_path(self, entry: ModelEntry, condition: str) -> tuple[Path, Path, str]:
        key = {
            "model": entry.identity,
            "data": self.data_id,
            "folds": self.plan.folds,
            "seed": self.plan.seed,
            "condition": condition,
        }
        file = self.cache.path("scores", key, ".npz")
        return file, file.with_suffix(".acts"), file.stem

    def evidence_path(self, entry: ModelEntry) -> Path:
        key = {"model": entry.identity, "data": self.data_id, "n": self.plan.n_evidence}
        return self.cache.path("evidence", key, ".npz")

    def gating_path(self, entry: ModelEntry, anc: ModelEntry) -> Path:
        key = {
            "model": entry.identity,
            "role": entry.role,
            "own": self.score_keys[entry.name],
            "ancestor": self.score_keys[anc.name],
            "eval": self.eval_key,
            "alphas": self.plan.ancestor_alphas if entry.role == "ancestor" else self.plan.alpha,
            "control_seeds": self.plan.control_seeds,
            "n_resamples": self.plan.n_resamples,
        }
        return self.cache.path("gating", key, ".csv")


def _free_memory() -> None:
    """Collect a released model (its hooks hold reference cycles) and its CUDA cache."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def _model_steps(run: _Run, entry: ModelEntry, anc: ModelEntry) -> None:
    """Every step that needs ``entry``'s model loaded: its Truth Scores (each condition), its
    attention to evidence and its gating sweep. The model is loaded only if one is missing, and
    released afterwards."""
    from lineage_lens.models import load_model

    todo = []
    for i, cond in enumerate(run.conditions(entry.multimodal)):
        file, acts, key = run.score_path(entry, cond)
        if i == 0:
            run.score_files[entry.name] = file
            run.score_keys[entry.name] = key
            run.acts_dirs[entry.name] = acts
        else:
            run.score_files[f"{entry.name} [{cond}]"] = file
        if not run.cache.done(file, f"{entry.name}: Truth Scores ({cond})"):
            todo.append(("scores", cond, file, acts))
    ev_file = run.evidence_path(entry)
    if not run.cache.done(ev_file, f"{entry.name}: attention to evidence"):
        todo.append(("evidence", None, ev_file, None))
    gate_file = None
    if entry.role != "control":
        reason = _gating_skip(run, entry)
        if reason:
            run.skipped[f"gating {entry.name}"] = reason
        else:
            gate_file = run.gating_path(entry, anc)
            if not run.cache.done(gate_file, f"{entry.name}: gating sweep"):
                todo.append(("gating", None, gate_file, None))
    if not todo:
        return
    log.info("%s: loading %s for %d step(s)", entry.name, entry.source, len(todo))
    model = load_model(entry.source, device=run.device)
    try:
        for step, cond, file, acts in todo:
            if step == "scores":
                _score_step(run, model, entry, cond, file, acts)
            elif step == "evidence":
                _evidence_step(run, model, entry, file)
            else:
                _gating_step(run, model, entry, anc, file)
    finally:
        del model  # released before the next model loads: one model in memory at a time
        _free_memory()


def _gating_skip(run: _Run, entry: ModelEntry) -> str:
    if run.evaluation in ("pope", "chair") and not entry.multimodal:
        return f"{run.evaluation} needs a vision-language model; {entry.name} is text-only"
    anc = run.entries[0]  # whose scores gate every model (the ancestor its own)
    file = run.score_files.get(anc.name)
    if file is not None and file.exists():  # else _gating_step checks once they are computed
        from lineage_lens.scores import TruthScores

        return constant_map_reason(TruthScores.load(file), anc.name, "gate")
    return ""


def constant_map_reason(scores: TruthScores, name: str, use: str) -> str:
    """Why a step that ranks heads by ``name``'s Truth Scores (``use``: what it does with them)
    is skipped when their map is constant (zero variance, e.g. constant activations), else ``""``:
    a constant map ranks no head above another, so any verdict from it would come from nothing."""
    values = np.asarray(scores.accuracy, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() < finite.max():
        return ""
    level = f"every head {finite[0]:.3f}" if finite.size else "no finite score"
    return (
        f"the Truth Score map of {name} is constant ({level}, zero variance): its {use} ranks "
        "no head above another"
    )


def _score_step(run: _Run, model: Any, entry: ModelEntry, cond: str, file: Path, acts: Path):
    from lineage_lens.pipeline import score_model

    scores, _ = score_model(
        model,
        run.examples,
        batch_size=run.plan.batch_size,
        folds=run.plan.folds,
        seed=run.plan.seed,
        dataset=run.data_label,
        activations_out=acts,
        condition=cond,
        progress=run.progress,
    )
    scores.model = entry.name
    scores.meta = {**scores.meta, "condition": cond, "identity": entry.identity}
    scores.save(file)
    run.cache.computed.append(f"{entry.name}: Truth Scores ({cond})")


def evidence_inputs(
    examples: Sequence[ProbeExample], n: int
) -> tuple[list[str], list[list[tuple[int, int]]], list[int]]:
    """Prompts (the paper's template), evidence spans (the context sentences holding the answer,
    in prompt characters) and answer ends of the first ``n`` truthful examples with a context."""
    from lineage_lens.attention import halueval_evidence_spans
    from lineage_lens.data import DEFAULT_TEMPLATE, TRUTHFUL

    prompts, spans, ends = [], [], []
    for ex in examples:
        if ex.label != TRUTHFUL or not ex.context.strip():
            continue
        text, pspans = DEFAULT_TEMPLATE.render(ex)
        c0 = pspans.context[0]
        prompts.append(text)
        spans.append([(c0 + s, c0 + e) for s, e in halueval_evidence_spans(ex.context, ex.answer)])
        ends.append(pspans.answer_end)
        if len(prompts) == n:
            break
    return prompts, spans, ends


def _evidence_step(run: _Run, model: Any, entry: ModelEntry, file: Path) -> None:
    from lineage_lens.attention import evidence_attention

    prompts, spans, ends = evidence_inputs(run.examples, run.plan.n_evidence)
    if len(prompts) < 2:
        run.skipped[f"evidence {entry.name}"] = (
            f"fewer than 2 truthful examples with a context ({len(prompts)})"
        )
        return
    att = evidence_attention(
        model,
        prompts,
        spans,
        query_char_ends=ends,
        batch_size=run.plan.batch_size,
        progress=run.progress,
    )
    att.model = entry.name
    att.save(file)
    run.cache.computed.append(f"{entry.name}: attention to evidence")


def _gating_step(run: _Run, model: Any, entry: ModelEntry, anc: ModelEntry, file: Path) -> None:
    from lineage_lens.scores import TruthScores
    from lineage_lens.sweep import GateSettings, ScoreSource, gating_sweep, transfer_sources

    own = TruthScores.load(run.score_files[entry.name])
    reason = constant_map_reason(
        own if entry.role == "ancestor" else TruthScores.load(run.score_files[anc.name]),
        anc.name,
        "gate",
    )
    if reason:
        run.skipped[f"gating {entry.name}"] = reason
        return
    if entry.role == "ancestor":
        sources, alphas = [ScoreSource("own", own)], run.plan.ancestor_alphas
    else:
        inherited = TruthScores.load(run.score_files[anc.name])
        if inherited.accuracy.shape != own.accuracy.shape:
            run.skipped[f"gating {entry.name}"] = (
                f"head layout {own.accuracy.shape} differs from the ancestor's "
                f"{inherited.accuracy.shape}: the ancestor's scores cannot gate it"
            )
            return
        sources = transfer_sources(inherited, own, control_seeds=run.plan.control_seeds)
        alphas = (run.plan.alpha,)
    frame = gating_sweep(
        model,
        run.evaluator,
        sources,
        alphas,
        gate=GateSettings(norm="center"),
        pool_controls=True,
        rows="groups" if run.evaluation == "halueval" else "summary",
        n_resamples=run.plan.n_resamples,
        progress=run.progress,
    )
    frame.insert(0, "model", entry.name)
    with atomic_open(file, "w", newline="") as fh:
        frame.to_csv(fh, index=False)
    run.cache.computed.append(f"{entry.name}: gating sweep")


def _pair_steps(run: _Run, anc: ModelEntry, entry: ModelEntry, result: dict[str, Any]) -> None:
    """The steps comparing ``entry`` with the ancestor, from cached results and checkpoints."""
    from lineage_lens.cka import HeadCKA, head_cka
    from lineage_lens.lineage import ScoreComparison, check_ks, compare_scores
    from lineage_lens.models import resolve_model_path
    from lineage_lens.scores import TruthScores
    from lineage_lens.weights import WeightDrift, weight_drift

    anc_scores = TruthScores.load(run.score_files[anc.name])
    n_heads = anc_scores.accuracy.size
    ks = tuple(sorted({top_k(run.plan, n_heads), *check_ks(None, n_heads)}))
    names = [entry.name] + [
        n for n in run.score_files if n.startswith(f"{entry.name} [")
    ]  # extra conditions
    for name in names:
        scores = TruthScores.load(run.score_files[name])
        if scores.accuracy.shape != anc_scores.accuracy.shape:
            run.skipped[f"inheritance {name}"] = (
                f"head layout {scores.accuracy.shape} differs from the ancestor's "
                f"{anc_scores.accuracy.shape}"
            )
            continue
        key = {
            "a": run.score_files[anc.name].stem,
            "b": run.score_files[name].stem,
            "n": run.plan.n_resamples,
            "seed": run.plan.seed,
            "ks": ks,
        }

        def compare(scores: TruthScores = scores, name: str = name) -> ScoreComparison:
            return compare_scores(
                anc_scores,
                scores,
                name_a=anc.name,
                name_b=name,
                ks=ks,
                n_resamples=run.plan.n_resamples,
                n_permutations=run.plan.n_resamples,
                seed=run.plan.seed,
            )

        comp = _cached_step(
            run,
            run.cache.path("compare", key, ".json"),
            f"{name}: inheritance statistics",
            f"inheritance {name}",
            compare,
            ScoreComparison.load,
            errors=(DataError,),  # e.g. a constant score map: no correlation is defined
        )
        if comp is not None:
            result["comparisons"][name] = comp

    # weight drift: two checkpoints read tensor by tensor
    def drift() -> WeightDrift:
        out = weight_drift(resolve_model_path(anc.source), resolve_model_path(entry.source))
        out.ancestor, out.descendant = anc.name, entry.name
        return out

    file = run.cache.path("drift", {"a": anc.identity, "b": entry.identity}, ".npz")
    value = _cached_step(
        run, file, f"{entry.name}: weight drift", f"drift {entry.name}", drift, WeightDrift.load
    )
    if value is not None:
        rel = np.array([value.heads[f"{p}_rel"] for p in PROJECTIONS])
        if np.isfinite(rel).all():
            result["drift"][entry.name] = value
        else:  # a statistic from nothing is skipped, never judged
            bad = int((~np.isfinite(rel)).sum())
            run.skipped[f"drift {entry.name}"] = (
                f"the relative weight change is undefined (NaN or inf) for {bad} head "
                f"projection(s): a projection of {anc.name} is all zeros"
            )
    # per-head CKA of the probed activations (same examples, same order)
    acts_a, acts_b = run.acts_dirs[anc.name], run.acts_dirs[entry.name]

    def cka() -> HeadCKA:
        if not (acts_a.is_dir() and acts_b.is_dir()):
            raise DataError(
                "the cached activations are missing (delete the cache folder's scores-*.npz to "
                "capture them again)"
            )
        out = head_cka(acts_a, acts_b, debiased=True, progress=run.progress)
        out.model_a, out.model_b = anc.name, entry.name
        return out

    file = run.cache.path("cka", {"a": acts_a.name, "b": acts_b.name}, ".npz")
    value = _cached_step(
        run,
        file,
        f"{entry.name}: CKA",
        f"cka {entry.name}",
        cka,
        HeadCKA.load,
        errors=(ShapeMismatchError, DataError),
    )
    if value is not None and np.isfinite(value.values).any():
        result["cka"][entry.name] = value
    elif value is not None:  # NaN CKA is skipped, never reported as a number
        run.skipped[f"cka {entry.name}"] = (
            f"CKA is undefined (NaN) for every head: the activations of {anc.name} or "
            f"{entry.name} are constant (zero variance)"
        )


def _cached_step(
    run: _Run,
    file: Path,
    what: str,
    skip_key: str,
    compute: Callable[[], Any],
    load: Callable[[Path], Any],
    errors: tuple[type[Exception], ...] = (ShapeMismatchError,),
) -> Any | None:
    """A comparison step's result: loaded from ``file`` when a run already saved it, else
    computed, saved (``.save(file)``) and recorded as computed. A step that raises one of
    ``errors`` (inputs that cannot be compared) is recorded in ``run.skipped`` under
    ``skip_key`` with the error's message, and gives ``None``."""
    if not run.cache.done(file, what):
        try:
            value = compute()
        except errors as exc:
            run.skipped[skip_key] = " ".join(str(exc).split())
            return None
        value.save(file)
        run.cache.computed.append(what)
    return load(file)


def evidence_statistic(
    att: EvidenceAttention, scores: TruthScores, k: int, *, n_resamples: int, seed: int = 0
) -> dict[str, float]:
    """Mean attention to evidence of the top-``k`` minus the bottom-``k`` heads by ``scores``
    (accuracy), with a paired bootstrap interval over examples
    (:func:`~lineage_lens.stats.paired_bootstrap_delta`)."""
    from lineage_lens.stats import paired_bootstrap_delta

    order = rank_heads(scores.accuracy.ravel())
    per = att.per_example.reshape(len(att), -1)
    top, bottom = per[:, order[:k]].mean(1), per[:, order[-k:]].mean(1)
    delta, low, high = paired_bootstrap_delta(
        np.mean, bottom, top, n_resamples=n_resamples, seed=seed
    )
    return {
        "k": k,
        "n": len(att),
        "top": float(top.mean()),
        "bottom": float(bottom.mean()),
        "delta": delta,
        "ci_low": low,
        "ci_high": high,
    }


def make_evaluator(
    evaluation: str,
    plan: ReportPlan,
    *,
    exclude_ids: Sequence[str] | None,
    eval_dir: str | Path | None,
) -> tuple[Any, dict[str, Any]]:
    """The sweep evaluator of ``evaluation`` and the key its results are cached under.

    ``halueval``: the vendored HaluEval QA judgement (its probing rows excluded when the probes
    used them). ``pope``: the POPE question files ``pope_*.json`` of ``eval_dir`` (images in
    ``eval_dir/images`` if that folder exists, else ``eval_dir``), or the vendored splits with
    COCO images in ``eval_dir``. ``chair``: captions of the images (found by
    :func:`~lineage_lens.evals.chair.find_image_files`); a ``gt_objects.json`` in ``eval_dir`` is
    the ground truth (its ids are the images captioned) and a ``synonyms.txt`` there the object
    vocabulary (default: COCO's).
    """
    from lineage_lens.evals import ChairCaptions, HaluEvalJudgement, ObjectVocabulary, PopeAnswers

    if evaluation not in EVALS:
        raise ConfigError(f"unknown evaluation {evaluation!r}; use one of {', '.join(EVALS)}.")
    if evaluation == "halueval":
        ev = HaluEvalJudgement(
            seeds=plan.eval_seeds,
            exclude_ids=tuple(exclude_ids) if exclude_ids else None,
            limit=plan.eval_rows,
            batch_size=plan.eval_batch_size,
            progress=False,  # the report shows its own progress
        )
        key = {
            "eval": "halueval",
            "seeds": plan.eval_seeds,
            "rows": plan.eval_rows,
            "exclude": json_digest(sorted(exclude_ids or [])),
            "inputs": ev.inputs_identity(),  # the rows' and instruction's text
        }
        return ev, key
    if eval_dir is None or not Path(eval_dir).is_dir():
        raise ConfigError(
            f"evaluation {evaluation!r} needs an image folder: pass eval_dir= (--eval-images "
            f"DIR), got {eval_dir!r}."
        )
    eval_dir = Path(eval_dir)
    images = eval_dir / "images" if (eval_dir / "images").is_dir() else eval_dir
    # keyed by the content of what the evaluator reads (questions, labels, image bytes, ground
    # truth), never by the folder's name: an edited file or image is evaluated again
    key = {"eval": evaluation, "rows": plan.eval_rows}
    if evaluation == "pope":
        files = sorted(eval_dir.glob("pope_*.json"))
        splits: Sequence[Any] = files or ("random", "popular", "adversarial")
        key["splits"] = [f.name for f in files] or list(splits)
        pope = PopeAnswers(
            images,
            splits,
            limit=plan.eval_rows,
            batch_size=plan.eval_batch_size,
            progress=False,
        )
        return pope, key | {"inputs": pope.inputs_identity()}
    gt, synonyms = eval_dir / "gt_objects.json", eval_dir / "synonyms.txt"
    vocabulary = ObjectVocabulary.from_synonyms_file(synonyms) if synonyms.is_file() else None
    key |= {"gt": file_identity(gt), "vocabulary": file_identity(synonyms) or "coco"}
    chair = ChairCaptions(
        images,
        vocabulary=vocabulary,
        ground_truth=gt if gt.is_file() else None,
        limit=plan.eval_rows,
        n_resamples=plan.n_resamples,
        progress=False,
    )
    return chair, key | {"inputs": chair.inputs_identity()}


def lineage_report(
    ancestor: str | Path,
    descendants: Sequence[str | Path],
    *,
    out: str | Path,
    controls: Sequence[str | Path] = (),
    profile: str = "quick",
    plan: ReportPlan | None = None,
    data: Any = "halueval",
    evaluation: str = "halueval",
    eval_dir: str | Path | None = None,
    evaluator: Any = None,
    names: Sequence[str] | None = None,
    device: str | None = None,
    command: str | None = None,
    progress: bool = True,
    write: bool = True,
    executor: str = "serial",
    address: str | None = None,
    max_retries: int = 3,
) -> LineageReport:
    """The paper's analysis of ``ancestor`` and ``descendants`` (and ``controls``), cached under
    ``out/cache`` and written to ``out`` (see the module docstring).

    Args:
        ancestor, descendants, controls: anything :func:`~lineage_lens.models.load_model`
            accepts (packaged alias, local HF directory, ``.gguf`` file, hub name); text or
            multimodal. Controls are unrelated models: compared, never gated.
        out: the report folder (REPORT.md, figures, CSVs, JSON; ``cache/`` holds every step).
        profile: ``quick`` or ``paper`` (:data:`PROFILES`); ``plan`` replaces it entirely.
        data: ``"halueval"`` (vendored), a JSON-lines file, a ``datasets.Dataset`` or a list
            of records: any source :func:`~lineage_lens.data.load_probe_examples` reads.
        evaluation: ``halueval``, ``pope`` or ``chair`` (the latter two with ``eval_dir``).
        evaluator: a sweep evaluator to use instead (:mod:`lineage_lens.evals`, e.g.
            ``ChairCaptions`` with your vocabulary, prompt and ``file_pattern``); its ``task``
            names the evaluation, and its ``repr`` keys the gating cache.
        names: one label per model (ancestor, descendants, controls); default: the last path
            part.
        device: of the models; command: recorded in REPORT.md (default: this call).
        write: write the report files (the cache is always written).
        executor: ``"serial"`` (this process, one model at a time) or ``"ray"``: the ancestor's
            steps run first, then each descendant's and control's steps, then each pair's
            comparisons, as Ray tasks (one model per task, a GPU each when ``device`` is CUDA)
            writing into the same step cache, which must then be a folder every worker sees.
            The report equals the serial one. Needs ``pip install 'lineage-lens[cluster]'``.
        address: the Ray cluster to use (default: ``RAY_ADDRESS``, else a local cluster).
        max_retries: retries of a Ray task whose worker dies; a step is done only once its file
            is published (atomically), so a killed task's partial work never counts.

    Returns:
        a :class:`LineageReport`.
    """
    if not descendants:
        raise ConfigError("give at least one descendant to compare with the ancestor.")
    if plan is None:
        if profile not in PROFILES:
            raise ConfigError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}.")
        plan = PROFILES[profile]
    plan = plan.check()
    check_executor(executor)
    if executor != "serial":
        import_ray()  # before any work: a missing extra is one clear error
    if evaluation not in EVALS:
        raise ConfigError(f"unknown evaluation {evaluation!r}; use one of {', '.join(EVALS)}.")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out {str(out)!r} is a file; pass a folder for the report.")
    examples, data_label, is_halueval = report_examples(data, plan.n_probe, plan.seed)
    probe_ids = sorted({ex.source_id for ex in examples})
    if evaluator is None:
        evaluator, eval_key = make_evaluator(
            evaluation, plan, exclude_ids=probe_ids if is_halueval else None, eval_dir=eval_dir
        )
    else:
        evaluation = getattr(evaluator, "task", evaluation)
        if evaluation not in EVALS:
            raise ConfigError(
                f"evaluator {type(evaluator).__name__} has task {evaluation!r}; give one whose "
                f"task is one of {', '.join(EVALS)}."
            )
        eval_key = {"eval": evaluation, "evaluator": repr(evaluator)}
        if hasattr(evaluator, "inputs_identity"):  # the library's evaluators: by content
            eval_key["inputs"] = evaluator.inputs_identity()
    sources = [ancestor, *descendants, *controls]
    labels = _labels(sources, names)
    roles = ["ancestor"] + ["descendant"] * len(descendants) + ["control"] * len(controls)
    from lineage_lens.models import is_multimodal_source

    # every model is checked (config and weight files whole) before the cache folder is made
    entries = [
        ModelEntry(lab, role, str(src), model_identity(src), is_multimodal_source(src))  # type: ignore[arg-type]
        for src, lab, role in zip(sources, labels, roles, strict=True)
    ]
    run = _Run(
        cache=StepCache(out / "cache"),
        plan=plan,
        examples=examples,
        data_id=examples_identity(examples),
        data_label=data_label,
        is_halueval=is_halueval,
        evaluation=evaluation,
        evaluator=evaluator,
        eval_key=eval_key,
        device=device,
        progress=progress,
    )
    run.entries.extend(entries)
    result: dict[str, Any] = {"comparisons": {}, "drift": {}, "cka": {}}
    with run.cache.lock():
        if executor == "serial":
            _run_serial(run, result)
        else:
            _run_on_ray(run, result, address=address, max_retries=max_retries)
        report = _assemble(run, result, probe_ids, command)
        report.meta["out"] = str(out)
        if write:
            report.save(out)
    log.info(
        "lineage report: computed %d step(s), reused %d",
        len(run.cache.computed),
        len(run.cache.reused),
    )
    return report


def _run_serial(run: _Run, result: dict[str, Any]) -> None:
    """Every model's steps, one model at a time, then every pair's comparisons."""
    anc = run.entries[0]
    bar = tqdm(total=2 * len(run.entries) - 1, desc="lineage report", disable=not run.progress)
    for entry in run.entries:
        bar.set_postfix_str(entry.name)
        _model_steps(run, entry, anc)
        bar.update()
    for entry in run.entries[1:]:
        bar.set_postfix_str(f"{entry.name} vs {anc.name}")
        _pair_steps(run, anc, entry, result)
        bar.update()
    bar.close()


@dataclass
class _StepEffects:
    """What one task added to a run's state (merged into the driver's run in model order)."""

    run_maps: dict[str, dict[str, Any]]
    computed: list[str]
    reused: list[str]
    result: dict[str, dict[str, Any]]


_RUN_MAPS = ("score_files", "score_keys", "acts_dirs", "skipped")


def run_step_task(kind: str, run: _Run, a: ModelEntry, b: ModelEntry) -> _StepEffects:
    """One Ray task of a report: ``kind="model"`` runs model ``a``'s steps (``b`` is the
    ancestor), ``kind="pair"`` compares descendant ``b`` with ancestor ``a``. Runs on a copy of
    the driver's run and returns what it added (public so that Ray pickles it by reference)."""
    before = {name: dict(getattr(run, name)) for name in _RUN_MAPS}
    n_computed, n_reused = len(run.cache.computed), len(run.cache.reused)
    result: dict[str, dict[str, Any]] = {"comparisons": {}, "drift": {}, "cka": {}}
    if kind == "model":
        _model_steps(run, a, b)
    else:
        _pair_steps(run, a, b, result)
    maps = {
        name: {k: v for k, v in getattr(run, name).items() if before[name].get(k) != v}
        for name in _RUN_MAPS
    }
    return _StepEffects(maps, run.cache.computed[n_computed:], run.cache.reused[n_reused:], result)


def _merge(run: _Run, effects: _StepEffects, result: dict[str, Any]) -> None:
    for name, added in effects.run_maps.items():
        getattr(run, name).update(added)
    run.cache.computed.extend(effects.computed)
    run.cache.reused.extend(effects.reused)
    for part, values in effects.result.items():
        result[part].update(values)


def _run_on_ray(
    run: _Run, result: dict[str, Any], *, address: str | None, max_retries: int
) -> None:
    """The serial run's steps as Ray tasks: the ancestor's, then every other model's at once,
    then every pair's comparisons at once; effects merged in model order, as in the serial run."""
    anc, others = run.entries[0], run.entries[1:]
    opts = {"max_retries": max_retries, "progress": run.progress}
    with ray_session(address):
        for kind, calls, device in (
            ("model", [(anc, anc)], run.device),
            ("model", [(e, anc) for e in others], run.device),
            ("pair", [(anc, e) for e in others], None),
        ):
            desc = f"lineage report: {kind} steps ({len(calls)} task(s))"
            tasks = [(kind, run, a, b) for a, b in calls]
            for effects in run_tasks(run_step_task, tasks, device=device, desc=desc, **opts):
                _merge(run, effects, result)


def _assemble(
    run: _Run, result: dict[str, Any], probe_ids: list[str], command: str | None
) -> LineageReport:
    from lineage_lens.attention import EvidenceAttention
    from lineage_lens.scores import TruthScores

    primary = {e.name for e in run.entries}
    scores = {n: TruthScores.load(f) for n, f in run.score_files.items() if n in primary}
    extra = {n: TruthScores.load(f) for n, f in run.score_files.items() if n not in primary}
    evidence, stats = {}, {}
    k = top_k(run.plan, scores[run.entries[0].name].accuracy.size)
    for e in run.entries:
        file = run.evidence_path(e)
        if not file.exists():
            continue
        reason = constant_map_reason(scores[e.name], e.name, "top-vs-bottom split")
        if reason:  # skipped with its reason, like a comparison that cannot be computed
            run.skipped[f"evidence {e.name}"] = reason
            continue
        att = EvidenceAttention.load(file)
        stat = evidence_statistic(
            att,
            scores[e.name],
            top_k(run.plan, scores[e.name].accuracy.size),
            n_resamples=run.plan.n_resamples,
            seed=run.plan.seed,
        )
        if not all(np.isfinite(stat[c]) for c in ("delta", "ci_low", "ci_high")):
            run.skipped[f"evidence {e.name}"] = (
                "the top-minus-bottom attention or its interval is undefined (NaN)"
            )
            continue
        evidence[e.name], stats[e.name] = att, stat
    frames = []
    stat_name = EVAL_STAT[run.evaluation][0]
    for e in run.entries:
        if e.role == "control" or f"gating {e.name}" in run.skipped:
            continue
        file = run.gating_path(e, run.entries[0])
        if file.exists():
            frame = pd.read_csv(file)
            reason = _undefined_transfer(frame, stat_name) if e.role == "descendant" else ""
            if reason:
                run.skipped[f"gating {e.name}"] = reason
                continue
            frames.append(frame)
    gating = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if command is None:
        command = _call_repr(run)
    return LineageReport(
        models=run.entries,
        plan=run.plan,
        evaluation=run.evaluation,
        data=run.data_label,
        scores=scores,
        extra_scores=extra,
        comparisons=result["comparisons"],
        drift=result["drift"],
        cka=result["cka"],
        evidence=evidence,
        evidence_stats=stats,
        gating=gating,
        skipped=dict(run.skipped),
        probe_ids=probe_ids,
        meta={
            "command": command,
            "versions": _versions(),
            "computed": list(run.cache.computed),
            "reused": list(run.cache.reused),
            "k": k,
            "n_examples": len(run.examples),
            "activations": {n: str(p) for n, p in run.acts_dirs.items()},
        },
    )


def _undefined_transfer(frame: pd.DataFrame, stat: str) -> str:
    """Why a descendant's transfer test is skipped: its inherited-vs-control statistic (or its
    interval) is NaN at a gated alpha, e.g. an AUROC of answers that never vary; else ``""``."""
    cols = [f"{stat}_vs_control{s}" for s in ("", "_ci_low", "_ci_high")]
    if not set(cols) <= set(frame.columns) or "scores" not in frame.columns:
        return ""
    rows = frame[(frame["scores"] == "inherited") & (frame["alpha"] != 0)]
    bad = rows[~np.isfinite(rows[cols].to_numpy(dtype=np.float64)).all(axis=1)]
    if bad.empty:
        return ""
    alphas = ", ".join(f"{a:g}" for a in sorted(set(bad["alpha"])))
    return (
        f"the transfer statistic ({stat}, inherited vs control) is undefined (NaN) at alpha "
        f"{alphas}"
    )


def _call_repr(run: _Run) -> str:
    def arg(role: str) -> list[str]:
        return [e.source for e in run.entries if e.role == role]

    return (
        f"lineage_lens.report.lineage_report({arg('ancestor')[0]!r}, {arg('descendant')!r}, "
        f"controls={arg('control')!r}, data={run.data_label!r}, evaluation={run.evaluation!r}, "
        f"plan={run.plan!r})"
    )
