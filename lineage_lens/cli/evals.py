"""``lineage-lens eval {halueval,pope,chair}``: evaluations, optionally gated, as sweeps.

Each command writes ``results.json``, ``results.csv`` (one row per setting), ``sweep.png`` and a
resumable per-example ``cache.jsonl`` into ``--out-dir``. ``eval chair --captions FILE`` scores an
existing caption file without any model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from lineage_lens.cli import app
from lineage_lens.errors import ConfigError

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


GATE_HELP = "Truth Scores (.npz, .npy or .csv) for a TruthGate."


def _sweep(
    task: str,
    model: str,
    gate: Path | None,
    alpha: float,
    sweep_alpha: str,
    norm: str,
    placement: str,
    control: str,
    out_dir: Path,
    device: str,
    task_kwargs: dict[str, Any],
) -> None:
    from lineage_lens.cli._checks import check_at_least, check_device, check_output_dir
    from lineage_lens.evals._common import check_mode
    from lineage_lens.evals.runner import run_sweep
    from lineage_lens.gating import TruthGate
    from lineage_lens.models import load_model
    from lineage_lens.scores import load_scores

    # Everything that can be checked without the model is checked before loading it.
    check_output_dir(out_dir)
    device_name = check_device(device)
    if "mode" in task_kwargs:
        check_mode(task_kwargs["mode"])
    for key in ("batch_size", "limit", "n_probe"):
        if task_kwargs.get(key) is not None:
            check_at_least(task_kwargs[key], "--" + key.replace("_", "-"), 1)
    scores = load_scores(gate) if gate is not None else None
    if sweep_alpha:
        alphas = parse_floats(sweep_alpha)
    elif scores is not None:
        alphas = [0.0, alpha]
    else:
        alphas = [0.0]
    controls = [c.strip() for c in control.split(",") if c.strip()]
    if scores is None and (any(a != 0 for a in alphas) or controls):
        raise ConfigError("gated settings (--sweep-alpha other than 0, --control) need --gate.")
    for a in alphas:  # a bad alpha, norm, placement or control fails here, not mid-sweep
        if scores is not None and a != 0:
            truth = TruthGate(scores, alpha=a, norm=norm, placement=placement)  # type: ignore[arg-type]
            for kind in controls:
                truth.control(kind)  # type: ignore[arg-type]
    bridge = load_model(model, device=device_name)
    frame = run_sweep(
        task,  # type: ignore[arg-type]
        bridge,
        scores=scores,
        alphas=alphas,
        norm=norm,
        placement=placement,
        controls=controls,
        out_dir=out_dir,
        **task_kwargs,
    )
    cols = [
        c
        for c in (
            "gate",
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
            "wall_s",
        )
        if c in frame.columns
    ]
    typer.echo(frame[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    typer.echo(f"\nwrote {out_dir}/results.json, results.csv, sweep.png")


@eval_app.command("halueval")
def halueval_command(
    model: str = typer.Option("smollm2-135m-instruct", "--model", help="Model alias or path."),
    gate: Path = typer.Option(None, "--gate", help=GATE_HELP),
    alpha: float = typer.Option(4.5, "--alpha", help="Gating strength with --gate."),
    sweep_alpha: str = typer.Option("", "--sweep-alpha", help="Alphas, e.g. '0,1,2,4.5,6'."),
    norm: str = typer.Option("center", "--norm", help="center, minmax or raw."),
    placement: str = typer.Option("z", "--placement", help="z, fold or reference."),
    control: str = typer.Option("", "--control", help="Control gates too: random,inverse,..."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Answer seeds (mean ± std over them)."),
    mode: str = typer.Option("logprob", "--mode", help="logprob or generate."),
    n_probe: int = typer.Option(292, "--n-probe", help="Probing rows left out of evaluation."),
    limit: int = typer.Option(None, "--limit", help="Evaluate only the first N rows."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    out_dir: Path = typer.Option(Path("runs/eval_halueval"), "--out-dir"),
    device: str = typer.Option("", "--device"),
) -> None:
    """HaluEval QA judgement (the probing rows excluded), baseline and gated."""
    _sweep(
        "halueval",
        model,
        gate,
        alpha,
        sweep_alpha,
        norm,
        placement,
        control,
        out_dir,
        device,
        {
            "seeds": parse_ints(seeds),
            "mode": mode,
            "n_probe": n_probe,
            "limit": limit,
            "batch_size": batch_size,
        },
    )


@eval_app.command("pope")
def pope_command(
    images: Path = typer.Option(..., "--images", help="Image folder (COCO val2014)."),
    model: str = typer.Option(..., "--model", help="LLaVA-type model path."),
    splits: str = typer.Option(
        "random,popular,adversarial", "--splits", help="Vendored split names or question files."
    ),
    gate: Path = typer.Option(None, "--gate", help=GATE_HELP),
    alpha: float = typer.Option(4.5, "--alpha"),
    sweep_alpha: str = typer.Option("", "--sweep-alpha"),
    norm: str = typer.Option("center", "--norm"),
    placement: str = typer.Option("z", "--placement"),
    control: str = typer.Option("", "--control"),
    mode: str = typer.Option("logprob", "--mode", help="logprob or generate."),
    template: str = typer.Option(
        "", "--template", help="Prompt with {image} and {question} (default LLaVA-1.5)."
    ),
    limit: int = typer.Option(None, "--limit", help="Questions per split."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    out_dir: Path = typer.Option(Path("runs/eval_pope"), "--out-dir"),
    device: str = typer.Option("", "--device"),
) -> None:
    """POPE yes/no object probing, per split and mean."""
    kwargs: dict[str, Any] = {
        "image_dir": images,
        "splits": [s.strip() for s in splits.split(",") if s.strip()],
        "mode": mode,
        "limit": limit,
        "batch_size": batch_size,
    }
    if template:
        kwargs["prompt_template"] = template
    _sweep(
        "pope", model, gate, alpha, sweep_alpha, norm, placement, control, out_dir, device, kwargs
    )


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
    model: str = typer.Option("", "--model", help="LLaVA-type model to caption images with."),
    images: Path = typer.Option(None, "--images", help="Image folder (with --model)."),
    file_pattern: str = typer.Option(
        "COCO_val2014_{image_id:0>12}.jpg", "--file-pattern", help="Image file name per id."
    ),
    limit: int = typer.Option(None, "--limit", help="Caption only the first N images."),
    gate: Path = typer.Option(None, "--gate", help=GATE_HELP),
    alpha: float = typer.Option(4.5, "--alpha"),
    sweep_alpha: str = typer.Option("", "--sweep-alpha"),
    norm: str = typer.Option("center", "--norm"),
    placement: str = typer.Option("z", "--placement"),
    control: str = typer.Option("", "--control"),
    batch_size: int = typer.Option(4, "--batch-size", min=1),
    out_dir: Path = typer.Option(Path("runs/eval_chair"), "--out-dir"),
    device: str = typer.Option("", "--device"),
) -> None:
    """CHAIR_s / CHAIR_i / recall of a caption file, or of captions generated by --model."""
    from lineage_lens.evals.chair import ObjectVocabulary, compute_chair

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
    kwargs: dict[str, Any] = {
        "image_dir": images,
        "file_pattern": file_pattern,
        "limit": limit,
        "batch_size": batch_size,
        "vocabulary": vocab,
        "ground_truth": ground_truth,
        "counting": counting,
    }
    _sweep(
        "chair", model, gate, alpha, sweep_alpha, norm, placement, control, out_dir, device, kwargs
    )
