"""``lineage-lens zoo build|list``: build and inspect the embedded lineage zoo."""

from __future__ import annotations

from pathlib import Path

import typer

from lineage_lens.cli import app

zoo_app = typer.Typer(help="Build and list the lineage zoo (project-made model families).")
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("build")
def build(
    profile: str = typer.Option("test", "--profile", "-p", help="test, demo or full."),
    out_dir: Path | None = typer.Option(
        None, "--out-dir", "-o", help="Zoo directory (default: $LINEAGE_LENS_CACHE/zoo)."
    ),
    member: list[str] | None = typer.Option(
        None, "--member", "-m", help="Build only this member (and its parents); repeatable."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild members that already exist."),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads."),
) -> None:
    """Build (or reuse) the members of a profile and print where they are."""
    from lineage_lens.cli._checks import check_at_least, check_output_dir
    from lineage_lens.zoo import build_zoo

    if threads is not None:
        check_at_least(threads, "--threads", 1)
    if out_dir is not None:
        check_output_dir(out_dir)
    zoo = build_zoo(out_dir, profile, members=member or None, force=force, threads=threads)
    for name, m in zoo.members.items():
        state = "reused" if m.reused else f"built in {m.wall_time_s:.1f} s"
        typer.echo(f"{name:12s} {state:20s} {m.path}")
    typer.echo(f"manifest: {zoo.root / 'manifest.json'}")


@zoo_app.command("list")
def list_members(
    out_dir: Path | None = typer.Option(None, "--out-dir", "-o", help="Zoo directory."),
) -> None:
    """List the members recorded in a zoo's manifest."""
    from lineage_lens.zoo import load_zoo

    zoo = load_zoo(out_dir)
    typer.echo(zoo.to_frame().to_string())
