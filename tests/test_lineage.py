"""Score inheritance: correlations with CIs and p-values, top-k overlap, matrices, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from lineage_lens.errors import ConfigError, ShapeMismatchError
from lineage_lens.lineage import (
    ScoreComparison,
    ScoreMatrix,
    compare_many,
    compare_scores,
    layerwise_correlations,
    published_cross_dataset_scores,
    published_fig1_table,
    topk_overlap,
)
from lineage_lens.scores import TruthScores, published_scores_dir

FAST = dict(n_resamples=200, n_permutations=200)


@pytest.fixture(scope="module")
def set_d():
    return published_cross_dataset_scores("d")


def test_published_set_d_correlations_match_scipy(set_d):
    vic, llava, mistral = set_d["Vicuna-7B"], set_d["LLaVA-1.5-7B"], set_d["Mistral-7B"]
    related = compare_scores(vic, llava, **FAST)
    unrelated = compare_scores(vic, mistral, **FAST)
    x, y = vic.accuracy.ravel(), llava.accuracy.ravel()
    assert related.pearson.r == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    assert related.spearman.r == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert related.name_a == "Vicuna-7B" and related.shape == (32, 32)
    for est in (related.pearson, related.spearman, unrelated.pearson):
        assert est.ci_low < est.r < est.ci_high and est.n == 1024
    # the paper's claim: family members correlate, the unrelated model does not (much)
    assert related.pearson.r > unrelated.pearson.r + 0.3
    assert related.pearson.p_permutation == pytest.approx(2 / (FAST["n_permutations"] + 1))
    assert related.pearson.ci_low > unrelated.pearson.ci_high


def test_permutation_p_value_is_not_small_for_independent_scores():
    rng = np.random.default_rng(1)
    a, b = rng.random((8, 8)), rng.random((8, 8))
    c = compare_scores(a, b, seed=3, **FAST)
    # a head-shuffle null p-value and the t-based one agree roughly on independent data
    assert c.pearson.p_permutation > 0.05
    assert abs(c.pearson.p_permutation - c.pearson.p_parametric) < 0.15
    same = compare_scores(a, a, **FAST)
    assert same.pearson.r == pytest.approx(1.0) and same.spearman.r == pytest.approx(1.0)


def test_topk_overlap_by_hand():
    a = np.array([9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    b = np.array([9.0, 0, 7, 1, 2, 8, 3, 4, 5, 6])  # top-3 of b: heads 0, 5, 2
    tab = topk_overlap(a, b, ks=(1, 3)).set_index("k")
    assert list(tab.index) == [1, 3]
    with pytest.raises(ConfigError, match="top-k size 20"):  # k=20 > 10 heads: an error
        topk_overlap(a, b, ks=(1, 3, 20))
    assert tab.loc[1, "overlap"] == 1 and tab.loc[3, "overlap"] == 2  # heads 0 and 2
    assert tab.loc[3, "jaccard"] == pytest.approx(2 / 4)
    assert tab.loc[3, "expected"] == pytest.approx(9 / 10)
    assert tab.loc[3, "p_value"] == pytest.approx(stats.hypergeom.sf(1, 10, 3, 3))


def test_layerwise_matches_per_layer_scipy():
    rng = np.random.default_rng(2)
    a, b = rng.random((3, 6)), rng.random((3, 6))
    lw = layerwise_correlations(a, b)
    for layer in range(3):
        assert lw.loc[layer, "pearson"] == pytest.approx(stats.pearsonr(a[layer], b[layer])[0])
        assert lw.loc[layer, "spearman"] == pytest.approx(stats.spearmanr(a[layer], b[layer])[0])


def test_shape_mismatch_and_nonfinite():
    with pytest.raises(ShapeMismatchError):
        compare_scores(np.zeros((2, 4)), np.zeros((4, 2)))
    rng = np.random.default_rng(0)
    a, b = rng.random((4, 4)), rng.random((4, 4))
    a[0, 0] = np.nan
    c = compare_scores(a, b, **FAST)
    assert c.pearson.n == 15


def test_compare_many_matrix_plot_and_io(set_d, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    sub = {k: set_d[k] for k in ("Vicuna-7B", "LLaVA-1.5-7B", "Mistral-7B")}
    res = compare_many(sub, reference="Vicuna-7B", ks=(10,), **FAST)
    mat = res.matrix("pearson")
    assert list(mat.index) == list(sub) and np.allclose(np.diag(mat), 1.0)
    np.testing.assert_allclose(mat.to_numpy(), mat.to_numpy().T)
    assert mat.loc["Vicuna-7B", "LLaVA-1.5-7B"] == res.get("LLaVA-1.5-7B", "Vicuna-7B").pearson.r
    bars = res.against()
    assert list(bars["model"]) == ["LLaVA-1.5-7B", "Mistral-7B"]
    ax_m, ax_b = res.plot()
    assert ax_m.images and len(ax_b.patches) == 2
    back = ScoreMatrix.load(res.save(tmp_path / "m.json"))
    assert back.matrix("spearman").equals(res.matrix("spearman"))
    one = res.get("Vicuna-7B", "Mistral-7B")
    again = ScoreComparison.load(one.save(tmp_path / "c.json"))
    assert again.to_frame().equals(one.to_frame()) and again.topk.equals(one.topk)
    assert one.plot().get_lines() and "Pearson" in one.to_frame().to_string().title()


def test_fig1_table_rows():
    table = published_fig1_table(sets=("d",), **FAST)
    assert list(table["model"]) == ["LLaVA-1.5-7B", "LLaVA-NeXT-7B", "Mistral-7B"]
    lo, hi = table.loc[0, "pearson_ci"]
    assert lo < table.loc[0, "pearson"] < hi


def test_cli_compare_reads_npy_csv_npz(tmp_path):
    from lineage_lens.cli import app

    root = published_scores_dir()
    npz = TruthScores.from_npy(root / "llama2-7b_halueval_292.npy").save(tmp_path / "llama2.npz")
    csv = root / "cross_dataset" / "vicuna_cross_dataset_probing_set_d_cv5__vicuna.csv"
    args = ["compare", str(root / "vicuna-7b_halueval_292.npy"), str(npz), str(csv)]
    args += ["--n-resamples", "100", "--n-permutations", "100"]
    runner = CliRunner()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "Pearson r" in res.output and "vicuna-7b_halueval_292 vs llama2" in res.output
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert len(payload["pairs"]) == 3
    r = payload["pearson"]["llama2"]["vicuna-7b_halueval_292"]
    x = np.load(root / "vicuna-7b_halueval_292.npy").ravel()
    y = np.load(root / "llama2-7b_halueval_292.npy").ravel()
    assert r == pytest.approx(stats.pearsonr(x, y).statistic)
    bad = runner.invoke(app, ["compare", str(csv)])
    assert bad.exit_code != 0
