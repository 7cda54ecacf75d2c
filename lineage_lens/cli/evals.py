"""``lineage-lens eval {halueval,pope,chair}``: evaluations, optionally gated, as sweeps.

Each command writes ``results.json``, ``results.csv`` (one row per setting), ``sweep.png`` and a
resumable per-example ``cache.jsonl`` into ``--out-dir``. ``eval chair --captions FILE`` scores an
existing caption file without any model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from lineage_lens.cli import app
from lineage_lens.cli._options import (
    Alpha,
    BatchSize,
    Device,
    GateScores,
    Images,
    Limit,
    Mode,
    Model,
    Norm,
    OutDir,
    Placement,
    SweepAlphas,
    SweepControls,
)
from lineage_lens.errors import ConfigError, check_seed

if TYPE_CHECKING:  # the library (torch) loads when a command runs, not for --help
    from lineage_lens.evals import ChairCaptions, HaluEvalJudgement, PopeAnswers
    from lineage_lens.gating import ControlKind
    from lineage_lens.sweep import GateSettings

eval_app = typer.Typer(
    help="Evaluate models on HaluEval, POPE and CHAIR (optionally with TruthGate sweeps).",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")


def parse_floats(spec: str, what: str = "alphas") -> list[float]:
    """``"0,1,2,4.5"`` -> ``[0.0, 1.0, 2.0, 4.5]``."""
    try:
        return [float(x) for x in spec.split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(f"cannot parse {what} {spec!r}; use e.g. '0,1,2,4.5'.") from exc


def parse_ints(spec: str, what: str = "seeds") -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``."""
    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(f"cannot parse {what} {spec!r}; use e.g. '0,1,2'.") from exc


def check_counts(**counts: int | None) -> None:
    """Each given count (``limit=``, ``batch_size=``, ...) an integer >= 1, else a one-line
    error naming its option (``--limit``, ...); the evaluators check them too, by field name."""
    from lineage_lens.cli._checks import check_at_least

    for key, value in counts.items():
        if value is not None:
            check_at_least(value, "--" + key.replace("_", "-"), 1)


@dataclass(frozen=True)
class SweepOptions:
    """The options every ``eval`` command shares: the model, its gates, where results go."""

    model: str
    scores: Path | None = None
    alpha: float = 4.5
    sweep_alpha: str = ""
    norm: str = "center"
    placement: str = "z"
    controls: str = ""
    out_dir: Path = Path("runs/eval")
    device: str | None = None

    def alphas(self, gated: bool) -> list[float]:
        """``--sweep-alpha`` (each value once), else 0 and ``--alpha`` with a gate, else 0."""
        if self.sweep_alpha:
            return list(dict.fromkeys(parse_floats(self.sweep_alpha)))
        return list(dict.fromkeys([0.0, float(self.alpha)])) if gated else [0.0]

    def control_kinds(self) -> list[ControlKind]:
        """``--control`` as a list of kinds, each once."""
        kinds = [c.strip() for c in self.controls.split(",") if c.strip()]
        return list(dict.fromkeys(kinds))  # type: ignore[arg-type]

    def gate(self) -> GateSettings:
        from lineage_lens.sweep import GateSettings

        return GateSettings(norm=self.norm, placement=self.placement)  # type: ignore[arg-type]


