"""The ``lineage-lens`` command line.

Each module of this package registers its own commands on :data:`app` (``score``, ``report``,
``gate``, ``compare``, ``drift``, ``eval ...``, ``zoo ...``); they are imported here in name order.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

import typer

app = typer.Typer(
    name="lineage-lens",
    help="Head-level context-truthfulness across model lineages (TruthProbe and beyond).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log INFO messages."),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")


def main() -> None:
    """Entry point that turns a :class:`LineageLensError` into a one-line message and exit 2."""
    from lineage_lens.errors import LineageLensError

    try:
        app()
    except LineageLensError as exc:
        typer.echo(f"error: {one_line(exc)}", err=True)
        raise SystemExit(2) from exc


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (its whitespace runs, newlines included, as one space)."""
    return " ".join(str(exc).split()) or type(exc).__name__
