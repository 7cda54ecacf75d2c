"""The shared face of result objects: short reprs everywhere, and the per-head map methods
(``to_frame``, ``heatmap``, ``save``/``load``, ``comparison_values`` for ``compare_scores``) of
every :class:`HeadMap`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes

from lineage_lens.activations import HeadActivations
from lineage_lens.attention import EvidenceAttention
from lineage_lens.baselines import ProbeBaselines
from lineage_lens.cka import HeadCKA
from lineage_lens.errors import ConfigError, DataError
from lineage_lens.evals import EvalResult
from lineage_lens.evals.chair import ChairResult
from lineage_lens.gating import TruthGate
from lineage_lens.headmap import HeadMap
from lineage_lens.kvcache import KVCacheCheck
from lineage_lens.lineage import ScoreComparison, compare_many, compare_scores
from lineage_lens.models import HeadGeometry
from lineage_lens.probing import HeadProbe
from lineage_lens.scores import TruthScores
from lineage_lens.stats import METRIC_NAMES
from lineage_lens.weights import HEAD_KEYS, KV_KEYS, LAYER_KEYS, WeightDrift

matplotlib.use("Agg")

SHAPE = (3, 4)
LONG = "org/" + "a-very-long-model-name-" * 12  # a label far longer than a repr field


def _scores(seed: int = 0, model: str = "m") -> TruthScores:
    rng = np.random.default_rng(seed)
    metrics = {m: rng.uniform(0.4, 1.0, SHAPE) for m in ("accuracy", "f1", "auroc")}
    return TruthScores(metrics, model=model, dataset="d", n=40, folds=5, solver="newton", seed=0)


def _acts(n: int = 40, d_head: int = 4, model: str = "m") -> HeadActivations:
    rng = np.random.default_rng(1)
    return HeadActivations(
        acts=rng.normal(size=(n, *SHAPE, d_head)).astype(np.float16),
        labels=np.arange(n) % 2,
        source_ids=[f"row{i // 2}" for i in range(n)],
        model=model,
        token_positions=np.full(n, 7),
        n_tokens=np.full(n, 9),
    )


def _cka() -> HeadCKA:
    values = np.random.default_rng(2).uniform(0, 1, SHAPE)
    return HeadCKA(values, True, 40, LONG, "b", {"note": "x"})


def _attention() -> EvidenceAttention:
    rng = np.random.default_rng(3)
    per = rng.uniform(0, 1, (6, *SHAPE))
    image = rng.uniform(0, 1, (6, *SHAPE, 4))
    return EvidenceAttention(
        per.mean(0), per, np.full(6, 5), np.arange(6), image, (2, 2), "absolute", "m"
    )


def _drift() -> WeightDrift:
    rng = np.random.default_rng(4)
    geometry = HeadGeometry(SHAPE[0], SHAPE[1], 2, 8, 32)
    return WeightDrift(
        heads={k: rng.uniform(0, 1, SHAPE) for k in HEAD_KEYS},
        kv_heads={k: rng.uniform(0, 1, (SHAPE[0], 2)) for k in KV_KEYS},
        layers={k: rng.uniform(0, 1, SHAPE[0]) for k in LAYER_KEYS},
        geometry=geometry,
        ancestor="anc",
        descendant="desc",
    )


def _gate() -> TruthGate:
    return TruthGate(_scores(), alpha=3.0, layers=[1, 2], clamp_min=0.5)


def _comparison() -> ScoreComparison:
    return compare_scores(_scores(0, "a"), _scores(1, "b"), n_resamples=20, n_permutations=20)


def _eval_result() -> EvalResult:
    row = {k: 0.5 for k in METRIC_NAMES} | {"n": 10, "n_unparsed": 0, "accuracy_all": 0.5}
    metrics = pd.DataFrame([row | {"split": "random"}, row | {"split": "popular"}])
    examples = pd.DataFrame({"key": range(20), "text": ["yes " * 400] * 20})
    return EvalResult("pope", metrics, examples, {"model": LONG, "mode": "logprob"})


def _chair() -> ChairResult:
    metrics = {"chair_s": 0.3, "chair_i": 0.1, "recall": 0.7, "mean_length": 40.0, "n": 500.0}
    frame = pd.DataFrame({"image_id": range(500), "caption": ["a cat on a mat " * 20] * 500})
    return ChairResult(metrics | {"n_skipped": 0.0}, frame, [], {"vocabulary": "coco"})


def _probe() -> HeadProbe:
    return HeadProbe(folds=2, solver="newton").fit(_acts(), dataset="d")


HEAD_MAPS: dict[str, Callable[[], HeadMap]] = {
    "TruthScores": _scores,
    "TruthGate": _gate,
    "HeadCKA": _cka,
    "EvidenceAttention": _attention,
    "WeightDrift": _drift,
}

RESULTS: dict[str, Callable[[], Any]] = {
    **HEAD_MAPS,
    "HeadActivations": lambda: _acts(n=584, d_head=128, model=LONG),
    "HeadProbe": _probe,
    "HeadProbe (unfitted)": HeadProbe,
    "ProbeBaselines": lambda: ProbeBaselines(_scores(1), _scores(2), _scores(3), model=LONG),
    "ScoreComparison": _comparison,
    "CorrelationEstimate": lambda: _comparison().pearson,
    "ScoreMatrix": lambda: compare_many(
        {f"model-{i}-{LONG}": _scores(i) for i in range(5)}, n_resamples=20, n_permutations=20
    ),
    "EvalResult": _eval_result,
    "ChairResult": _chair,
    "KVCacheCheck": lambda: KVCacheCheck(False, 3.2e-2, 1e-3, "transformers 4, torch 2"),
}


@pytest.mark.parametrize("name", list(RESULTS))
def test_repr_is_short_and_says_what_it_is(name):
    obj = RESULTS[name]()
    text = repr(obj)
    assert len(text) < 500, text
    assert text.startswith(type(obj).__name__ + "("), text
    assert "\n" not in text and "array(" not in text and "0x" not in text, text
    shape = getattr(obj, "shape", None)
    if shape is not None:
        assert str(tuple(shape)) in text, text
    page = obj._repr_html_()
    assert isinstance(page, str) and page.startswith("<table>") and type(obj).__name__ in page
    assert len(page) < 4000


def test_repr_names_model_n_and_metric():
    text = repr(_scores())
    for part in ("model='m'", "dataset='d'", "n=40", "shape=(3, 4)", "mean accuracy=", "max "):
        assert part in text, text
    acts = repr(_acts(n=584, d_head=128))
    assert "n=584" in acts and "292 truthful / 292 hallucinated" in acts, acts
    assert "model_a='org/a-very" in repr(_cka()) and "..." in repr(_cka())
    assert "pearson=" in repr(_comparison()) and "CI=[" in repr(_comparison().pearson)
    assert "verdict=MISMATCH" in repr(RESULTS["KVCacheCheck"]())
    assert "fitted=no" in repr(HeadProbe()) and "n=40" in repr(_probe())


@pytest.mark.parametrize("name", list(HEAD_MAPS))
def test_head_map_face(name, tmp_path):
    obj = HEAD_MAPS[name]()
    maps = obj.head_maps()
    n_layers, n_heads = obj.shape
    assert (n_layers, n_heads) == SHAPE and obj.n_layers * obj.n_heads == 12
    assert obj.default_metric in maps and all(v.shape == SHAPE for v in maps.values())
    # to_frame: long, one row per head, layer-major
    frame = obj.to_frame()
    assert len(frame) == 12 and list(frame.columns[:2]) == ["layer", "head"]
    assert frame["layer"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for metric, values in maps.items():
        np.testing.assert_array_equal(frame[metric].to_numpy(), values.ravel())
    # save / load: same file back, same frame
    back = type(obj).load(obj.save(tmp_path / "map.npz"))
    pd.testing.assert_frame_equal(back.to_frame(), frame)
    # heatmap: an Axes with a colorbar, layer on y, head on x
    for metric in (None, *list(maps)[:2]):
        ax = obj.heatmap(metric)
        assert isinstance(ax, Axes) and ax.get_xlabel() == "head" and ax.get_ylabel() == "layer"
        image = ax.get_images()[0]
        assert image.get_array().shape == SHAPE and len(ax.figure.axes) == 2
        matplotlib.pyplot.close(ax.figure)
    with pytest.raises(ConfigError, match="available"):
        obj.heatmap("no-such-metric")
    # compare_scores of the map: its default metric against scores, under the map's label
    values, name = obj.comparison_values()
    np.testing.assert_array_equal(values, maps[obj.default_metric])
    if isinstance(obj, TruthScores):  # scores name the metrics they have
        with pytest.raises(ConfigError, match="available"):
            obj.comparison_values("no-such-metric")
    else:  # other maps fall back to their default metric
        np.testing.assert_array_equal(obj.comparison_values("no-such-metric")[0], values)
    comparison = compare_scores(obj, _scores(5), n_resamples=20, n_permutations=20)
    assert isinstance(comparison, ScoreComparison) and comparison.shape == SHAPE
    expected = compare_scores(
        maps[obj.default_metric], _scores(5), name_a=name, n_resamples=20, n_permutations=20
    )
    assert comparison.name_a == (name or "A") and comparison.name_b == expected.name_b
    assert (comparison.pearson, comparison.spearman) == (expected.pearson, expected.spearman)
    pd.testing.assert_frame_equal(comparison.layerwise, expected.layerwise)
    pd.testing.assert_frame_equal(comparison.topk, expected.topk)
    # top heads: the highest values of the default metric, best first
    best = obj.top_heads(3)
    values = maps[obj.default_metric]
    assert [values[h] for h in best] == sorted(values.ravel(), reverse=True)[:3]


@pytest.mark.parametrize("name", list(HEAD_MAPS))
def test_save_checks_suffix_and_load_rejects_damage(name, tmp_path):
    obj = HEAD_MAPS[name]()
    with pytest.raises(ConfigError, match=r"\.npz"):
        obj.save(tmp_path / "map.json")
    path = obj.save(tmp_path / "map.npz")
    raw = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cut.npz"):
        type(obj).load(tmp_path / "cut.npz")
    np.save(tmp_path / "plain.npy", np.zeros(SHAPE))
    (tmp_path / "plain.npy").rename(tmp_path / "plain.npz")
    with pytest.raises(DataError, match="not a"):
        type(obj).load(tmp_path / "plain.npz")
    np.savez(tmp_path / "other.npz", something=np.zeros(3), meta=np.array("{}"))
    with pytest.raises(DataError):
        type(obj).load(tmp_path / "other.npz")


def test_existing_file_layouts_still_load(tmp_path):
    """The layouts written before the shared base (hand-written here) load unchanged."""

    def meta(d: dict) -> np.ndarray:
        return np.array(json.dumps(d))

    values = np.arange(12.0).reshape(SHAPE) / 12
    np.savez(tmp_path / "s.npz", metric_accuracy=values, meta=meta({"model": "m", "n": 3}))
    scores = TruthScores.load(tmp_path / "s.npz")
    assert scores.model == "m" and scores.n == 3
    np.testing.assert_array_equal(scores.accuracy, values)
    np.savez(tmp_path / "bare.npz", metric_accuracy=values)  # no meta entry: still scores
    np.testing.assert_array_equal(TruthScores.load(tmp_path / "bare.npz").accuracy, values)

    cka_meta = {"debiased": False, "n": 9, "model_a": "a", "model_b": "b", "meta": {}}
    np.savez(tmp_path / "c.npz", values=values, meta=meta(cka_meta))
    cka = HeadCKA.load(tmp_path / "c.npz")
    assert (cka.debiased, cka.n, cka.model_a) == (False, 9, "a")

    per = np.stack([values, values])
    np.savez(
        tmp_path / "a.npz",
        values=values,
        per_example=per,
        n_evidence_tokens=np.array([3, 4]),
        query_positions=np.array([5, 6]),
        meta=meta({"image_grid": None, "kind": "relative", "model": "m", "meta": {}}),
    )
    att = EvidenceAttention.load(tmp_path / "a.npz")
    assert len(att) == 2 and att.kind == "relative" and att.image_attention is None

    drift = _drift()
    arrays = {f"heads__{k}": v for k, v in drift.heads.items()}
    arrays |= {f"kv__{k}": v for k, v in drift.kv_heads.items()}
    arrays |= {f"layers__{k}": v for k, v in drift.layers.items()}
    geometry = {"geometry": drift.geometry.to_dict(), "ancestor": "x", "descendant": "y"}
    np.savez(tmp_path / "w.npz", **arrays, meta=meta(geometry))
    back = WeightDrift.load(tmp_path / "w.npz")
    assert back.ancestor == "x" and back.geometry == drift.geometry
    np.testing.assert_array_equal(back.get("k_rel_kv"), drift.get("k_rel_kv"))


def test_gate_round_trip_rebuilds_the_same_gates(tmp_path):
    gate = TruthGate(_scores(), alpha=4.5, norm="minmax", metric="auroc", layers=[0, 2])
    back = TruthGate.load(gate.save(tmp_path / "gate.npz"))
    assert back.params() == gate.params() and back.scores.model == "m"
    np.testing.assert_array_equal(back.gates.numpy(), gate.gates.numpy())
    np.savez(tmp_path / "scores.npz", metric_accuracy=np.zeros(SHAPE))
    with pytest.raises(DataError, match="TruthGate.save"):
        TruthGate.load(tmp_path / "scores.npz")


def test_heatmap_styles_and_arguments():
    gate = _gate()
    ax = gate.heatmap(cmap="magma", title="t")
    assert ax.get_title() == "t" and ax.get_images()[0].get_cmap().name == "magma"
    norm = gate.heatmap().get_images()[0].norm
    assert type(norm).__name__ == "TwoSlopeNorm" and norm.vcenter == 1.0
    assert _cka().heatmap().get_images()[0].get_clim() == (0, 1)
    assert _scores().heatmap("f1", vmin=0.2, vmax=0.8).get_images()[0].get_clim() == (0.2, 0.8)
    assert "k_rel_kv" in _drift().heatmap("k_rel_kv").get_title()
    with pytest.raises(ConfigError, match="per-head"):
        _drift().heatmap("q_layer_rel")
    matplotlib.pyplot.close("all")
