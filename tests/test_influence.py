"""InfluenceDetector: kernels vs numpy twins, exact influence, combinable passes, quality floors, errors."""

import itertools
import json
import pickle

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from conftest import fit_in_parts, heavy_tailed_table, recall_precision
from naive import soft_clip
from poisonguard.detectors.influence import (
    GradientHessianSums,
    InfluenceDetector,
    reduced_gradients,
    standardize_softmax,
    sum_zero_basis,
)


# -- numpy twins of the kernels --------------------------------------------------------------
def naive_standardize_softmax(X, codes, median, inv_scale, clip, theta):
    Z = np.column_stack([soft_clip((X - median) * inv_scale, clip), np.ones(len(X))])
    logits = Z @ theta.T
    P = np.exp(logits - logits.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    loss = np.where(codes >= 0, -np.log(P[np.arange(len(X)), np.maximum(codes, 0)]), 0.0)
    return Z, P, loss


def naive_reduced_gradients(X, codes, median, inv_scale, clip, theta, basis, direction):
    Z, P, _ = naive_standardize_softmax(X, codes, median, inv_scale, clip, theta)
    R = P.copy()
    R[np.arange(len(X)), np.maximum(codes, 0)] -= 1.0
    S = R @ basis
    G = np.einsum("ia,ij->iaj", S, Z).reshape(len(X), S.shape[1] * Z.shape[1])
    known = codes >= 0
    G[~known] = 0.0
    influence = np.where(known, -(G @ direction), np.nan)
    residual = np.where(known, np.linalg.norm(R, axis=1), np.nan)
    return G, influence, residual


def _random_kernel_inputs(rng, n, d, K):
    X = rng.normal(0, 3, size=(n, d))
    codes = rng.integers(-1, K, n)
    median, inv_scale = rng.normal(size=d), rng.uniform(0.2, 2.0, d)
    theta = rng.normal(size=(K, d + 1))
    return X, codes, median, inv_scale, 2.0, theta


@pytest.mark.parametrize("n,d,K", [(0, 3, 2), (1, 1, 2), (7, 3, 3), (40, 5, 4)])
def test_kernels_match_numpy_twins(n, d, K):
    rng = np.random.default_rng(n + d + K)
    X, codes, median, inv_scale, clip, theta = _random_kernel_inputs(rng, n, d, K)
    Z, P, loss = np.empty((n, d + 1)), np.empty((n, K)), np.empty(n)
    standardize_softmax(X, codes, median, inv_scale, clip, theta, Z, P, loss)
    Zn, Pn, ln = naive_standardize_softmax(X, codes, median, inv_scale, clip, theta)
    np.testing.assert_allclose(Z, Zn, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(P, Pn, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(loss, ln, rtol=1e-10, atol=1e-12)
    basis = sum_zero_basis(K)
    direction = rng.normal(size=(K - 1) * (d + 1))
    G, influence, residual = np.empty((n, len(direction))), np.empty(n), np.empty(n)
    reduced_gradients(X, codes, median, inv_scale, clip, theta, basis, direction, G, influence, residual)
    Gn, infn, resn = naive_reduced_gradients(X, codes, median, inv_scale, clip, theta, basis, direction)
    np.testing.assert_allclose(G, Gn, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(influence, infn, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(residual, resn, rtol=1e-10, atol=1e-12)


def test_sum_zero_basis_is_orthonormal():
    for K in (1, 2, 3, 10):
        Q = sum_zero_basis(K)
        np.testing.assert_allclose(Q.T @ Q, np.eye(K - 1), atol=1e-12)
        np.testing.assert_allclose(Q.sum(axis=0), 0.0, atol=1e-12)


# -- the combinable statistic ------------------------------------------------------------------
def _naive_hessian(Z, P):
    return sum(np.kron(np.diag(p) - np.outer(p, p), np.outer(z, z)) for z, p in zip(Z, P))


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_gradient_hessian_sums_merge_in_any_order(order):
    rng = np.random.default_rng(3)
    X, codes, median, inv_scale, clip, theta = _random_kernel_inputs(rng, 90, 4, 3)
    Z, P, loss = naive_standardize_softmax(X, codes, median, inv_scale, clip, theta)
    parts = np.split(rng.permutation(90), [20, 55])
    stats = [GradientHessianSums(3, 4, True).add_batch(Z[p], P[p], codes[p], loss[p]) for p in parts]
    merged = stats[order[0]].merge(stats[order[1]]).merge(stats[order[2]])
    single = GradientHessianSums(3, 4, True).add_batch(Z, P, codes, loss)
    known = codes >= 0
    np.testing.assert_array_equal(merged.counts, np.bincount(codes[known], minlength=3))
    np.testing.assert_allclose(merged.hessian, single.hessian, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(merged.hessian, _naive_hessian(Z[known], P[known]), rtol=1e-10, atol=1e-10)
    R = P[known] - np.eye(3)[codes[known]]
    np.testing.assert_allclose(merged.gradient, R.T @ Z[known], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(merged.loss, single.loss, rtol=1e-12)


# -- data --------------------------------------------------------------------------------------
def flip_labels(y, rate, seed):
    """Flip ``rate`` of the labels to a uniformly drawn other class (seeded); returns y', mask."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    mask = rng.random(len(y)) < rate
    flipped = y.copy()
    for i in np.flatnonzero(mask):
        flipped[i] = rng.choice(classes[classes != y[i]])
    return flipped, mask


def gaussian_classes(seed, n=3000, K=5, d=10):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 2.0, (K, d))
    y = rng.integers(0, K, n)
    return means[y] + rng.normal(size=(n, d)), y


LOADERS = {
    "cancer": lambda: load_breast_cancer(return_X_y=True),
    "wine": lambda: load_wine(return_X_y=True),
    "gauss": lambda: gaussian_classes(0),
}


# -- exactness: the scores are the textbook influence at the full-data optimum -------------------
def _explicit(det, X, y, X_ref=None, y_ref=None):
    """Full softmax gradient / Hessian of the regularised risk at the fitted theta, in numpy."""
    m = det.model_
    codes = np.searchsorted(np.asarray(m.classes), y)
    Z, P, _ = naive_standardize_softmax(X, codes, m.median, m.inv_scale, m.clip, m.theta)
    K, d1 = m.theta.shape
    R = P - np.eye(K)[codes]
    G = np.einsum("ik,ij->ikj", R, Z).reshape(len(X), -1)  # full (K (d + 1)) gradients
    penalty = np.tile(np.r_[np.ones(d1 - 1), 0.0], K)
    H = _naive_hessian(Z, P) / len(X) + np.diag(det.alpha * penalty)
    risk_gradient = G.mean(axis=0) + det.alpha * penalty * m.theta.ravel()
    Hinv = np.linalg.pinv(H, rcond=1e-12, hermitian=True)  # singular along the softmax's redundant direction
    out = {"self": np.einsum("ij,jk,ik->i", G, Hinv, G), "risk_gradient": risk_gradient}
    if X_ref is not None:
        rc = np.searchsorted(np.asarray(m.classes), y_ref)
        Zr, Pr, _ = naive_standardize_softmax(X_ref, rc, m.median, m.inv_scale, m.clip, m.theta)
        g_ref = np.einsum("ik,ij->ikj", Pr - np.eye(K)[rc], Zr).reshape(len(X_ref), -1).mean(axis=0)
        out["reference"] = -G @ (Hinv @ g_ref)
    return out


def test_influence_is_exact_at_the_full_data_optimum():
    X, y = load_wine(return_X_y=True)
    Xa, Xr, y_clean, yr = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    ya, mask = flip_labels(y_clean, 0.1, 0)
    det = InfluenceDetector().fit(Xa, ya, X_reference=Xr, y_reference=yr)
    ref = _explicit(det, Xa, ya, Xr, yr)
    assert np.linalg.norm(ref["risk_gradient"]) < 1e-9
    np.testing.assert_allclose(det.model_.self_influence(Xa, ya), ref["self"], rtol=1e-6, atol=1e-9)
    # (the last Newton step moves theta after the last Hessian: a ~1e-5 relative difference)
    np.testing.assert_allclose(det.model_.reference_influence(Xa, ya), ref["reference"], rtol=1e-4, atol=1e-8)
    assert det.model_.uses_reference
    # the sign: up-weighting a flipped row raises the clean reference loss (positive = harmful)
    assert np.median(ref["reference"][mask]) > 0 > np.median(ref["reference"][~mask]) - 1e-12


def test_newton_passes_reach_the_optimum_from_a_small_sample():
    """theta_0 is fitted on 60 of ~1600 rows per class; each damped Newton pass shrinks the gradient."""
    X, y = gaussian_classes(0, n=8000)
    det = InfluenceDetector(sample_size=60, newton_steps=5).fit(X, y)
    norms = [det.model_.diagnostics[f"gradient_norm_{k}"] for k in range(5)]
    assert norms[0] > 1e-3 and all(b < a for a, b in zip(norms, norms[1:])) and norms[-1] < 1e-7, norms
    assert np.linalg.norm(_explicit(det, X, y)["risk_gradient"]) < 1e-8
    twice = InfluenceDetector(sample_size=60).fit(X, y)  # the default, two passes: close, not exact
    a, b = twice.model_.self_influence(X, y), det.model_.self_influence(X, y)
    # measured over detector seeds 0-5: median relative difference 0.040-0.055, rank correlation 1.00
    assert np.median(np.abs(a - b) / b) < 0.08 and spearmanr(a, b).statistic > 0.99


@pytest.mark.parametrize("seed", [0, 4])
def test_model_matches_scikit_learn_on_all_rows(seed):
    """Nearly separable data from a 250-row start: 3 damped steps can be 6e-2 away (seed 4), 6 reach 2e-6."""
    X, y = load_breast_cancer(return_X_y=True)
    det = InfluenceDetector(sample_size=250, newton_steps=6, seed=seed).fit(X, y)
    m = det.model_
    Z, P, _ = naive_standardize_softmax(X, y, m.median, m.inv_scale, m.clip, m.theta)
    lr = LogisticRegression(C=2.0 / (det.alpha * len(X)), tol=1e-10, max_iter=5000).fit(Z[:, :-1], y)
    np.testing.assert_allclose(P[:, 1], lr.predict_proba(Z[:, :-1])[:, 1], atol=1e-5)


# -- the pipeline-style driver ---------------------------------------------------------------------
@pytest.mark.parametrize("with_reference", [False, True])
def test_chunked_fit_equals_in_memory_fit(with_reference):
    X, y = gaussian_classes(1, n=2500)
    y2, _ = flip_labels(y, 0.1, 1)
    Xr, yr = gaussian_classes(1, n=3000)[0][2500:], gaussian_classes(1, n=3000)[1][2500:]
    reference = (Xr, yr) if with_reference else None
    kw = dict(X_reference=Xr, y_reference=yr) if with_reference else {}
    det = InfluenceDetector(sample_size=300)
    whole = det.fit(X, y2, **kw).model_
    ids = np.arange(len(X))
    rng = np.random.default_rng(2)
    for n_parts in (2, 7):
        order = rng.permutation(len(X))
        parts = [order[p] for p in np.array_split(np.arange(len(X)), n_parts)]
        model = fit_in_parts(InfluenceDetector(sample_size=300), X, y2, ids, parts, order=reversed(range(len(parts))), reference=reference)
        assert model.uses_reference == with_reference
        np.testing.assert_array_equal(model.counts, whole.counts)
        np.testing.assert_allclose(model.theta, whole.theta, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(model.suspicion(X, y2), whole.suspicion(X, y2), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(model.thresholds, whole.thresholds, rtol=1e-7)


def test_float32_rows_take_the_single_precision_path_with_the_same_result():
    X, y = load_breast_cancer(return_X_y=True)
    flipped, _ = flip_labels(y, 0.1, 0)
    a = InfluenceDetector().fit(X, flipped)
    b = InfluenceDetector().fit(X.astype(np.float32), flipped)
    sa, sb = a.suspicion(X, flipped), b.suspicion(X.astype(np.float32), flipped)
    assert np.median(np.abs(sa - sb)) < 1e-4 and np.abs(sa - sb).max() < 0.2
    np.testing.assert_array_equal(a.predict(X, flipped), b.predict(X.astype(np.float32), flipped))


def test_row_order_does_not_matter():
    X, y = load_wine(return_X_y=True)
    ids = np.arange(len(X))
    perm = np.random.default_rng(0).permutation(len(X))
    a = InfluenceDetector(sample_size=30).fit(X, y, row_ids=ids)
    b = InfluenceDetector(sample_size=30).fit(X[perm], y[perm], row_ids=ids[perm])
    np.testing.assert_allclose(a.suspicion(X, y), b.suspicion(X, y), rtol=1e-7, atol=1e-9)


# -- quality floors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LOADERS))
@pytest.mark.parametrize("seed", [0, 1])
def test_random_label_flips_are_ranked_first(name, seed):
    """Floor (the issue's): 10% random label flips -> ROC-AUC >= 0.9, with and without reference rows.

    Measured (seeds 0, 1), self-influence / with reference rows: cancer 0.97 / 0.98, wine
    0.97-0.99 / 0.99-1.00, gauss 1.00 / 1.00; precision of the flags >= 0.78 / 0.94.
    """
    X, y = LOADERS[name]()
    X_fit, X_ref, y_fit, y_ref = train_test_split(X, y, test_size=0.3, random_state=seed, stratify=y)
    flipped, mask = flip_labels(y_fit, 0.1, seed)
    alone = InfluenceDetector().fit(X_fit, flipped)
    assert roc_auc_score(mask, alone.suspicion(X_fit, flipped)) >= 0.9
    recall, precision = recall_precision(mask, alone.predict(X_fit, flipped) == -1)
    assert precision >= 0.75 or recall == 0.0
    if name == "gauss":
        assert recall >= 0.3
    ref = InfluenceDetector().fit(X_fit, flipped, X_reference=X_ref, y_reference=y_ref)
    assert ref.model_.uses_reference
    assert roc_auc_score(mask, ref.suspicion(X_fit, flipped)) >= 0.95
    recall, precision = recall_precision(mask, ref.predict(X_fit, flipped) == -1)
    assert recall >= 0.25 and precision >= 0.75, (recall, precision)


@pytest.mark.parametrize("loader", [load_breast_cancer, load_wine, load_iris, load_digits,
                                    lambda **k: gaussian_classes(5)], ids=["cancer", "wine", "iris", "digits", "gauss"])
def test_clean_data_loses_under_one_percent(loader):
    X, y = loader(return_X_y=True)
    assert (InfluenceDetector().fit(X, y).predict(X, y) == -1).mean() < 0.01


def test_clean_heavy_tailed_table_loses_under_one_percent():
    X, y, _, _ = heavy_tailed_table(0, poison=False)
    assert (InfluenceDetector().fit(X, y).predict(X, y) == -1).mean() < 0.01


def test_suspicion_is_in_robust_units():
    X, y = gaussian_classes(2)
    s = InfluenceDetector().fit(X, y).suspicion(X, y)
    for c in np.unique(y):
        z = s[y == c]
        assert abs(np.median(z)) < 0.05
        assert 1.4826 * np.median(np.abs(z - np.median(z))) <= 1.0 + 0.05


def test_contamination_flags_that_share():
    X, y = gaussian_classes(3)
    flipped, mask = flip_labels(y, 0.1, 3)
    flagged = InfluenceDetector(contamination=0.1).fit(X, flipped).predict(X, flipped) == -1
    assert 0.08 <= flagged.mean() <= 0.1
    assert (flagged & mask).sum() / mask.sum() >= 0.8


def test_calibration_on_reference_rows_meets_target_fpr():
    X, y = gaussian_classes(6, n=6000)
    flipped, mask = flip_labels(y, 0.1, 6)
    Xr, yr = gaussian_classes(6, n=9000)[0][6000:], gaussian_classes(6, n=9000)[1][6000:]
    det = InfluenceDetector().fit(X, flipped).calibrate(Xr, yr, target_fpr=0.02)
    assert (det.predict(Xr, yr) == -1).mean() <= 0.02
    assert len(set(det.thresholds_.values())) == 1
    assert recall_precision(mask, det.predict(X, flipped) == -1)[0] >= 0.8


def test_estimator_api_summary_and_pickle():
    X, y = load_wine(return_X_y=True)
    Xa, Xr, ya, yr = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    det = InfluenceDetector()
    assert det.fit(Xa, ya, X_reference=Xr, y_reference=yr) is det
    s = det.suspicion(Xa, ya)
    np.testing.assert_array_equal(det.score_samples(Xa, ya), -s)
    np.testing.assert_array_equal(det.predict(Xa, ya), np.where(det.decision_function(Xa, ya) < 0, -1, 1))
    summary = det.model_.summary()
    assert set(summary) == {"0", "1", "2"}
    assert summary["0"]["uses_reference"] == 1 and summary["0"]["reference_rows"] == len(Xr)
    json.dumps(summary)
    assert sum(v["rows"] for v in summary.values()) == len(Xa)
    clone = pickle.loads(pickle.dumps(det.model_))
    np.testing.assert_array_equal(clone.suspicion(Xa, ya), s)
    names = np.array(["a", "b", "c"], dtype=object)[ya]
    other = InfluenceDetector().fit(Xa, names)
    assert np.isnan(other.suspicion(Xa[:3], np.array(["zzz"] * 3, dtype=object))).all()
    assert (other.predict(Xa[:3], np.array(["zzz"] * 3, dtype=object)) == 1).all()


def test_single_class_and_tiny_classes_do_not_crash():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    X[:, 2] = 7.0  # constant feature
    one = InfluenceDetector().fit(X, np.zeros(60, dtype=int))
    assert np.isfinite(one.suspicion(X, np.zeros(60, dtype=int))).all()
    y = np.array([0] * 57 + [1, 2, 2])
    assert np.isfinite(InfluenceDetector().fit(X, y).suspicion(X, y)).all()


@pytest.mark.parametrize("params,match", [
    ({"contamination": 0.9}, "contamination"),
    ({"alpha": 0.0}, "alpha"),
    ({"clip": -1.0}, "clip"),
    ({"sample_size": 1}, "sample_size"),
    ({"damping": -1.0}, "damping"),
    ({"min_scale": -0.1}, "min_scale"),
    ({"z_max": 0.0}, "z_max"),
    ({"max_hessian_dim": 10}, "max_hessian_dim"),
])
def test_bad_parameters_are_rejected_at_fit(params, match, cancer):
    X, y = cancer
    with pytest.raises(ValueError, match=match):
        InfluenceDetector(**params).fit(X, y)


def test_bad_inputs_are_rejected(cancer):
    X, y = cancer
    with pytest.raises(ValueError, match="labels"):
        InfluenceDetector().fit(X, None)
    with pytest.raises(ValueError, match="labels"):
        InfluenceDetector().fit(X, y[:-1])
    det = InfluenceDetector().fit(X, y)
    with pytest.raises(ValueError, match="features"):
        det.predict(X[:, :-1], y)
