"""Content identities of files, folders, models, images and records.

A cache answers only for what it read: every cached result of lineage-lens (a report step, an
evaluation's per-example answers, a resumable capture, a converted GGUF model) is keyed by the
content of its inputs, never by a name or a path. This module computes those keys.

* :func:`file_digest` / :func:`file_digests` -- the sha256 of every byte of a file, streamed.
  A :class:`DigestIndex` under ``cache_dir()/identity`` remembers each digest with the file's
  (resolved path, size, mtime_ns, ctime_ns, inode, device), so an unchanged 15 GB checkpoint costs
  one ``stat`` per run instead of a full read; any change of these (an in-place edit, even one
  that keeps the size and restores the mtime, changes the ctime; a replaced file changes the
  inode) re-reads the file.
* :func:`folder_identity` -- the relative paths and digests of the files of a folder tree;
  :func:`model_files` picks a model directory's files (:func:`model_dir_identity`).
* :func:`image_identity` -- an image file's bytes, or an in-memory image's mode, size, palette and
  pixels.
* :func:`record_digest` / :func:`examples_identity` -- JSON-able records (question text, labels,
  settings) and probing examples with their images.
* :func:`model_fingerprint` -- a *loaded* model: its parameters, buffers, config and tokenizer.

The hash is sha256 from the standard library: on the development machine (x86_64 with SHA
extensions) it hashes 1.75 GB/s in memory against blake2b's 0.70 GB/s, and a first full hash of a
file runs at 1.3-1.5 GB/s while an indexed one costs a ``stat`` (BENCHMARKS.md, "Benchmark 8").
A non-cryptographic hash (xxhash, 24 GB/s in memory) would gain little on a first read, which the
disk bounds, and nothing on an indexed one, and would give up collision resistance.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lineage_lens.errors import ConfigError, DataError, LineageLensError
from lineage_lens.fileio import atomic_open, cache_dir

log = logging.getLogger(__name__)

#: The hash of every identity (``hashlib`` name).
HASH = "sha256"
#: Bytes read per step while hashing a file.
CHUNK_BYTES = 1 << 20
#: Version of the index file's layout (a different one is ignored and rewritten).
INDEX_VERSION = 1
#: A digest is remembered only for a file whose ctime and mtime are at least this old when its
#: reading starts. A write in the same timestamp tick as an earlier one (file systems stamp with
#: a coarse clock: a few ms on Linux, 1-2 s on some) can leave every stat field unchanged; such a
#: "racy" file is simply hashed again next time (the rule git uses for its index).
RACY_WINDOW_NS = 2_000_000_000
#: Files hashed in parallel at most (hashlib and file reads release the GIL).
MAX_WORKERS = 4

_StatKey = tuple[int, int, int, int, int]


def index_path() -> Path:
    """The digest index: ``cache_dir()/identity/file_digests.json``."""
    return cache_dir() / "identity" / "file_digests.json"


def _stat_key(st: os.stat_result) -> _StatKey:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


#: Linux's ``CLOCK_REALTIME_COARSE`` (``time`` does not name it): the clock the kernel stamps
#: files with, a tick behind ``time.time_ns()``.
_LINUX_CLOCK_REALTIME_COARSE = 5


def coarse_now_ns() -> int:
    """Now, on the clock file systems stamp files with (Linux: the coarse real-time clock), so a
    file changed after this call gets a later ctime. Elsewhere ``time.time_ns()``, which the
    default :data:`RACY_WINDOW_NS` covers."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            return time.clock_gettime_ns(_LINUX_CLOCK_REALTIME_COARSE)
    return time.time_ns()


def hash_file(path: str | Path) -> str:
    """The hex sha256 of every byte of ``path`` (read in :data:`CHUNK_BYTES` steps), unindexed."""
    h = hashlib.new(HASH)
    buf = bytearray(CHUNK_BYTES)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


