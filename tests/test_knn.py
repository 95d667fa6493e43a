"""KNNLabelDetector (Deep k-NN): kernels vs numpy twins, combinable statistics, quality floors, API."""

import itertools

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine, make_classification
from sklearn.metrics import roc_auc_score

from conftest import fit_in_parts, heavy_tailed_table
from poisonguard.detectors.knn import (
    KNNLabelDetector,
    select_candidates,
    vote_scores,
)
from poisonguard.detectors.statistics import LabelledSample
from poisonguard.schemas import row_hash


# -- numpy twins of the kernels ----------------------------------------------------------------
def naive_select_candidates(G, q_norm, s_norm, m):
    v = q_norm[:, None] + s_norm[None, :] - 2.0 * G.astype(np.float64)
    order = np.argsort(v, axis=1, kind="stable")[:, :m]
    out = np.full((len(G), m), -1, dtype=np.int64)
    out[:, :order.shape[1]] = order
    return out


def naive_vote_scores(Z, codes, sample, sample_codes, candidates, k, n_classes, smoothing, location, inv_scale):
    out = np.full(len(Z), np.nan)
    for i in range(len(Z)):
        c = codes[i]
        if c < 0:
            continue
        cand = candidates[i][candidates[i] >= 0]
        dist = ((Z[i] - sample[cand]) ** 2).sum(axis=1)
        ranked = cand[np.lexsort((cand, dist))]
        dist = np.sort(dist)
        self_match = np.flatnonzero((dist == 0) & (sample_codes[ranked] == c))
        if len(self_match):
            ranked = np.delete(ranked, self_match[0])
        votes = np.bincount(sample_codes[ranked[:k]], minlength=n_classes).astype(float)
        own = votes[c]
        votes[c] = 0.0
        out[i] = (np.log((votes.max() + smoothing) / (own + smoothing)) - location[c]) * inv_scale[c]
    return out


@pytest.mark.parametrize("seed", range(4))
def test_select_candidates_matches_numpy_twin(seed):
    rng = np.random.default_rng(seed)
    n, S, d = rng.integers(1, 9), rng.integers(1, 12), rng.integers(1, 5)
    Q, P = rng.normal(size=(n, d)), rng.normal(size=(S, d))
    G, qn, sn = Q @ P.T, (Q * Q).sum(1), (P * P).sum(1)
    for m in (1, 3, S, S + 2):
        out = np.empty((n + 2, m), dtype=np.int64)
        select_candidates(G[1:], qn, sn, 1, m, out)  # rows 1.. of the block land at row0 = 1
        expected = naive_select_candidates(G[1:], qn[1:], sn, m)
        np.testing.assert_array_equal(out[1:n], expected)


