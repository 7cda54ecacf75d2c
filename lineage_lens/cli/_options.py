"""The options several ``lineage-lens`` commands share, each declared once.

Each is an ``Annotated`` type a command parameter takes, with its default (or none where the
option is required)::

    def command(alpha: Alpha = 4.5, device: Device = None) -> None: ...

Values are checked by :mod:`lineage_lens.cli._checks` (one-line errors, before any model loads),
not by typer's ``min=`` (whose usage errors span several lines).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lineage_lens.errors import MAX_SEED, check_seed

# ------------------------------------------------------------------ models and devices
Model = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Model: packaged alias, local HF directory, .gguf file or Hub name (a LLaVA-type "
        "model for POPE and CHAIR).",
    ),
]
Device = Annotated[
    str | None,
    typer.Option(
        "--device", help="cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)."
    ),
]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Prompts per forward pass.")]


def _seed(value: int) -> int:
    return check_seed(value, "--seed")


def seed_option(what: str) -> Any:
    """The ``--seed`` option (default 0) of a command; ``what`` says what it seeds. Its range,
    0 to 2**32 - 1 (numpy's), is declared here once: a seed outside it is a one-line
    :class:`~lineage_lens.errors.ConfigError` (exit 2) as the command line is read."""
    return typer.Option(0, "--seed", help=f"Seed of {what} (0 to {MAX_SEED}).", callback=_seed)


# ------------------------------------------------------------------ gates (TruthGate)
Alpha = Annotated[float, typer.Option("--alpha", help="Gating strength: g = 1 + alpha * norm(S).")]
Norm = Annotated[
    str,
    typer.Option("--norm", help="Within-layer normalisation of the scores: center, minmax or raw."),
]
Placement = Annotated[
    str, typer.Option("--placement", help="Where the gates act: z, fold or reference.")
]
Metric = Annotated[
    str, typer.Option("--metric", help="Which Truth Score metric to use (accuracy, auroc, ...).")
]
GateControl = Annotated[
    str,
    typer.Option("--control", help="Gate with control scores instead: random, inverse or uniform."),
]

# ------------------------------------------------------------------ evaluation sweeps (eval ...)
GateScores = Annotated[
    Path | None,
    typer.Option("--gate", help="Truth Scores (.npz, .npy or .csv) for a TruthGate."),
]
SweepAlphas = Annotated[
    str,
    typer.Option(
        "--sweep-alpha",
        help="Alphas, e.g. '0,1,2,4.5,6' (0: ungated; default with --gate: 0 and --alpha).",
    ),
]
SweepControls = Annotated[
    str,
    typer.Option("--control", help="Control gates too, at every alpha: random,inverse,uniform."),
]
OutDir = Annotated[
    Path,
    typer.Option(
        "--out-dir", help="Where results.json, results.csv, sweep.png and cache.jsonl go."
    ),
]
Mode = Annotated[str, typer.Option("--mode", help="logprob or generate.")]
Limit = Annotated[
    int | None,
    typer.Option(
        "--limit",
        help="Evaluate only the first N examples (HaluEval rows, POPE questions per split, "
        "CHAIR images).",
    ),
]
Images = Annotated[Path | None, typer.Option("--images", help="Image folder (COCO val2014).")]

__all__ = [
    "Alpha",
    "BatchSize",
    "Device",
    "GateControl",
    "GateScores",
    "Images",
    "Limit",
    "Metric",
    "Mode",
    "Model",
    "Norm",
    "OutDir",
    "Placement",
    "SweepAlphas",
    "SweepControls",
    "seed_option",
]
