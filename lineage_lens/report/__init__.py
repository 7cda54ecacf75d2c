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
   (:mod:`lineage_lens.evals.outcomes`); the ancestor gated with its own scores as the reference.

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

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lineage_lens.errors import ConfigError, DataError, ShapeMismatchError
from lineage_lens.fileio import atomic_open

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lineage_lens.attention import EvidenceAttention
    from lineage_lens.cka import HeadCKA
    from lineage_lens.data import ProbeExample
    from lineage_lens.lineage import ScoreComparison
    from lineage_lens.scores import TruthScores
    from lineage_lens.weights import WeightDrift

log = logging.getLogger(__name__)

#: Changes whenever a step's numbers change for the same inputs (invalidates the caches).
CACHE_VERSION = 1
EVALS: tuple[str, ...] = ("halueval", "pope", "chair")
#: The statistic of each evaluation the transfer test reads, and which direction is better.
EVAL_STAT: dict[str, tuple[str, Literal["higher", "lower"]]] = {
    "halueval": ("auroc", "higher"),
    "pope": ("pope_accuracy", "higher"),
    "chair": ("chair_i", "lower"),
}
PROJECTIONS: tuple[str, ...] = ("q", "k", "v", "o")
FIGURES: tuple[str, ...] = ("inheritance", "heatmaps", "drift", "cka", "evidence", "gating")


@dataclass(frozen=True)
class ReportPlan:
    """Sample sizes and settings of a report (:data:`PROFILES` holds ``quick`` and ``paper``).

    Attributes:
        n_probe: probing source rows (HaluEval: two examples each; a JSONL file or dataset: its
            first split of this many source rows, 0 for all).
        folds, seed: of the probes' cross-validation (and the row split).
        batch_size: prompts per forward pass of the captures.
        eval_rows: evaluation rows (HaluEval rows, POPE questions per split, CHAIR images);
            ``None`` for all.
        eval_seeds: HaluEval answer-order seeds.
        alpha: the descendants' gating strength; ancestor_alphas: the ancestor's own-score sweep.
        control_seeds: permutation seeds of the random control.
        n_resamples: bootstrap resamples and permutations of every interval and p-value.
        n_evidence: truthful examples whose attention to evidence is measured.
        top_k: heads in the top and bottom groups (clipped to a quarter of the heads).
        eval_batch_size: prompts per forward pass of the evaluations.
    """

    n_probe: int = 100
    folds: int = 5
    seed: int = 0
    batch_size: int = 16
    eval_rows: int | None = 40
    eval_seeds: tuple[int, ...] = (0,)
    alpha: float = 4.5
    ancestor_alphas: tuple[float, ...] = (4.5,)
    control_seeds: tuple[int, ...] = (0, 1, 2)
    n_resamples: int = 1000
    n_evidence: int = 50
    top_k: int = 10
    eval_batch_size: int = 8

    def check(self) -> ReportPlan:
        """This plan, or a ConfigError naming the first bad field."""
        ints = {
            "n_probe": 0,
            "folds": 2,
            "batch_size": 1,
            "n_resamples": 10,
            "n_evidence": 2,
            "top_k": 1,
            "eval_batch_size": 1,
        }
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"ReportPlan.{name} must be an integer >= {low}, got {value!r}.")
        if self.eval_rows is not None and self.eval_rows < 2:
            raise ConfigError(f"ReportPlan.eval_rows must be >= 2 or None, got {self.eval_rows}.")
        if not self.eval_seeds:
            raise ConfigError("ReportPlan.eval_seeds must name at least one seed.")
        if not self.control_seeds:
            raise ConfigError("ReportPlan.control_seeds must name at least one seed.")
        if not math.isfinite(self.alpha) or self.alpha == 0:
            raise ConfigError(
                f"ReportPlan.alpha must be a finite non-zero number, got {self.alpha}."
            )
        return self


PROFILES: dict[str, ReportPlan] = {
    "quick": ReportPlan(),
    "paper": ReportPlan(
        n_probe=292,
        eval_rows=None,
        eval_seeds=(0, 1, 2),
        ancestor_alphas=(2.0, 4.5, 8.0),
        n_resamples=10000,
        n_evidence=146,
    ),
}


# --------------------------------------------------------------------------------------------
# Identities and the step cache
# --------------------------------------------------------------------------------------------

_WEIGHT_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".gguf", ".pt")


