"""Checks of command-line options, run before any model is loaded or anything is computed.

Each raises a :class:`~lineage_lens.errors.LineageLensError`, which ``lineage-lens`` prints as one
line on stderr with exit code 2, so a bad option never costs a capture or leaves a file behind.
"""

from __future__ import annotations

from pathlib import Path

from lineage_lens.errors import ConfigError
from lineage_lens.fileio import check_output_path

#: File types ``savefig`` writes with the Agg backend and the default backends it switches to.
PLOT_SUFFIXES: tuple[str, ...] = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps", ".webp")


def check_at_least(value: int, name: str, minimum: int = 1) -> int:
    """``value`` if it is an integer >= ``minimum``, else a ConfigError naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def check_device(device: str | None) -> str | None:
    """``None`` for the default, else a device torch knows and this machine has."""
    if device is None or not device.strip():
        return None
    from lineage_lens.models import resolve_device

    return resolve_device(device, option="--device")


def check_output(path: Path | None, suffixes: tuple[str, ...], option: str) -> Path | None:
    """An output file option: the right suffix, not a directory, in a writable place."""
    if path is None:
        return None
    if Path(path).suffix.lower() not in suffixes:
        raise ConfigError(
            f"{option} {str(path)!r}: the file name must end in {' or '.join(suffixes)}."
        )
    return check_output_path(path)


def check_output_dir(path: Path, option: str = "--out-dir") -> Path:
    """An output directory option: not a file, and creatable/writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {str(path)!r} is a file; pass a directory.")
    check_output_path(path / "results.json")
    return path
