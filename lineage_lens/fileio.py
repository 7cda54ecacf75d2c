"""Safe output files: bad input or an interrupt never leaves a half-written output behind.

* :func:`atomic_open` / :func:`atomic_path` write a file through a temporary next to it, renamed
  into place only when the write finished (a failure becomes an ``OutputError``);
* :func:`check_output_path` refuses an unwritable output before any work;
* :func:`tmp_build_dir` / :func:`publish_dir` build a directory under a temporary name whose
  :func:`tmp_prefix` records the owner (host, pid), and :func:`sweep_stale_tmp_dirs` removes
  those whose owner is gone; :func:`sigterm_as_exit` lets SIGTERM clean up like Ctrl-C;
* :func:`read_text` reads a UTF-8 input file, or says which file, line and byte is not UTF-8.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from lineage_lens.errors import ConfigError, DataError, LineageLensError, OutputError

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where converted models, built zoo members and the file digest index are cached
    (``$LINEAGE_LENS_CACHE``, else ``$XDG_CACHE_HOME/lineage_lens`` or ``~/.cache/lineage_lens``)."""
    root = os.environ.get("LINEAGE_LENS_CACHE")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lineage_lens"


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    ``suffix`` defaults to the suffix of ``path`` so that writers which dispatch on the extension
    (``np.savez``, ``plt.savefig``) behave as for the final name.
    """
    path = Path(path)
    check_output_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=path.parent,
            prefix=f".{path.name}.",
            suffix=path.suffix if suffix is None else suffix,
        )
    except OSError as exc:
        raise _output_error(path, exc) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            # mkstemp creates 0600 files; give the result the permissions of a normal file.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
            os.replace(tmp_path, path)
        except LineageLensError:
            raise
        except OSError as exc:  # disk full, quota, I/O error, a directory appeared at path, ...
            raise _output_error(path, exc) from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _output_error(path: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = {
        errno.ENOSPC: "free some disk space or write elsewhere",
        errno.EDQUOT: "free some quota or write elsewhere",
        errno.EACCES: "choose a directory you can write to",
        errno.EPERM: "choose a directory you can write to",
        errno.EROFS: "choose a writable file system",
        errno.EISDIR: "pass a file name, not a directory",
        errno.ENOTDIR: "a parent of the path is a file; choose another path",
        errno.EEXIST: "a parent of the path is a file; choose another path",
    }.get(exc.errno or -1, "choose another path")
    out = OutputError(f"cannot write {path}: {reason}; {hint}. No partial file was left.")
    out.errno = exc.errno
    return out


def read_text(path: str | Path, what: str = "file") -> str:
    """The text of a UTF-8 file (a leading byte-order mark dropped).

    A :class:`~lineage_lens.errors.DataError` names the file when it cannot be read, and the
    line and byte offset of the first byte that is not UTF-8 (``what`` names the file's role).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the {what} ({exc.strerror or exc}).", path=path) from exc
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = bom + exc.start
        raise DataError(
            f"the {what} is not UTF-8 text (byte {at} is 0x{raw[at]:02x}); save it as UTF-8.",
            path=path,
            line=raw.count(b"\n", 0, at) + 1,
        ) from exc


def check_output_path(path: str | Path, suffixes: tuple[str, ...] | None = None) -> Path:
    """Check, before any work, that ``path`` can become an output file; return it as a Path.

    Raises :class:`ConfigError` for a suffix not in ``suffixes`` and :class:`OutputError` when
    ``path`` is a directory, a parent of it is a file, or its (nearest existing) directory is not
    writable. Nothing is created.
    """
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ConfigError(
            f"{path}: unsupported file type {path.suffix or '(none)'!r}; use "
            + ", ".join(suffixes)
            + "."
        )
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory; pass a file name.")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: {parent} is a file, not a directory.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: no permission to write in {parent}.")
    return path


def publish_dir(tmp: Path, final: Path, *, marker: str, replace: bool = False) -> bool:
    """Move the complete directory ``tmp`` onto ``final`` in one rename; return whether it did.

    Caches shared by several processes (parallel test workers) may build the same directory at
    once. If another process already put a complete one at ``final`` (its ``marker`` file exists),
    that one is kept -- it may be in use -- and ``tmp`` is deleted (returns False). With
    ``replace`` an existing ``final`` is renamed aside first, so it is never a half-deleted
    directory.
    """
    if replace and final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=tmp_prefix(f"{final.name}.old")))
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


# --------------------------------------------------------------------------------------------
# Temporary build directories: nothing left behind by an interrupted build
# --------------------------------------------------------------------------------------------

_TMP_DIR_RE = re.compile(r"\.tmp\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>[0-9]+)\.[A-Za-z0-9_]+$")


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def tmp_prefix(name: str) -> str:
    """``.{name}.tmp.{host}.{pid}.``: the owner of a temporary directory is in its name."""
    return f".{name}.tmp.{_host_tag()}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return True  # cannot tell: keep the directory
    return True


def sweep_stale_tmp_dirs(parent: str | Path) -> list[Path]:
    """Remove the temporary build directories in ``parent`` whose building process is gone.

    Only directories named by :func:`tmp_build_dir` on this host are considered, and only those
    whose process id is no longer alive (a build killed by SIGKILL or a power cut) are removed;
    the builds of running processes, of other hosts sharing the directory and anything else are
    left alone. Returns the removed paths.
    """
    parent = Path(parent)
    try:
        entries = list(parent.iterdir())
    except OSError:  # missing or unreadable: nothing of ours to sweep
        return []
    host = _host_tag()
    removed = []
    for entry in entries:
        match = _TMP_DIR_RE.search(entry.name)
        if not entry.name.startswith(".") or match is None or match["host"] != host:
            continue
        if _pid_alive(int(match["pid"])) or not entry.is_dir() or entry.is_symlink():
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            log.info("removed %s, left by the interrupted build of process %s", entry, match["pid"])
            removed.append(entry)
    return removed


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``SystemExit(143)`` so that ``finally`` blocks run.

    By default SIGTERM ends a Python process at once, skipping every cleanup. The handler is only
    installed from the main thread and only where SIGTERM still has its default action (a
    program's own handler is left in charge); the previous handler is restored afterwards. A
    second SIGTERM while the first one unwinds is ignored, so the cleanup can finish.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if received:
            return
        received.append(signum)
        log.warning("terminated (signal %d): removing temporary files before exiting", signum)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def tmp_build_dir(parent: str | Path, name: str) -> Iterator[Path]:
    """A new temporary directory in ``parent`` for building ``name``; gone when the block exits.

    Use it to build a directory that :func:`publish_dir` then renames into place (whatever is
    still there when the block exits -- after an exception, Ctrl-C or SIGTERM, or a lost
    publishing race -- is deleted), or as scratch space. The name carries the host and the
    process id, and stale directories of dead processes in ``parent`` are swept first
    (:func:`sweep_stale_tmp_dirs`), so even a SIGKILLed build is cleaned up by the next one.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    with sigterm_as_exit():
        sweep_stale_tmp_dirs(parent)
        try:
            tmp = Path(tempfile.mkdtemp(dir=parent, prefix=tmp_prefix(name)))
            yield tmp
        finally:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