def model_identity(name_or_path: str | Path) -> str:
    """A content address of a model: for a local directory (aliases and ``.gguf`` files resolve
    to one) the size and first/last MiB of each weight, config and tokenizer file; for a hub
    name the name itself. Equal identities mean the same model for every cached step."""
    from lineage_lens.models import _file_digest, resolve_model_path

    source = resolve_model_path(name_or_path)
    path = Path(source)
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(path.iterdir()):
            if f.is_file() and f.suffix in _WEIGHT_SUFFIXES:
                h.update(f.name.encode())
                h.update(_file_digest(f).encode())
    else:
        h.update(f"hub:{source}".encode())
    return h.hexdigest()[:16]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def examples_identity(examples: Sequence[ProbeExample]) -> str:
    """A content address of probing examples (images by their pixels or path)."""
    h = hashlib.sha256()
    for ex in examples:
        row = ex.to_row()
        image = row.pop("image", None)
        h.update(json.dumps(row, sort_keys=True).encode())
        if image is not None and hasattr(image, "tobytes"):
            h.update(hashlib.sha256(image.tobytes()).digest())
    return h.hexdigest()[:16]


class StepCache:
    """Finished steps under ``root``: one file (or folder) per step and key; a step is done when
    its file exists (every file is written atomically). Records what it computed and reused."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.computed: list[str] = []
        self.reused: list[str] = []

    def path(self, step: str, key: Mapping[str, Any], suffix: str) -> Path:
        return self.root / f"{step}-{_digest({'v': CACHE_VERSION, **key})}{suffix}"

    def done(self, path: Path, what: str) -> bool:
        if path.exists():
            self.reused.append(what)
            log.info("%s: cached in %s", what, path.name)
            return True
        return False


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@dataclass
class ModelEntry:
    """One model of the report: its label, role (ancestor, descendant or control), what the user
    named it, its content identity and whether it is multimodal."""

    name: str
    role: Literal["ancestor", "descendant", "control"]
    source: str
    identity: str
    multimodal: bool = False


@dataclass(repr=False)
class LineageReport:
    """Everything a :func:`lineage_report` measured.

    Attributes:
        models: ancestor first, then descendants, then controls.
        scores: ``{name: TruthScores}`` of the primary condition (text; ``text_only`` on a
            multimodal model); ``extra_scores``: ``{"name [condition]": TruthScores}`` of further
            conditions (``image``).
        comparisons: ``{name: ScoreComparison}`` against the ancestor (extra conditions too).
        drift, cka: ``{name: WeightDrift / HeadCKA}`` where the shapes allow.
        evidence: ``{name: EvidenceAttention}``; evidence_stats: per model the top-k minus
            bottom-k attention with its paired bootstrap interval.
        gating: the sweep frame (one row per model, score source, alpha, control seed and group).
        skipped: ``{step: reason}`` of every step that could not run.
        plan, evaluation, data: how it was run; meta: command, versions, computed/reused steps.
    """

    models: list[ModelEntry]
    plan: ReportPlan
    evaluation: str
    data: str
    scores: dict[str, TruthScores]
    extra_scores: dict[str, TruthScores]
    comparisons: dict[str, ScoreComparison]
    drift: dict[str, WeightDrift]
    cka: dict[str, HeadCKA]
    evidence: dict[str, EvidenceAttention]
    evidence_stats: dict[str, dict[str, float]]
    gating: pd.DataFrame
    skipped: dict[str, str] = field(default_factory=dict)
    probe_ids: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    # ----------------------------------------------------------------- accessors
    @property
    def ancestor(self) -> str:
        return self.models[0].name

    def names(self, *roles: str) -> list[str]:
        return [m.name for m in self.models if not roles or m.role in roles]

    def __repr__(self) -> str:
        return (
            f"LineageReport(ancestor={self.ancestor!r}, descendants={self.names('descendant')}, "
            f"controls={self.names('control')}, evaluation={self.evaluation!r})"
        )

    # ----------------------------------------------------------------- frames
    def transfer(self) -> pd.DataFrame:
        """Per descendant and alpha: the inherited gate's change vs ungated and vs the control,
        and the own and control gates' changes vs ungated (the evaluation's paired statistic)."""
        stat, _ = EVAL_STAT[self.evaluation]
        rows = []
        g = self.gating
        if g.empty or f"{stat}_delta" not in g.columns:
            return pd.DataFrame()
        for name in self.names("descendant"):
            sub = g[g["model"] == name]
            for alpha in sorted(set(sub["alpha"]) - {0.0}):
                at = sub[sub["alpha"] == alpha]

                def first(source: str, col: str, at: pd.DataFrame = at) -> float:
                    vals = at.loc[at["scores"] == source, col]
                    return float(vals.iloc[0]) if len(vals) else math.nan

                row: dict[str, Any] = {"model": name, "alpha": float(alpha), "stat": stat}
                for source, tag in (("inherited", "inherited"), ("own", "own")):
                    for suffix in ("", "_ci_low", "_ci_high"):
                        row[f"{tag}_delta{suffix}"] = first(source, f"{stat}_delta{suffix}")
                for suffix in ("", "_ci_low", "_ci_high"):
                    row[f"control_delta{suffix}"] = first("random control", f"{stat}_delta{suffix}")
                    row[f"inherited_vs_control{suffix}"] = first(
                        "inherited", f"{stat}_vs_control{suffix}"
                    )
                rows.append(row)
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        """One row per model compared with the ancestor: inheritance (r, CI, permutation p, top-k
        overlap), mean weight drift and CKA, top-minus-bottom evidence attention and the
        transfer test (descendants)."""
        transfer = self.transfer()
        rows = []
        for name, comp in self.comparisons.items():
            base = name.split(" [")[0]
            role = next(m.role for m in self.models if m.name == base)
            k = self._k()
            topk = comp.topk_frame().set_index("k")
            row: dict[str, Any] = {
                "model": name,
                "role": role,
                "pearson_r": comp.pearson.r,
                "pearson_ci_low": comp.pearson.ci_low,
                "pearson_ci_high": comp.pearson.ci_high,
                "pearson_p_permutation": comp.pearson.p_permutation,
                "spearman_r": comp.spearman.r,
                "spearman_p_permutation": comp.spearman.p_permutation,
                "topk": k,
                "topk_overlap": float(topk.loc[k, "overlap"]) if k in topk.index else math.nan,
                "topk_expected": float(topk.loc[k, "expected"]) if k in topk.index else math.nan,
            }
            d = self.drift.get(name)
            for p in PROJECTIONS:
                row[f"drift_{p}"] = float(np.mean(d.heads[f"{p}_rel"])) if d else math.nan
            c = self.cka.get(name)
            row["cka_mean"] = float(np.mean(c.values)) if c else math.nan
            ev = self.evidence_stats.get(name, {})
            for key in ("delta", "ci_low", "ci_high"):
                row[f"evidence_top_minus_bottom{'' if key == 'delta' else '_' + key}"] = ev.get(
                    key, math.nan
                )
            t = transfer[transfer["model"] == name] if len(transfer) else transfer
            if len(t):
                best = t.iloc[-1]  # the descendants' sweep has one alpha
                for col in (
                    "inherited_delta",
                    "inherited_delta_ci_low",
                    "inherited_delta_ci_high",
                    "inherited_vs_control",
                    "inherited_vs_control_ci_low",
                    "inherited_vs_control_ci_high",
                ):
                    row[f"transfer_{col}"] = float(best[col])
            rows.append(row)
        return pd.DataFrame(rows)

    def scores_frame(self) -> pd.DataFrame:
        """Per head (``layer``, ``head``), every model's primary Truth Score (accuracy); models
        of another shape than the ancestor are left out."""
        anc = self.scores[self.ancestor]
        n_layers, n_heads = anc.accuracy.shape
        frame = pd.DataFrame(
            {
                "layer": np.repeat(np.arange(n_layers), n_heads),
                "head": np.tile(np.arange(n_heads), n_layers),
            }
        )
        for name, s in {**self.scores, **self.extra_scores}.items():
            if s.accuracy.shape == anc.accuracy.shape:
                frame[name] = s.accuracy.ravel()
        return frame

    def drift_frame(self) -> pd.DataFrame:
        """Per compared model and layer, the mean relative change of W_Q/W_K/W_V/W_O."""
        rows = []
        for name, d in self.drift.items():
            for layer in range(d.shape[0]):
                row: dict[str, Any] = {"descendant": name, "layer": layer}
                row |= {p: float(d.heads[f"{p}_rel"][layer].mean()) for p in PROJECTIONS}
                rows.append(row)
        return pd.DataFrame(rows, columns=["descendant", "layer", *PROJECTIONS])

    def cka_frame(self) -> pd.DataFrame:
        """Per compared model and head, its CKA with the ancestor."""
        frames = [c.to_frame().assign(model=name) for name, c in self.cka.items()]
        if not frames:
            return pd.DataFrame(columns=["model", "layer", "head", "cka"])
        return pd.concat(frames, ignore_index=True)[["model", "layer", "head", "cka"]]

    def evidence_frame(self) -> pd.DataFrame:
        """Per model and head: attention to evidence, own Truth Score and top/bottom group."""
        rows = []
        k = self._k()
        for name, att in self.evidence.items():
            frame = att.to_frame()[["layer", "head", "attention"]]
            flat = self.scores[name].accuracy.ravel()
            group = np.full(flat.size, "middle", dtype=object)
            order = _rank(flat)
            group[order[:k]] = f"top-{k}"
            group[order[-k:]] = f"bottom-{k}"
            rows.append(frame.assign(model=name, truth_score=flat, group=group))
        if not rows:
            return pd.DataFrame(columns=["model", "layer", "head", "attention", "truth_score"])
        return pd.concat(rows, ignore_index=True)[
            ["model", "layer", "head", "attention", "truth_score", "group"]
        ]

    def _k(self) -> int:
        return top_k(self.plan, self.scores[self.ancestor].accuracy.size)

    # ----------------------------------------------------------------- findings
    def findings(self) -> list[str]:
        """One line per question: what held and what did not, from the measured numbers."""
        lines = []
        desc, ctrl = self.names("descendant"), self.names("control")
        # 1. inheritance
        parts, held = [], []
        for name in [*desc, *ctrl]:
            c = self.comparisons.get(name)
            if c is None:
                continue
            ok = c.pearson.ci_low > 0 and c.pearson.p_permutation < 0.05
            if name in desc:
                held.append(ok)
            parts.append(
                f"{name} r = {_num(c.pearson.r)} [{_num(c.pearson.ci_low)}, "
                f"{_num(c.pearson.ci_high)}], p = {_num(c.pearson.p_permutation, '.3g')}"
            )
        verdict = _verdict(held, "descendants")
        note = ""
        if ctrl and desc and all(n in self.comparisons for n in [*desc, *ctrl]):
            lo_desc = min(self.comparisons[n].pearson.r for n in desc)
            hi_ctrl = max(self.comparisons[n].pearson.r for n in ctrl)
            note = (
                "; every descendant above every control"
                if lo_desc > hi_ctrl
                else "; a control reaches a descendant's r (family not separated)"
            )
        lines.append(
            f"**Inherited Truth Scores** ({verdict}: Pearson r with {self.ancestor}, CI above 0 "
            f"and permutation p < 0.05): " + "; ".join(parts) + note + "."
        )
        # 2. weights
        if self.drift:
            mean = {
                n: float(np.mean([d.heads[f"{p}_rel"].mean() for p in PROJECTIONS]))
                for n, d in self.drift.items()
            }
            text = "; ".join(f"{n} {v:.4f}" for n, v in mean.items())
            d_in = [mean[n] for n in desc if n in mean]
            c_in = [mean[n] for n in ctrl if n in mean]
            if d_in and c_in:
                v = "held" if max(d_in) < min(c_in) else "did not hold"
                lines.append(
                    f"**Weights stay close** ({v}: every descendant drifts less than every "
                    f"control): mean relative change of W_Q/W_K/W_V/W_O: {text}."
                )
            else:
                lines.append(
                    f"**Weights stay close** (not judged: no control of the same shape): mean "
                    f"relative change of W_Q/W_K/W_V/W_O: {text}."
                )
        else:
            lines.append("**Weights stay close** (not measured: " + self._skips("drift") + ").")
        if self.cka:
            text = "; ".join(f"{n} {float(np.mean(c.values)):.3f}" for n, c in self.cka.items())
            lines.append(f"**Per-head CKA with {self.ancestor}** (mean over heads): {text}.")
        # 3. evidence
        if self.evidence_stats:
            ok = [s["ci_low"] > 0 for s in self.evidence_stats.values()]
            text = "; ".join(
                f"{n} {s['delta']:+.4f} [{s['ci_low']:+.4f}, {s['ci_high']:+.4f}]"
                for n, s in self.evidence_stats.items()
            )
            lines.append(
                f"**Top heads attend to evidence** ({_verdict(ok, 'models')}: top-{self._k()} "
                f"minus bottom-{self._k()} heads' attention, CI above 0): {text}."
            )
        else:
            lines.append(
                "**Top heads attend to evidence** (not measured: " + self._skips("evidence") + ")."
            )
        # 4. transfer
        t = self.transfer()
        stat, better = EVAL_STAT[self.evaluation]
        if len(t):
            sign = 1 if better == "higher" else -1
            ok, parts = [], []
            for r in t.itertuples():
                lo, hi = r.inherited_vs_control_ci_low, r.inherited_vs_control_ci_high
                ok.append(sign * (lo if sign > 0 else hi) > 0)
                parts.append(
                    f"{r.model} at alpha {r.alpha:g}: inherited vs control "
                    f"{_change(r.inherited_vs_control, lo, hi)}, vs ungated "
                    f"{_change(r.inherited_delta, r.inherited_delta_ci_low, r.inherited_delta_ci_high)}"
                    f" (own {r.own_delta:+.3f}, control {r.control_delta:+.3f})"
                )
            lines.append(
                f"**Transfer** ({_verdict(ok, 'descendants')}: the ancestor's scores gate the "
                f"descendant's {self.evaluation} {stat} better than a random control "
                f"({len(self.plan.control_seeds)} seeds), CI excluding 0, {better} is better): "
                + "; ".join(parts)
                + "."
            )
        else:
            lines.append("**Transfer** (not measured: " + self._skips("gating") + ").")
        return lines

    def _skips(self, step: str) -> str:
        reasons = [f"{k}: {v}" for k, v in self.skipped.items() if k.startswith(step)]
        return "; ".join(reasons) or "nothing to compare"

    # ----------------------------------------------------------------- statistics
    def statistics(self) -> dict[str, Any]:
        """Every statistic of the report as JSON-ready values."""
        return _jsonable(
            {
                "ancestor": self.ancestor,
                "models": [asdict(m) for m in self.models],
                "plan": asdict(self.plan),
                "evaluation": self.evaluation,
                "data": self.data,
                "findings": self.findings(),
                "comparisons": {n: c.to_dict() for n, c in self.comparisons.items()},
                "drift": {
                    n: {f"{p}_rel_mean": float(d.heads[f"{p}_rel"].mean()) for p in PROJECTIONS}
                    | {f"{c}_rel_mean": float(d.heads[f"{c}_rel"].mean()) for c in ("qk", "ov")}
                    for n, d in self.drift.items()
                },
                "cka": {
                    n: {"mean": float(np.mean(c.values)), "debiased": c.debiased, "n": c.n}
                    for n, c in self.cka.items()
                },
                "evidence": self.evidence_stats,
                "transfer": self.transfer().to_dict(orient="records"),
                "summary": self.to_frame().to_dict(orient="records"),
                "skipped": self.skipped,
                "meta": self.meta,
            }
        )

    # ----------------------------------------------------------------- plots
    def plot(self, kind: str = "overview") -> Figure:
        """One figure: ``overview`` (scores scatter, drift, gating) or one of :data:`FIGURES`."""
        from lineage_lens.report import render as plots

        if kind == "overview":
            return plots.overview(self)
        if kind not in FIGURES:
            raise ConfigError(f"unknown figure {kind!r}; use overview or one of {FIGURES}.")
        return getattr(plots, kind)(self)

    # ----------------------------------------------------------------- I/O
    def save(self, out: str | Path) -> Path:
        """Write REPORT.md, the figures (PNG), the CSV of every plotted number, statistics.json
        and report.json (what :meth:`load` reads) into ``out``; returns REPORT.md's path."""
        from lineage_lens.report.render import write_report

        return write_report(self, Path(out))

    @classmethod
    def load(cls, out: str | Path) -> LineageReport:
        """Read a report folder written by :meth:`save`."""
        from lineage_lens.attention import EvidenceAttention
        from lineage_lens.cka import HeadCKA
        from lineage_lens.lineage import ScoreComparison
        from lineage_lens.scores import TruthScores
        from lineage_lens.weights import WeightDrift

        out = Path(out)
        path = out / "report.json"
        try:
            manifest = json.loads(path.read_text())
            files = manifest["files"]
            return cls(
                models=[ModelEntry(**m) for m in manifest["models"]],
                plan=ReportPlan(
                    **{
                        k: tuple(v) if isinstance(v, list) else v
                        for k, v in manifest["plan"].items()
                    }
                ),
                evaluation=manifest["evaluation"],
                data=manifest["data"],
                scores={n: TruthScores.load(out / f) for n, f in files["scores"].items()},
                extra_scores={
                    n: TruthScores.load(out / f) for n, f in files["extra_scores"].items()
                },
                comparisons={
                    n: ScoreComparison.from_dict(_nan(d))
                    for n, d in manifest["comparisons"].items()
                },
                drift={n: WeightDrift.load(out / f) for n, f in files["drift"].items()},
                cka={n: HeadCKA.load(out / f) for n, f in files["cka"].items()},
                evidence={n: EvidenceAttention.load(out / f) for n, f in files["evidence"].items()},
                evidence_stats=_nan(manifest["evidence_stats"]),
                gating=pd.read_csv(out / files["gating"]) if files["gating"] else pd.DataFrame(),
                skipped=manifest["skipped"],
                probe_ids=manifest["probe_ids"],
                meta=manifest["meta"],
            )
        except FileNotFoundError as exc:
            raise DataError(
                f"not a lineage report folder ({exc.filename} is missing); write one with "
                "lineage_report(..., out=DIR) or `lineage-lens report`.",
                path=out,
            ) from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed report.json ({exc})", path=path) from exc


