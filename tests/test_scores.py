from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from lineage_lens.errors import ConfigError, DataError, ShapeMismatchError
from lineage_lens.scores import TruthScores, load_scores, published_scores_dir

matplotlib.use("Agg")


def make_scores(seed: int = 0, shape: tuple[int, int] = (3, 4)) -> TruthScores:
    rng = np.random.default_rng(seed)
    metrics = {
        m: rng.uniform(0.4, 1.0, shape) for m in ("accuracy", "precision", "recall", "f1", "auroc")
    }
    return TruthScores(metrics, model="m", dataset="d", n=10, folds=5, solver="newton", seed=seed)


def test_npz_round_trip_is_exact(tmp_path):
    scores = make_scores()
    back = TruthScores.load(scores.save(tmp_path / "s.npz"))
    assert (back.model, back.dataset, back.n, back.folds, back.solver, back.seed) == (
        "m",
        "d",
        10,
        5,
        "newton",
        0,
    )
    for metric in scores.metrics:
        np.testing.assert_array_equal(back.get(metric), scores.get(metric))


def test_csv_round_trip_is_exact(tmp_path):
    scores = make_scores()
    back = TruthScores.from_csv(scores.to_csv(tmp_path / "cv5_head_metrics.csv"))
    for metric in scores.metrics:
        np.testing.assert_array_equal(back.get(metric), scores.get(metric))


def test_published_files_load_with_paper_shapes():
    root = published_scores_dir()
    npys = sorted(root.glob("*.npy"))
    assert len(npys) == 4
    for path in npys:
        assert load_scores(path).shape == (32, 32)
    csvs = sorted((root / "cross_dataset").glob("*.csv"))
    assert len(csvs) == 20
    scores = load_scores(csvs[0])
    assert scores.shape == (32, 32)
    assert set(scores.metrics) == {"accuracy", "precision", "recall", "f1"}


def test_top_k_order_frame_and_summary():
    scores = TruthScores({"accuracy": np.array([[0.5, 0.9], [0.9, 0.7]])})
    assert scores.top_k(3) == [(0, 1), (1, 0), (1, 1)]
    frame = scores.to_frame()
    assert list(frame.columns) == ["layer", "head", "accuracy", "rank"]
    assert frame.loc[(frame["layer"] == 1) & (frame["head"] == 1), "rank"].item() == 3
    assert "L0H1" in scores.summary(2)
    assert "<table" in scores._repr_html_()


def test_heatmap_returns_axes():
    ax = make_scores().heatmap()
    assert ax.get_xlabel() == "head" and ax.get_ylabel() == "layer"


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ShapeMismatchError, match=r"\(3, 4\).*\(2, 2\)"):
        TruthScores({"accuracy": np.zeros((3, 4)), "f1": np.zeros((2, 2))})
    with pytest.raises(ConfigError, match="available"):
        make_scores().get("mcc")
    with pytest.raises(ShapeMismatchError, match="same"):
        make_scores().check_shape((30, 9), "SmolLM2")
    bad = tmp_path / "bad.csv"
    bad.write_text("layer,head,acc\n0,0,0.5\n")
    with pytest.raises(DataError, match=r"bad\.csv:1: missing column"):
        TruthScores.from_csv(bad)
    with pytest.raises(DataError, match="not found"):
        load_scores(tmp_path / "none.npz")


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "s.npz"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        make_scores().save(target)
    assert list(tmp_path.iterdir()) == []
