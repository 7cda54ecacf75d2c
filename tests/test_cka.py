"""CKA: agreement with the Gram-matrix definition, invariances, chunked memmap input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from lineage_lens.cka import HeadCKA, head_cka, linear_cka
from lineage_lens.errors import ShapeMismatchError


def _gram_cka(x: np.ndarray, y: np.ndarray, debiased: bool) -> float:
    """Reference: CKA from explicit n x n Gram matrices (Kornblith 2019; Song 2012)."""
    n = len(x)
    k, g = x @ x.T, y @ y.T
    if not debiased:
        h = np.eye(n) - 1.0 / n
        kc, lc = h @ k @ h, h @ g @ h
        return float((kc * lc).sum() / np.sqrt((kc * kc).sum() * (lc * lc).sum()))

    def hsic_u(k, g):
        k, g = k.copy(), g.copy()
        np.fill_diagonal(k, 0)
        np.fill_diagonal(g, 0)
        one = np.ones(n)
        return (
            (k * g).sum()
            + (one @ k @ one) * (one @ g @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ k @ g @ one)
        ) / (n * (n - 3))

    return float(hsic_u(k, g) / np.sqrt(hsic_u(k, k) * hsic_u(g, g)))


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)) + 4.0  # non-zero mean on purpose
    y = x @ rng.normal(size=(6, 5)) + rng.normal(size=(60, 5)) - 2.0
    return x, y


@pytest.mark.parametrize("debiased", [False, True])
def test_matches_gram_definition_with_chunks(xy, debiased):
    x, y = xy
    ref = _gram_cka(x, y, debiased)
    for chunk in (7, 60, 1000):
        assert linear_cka(x, y, debiased=debiased, chunk_size=chunk) == pytest.approx(
            ref, abs=1e-10
        )


@pytest.mark.parametrize("debiased", [False, True])
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(xy, debiased):
    x, _ = xy
    q = ortho_group.rvs(6, random_state=1)
    assert linear_cka(x, x @ q, debiased=debiased) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, 3.7 * x, debiased=debiased) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, -0.2 * (x @ q) + 5.0, debiased=debiased) == pytest.approx(1.0, abs=1e-10)


def test_independent_features_debiased_near_zero_biased_not():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 32))
    y = rng.normal(size=(400, 32))
    debiased = linear_cka(x, y, debiased=True)
    biased = linear_cka(x, y)
    assert abs(debiased) < 0.02
    assert biased > 0.05  # the plain estimator is biased upwards when d is not << n


def test_head_cka_on_memmap_in_chunks(tmp_path):
    rng = np.random.default_rng(5)
    n, L, H, d = 80, 2, 3, 4
    a = rng.normal(size=(n, L, H, d)).astype(np.float32)
    b = rng.normal(size=(n, L, H, d)).astype(np.float32)
    q = ortho_group.rvs(d, random_state=2)
    b[:, 1, 2] = 2.0 * a[:, 1, 2] @ q  # head (1, 2) of B is a rotated, scaled copy of A's
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    mm_a = np.load(tmp_path / "a.npy", mmap_mode="r")
    res = head_cka(mm_a, tmp_path / "b.npy", debiased=True, chunk_size=9, progress=False)
    assert res.shape == (L, H) and res.n == n
    assert res.values[1, 2] == pytest.approx(1.0, abs=1e-6)
    others = np.delete(res.values.ravel(), 1 * H + 2)
    assert np.all(np.abs(others) < 0.2)
    for layer in range(L):
        for head in range(H):
            ref = _gram_cka(a[:, layer, head].astype(np.float64), b[:, layer, head], True)
            assert res.values[layer, head] == pytest.approx(ref, abs=1e-8)


def test_head_cka_errors_and_io(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 2, 2, 3))
    with pytest.raises(ShapeMismatchError):
        head_cka(a, a[:10])
    with pytest.raises(ShapeMismatchError):
        head_cka(a, a[:, :1])
    res = head_cka(a, a + 1.0, progress=False)
    np.testing.assert_allclose(res.values, 1.0, atol=1e-12)
    back = HeadCKA.load(res.save(tmp_path / "cka.npz"))
    np.testing.assert_array_equal(back.values, res.values)
    assert back.debiased is False and back.n == 20
    assert list(res.to_frame().columns) == ["layer", "head", "cka"]
    assert res.heatmap().images and res.plot().get_lines()
