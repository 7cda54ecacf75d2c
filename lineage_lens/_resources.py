"""Paths of the data files vendored inside the package (see ``resources/README.md``)."""

from __future__ import annotations

from pathlib import Path

RESOURCES = Path(__file__).resolve().parent / "resources"


def resource_path(*parts: str) -> Path:
    """Path of a vendored file, e.g. ``resource_path("halueval", "qa_one-turn_data.json")``."""
    path = RESOURCES.joinpath(*parts)
    if not path.exists():
        from lineage_lens.errors import DataError

        raise DataError(f"vendored resource {'/'.join(parts)} is missing from {RESOURCES}")
    return path
