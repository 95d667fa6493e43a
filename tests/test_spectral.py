"""SpectralSignatureDetector: detection-quality floors, invariances and the estimator API."""

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine
from sklearn.metrics import roc_auc_score

from conftest import field_test_batch, heavy_tailed_table, plant_backdoor, plant_field_backdoor, real_table, recall_precision
from poisonguard.detectors import EnsembleDetector, SpectralSignatureDetector
from poisonguard.detectors.base import label_codes
from poisonguard.detectors.thresholds import cluster_threshold


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_feature_trigger_backdoor_on_real_data_is_found(cancer, seed):
    """Floor: 5% of one class is a feature-trigger backdoor -> recall >= 0.9, precision >= 0.8."""
    X, y = cancer
    rng = np.random.default_rng(seed)
    features = rng.choice(X.shape[1], 3, replace=False)
    X2, y2, mask = plant_backdoor(X, y, source=0, target=1, features=features, values=X[:, features].max(axis=0),
                                  fraction=0.05, rng=rng)
    flagged = SpectralSignatureDetector().fit(X2, y2).predict(X2, y2) == -1
    recall, precision = recall_precision(mask, flagged)
    assert recall >= 0.9 and precision >= 0.8, (recall, precision)


@pytest.mark.parametrize("loader", [load_breast_cancer, load_wine, load_iris, load_digits],
                         ids=["cancer", "wine", "iris", "digits"])
def test_clean_real_data_loses_under_one_percent(loader):
    """Acceptance floor. Measured: 0% on all four (digits was 2.3% before the tail-gap test and
    the rows-per-dimension floor: handwriting-style subgroups of classes 4, 6 and 7 were cut)."""
    X, y = loader(return_X_y=True)
    flagged = SpectralSignatureDetector().fit(X, y).predict(X, y) == -1
    assert flagged.mean() < 0.01


@pytest.mark.parametrize("seed", [0, 1])
def test_clean_gaussian_data_loses_under_one_percent(seed):
    X = np.random.default_rng(seed).normal(size=(10000, 8))
    y = np.random.default_rng(seed).integers(0, 3, 10000)
    assert (SpectralSignatureDetector().fit(X, y).predict(X, y) == -1).mean() < 0.01


def _tail(far):
    """Histogram on a z grid (location 0, scale 1): a Gaussian bulk, a heavy tail to z = 14, rows at ``far``."""
    edges = np.linspace(-64.0, 64.0, 6401)
    z = np.concatenate([np.random.default_rng(0).normal(size=5000), np.linspace(3.0, 14.0, 40), far])
    counts = np.bincount(np.searchsorted(edges, z, side="right"), minlength=len(edges) + 1)
    return edges, counts


def test_tail_gap_test_separates_a_far_cluster_from_a_spread_tail():
    """A few rows just beyond a tail that already reaches z = 14 are the tail; a tight cluster far out is not."""
    rule = dict(z_min=3.0, min_gap=1.0, min_size=5, max_fraction=0.35)
    edges, counts = _tail(np.linspace(17.0, 25.0, 8))  # 8 rows, gap 14 -> 17: 8 ln(17/14) = 1.6
    assert np.isfinite(cluster_threshold(edges, counts, 0.0, 1.0, **rule))
    assert cluster_threshold(edges, counts, 0.0, 1.0, min_tail_gap=3.0, **rule) == float("inf")
    edges, counts = _tail(np.full(8, 30.0))  # 8 rows, gap 14 -> 30: 8 ln(30/14) = 6.1
    assert 14.0 < cluster_threshold(edges, counts, 0.0, 1.0, min_tail_gap=3.0, **rule) < 30.0


