"""``lineage-lens score``: Truth Scores of every attention head of a model."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from lineage_lens.cli import app
from lineage_lens.cli._options import BatchSize, Device, Model, seed_option


@app.command()
def score(
    model: Model,
    data: str = typer.Option(
        "halueval", help="'halueval' (vendored HaluEval QA) or a TruthProbe JSON-lines file."
    ),
    n: int = typer.Option(
        292, help="Probing source rows (each gives a truthful and a hallucinated example)."
    ),
    out: Path = typer.Option(Path("scores.npz"), help="Where to write the scores (.npz)."),
    csv: Path | None = typer.Option(
        None, help="Also write the paper's cv5_head_metrics.csv layout."
    ),
    batch_size: BatchSize = 16,
    folds: int = typer.Option(5, help="Cross-validation folds."),
    solver: str = typer.Option(
        "newton",
        help="'newton' (exact L2 logistic regression), 'adamw' (the paper's recipe on our "
        "grouped folds, faster on a CPU) or 'truthprobe' (the authors' published probe "
        "exactly: their unstratified KFold, raw features; --seed 42 gives their folds).",
    ),
    seed: int = seed_option("the row split and the folds"),
    device: Device = None,
    top: int = typer.Option(10, help="How many top heads to print."),
) -> None:
    """Probe every head's hook_z at the answer's last token and write its Truth Scores."""
    from lineage_lens.cli._checks import check_at_least, check_device, check_output
    from lineage_lens.data import load_probe_examples
    from lineage_lens.errors import ConfigError
    from lineage_lens.models import load_model
    from lineage_lens.pipeline import score_model
    from lineage_lens.probing import SOLVERS

    # Every option is checked before the (minutes-long) capture, and before anything is written.
    check_output(out, (".npz",), "--out")
    check_output(csv, (".csv",), "--csv")
    if solver not in SOLVERS:
        raise ConfigError(f"unknown --solver {solver!r}; use one of {', '.join(SOLVERS)}.")
    check_at_least(folds, "--folds", 2)
    check_at_least(top, "--top", 1)
    check_at_least(n, "--n", 1)
    check_at_least(batch_size, "--batch-size", 1)
    device = check_device(device)
    start = time.perf_counter()
    examples = load_probe_examples(data, n_probe=n, split_seed=seed)
    units = len(examples) if solver == "truthprobe" else len({e.source_id for e in examples})
    if folds > units:
        what = "examples" if solver == "truthprobe" else "source rows (folds are grouped by them)"
        raise ConfigError(f"--folds {folds} needs at least {folds} {what}; the data has {units}.")
    bridge = load_model(model, device=device)
    scores, _ = score_model(
        bridge,
        examples,
        batch_size=batch_size,
        folds=folds,
        solver=solver,  # type: ignore[arg-type]
        seed=seed,
        dataset=str(data),
    )
    scores.save(out)
    if csv is not None:
        scores.to_csv(csv)
    typer.echo(scores.summary(k=top))
    typer.echo(f"wrote {out} ({len(examples)} examples, {time.perf_counter() - start:.1f} s)")
