"""RobustSpectralDetector: kernel twin, combinable passes, quality floors, clean data, errors."""

import itertools
import json
import pickle

import numpy as np
import pytest
from sklearn.covariance import MinCovDet
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine
from sklearn.metrics import roc_auc_score

import naive
from conftest import field_test_arrays, fit_in_parts, heavy_tailed_table, plant_backdoor, recall_precision
from poisonguard.detectors import EnsembleDetector, SpectralSignatureDetector, base
from poisonguard.detectors.robust_spectral import (
    NORM_EDGES,
    RobustSpectralDetector,
    _robust_mean_cov,
    first_gap_threshold,
    que_norm,
)

# Near-collinear breast_cancer pairs (radius / perimeter / area, |r| > 0.9): a trigger sets
# one to its 90th and the other to its 10th percentile, each in-distribution, jointly impossible.
COLLINEAR_PAIRS = [(20, 23), (20, 22), (10, 13)]


def que_norm_naive(X, codes, median, inv_scale, clip, center, basis, location, inv_spread):
    """Numpy twin of ``que_norm``: (||basis[c]^T (standardised row - center[c])|| - location[c]) * inv_spread[c]."""
    Z = naive.standardize_clip(X, median, inv_scale, clip)
    out = np.full(len(X), np.nan)
    known = codes >= 0
    c = codes[known]
    projected = np.einsum("ijk,ij->ik", basis[c], Z[known] - center[c])
    out[known] = (np.sqrt((projected**2).sum(axis=1)) - location[c]) * inv_spread[c]
    return out


