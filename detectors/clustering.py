"""Activation clustering (Chen et al. 2018), made safe for clean classes.

Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy & Srivastava, "Detecting backdoor
attacks on deep neural networks by activation clustering" (SafeAI @ AAAI 2019,
arXiv:1811.03728).

Notation: N rows, d features, K classes, m = ``n_components``; ``z`` a row after robust
standardisation.

A dirty-label backdoor relabels rows of other classes (carrying a trigger) as the target
class, so the target class holds two populations: its own rows and the poison. Activation
clustering reduces each class's rows to a few dimensions, splits them with 2-means and
calls the smaller cluster poison. This implementation differs from the reference code
(ART's ``ActivationDefence``) in these ways:

1. **A cluster is flagged only when it is small and well separated.** ART's default rule
   ("smaller cluster") removes the smaller 2-means cluster of *every* class, so a clean
   class loses up to half its rows (2-means always splits). Here a class's small cluster
   is called poison only when, on the class's sample, (a) it holds at most
   ``max_cluster_fraction`` of the class and at least ``min_cluster_size`` rows, (b) along
   the axis through the two centroids the clusters are far apart relative to their own
   spreads (a Fisher-type ratio ``(mu_s - mu_l) / (sd_s + sd_l) >= min_separation``) and
   (c) the silhouette of the split is at least ``min_silhouette``; and, on ALL rows of the
   class (pass 1), (d) the density along that axis has a real valley between the
   clusters: the smaller of the two peaks around the valley floor stands
   ``min_significance`` Poisson standard errors above it, or the clusters are parted by an
   empty stretch at least ``min_gap`` robust standard deviations wide (small classes,
   where a few dozen rows cannot reach the Poisson bound); and (e) the cluster is the class's
   own: at the cut or further out, the other classes' sample rows, each about its own class's
   mean, reach less than a fifth as often, and the class's rows are most of the rows that do
   (:func:`~poisonguard.detectors.thresholds.own_cluster_cut`, after the spectral detector's
   test; the cut moves out to the first such level). A skewed or heavy-tailed clean class,
   whose 2-means split only cuts off its tail, fails (b) or (d): a tail keeps thinning out, a
   planted cluster is a second mode. A natural subgroup that every class holds fails (e):
   loans paid off early are 4-8% of every grade of the field test's loans table, a second
   mode in grades C and D, and were 2.03% of its clean rows flagged before (e). Clean classes
   keep every row. Through the decision layer, a row beyond the cut gets at most its rank
   among the class's rows below it (:meth:`ClusteringModel.pvalue_ceiling`).
   Measured on clean data (breast_cancer, wine, iris, digits, Gaussian classes,
   heavy-tailed table): 0 rows flagged with the defaults. What it cannot tell apart: a
   clean class that truly is two populations, one small and far from the other (digits
   "1" has such a 15% sub-style: separation 4.7, silhouette 0.5, valley 4.4, gap 4.3-4.7;
   the defaults leave it alone, with little margin).
   *Several 2-means solutions are examined*: k-means++ starts rarely seed a cluster of a
   few percent, and halving the clean bulk often has lower inertia than isolating it, so
   besides ``n_init`` k-means++ starts there is one start per retained component and
   side that seeds the outermost 3% of rows. Of the distinct splits that pass (a)-(c),
   the best separated is kept; if none passes, the lowest-inertia k-means++ split (plain
   2-means) is kept and the class is not cut.
2. **PCA instead of ICA.** Principal components are deterministic, need no iterations and
   keep the directions of largest variance, which is where a planted population adds it.
3. **Robustly standardised, extremes compressed** (as in the spectral detector): per-feature
   median and inter-quartile range from a bounded sample, values beyond ``+/- clip``
   compressed logarithmically, so neither raw scales nor rare extreme clean rows decide.
4. **A continuous score for every row, not a hard cluster id.** Each row's raw score is
   its projection on the axis from the large to the small centroid (in the PCA space).
   Projecting onto the PCA basis and then onto the centroid axis is one linear map, so
   the kernel projects the standardised, class-centred row on ``w = P^T u`` (P the (m, d)
   basis, u the unit centroid difference): same number, d instead of m d products. The
   suspicion is that projection in robust standard deviations of the class
   (``(p - median) / (1.4826 MAD)``, from a histogram of all the class's rows), signed:
   positive towards the small cluster. Rows outside the fitting sample are scored the
   same way, and a row's score depends only on the model and the row.
5. **The cut is the valley between the clusters**, found on the histogram of all rows (the
   middle of the emptiest stretch between the two centroids), not the 2-means assignment
   of the sample.

Fit is two passes, each a combinable statistic: (0) a per-class sample of at most
``sample_size`` rows with the smallest keyed hash of their row id, giving the per-feature
median and scale (pooled over classes) and, per class, the mean, the PCA basis, the
2-means split (scikit-learn ``PCA`` and ``KMeans``, seeded by ``seed``), its silhouette
(on at most ``silhouette_sample`` rows) and separation; (1) a per-class histogram of every
row's projection, giving the robust location and scale, the valley test and the cut.
Scoring is one numba pass.

Complexity: pass 0 O(N) to sample plus O(K (sample_size d m + (n_init + 2 m) * iterations
* sample_size m + silhouette_sample^2 m)) to fit; pass 1 and scoring O(N d). Memory
O(K sample_size d + K d), independent of N. Measured (1 thread, 1,000,000 x 64, 10
classes): fit 3.3 s (about 3 s of it the 300 small KMeans fits), scoring 0.22 s.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from numbers import Integral, Real

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from ._config import njit
from ._kernels import _row_projection, projection_bins, standardize_clip
from ._sklearn import Interval, StrOptions
from .base import BaseDetector, CutCeilingModel, label_codes, robust_feature_scale
from .statistics import add_class_bins, uniform_grid
from .thresholds import (
    SUSPICION_EDGES,
    centred_sample_rows,
    own_cluster_cut,
    other_class_rows,
    robust_location_scale,
    upper_quantile_threshold,
)

#: Grid of the projection histograms, in units of the class's robust spread on the sample.
PROJECTION_EDGES = uniform_grid(-128.0, 128.0, 12801)


# -- numba kernels: arithmetic only (numpy twins in tests/test_clustering.py) --------------
@njit
def cluster_suspicion(X, codes, median, inv_scale, clip, mean, axis, location, inv_spread, out):
    """Signed robust z of each row's projection on its class's centroid axis; NaN where c < 0.

    out[i] = (_row_projection(X, i, c, ...) - location[c]) * inv_spread[c], c = codes[i].
    """
    for i in range(X.shape[0]):
        c = codes[i]
        if c < 0:
            out[i] = np.nan
        else:
            out[i] = (_row_projection(X, i, c, median, inv_scale, clip, mean, axis) - location[c]) * inv_spread[c]
    return out



@dataclass(frozen=True)
class ClusteringModel(CutCeilingModel):
    """Fitted state of :class:`ActivationClusteringDetector` (picklable; a Beam side input).

    Arrays are indexed by class in the order of ``classes``. Projections are in the
    standardised feature space; ``axis[k]`` is zero for classes too small to split.
    """

    classes: tuple
    median: np.ndarray  # (d,) per-feature median
    inv_scale: np.ndarray  # (d,) 1 / per-feature robust scale
    clip: float
    mean: np.ndarray  # (K, d) class means of the standardised sample rows
    axis: np.ndarray  # (K, d) unit axis from the large to the small 2-means centroid
    location: np.ndarray  # (K,) robust location of the projections (all rows)
    scale: np.ndarray  # (K,) robust scale of the projections (all rows)
    counts: np.ndarray  # (K,) rows per class
    small_fraction: np.ndarray  # (K,) share of the sample in the smaller 2-means cluster
    silhouette: np.ndarray  # (K,) silhouette of the 2-means split (NaN: not split)
    separation: np.ndarray  # (K,) (mu_small - mu_large) / (sd_small + sd_large) along the axis
    valley: np.ndarray  # (K,) Poisson z of the lower peak around the valley floor (all rows)
    gap: np.ndarray  # (K,) widest empty stretch between the centroids, in robust sd (all rows)
    other_share: np.ndarray  # (K,) share of the other classes' sample rows beyond the cut (NaN: no cut to test)
    poisoned: np.ndarray  # (K,) bool: the small cluster was judged poison
    thresholds: np.ndarray  # (K,) suspicion above which a row is flagged (inf: never)
    below_cut: np.ndarray  # (K,) rows of the class below its "auto" cut (0: not cut)

    def projections(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Each row's raw projection on its class's centroid axis (NaN for unseen classes)."""
        K = len(self.classes)
        return self._kernel(X, labels, np.zeros(K), np.ones(K))

    def suspicion(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Signed robust z of each row's projection, positive towards the small cluster."""
        return self._kernel(X, labels, self.location, 1.0 / self.scale)

    def _kernel(self, X, labels, location, inv_spread):
        codes = label_codes(self.classes, labels)
        if not self.classes:
            return np.full(len(codes), np.nan)
        return cluster_suspicion(np.ascontiguousarray(X), codes, self.median, self.inv_scale, self.clip, self.mean,
                                 self.axis, location, inv_spread, np.empty(len(codes)))

    def summary(self) -> dict:
        """Per-class facts for reports, keyed by class label (as text)."""

        def num(v):
            return float(v) if np.isfinite(v) else None

        return {
            str(c): {
                "rows": int(self.counts[k]),
                "small_cluster_fraction": num(self.small_fraction[k]),
                "silhouette": num(self.silhouette[k]),
                "separation": num(self.separation[k]),
                "valley_significance": num(self.valley[k]),
                "gap": num(self.gap[k]),
                "other_classes_beyond_cut": num(self.other_share[k]),
                "poisoned": int(bool(self.poisoned[k])),
                "threshold": num(self.thresholds[k]),
            }
            for k, c in enumerate(self.classes)
        }


@dataclass(frozen=True)
class _Split:
    """What pass 0 learns about one class from its sample."""

    mean: np.ndarray  # (d,)
    axis: np.ndarray  # (d,) unit, or zeros when the class is not split
    unit: float  # robust spread of the sample's projections (grid unit)
    small_fraction: float
    silhouette: float
    separation: float
    centers: tuple  # projections of the large and the small centroid
    candidate: bool  # passes the sample tests (size, silhouette, separation)


class ActivationClusteringDetector(BaseDetector):
    """Activation-clustering poison detector for tabular rows or embeddings.

    Parameters
    ----------
    contamination : "auto" or float in (0, 0.5], default "auto"
        "auto": flag rows beyond the valley of classes whose small 2-means cluster is judged
        poison (small, well separated, a second mode, not held by the other classes); a float:
        flag that share of all rows, the most suspicious first.
    n_components : int, default 10
        Dimensions kept by the per-class PCA before 2-means (capped by d and the sample).
    clip : float, default 6.0
        Standardised feature values beyond +/- ``clip`` robust standard deviations are
        compressed logarithmically (``clip + log1p(excess)``).
    sample_size : int, default 2000
        Rows per class kept in the bounded hash sample on which PCA and 2-means are fitted.
    max_cluster_fraction : float in (0, 0.5], default 0.35
        The small cluster may hold at most this share of its class's sample.
    min_cluster_size : int, default 5
        Fewest sample rows in the small cluster; classes with fewer than twice as many
        sample rows are not split.
    min_silhouette : float in [-1, 1], default 0.35
        Smallest silhouette of the 2-means split (in the PCA space) for a poison verdict.
    min_separation : float, default 2.5
        Smallest ``(mu_small - mu_large) / (sd_small + sd_large)`` of the two clusters'
        projections on the centroid axis (sample rows).
    min_significance : float, default 5.0
        Valley test on all rows: smallest Poisson z ``(B - v) / sqrt(B + v)`` of the lower
        of the two peaks ``B`` around the valley floor ``v`` (rows counted in windows a
        quarter of the centroid distance wide).
    min_gap : float, default 6.0
        Alternative to the valley test: an empty stretch at least this many robust
        standard deviations (of the class's projections) wide between the two centroids.
    silhouette_sample : int, default 1000
        Sample rows (per class) on which the silhouette is computed (it is quadratic).
    n_init : int, default 10
        Independent 2-means runs (k-means++ starts) per class. Of the runs whose split
        passes the sample tests, the best separated is kept; if none passes, the run with
        the lowest inertia (plain 2-means). A small planted cluster is often a local
        optimum that a lower-inertia halving of the clean bulk would hide.
    seed : int, default 0
        Key of the row-id hash that selects the sample; seed of the 2-means starts and the
        silhouette subsample.

    Attributes
    ----------
    model_ : ClusteringModel
        The fitted state; ``model_.suspicion(X, labels)`` scores new rows.
    classes_ : ndarray of shape (K,)
    thresholds_ : dict
        Suspicion threshold per class (``inf``: the class is not cut).
    """

    name = "clustering"
    n_stages = 2

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        "contamination": [StrOptions({"auto"}), Interval(Real, 0.0, 0.5, closed="right")],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "clip": [Interval(Real, 0.0, None, closed="neither")],
        "sample_size": [Interval(Integral, 2, None, closed="left")],
        "max_cluster_fraction": [Interval(Real, 0.0, 0.5, closed="right")],
        "min_cluster_size": [Interval(Integral, 1, None, closed="left")],
        "min_silhouette": [Interval(Real, -1.0, 1.0, closed="both")],
        "min_separation": [Interval(Real, 0.0, None, closed="left")],
        "min_significance": [Interval(Real, 0.0, None, closed="left")],
        "min_gap": [Interval(Real, 0.0, None, closed="neither")],
        "silhouette_sample": [Interval(Integral, 10, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        *,
        contamination="auto",
        n_components=10,
        clip=6.0,
        sample_size=2000,
        max_cluster_fraction=0.35,
        min_cluster_size=5,
        min_silhouette=0.35,
        min_separation=2.5,
        min_significance=5.0,
        min_gap=6.0,
        silhouette_sample=1000,
        n_init=10,
        seed=0,
    ):
        self.contamination = contamination
        self.n_components = n_components
        self.clip = clip
        self.sample_size = sample_size
        self.max_cluster_fraction = max_cluster_fraction
        self.min_cluster_size = min_cluster_size
        self.min_silhouette = min_silhouette
        self.min_separation = min_separation
        self.min_significance = min_significance
        self.min_gap = min_gap
        self.silhouette_sample = silhouette_sample
        self.n_init = n_init
        self.seed = seed

    # -- pass 0: bounded sample -> standardiser, PCA, 2-means, sample tests ------------------
    # -- pass 1: projection histograms -> robust location / scale, valley test, cut ----------
    def batch_statistics(self, stage, state, X, labels, row_ids, into=None):
        stats = {} if into is None else into
        if stage == 0:
            return self.add_class_samples(stats, X, labels, row_ids)
        model: ClusteringModel = state["partial"]
        classes = model.classes
        codes = label_codes(classes, labels)
        bins = projection_bins(np.ascontiguousarray(X), codes, model.median, model.inv_scale, model.clip, model.mean,
                               model.axis, 1.0 / state["unit"], PROJECTION_EDGES[0],
                               1.0 / (PROJECTION_EDGES[1] - PROJECTION_EDGES[0]), len(PROJECTION_EDGES) - 1,
                               np.empty(len(X), dtype=np.int64))
        return add_class_bins(stats, classes, codes, bins, PROJECTION_EDGES)

    def advance(self, stage, state, statistics):
        if stage == 0:
            return self._fit_splits(state, statistics)
        return self._fit_thresholds(state, statistics)

    def _fit_splits(self, state, samples: dict):
        d = state["n_features"]
        classes = tuple(sorted(samples))
        rows = {c: samples[c].result()[1] for c in classes}
        pooled = np.concatenate([rows[c] for c in classes]) if classes else np.zeros((0, d))
        median, inv_scale = robust_feature_scale(pooled, d)
        standardized = [standardize_clip(np.ascontiguousarray(rows[c]), median, inv_scale, float(self.clip),
                                         np.empty(rows[c].shape)) for c in classes]
        splits = [self._split(Z) for Z in standardized]
        K = len(classes)
        partial = ClusteringModel(
            classes=classes,
            median=median,
            inv_scale=inv_scale,
            clip=float(self.clip),
            mean=np.array([s.mean for s in splits]).reshape(K, d),
            axis=np.array([s.axis for s in splits]).reshape(K, d),
            location=np.zeros(K),
            scale=np.ones(K),
            counts=np.zeros(K, dtype=np.int64),
            small_fraction=np.array([s.small_fraction for s in splits]),
            silhouette=np.array([s.silhouette for s in splits]),
            separation=np.array([s.separation for s in splits]),
            valley=np.full(K, np.nan),
            gap=np.full(K, np.nan),
            other_share=np.full(K, np.nan),
            poisoned=np.zeros(K, dtype=bool),
            thresholds=np.full(K, np.inf),
            below_cut=np.zeros(K, dtype=np.int64),
        )
        # each class's sample rows about their class's mean, for the other-class test of a cut (_fit_thresholds)
        centred = centred_sample_rows(standardized, partial.mean)
        return {**state, "partial": partial, "splits": splits, "unit": np.array([s.unit for s in splits]),
                "centred": centred}

    def _split(self, Z: np.ndarray) -> _Split:
        """PCA + 2-means on one class's standardised sample ``Z`` (n, d), and the sample tests."""
        n, d = Z.shape
        mean = Z.mean(axis=0) if n else np.zeros(d)
        unsplit = _Split(mean, np.zeros(d), 1.0, np.nan, np.nan, np.nan, (0.0, 0.0), False)
        centred = Z - mean
        if n < max(2 * self.min_cluster_size, 4) or not np.any(centred.var(axis=0) > 1e-12):
            return unsplit
        m = min(self.n_components, d, n - 1)
        pca = PCA(n_components=m, svd_solver="full").fit(centred)
        basis = pca.components_[pca.explained_variance_ > 1e-12 * pca.explained_variance_.max()]
        R = centred @ basis.T
        rng = np.random.RandomState(self.seed)
        seen, passing, fallback = set(), [], None
        for init in [None] * self.n_init + _tail_starts(R):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # duplicate points: a degenerate split is skipped below
                if init is None:
                    km = KMeans(n_clusters=2, n_init=1, random_state=rng).fit(R)
                else:
                    km = KMeans(n_clusters=2, init=init, n_init=1).fit(R)
            sizes = np.bincount(km.labels_, minlength=2)
            small = int(np.argmin(sizes)) if sizes[0] != sizes[1] else 1
            key = np.packbits(km.labels_ == small).tobytes()
            if init is None and (fallback is None or km.inertia_ < fallback[1]):
                fallback = (km, km.inertia_)
            if key in seen:  # many starts converge to the same split
                continue
            seen.add(key)
            split = self._describe(mean, centred, basis, km)
            if split is not None and split.candidate:
                passing.append((split, km))
        # the best separated split that passes size and separation, if its silhouette passes too
        for split, km in sorted(passing, key=lambda item: -item[0].separation):
            silhouette = self._silhouette(R, km.labels_)
            if silhouette >= self.min_silhouette:
                return replace(split, silhouette=silhouette)
        split = None if fallback is None else self._describe(mean, centred, basis, fallback[0])
        if split is None:
            return unsplit
        return replace(split, silhouette=self._silhouette(R, fallback[0].labels_), candidate=False)

    def _silhouette(self, R: np.ndarray, labels: np.ndarray) -> float:
        """Silhouette of a split on at most ``silhouette_sample`` rows (it is quadratic)."""
        n = len(R)
        k = min(n, self.silhouette_sample)
        return float(silhouette_score(R, labels, sample_size=k if k < n else None, random_state=self.seed))

    def _describe(self, mean, centred, basis, km) -> _Split | None:
        """One 2-means split and its size and separation tests (None when it is degenerate).

        ``candidate`` is whether it passes those; the silhouette is left to the caller.
        """
        n = len(centred)
        assign = km.labels_
        sizes = np.bincount(assign, minlength=2)
        if sizes.min() == 0:
            return None
        small = int(np.argmin(sizes)) if sizes[0] != sizes[1] else 1
        diff = km.cluster_centers_[small] - km.cluster_centers_[1 - small]
        norm = np.linalg.norm(diff)
        if not norm > 0:
            return None
        axis = basis.T @ (diff / norm)  # (d,), unit: the basis rows are orthonormal
        p = centred @ axis
        in_small = assign == small
        ps, pb = p[in_small], p[~in_small]
        separation = float((ps.mean() - pb.mean()) / max(ps.std() + pb.std(), 1e-12))
        fraction = float(sizes[small] / n)
        candidate = (
            sizes[small] >= self.min_cluster_size
            and fraction <= self.max_cluster_fraction
            and separation >= self.min_separation
        )
        med = np.median(p)
        unit = 1.4826 * np.median(np.abs(p - med))
        if not unit > 1e-9 * norm:
            unit = p.std() if p.std() > 0 else 1.0
        return _Split(mean, axis, float(unit), fraction, np.nan, separation, (float(pb.mean()), float(ps.mean())),
                      bool(candidate))

    def _fit_thresholds(self, state, histograms: dict) -> ClusteringModel:
        model: ClusteringModel = state["partial"]
        K = len(model.classes)
        width = PROJECTION_EDGES[1] - PROJECTION_EDGES[0]
        location, scale, thresholds = np.zeros(K), np.ones(K), np.full(K, np.inf)
        counts_per_class = np.zeros(K, dtype=np.int64)
        valley = np.full(K, np.nan)
        gaps = np.full(K, np.nan)
        poisoned = np.zeros(K, dtype=bool)
        other_share = np.full(K, np.nan)
        below_cut = np.zeros(K, dtype=np.int64)
        z_hist = np.zeros(len(SUSPICION_EDGES) + 1, dtype=np.int64)
        total = sum(int(histograms[c].counts.sum()) for c in model.classes if c in histograms)
        for k, c in enumerate(model.classes):
            counts = histograms[c].counts if c in histograms else np.zeros(len(PROJECTION_EDGES) + 1, dtype=np.int64)
            counts_per_class[k] = counts.sum()
            split: _Split = state["splits"][k]
            if not np.any(split.axis):  # not split: every row's suspicion is 0
                if self.contamination != "auto":
                    z_hist[np.searchsorted(SUSPICION_EDGES, 0.0, side="right")] += counts_per_class[k]
                continue
            unit = state["unit"][k]
            loc, sc = robust_location_scale(PROJECTION_EDGES, counts, fallback_scale=1.0)
            location[k], scale[k] = loc * unit, sc * unit
            if self.contamination != "auto":
                z_hist += _rebin_z(counts, loc, sc)
                continue
            large, small = split.centers[0] / unit, split.centers[1] / unit
            window = max(int(round(0.25 * (small - large) / width)), 1)
            cut, significance, gap = _valley(counts, large, small, window=window)
            valley[k] = significance
            gaps[k] = gap / sc
            if split.candidate and (significance >= self.min_significance or gaps[k] >= self.min_gap):
                threshold = (cut - loc) / sc
                # a second mode that the other classes hold as often is a subgroup of the data, not planted
                others = other_class_rows(state["centred"], k)
                others = None if others is None else (others @ split.axis - location[k]) / scale[k]
                threshold, other_share[k] = own_cluster_cut(PROJECTION_EDGES, counts, loc, sc, threshold, others,
                                                            total - int(counts.sum()), self.min_cluster_size)
                if not np.isfinite(threshold):
                    continue
                poisoned[k] = True
                thresholds[k] = threshold
                below_cut[k] = counts[:1 + np.searchsorted(PROJECTION_EDGES, loc + threshold * sc)].sum()
        fitted = replace(model, location=location, scale=scale, thresholds=thresholds, counts=counts_per_class,
                         valley=valley, gap=gaps, other_share=other_share, poisoned=poisoned, below_cut=below_cut)
        if self.contamination != "auto":
            fitted = fitted.with_threshold(upper_quantile_threshold(SUSPICION_EDGES, z_hist, self.contamination))
        return fitted


def _tail_starts(R: np.ndarray, tail: float = 0.03) -> list:
    """Starting centroids for 2-means that seed a small cluster in the tail of each axis.

    For each column j of ``R`` (a principal component) and each side, the rows beyond the
    ``tail`` quantile start one centroid and the rest the other. k-means++ starts rarely
    seed a cluster of a few percent; these do, along every retained component.
    """
    starts = []
    n = len(R)
    k = max(int(np.ceil(tail * n)), 1)
    for j in range(R.shape[1]):
        order = np.argsort(R[:, j], kind="stable")
        for rows in (order[-k:], order[:k]):
            rest = np.ones(n, dtype=bool)
            rest[rows] = False
            starts.append(np.array([R[rest].mean(axis=0), R[rows].mean(axis=0)]))
    return starts


def _valley(counts: np.ndarray, large: float, small: float, *, window: int) -> tuple[float, float]:
    """The cut between two clusters on a projection histogram, how deep its valley is, the gap.

    ``counts`` follows :class:`~poisonguard.detectors.statistics.Histogram` on
    ``PROJECTION_EDGES``; ``large`` < ``small`` are the projections of the two centroids
    (grid units). Rows are counted in windows of ``window`` bins. The valley floor ``v`` is
    the smallest window between the centroids, and the cut the middle of the longest
    stretch of windows at the floor. ``B`` is the lower of the two peaks around the floor:
    the largest window from the large centroid to the floor, and from the floor to half
    the centroid distance beyond the small centroid (grid overflow included). Returns
    ``(cut, (B - v) / sqrt(B + v), gap)``, ``gap`` the longest run of empty bins between
    the centroids (grid units); ``(inf, 0, 0)`` when the centroids are too close to test.
    """
    edges = PROJECTION_EDGES
    width = edges[1] - edges[0]
    interior = counts[1:-1]
    lo = int(np.clip(np.searchsorted(edges, large, side="right") - 1, 0, len(interior) - 1))
    hi = int(np.clip(np.searchsorted(edges, small, side="right") - 1, 0, len(interior) - 1))
    if hi - lo < 2 * window + 1:
        return float("inf"), 0.0, 0.0
    empty = np.concatenate([[False], interior[lo:hi + 1] == 0, [False]])
    change = np.flatnonzero(empty[1:] != empty[:-1])
    gap = float((change[1::2] - change[0::2]).max() * width) if len(change) else 0.0
    csum = np.concatenate([[0], np.cumsum(interior)])
    starts = np.arange(lo, hi - window + 1)
    v = csum[starts + window] - csum[starts]
    floor = v.min()
    at_floor = np.flatnonzero(v == floor)
    # the longest run of windows at the floor; its middle is the cut
    breaks = np.flatnonzero(np.diff(at_floor) > 1)
    run_starts = np.concatenate([[0], breaks + 1])
    run_ends = np.concatenate([breaks, [len(at_floor) - 1]])
    best = int(np.argmax(at_floor[run_ends] - at_floor[run_starts]))
    first, last = at_floor[run_starts[best]], at_floor[run_ends[best]]
    cut = edges[0] + width * (starts[first] + starts[last] + window) / 2.0
    # the smaller of the two peaks around the floor: the large cluster's side up to the
    # floor, the small cluster's side from the floor to half the centroid distance beyond it
    far = min(hi + (hi - lo) // 2, len(interior))
    outer = csum[np.arange(starts[last], far - window + 1) + window] - csum[np.arange(starts[last], far - window + 1)]
    if far - window + 1 <= starts[last]:
        outer = v[last:]
    if far == len(interior):
        outer[-1] += counts[-1]
    peak = min(v[:first + 1].max(), outer.max())
    significance = (peak - floor) / np.sqrt(peak + floor) if peak + floor > 0 else 0.0
    return float(cut), float(significance), gap


def _rebin_z(counts: np.ndarray, location: float, scale: float) -> np.ndarray:
    """Move a projection histogram onto the suspicion grid (signed z; negatives underflow).

    Each bin's rows are counted at the largest z inside the bin, so a threshold taken from
    the result never flags more than asked.
    """
    hi = PROJECTION_EDGES[1:]
    z = (hi - location) / scale
    idx = np.searchsorted(SUSPICION_EDGES, z, side="right")
    out = np.bincount(idx, weights=counts[1:-1], minlength=len(SUSPICION_EDGES) + 1).astype(np.int64)
    out[-1] += counts[-1]
    out[0] += counts[0]
    return out
