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

from lineage_lens import identity
from lineage_lens.errors import OutputError

if TYPE_CHECKING:
    from lineage_lens.data import ProbeExample

log = logging.getLogger(__name__)

#: Changes whenever a step's numbers change for the same inputs (invalidates the caches).
CACHE_VERSION = 1

# --------------------------------------------------------------------------------------------
# Identities and the step cache
# --------------------------------------------------------------------------------------------


def model_identity(name_or_path: str | Path) -> str:
    """A content address of a model: for a local directory (aliases and ``.gguf`` files resolve
    to one) every byte of every file a loader may read, in any subfolder
    (:func:`lineage_lens.identity.model_dir_identity`, indexed so an unchanged checkpoint is not
    read again); for a hub name its downloaded snapshot, or the name while it is not downloaded.
    Equal identities mean the same model for every cached step."""
    from lineage_lens.models import resolve_model_path

    return identity.model_source_identity(resolve_model_path(name_or_path))[:16]


def file_identity(path: Path) -> str | None:
    """A content address of an input file (``None`` when there is no such file): the sha256 of
    every byte (:func:`lineage_lens.identity.file_digest`), so a cached step is recomputed when,
    e.g., a ground-truth or synonyms file is edited in place."""
    return identity.file_digest(path)[:16] if Path(path).is_file() else None


def json_digest(obj: Any) -> str:
    """A 16-hex-digit content address of a JSON-able ``obj`` (sha256 of its JSON, keys sorted;
    what is not JSON counts by its ``str``): the key of a cached step."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def examples_identity(examples: Sequence[ProbeExample]) -> str:
    """A content address of probing examples: their text and labels, images by their pixels or,
    for a path, the file's bytes (:func:`lineage_lens.identity.examples_identity`)."""
    return identity.examples_identity(examples)[:16]


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
        return self.root / f"{step}-{json_digest({'v': CACHE_VERSION, **key})}{suffix}"

    def done(self, path: Path, what: str) -> bool:
        if path.exists():
            self.reused.append(what)
            log.info("%s: cached in %s", what, path.name)
            return True
        return False