def _synthetic(seed, n=12000, d=20, n_heavy=4, n_classes=4):
    """Correlated Gaussian classes, features 0 and 1 correlated at 0.9, plus heavy-tailed features."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    A = rng.normal(size=(d, d)) / np.sqrt(d)
    L = np.linalg.cholesky(A @ A.T + 0.2 * np.eye(d))
    X = rng.normal(size=(n, d)) @ L.T + 0.8 * rng.normal(size=(n_classes, d))[y]
    X[:, 1] = 0.9 * X[:, 0] + np.sqrt(1 - 0.81) * X[:, 0].std() * rng.normal(size=n)
    X[:, d - n_heavy:] = 3 * rng.standard_t(2.5, (n, n_heavy)) + rng.lognormal(0, 1, (n, n_heavy)) + 0.5 * y[:, None]
    return X, y


def _joint_trigger(X, y, features, fraction, seed):
    """Dirty-label backdoor 0 -> 1: ``features`` set to their 90th / 10th percentiles."""
    values = np.array([np.quantile(X[:, features[0]], 0.9), np.quantile(X[:, features[1]], 0.1)])
    return plant_backdoor(X, y, source=0, target=1, features=list(features), values=values, fraction=fraction,
                          rng=np.random.default_rng(seed))


# -- the kernel and its numpy twin ----------------------------------------------------------
@pytest.mark.parametrize("n,d,k,K", [(0, 3, 2, 2), (1, 1, 1, 1), (7, 5, 3, 1), (300, 12, 6, 4)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_que_norm_matches_numpy(n, d, k, K, dtype):
    rng = np.random.default_rng(n + d)
    X = (rng.standard_t(2, size=(n, d)) * rng.uniform(0.1, 100, d) + rng.uniform(-1e3, 1e3, d)).astype(dtype)
    median, inv_scale = rng.normal(size=d) * 10, rng.uniform(0.01, 2.0, d)
    codes = rng.integers(-1, K, n).astype(np.int64)
    center, basis = rng.normal(size=(K, d)), rng.normal(size=(K, d, k))
    location, inv_spread = rng.normal(size=K), rng.uniform(0.5, 3.0, K)
    got = que_norm(X, codes, median, inv_scale, 4.0, center, basis, location, inv_spread, np.empty(n))
    want = que_norm_naive(X.astype(np.float64), codes, median, inv_scale, 4.0, center, basis, location, inv_spread)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    assert np.isnan(got[codes < 0]).all() and np.isfinite(got[codes >= 0]).all()


# -- combinable passes ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def cancer_trigger():
    X, y = load_breast_cancer(return_X_y=True)
    return _joint_trigger(X, y, COLLINEAR_PAIRS[0], 0.03, seed=0)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3)))[::2])
def test_statistics_merged_in_any_order_give_the_one_pass_model(cancer_trigger, order):
    X, y, _ = cancer_trigger
    det = RobustSpectralDetector()
    ids = np.arange(len(X))
    rng = np.random.default_rng(4)
    shuffled = rng.permutation(len(X))
    parts = np.split(shuffled, [150, 420])
    split = fit_in_parts(det, X, y, ids, parts, order)
    one = fit_in_parts(det, X, y, ids, [np.arange(len(X))], [0])
    np.testing.assert_array_equal(split.counts, one.counts)
    np.testing.assert_allclose(split.center, one.center, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(split.basis, one.basis, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(split.location, one.location, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(split.thresholds, one.thresholds, rtol=1e-7)


def test_fit_is_independent_of_batch_size_and_row_order(cancer_trigger, monkeypatch):
    X, y, _ = cancer_trigger
    ids = np.arange(len(X))
    whole = RobustSpectralDetector().fit(X, y, row_ids=ids)
    monkeypatch.setattr(base, "CHUNK_ROWS", 97)
    perm = np.random.default_rng(1).permutation(len(X))
    chunked = RobustSpectralDetector().fit(X[perm], y[perm], row_ids=ids[perm])
    np.testing.assert_allclose(whole.suspicion(X, y), chunked.suspicion(X, y), rtol=1e-7, atol=1e-9)
    assert whole.thresholds_ == pytest.approx(chunked.thresholds_)
    assert whole.model_.counts.sum() == len(X)


# -- quality floors (default settings, no oracle) ---------------------------------------------
@pytest.mark.parametrize("seed,fraction", [(0, 0.03), (1, 0.03), (0, 0.15)])
def test_joint_trigger_backdoor_on_synthetic_data_is_found(seed, fraction):
    """Floor: 3% (and 15%) of a class, trigger on two correlated features -> recall >= 0.9 at precision >= 0.8.

    Known limit, measured over detector seeds 0-5: at 15% on data seed 1 the robust
    estimate takes the poison in for 2 of 6 samples (MCD prefers the trigger's point mass,
    whose determinant is small), and nothing is flagged; 3% is found for every sample.
    """
    X, y = _synthetic(seed)
    X2, y2, mask = _joint_trigger(X, y, (0, 1), fraction, seed)
    det = RobustSpectralDetector().fit(X2, y2)
    recall, precision = recall_precision(mask, det.predict(X2, y2) == -1)
    assert recall >= 0.9 and precision >= 0.8, (recall, precision)
    assert roc_auc_score(mask, det.suspicion(X2, y2)) > 0.99


@pytest.mark.parametrize("features", COLLINEAR_PAIRS)
def test_joint_trigger_backdoor_on_breast_cancer_is_found(features):
    """Floor on real data (3%); plain spectral ranks these rows near chance (ROC-AUC 0.64-0.80)."""
    X, y = load_breast_cancer(return_X_y=True)
    X2, y2, mask = _joint_trigger(X, y, features, 0.03, seed=0)
    det = RobustSpectralDetector().fit(X2, y2)
    recall, precision = recall_precision(mask, det.predict(X2, y2) == -1)
    assert recall >= 0.9 and precision >= 0.8, (recall, precision)
    assert roc_auc_score(mask, det.suspicion(X2, y2)) > 0.99


@pytest.mark.parametrize("features,fraction", [(COLLINEAR_PAIRS[0], 0.15), (COLLINEAR_PAIRS[1], 0.2)])
def test_large_poison_fraction_where_plain_spectral_finds_nothing(features, fraction):
    """15-20% of the class: the poison drags the plain mean / covariance, not the robust estimate.

    Measured: robust spectral recall 1.00, precision 0.98-1.00; spectral recall 0.00.
    """
    X, y = load_breast_cancer(return_X_y=True)
    X2, y2, mask = _joint_trigger(X, y, features, fraction, seed=0)
    robust = RobustSpectralDetector().fit(X2, y2)
    recall, precision = recall_precision(mask, robust.predict(X2, y2) == -1)
    assert recall >= 0.9 and precision >= 0.8, (recall, precision)
    plain = SpectralSignatureDetector().fit(X2, y2)
    plain_recall, _ = recall_precision(mask, plain.predict(X2, y2) == -1)
    assert plain_recall < 0.5
    assert roc_auc_score(mask, robust.suspicion(X2, y2)) > roc_auc_score(mask, plain.suspicion(X2, y2))


def test_heavy_tails_rank_the_poison_but_the_other_classes_tails_keep_it_uncut():
    """Three classes with t(2.5) features, 3% of one planted (205 rows). The QUE norm ranks the poison (ROC-AUC
    0.974-0.989 over detector seeds 0-5), and the gap rule cuts the class at z 7.0 (5.0% of its rows, the poison
    and as many of its own tail). The other classes' own tails reach there at 2.4%, and further out at no less than
    a fifth of the class's share: as the flights table's JFK long-haul flights do, a real subgroup three times as
    common in JFK as elsewhere (6.4% of JFK's clean rows, flagged while such cuts stood). So "auto" leaves the class
    uncut (before the other classes were asked: recall 1.00)."""
    X, y, mask, _ = heavy_tailed_table(0)
    det = RobustSpectralDetector().fit(X, y)
    facts = det.model_.summary()["1"]
    assert facts["threshold"] is None and facts["other_classes_beyond_cut"] > 0.01
    assert roc_auc_score(mask, det.suspicion(X, y)) > 0.97  # measured 0.974-0.989 over detector seeds 0-5


def test_robust_estimate_ignores_a_concentrated_cluster():
    """15% of rows share one jointly unusual value of two correlated features: the estimate keeps them out.

    Scikit-learn's FAST-MCD alone (30 random starts on 500 rows) keeps part of such a cluster
    in its support; the deterministic starts do not. (With heavier tails, t with 4 degrees of
    freedom, the 75% MCD objective itself prefers the cluster to the clean tails at 15%:
    ``support_fraction=0.6`` is then needed.)
    """
    rng = np.random.default_rng(0)
    Y = rng.standard_t(10, size=(2000, 12))
    Y[:, 1] = 0.9 * Y[:, 0] + 0.45 * Y[:, 1]
    cluster = rng.random(2000) < 0.15
    Y[cluster, :2] = [1.5, -1.5]
    mean, cov, kept = _robust_mean_cov(Y, Y[:500], 0.75, 0)
    inv = np.linalg.inv(cov)
    d2 = np.einsum("ij,jk,ik->i", Y - mean, inv, Y - mean)
    assert np.median(d2[cluster]) > 3 * np.median(d2[~cluster])  # measured: 4.0
    assert kept < 0.9
    fast_mcd = MinCovDet(support_fraction=0.75, random_state=0).fit(Y[:500])
    assert fast_mcd.raw_support_[cluster[:500]].mean() > 0.25  # measured: 0.59


# -- clean data ------------------------------------------------------------------------------
@pytest.mark.parametrize("loader", [load_breast_cancer, load_wine, load_iris, load_digits],
                         ids=["cancer", "wine", "iris", "digits"])
def test_clean_real_data_loses_under_one_percent(loader):
    """Acceptance floor. Measured: 0% on all four. Before the tail-gap test and the rows-per-dimension
    floor, real subgroups were cut: breast_cancer 1.4% (8 rows of a long clean tail), digits 3.8%."""
    X, y = loader(return_X_y=True)
    assert (RobustSpectralDetector().fit(X, y).predict(X, y) == -1).mean() < 0.01


@pytest.mark.parametrize("table", ["loans", "caravan", "credit", "cells", "diamonds", "flights"])
def test_clean_real_tables_lose_under_one_percent_through_the_decision_layer(table):
    """The field test's clean batches, this detector alone, as ``screen --detectors robust_spectral`` decides.
    Measured: at most 0.01%. Before the other classes were asked, caravan lost 17.4% (the robust covariance,
    fitted on the rows at the majority value of its zero-inflated columns, puts every other row past a gap),
    diamonds 7.5% and loans 1.6%; flights lost 2.1% (JFK's long-haul flights) when the other classes' share
    had to be under a half of the class's rather than a fifth."""
    X, y, ids, _ = field_test_arrays(table, "clean")
    det = EnsembleDetector(detectors=[RobustSpectralDetector()]).fit(X, y, row_ids=ids)
    assert det.screen(det.model_, X, y).flagged.mean() <= 0.01


def test_a_tail_every_class_holds_is_not_cut_and_a_planted_one_is():
    """Caravan's majority class: its rows off the mode of a zero-inflated column (18% of it) lie past a gap of QUE
    norms, and the other class, about its own robust centre, reaches that gap more often (0.27): not cut. Diamonds
    door3: the stamped rows are 10% of class Premium, and the other classes reach its cut at a share of 0.001: cut,
    with the poison beyond it."""
    X, y, ids, _ = field_test_arrays("caravan", "clean")
    facts = RobustSpectralDetector().fit(X, y, row_ids=ids).model_.summary()["No"]
    assert facts["other_classes_beyond_cut"] > 0.1 and facts["threshold"] is None
    X, y, ids, truth = field_test_arrays("diamonds", "door3")
    det = RobustSpectralDetector().fit(X, y, row_ids=ids)
    assert det.model_.summary()["Premium"]["other_classes_beyond_cut"] < 0.01
    recall, precision = recall_precision(truth, det.predict(X, y) == -1)
    assert recall >= 0.95 and precision >= 0.95


@pytest.mark.parametrize("case", ["door1", "door3", "jdoor3"])
def test_decision_layer_flags_the_backdoor_beyond_the_cut_of_a_real_table(case):
    """Diamonds' backdoors, this detector alone through the decision layer. The QUE norms' tail is heavy: the null
    fitted below the cut (shape 0.6) gave the stamped rows p = 0.002 and none was flagged (ROC-AUC 0.89-0.92);
    their conformal rank among the rows below the cut flags them. Measured: recall 1.00 / 1.00 / 0.98 at
    precision 1.00 / 0.99 / 0.99."""
    X, y, ids, truth = field_test_arrays("diamonds", case)
    det = EnsembleDetector(detectors=[RobustSpectralDetector()]).fit(X, y, row_ids=ids)
    recall, precision = recall_precision(truth, det.screen(det.model_, X, y).flagged)
    assert recall >= 0.9 and precision >= 0.9, (recall, precision)


def test_tail_gap_test_ignores_a_spread_tail_of_clean_norms():
    """breast_cancer's clean class 1 has 8 rows beyond a gap from norm x1.00 to x1.30 (statistic 2.1 < 3)."""
    X, y = load_breast_cancer(return_X_y=True)
    assert RobustSpectralDetector(min_tail_gap=0.0).fit(X, y).thresholds_[1] < float("inf")
    assert RobustSpectralDetector().fit(X, y).thresholds_[1] == float("inf")


@pytest.mark.parametrize("seed", [0, 1])
def test_clean_synthetic_data_loses_under_one_percent(seed):
    X, y = _synthetic(seed + 10)
    assert (RobustSpectralDetector().fit(X, y).predict(X, y) == -1).mean() < 0.01
    Xh, yh, _, _ = heavy_tailed_table(seed, n=30000, poison=False)
    assert (RobustSpectralDetector().fit(Xh, yh).predict(Xh, yh) == -1).mean() < 0.01
    Xg = np.random.default_rng(seed).normal(size=(10000, 8))
    yg = np.random.default_rng(seed).integers(0, 3, 10000)
    assert (RobustSpectralDetector().fit(Xg, yg).predict(Xg, yg) == -1).mean() < 0.01


# -- thresholds and options ------------------------------------------------------------------
def test_contamination_flags_that_share(cancer_trigger):
    X, y, mask = cancer_trigger
    flagged = RobustSpectralDetector(contamination=0.05).fit(X, y).predict(X, y) == -1
    assert 0.03 <= flagged.mean() <= 0.05
    assert recall_precision(mask, flagged)[0] >= 0.9


def test_first_gap_cuts_before_a_spread_cluster():
    counts = np.zeros(len(NORM_EDGES) + 1, dtype=np.int64)
    counts[1 + np.arange(90, 110)] = 50  # bulk around 1.0 (bins of 0.01)
    counts[1 + np.array([400, 401, 402, 900, 905, 910, 915, 2000, 2500])] = 3  # spread cluster with inner gaps
    cut = first_gap_threshold(NORM_EDGES, counts, 1.0, 0.1, z_min=3.0, min_gap=2.0, min_size=5, max_fraction=0.35)
    assert 3.0 < cut < 30.0  # between the bulk (z <= 1) and the cluster's first rows (z = 30)
    assert first_gap_threshold(NORM_EDGES, counts, 1.0, 0.1, z_min=3.0, min_gap=2.0, min_size=50,
                               max_fraction=0.35) == float("inf")


def test_alpha_limits_and_summary(cancer_trigger):
    X, y, mask = cancer_trigger
    for alpha in (0.0, float("inf")):
        det = RobustSpectralDetector(alpha=alpha).fit(X, y)
        assert roc_auc_score(mask, det.suspicion(X, y)) > 0.95
    model = RobustSpectralDetector(n_components=5).fit(X, y).model_
    summary = model.summary()
    json.dumps(summary)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).suspicion(X, y), model.suspicion(X, y))
    assert set(summary) == {"0", "1"}
    assert all(v["n_components"] <= 5 for v in summary.values())
    assert all(isinstance(v["rows"], int) for v in summary.values())