def test_classes_with_few_rows_per_dimension_are_not_cut():
    """Below 5 rows per dimension the class direction isolates any subgroup: "auto" leaves the class alone."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 40))
    y = np.repeat([0, 1], 200)  # 200 rows per class, 40 dimensions: 5 rows per dimension
    X[:20, :3] = 8.0  # a planted far cluster in class 0
    assert np.isfinite(SpectralSignatureDetector().fit(X, y).thresholds_[0])
    Xs, ys = X[np.r_[0:190, 200:400]], y[np.r_[0:190, 200:400]]  # 190 rows: 4.75 per dimension
    assert SpectralSignatureDetector().fit(Xs, ys).thresholds_[0] == float("inf")


@pytest.mark.parametrize("seed", [0, 1])
def test_heavy_tails_do_not_hide_the_poison_nor_get_flagged(seed):
    """Rare, clean, extreme rows (0.5% x50) neither crowd out a 3% cluster nor get flagged."""
    X, y, mask, _ = heavy_tailed_table(seed)
    flagged = SpectralSignatureDetector().fit(X, y).predict(X, y) == -1
    recall, precision = recall_precision(mask, flagged)
    assert recall >= 0.9 and precision >= 0.8, (recall, precision)
    Xc, yc, _, _ = heavy_tailed_table(seed, n=60000, poison=False)
    assert (SpectralSignatureDetector().fit(Xc, yc).predict(Xc, yc) == -1).mean() < 0.01


@pytest.mark.parametrize("seed", [1, 4])
def test_a_subgroup_every_class_holds_is_not_cut(seed):
    """caravan, 3% of the majority class copied into the other class (the field test's dup3): the copies shift the
    pooled covariance, and the majority class's direction turns to a subgroup it shares with the other class
    (zero-inflated policy counts). Its own rule cut 408 and 237 clean rows for these seeds; the other class's sample
    rows reach the cut as often, so it is not cut. The other class's own 13 far-out rows stay within the budget."""
    X, y, ids = real_table("caravan")
    rng = np.random.default_rng(seed)
    pick = rng.choice(np.flatnonzero(y == "No"), int(0.03 * len(y)), replace=False)
    X2, y2 = np.r_[X, X[pick]], np.r_[y, np.full(len(pick), "Yes", dtype=object)]
    det = SpectralSignatureDetector().fit(X2, y2, row_ids=np.r_[ids, ids.max() + 1 + np.arange(len(pick))])
    assert det.thresholds_["No"] == np.inf
    assert (det.predict(X, y) < 0).mean() <= 0.005


def test_a_tail_every_class_holds_gets_no_small_pvalue():
    """caravan with the field test's door3 planting (3% of the rows, from the majority class, MGODRK at its 99th
    percentile and MGODPR at its 1st, relabelled): the majority class's direction turns to a subgroup both classes
    hold (zero-inflated policy counts). Its own rule does not cut it, but its fitted tail gave 112 of its clean rows
    p-values the decision layer cut. The other class's sample rows reach as far out about as often, so those rows'
    p-values are floored at the class's own share of that tail, and none is flagged."""
    X, y, ids = real_table("caravan")
    Xb, yb, truth = plant_field_backdoor(X, y, 0.03, seed=[0, 5, 4], columns=(5, 6))
    det = EnsembleDetector(detectors=[SpectralSignatureDetector()]).fit(Xb, yb, row_ids=ids)
    flagged = det.predict(Xb, yb) < 0
    majority = yb == "No"
    assert (flagged & majority).sum() <= 0.005 * majority.sum()
    model = det.model_.models[0]
    scores = model.suspicion(Xb, yb)
    far = majority & (scores > np.quantile(scores[majority], 0.99))
    assert (model.pvalue_floor(scores, label_codes(model.classes, yb))[far] > 0).all()


def test_a_tail_in_a_class_its_rule_does_not_cut_is_no_rarer_than_its_rank():
    """The field test's caravan dup3 batch (3% of the rows, copies of the majority class under the other label): the
    majority class's direction turns to its farmers and tractor owners, which the other class, diluted by the
    copies, holds less often. Its own rule's cut does not stand (6 of the other class's 522 rows reach it, 17.5
    expected: not under a third), but the other-class floor freed the tail from where the other class thins out,
    and the tail fitted to the class's quantiles gave 191 of its clean rows p-values down to 1e-28, which the
    decision layer cut (2.97% of the batch's clean rows in the field test). In a class its rule looks at and does not
    cut, a row is now no rarer than its rank."""
    frame, feats, truth = field_test_batch("caravan", "dup3")
    X, y = frame[feats].to_numpy(float), frame["label"].to_numpy(object)
    det = EnsembleDetector(detectors=[SpectralSignatureDetector()]).fit(X, y, row_ids=frame["id"].to_numpy())
    model = det.model_.models[0]
    assert model.thresholds[model.classes.index("No")] == np.inf
    flagged = det.predict(X, y) < 0
    majority = y == "No"
    assert (flagged & majority).sum() <= 0.001 * majority.sum()
    scores = model.suspicion(X, y)
    rank = rankdata(-scores[majority], method="max") / majority.sum()  # share of the class's rows at or above it
    # its rank as the projection histogram's bins count it: within a few percent of the rows' own
    assert (model.pvalue_floor(scores, label_codes(model.classes, y))[majority] >= 0.9 * rank).all()


@pytest.mark.parametrize("case, seed", [("clean", 0), ("target10", 1), ("target10", 3)])
def test_a_subgroup_that_merely_predicts_a_class_is_not_flagged(case, seed):
    """caravan's boat owners are ten times as common in its class `Yes` as in `No`, which holds more of them (13 and 20
    in the field test's clean batch). In the clean batch `Yes` (348 rows in 85 dimensions) is too small for the cut
    rule; the other class's floor freed their tail, the tail fitted to the class's quantiles gave them p-values of
    1e-8 to 1e-11, and all 13 were flagged. In the target10 batch, 547 rows moved into `Yes` make it large enough for
    its rule, which cut its 16 boat owners with detector seeds 1 to 4 (the other class's sample decided whether the
    cut stood; seed 3's sample held fewest of them). A cut stands, and a floor is freed, only where the class's rows
    are at least CLUSTER_PURITY of all rows that reach it, as a dirty-label cluster's are; a slow test in
    test_images.py holds the other side (a patch on 27 MNIST 7s relabelled 1, in a class too small for the rule, is
    still found), and test_heavy_tails_do_not_hide_the_poison_nor_get_flagged a cut cluster of which the other
    classes hold about a quarter of the rows."""
    frame, feats, truth = field_test_batch("caravan", case)
    X, y, ids = frame[feats].to_numpy(float), frame["label"].to_numpy(object), frame["id"].to_numpy()
    det = EnsembleDetector(detectors=[SpectralSignatureDetector(seed=seed)]).fit(X, y, row_ids=ids)
    flagged = det.predict(X, y) < 0
    boat = (frame["APLEZIER"].to_numpy() > 0) & (y == "Yes")
    assert boat.sum() >= 13
    assert not (flagged & boat).any()
    assert (flagged & ~truth).sum() <= 0.001 * (~truth).sum()
    model = det.model_.models[0]
    # each is no rarer than the share of the class's rows at least as far out, or of the other classes' sample rows
    assert (model.pvalue_floor(model.suspicion(X, y), label_codes(model.classes, y))[boat] >= 1 / (y == "Yes").sum()).all()


def test_a_subgroup_the_trusted_rows_hold_is_not_flagged():
    """The field test's clean caravan batch with 30% of the table trusted (run.py --reference-share 0.3). Its class
    `Yes` (243 batch rows) is too small for the cut rule, and its direction finds its boat owners. The trusted rows
    of `Yes` hold boat owners as often, so a row is no rarer than the share of them at least as far out (a
    conformal p-value), whatever the other classes say."""
    frame, feats, truth, reference = field_test_batch("caravan", "clean", reference_share=0.3)
    X, y, ids = frame[feats].to_numpy(float), frame["label"].to_numpy(object), frame["id"].to_numpy()
    Xr, yr = reference[feats].to_numpy(float), reference["label"].to_numpy(object)
    det = EnsembleDetector(detectors=[SpectralSignatureDetector()]).fit(X, y, row_ids=ids, X_reference=Xr, y_reference=yr)
    assert (det.predict(X, y) < 0).sum() <= 1
    model = det.model_.models[0]
    scores, trusted = model.suspicion(X, y), model.suspicion(Xr, yr)
    floor = model.pvalue_floor(scores, label_codes(model.classes, y))
    for c in model.classes:
        held = np.sort(trusted[yr == c])
        within = (y == c) & (scores <= held[-1])
        share = (len(held) - np.searchsorted(held, scores[within], side="left")) / len(held)
        # the trusted share as the projection histogram's bins count it: within a few percent of the rows' own
        assert (floor[within] >= 0.9 * share).all(), c


def test_a_row_below_the_cut_is_no_rarer_than_its_rank_there():
    """diamonds with the field test's door3 planting (3% of the rows, from the largest class, carat at its 99th
    percentile and y at its 1st, relabelled): spectral's rule cuts the trigger rows, which then raise
    Benjamini-Hochberg's cut, and clean rows of the class below the cut, whose p-values came from the tail fitted to
    the class's quantiles, fell within it (96 of them). Each of those rows now has at least its rank among the rows
    below the cut: 26, and every planted row is still flagged."""
    X, y, ids = real_table("diamonds")
    Xb, yb, truth = plant_field_backdoor(X, y, 0.03, seed=[0, 1, 4], columns=(0, 5))
    det = EnsembleDetector(detectors=[SpectralSignatureDetector()]).fit(Xb, yb, row_ids=ids)
    flagged = det.predict(Xb, yb) < 0
    assert flagged[truth].all()
    assert (flagged & ~truth).sum() <= 0.001 * (~truth).sum()


def test_large_common_offset_changes_nothing(cancer_backdoor):
    """Rows are centred: adding 1e6 to every feature gives the same flags and scores.

    The uncentred projection of ART / BackdoorBench does not survive this: the offset
    becomes the top direction, so the score ranks rows by the sum of their features.
    """
    X, y, mask = cancer_backdoor
    shifted = X + 1e6
    base = SpectralSignatureDetector().fit(X, y)
    moved = SpectralSignatureDetector().fit(shifted, y)
    np.testing.assert_array_equal(base.predict(X, y), moved.predict(shifted, y))
    np.testing.assert_allclose(base.suspicion(X, y), moved.suspicion(shifted, y), rtol=1e-6, atol=1e-6)
    assert recall_precision(mask, moved.predict(shifted, y) == -1)[0] >= 0.9
    target = y == 1
    assert roc_auc_score(mask[target], moved.suspicion(shifted, y)[target]) > 0.99


def test_feature_scales_do_not_decide(cancer_backdoor):
    X, y, _ = cancer_backdoor
    factors = np.logspace(-3, 6, X.shape[1])
    a = SpectralSignatureDetector().fit(X, y)
    b = SpectralSignatureDetector().fit(X * factors, y)
    np.testing.assert_array_equal(a.predict(X, y), b.predict(X * factors, y))
    np.testing.assert_allclose(a.suspicion(X, y), b.suspicion(X * factors, y), rtol=1e-6, atol=1e-8)


def test_row_order_does_not_matter(cancer_backdoor):
    X, y, _ = cancer_backdoor
    ids = np.arange(len(X))
    perm = np.random.default_rng(0).permutation(len(X))
    a = SpectralSignatureDetector().fit(X, y, row_ids=ids)
    b = SpectralSignatureDetector().fit(X[perm], y[perm], row_ids=ids[perm])
    np.testing.assert_allclose(a.suspicion(X, y), b.suspicion(X, y), rtol=1e-9, atol=1e-12)
    assert a.thresholds_ == pytest.approx(b.thresholds_)


def test_contamination_flags_that_share(cancer_backdoor):
    X, y, mask = cancer_backdoor
    flagged = SpectralSignatureDetector(contamination=0.05).fit(X, y).predict(X, y) == -1
    assert 0.04 <= flagged.mean() <= 0.05
    assert recall_precision(mask, flagged)[0] >= 0.9


def test_calibration_on_reference_rows_meets_target_fpr():
    X, y, mask, _ = heavy_tailed_table(3, n=40000)
    Xr, yr, _, _ = heavy_tailed_table(4, n=20000, poison=False)  # trusted, clean
    Xh, yh, _, _ = heavy_tailed_table(5, n=20000, poison=False)  # held-out clean
    det = SpectralSignatureDetector().fit(X, y).calibrate(Xr, yr, target_fpr=0.01)
    assert (det.predict(Xr, yr) == -1).mean() <= 0.01
    assert (det.predict(Xh, yh) == -1).mean() <= 0.02
    assert recall_precision(mask, det.predict(X, y) == -1)[0] >= 0.9
    assert len(set(det.thresholds_.values())) == 1


def test_estimator_api(cancer_backdoor):
    X, y, _ = cancer_backdoor
    det = SpectralSignatureDetector()
    assert det.fit(X, y) is det
    s = det.suspicion(X, y)
    np.testing.assert_array_equal(det.score_samples(X, y), -s)
    d = det.decision_function(X, y)
    np.testing.assert_array_equal(det.predict(X, y), np.where(d < 0, -1, 1))
    assert set(np.unique(det.predict(X, y))) <= {-1, 1}
    assert list(det.classes_) == [0, 1]
    np.testing.assert_array_equal(det.fit_predict(X, y), det.predict(X, y))


def test_string_labels_and_unseen_classes(cancer_backdoor):
    X, y, _ = cancer_backdoor
    names = np.array(["malignant", "benign"], dtype=object)[y]
    det = SpectralSignatureDetector().fit(X, names)
    assert list(det.classes_) == ["benign", "malignant"]
    other = np.array(["unknown"] * 3, dtype=object)
    assert np.isnan(det.suspicion(X[:3], other)).all()
    assert (det.predict(X[:3], other) == 1).all()


def test_tiny_and_degenerate_classes_do_not_crash():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 4))
    X[:, 2] = 7.0  # constant feature
    y = np.array([0] * 48 + [1, 2])  # classes of one row
    det = SpectralSignatureDetector().fit(X, y)
    s = det.suspicion(X, y)
    assert np.isfinite(s).all()
    assert (s[48:] == 0).all()
    single = SpectralSignatureDetector().fit(X, np.zeros(50, dtype=int))
    assert np.isfinite(single.suspicion(X, np.zeros(50, dtype=int))).all()


@pytest.mark.parametrize("params,match", [
    ({"contamination": 0.9}, "contamination"),
    ({"clip": -1.0}, "clip"),
    ({"shrinkage": 2.0}, "shrinkage"),
    ({"sample_size": 1}, "sample_size"),
])
def test_bad_parameters_are_rejected_at_fit(params, match, cancer):
    X, y = cancer
    with pytest.raises(ValueError, match=match):
        SpectralSignatureDetector(**params).fit(X, y)


def test_bad_inputs_are_rejected(cancer):
    X, y = cancer
    with pytest.raises(ValueError):
        SpectralSignatureDetector().fit(np.where(np.eye(len(X), X.shape[1]) > 0, np.nan, X), y)
    with pytest.raises(ValueError, match="labels"):
        SpectralSignatureDetector().fit(X, y[:-1])
