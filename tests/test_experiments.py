from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from experiments import heatmaps, inheritance
from experiments.run_all import run_all
from lineage_lens.lineage import compare_scores, published_cross_dataset_scores


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiments")
    return run_all("test", figures=root / "figures", report_dir=root / "run"), root


def test_test_profile_regenerates_figures_and_report(report):
    path, root = report
    for name in ("inheritance_published", "heatmaps_published"):
        assert (root / "figures" / f"{name}.png").stat().st_size > 1000
        assert (root / "figures" / f"{name}.csv").is_file()
    text = path.read_text()
    assert "Fig. 1" in text and "inheritance_published.png" in text


def test_inheritance_csv_holds_the_plotted_correlations(report):
    _, root = report
    frame = pd.read_csv(root / "figures" / "inheritance_published.csv")
    assert set(frame["set"]) == set("abcde")
    row = frame[(frame["set"] == "d") & (frame["model"] == "LLaVA-1.5-7B")].iloc[0]
    scores = published_cross_dataset_scores("d")
    expected = compare_scores(
        scores["Vicuna-7B"], scores["LLaVA-1.5-7B"], n_resamples=200, n_permutations=200
    )
    assert row["pearson"] == pytest.approx(expected.pearson.r, abs=1e-6)
    assert row["pearson_ci_low"] <= row["pearson"] <= row["pearson_ci_high"]


def test_heatmap_csv_holds_the_published_arrays(report):
    _, root = report
    frame = pd.read_csv(root / "figures" / "heatmaps_published.csv")
    for name, scores in heatmaps.published_lineage().items():
        sub = frame[frame["model"] == name].sort_values(["layer", "head"])
        np.testing.assert_allclose(
            sub["accuracy"].to_numpy().reshape(32, 32), scores.accuracy, atol=1e-6
        )


def test_modules_expose_run():
    assert callable(inheritance.run) and callable(heatmaps.run)