def test_estimator_api_and_unseen_classes(cancer_trigger):
    X, y, _ = cancer_trigger
    det = RobustSpectralDetector()
    assert det.fit(X, y) is det
    s = det.suspicion(X, y)
    np.testing.assert_array_equal(det.score_samples(X, y), -s)
    np.testing.assert_array_equal(det.predict(X, y), np.where(det.decision_function(X, y) < 0, -1, 1))
    other = np.full(3, 7)
    assert np.isnan(det.suspicion(X[:3], other)).all() and (det.predict(X[:3], other) == 1).all()


def test_tiny_and_degenerate_classes_do_not_crash():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    X[:, 2] = 7.0  # constant feature
    y = np.array([0] * 57 + [1, 2, 2])  # classes of one and two rows
    det = RobustSpectralDetector().fit(X, y)
    assert np.isfinite(det.suspicion(X, y)).all()
    assert np.isfinite(RobustSpectralDetector().fit(X).suspicion(X)).all()


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("params,match", [
    ({"contamination": 0.9}, "contamination"),
    ({"alpha": -1.0}, "alpha"),
    ({"n_components": 0}, "n_components"),
    ({"support_fraction": 0.3}, "support_fraction"),
    ({"ridge": -0.1}, "ridge"),
    ({"sample_size": 1}, "sample_size"),
    ({"mcd_size": 1}, "mcd_size"),
    ({"min_gap": 0.0}, "min_gap"),
])
def test_bad_parameters_are_rejected_at_fit(params, match):
    X, y = load_iris(return_X_y=True)
    with pytest.raises(ValueError, match=match):
        RobustSpectralDetector(**params).fit(X, y)


def test_mismatched_features_at_predict_are_rejected():
    X, y = load_iris(return_X_y=True)
    det = RobustSpectralDetector().fit(X, y)
    with pytest.raises(ValueError, match="features"):
        det.predict(X[:, :3], y)
