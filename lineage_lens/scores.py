"""Truth Scores: per-head probe metrics as ``[n_layers, n_heads]`` arrays, with their provenance.

:class:`TruthScores` is what :func:`lineage_lens.probing.fit_truth_scores` returns, what gates are
built from and what lineage comparisons read. It also imports the paper's published files: the
``[L, H]`` accuracy ``.npy`` arrays and the ``cv5_head_metrics.csv`` layout
(``layer, head, accuracy, precision, recall, f1``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import Float

from lineage_lens._display import label
from lineage_lens.errors import ConfigError, DataError, ShapeMismatchError
from lineage_lens.fileio import atomic_open
from lineage_lens.headmap import UNREADABLE, HeadMap

#: Metrics a probe reports per head; ``accuracy`` is the Truth Score.
METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1", "auroc")
#: Columns of the paper's ``cv5_head_metrics.csv`` files.
CSV_METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1")

_META_KEYS = ("model", "dataset", "n", "folds", "solver", "seed")


@dataclass(repr=False)
class TruthScores(HeadMap):
    """Per-head probe metrics of one model on one dataset.

    Attributes:
        metrics: metric name -> ``[n_layers, n_heads]`` float array; ``"accuracy"`` is the score.
        model, dataset: what was probed.
        n: number of probing examples; folds: cross-validation folds; solver, seed: how.
        meta: any further provenance (JSON-serialisable).
    """

    metrics: dict[str, Float[np.ndarray, "layer head"]]
    model: str = ""
    dataset: str = ""
    n: int | None = None
    folds: int | None = None
    solver: str = ""
    seed: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    DEFAULT_METRIC = "accuracy"

    def __post_init__(self) -> None:
        if not self.metrics:
            raise ConfigError("TruthScores needs at least one metric array (e.g. 'accuracy').")
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in self.metrics.items()}
        shapes = {k: a.shape for k, a in arrays.items()}
        first = next(iter(arrays.values())).shape
        if len(first) != 2:
            raise ShapeMismatchError("Truth Score array", "(n_layers, n_heads)", first)
        for name, shape in shapes.items():
            if shape != first:
                raise ShapeMismatchError(f"metric {name!r}", first, shape)
        self.metrics = arrays

    # ------------------------------------------------------------------ access
    def head_maps(self) -> dict[str, Float[np.ndarray, "layer head"]]:
        """Every metric's ``[n_layers, n_heads]`` array."""
        return self.metrics

    @property
    def accuracy(self) -> Float[np.ndarray, "layer head"]:
        """The Truth Score: k-fold cross-validated probe accuracy per head."""
        return self.get("accuracy")

    def get(self, metric: str = "accuracy") -> Float[np.ndarray, "layer head"]:
        """The ``[n_layers, n_heads]`` array of ``metric``."""
        return self._map(metric)

    def top_k(self, k: int = 10, metric: str = "accuracy") -> list[tuple[int, int]]:
        """The ``k`` best heads as ``(layer, head)``, best first (ties: lower layer, head first)."""
        return self.top_heads(k, metric)

    def check_shape(self, shape: tuple[int, int], what: str = "model") -> None:
        """Raise :class:`ShapeMismatchError` unless these scores are ``shape`` = (layers, heads)."""
        if tuple(shape) != self.shape:
            raise ShapeMismatchError(
                f"Truth Scores of {self.model or 'a model'} vs {what}",
                tuple(shape),
                self.shape,
                "Scores transfer only between models with the same (n_layers, n_heads).",
            )

    def with_metric(self, metric: str) -> TruthScores:
        """A copy whose ``accuracy`` is another metric (e.g. to gate by AUROC)."""
        return TruthScores(
            {"accuracy": self.get(metric).copy()},
            self.model,
            self.dataset,
            self.n,
            self.folds,
            self.solver,
            self.seed,
            {**self.meta, "metric": metric},
        )

    # ----------------------------------------------------------------- frames
    def to_frame(self) -> pd.DataFrame:
        """One row per head: ``layer, head`` and every metric, plus the accuracy ``rank`` (1=best)."""
        frame = super().to_frame()
        frame["rank"] = frame[self.default_metric].rank(ascending=False, method="min").astype(int)
        return frame

    def summary(self, k: int = 5) -> str:
        """A few lines: provenance and the top ``k`` heads."""
        acc = (
            self.get("accuracy")
            if "accuracy" in self.metrics
            else next(iter(self.metrics.values()))
        )
        lines = [
            f"TruthScores {self.model or '?'} on {self.dataset or '?'}: {self.n_layers} layers x "
            f"{self.n_heads} heads, n={self.n}, folds={self.folds}, solver={self.solver or '?'}",
            f"  mean {acc.mean():.3f}, max {acc.max():.3f}",
        ]
        for rank, (layer, head) in enumerate(self.top_k(min(k, acc.size)), 1):
            extra = "  ".join(
                f"{m}={self.metrics[m][layer, head]:.3f}" for m in self.metrics if m != "accuracy"
            )
            lines.append(f"  #{rank} L{layer}H{head}: accuracy={acc[layer, head]:.3f}  {extra}")
        return "\n".join(lines)

    def _provenance(self) -> list[tuple[str, str]]:
        return [
            ("model", label(self.model)),
            ("dataset", label(self.dataset)),
            ("n", str(self.n)),
            ("folds", str(self.folds)),
            ("solver", label(self.solver)),
            ("metrics", ",".join(self.metrics)),
        ]

    def _correlation_name(self) -> str:
        return self.model

    def comparison_values(
        self, metric: str | None = None
    ) -> tuple[Float[np.ndarray, "layer head"], str]:
        """``(values, model)`` in :func:`lineage_lens.lineage.compare_scores`: the ``metric``
        array (default ``accuracy``); unlike other maps, a metric these scores lack is a
        :class:`~lineage_lens.errors.ConfigError` naming the ones they have."""
        return self.get(metric or self.default_metric), self.model or ""

    # -------------------------------------------------------------------- I/O
    def _meta_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _META_KEYS} | {"meta": self.meta}

    def _npz_payload(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """One array per metric (``metric_<name>``) + JSON provenance."""
        return {f"metric_{k}": v for k, v in self.metrics.items()}, self._meta_dict()

    @classmethod
    def _from_npz(
        cls, arrays: dict[str, np.ndarray], meta: dict[str, Any], path: Path
    ) -> TruthScores:
        metrics = {k[7:]: v for k, v in arrays.items() if k.startswith("metric_")}
        if not metrics:
            raise DataError("no metric arrays (metric_*) in file", path=path)
        extra = meta.pop("meta", {})
        kwargs = {k: meta.get(k) for k in _META_KEYS if k in meta}
        return _build(path, metrics, **kwargs, meta=extra if isinstance(extra, dict) else {})

    def to_csv(self, path: str | Path) -> Path:
        """Write the paper's ``cv5_head_metrics.csv`` layout (plus ``auroc`` when present)."""
        frame = self.to_frame().drop(columns="rank")
        with atomic_open(path, "w", newline="") as fh:
            frame.to_csv(fh, index=False, float_format="%.17g")
        return Path(path)

    @classmethod
    def from_csv(cls, path: str | Path, *, model: str = "", dataset: str = "") -> TruthScores:
        """Read a ``cv5_head_metrics.csv`` (``layer, head, accuracy, ...``) file."""
        path = Path(path)
        try:
            frame = pd.read_csv(path, encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"not UTF-8 text (byte {exc.start}); is it a CSV file? Save it as UTF-8.", path=path
            ) from exc
        except pd.errors.EmptyDataError as exc:
            raise DataError(
                "the CSV file is empty; expected layer, head, accuracy, ...", path=path
            ) from exc
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise DataError(f"cannot read CSV ({' '.join(str(exc).split())})", path=path) from exc
        missing = {"layer", "head", "accuracy"} - set(frame.columns)
        if missing:
            raise DataError(
                f"missing column(s) {sorted(missing)}; expected layer, head, accuracy, ...",
                path=path,
                line=1,
            )
        if frame.empty:
            raise DataError("the CSV file has a header but no rows", path=path)
        for col in ("layer", "head"):
            values = pd.to_numeric(frame[col], errors="coerce")
            bad = ~(values.notna() & (values >= 0) & (values % 1 == 0) & (values < 1_000_000))
            if bad.any():
                row = int(np.argmax(bad.to_numpy()))
                raise DataError(
                    f"column {col!r} must hold non-negative integers, got {frame[col].iloc[row]!r}",
                    path=path,
                    line=row + 2,
                )
            frame[col] = values.astype(np.int64)
        for col in frame.columns:
            if col in ("layer", "head") or frame[col].dtype != object:
                continue
            converted = pd.to_numeric(frame[col], errors="coerce")
            text = converted.isna() & frame[col].notna()
            if not text.any():
                frame[col] = converted
            elif col == "accuracy":
                row = int(np.argmax(text.to_numpy()))
                raise DataError(
                    f"column 'accuracy' must hold numbers, got {frame[col].iloc[row]!r}",
                    path=path,
                    line=row + 2,
                )
        if not pd.api.types.is_numeric_dtype(frame["accuracy"]):
            raise DataError("column 'accuracy' must hold numbers", path=path)
        n_layers, n_heads = int(frame["layer"].max()) + 1, int(frame["head"].max()) + 1
        if len(frame) != n_layers * n_heads or frame.duplicated(["layer", "head"]).any():
            raise DataError(
                f"expected one row per (layer, head) for {n_layers}x{n_heads} heads, "
                f"got {len(frame)} rows",
                path=path,
            )
        frame = frame.sort_values(["layer", "head"])
        metrics = {
            str(m): frame[m].to_numpy(dtype=np.float64).reshape(n_layers, n_heads)
            for m in frame.columns
            if m not in ("layer", "head") and pd.api.types.is_numeric_dtype(frame[m])
        }
        return _build(
            path, metrics, model=model or path.stem, dataset=dataset, meta={"source": str(path)}
        )

    @classmethod
    def from_npy(cls, path: str | Path, *, model: str = "", dataset: str = "") -> TruthScores:
        """Read one of the paper's published ``[n_layers, n_heads]`` accuracy arrays."""
        path = Path(path)
        try:
            arr = np.load(path, allow_pickle=False)
        except UNREADABLE as exc:
            raise DataError(
                f"cannot read .npy ({type(exc).__name__}: {exc}); is it truncated?", path=path
            ) from exc
        if not isinstance(arr, np.ndarray):
            arr.close()
            raise DataError("a .npz archive, not a .npy array; rename it to .npz", path=path)
        if arr.ndim != 2:
            raise DataError(
                f"expected a [n_layers, n_heads] array, got shape {arr.shape}", path=path
            )
        return _build(
            path,
            {"accuracy": arr},
            model=model or path.stem,
            dataset=dataset,
            meta={"source": str(path)},
        )

    # ------------------------------------------------------------------- plot
    def _title(self, metric: str) -> str:
        return f"{self.model or 'model'}: {metric}"


def _build(path: Path, metrics: dict[str, Any], **kwargs: Any) -> TruthScores:
    """``TruthScores(metrics, **kwargs)`` with non-numeric or empty arrays as a DataError."""
    for name, arr in metrics.items():
        if not np.issubdtype(np.asarray(arr).dtype, np.number) or np.asarray(arr).dtype.kind == "c":
            raise DataError(
                f"metric {name!r} holds {np.asarray(arr).dtype} values, not real numbers", path=path
            )
        if np.asarray(arr).size == 0:
            raise DataError(f"metric {name!r} is empty (shape {np.asarray(arr).shape})", path=path)
    for key in ("n", "folds", "seed"):
        value = kwargs.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise DataError(f"provenance {key!r} must be an integer, got {value!r}", path=path)
    for key in ("model", "dataset", "solver"):
        if kwargs.get(key) is not None and not isinstance(kwargs[key], str):
            raise DataError(f"provenance {key!r} must be a string, got {kwargs[key]!r}", path=path)
    try:
        return TruthScores(metrics, **kwargs)
    except ShapeMismatchError as exc:
        raise DataError(str(exc), path=path) from exc


def load_scores(path: str | Path, *, model: str = "", dataset: str = "") -> TruthScores:
    """Load scores from our ``.npz``, the paper's ``[L, H]`` ``.npy`` or a ``cv5_head_metrics.csv``."""
    path = Path(path)
    if not path.is_file():
        raise DataError("scores file not found", path=path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return TruthScores.load(path)
    if suffix == ".npy":
        return TruthScores.from_npy(path, model=model, dataset=dataset)
    if suffix == ".csv":
        return TruthScores.from_csv(path, model=model, dataset=dataset)
    raise DataError("unknown scores format; use .npz (ours), .npy or .csv (the paper's)", path=path)


def published_scores_dir() -> Path:
    """Folder of the paper's vendored Truth Score files (``*.npy`` and ``cross_dataset/*.csv``)."""
    from lineage_lens._resources import resource_path

    return resource_path("truth_scores")
