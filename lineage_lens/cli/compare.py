"""``lineage-lens compare`` (score inheritance) and ``lineage-lens drift`` (weight drift)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from lineage_lens.cli import app
from lineage_lens.cli._options import Metric, seed_option


def _label(path: Path, taken: set[str]) -> str:
    name = path.stem
    if name in taken:
        name = str(path)
    taken.add(name)
    return name


@app.command()
def compare(
    scores: list[Path] = typer.Argument(
        ...,
        help="Two or more score files: our .npz, the paper's [L, H] .npy, or a "
        "cv5_head_metrics.csv.",
    ),
    metric: Metric = "accuracy",
    names: str | None = typer.Option(
        None, help="Comma-separated labels, one per file (default: file stems)."
    ),
    n_resamples: int = typer.Option(2000, help="Bootstrap resamples for the 95 % CIs."),
    n_permutations: int = typer.Option(2000, help="Head shuffles for the permutation p-values."),
    top_k: str = typer.Option(
        "",
        help="Comma-separated k for top-k overlap, each from 1 to the number of heads "
        "(default: 10,20,50,100, those up to the number of heads).",
    ),
    seed: int = seed_option("bootstrap and permutations"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for machines."),
    out: Path | None = typer.Option(None, help="Also save the full comparison as JSON here."),
) -> None:
    """Correlate per-head scores of several models: Pearson/Spearman with CIs and p-values."""
    from lineage_lens.cli._checks import check_at_least, check_output
    from lineage_lens.errors import ConfigError
    from lineage_lens.lineage import compare_many
    from lineage_lens.scores import load_scores

    if len(scores) < 2:
        raise ConfigError("compare needs at least two score files")
    check_output(out, (".json",), "--out")
    check_at_least(n_resamples, "--n-resamples", 1)
    check_at_least(n_permutations, "--n-permutations", 1)
    if names:
        labels = [s.strip() for s in names.split(",")]
        if len(labels) != len(scores) or len(set(labels)) != len(labels):
            raise ConfigError(f"--names needs {len(scores)} distinct labels, got {labels}")
    else:
        taken: set[str] = set()
        labels = [_label(p, taken) for p in scores]
    try:
        ks = tuple(int(k) for k in top_k.split(",") if k.strip()) or None
    except ValueError as exc:
        raise ConfigError(f"--top-k must be comma-separated integers, got {top_k!r}") from exc
    for k in ks or ():
        check_at_least(k, "--top-k", 1)  # above the number of heads: a ConfigError once loaded
    loaded = {lab: load_scores(p) for lab, p in zip(labels, scores, strict=True)}
    result = compare_many(
        loaded,
        metric=metric,
        ks=ks,
        n_resamples=n_resamples,
        n_permutations=n_permutations,
        seed=seed,
    )
    if out is not None:
        result.save(out)
    if as_json:
        payload = {
            "names": labels,
            "metric": metric,
            "pearson": result.matrix("pearson").to_dict(),
            "spearman": result.matrix("spearman").to_dict(),
            "pairs": [c.to_dict() for c in result.comparisons.values()],
        }
        typer.echo(json.dumps(payload, indent=1, default=_json_default))
        return
    for method in ("pearson", "spearman"):
        typer.echo(f"{method.capitalize()} r ({metric}, {len(labels)} models):")
        typer.echo(result.matrix(method).round(3).to_string())
        typer.echo("")
    typer.echo("pairs (95 % bootstrap CI, two-sided permutation p over head shuffles):")
    for c in result.comparisons.values():
        top = ", ".join(
            f"top-{r.k} {r.overlap} (chance {r.expected:.1f})" for r in c.topk.itertuples()
        )
        typer.echo(
            f"  {c.name_a} vs {c.name_b}: Pearson {c.pearson.r:.3f} "
            f"[{c.pearson.ci_low:.3f}, {c.pearson.ci_high:.3f}] p={c.pearson.p_permutation:.2g}; "
            f"Spearman {c.spearman.r:.3f} [{c.spearman.ci_low:.3f}, {c.spearman.ci_high:.3f}] "
            f"p={c.spearman.p_permutation:.2g}; {top}"
        )


def _json_default(obj: object) -> object:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(type(obj).__name__)


@app.command()
def drift(
    ancestor: str = typer.Option(..., help="Ancestor model: HF directory, .gguf, alias or name."),
    descendant: str = typer.Option(..., help="Descendant model (may be a LLaVA-type model)."),
    out: Path | None = typer.Option(None, help="Save the WeightDrift here (.npz)."),
    plot: Path | None = typer.Option(None, help="Save the layer-wise plot here (.png/.pdf)."),
    as_json: bool = typer.Option(False, "--json", help="Print per-layer means as JSON."),
) -> None:
    """Per-head weight drift (W_Q/K/V/O, QK and OV circuits) from ancestor to descendant."""
    from lineage_lens.cli._checks import PLOT_SUFFIXES, check_output
    from lineage_lens.fileio import atomic_path
    from lineage_lens.weights import weight_drift

    check_output(out, (".npz",), "--out")
    check_output(plot, PLOT_SUFFIXES, "--plot")
    result = weight_drift(ancestor, descendant)
    if out is not None:
        result.save(out)
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        ax = result.plot()
        with atomic_path(plot) as tmp:
            ax.figure.savefig(tmp, bbox_inches="tight")
    frame = result.layer_frame()
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ancestor": result.ancestor,
                    "descendant": result.descendant,
                    "geometry": result.geometry.to_dict(),
                    "layers": frame.to_dict(orient="list"),
                },
                indent=1,
            )
        )
        return
    typer.echo(result.summary())
    cols = ["layer"] + [f"mean_{m}_rel" for m in ("q", "k", "v", "o", "qk", "ov")]
    typer.echo(frame[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
