"""The step cache of a lineage report: content identities of models and probing examples, and
one file per finished step keyed by them (:class:`StepCache`)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lineage_lens.errors import OutputError

if TYPE_CHECKING:
    from lineage_lens.data import ProbeExample

log = logging.getLogger(__name__)

#: Changes whenever a step's numbers change for the same inputs (invalidates the caches).
CACHE_VERSION = 1

# --------------------------------------------------------------------------------------------
# Identities and the step cache
# --------------------------------------------------------------------------------------------

_WEIGHT_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".gguf", ".pt")


def model_identity(name_or_path: str | Path) -> str:
    """A content address of a model: for a local directory (aliases and ``.gguf`` files resolve
    to one) the size and first/last MiB of each weight, config and tokenizer file; for a hub
    name the name itself. Equal identities mean the same model for every cached step."""
    from lineage_lens.models import _file_digest, resolve_model_path

    source = resolve_model_path(name_or_path)
    path = Path(source)
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(path.iterdir()):
            if f.is_file() and f.suffix in _WEIGHT_SUFFIXES:
                h.update(f.name.encode())
                h.update(_file_digest(f).encode())
    else:
        h.update(f"hub:{source}".encode())
    return h.hexdigest()[:16]


def file_identity(path: Path) -> str | None:
    """A content address of a small input file (``None`` when there is no such file), so a
    cached step is recomputed when, e.g., a ground-truth or synonyms file is edited in place."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def examples_identity(examples: Sequence[ProbeExample]) -> str:
    """A content address of probing examples (images by their pixels or path)."""
    h = hashlib.sha256()
    for ex in examples:
        row = ex.to_row()
        image = row.pop("image", None)
        h.update(json.dumps(row, sort_keys=True).encode())
        if image is not None and hasattr(image, "tobytes"):
            h.update(hashlib.sha256(image.tobytes()).digest())
    return h.hexdigest()[:16]


class StepCache:
    """Finished steps under ``root``: one file (or folder) per step and key; a step is done when
    its file exists (every file is written atomically). Records what it computed and reused."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.computed: list[str] = []
        self.reused: list[str] = []

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's lock file (``.lock``) for one run: a second run on the same folder,
        from another process, gets an :class:`~lineage_lens.errors.OutputError` at once instead
        of writing the same step files (or the same activation memmap) beside the first. The
        operating system drops the lock when its process ends, so a killed run leaves none."""
        from filelock import FileLock, Timeout

        file = self.root / ".lock"
        lock = FileLock(file)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise OutputError(
                f"another lineage report is running in {self.root.parent} (it holds {file}); "
                "wait for it to finish, or pass another out folder."
            ) from None
        try:
            yield
        finally:
            lock.release()

    def path(self, step: str, key: Mapping[str, Any], suffix: str) -> Path:
        return self.root / f"{step}-{_digest({'v': CACHE_VERSION, **key})}{suffix}"

    def done(self, path: Path, what: str) -> bool:
        if path.exists():
            self.reused.append(what)
            log.info("%s: cached in %s", what, path.name)
            return True
        return False
