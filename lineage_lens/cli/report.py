"""``lineage-lens report``: the paper's whole analysis of an ancestor and its descendants."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import typer

from lineage_lens.cli import app
from lineage_lens.cli._options import Device


@app.command()
def report(
    ancestor: str = typer.Option(
        ..., "--ancestor", help="The ancestor: packaged alias, HF directory, .gguf or hub name."
    ),
    descendant: list[str] = typer.Option(
        ..., "--descendant", help="A descendant (repeat the option for several)."
    ),
    control: list[str] = typer.Option(
        [], "--control", help="An unrelated control model (repeatable): compared, never gated."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Report folder: REPORT.md, figures, CSVs, JSON; cache/ for resuming."
    ),
    profile: str = typer.Option(
        "quick", "--profile", help="Sample sizes: quick (minutes on a CPU) or paper."
    ),
    data: str = typer.Option(
        "halueval",
        "--data",
        help="Probing data: 'halueval' (vendored) or a TruthProbe JSON-lines file.",
    ),
    evaluation: str = typer.Option(
        "halueval",
        "--eval",
        help="Transfer-test evaluation: halueval, pope or chair (the latter two need "
        "--eval-images and vision-language descendants).",
    ),
    eval_images: Path | None = typer.Option(
        None,
        "--eval-images",
        help="POPE/CHAIR folder: pope_*.json question files and/or images (in images/ if "
        "present); for CHAIR, gt_objects.json (ground truth) and synonyms.txt (vocabulary).",
    ),
    n_probe: int | None = typer.Option(
        None, "--n", help="Probing source rows (default: the profile's; 0 for a whole file)."
    ),
    eval_rows: int | None = typer.Option(
        None, "--eval-rows", help="Evaluation rows (default: the profile's)."
    ),
    resamples: int | None = typer.Option(
        None,
        "--resamples",
        help="Bootstrap resamples and permutations of every interval (default: the profile's).",
    ),
    control_seeds: str | None = typer.Option(
        None,
        "--control-seeds",
        help="Permutation seeds of the random control, e.g. '0,1,2' (default: the profile's).",
    ),
    device: Device = None,
    executor: str = typer.Option(
        "serial",
        "--executor",
        help="Where the per-model steps run: serial (this process) or ray (one Ray task per "
        "model; needs pip install 'lineage-lens[cluster]' and an --out every worker sees).",
    ),
    address: str | None = typer.Option(
        None,
        "--address",
        help="With --executor ray: the cluster's address (default: RAY_ADDRESS, else a new "
        "local cluster).",
    ),
) -> None:
    """Truth Scores, inheritance, weight drift, CKA, attention to evidence and the transfer test
    of an ancestor and its descendants; every step cached in OUT/cache (re-runs resume)."""
    from dataclasses import replace

    from lineage_lens.cli._checks import check_at_least, check_device, check_output_dir
    from lineage_lens.cluster import check_executor
    from lineage_lens.errors import ConfigError, check_seed
    from lineage_lens.report import EVALS, PROFILES, lineage_report

    if profile not in PROFILES:
        raise ConfigError(f"unknown --profile {profile!r}; use one of {', '.join(PROFILES)}.")
    if evaluation not in EVALS:
        raise ConfigError(f"unknown --eval {evaluation!r}; use one of {', '.join(EVALS)}.")
    if evaluation != "halueval" and (eval_images is None or not eval_images.is_dir()):
        raise ConfigError(f"--eval {evaluation} needs --eval-images DIR (an existing folder).")
    plan = PROFILES[profile]
    if n_probe is not None:
        plan = replace(plan, n_probe=check_at_least(n_probe, "--n", 0))
    if eval_rows is not None:
        plan = replace(plan, eval_rows=check_at_least(eval_rows, "--eval-rows", 2))
    if resamples is not None:
        plan = replace(plan, n_resamples=check_at_least(resamples, "--resamples", 10))
    if control_seeds is not None:
        try:
            seeds = tuple(int(s) for s in control_seeds.split(",") if s.strip())
        except ValueError:
            seeds = ()
        if not seeds:
            raise ConfigError(
                f"--control-seeds {control_seeds!r}: give comma-separated integers, e.g. 0,1,2."
            )
        plan = replace(
            plan, control_seeds=tuple(check_seed(s, "a --control-seeds value") for s in seeds)
        )
    check_output_dir(out, "--out")
    device = check_device(device)
    check_executor(executor)
    if address is not None and executor != "ray":
        raise ConfigError("--address names a Ray cluster: pass it with --executor ray.")
    start = time.perf_counter()
    result = lineage_report(
        ancestor,
        descendant,
        controls=control,
        out=out,
        plan=plan,
        data=data,
        evaluation=evaluation,
        eval_dir=eval_images,
        device=device,
        executor=executor,
        address=address,
        command=_command(
            ancestor,
            descendant,
            control,
            out,
            profile,
            data,
            evaluation,
            eval_images,
            n_probe,
            eval_rows,
            resamples,
            control_seeds,
            device,
        ),
    )
    for line in result.findings():
        typer.echo(f"- {line}")
    computed, reused = len(result.meta["computed"]), len(result.meta["reused"])
    typer.echo(
        f"wrote {out / 'REPORT.md'} ({computed} step(s) computed, {reused} reused, "
        f"{time.perf_counter() - start:.1f} s)"
    )


def _command(
    ancestor: str,
    descendants: list[str],
    controls: list[str],
    out: Path,
    profile: str,
    data: str,
    evaluation: str,
    eval_images: Path | None,
    n_probe: int | None,
    eval_rows: int | None,
    resamples: int | None,
    control_seeds: str | None,
    device: str | None,
) -> str:
    """The command line that reproduces this report (every option given, in a fixed order)."""
    argv = ["lineage-lens", "report", "--ancestor", ancestor]
    for d in descendants:
        argv += ["--descendant", d]
    for c in controls:
        argv += ["--control", c]
    argv += ["--out", str(out), "--profile", profile, "--data", data, "--eval", evaluation]
    optional = {
        "--eval-images": eval_images,
        "--n": n_probe,
        "--eval-rows": eval_rows,
        "--resamples": resamples,
        "--control-seeds": control_seeds,
        "--device": device,
    }
    argv += [x for k, v in optional.items() if v is not None for x in (k, str(v))]
    return shlex.join(argv)
