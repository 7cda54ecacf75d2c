"""Weight drift between an ancestor model and a descendant, per layer and per attention head.

The TruthProbe paper (Section 5, Fig. 2/3) shows that fine-tuning a language model into a
multimodal one (Vicuna -> LLaVA) changes the attention weights little, as a layer-wise "normalized
Frobenius norm". :func:`weight_drift` measures this per head:

* for each of W_Q, W_K, W_V, W_O: the relative Frobenius change ``||W_desc - W_anc|| / ||W_anc||``
  and the cosine similarity of the flattened weights. W_Q and W_O are sliced per query head; W_K
  and W_V per key/value head (the ``*_kv`` arrays) and also mapped to the query heads that use
  them (grouped-query attention: query head ``h`` uses kv head ``h // (n_heads / n_kv_heads)``);
* basis-free drift of each head's circuits, ``QK_h = W_Q_h^T W_K_g`` and ``OV_h = W_O_h W_V_g``
  (both ``d_model x d_model``): relative Frobenius change and cosine. They are computed from the
  low-rank factors with ``||A B^T||_F^2 = tr((A^T A)(B^T B))``, never forming ``d_model x d_model``
  matrices. The QK circuit ignores rotary position embeddings: it is the bilinear form between
  pre-rotation query and key inputs (RoPE rotates queries and keys by the same position-dependent
  matrices in both models, so it does not change which heads drift).

Weights are compared raw, exactly as stored in the Hugging Face checkpoint (never after folding
layer norms, centering or refactoring), one layer at a time in float64. Models are given as loaded
``TransformerBridge`` objects or as local Hugging Face directories; directories with
``.safetensors`` files are read lazily tensor by tensor, so two 7B checkpoints need only a layer's
worth of host memory. For LLaVA-type models only the language model's blocks are compared (the
vision tower and projector are skipped). A fused ``qkv_proj`` (Phi3) is split into its query, key
and value rows.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Union

import numpy as np
import pandas as pd
import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from lineage_lens._display import label
from lineage_lens.errors import ConfigError, ModelLoadError, ShapeMismatchError
from lineage_lens.headmap import HeadMap
from lineage_lens.models import (
    HeadGeometry,
    head_geometry,
    model_label,
    read_model_json,
    safetensors_error,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from transformer_lens.model_bridge import TransformerBridge

log = logging.getLogger(__name__)

PROJECTIONS: tuple[str, ...] = ("q", "k", "v", "o")
CIRCUITS: tuple[str, ...] = ("qk", "ov")
#: Per-query-head quantities of a :class:`WeightDrift` (``[L, H]`` arrays).
HEAD_KEYS: tuple[str, ...] = tuple(
    f"{m}_{s}" for m in PROJECTIONS + CIRCUITS for s in ("rel", "cos")
)
#: Per-kv-head quantities (``[L, n_kv_heads]`` arrays).
KV_KEYS: tuple[str, ...] = ("k_rel_kv", "k_cos_kv", "v_rel_kv", "v_cos_kv")
#: Whole-matrix relative change per layer (``[L]`` arrays).
LAYER_KEYS: tuple[str, ...] = tuple(f"{m}_layer_rel" for m in PROJECTIONS)
#: multi-tower checkpoints: attention weights under these prefixes belong to a tower other than the
#: language model (LLaVA's vision tower, Qwen2.5-Omni's audio tower and talker decoder).
_OTHER_TOWER = re.compile(r"vision|visual|audio|talker|token2wav")

ModelLike = Union["TransformerBridge", str, Path]


# --------------------------------------------------------------------------------------------
# Reading raw attention weights one layer at a time
# --------------------------------------------------------------------------------------------


class AttentionWeightSource(Protocol):
    """Something that yields the raw HF attention weights of one layer at a time."""

    geometry: HeadGeometry
    label: str

    def layer(self, index: int) -> dict[str, Tensor]:
        """``{"q": [H*d_head, d_model], "k"/"v": [n_kv*d_head, d_model], "o": [d_model, H*d_head]}``."""
        ...


class BridgeWeights:
    """Raw attention weights of a loaded ``TransformerBridge`` (its language-model blocks).

    Reads the ``nn.Linear`` modules wrapped by ``blocks[l].attn.{q,k,v,o}``: the Hugging Face
    weights as loaded, untouched by any TransformerLens weight processing.
    """

    def __init__(self, model: TransformerBridge, label: str | None = None):
        self.model = model
        self.geometry = head_geometry(model)
        self.label = label or model_label(model)

    def layer(self, index: int) -> dict[str, Tensor]:
        attn = self.model.blocks[index].attn
        out = {}
        for name in PROJECTIONS:
            module = getattr(attn, name)
            linear = getattr(module, "original_component", module)
            out[name] = linear.weight.detach()
        return out


_LAYER_KEY = re.compile(
    r"^(?P<prefix>.*?)layers\.(?P<layer>\d+)\.self_attn\.(?P<proj>[qkvo]|qkv)_proj\.weight$"
)  # qkv: a fused qkv_proj (Phi3)


class SafetensorsWeights:
    """Raw attention weights of a local Hugging Face directory, read lazily from safetensors.

    Only the requested layer's four tensors are in memory at any time. Tensors whose name contains
    ``vision`` (the vision tower of LLaVA-type models) are ignored, as are other towers of
    multi-tower checkpoints (multi-tower: Qwen2.5-Omni's audio tower and talker).
    """

    def __init__(self, directory: str | Path, label: str | None = None):
        from safetensors import SafetensorError, safe_open

        self.directory = Path(directory)
        self.label = label or self.directory.name
        self.geometry = _geometry_from_config(self.directory)
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            raise ModelLoadError(f"{self.directory} holds no .safetensors files")
        self._where: dict[tuple[int, str], tuple[Path, str]] = {}
        prefixes: set[str] = set()
        for path in files:
            try:
                with safe_open(str(path), framework="pt") as fh:
                    keys = list(fh.keys())
            except SafetensorError as exc:  # a half-written file
                raise safetensors_error(path, exc) from exc
            for key in keys:
                m = _LAYER_KEY.match(key)
                if m is None or _OTHER_TOWER.search(m["prefix"]):  # multi-tower
                    continue
                prefixes.add(m["prefix"])
                fused = m["proj"] == "qkv"  # Phi3: one tensor holds q, k and v
                for proj in ("q", "k", "v") if fused else (m["proj"],):
                    self._where[(int(m["layer"]), proj)] = (path, key)
        if len(prefixes) > 1:
            raise ModelLoadError(
                f"{self.directory}: attention weights under several prefixes {sorted(prefixes)}; "
                "cannot tell which is the language model."
            )
        missing = [
            (layer, p)
            for layer in range(self.geometry.n_layers)
            for p in PROJECTIONS
            if (layer, p) not in self._where
        ]
        if missing:
            raise ModelLoadError(
                f"{self.directory}: no q/k/v/o_proj weights for (layer, projection) {missing[:4]}"
            )

    def layer(self, index: int) -> dict[str, Tensor]:
        from safetensors import SafetensorError, safe_open

        out: dict[str, Tensor] = {}
        for p in PROJECTIONS:
            path, key = self._where[(index, p)]
            try:
                with safe_open(str(path), framework="pt") as fh:
                    tensor = fh.get_tensor(key)
            except SafetensorError as exc:  # e.g. cut short since it was opened
                raise safetensors_error(path, exc) from exc
            out[p] = self._split_fused(tensor, p, key) if ".qkv_proj." in key else tensor
        return out

    def _split_fused(self, qkv: Tensor, proj: str, key: str) -> Tensor:
        """The ``proj`` rows of a fused ``[H*d_head + 2*n_kv*d_head, d_model]`` qkv weight
        (Hugging Face Phi3's layout: query rows, then key rows, then value rows)."""
        g = self.geometry
        nq, nkv = g.n_heads * g.d_head, g.n_kv_heads * g.d_head
        if qkv.shape[0] != nq + 2 * nkv:
            raise ShapeMismatchError(
                key,
                (nq + 2 * nkv, g.d_model),
                tuple(qkv.shape),
                "A fused qkv_proj must stack the query, key and value rows of the config's "
                "num_attention_heads, num_key_value_heads and head_dim.",
            )
        start, size = {"q": (0, nq), "k": (nq, nkv), "v": (nq + nkv, nkv)}[proj]
        return qkv[start : start + size]


def _geometry_from_config(directory: Path) -> HeadGeometry:
    cfg = read_model_json(directory / "config.json")
    cfg = cfg.get("thinker_config") or cfg  # multi-tower: Qwen2.5-Omni's language model
    text = cfg.get("text_config") or cfg
    try:
        n_heads = int(text["num_attention_heads"])
        d_model = int(text["hidden_size"])
        return HeadGeometry(
            n_layers=int(text["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(text.get("num_key_value_heads") or n_heads),
            d_head=int(text.get("head_dim") or d_model // n_heads),
            d_model=d_model,
        )
    except KeyError as exc:
        raise ModelLoadError(f"{directory / 'config.json'} lacks {exc}") from exc


def open_weights(model: ModelLike) -> AttentionWeightSource:
    """A layer-by-layer weight reader for a bridge, a HF directory (lazy), or any loadable name."""
    if isinstance(model, (str, Path)):
        path = Path(model).expanduser()
        if path.is_dir() and any(path.glob("*.safetensors")):
            return SafetensorsWeights(path)
        from lineage_lens.models import load_model

        return BridgeWeights(load_model(model, device="cpu"), label=Path(str(model)).name)
    if hasattr(model, "blocks") and hasattr(model, "cfg"):
        return BridgeWeights(model)
    if hasattr(model, "layer") and hasattr(model, "geometry"):
        return model  # already a source
    raise ConfigError(
        f"cannot read attention weights from {type(model).__name__}; pass a TransformerBridge, "
        "a HF directory or a model name"
    )


# --------------------------------------------------------------------------------------------
# Per-layer drift
# --------------------------------------------------------------------------------------------


def _heads(w: dict[str, Tensor], g: HeadGeometry) -> dict[str, np.ndarray]:
    """Per-head float64 numpy arrays: q [H, dh, dm], k/v [n_kv, dh, dm], o [H, dm, dh].

    (The arithmetic runs in numpy: on a CPU shared with other processes, torch's thread pool
    made these small float64 operations ~10x slower.)"""
    H, K, dh, dm = g.n_heads, g.n_kv_heads, g.d_head, g.d_model
    expected = {"q": (H * dh, dm), "k": (K * dh, dm), "v": (K * dh, dm), "o": (dm, H * dh)}
    for name, shape in expected.items():
        if tuple(w[name].shape) != shape:
            raise ShapeMismatchError(f"{name}_proj weight", shape, tuple(w[name].shape))
    f = {k: v.detach().to(device="cpu", dtype=torch.float64).numpy() for k, v in w.items()}
    heads_out = "(head d_head) d_model -> head d_head d_model"  # q/k/v rows are head-major
    return {
        "q": rearrange(f["q"], heads_out, head=H),
        "k": rearrange(f["k"], heads_out, head=K),
        "v": rearrange(f["v"], heads_out, head=K),
        "o": np.ascontiguousarray(
            rearrange(f["o"], "d_model (head d_head) -> head d_model d_head", head=H)
        ),
    }


def _rel_cos(a: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relative Frobenius change and cosine over all but the first axis."""
    dims = tuple(range(1, a.ndim))
    na = np.sqrt((a * a).sum(dims))
    nd = np.sqrt((d * d).sum(dims))
    diff = d - a
    rel = np.sqrt((diff * diff).sum(dims)) / na
    cos = (a * d).sum(dims) / (na * nd)
    return rel, cos


def _lowrank_rel_cos(
    a1: np.ndarray, b1: np.ndarray, a2: np.ndarray, b2: np.ndarray
) -> tuple[Float[np.ndarray, " head"], Float[np.ndarray, " head"]]:
    """Drift of ``M = A B^T`` per head from factors ``A, B`` of shape ``[head, r, d_model]``.

    (Factors are passed transposed, rows = rank.) Uses ``<A1 B1^T, A2 B2^T>_F =
    sum((A1^T A2) * (B1^T B2))`` with the small ``r x r`` Gram matrices only.
    """

    def gram(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return x @ y.transpose(0, 2, 1)

    n11 = (gram(a1, a1) * gram(b1, b1)).sum((1, 2))
    n22 = (gram(a2, a2) * gram(b2, b2)).sum((1, 2))
    n12 = (gram(a1, a2) * gram(b1, b2)).sum((1, 2))
    diff = np.maximum(n11 + n22 - 2 * n12, 0.0)
    rel = np.sqrt(diff) / np.sqrt(n11)
    cos = n12 / (np.sqrt(n11) * np.sqrt(n22))
    return rel, cos


def layer_drift(
    ancestor: dict[str, Tensor], descendant: dict[str, Tensor], geometry: HeadGeometry
) -> dict[str, np.ndarray]:
    """Drift quantities of one layer (see :class:`WeightDrift` for the keys)."""
    A = _heads(ancestor, geometry)
    D = _heads(descendant, geometry)
    kv_of_head = np.arange(geometry.n_heads) // (geometry.n_heads // geometry.n_kv_heads)
    out: dict[str, np.ndarray] = {}
    for p in PROJECTIONS:
        rel, cos = _rel_cos(A[p], D[p])
        if p in ("k", "v"):
            out[f"{p}_rel_kv"], out[f"{p}_cos_kv"] = rel, cos
            rel, cos = rel[kv_of_head], cos[kv_of_head]
        out[f"{p}_rel"], out[f"{p}_cos"] = rel, cos
        whole_a = A[p].reshape(-1)
        out[f"{p}_layer_rel"] = np.asarray(
            np.linalg.norm(D[p].reshape(-1) - whole_a) / np.linalg.norm(whole_a)
        )
    # QK_h = W_Q_h^T W_K_g : factors (rows = d_head) W_Q_h and W_K_g.
    k_a, k_d = A["k"][kv_of_head], D["k"][kv_of_head]
    rel, cos = _lowrank_rel_cos(A["q"], k_a, D["q"], k_d)
    out["qk_rel"], out["qk_cos"] = rel, cos
    # OV_h = W_O_h W_V_g : factors W_O_h^T [dh, dm] and W_V_g [dh, dm].
    v_a, v_d = A["v"][kv_of_head], D["v"][kv_of_head]
    rel, cos = _lowrank_rel_cos(A["o"].transpose(0, 2, 1), v_a, D["o"].transpose(0, 2, 1), v_d)
    out["ov_rel"], out["ov_cos"] = rel, cos
    return out


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@dataclass(repr=False)
class WeightDrift(HeadMap):
    """Per-head weight drift from an ancestor to a descendant (see :func:`weight_drift`).

    Attributes:
        heads: ``{q,k,v,o,qk,ov}_{rel,cos}`` -> ``[L, H]`` arrays per query head (``rel``:
            ``||W_desc - W_anc||_F / ||W_anc||_F``; ``cos``: cosine similarity). K and V values of a
            query head are those of the kv head it reads.
        kv_heads: ``{k,v}_{rel,cos}_kv`` -> ``[L, n_kv_heads]`` arrays.
        layers: ``{q,k,v,o}_layer_rel`` -> ``[L]`` relative change of each whole projection.
        geometry: of both models; ancestor, descendant: their labels.
    """

    heads: dict[str, Float[np.ndarray, "layer head"]]
    kv_heads: dict[str, Float[np.ndarray, "layer kv_head"]]
    layers: dict[str, Float[np.ndarray, " layer"]]
    geometry: HeadGeometry
    ancestor: str = ""
    descendant: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    DEFAULT_METRIC = "qk_rel"

    @property
    def shape(self) -> tuple[int, int]:
        return self.geometry.shape

    def head_maps(self) -> dict[str, Float[np.ndarray, "layer head"]]:
        """Every per-query-head quantity (``heads``)."""
        return self.heads

    def get(self, name: str = "qk_rel") -> np.ndarray:
        """One array by name (any key of ``heads``, ``kv_heads`` or ``layers``)."""
        for d in (self.heads, self.kv_heads, self.layers):
            if name in d:
                return d[name]
        raise ConfigError(
            f"unknown drift quantity {name!r}; available: "
            f"{sorted([*self.heads, *self.kv_heads, *self.layers])}"
        )

    def layer_frame(self) -> pd.DataFrame:
        """One row per layer: per-layer means over heads of every quantity (``mean_*``) and the
        whole-matrix relative change of each projection (``*_layer_rel``)."""
        frame = pd.DataFrame({"layer": np.arange(self.shape[0])})
        for k, v in self.heads.items():
            frame[f"mean_{k}"] = v.mean(axis=1)
        for k, v in self.layers.items():
            frame[k] = v
        return frame

    def changed_heads(self, tol: float = 0.0, name: str = "qk_rel") -> list[tuple[int, int]]:
        """``(layer, head)`` pairs whose ``name`` exceeds ``tol``."""
        return [(int(a), int(b)) for a, b in zip(*np.nonzero(self.get(name) > tol), strict=True)]

    def summary(self) -> str:
        lf = self.layer_frame()
        return (
            f"WeightDrift {self.ancestor} -> {self.descendant} ({self.shape[0]}x{self.shape[1]} "
            f"heads): mean rel. change q={lf.mean_q_rel.mean():.3g} k={lf.mean_k_rel.mean():.3g} "
            f"v={lf.mean_v_rel.mean():.3g} o={lf.mean_o_rel.mean():.3g} "
            f"QK={lf.mean_qk_rel.mean():.3g} OV={lf.mean_ov_rel.mean():.3g}"
        )

    def _provenance(self) -> list[tuple[str, str]]:
        g = self.geometry
        return [
            ("ancestor", label(self.ancestor)),
            ("descendant", label(self.descendant)),
            ("kv heads", str(g.n_kv_heads)),
            ("d_head", str(g.d_head)),
        ]

    def _correlation_name(self) -> str:
        return f"weight drift {self.ancestor} -> {self.descendant}"

    # --- I/O
    def _npz_payload(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        meta = {
            "geometry": self.geometry.to_dict(),
            "ancestor": self.ancestor,
            "descendant": self.descendant,
            "meta": self.meta,
        }
        arrays = {f"heads__{k}": v for k, v in self.heads.items()}
        arrays |= {f"kv__{k}": v for k, v in self.kv_heads.items()}
        arrays |= {f"layers__{k}": v for k, v in self.layers.items()}
        return arrays, meta

    @classmethod
    def _from_npz(
        cls, arrays: dict[str, np.ndarray], meta: dict[str, Any], path: Path
    ) -> WeightDrift:
        parts: dict[str, dict[str, np.ndarray]] = {"heads": {}, "kv": {}, "layers": {}}
        for k, v in arrays.items():
            if "__" in k:
                group, name = k.split("__", 1)
                parts[group][name] = v
        return cls(
            parts["heads"],
            parts["kv"],
            parts["layers"],
            HeadGeometry(**meta["geometry"]),
            meta.get("ancestor", ""),
            meta.get("descendant", ""),
            meta.get("meta", {}),
        )

    # --- plots
    def plot(
        self, quantity: str = "rel", *, whole_matrix: bool = False, ax: Axes | None = None
    ) -> Axes:
        """Layer-wise lines for W_Q, W_K, W_V, W_O (and QK/OV), as in the paper's Fig. 2.

        ``quantity="rel"`` plots the normalized Frobenius change, ``"cos"`` the cosine similarity;
        per-layer means over heads, or the whole-matrix change with ``whole_matrix=True``.
        """
        import matplotlib.pyplot as plt

        if quantity not in ("rel", "cos"):
            raise ConfigError(f"quantity must be 'rel' or 'cos', got {quantity!r}")
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        x = np.arange(self.shape[0])
        if whole_matrix:
            if quantity != "rel":
                raise ConfigError("whole_matrix=True is available for quantity='rel' only")
            for p in PROJECTIONS:
                ax.plot(x, self.layers[f"{p}_layer_rel"], marker="o", ms=3, label=f"W_{p.upper()}")
        else:
            for p in PROJECTIONS + CIRCUITS:
                ax.plot(
                    x,
                    self.heads[f"{p}_{quantity}"].mean(axis=1),
                    marker="o",
                    ms=3,
                    ls="--" if p in CIRCUITS else "-",
                    label=p.upper() if p in CIRCUITS else f"W_{p.upper()}",
                )
        ax.set_xlabel("layer")
        ax.set_ylabel(
            "normalized Frobenius norm ||ΔW||/||W||" if quantity == "rel" else "cosine similarity"
        )
        ax.set_title(f"{self.ancestor} → {self.descendant}")
        ax.legend(fontsize="small", ncol=2)
        return ax

    def heatmap(self, name: str | None = "qk_rel", **kwargs: Any) -> Axes:
        """Layer x head heatmap of one per-head (or per-kv-head) quantity; ``ax``, ``cmap``,
        ``title``, ``vmin``, ``vmax`` as in :meth:`HeadMap.heatmap`."""
        return super().heatmap(name, **kwargs)

    def _heatmap_values(self, metric: str) -> Float[np.ndarray, "layer head"]:
        arr = self.get(metric)
        if arr.ndim != 2:
            raise ConfigError(f"{metric!r} is not a per-head quantity")
        return arr

    def _title(self, metric: str) -> str:
        return f"{metric}: {self.ancestor} → {self.descendant}"

    def _heatmap_style(self, metric: str, values: np.ndarray) -> dict[str, Any]:
        return {"cmap": "magma"}


def _iter_layers(source: AttentionWeightSource, n: int, desc: str) -> Iterator[int]:
    return iter(tqdm(range(n), desc=desc, unit="layer", leave=False))


def weight_drift(ancestor: ModelLike, descendant: ModelLike) -> WeightDrift:
    """Per-head weight drift from ``ancestor`` to ``descendant``, one layer at a time.

    Args:
        ancestor, descendant: loaded ``TransformerBridge`` objects (a LLaVA-type descendant is
            compared through its language-model blocks), local HF directories (read lazily from
            safetensors), or any name :func:`lineage_lens.models.load_model` accepts.

    Returns:
        a :class:`WeightDrift` with ``[L, H]`` arrays of relative Frobenius change and cosine
        similarity for W_Q, W_K, W_V, W_O, and for each head's QK and OV circuits.

    Raises:
        ShapeMismatchError: the two models' language-model geometries differ (both are named).
    """
    anc = open_weights(ancestor)
    dsc = open_weights(descendant)
    if anc.geometry != dsc.geometry:
        raise ShapeMismatchError(
            f"geometry of ancestor {anc.label!r} vs descendant {dsc.label!r}",
            anc.geometry.to_dict(),
            dsc.geometry.to_dict(),
            "Weight drift compares models of the same language-model geometry (layers, heads, "
            "kv heads, d_head, d_model).",
        )
    g = anc.geometry
    if g.n_heads % g.n_kv_heads:
        raise ShapeMismatchError("n_heads vs n_kv_heads", "n_heads divisible by n_kv_heads", g)
    per_layer: list[dict[str, np.ndarray]] = []
    for layer in _iter_layers(anc, g.n_layers, f"Weight drift {anc.label} -> {dsc.label}"):
        per_layer.append(layer_drift(anc.layer(layer), dsc.layer(layer), g))
    stacked = {k: np.stack([d[k] for d in per_layer]) for k in per_layer[0]}
    return WeightDrift(
        heads={k: stacked[k] for k in HEAD_KEYS},
        kv_heads={k: stacked[k] for k in KV_KEYS},
        layers={k: stacked[k] for k in LAYER_KEYS},
        geometry=g,
        ancestor=anc.label,
        descendant=dsc.label,
        meta={"rope": "ignored in the QK circuit", "dtype": "float64"},
    )
