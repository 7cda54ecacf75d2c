"""Per-head activations at one token: the probing features of TruthProbe, and their files.

A :class:`HeadActivations` holds, for ``n`` examples, every head's ``blocks.{l}.attn.hook_z``
vector (each head's output before ``W_O``) at one token of the example's prompt -- by default the
answer's last token -- as an array ``[n, n_layers, n_heads, d_head]``, with the examples' labels,
source rows and the provenance of the capture. :func:`lineage_lens.capture.collect_head_activations`
makes one; this module only holds and stores it.

On disk a :class:`HeadActivations` is either one ``.npz`` file or a directory of
:data:`ACTS_FILE` (the ``.npy`` array, opened memory-mapped by :meth:`HeadActivations.load`) and
:data:`META_FILE` (labels and provenance as JSON, with ``"complete"``: a capture streaming into
the directory writes ``false`` until its last batch is in).

Typical use::

    acts = HeadActivations.load("acts/smollm2")  # what collect_head_activations(out=...) wrote
    acts.acts.shape  # (584, 30, 9, 64)
    acts.head(12, 3)  # [n, d_head] float32: the features of one head's probe
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import Float, Int

from lineage_lens._display import ShortRepr, label
from lineage_lens.errors import DataError, ShapeMismatchError
from lineage_lens.fileio import atomic_open, atomic_path
from lineage_lens.models import HeadGeometry

#: The array of a :class:`HeadActivations` directory: ``[n, n_layers, n_heads, d_head]`` ``.npy``.
ACTS_FILE = "acts.npy"
#: The labels and provenance of a :class:`HeadActivations` directory (JSON).
META_FILE = "meta.json"

# --------------------------------------------------------------------------------------------
# The container
# --------------------------------------------------------------------------------------------


@dataclass(repr=False)
class HeadActivations(ShortRepr):
    """Per-head vectors of ``n`` examples at one token position, with their labels.

    Attributes:
        acts: ``[n, n_layers, n_heads, d_head]``; ``acts[i, l, h]`` is ``blocks.{l}.attn.hook_z``
            of example ``i``, head ``h``, at the probed token. A numpy array or memmap.
        labels: ``[n]`` ints, 1 = truthful, 0 = hallucinated.
        source_ids: source row of each example (examples of one row share it).
        model, template, position, dtype: provenance of the capture.
        token_positions: ``[n]`` index of the probed token in the example's own (unpadded) tokens.
        n_tokens: ``[n]`` number of tokens of each prompt.
        meta: further provenance (JSON-serialisable), e.g. ``geometry`` and ``prepend_bos``.
    """

    acts: Float[np.ndarray, "n layer head d_head"]
    labels: Int[np.ndarray, " n"]
    source_ids: list[str]
    model: str = ""
    template: str = ""
    position: str = "answer_last"
    dtype: str = "float16"
    token_positions: Int[np.ndarray, " n"] | None = None
    n_tokens: Int[np.ndarray, " n"] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.acts, np.ndarray):
            self.acts = np.asarray(self.acts)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.source_ids = [str(s) for s in self.source_ids]
        if self.acts.ndim != 4:
            raise ShapeMismatchError(
                "HeadActivations.acts", "[n, n_layers, n_heads, d_head]", tuple(self.acts.shape)
            )
        n = self.acts.shape[0]
        for name in ("labels", "token_positions", "n_tokens"):
            arr = getattr(self, name)
            if arr is not None and np.asarray(arr).shape != (n,):
                raise ShapeMismatchError(
                    f"HeadActivations.{name}", (n,), np.asarray(arr).shape, "one per example."
                )
        if len(self.source_ids) != n:
            raise ShapeMismatchError("HeadActivations.source_ids", (n,), (len(self.source_ids),))

    def __len__(self) -> int:
        return int(self.acts.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.acts.shape[1])

    @property
    def n_heads(self) -> int:
        return int(self.acts.shape[2])

    @property
    def d_head(self) -> int:
        return int(self.acts.shape[3])

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_layers, n_heads)``: the shape of the Truth Scores fitted on these activations."""
        return (self.n_layers, self.n_heads)

    @property
    def geometry(self) -> HeadGeometry | None:
        """The model's :class:`HeadGeometry` when it was recorded at capture time."""
        g = self.meta.get("geometry")
        return HeadGeometry(**g) if g else None

    def head(self, layer: int, head: int) -> Float[np.ndarray, "n d_head"]:
        """Features of one head, ``[n, d_head]`` as float32 (what a probe is fitted on)."""
        return np.asarray(self.acts[:, layer, head, :], dtype=np.float32)

    def subset(self, index: Sequence[int] | np.ndarray) -> HeadActivations:
        """The examples at ``index`` (a new in-memory object)."""
        idx = np.asarray(index)
        pick = lambda a: None if a is None else np.asarray(a)[idx]  # noqa: E731
        return HeadActivations(
            acts=np.asarray(self.acts[idx]),
            labels=self.labels[idx],
            source_ids=[self.source_ids[i] for i in idx.tolist()],
            model=self.model,
            template=self.template,
            position=self.position,
            dtype=self.dtype,
            token_positions=pick(self.token_positions),
            n_tokens=pick(self.n_tokens),
            meta=dict(self.meta),
        )

    def _repr_fields(self) -> list[tuple[str, str]]:
        n_true = int(self.labels.sum())
        kind = "memmap" if isinstance(self.acts, np.memmap) else "in memory"
        return [
            ("model", label(self.model)),
            ("n", str(len(self))),
            ("shape", f"{self.shape} (d_head {self.d_head})"),
            ("acts", f"{self.acts.dtype} {kind}"),
            ("labels", f"{n_true} truthful / {len(self) - n_true} hallucinated"),
            ("sources", str(len(set(self.source_ids)))),
            ("position", repr(self.position)),
        ]

    def to_frame(self) -> pd.DataFrame:
        """One row per example: ``label``, ``source_id``, ``token_position``, ``n_tokens``."""
        df = pd.DataFrame({"label": self.labels, "source_id": self.source_ids})
        if self.token_positions is not None:
            df["token_position"] = self.token_positions
        if self.n_tokens is not None:
            df["n_tokens"] = self.n_tokens
        df.index.name = "example"
        return df

    def _meta_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels.tolist(),
            "source_ids": self.source_ids,
            "model": self.model,
            "template": self.template,
            "position": self.position,
            "dtype": self.dtype,
            "token_positions": None
            if self.token_positions is None
            else np.asarray(self.token_positions).tolist(),
            "n_tokens": None if self.n_tokens is None else np.asarray(self.n_tokens).tolist(),
            "meta": self.meta,
        }

    @classmethod
    def _from_meta(cls, acts: np.ndarray, meta: dict[str, Any]) -> HeadActivations:
        return cls(
            acts=acts,
            labels=np.asarray(meta["labels"]),
            source_ids=meta["source_ids"],
            model=meta.get("model", ""),
            template=meta.get("template", ""),
            position=meta.get("position", "answer_last"),
            dtype=meta.get("dtype", str(acts.dtype)),
            token_positions=None
            if meta.get("token_positions") is None
            else np.asarray(meta["token_positions"]),
            n_tokens=None if meta.get("n_tokens") is None else np.asarray(meta["n_tokens"]),
            meta=meta.get("meta", {}),
        )

    def save(self, path: str | Path) -> Path:
        """Write to ``path``: a ``.npz`` file, or else a directory (``acts.npy`` + ``meta.json``).

        Both are written atomically. A directory can be opened memory-mapped by :meth:`load`.
        """
        path = Path(path)
        if path.suffix == ".npz":
            meta = json.dumps(self._meta_dict())
            with atomic_path(path) as tmp:
                np.savez(tmp, acts=np.asarray(self.acts), meta=np.array(meta))
            return path
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / ACTS_FILE) as tmp:
            np.save(tmp, np.asarray(self.acts))
        self.write_meta(path, complete=True)
        return path

    def write_meta(self, directory: str | Path, *, complete: bool) -> Path:
        """Write (atomically) the :data:`META_FILE` of a directory holding these activations.

        ``complete=False`` marks a capture still streaming into the directory's :data:`ACTS_FILE`
        (:meth:`load` refuses it); ``self.acts`` is not written, only its provenance and labels.
        Returns the path of the file.
        """
        path = Path(directory) / META_FILE
        _write_json(path, {**self._meta_dict(), "complete": complete})
        return path

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = True) -> HeadActivations:
        """Read what :meth:`save` or ``collect_head_activations(out=...)`` wrote.

        Directories are memory-mapped read-only unless ``mmap=False``.
        """
        path = Path(path)
        if path.is_file() and path.suffix == ".npz":
            try:
                with np.load(path, allow_pickle=False) as z:
                    if "acts" not in z or "meta" not in z:
                        raise DataError(
                            "not a HeadActivations .npz (needs 'acts' and 'meta').", path=path
                        )
                    return cls._from_meta(z["acts"], json.loads(str(z["meta"])))
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                if isinstance(exc, DataError):
                    raise
                raise DataError(f"unreadable .npz ({exc}); is it truncated?", path=path) from exc
        meta_path = path / META_FILE
        if not meta_path.is_file() or not (path / ACTS_FILE).is_file():
            raise DataError(
                f"not a HeadActivations directory or .npz file (needs {ACTS_FILE} and "
                f"{META_FILE}).",
                path=path,
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"unreadable meta file ({exc}).", path=meta_path) from exc
        if not isinstance(meta, dict) or not meta.get("complete", False):
            raise DataError(
                "the capture in this directory is incomplete; call collect_head_activations "
                "again with the same out= to resume it.",
                path=path,
            )
        acts_path = path / ACTS_FILE
        shape, dtype, offset = npy_layout(acts_path)
        if acts_path.stat().st_size != offset + int(np.prod(shape)) * dtype.itemsize:
            raise DataError(
                f"the file is {acts_path.stat().st_size} bytes, not the "
                f"{offset + int(np.prod(shape)) * dtype.itemsize} its header promises (shape "
                f"{shape}, {dtype}): it was truncated or changed. Capture it again.",
                path=acts_path,
            )
        acts = np.load(acts_path, mmap_mode="r" if mmap else None)
        return cls._from_meta(acts, meta)


def npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, offset of the data)`` from a ``.npy`` header, or a :class:`DataError`."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(fh)
            return tuple(shape), np.dtype(dtype), fh.tell()
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(
            f"unreadable .npy header ({exc}); the capture cannot be resumed. Delete "
            f"{path.parent} (or pass another out= directory) and capture again.",
            path=path,
        ) from exc


def _write_json(path: Path, obj: Any) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh)
