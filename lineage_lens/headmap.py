"""Per-head maps: the one face of every result that holds ``[n_layers, n_heads]`` arrays.

:class:`HeadMap` is the base of :class:`~lineage_lens.scores.TruthScores`,
:class:`~lineage_lens.gating.TruthGate`, :class:`~lineage_lens.cka.HeadCKA`,
:class:`~lineage_lens.attention.EvidenceAttention` and :class:`~lineage_lens.weights.WeightDrift`.
A subclass names its arrays (:meth:`HeadMap.head_maps`, one or several metrics, the default first
or named by ``DEFAULT_METRIC``), how it is drawn (``_heatmap_style``), what it stores
(``_npz_payload`` / ``_from_npz``) and a few provenance fields (``_provenance``); it gets:

* ``to_frame()``: long format, one row per head: ``layer, head`` and one column per metric;
* ``heatmap(metric, ax=...)``: ``imshow`` with a colorbar, layers on y (layer 0 at the top);
* ``save(path)`` / ``load(path)``: one ``.npz`` (arrays + a JSON ``meta`` entry), written
  atomically; a damaged or foreign file is a :class:`~lineage_lens.errors.DataError`;
* ``comparison_values(metric)``: the array and label :func:`lineage_lens.lineage.compare_scores`
  compares when given the map (``ll.compare_scores(att, truth_scores)``);
* a short ``repr`` (class, shape, provenance, mean and max of the default metric) and a small
  HTML table (``_repr_html_``) with every metric's range and the top heads.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
from jaxtyping import Float

from lineage_lens._display import ShortRepr, number
from lineage_lens.errors import ConfigError, DataError, LineageLensError
from lineage_lens.fileio import atomic_path

if TYPE_CHECKING:
    from typing import Self

    from matplotlib.axes import Axes

#: What reading a damaged file may raise (truncated zip, empty file, bad header, bad JSON).
UNREADABLE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, RecursionError)


def read_npz(path: str | Path, what: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(arrays, meta)`` of a ``.npz`` written by :func:`write_npz`; ``meta`` is ``{}`` if absent.

    Anything but a readable ``.npz`` archive with a JSON-object ``meta`` is a DataError naming
    ``what`` the file should have been.
    """
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise DataError(f"a .npy array, not a {what} .npz archive; rename it", path=path)
        with data:
            arrays = {k: data[k] for k in data.files if k != "meta"}
            meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
    except DataError:
        raise
    except UNREADABLE as exc:
        raise DataError(
            f"not a readable {what} file ({type(exc).__name__}: {exc}); is it truncated or of "
            "another format?",
            path=path,
        ) from exc
    if not isinstance(meta, dict):
        raise DataError("the 'meta' entry is not a JSON object", path=path)
    return arrays, meta


def write_npz(
    path: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any], *, owner: str
) -> Path:
    """Write ``arrays`` and ``meta`` (as a JSON string entry ``meta``) to the ``.npz`` ``path``,
    atomically; ``owner`` (the writing class) names itself when ``path`` is no ``.npz``."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ConfigError(f"{owner}.save writes .npz files, got {path.name!r}")
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays, meta=np.array(json.dumps(meta)))
    return path


def draw_heatmap(
    values: Float[np.ndarray, "layer head"],
    *,
    ax: Axes | None = None,
    cmap: str = "viridis",
    title: str = "",
    label: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    norm: Any = None,
) -> Axes:
    """Layer x head ``imshow`` of ``values`` (layer 0 at the top) with a colorbar ``label``."""
    import matplotlib.pyplot as plt

    n_layers, n_heads = values.shape
    if ax is None:
        _, ax = plt.subplots(figsize=(max(3.0, 0.25 * n_heads + 2), max(3.0, 0.2 * n_layers + 1)))
    image = ax.imshow(values, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, norm=norm)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, label=label)
    return ax


def _stats(values: np.ndarray) -> tuple[float, float, float]:
    """``(min, mean, max)`` ignoring NaN (all NaN: NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmin(values)), float(np.nanmean(values)), float(np.nanmax(values))


