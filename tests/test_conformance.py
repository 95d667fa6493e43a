"""Every detector is a scikit-learn estimator: scikit-learn's own checks, plus the
label-aware versions of the checks it cannot run on class-conditional detectors.

Expected failures, and why
--------------------------
Detectors score a row *within its class*. Fitted on several classes, ``predict(X)``
without the rows' labels has no meaning, so it raises a ``ConfigError`` ("y (class labels)
is required"). scikit-learn's checks fit with a classification ``y`` and then call
``predict(X)`` / ``decision_function(X)`` without it; those checks are listed in
:data:`NEEDS_LABELS_AT_PREDICT`, and :func:`test_label_aware_invariances` runs what they
check (pickling, dtypes, idempotent fit, sample-order and subset invariance, no change to
``__dict__`` by predict) with the labels passed.

``contamination="auto"`` (the default of every detector) flags only what its rule finds
outlying; the random blobs of ``check_outliers_train`` / ``check_outliers_fit_predict``
have nothing outlying, so no row is predicted -1 where the checks expect some.

``requires_labels`` detectors (k-NN label consistency, influence, and an ensemble holding
one) refuse ``y=None`` at fit, which those two outlier checks use. The list is exact:
an expected failure that passes fails the test (``xfail_strict``).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from poisonguard.detectors import DETECTORS, EnsembleDetector

NEEDS_LABELS_AT_PREDICT = {
    name: "fitted on several classes, predict needs the rows' labels (run with labels in test_label_aware_invariances)"
    for name in (
        "check_estimators_dtypes",
        "check_dtype_object",
        "check_estimators_pickle",
        "check_f_contiguous_array_estimator",
        "check_classifier_data_not_an_array",
        "check_methods_sample_order_invariance",
        "check_methods_subset_invariance",
        "check_dict_unchanged",
        "check_fit_idempotent",
    )
}
AUTO_FLAGS_NOTHING_RANDOM = {
    name: "contamination='auto' flags only outlying structure; random blobs have none, so nothing is -1"
    for name in ("check_outliers_train", "check_outliers_fit_predict")
}
def all_detectors():
    """Every detector that fits without trusted rows (scikit-learn's checks have none to give; ``novelty``,
    which refuses to fit without them, has its invariances tested in test_novelty.py), and their ensemble."""
    standalone = [cls for cls in DETECTORS.values() if not cls.requires_reference]
    return [*(cls() for cls in standalone), EnsembleDetector(detectors=[cls() for cls in standalone])]


def expected_failures(estimator) -> dict:
    expected = {**NEEDS_LABELS_AT_PREDICT, **AUTO_FLAGS_NOTHING_RANDOM}
    if estimator.requires_labels:
        expected.update({name: "the detector needs class labels (requires_labels); the check fits without y"
                         for name in AUTO_FLAGS_NOTHING_RANDOM})
    return expected


@parametrize_with_checks(all_detectors(), expected_failed_checks=expected_failures, xfail_strict=True)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def _blobs(seed: int, n: int = 240, d: int = 5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, d)) + 3.0 * y[:, None]
    X[:8] += 6.0  # a small planted cluster in class y[:8]'s rows
    y[:8] = 2
    return X, y


@pytest.mark.parametrize("detector", all_detectors(), ids=lambda d: d.name)
def test_label_aware_invariances(detector):
    X, y = _blobs(0)
    det = clone(detector).fit(X, y)
    expected = det.suspicion(X, y)
    decision = det.decision_function(X, y)

    # pickling round trip
    again = pickle.loads(pickle.dumps(det))
    np.testing.assert_allclose(again.suspicion(X, y), expected)
    # Fortran-ordered input scores the same; float32 input to its precision, except where
    # rounding reorders a tie (k-NN: which row is the k-th neighbour), for at most 1% of rows
    np.testing.assert_allclose(det.suspicion(np.asfortranarray(X), y), expected, rtol=1e-10, atol=1e-10)
    close = np.isclose(det.suspicion(X.astype(np.float32), y), expected, rtol=1e-3, atol=1e-3)
    assert close.mean() >= 0.99
    # sample order and subsets: a row's score depends on the model and the row only
    order = np.random.default_rng(1).permutation(len(X))
    np.testing.assert_allclose(det.suspicion(X[order], y[order]), expected[order])
    np.testing.assert_allclose(det.suspicion(X[50:90], y[50:90]), expected[50:90])
    # predict does not change the estimator
    state = {k: v for k, v in det.__dict__.items()}
    det.predict(X, y)
    assert det.__dict__.keys() == state.keys() and all(det.__dict__[k] is v for k, v in state.items())
    # fitting twice gives the same model
    np.testing.assert_allclose(clone(detector).fit(X, y).decision_function(X, y), decision)
    # wrong number of features and non-finite input are refused with a message
    with pytest.raises(ValueError, match="features"):
        det.suspicion(X[:, :-1], y)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        det.suspicion(bad, y)
    # unseen classes are never flagged
    assert (det.predict(X[:5], np.full(5, 99)) == 1).all()