class DigestIndex:
    """Remembered file digests: resolved path -> (size, mtime_ns, ctime_ns, inode, device, digest).

    Loaded once per process from ``path``; an unreadable, corrupt or foreign file is ignored with
    a warning (every file is then hashed again). :meth:`save` merges this process's new entries
    into the file on disk under a lock (another process may have added its own) and writes it
    atomically (a temporary file renamed into place), dropping entries of files that are gone.
    Failing to save only costs a re-hash later, so it logs a warning and does not raise.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[str, list[Any]] = self._read(warn=True)
        self._new: dict[str, list[Any]] = {}
        self._warned = False

    def _read(self, *, warn: bool) -> dict[str, list[Any]]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_bytes())
            if data.get("version") != INDEX_VERSION or data.get("hash") != HASH:
                raise ValueError(f"version {data.get('version')!r}, hash {data.get('hash')!r}")
            files = data["files"]
            out = {}
            for key, entry in files.items():
                if not (
                    isinstance(entry, list)
                    and len(entry) == 6
                    and all(isinstance(x, int) for x in entry[:5])
                    and isinstance(entry[5], str)
                ):
                    raise ValueError(f"bad entry for {key!r}")
                out[str(key)] = entry
            return out
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            if warn:
                log.warning(
                    "file digest index %s is unreadable (%s); hashing files again and rewriting it",
                    self.path,
                    exc,
                )
            return {}

    def lookup(self, resolved: str, st: os.stat_result) -> str | None:
        """The remembered digest of ``resolved`` if its stat still matches, else ``None``."""
        with self._lock:
            entry = self._entries.get(resolved)
        if entry is not None and tuple(entry[:5]) == _stat_key(st):
            return str(entry[5])
        return None

    def record(self, resolved: str, st: os.stat_result, digest: str) -> None:
        entry = [*_stat_key(st), digest]
        with self._lock:
            self._entries[resolved] = entry
            self._new[resolved] = entry

    def save(self) -> None:
        """Merge the new entries into the index file (see the class docstring)."""
        from filelock import FileLock, Timeout

        with self._lock:
            new, self._new = self._new, {}
        if not new:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.path) + ".lock", timeout=30):
                merged = {**self._read(warn=False), **new}
                merged = {k: v for k, v in merged.items() if os.path.isfile(k)}
                with atomic_open(self.path, "w", encoding="utf-8") as fh:
                    json.dump({"version": INDEX_VERSION, "hash": HASH, "files": merged}, fh)
        except (OSError, Timeout, LineageLensError) as exc:
            if not self._warned:  # once per process: a read-only cache would warn at every call
                self._warned = True
                log.warning(
                    "cannot save the file digest index %s (%s); files will be hashed again "
                    "next time",
                    self.path,
                    exc,
                )
            return
        with self._lock:
            self._entries = {**merged, **self._entries}


_INDEXES: dict[Path, DigestIndex] = {}
_INDEXES_LOCK = threading.Lock()


def forget_digest_indexes() -> None:
    """Drop the indexes this process has loaded; the next digest reads the index file again."""
    with _INDEXES_LOCK:
        _INDEXES.clear()


def digest_index() -> DigestIndex:
    """This process's :class:`DigestIndex` of the current :func:`index_path`."""
    path = index_path()
    with _INDEXES_LOCK:
        if path not in _INDEXES:
            _INDEXES[path] = DigestIndex(path)
        return _INDEXES[path]


def _digest_one(index: DigestIndex, path: Path) -> str:
    """The digest of one file via the index (see :func:`file_digests`)."""
    try:
        resolved = path.resolve(strict=True)
        st = resolved.stat()
    except OSError as exc:
        raise DataError(f"cannot read the file ({exc.strerror or exc}).", path=path) from exc
    if not resolved.is_file():
        raise DataError("not a regular file; expected a file to identify by content.", path=path)
    key = str(resolved)
    cached = index.lookup(key, st)
    if cached is not None:
        return cached
    for _ in range(3):
        start = coarse_now_ns()
        try:
            digest = hash_file(resolved)
            after = resolved.stat()
        except OSError as exc:
            raise DataError(f"cannot read the file ({exc.strerror or exc}).", path=path) from exc
        if _stat_key(after) == _stat_key(st):
            if max(st.st_mtime_ns, st.st_ctime_ns) < start - RACY_WINDOW_NS:
                index.record(key, st, digest)
            return digest
        st = after  # written to while being read: read it again
    log.warning("%s keeps changing while it is read; its digest is not remembered", path)
    return digest