class HeadMap(ShortRepr):
    """Base of results holding per-head ``[n_layers, n_heads]`` arrays (module docstring)."""

    #: The metric used when none is named (the first of :meth:`head_maps` when absent).
    DEFAULT_METRIC: ClassVar[str] = ""

    # ------------------------------------------------------------------ subclass hooks
    def head_maps(self) -> dict[str, Float[np.ndarray, "layer head"]]:
        """Every per-head array by metric name, all of shape ``(n_layers, n_heads)``."""
        raise NotImplementedError(f"{type(self).__name__} must define head_maps")

    def _provenance(self) -> list[tuple[str, str]]:
        """What the repr says besides shape and numbers: model, dataset, n, parameters."""
        return []

    def _title(self, metric: str) -> str:
        """Default heatmap title."""
        return metric

    def _heatmap_style(self, metric: str, values: np.ndarray) -> dict[str, Any]:
        """Defaults for :func:`draw_heatmap` (``cmap``, ``vmin``, ``vmax``, ``norm``, ``label``)."""
        return {}

    def _heatmap_values(self, metric: str) -> Float[np.ndarray, "layer head"]:
        """The array :meth:`heatmap` draws for ``metric`` (a head map unless a class has more)."""
        return self._map(metric)

    def _npz_payload(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)`` that :meth:`save` writes."""
        raise NotImplementedError(f"{type(self).__name__} must define _npz_payload")

    @classmethod
    def _from_npz(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any], path: Path) -> Self:
        """The object :meth:`save` wrote as ``arrays`` and ``meta``."""
        raise NotImplementedError(f"{cls.__name__} must define _from_npz")

    # ------------------------------------------------------------------------- access
    @property
    def shape(self) -> tuple[int, int]:
        """``(n_layers, n_heads)``."""
        return tuple(np.shape(next(iter(self.head_maps().values()))))  # type: ignore[return-value]

    @property
    def n_layers(self) -> int:
        return self.shape[0]

    @property
    def n_heads(self) -> int:
        return self.shape[1]

    @property
    def default_metric(self) -> str:
        """The metric :meth:`heatmap`, :meth:`comparison_values` and the repr use by default."""
        maps = self.head_maps()
        return self.DEFAULT_METRIC if self.DEFAULT_METRIC in maps else next(iter(maps))

    def _map(self, metric: str | None = None) -> Float[np.ndarray, "layer head"]:
        maps = self.head_maps()
        metric = metric or self.default_metric
        if metric not in maps:
            raise ConfigError(
                f"metric {metric!r} is not in this {type(self).__name__}; available: {sorted(maps)}"
            )
        return maps[metric]

    def _frame_columns(self) -> dict[str, np.ndarray]:
        """The per-head columns of :meth:`to_frame` (the head maps unless a class adds flags)."""
        return self.head_maps()

    def to_frame(self) -> pd.DataFrame:
        """One row per head: ``layer, head`` and one column per metric."""
        n_layers, n_heads = self.shape
        layers, heads = np.divmod(np.arange(n_layers * n_heads), n_heads)
        frame = pd.DataFrame({"layer": layers, "head": heads})
        for name, values in self._frame_columns().items():
            frame[name] = np.asarray(values).ravel()
        return frame

    def top_heads(self, k: int = 5, metric: str | None = None) -> list[tuple[int, int]]:
        """The ``k`` highest heads of ``metric`` as ``(layer, head)``, best first (ties: lower
        layer, then lower head first; NaN last)."""
        values = np.nan_to_num(self._map(metric).ravel().astype(np.float64), nan=-np.inf)
        if not 0 < k <= values.size:
            raise ConfigError(f"k must be in 1..{values.size}, got {k}")
        order = np.lexsort((np.arange(values.size), -values))[:k]
        return [divmod(int(i), self.n_heads) for i in order]  # type: ignore[misc]

    # ------------------------------------------------------------------------- plots
    def heatmap(
        self,
        metric: str | None = None,
        *,
        ax: Axes | None = None,
        cmap: str | None = None,
        title: str | None = None,
        vmin: float | None = None,
        vmax: float | None = None,
    ) -> Axes:
        """Layer x head heatmap of ``metric`` (default: :attr:`default_metric`), layer 0 on top."""
        metric = metric or self.default_metric
        values = self._heatmap_values(metric)
        style = {"cmap": "viridis", "label": metric} | self._heatmap_style(metric, values)
        if vmin is not None or vmax is not None:
            style |= {"vmin": vmin, "vmax": vmax, "norm": None}
        if cmap is not None:
            style["cmap"] = cmap
        return draw_heatmap(
            values, ax=ax, title=self._title(metric) if title is None else title, **style
        )

    # --------------------------------------------------------------------------- I/O
    def save(self, path: str | Path) -> Path:
        """Write one ``.npz`` (the arrays + JSON provenance), atomically."""
        arrays, meta = self._npz_payload()
        return write_npz(path, arrays, meta, owner=type(self).__name__)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        arrays, meta = read_npz(path, cls.__name__)
        try:
            return cls._from_npz(arrays, meta, path)
        except LineageLensError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(
                f"not a {cls.__name__} file (missing or malformed entry: "
                f"{type(exc).__name__}: {exc}); write it with {cls.__name__}.save",
                path=path,
            ) from exc

    # ------------------------------------------------------------------ comparisons
    def comparison_values(
        self, metric: str | None = None
    ) -> tuple[Float[np.ndarray, "layer head"], str]:
        """``(values, label)`` of this map in :func:`lineage_lens.lineage.compare_scores`:
        the ``metric`` array (float64) where this map has that metric, else its default metric's,
        and the map's label (e.g. ``"context evidence attention"``), so
        ``ll.compare_scores(att, truth_scores)`` compares a map with Truth Scores."""
        metric = metric if metric in self.head_maps() else None
        return np.asarray(self._map(metric), dtype=np.float64), self._correlation_name()

    def _correlation_name(self) -> str:
        """Label of this map in a comparison."""
        return type(self).__name__

    # ------------------------------------------------------------------------ display
    def _repr_fields(self) -> list[tuple[str, str]]:
        metric = self.default_metric
        _, mean, high = _stats(self._map(metric))
        return [
            ("shape", str(self.shape)),
            *self._provenance(),
            (f"mean {metric}", number(mean)),
            (f"max {metric}", number(high)),
        ]

    def _html_rows(self) -> list[tuple[str, str]]:
        rows = [("shape", f"{self.n_layers} layers x {self.n_heads} heads"), *self._provenance()]
        for name, values in list(self.head_maps().items())[:12]:
            low, mean, high = _stats(values)
            rows.append((f"{name} min / mean / max", f"{low:.4g} / {mean:.4g} / {high:.4g}"))
        metric = self.default_metric
        values = self._map(metric)
        top = self.top_heads(min(5, values.size), metric)
        best = ", ".join(f"L{layer}H{head} {values[layer, head]:.4g}" for layer, head in top)
        rows.append((f"top heads ({metric})", best))
        return rows