def _sweep(
    evaluator: HaluEvalJudgement | PopeAnswers | ChairCaptions, options: SweepOptions
) -> None:
    """Check every option, load the model, run the library sweep and print its table.

    The evaluator checked its own options when it was made (before this runs)."""
    from lineage_lens.cli._checks import check_device, check_output_dir
    from lineage_lens.models import load_model
    from lineage_lens.scores import load_scores
    from lineage_lens.sweep import TRUTH, build_gates, change_columns, gate_sources, gating_sweep

    # Everything that can be checked without the model is checked before loading it.
    check_output_dir(options.out_dir)
    device = check_device(options.device)
    scores = load_scores(options.scores) if options.scores is not None else None
    alphas = options.alphas(scores is not None)
    controls = options.control_kinds()
    if scores is None and (any(a != 0 for a in alphas) or controls):
        raise ConfigError("gated settings (--sweep-alpha other than 0, --control) need --gate.")
    gate = options.gate()
    sources = gate_sources(scores, controls, metric=gate.metric)
    # a bad alpha, norm, placement or control fails here, not mid-sweep
    build_gates(sources, alphas, gate)
    # the ungated row is always there; with no gated alpha there is nothing to gate
    gated = [a for a in alphas if a != 0]
    bridge = load_model(options.model, device=device)
    frame = gating_sweep(
        bridge,
        evaluator,
        sources if gated else [],
        gated or [0.0],
        gate=gate,
        control=controls[0] if controls else "",
        versus_control=(TRUTH,),
        out_dir=options.out_dir,
    )
    changes = [
        cols[0] for stat in PAIRED_STATS for cols in change_columns(stat) if cols[0] in frame
    ]
    cols = [c for c in SHOWN if c in frame.columns] + changes
    typer.echo(frame[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    typer.echo(f"\nwrote {options.out_dir}/results.json, results.csv, sweep.png")


#: The columns ``eval`` prints, where the task has them (results.csv has every column).
SHOWN = (
    "scores",
    "alpha",
    "accuracy",
    "accuracy_std",
    "f1",
    "yes_ratio",
    "chair_s",
    "chair_i",
    "recall",
    "n",
    "n_unparsed",
)
#: The paired statistics whose changes ``eval`` prints (vs ungated, vs the first control).
PAIRED_STATS = ("auroc", "accuracy_all", "pope_accuracy", "chair_i")


@eval_app.command("halueval")
def halueval_command(
    model: Model = "smollm2-135m-instruct",
    gate: GateScores = None,
    alpha: Alpha = 4.5,
    sweep_alpha: SweepAlphas = "",
    norm: Norm = "center",
    placement: Placement = "z",
    control: SweepControls = "",
    seeds: str = typer.Option("0,1,2", "--seeds", help="Answer seeds (mean ± std over them)."),
    mode: Mode = "logprob",
    n_probe: int = typer.Option(292, "--n-probe", help="Probing rows left out of evaluation."),
    limit: Limit = None,
    batch_size: BatchSize = 8,
    out_dir: OutDir = Path("runs/eval_halueval"),
    device: Device = None,
) -> None:
    """HaluEval QA judgement (the probing rows excluded), baseline and gated."""
    from lineage_lens.evals import HaluEvalJudgement

    check_counts(limit=limit, batch_size=batch_size, n_probe=n_probe)
    evaluator = HaluEvalJudgement(
        seeds=tuple(check_seed(s, "a --seeds value") for s in parse_ints(seeds)),
        mode=mode,  # type: ignore[arg-type]
        n_probe=n_probe,
        limit=limit,
        batch_size=batch_size,
    )
    options = SweepOptions(
        model=model,
        scores=gate,
        alpha=alpha,
        sweep_alpha=sweep_alpha,
        norm=norm,
        placement=placement,
        controls=control,
        out_dir=out_dir,
        device=device,
    )
    _sweep(evaluator, options)


@eval_app.command("pope")
def pope_command(
    images: Images,
    model: Model,
    splits: str = typer.Option(
        "random,popular,adversarial", "--splits", help="Vendored split names or question files."
    ),
    gate: GateScores = None,
    alpha: Alpha = 4.5,
    sweep_alpha: SweepAlphas = "",
    norm: Norm = "center",
    placement: Placement = "z",
    control: SweepControls = "",
    mode: Mode = "logprob",
    template: str = typer.Option(
        "", "--template", help="Prompt with {image} and {question} (default LLaVA-1.5)."
    ),
    limit: Limit = None,
    batch_size: BatchSize = 8,
    out_dir: OutDir = Path("runs/eval_pope"),
    device: Device = None,
) -> None:
    """POPE yes/no object probing, per split and mean."""
    from lineage_lens.evals import PopeAnswers

    check_counts(limit=limit, batch_size=batch_size)
    evaluator = PopeAnswers(
        image_dir=images,  # type: ignore[arg-type]
        splits=tuple(s.strip() for s in splits.split(",") if s.strip()),
        mode=mode,  # type: ignore[arg-type]
        limit=limit,
        batch_size=batch_size,
        **({"prompt_template": template} if template else {}),
    )
    options = SweepOptions(
        model=model,
        scores=gate,
        alpha=alpha,
        sweep_alpha=sweep_alpha,
        norm=norm,
        placement=placement,
        controls=control,
        out_dir=out_dir,
        device=device,
    )
    _sweep(evaluator, options)


@eval_app.command("chair")
def chair_command(
    captions: Path = typer.Option(None, "--captions", help="Score this caption file (no model)."),
    out: Path = typer.Option(None, "--out", help="With --captions: write per-caption details."),
    ground_truth: Path = typer.Option(
        None, "--ground-truth", help="{image_id: [classes]} JSON (default: vendored COCO)."
    ),
    synonyms: Path = typer.Option(
        None, "--synonyms", help="Object vocabulary file (default: vendored COCO)."
    ),
    once_per_caption: bool = typer.Option(
        False,
        "--count-once-per-caption",
        help="Count each object class once per caption instead of every mention (the "
        "reference CHAIR, default); changes CHAIR_i only.",
    ),
    _count_all: bool = typer.Option(
        False, "--count-all", hidden=True, help="Deprecated: every mention is the default."
    ),
    model: Model = "",
    images: Images = None,
    file_pattern: str | None = typer.Option(
        None,
        "--file-pattern",
        help="Image file name per id, e.g. 'COCO_val2014_{image_id:0>12}.jpg' (default: COCO's "
        "names if present, else the image whose name's last number is the id).",
    ),
    limit: Limit = None,
    gate: GateScores = None,
    alpha: Alpha = 4.5,
    sweep_alpha: SweepAlphas = "",
    norm: Norm = "center",
    placement: Placement = "z",
    control: SweepControls = "",
    batch_size: BatchSize = 4,
    out_dir: OutDir = Path("runs/eval_chair"),
    device: Device = None,
) -> None:
    """CHAIR_s / CHAIR_i / recall of a caption file, or of captions generated by --model."""
    from lineage_lens.evals.chair import ChairCaptions, ObjectVocabulary, compute_chair

    vocab = ObjectVocabulary.from_synonyms_file(synonyms) if synonyms else None
    counting = "once_per_caption" if once_per_caption else "every_mention"
    if captions is not None:
        if model:
            raise ConfigError("give either --captions (score a file) or --model, not both.")
        from lineage_lens.cli._checks import check_output

        check_output(out, (".json",), "--out")
        res = compute_chair(
            captions, vocabulary=vocab, ground_truth=ground_truth, counting=counting
        )
        m = res.metrics
        typer.echo(
            f"CHAIR_s {m['chair_s']:.4f}\nCHAIR_i {m['chair_i']:.4f}\nrecall  {m['recall']:.4f}\n"
            f"n       {int(m['n'])}"
            + (f"\nskipped {int(m['n_skipped'])} (no ground truth)" if m["n_skipped"] else "")
        )
        if out is not None:
            res.save(out)
            typer.echo(f"wrote {out}")
        return
    if not model or images is None:
        raise ConfigError("give --captions FILE, or --model and --images to generate captions.")
    check_counts(limit=limit, batch_size=batch_size)
    evaluator = ChairCaptions(
        image_dir=images,
        file_pattern=file_pattern,
        limit=limit,
        batch_size=batch_size,
        vocabulary=vocab,
        ground_truth=ground_truth,
        counting=counting,
    )
    options = SweepOptions(
        model=model,
        scores=gate,
        alpha=alpha,
        sweep_alpha=sweep_alpha,
        norm=norm,
        placement=placement,
        controls=control,
        out_dir=out_dir,
        device=device,
    )
    _sweep(evaluator, options)