def file_digests(paths: Iterable[str | Path]) -> list[str]:
    """The hex sha256 of every byte of each file, in order (see the module docstring).

    Files the index knows unchanged are not read; the others are hashed (several at a time) and
    remembered, and the index is saved once. A missing or unreadable file raises
    :class:`~lineage_lens.errors.DataError` naming it.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        return []
    index = digest_index()
    unique = list(dict.fromkeys(paths))  # a file named twice (POPE: one image, many questions)
    if len(unique) == 1:
        digests = [_digest_one(index, unique[0])]
    else:
        with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(unique))) as pool:
            digests = list(pool.map(lambda p: _digest_one(index, p), unique))
    index.save()
    by_path = dict(zip(unique, digests, strict=True))
    return [by_path[p] for p in paths]


def file_digest(path: str | Path) -> str:
    """The hex sha256 of every byte of the file ``path`` (indexed; see :func:`file_digests`)."""
    return file_digests([path])[0]


# --------------------------------------------------------------------------------------------
# Folders and models
# --------------------------------------------------------------------------------------------


def is_model_input(relative: Path) -> bool:
    """Whether a file of a model directory (its path relative to the directory) is part of the
    model's identity: every file but hidden ones (``.git/``, ``.cache/``, ``.gitattributes``,
    lock files of downloads), ``*.lock`` files and Markdown (``README.md`` model cards).

    Every other file counts, in any subfolder, whatever its suffix. ``from_pretrained`` and the
    processors read far more than weights: ``config.json``, ``generation_config.json``,
    ``*.safetensors`` / ``*.bin`` / ``*.pt`` / ``*.gguf`` with their ``*.index.json``,
    ``tokenizer.json``, ``tokenizer.model``, ``vocab.*``, ``merges.txt``,
    ``tokenizer_config.json``, ``special_tokens_map.json``, ``added_tokens.json``,
    ``chat_template.jinja`` / ``chat_template.json``, ``preprocessor_config.json``,
    ``processor_config.json``, ``video_preprocessor_config.json``, remote code (``*.py``) and any
    of these under a ``subfolder=``. A list of suffixes misses the next format a loader learns;
    hashing a file the loader never reads costs one read, once, thanks to the index.
    """
    parts = relative.parts
    if any(p.startswith(".") for p in parts):
        return False
    return relative.suffix.lower() not in (".lock", ".md")


def tree_files(
    root: str | Path, include: Callable[[Path], bool] = lambda rel: True
) -> list[tuple[str, Path]]:
    """``(relative posix path, path)`` of every regular file under ``root`` that ``include``
    accepts (given the relative path), sorted; symbolic links are followed (a hub snapshot's
    files are links to its blobs), each directory visited once."""
    root = Path(root)
    out: list[tuple[str, Path]] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root)
            if include(rel) and path.is_file():
                out.append((rel.as_posix(), path))
    return sorted(out)


def folder_identity(root: str | Path, include: Callable[[Path], bool] = lambda rel: True) -> str:
    """The hex sha256 of a folder tree's content: each included file's relative path and
    :func:`file_digest`, in sorted order (a renamed, added or removed file changes it)."""
    files = tree_files(root, include)
    digests = file_digests([p for _, p in files])
    h = hashlib.new(HASH)
    for (rel, _), digest in zip(files, digests, strict=True):
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()


def model_files(root: str | Path) -> list[tuple[str, Path]]:
    """The files of a model directory that make its identity (:func:`is_model_input`)."""
    return tree_files(root, is_model_input)


def model_dir_identity(root: str | Path) -> str:
    """The hex sha256 of a model directory: every byte of every file of :func:`model_files`."""
    if not Path(root).is_dir():
        raise DataError("not a model directory.", path=root)
    return folder_identity(root, is_model_input)


def hub_snapshot_dir(name: str) -> Path | None:
    """The local snapshot of the hub model ``name`` (the revision its ``main`` ref points at in
    the Hugging Face cache), or ``None`` when it is not downloaded (no network is used)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not cached, not a valid repo id, no huggingface_hub: no snapshot
        return None