def top_k(plan: ReportPlan, n_heads: int) -> int:
    """Heads in the top and bottom groups: ``plan.top_k``, at most a quarter of the heads."""
    return max(1, min(plan.top_k, n_heads // 4))


def _rank(flat: np.ndarray) -> np.ndarray:
    """Head indices from the highest score to the lowest (ties by index)."""
    return np.lexsort((np.arange(flat.size), -flat))


def _verdict(ok: Sequence[bool], what: str) -> str:
    if not ok:
        return "not measured"
    if all(ok):
        return "held"
    if not any(ok):
        return "did not hold"
    return f"held for {sum(ok)} of {len(ok)} {what}"


def _num(value: float, spec: str = ".3f") -> str:
    """``value`` formatted, or an en dash where it is not a finite number (an undefined CI)."""
    return format(value, spec) if math.isfinite(value) else "–"


def _change(value: float, low: float, high: float) -> str:
    return f"{_num(value, '+.3f')} [{_num(low, '+.3f')}, {_num(high, '+.3f')}]"


def _nan(obj: Any) -> Any:
    """``obj`` read from JSON with ``None`` (how :func:`_jsonable` writes NaN) back as NaN."""
    if isinstance(obj, dict):
        return {k: _nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan(v) for v in obj]
    return math.nan if obj is None else obj


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def report_examples(data: Any, n_probe: int, seed: int) -> tuple[list[ProbeExample], str, bool]:
    """The probing examples of ``data`` (``"halueval"``, a TruthProbe JSON-lines file, a
    ``datasets.Dataset`` or a list of :class:`~lineage_lens.data.ProbeExample`), a label of the
    data, and whether they are the vendored HaluEval's probing rows (whose evaluation rows the
    HaluEval judgement then excludes). Validated before any model loads (DataError naming
    missing columns or bad lines)."""
    from lineage_lens.data import ProbeExample, check_two_classes, split_probe_eval
    from lineage_lens.hf_datasets import is_dataset
    from lineage_lens.pipeline import probing_examples

    if isinstance(data, (str, Path)):
        is_halueval = str(data).lower() == "halueval"
        if not is_halueval and not Path(data).is_file():
            raise DataError(
                "no such file, and not a known dataset name (known: 'halueval').", path=data
            )
        examples = probing_examples(data, n=n_probe, seed=seed)
        label = "halueval" if is_halueval else str(data)
    elif is_dataset(data):
        from lineage_lens.hf_datasets import from_dataset

        examples = from_dataset(data, "truthprobe")
        if n_probe:
            examples, _ = split_probe_eval(examples, n_probe=n_probe, seed=seed)
        label, is_halueval = f"datasets.Dataset ({len(data)} rows)", False
    else:
        examples = list(data)
        if not all(isinstance(e, ProbeExample) for e in examples):
            raise ConfigError(
                "data must be 'halueval', a TruthProbe JSON-lines file, a datasets.Dataset or a "
                "list of ProbeExample."
            )
        if n_probe:
            examples, _ = split_probe_eval(examples, n_probe=n_probe, seed=seed)
        label, is_halueval = f"{len(examples)} ProbeExample objects", False
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
    return ""


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
    from lineage_lens.lineage import DEFAULT_KS, ScoreComparison, compare_scores
    from lineage_lens.models import resolve_model_path
    from lineage_lens.scores import TruthScores
    from lineage_lens.weights import WeightDrift, weight_drift

    anc_scores = TruthScores.load(run.score_files[anc.name])
    ks = tuple(sorted({top_k(run.plan, anc_scores.accuracy.size), *DEFAULT_KS}))
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
        file = run.cache.path("compare", key, ".json")
        if not run.cache.done(file, f"{name}: inheritance statistics"):
            try:
                comp = compare_scores(
                    anc_scores,
                    scores,
                    name_a=anc.name,
                    name_b=name,
                    ks=ks,
                    n_resamples=run.plan.n_resamples,
                    n_permutations=run.plan.n_resamples,
                    seed=run.plan.seed,
                )
            except DataError as exc:  # e.g. a constant score map: no correlation is defined
                run.skipped[f"inheritance {name}"] = " ".join(str(exc).split())
                continue
            comp.save(file)
            run.cache.computed.append(f"{name}: inheritance statistics")
        result["comparisons"][name] = ScoreComparison.load(file)
    # weight drift: two checkpoints read tensor by tensor
    file = run.cache.path("drift", {"a": anc.identity, "b": entry.identity}, ".npz")
    if not run.cache.done(file, f"{entry.name}: weight drift"):
        try:
            drift = weight_drift(resolve_model_path(anc.source), resolve_model_path(entry.source))
        except ShapeMismatchError as exc:
            run.skipped[f"drift {entry.name}"] = " ".join(str(exc).split())
            drift = None
        if drift is not None:
            drift.ancestor, drift.descendant = anc.name, entry.name
            drift.save(file)
            run.cache.computed.append(f"{entry.name}: weight drift")
    if file.exists():
        result["drift"][entry.name] = WeightDrift.load(file)
    # per-head CKA of the probed activations (same examples, same order)
    acts_a, acts_b = run.acts_dirs[anc.name], run.acts_dirs[entry.name]
    file = run.cache.path("cka", {"a": acts_a.name, "b": acts_b.name}, ".npz")
    if not run.cache.done(file, f"{entry.name}: CKA"):
        if not (acts_a.is_dir() and acts_b.is_dir()):
            run.skipped[f"cka {entry.name}"] = (
                "the cached activations are missing (delete the cache folder's scores-*.npz to "
                "capture them again)"
            )
        else:
            try:
                sim = head_cka(acts_a, acts_b, debiased=True, progress=run.progress)
            except ShapeMismatchError as exc:
                run.skipped[f"cka {entry.name}"] = " ".join(str(exc).split())
                sim = None
            if sim is not None:
                sim.model_a, sim.model_b = anc.name, entry.name
                sim.save(file)
                run.cache.computed.append(f"{entry.name}: CKA")
    if file.exists():
        result["cka"][entry.name] = HeadCKA.load(file)


def evidence_statistic(
    att: EvidenceAttention, scores: TruthScores, k: int, *, n_resamples: int, seed: int = 0
) -> dict[str, float]:
    """Mean attention to evidence of the top-``k`` minus the bottom-``k`` heads by ``scores``
    (accuracy), with a paired bootstrap interval over examples
    (:func:`~lineage_lens.stats.paired_bootstrap_delta`)."""
    from lineage_lens.stats import paired_bootstrap_delta

    order = _rank(scores.accuracy.ravel())
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
    COCO images in ``eval_dir``. ``chair``: captions of the images in ``eval_dir`` (a
    ``gt_objects.json`` there is the ground truth).
    """
    from lineage_lens.evals.outcomes import ChairCaptions, HaluEvalJudgement, PopeAnswers

    if evaluation not in EVALS:
        raise ConfigError(f"unknown evaluation {evaluation!r}; use one of {', '.join(EVALS)}.")
    if evaluation == "halueval":
        ev = HaluEvalJudgement(
            seeds=plan.eval_seeds,
            exclude_ids=tuple(exclude_ids) if exclude_ids else None,
            limit=plan.eval_rows,
            batch_size=plan.eval_batch_size,
        )
        key = {
            "eval": "halueval",
            "seeds": plan.eval_seeds,
            "rows": plan.eval_rows,
            "exclude": _digest(sorted(exclude_ids or [])),
        }
        return ev, key
    if eval_dir is None or not Path(eval_dir).is_dir():
        raise ConfigError(
            f"evaluation {evaluation!r} needs an image folder: pass eval_dir= (--eval-images "
            f"DIR), got {eval_dir!r}."
        )
    eval_dir = Path(eval_dir)
    images = eval_dir / "images" if (eval_dir / "images").is_dir() else eval_dir
    key = {"eval": evaluation, "dir": str(eval_dir.resolve()), "rows": plan.eval_rows}
    if evaluation == "pope":
        files = sorted(eval_dir.glob("pope_*.json"))
        splits: Sequence[Any] = files or ("random", "popular", "adversarial")
        key["splits"] = [f.name for f in files] or list(splits)
        return (
            PopeAnswers(images, splits, limit=plan.eval_rows, batch_size=plan.eval_batch_size),
            key,
        )
    gt = eval_dir / "gt_objects.json"
    return (
        ChairCaptions(
            images,
            ground_truth=gt if gt.is_file() else None,
            limit=plan.eval_rows,
            n_resamples=plan.n_resamples,
        ),
        key,
    )


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
) -> LineageReport:
    """The paper's analysis of ``ancestor`` and ``descendants`` (and ``controls``), cached under
    ``out/cache`` and written to ``out`` (see the module docstring).

    Args:
        ancestor, descendants, controls: anything :func:`~lineage_lens.models.load_model`
            accepts (packaged alias, local HF directory, ``.gguf`` file, hub name); text or
            multimodal. Controls are unrelated models: compared, never gated.
        out: the report folder (REPORT.md, figures, CSVs, JSON; ``cache/`` holds every step).
        profile: ``quick`` or ``paper`` (:data:`PROFILES`); ``plan`` replaces it entirely.
        data: ``"halueval"`` (vendored), a TruthProbe JSON-lines file, a ``datasets.Dataset``
            in the TruthProbe or HaluEval columns, or a list of ProbeExample.
        evaluation: ``halueval``, ``pope`` or ``chair`` (the latter two with ``eval_dir``).
        evaluator: a sweep evaluator to use instead (:mod:`lineage_lens.evals.outcomes`, e.g.
            ``ChairCaptions`` with your vocabulary, prompt and ``file_pattern``); its ``task``
            names the evaluation, and its ``repr`` keys the gating cache.
        names: one label per model (ancestor, descendants, controls); default: the last path
            part.
        device: of the models; command: recorded in REPORT.md (default: this call).
        write: write the report files (the cache is always written).

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
    sources = [ancestor, *descendants, *controls]
    labels = _labels(sources, names)
    roles = ["ancestor"] + ["descendant"] * len(descendants) + ["control"] * len(controls)
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
    for src, lab, role in zip(sources, labels, roles, strict=True):
        run.entries.append(
            ModelEntry(lab, role, str(src), model_identity(src), _is_multimodal(src))  # type: ignore[arg-type]
        )
    anc = run.entries[0]
    result: dict[str, Any] = {"comparisons": {}, "drift": {}, "cka": {}}
    bar = tqdm(total=2 * len(run.entries) - 1, desc="lineage report", disable=not progress)
    for entry in run.entries:
        bar.set_postfix_str(entry.name)
        _model_steps(run, entry, anc)
        bar.update()
    for entry in run.entries[1:]:
        bar.set_postfix_str(f"{entry.name} vs {anc.name}")
        _pair_steps(run, anc, entry, result)
        bar.update()
    bar.close()
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


def _is_multimodal(source: str | Path) -> bool:
    """Whether a model's config names a vision tower (read from its config, no model load)."""
    from lineage_lens.models import resolve_model_path

    path = Path(resolve_model_path(source))
    if not path.is_dir():
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(str(path)).to_dict()
    else:
        cfg = json.loads((path / "config.json").read_text())
    return any(k in cfg for k in ("vision_config", "vision_tower", "visual"))


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
        if file.exists():
            evidence[e.name] = EvidenceAttention.load(file)
            stats[e.name] = evidence_statistic(
                evidence[e.name],
                scores[e.name],
                top_k(run.plan, scores[e.name].accuracy.size),
                n_resamples=run.plan.n_resamples,
                seed=run.plan.seed,
            )
    frames = []
    for e in run.entries:
        if e.role == "control" or f"gating {e.name}" in run.skipped:
            continue
        file = run.gating_path(e, run.entries[0])
        if file.exists():
            frames.append(pd.read_csv(file))
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


def _call_repr(run: _Run) -> str:
    def arg(role: str) -> list[str]:
        return [e.source for e in run.entries if e.role == role]

    return (
        f"lineage_lens.report.lineage_report({arg('ancestor')[0]!r}, {arg('descendant')!r}, "
        f"controls={arg('control')!r}, data={run.data_label!r}, evaluation={run.evaluation!r}, "
        f"plan={run.plan!r})"
    )


__all__ = [
    "EVALS",
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
