"""Numba kernels equal their naive numpy twins, including NaN/inf, tiny and degenerate inputs."""

import numpy as np
import pytest

from poisonguard.detectors import _kernels

import naive


def _inputs(n, d, k, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = (rng.standard_t(2, size=(n, d)) * rng.uniform(0.1, 100, d) + rng.uniform(-1e3, 1e3, d)).astype(dtype)
    median = rng.normal(size=d) * 10
    inv_scale = rng.uniform(0.01, 2.0, d)
    codes = rng.integers(-1, k, n).astype(np.int64)
    mean = rng.normal(size=(k, d))
    direction = rng.normal(size=(k, d))
    return X, median, inv_scale, codes, mean, direction


@pytest.mark.parametrize("n,d,k", [(0, 3, 2), (1, 1, 1), (7, 5, 1), (500, 12, 4)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_standardize_and_project_match_numpy(n, d, k, dtype):
    X, median, inv_scale, codes, mean, direction = _inputs(n, d, k, seed=n + d, dtype=dtype)
    got = _kernels.standardize_clip(X, median, inv_scale, 4.0, np.empty((n, d)))
    np.testing.assert_allclose(got, naive.standardize_clip(X.astype(np.float64), median, inv_scale, 4.0), rtol=1e-12, atol=1e-12)
    got_p = _kernels.project_standardized(X, codes, median, inv_scale, 4.0, mean, direction, np.empty(n))
    want_p = naive.project_standardized(X.astype(np.float64), codes, median, inv_scale, 4.0, mean, direction)
    np.testing.assert_allclose(got_p, want_p, rtol=1e-10, atol=1e-10)
    assert np.isnan(got_p[codes < 0]).all()
    location, inv_spread = np.linspace(-1, 1, k), np.linspace(0.5, 3, k)
    got_z = _kernels.robust_z(X, codes, median, inv_scale, 4.0, mean, direction, location, inv_spread, np.empty(n))
    want_z = naive.robust_z(X.astype(np.float64), codes, median, inv_scale, 4.0, mean, direction, location, inv_spread)
    np.testing.assert_allclose(got_z, want_z, rtol=1e-10, atol=1e-10)


def test_nan_and_inf_propagate_like_numpy():
    X = np.array([[np.nan, 1.0], [np.inf, 0.0], [-np.inf, 2.0], [1e300, -1e300]])
    median, inv_scale = np.zeros(2), np.ones(2)
    got = _kernels.standardize_clip(X, median, inv_scale, 3.0, np.empty_like(X))
    want = naive.standardize_clip(X, median, inv_scale, 3.0)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)])
    assert got[1, 0] == np.inf and got[2, 0] == -np.inf
    codes = np.zeros(4, dtype=np.int64)
    p = _kernels.project_standardized(X, codes, median, inv_scale, 3.0, np.zeros((1, 2)), np.ones((1, 2)), np.empty(4))
    q = naive.project_standardized(X, codes, median, inv_scale, 3.0, np.zeros((1, 2)), np.ones((1, 2)))
    np.testing.assert_array_equal(np.isnan(p), np.isnan(q))


def test_soft_clip_is_monotone_continuous_and_bounded_in_growth():
    v = np.linspace(-1e6, 1e6, 200001)
    out = np.array([_kernels.soft_clip(x, 3.0) for x in v[::1000]])
    assert np.all(np.diff(out) > 0)
    assert _kernels.soft_clip(3.0, 3.0) == 3.0 and abs(_kernels.soft_clip(3.0 + 1e-9, 3.0) - 3.0) < 1e-8
    assert _kernels.soft_clip(1e6, 3.0) < 3.0 + 14.0


def test_constant_feature_projects_to_zero():
    X = np.full((10, 3), 5.0)
    p = _kernels.project_standardized(X, np.zeros(10, dtype=np.int64), np.full(3, 5.0), np.ones(3), 6.0,
                                      np.zeros((1, 3)), np.ones((1, 3)), np.empty(10))
    assert np.all(p == 0.0)