def model_source_identity(source: str | Path) -> str:
    """The identity of what a model loader reads for ``source``: a directory's content
    (:func:`model_dir_identity`), a file's bytes, or a hub name's local snapshot. A hub model not
    downloaded yet can only be named (``hub:<name>``, with a warning): its first run is keyed
    by the name, later ones by the downloaded content."""
    path = Path(source)
    if path.is_dir():
        return model_dir_identity(path)
    if path.is_file():
        return file_digest(path)
    snapshot = hub_snapshot_dir(str(source))
    if snapshot is not None:
        return model_dir_identity(snapshot)
    log.warning(
        "%s is not downloaded yet: cached results are keyed by its name until it is", source
    )
    return hashlib.new(HASH, f"hub:{source}".encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Images and records
# --------------------------------------------------------------------------------------------


def image_identity(image: Any) -> str:
    """The content identity of an image: ``""`` for none, the :func:`file_digest` of a path,
    or for an in-memory image (PIL, numpy) the hash of its mode, size, palette and pixels."""
    if image is None:
        return ""
    if isinstance(image, (str, Path)):
        return file_digest(image)
    if not hasattr(image, "tobytes"):
        raise ConfigError(
            f"cannot identify an image of type {type(image).__name__}; pass a file path or a "
            "PIL image."
        )
    h = hashlib.new(HASH)
    mode = getattr(image, "mode", getattr(image, "dtype", ""))
    size = getattr(image, "size", None) if hasattr(image, "mode") else getattr(image, "shape", "")
    h.update(f"{mode}|{size}|".encode())
    palette = image.getpalette() if hasattr(image, "getpalette") else None
    if palette:
        h.update(bytes(palette))
    h.update(image.tobytes())
    return h.hexdigest()


def image_identities(images: Sequence[Any]) -> list[str]:
    """:func:`image_identity` of each image, the files among them hashed in one
    :func:`file_digests` call (one index save)."""
    paths = [im for im in images if isinstance(im, (str, Path))]
    digests = iter(file_digests(paths))
    return [next(digests) if isinstance(im, (str, Path)) else image_identity(im) for im in images]


def record_digest(record: Any) -> str:
    """The hex sha256 of a JSON-able record (keys sorted). Only JSON types are accepted: a path
    or another object would key a cache by a name, so it raises ``TypeError``."""
    return hashlib.new(HASH, json.dumps(record, sort_keys=True).encode()).hexdigest()


def examples_identity(examples: Sequence[Any]) -> str:
    """The content identity of probing examples (:class:`~lineage_lens.data.ProbeExample`):
    each example's text, label and source id, and its image by :func:`image_identity` (a path by
    the file's bytes, not its name)."""
    h = hashlib.new(HASH)
    images = image_identities([ex.image for ex in examples])
    for ex, image in zip(examples, images, strict=True):
        row = dict(ex.to_row())
        row.pop("image", None)
        row.pop("image_path", None)
        h.update(json.dumps(row, sort_keys=True).encode())
        h.update(f"|{image};".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Loaded models
# --------------------------------------------------------------------------------------------

_FINGERPRINT_ATTR = "_lineage_lens_fingerprint"


def _tensor_bytes(t: Any) -> memoryview:
    import torch

    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def tokenizer_digest(tok: Any) -> str:
    """The hex sha256 of a tokenizer: its class, vocabulary, chat template, special tokens,
    padding side and BOS setting (``"none"`` for no tokenizer)."""
    if tok is None:
        return "none"
    h = hashlib.new(HASH, type(tok).__name__.encode())
    vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
    h.update(json.dumps(sorted(vocab.items()), default=str).encode())
    extra = {
        "chat_template": getattr(tok, "chat_template", None),
        "special": getattr(tok, "special_tokens_map", None),
        "padding_side": getattr(tok, "padding_side", None),
        "bos": getattr(tok, "add_bos_token", None),
    }
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def model_fingerprint(model: Any) -> str:
    """A sha256 of what a loaded model computes: its parameters and buffers, config and tokenizer.

    Result caches are keyed by it, so two models whose directories share a base name (``A/model``
    and ``B/model``) never share cached results, and a model changed in place (fine-tuned, weights
    copied in) is not mistaken for its former self. The digest is memoised on the model and
    recomputed whenever a parameter or buffer is replaced or modified in place (its storage or
    version counter changes); hashing SmolLM2-135M takes about half a second.
    """
    named = sorted([*model.named_parameters(), *model.named_buffers()], key=lambda item: item[0])
    tok = getattr(model, "tokenizer", None)
    state = (
        id(tok),
        tuple((n, t.data_ptr(), t._version, tuple(t.shape), str(t.dtype)) for n, t in named),
    )
    memo = getattr(model, _FINGERPRINT_ATTR, None)
    if memo is not None and memo[0] == state:
        return memo[1]
    h = hashlib.new(HASH, type(model).__name__.encode())
    cfg = getattr(model, "cfg", None)
    cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else vars(cfg) if cfg is not None else {}
    cfg_dict = {k: v for k, v in cfg_dict.items() if k not in ("device", "model_name")}
    h.update(json.dumps(cfg_dict, sort_keys=True, default=str).encode())
    for name, t in named:
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    h.update(tokenizer_digest(tok).encode())
    digest = h.hexdigest()
    with contextlib.suppress(AttributeError, TypeError):
        object.__setattr__(model, _FINGERPRINT_ATTR, (state, digest))
    return digest


__all__ = [
    "CHUNK_BYTES",
    "HASH",
    "RACY_WINDOW_NS",
    "DigestIndex",
    "coarse_now_ns",
    "digest_index",
    "examples_identity",
    "file_digest",
    "file_digests",
    "folder_identity",
    "forget_digest_indexes",
    "hash_file",
    "hub_snapshot_dir",
    "image_identities",
    "image_identity",
    "index_path",
    "is_model_input",
    "model_dir_identity",
    "model_files",
    "model_fingerprint",
    "model_source_identity",
    "record_digest",
    "tokenizer_digest",
    "tree_files",
]
