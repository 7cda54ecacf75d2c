"""Atomic file writing: bad input never leaves a half-written output file."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    ``suffix`` defaults to the suffix of ``path`` so that writers which dispatch on the extension
    (``np.savez``, ``plt.savefig``) behave as for the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix if suffix is None else suffix
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions of a normally created file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def publish_dir(tmp: Path, final: Path, *, marker: str, replace: bool = False) -> bool:
    """Move the complete directory ``tmp`` onto ``final`` in one rename; return whether it did.

    Caches shared by several processes (parallel test workers) may build the same directory at
    once. If another process already put a complete one at ``final`` (its ``marker`` file exists),
    that one is kept -- it may be in use -- and ``tmp`` is deleted (returns False). With
    ``replace`` an existing ``final`` is renamed aside first, so it is never a half-deleted
    directory.
    """
    if replace and final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old."))
        os.replace(final, old / final.name)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        return True
    try:
        os.replace(tmp, final)
        return True
    except OSError:  # a non-empty directory is already there
        if not (final / marker).is_file():
            raise
    shutil.rmtree(tmp, ignore_errors=True)
    return False


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open`` for writing that renames a temporary file onto ``path`` only on success."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh
