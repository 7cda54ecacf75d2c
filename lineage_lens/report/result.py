"""The result of a lineage report (:class:`LineageReport`): its frames, findings, statistics,
figures and files."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from jaxtyping import Float, Int

from lineage_lens.errors import ConfigError, DataError
from lineage_lens.report.plan import EVAL_STAT, FIGURES, PROJECTIONS, ReportPlan, top_k

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lineage_lens.attention import EvidenceAttention
    from lineage_lens.cka import HeadCKA
    from lineage_lens.lineage import ScoreComparison
    from lineage_lens.scores import TruthScores
    from lineage_lens.weights import WeightDrift

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
            row["cka_mean"] = float(np.nanmean(c.values)) if c else math.nan  # defined heads
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
            order = rank_heads(flat)
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
        if parts:
            lines.append(
                f"**Inherited Truth Scores** ({verdict}: Pearson r with {self.ancestor}, CI above "
                f"0 and permutation p < 0.05): " + "; ".join(parts) + note + "."
            )
        else:
            lines.append(
                "**Inherited Truth Scores** (not measured: " + self._skips("inheritance") + ")."
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
            text = "; ".join(f"{n} {_cka_mean(c.values)}" for n, c in self.cka.items())
            lines.append(f"**Per-head CKA with {self.ancestor}** (mean over heads): {text}.")
        elif any(k.startswith("cka") for k in self.skipped):
            lines.append(
                f"**Per-head CKA with {self.ancestor}** (not measured: " + self._skips("cka") + ")."
            )
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


def rank_heads(flat: Float[np.ndarray, " head"]) -> Int[np.ndarray, " head"]:
    """Flat head indices from the highest score to the lowest (ties: the lower index first)."""
    return np.lexsort((np.arange(flat.size), -flat))


def _verdict(ok: Sequence[bool], what: str) -> str:
    if not ok:
        return "not measured"
    if all(ok):
        return "held"
    if not any(ok):
        return "did not hold"
    return f"held for {sum(ok)} of {len(ok)} {what}"


def _cka_mean(values: np.ndarray) -> str:
    """The mean CKA over the heads where it is defined (a constant head's CKA is NaN), saying
    how many heads it leaves out."""
    ok = np.isfinite(values)
    text = f"{float(values[ok].mean()):.3f}" if ok.any() else "undefined"
    return text if ok.all() else f"{text} ({int((~ok).sum())} of {ok.size} heads undefined)"


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