@pytest.mark.parametrize("seed", range(6))
def test_vote_scores_match_numpy_twin(seed):
    rng = np.random.default_rng(seed)
    S, d, K = rng.integers(2, 15), rng.integers(1, 4), rng.integers(1, 4)
    sample = rng.normal(size=(S, d)).round(1)
    sample_codes = rng.integers(0, K, S)
    # queries: some are sample rows (self-matches at distance 0), some fresh, one of an unseen class
    Z = np.vstack([sample[: S // 2], rng.normal(size=(5, d)).round(1)])
    codes = np.concatenate([sample_codes[: S // 2], rng.integers(-1, K, 5)])
    m = min(S, 6)
    candidates = np.array([rng.permutation(S)[:m] for _ in range(len(Z))])
    candidates[0, -1] = -1  # padding
    for k in (1, 3, 5):
        loc, inv = rng.normal(size=K), rng.uniform(0.5, 2.0, K)
        got = vote_scores(Z, codes, sample, sample_codes, candidates, k, K, 1.0, loc, inv, np.empty(len(Z)))
        want = naive_vote_scores(Z, codes, sample, sample_codes, candidates, k, K, 1.0, loc, inv)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        assert np.isnan(got[codes < 0]).all()


def test_neighbour_search_is_exact():
    """The float32 preselection plus exact re-ranking returns the exact k + 1 nearest rows."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(3000, 12)), rng.integers(0, 3, 3000)
    model = KNNLabelDetector(sample_size=1000, min_class_sample=10).fit(X, y).model_
    Z = model.standardize(X[:500])
    cand = model.neighbour_candidates(Z)
    d2 = ((Z[:, None, :] - model.sample[None, :, :]) ** 2).sum(-1)
    exact = np.sort(np.argsort(d2, axis=1, kind="stable")[:, :model.n_neighbors + 1], axis=1)
    got = np.sort(np.array([c[np.argsort(((Z[i] - model.sample[c]) ** 2).sum(1), kind="stable")][:model.n_neighbors + 1]
                            for i, c in enumerate(cand)]), axis=1)
    np.testing.assert_array_equal(got, exact)


# -- combinable statistics -------------------------------------------------------------------
def _splits(n, rng, parts):
    cuts = np.sort(rng.choice(np.arange(1, n), parts - 1, replace=False))
    return np.split(np.arange(n), cuts)


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_labelled_sample_is_exact_in_any_order(order):
    rng = np.random.default_rng(2)
    X, labels = rng.normal(size=(1000, 3)), rng.choice(np.array(["a", "b", "c"], dtype=object), 1000)
    h = row_hash(np.arange(1000), seed=5)
    parts = _splits(len(X), rng, 4)
    stats = [LabelledSample(64, 3).add_batch(X[p], h[p], labels[p]) for p in parts]
    merged = stats[order[0]]
    for i in order[1:]:
        merged = merged.merge(stats[i])
    hashes, rows, labs = merged.result()
    best = np.argsort(h)[:64]
    np.testing.assert_array_equal(hashes, h[best])
    np.testing.assert_array_equal(rows, X[best])
    np.testing.assert_array_equal(labs, labels[best])


@pytest.mark.parametrize("contamination", ["auto", 0.05])
@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 1, 0, 2), (2, 3, 1, 0)])
def test_chunked_fit_equals_in_memory_fit(order, contamination):
    """Any split into chunks, merged in any order, gives the in-memory model (and scores)."""
    X, y = make_classification(n_samples=2500, n_features=8, n_informative=5, n_classes=3, random_state=0)
    ids = np.arange(len(X)) * 7 + 3
    params = dict(n_neighbors=7, sample_size=800, min_class_sample=50, contamination=contamination)
    det = KNNLabelDetector(**params)
    perm = np.random.default_rng(1).permutation(len(X))
    parts = [perm[p] for p in _splits(len(X), np.random.default_rng(order[0]), 4)]
    chunked = fit_in_parts(det, X, y, ids, parts, order)
    memory = KNNLabelDetector(**params).fit(X, y, row_ids=ids).model_
    np.testing.assert_array_equal(chunked.sample, memory.sample)
    np.testing.assert_array_equal(chunked.sample_codes, memory.sample_codes)
    np.testing.assert_array_equal(chunked.counts, memory.counts)
    np.testing.assert_allclose(chunked.location, memory.location)
    np.testing.assert_allclose(chunked.thresholds, memory.thresholds)
    np.testing.assert_array_equal(chunked.suspicion(X, y), memory.suspicion(X, y))
    assert memory.counts.sum() == len(X)
    np.testing.assert_array_equal(memory.counts, np.bincount(y))
    assert len(memory.sample) <= 800 + 3 * 50


def test_auto_fits_in_one_pass_a_share_in_two():
    assert KNNLabelDetector().n_stages == 1
    assert KNNLabelDetector(contamination=0.1).n_stages == 2
    assert KNNLabelDetector(contamination=0.1).set_params(contamination="auto").n_stages == 1


def _sample_members(det, ids, y):
    """Row indices of the reference sample (pooled smallest hashes + per-class floor), by hash."""
    h = det.row_hashes(ids)
    members = set(np.argsort(h, kind="stable")[:det.sample_size].tolist())
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        members |= set(rows[np.argsort(h[rows], kind="stable")[:det.min_class_sample]].tolist())
    members = np.array(sorted(members))
    return members[np.argsort(h[members], kind="stable")]


def test_auto_location_and_scale_come_from_the_samples_leave_one_out_scores():
    """The sample's own scores are what the kernel gives those rows; location / scale are theirs."""
    from poisonguard.detectors.knn import RAW_EDGES
    from poisonguard.detectors.thresholds import robust_location_scale

    X, y = make_classification(n_samples=6000, n_features=8, n_informative=5, n_classes=3, flip_y=0.05, random_state=4)
    det = KNNLabelDetector(n_neighbors=10, sample_size=1500, min_class_sample=40).fit(X, y)
    model = det.model_
    members = _sample_members(det, np.arange(len(X)), y)
    assert len(members) == len(model.sample) < len(X)
    loo = model.sample_raw_scores()
    np.testing.assert_array_equal(loo, model.raw_scores(X[members], y[members]))
    floor = det._one_vote()
    for k, c in enumerate(model.classes):
        counts = np.histogram(loo[model.sample_codes == k], bins=RAW_EDGES)[0]
        loc, sc = robust_location_scale(RAW_EDGES, np.concatenate([[0], counts, [0]]), fallback_scale=floor)
        assert model.location[k] == pytest.approx(loc) and model.scale[k] == pytest.approx(max(sc, floor))
    np.testing.assert_array_equal(model.counts, np.bincount(y))  # all rows counted, not the sample


def test_auto_equals_the_full_distribution_when_every_row_is_in_the_sample():
    """With the data no larger than the sample, the one-pass fit is the two-pass fit exactly."""
    from poisonguard.detectors.knn import RAW_EDGES
    from poisonguard.detectors.thresholds import robust_location_scale

    X, y = load_breast_cancer(return_X_y=True)
    y2, _ = flip_labels(y, 0.1, 0)
    det = KNNLabelDetector().fit(X, y2)
    raw = det.model_.raw_scores(X, y2)
    for k, c in enumerate(det.model_.classes):
        counts = np.histogram(raw[y2 == c], bins=RAW_EDGES)[0]
        loc, _ = robust_location_scale(RAW_EDGES, np.concatenate([[0], counts, [0]]), fallback_scale=det._one_vote())
        assert det.model_.location[k] == loc


def test_sampled_location_and_decisions_track_the_full_data():
    """Sample much smaller than the data: location / scale near the all-rows values, decisions nearly the same.

    r is discrete, so its MAD from ~500 sample rows of a class can land one step off the
    all-rows MAD: the scale differs by up to about 30%, a few rows near the cut change side.
    """
    from poisonguard.detectors.knn import RAW_EDGES
    from poisonguard.detectors.thresholds import robust_location_scale

    X, y = make_classification(n_samples=20000, n_features=12, n_informative=6, n_classes=4, n_clusters_per_class=1,
                               class_sep=1.0, random_state=1)
    y2, mask = flip_labels(y, 0.10, 0)
    det = KNNLabelDetector(sample_size=2000, min_class_sample=100).fit(X, y2)
    model = det.model_
    raw = model.raw_scores(X, y2)
    floor, r_cut = det._one_vote(), det._clear_minority()
    full_flags = np.zeros(len(X), dtype=bool)
    for k, c in enumerate(model.classes):
        counts = np.histogram(raw[y2 == c], bins=RAW_EDGES)[0]
        loc, sc = robust_location_scale(RAW_EDGES, np.concatenate([[0], counts, [0]]), fallback_scale=floor)
        sc = max(sc, floor)
        assert abs(model.location[k] - loc) <= 0.25 * sc
        assert 0.7 <= model.scale[k] / sc <= 1.4
        rows = y2 == c
        full_flags[rows] = (raw[rows] - loc) / sc > max((r_cut - loc) / sc - 1e-9, det.z_min)
    flags = det.predict(X, y2) == -1
    # measured: 0.9% of the rows decided differently (0.1-1.2% over 8 samples of ~500 rows per class)
    assert (flags != full_flags).mean() < 0.02
    tp = (flags & mask).sum()
    assert tp / mask.sum() >= 0.5 and tp / flags.sum() >= 0.85


def test_a_rows_score_does_not_depend_on_its_batch():
    X, y = make_classification(n_samples=3000, n_features=10, n_informative=6, n_classes=4, random_state=2)
    model = KNNLabelDetector().fit(X, y).model_
    whole = model.suspicion(X, y)
    pieces = np.concatenate([model.suspicion(X[s:s + 37], y[s:s + 37]) for s in range(0, len(X), 37)])
    np.testing.assert_array_equal(whole, pieces)
    np.testing.assert_array_equal(model.suspicion(X[::-1], y[::-1])[::-1], whole)


def test_row_order_does_not_matter():
    X, y = load_wine(return_X_y=True)
    ids = np.arange(len(X))
    perm = np.random.default_rng(0).permutation(len(X))
    a = KNNLabelDetector().fit(X, y, row_ids=ids)
    b = KNNLabelDetector().fit(X[perm], y[perm], row_ids=ids[perm])
    np.testing.assert_array_equal(a.suspicion(X, y), b.suspicion(X, y))
    assert a.thresholds_ == pytest.approx(b.thresholds_)


# -- quality floors --------------------------------------------------------------------------
def flip_labels(y, fraction, seed):
    """Flip ``fraction`` of the labels, each to a uniformly drawn other class (seeded)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    mask = np.zeros(len(y), dtype=bool)
    mask[rng.choice(len(y), int(round(fraction * len(y))), replace=False)] = True
    y2 = y.copy()
    for i in np.flatnonzero(mask):
        others = classes[classes != y[i]]
        y2[i] = others[rng.integers(len(others))]
    return y2, mask


def _synthetic_5_classes():
    return make_classification(n_samples=5000, n_features=16, n_informative=8, n_classes=5, n_clusters_per_class=1,
                               class_sep=2.0, random_state=0)


def _gaussian(seed=0, n=10000, shift=4.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    return rng.normal(size=(n, 8)) + shift * np.eye(4, 8)[y], y


# measured (seeds 0-2, defaults): cancer AUC 0.977-0.993, recall 0.26-0.7 (mean 0.49), precision 0.95; wine 0.994-1.000,
# 0.74, 1.00; digits 0.990-0.992, 0.85, 0.94; synthetic 0.992-0.993, 0.91, 0.93
@pytest.mark.parametrize("name,min_recall", [("cancer", 0.2), ("wine", 0.5), ("digits", 0.7), ("synthetic", 0.8)])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_label_flips_are_found(name, min_recall, seed):
    """Floor: 10% random flips -> ROC-AUC >= 0.9 (the issue's floor), precision >= 0.85 at the auto threshold."""
    X, y = {"cancer": load_breast_cancer, "wine": load_wine, "digits": load_digits}.get(
        name, lambda return_X_y: _synthetic_5_classes())(return_X_y=True)
    y2, mask = flip_labels(y, 0.10, seed)
    det = KNNLabelDetector().fit(X, y2)
    auc = roc_auc_score(mask, det.suspicion(X, y2))
    flagged = det.predict(X, y2) == -1
    tp = int((flagged & mask).sum())
    recall, precision = tp / mask.sum(), tp / max(int(flagged.sum()), 1)
    assert auc >= 0.95, auc
    assert recall >= min_recall and precision >= 0.85, (recall, precision)


@pytest.mark.parametrize("name", ["cancer", "wine", "iris", "digits", "gaussian", "heavy_tailed"])
def test_clean_data_loses_under_one_percent(name):
    if name == "gaussian":
        X, y = _gaussian()
    elif name == "heavy_tailed":
        X, y = heavy_tailed_table(0, n=10000, poison=False)[:2]
    else:
        loader = {"cancer": load_breast_cancer, "wine": load_wine, "iris": load_iris, "digits": load_digits}[name]
        X, y = loader(return_X_y=True)
    flagged = KNNLabelDetector().fit(X, y).predict(X, y) == -1
    assert flagged.mean() < 0.01, flagged.mean()


def test_suspicion_is_in_robust_units_of_the_class():
    X, y = _synthetic_5_classes()
    det = KNNLabelDetector().fit(X, y)
    s = det.suspicion(X, y)
    for c in np.unique(y):
        assert abs(np.median(s[y == c])) < 0.05
    # one unit is about one vote: a row with all k neighbours of another class is far out
    assert det.model_.thresholds.min() >= det.z_min


def test_sample_members_are_scored_leave_one_out():
    """A lone row of class 1 inside a class-0 cluster: itself excluded, all k votes are against it."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = np.zeros(400, dtype=int)
    y[7] = 1
    det = KNNLabelDetector(n_neighbors=10).fit(X, y)
    k = det.n_neighbors
    assert det.model_.raw_scores(X[7:8], y[7:8])[0] == pytest.approx(np.log(k + 1.0))
    assert det.model_.raw_scores(X[:1], y[:1])[0] == pytest.approx(-np.log(k + 1.0))
    # an identical copy with another label is not "itself": it counts against the row
    X2, y2 = np.vstack([X, X[:1]]), np.concatenate([y, [1]])
    m2 = KNNLabelDetector(n_neighbors=10).fit(X2, y2).model_
    assert m2.raw_scores(X2[:1], y2[:1])[0] == pytest.approx(np.log(2.0 / 10.0))


def test_reference_sample_is_bounded_and_keeps_rare_classes():
    rng = np.random.default_rng(3)
    y = np.where(rng.random(20000) < 0.002, 2, rng.integers(0, 2, 20000))
    X = rng.normal(size=(20000, 4)) + 3.0 * np.eye(3, 4)[y]
    det = KNNLabelDetector(sample_size=1000, min_class_sample=30).fit(X, y)
    per_class = np.bincount(det.model_.sample_codes, minlength=3)
    assert len(det.model_.sample) <= 1000 + 3 * 30
    assert per_class[2] >= min(30, (y == 2).sum())
    assert det.model_.counts.sum() == len(X)
    assert set(det.model_.summary()) == {"0", "1", "2"}
    assert (det.predict(X, y) == -1).mean() < 0.01


def test_contamination_flags_at_most_that_share():
    X, y = _synthetic_5_classes()
    y2, mask = flip_labels(y, 0.10, 0)
    flagged = KNNLabelDetector(contamination=0.1).fit(X, y2).predict(X, y2) == -1
    assert 0.07 <= flagged.mean() <= 0.1
    assert (flagged & mask).sum() / mask.sum() >= 0.7


def test_feature_scales_do_not_decide():
    X, y = load_wine(return_X_y=True)
    factors = np.logspace(-3, 6, X.shape[1])
    a = KNNLabelDetector().fit(X, y)
    b = KNNLabelDetector().fit(X * factors, y)
    np.testing.assert_allclose(a.suspicion(X, y), b.suspicion(X * factors, y), rtol=1e-9, atol=1e-9)


# -- API and errors --------------------------------------------------------------------------
def test_estimator_api_strings_and_unseen_classes():
    X, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"], dtype=object)[y]
    det = KNNLabelDetector()
    assert det.fit(X, names) is det
    assert list(det.classes_) == ["setosa", "versicolor", "virginica"]
    s = det.suspicion(X, names)
    np.testing.assert_array_equal(det.score_samples(X, names), -s)
    np.testing.assert_array_equal(det.predict(X, names), np.where(det.decision_function(X, names) < 0, -1, 1))
    other = np.array(["unknown"] * 3, dtype=object)
    assert np.isnan(det.suspicion(X[:3], other)).all()
    assert (det.predict(X[:3], other) == 1).all()
    summary = det.model_.summary()
    assert summary["setosa"]["rows"] == 50


def test_tiny_and_degenerate_inputs_do_not_crash():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 3))
    X[:, 1] = 5.0  # constant feature
    y = np.array([0, 0, 0, 1, 1, 2])
    det = KNNLabelDetector().fit(X, y)  # fewer rows than k
    assert np.isfinite(det.suspicion(X, y)).all()
    one = KNNLabelDetector().fit(X[:1], y[:1])
    assert np.isfinite(one.suspicion(X[:1], y[:1])).all()


@pytest.mark.parametrize("params,match", [
    ({"n_neighbors": 0}, "n_neighbors"),
    ({"contamination": 0.9}, "contamination"),
    ({"min_agreement": 0.5}, "min_agreement"),
    ({"z_min": -1.0}, "z_min"),
    ({"sample_size": 0}, "sample_size"),
    ({"min_class_sample": 0}, "min_class_sample"),
    ({"clip": 0.0}, "clip"),
    ({"seed": -1}, "seed"),
])
def test_bad_parameters_are_rejected_at_fit(params, match):
    X, y = load_iris(return_X_y=True)
    with pytest.raises(ValueError, match=match):
        KNNLabelDetector(**params).fit(X, y)


def test_bad_inputs_are_rejected():
    X, y = load_iris(return_X_y=True)
    with pytest.raises(ValueError, match="labels"):
        KNNLabelDetector().fit(X)
    with pytest.raises(ValueError, match="labels"):
        KNNLabelDetector().fit(X, y[:-1])
    det = KNNLabelDetector().fit(X, y)
    with pytest.raises(ValueError, match="features"):
        det.predict(X[:, :3], y)


def test_model_pickles_without_its_caches():
    import pickle

    X, y = load_wine(return_X_y=True)
    model = KNNLabelDetector().fit(X, y).model_
    before = model.suspicion(X, y)  # fills the float32 caches
    blob = pickle.dumps(model)
    assert len(blob) < model.sample.nbytes + 20000
    np.testing.assert_array_equal(pickle.loads(blob).suspicion(X, y), before)