@pytest.mark.parametrize("n,d,k", [(0, 3, 2), (1, 2, 1), (300, 6, 3)])
def test_grouped_standardisation_and_projection_bins_match_numpy(n, d, k):
    X, median, inv_scale, codes, mean, direction = _inputs(n, d, k, seed=7 + n)
    codes = np.abs(codes) % k  # every row of a known class here
    starts = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=k))]).astype(np.int64)
    shift = np.random.default_rng(0).normal(size=(k, d))
    got = _kernels.standardize_grouped(X, codes, starts, median, inv_scale, 5.0, shift, np.empty((n, d)))
    np.testing.assert_allclose(got, naive.standardize_grouped(X, codes, median, inv_scale, 5.0, shift), rtol=1e-12, atol=1e-12)

    inv_unit = np.linspace(0.5, 2.0, k)
    bins = _kernels.projection_bins(X, codes, median, inv_scale, 5.0, mean, direction, inv_unit, -20.0, 1.0, 40, np.empty(n, np.int64))
    counts = naive.histogram_from_bins(bins, codes, 40, k)
    want = naive.projection_histogram(X, codes, median, inv_scale, 5.0, mean, direction, inv_unit, -20.0, 1.0, 40, k)
    np.testing.assert_array_equal(counts, want)
    assert counts.sum() == n


def test_projection_bins_skip_unknown_classes():
    X = np.ones((4, 2))
    codes = np.array([-1, 0, -1, 0], dtype=np.int64)
    bins = _kernels.projection_bins(X, codes, np.zeros(2), np.ones(2), 6.0, np.zeros((1, 2)), np.ones((1, 2)), np.ones(1),
                                    -5.0, 1.0, 10, np.empty(4, np.int64))
    assert bins.tolist() == [-1, 8, -1, 8]  # projection 2.0 -> bin [2, 3); unknown classes get no bin


def _special_rows(d: int = 3) -> np.ndarray:
    """Rows with NaN, +inf and -inf in each position, and ordinary rows between them."""
    rows = [np.zeros(d), np.full(d, 2.5)]
    for v in (np.nan, np.inf, -np.inf):
        for j in range(d):
            row = np.linspace(-1.0, 1.0, d)
            row[j] = v
            rows.append(row)
    rows += [np.full(d, np.nan), np.full(d, np.inf), np.array([np.inf, -np.inf] + [0.0] * (d - 2))]
    return np.array(rows)


@pytest.mark.parametrize("empty", [False, True])
def test_projection_bins_put_nan_and_inf_where_numpy_does(empty):
    """A NaN projection once made int(NaN) an index and corrupted the heap; NaN now counts as overflow."""
    X = _special_rows()[:0] if empty else _special_rows()
    n, d, k, n_bins = len(X), X.shape[1], 2, 20
    codes = (np.arange(n) % k).astype(np.int64)
    median, inv_scale = np.zeros(d), np.ones(d)
    mean, direction, inv_unit = np.zeros((k, d)), np.ones((k, d)), np.array([1.0, 0.5])
    bins = _kernels.projection_bins(X, codes, median, inv_scale, 6.0, mean, direction, inv_unit, -10.0, 1.0, n_bins,
                                    np.empty(n, np.int64))
    counts = naive.histogram_from_bins(bins, codes, n_bins, k)
    want = naive.projection_histogram(X, codes, median, inv_scale, 6.0, mean, direction, inv_unit, -10.0, 1.0, n_bins, k)
    np.testing.assert_array_equal(counts, want)
    assert counts.sum() == n
    if not empty:
        p = naive.project_standardized(X, codes, median, inv_scale, 6.0, mean, direction)
        assert np.isnan(p).any() and np.isinf(p).any()  # the cases are really there
        assert counts[:, -1].sum() >= np.isnan(p).sum()


def test_robust_z_and_grouped_standardisation_with_nan_and_inf_match_numpy():
    X = _special_rows()
    n, d, k = len(X), X.shape[1], 2
    codes = (np.arange(n) % k).astype(np.int64)
    median, inv_scale = np.full(d, 0.5), np.full(d, 2.0)
    mean, direction = np.zeros((k, d)), np.ones((k, d))
    location, inv_spread = np.array([0.1, -0.2]), np.array([1.5, 0.5])
    got = _kernels.robust_z(X, codes, median, inv_scale, 4.0, mean, direction, location, inv_spread, np.empty(n))
    want = naive.robust_z(X, codes, median, inv_scale, 4.0, mean, direction, location, inv_spread)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-12)
    starts = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=k))]).astype(np.int64)
    shift = np.ones((k, d))
    got_g = _kernels.standardize_grouped(X, codes, starts, median, inv_scale, 4.0, shift, np.empty((n, d)))
    want_g = naive.standardize_grouped(X, codes, median, inv_scale, 4.0, shift)
    np.testing.assert_array_equal(np.isnan(got_g), np.isnan(want_g))
    np.testing.assert_array_equal(got_g[~np.isnan(got_g)], want_g[~np.isnan(want_g)])
    empty = np.zeros((0, d))
    assert _kernels.robust_z(empty, codes[:0], median, inv_scale, 4.0, mean, direction, location, inv_spread, np.empty(0)).shape == (0,)
