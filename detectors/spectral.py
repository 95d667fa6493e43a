"""Spectral signatures (Tran, Li & Madry, NeurIPS 2018), centred, scale-free and thresholded per class.

Notation: N rows, d features, K classes; ``z`` a row after robust standardisation.

A backdoor plants a cluster of rows inside its target class: their mean differs from the
class's clean mean, which adds variance along that difference. Spectral signatures score
each row by its projection on the class's top singular direction. This implementation
differs from the reference code of ART and BackdoorBench in four ways:

1. **Centred.** Rows are centred on their class mean before projecting; the reference code
   projects raw rows, so a large common offset (a feature that is 10,000 +/- 1) makes the
   offset, not the poison, the top direction.
2. **Robustly standardised, extremes compressed.** Each feature is shifted by its median
   and divided by its inter-quartile range (from a bounded, hash-selected sample); values
   beyond ``+/- clip`` are compressed logarithmically. Raw feature scales do not decide
   the result, and rare but clean extreme rows of a heavy-tailed feature (incomes, counts,
   durations) cannot dominate the covariance and hide a poison cluster. (A hard clip would
   pile those rows onto one value, which itself looks like a cluster.)
3. **Whitened by the pooled within-class covariance** (ridge-shrunk by ``shrinkage``).
   Correlations that every class shares are removed, so a class's top direction is the one
   where it has *more* variance than the classes in general: the direction a planted
   cluster adds. Without this, on real data with correlated features, the natural top
   principal component wins.
4. **No blanket fraction.** ART removes 1.5 x the expected poison rate from every class.
   Here each row's suspicion is its robust z-score along the class direction
   (``|p - median| / (1.4826 MAD)``), and by default (``contamination="auto"``) a class is
   cut only where its distribution of z has an outlying cluster beyond ``z_min``: at least
   ``min_cluster_size`` rows past an empty gap at least ``min_gap`` wide, or past a
   density valley followed by a second mode. Classes without one lose nothing. Two guards
   keep genuine subgroups of real data from counting as such a cluster: a gap must pass a
   tail-spacing test, ``m * ln(z_out / z_in) >= min_tail_gap`` with ``m`` rows beyond it
   (a heavy clean tail that reaches z = 14 has gaps of several z by itself; a planted
   cluster lies far beyond its gap or holds many rows), and a class is cut only with at
   least ``CUT_ROWS_PER_DIMENSION`` (5) rows per dimension of the feature space: with fewer,
   the class's top direction is fitted to isolate whatever small subgroup it holds (sklearn
   digits, 180 rows a class in 61 dimensions, lost 2.3% of clean rows to handwriting
   styles), so a gap along it is no evidence. Such classes are left to ``contamination`` or
   :meth:`calibrate`; measured cost: a 5% corner-pixel trigger in digits, found by the old
   rule at precision 0.27, is no longer flagged by "auto".
   A third guard: a cut stands only where the other classes' rows (each about its own
   class's mean) reach it less than a third as often, significantly so, and where the class's
   rows are at least half of all rows that reach it (``thresholds.CLUSTER_PURITY``). A class's
   direction is relative to the pooled covariance, so rows added to another class can turn
   it towards a subgroup every class holds (caravan's tractor or moped owners), which its
   own rule then cuts; a dirty-label cluster is in its target class only, and a subgroup that
   merely predicts the class (caravan's boat owners, ten times as common in its class `Yes` as
   in `No`) is not its own. The same comparison
   floors the p-values the decision layer gives a class's tail (:meth:`SpectralModel.pvalue_floor`):
   a tail the other classes reach about as often is the data's, and a row in it is not rarer
   than the class's own share of rows that far out, whatever the tail fitted to the class's
   quantiles says; and in a class whose own rule cut a cluster, a row below the cut gets at
   least its rank among the rows below it. In a class its own rule looked at (enough rows per
   dimension) and did not cut, a tail the other classes lack is floored the same way: rows
   added to another class can thin the other classes' share of a subgroup as they turn the
   direction towards it (caravan's farmers and tractor owners, with copies of the majority
   class under the other label), and where the rule saw no cluster, nothing says the tail was
   planted. In a class too small for the rule, the other classes are the only evidence (the
   floor is freed only from where the class's rows are its own cluster, as for a cut); with
   trusted reference rows, the class's own trusted rows are too, and a row is no rarer than the
   share of them at least as far out.
   Alternatively, ``contamination`` flags a fixed share of all rows, or :meth:`calibrate`
   sets the threshold on trusted reference rows.

Fit is four passes (the third reads trusted reference rows, and nothing without them), each
a combinable statistic: (1) a per-class sample of at most ``sample_size`` rows with the
smallest keyed hash of their row id, giving the per-feature median and scale and a pilot
mean; (2) per-class count, sum and second moments of the standardised rows (float64
accumulators; one BLAS call per class and batch, in the input's precision), giving the
means, the pooled covariance and each class's top whitened direction; with trusted
reference rows, (3) a per-class histogram of their projections, which floors the p-values (a
row is no rarer than the share of its class's trusted rows at least as far out); (4) the same
histogram of the batch's rows, giving the robust location and scale and the cluster test.
Scoring is one numba pass. Memory is O(K d^2 + K sample_size d), independent of N.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from numbers import Integral, Real

import numpy as np
from sklearn.cluster import KMeans

from ._kernels import project_standardized, projection_bins, robust_z, standardize_clip
from ._sklearn import Interval, StrOptions
from .base import BaseDetector, PerClassModel, add_class_moments, describe_features, label_codes, robust_feature_scale
from .clustering import _tail_starts
from .statistics import add_class_bins, uniform_grid
from .thresholds import (
    CUT_ROWS_PER_DIMENSION,
    MIN_TAIL_GAP,
    SUSPICION_EDGES,
    OwnCluster,
    centred_sample_rows,
    cluster_threshold,
    other_class_rows,
    rare_elsewhere,
    robust_location_scale,
    upper_quantile_threshold,
)

#: Grid of the projection histograms, in units of the class's standard deviation along its direction.
PROJECTION_EDGES = uniform_grid(-64.0, 64.0, 6401)
#: Levels of a class's p-value floor (SpectralModel.pvalue_floor): the largest |z| of the other classes' rows, of its
#: own rows and of its rows below its cut, this many of each.
FLOOR_LEVELS = 256
#: Fewest trusted rows of a class for its p-value floor to take their share too (as the label detector's calibration).
MIN_TRUSTED_FLOOR_ROWS = 50
#: ``subspace``: smallest Fisher separation of a cluster whose direction replaces a class's top one. Measured on MNIST
#: (an MLP's hidden activations, 5-33% of the 7s relabelled 1 with a patch or a blend, seeds 0-2, 4 directions):
#: the poison 4.6-7.5; no clean class of those batches reached 3.5 (with 8 directions, small clean clusters of 11-43
#: images reached 3.6-5.8).
SUBSPACE_MIN_SEPARATION = 3.5
#: ``subspace``: k-means++ starts of the 2-means search, besides the tail starts.
SUBSPACE_STARTS = 10
#: Centres of the projection histogram's bins, its underflow and overflow at the grid's ends.
_CENTRES = np.r_[PROJECTION_EDGES[0], (PROJECTION_EDGES[:-1] + PROJECTION_EDGES[1:]) / 2, PROJECTION_EDGES[-1]]


@dataclass(frozen=True)
class SpectralModel(PerClassModel):
    """Fitted state of :class:`SpectralSignatureDetector` (picklable; a Beam side input).

    Arrays are indexed by class in the order of ``classes``.
    """

    classes: tuple
    median: np.ndarray  # (d,) per-feature median
    inv_scale: np.ndarray  # (d,) 1 / per-feature robust scale
    clip: float
    mean: np.ndarray  # (K, d) class means of the standardised rows
    direction: np.ndarray  # (K, d) whitened top direction, in standardised coordinates
    location: np.ndarray  # (K,) robust location of the projections
    scale: np.ndarray  # (K,) robust scale of the projections
    counts: np.ndarray  # (K,) rows per class
    top_eigenvalue: np.ndarray  # (K,) variance along the direction, in whitened units
    separation: np.ndarray  # (K,) of the cluster whose direction replaced the top one (NaN: the top one; ``subspace``)
    thresholds: np.ndarray  # (K,) suspicion above which a row is flagged (inf: never)
    floor_z: np.ndarray  # (K, L <= 4 FLOOR_LEVELS + 1) ascending suspicion levels of the p-value floor (inf: padding)
    floor_p: np.ndarray  # (K, L) the floor from each level to the next (0: none)

    def projections(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Each row's projection on its class direction (NaN for unseen classes)."""
        codes = label_codes(self.classes, labels)
        return project_standardized(np.ascontiguousarray(X), codes, self.median, self.inv_scale, self.clip, self.mean,
                                    self.direction, np.empty(len(codes)))

    def suspicion(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Robust z-score of each row's projection, in absolute value (NaN for unseen classes)."""
        codes = label_codes(self.classes, labels)
        if not self.classes:
            return np.full(len(codes), np.nan)
        return robust_z(np.ascontiguousarray(X), codes, self.median, self.inv_scale, self.clip, self.mean, self.direction,
                        self.location, 1.0 / self.scale, np.empty(len(codes)))

    def pvalue_floor(self, scores: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Smallest p-value a row's suspicion may have in its class (the decision layer takes the larger of the two).

        The other classes' sample rows, each about its own class's mean, projected on the class's direction and
        scaled as its own rows are, show whether a tail is the class's own or the data's. Where they reach a
        suspicion about as often as the class's rows do, a row there is not rarer than the larger of the two shares
        that reach it, whatever the class's fitted tail says. In a class whose own rule cut a cluster, or that is too
        small for the rule, from the first level whose rows are a cluster of the class's own
        (:class:`~poisonguard.detectors.thresholds.OwnCluster`: rows planted in this class), the floor is 0; in a
        class it looked at and did not cut, there is no such level.
        Below a class's cut, a row's floor is also its rank among the rows below the cut. With trusted rows, a row's
        floor is at least the share of its class's trusted rows at least as far out (:func:`_trusted_floor`).
        NaN where the score is NaN. Fitted by :func:`_class_floor`. ``codes``: each row's class index
        (``label_codes``), -1 for an unknown class.
        """
        out = np.zeros(len(codes))
        for k in np.unique(codes[codes >= 0]) if self.floor_z.shape[1] else ():
            rows = np.flatnonzero(codes == k)
            out[rows] = _floor_at(self.floor_z[k], self.floor_p[k], scores[rows])
        return np.where(np.isnan(scores), np.nan, out)

    def explain(self, X: np.ndarray, labels: np.ndarray, feature_names=None, top: int = 3) -> list:
        """Per row, the features that moved its projection furthest from its class's location, as text.

        A row's projection is the sum over features of ``direction[c, j] (z_j - mean[c, j])``
        (``z`` the standardised row); the terms pushing it the way it lies from the class's
        location, largest first, ``top`` at most, in robust standard deviations of the projection.
        """
        codes = label_codes(self.classes, labels)
        Z = _Standardizer(self.median, self.inv_scale, self.clip)(np.asarray(X, dtype=np.float64))
        c = np.maximum(codes, 0)
        terms = self.direction[c] * (Z - self.mean[c]) / self.scale[c][:, None]
        side = np.sign(terms.sum(axis=1) - self.location[c] / self.scale[c])[:, None]
        out = []
        for i in range(len(codes)):
            if codes[i] < 0:
                out.append(None)
                continue
            pushed = side[i] * terms[i]
            order = [j for j in np.argsort(-pushed, kind="stable")[:top] if pushed[j] > 0]
            out.append(describe_features(feature_names, terms[i], order))
        return out

    def summary(self) -> dict:
        """Per-class facts for reports, keyed by class label (as text)."""
        return {
            str(c): {
                "rows": int(self.counts[k]),
                "top_eigenvalue": float(self.top_eigenvalue[k]),
                **({"cluster_separation": float(self.separation[k])} if np.isfinite(self.separation[k]) else {}),
                "threshold": float(self.thresholds[k]) if np.isfinite(self.thresholds[k]) else None,
            }
            for k, c in enumerate(self.classes)
        }


@dataclass(frozen=True)
class _Standardizer:
    median: np.ndarray
    inv_scale: np.ndarray
    clip: float

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return standardize_clip(np.ascontiguousarray(X), self.median, self.inv_scale, self.clip, np.empty(X.shape))


class SpectralSignatureDetector(BaseDetector):
    """Spectral-signature poison detector for tabular rows or embeddings.

    Parameters
    ----------
    contamination : "auto" or float in (0, 0.5], default "auto"
        "auto": flag only rows beyond an outlying cluster of their class (a gap or a
        density valley, see :func:`~poisonguard.detectors.thresholds.cluster_threshold`);
        a float: flag that share of all rows, the most suspicious first.
    clip : float, default 6.0
        Standardised feature values beyond +/- ``clip`` robust standard deviations are
        compressed logarithmically (``clip + log1p(excess)``).
    shrinkage : float in [0, 1], default 0.1
        Ridge shrinkage of the pooled covariance towards its average variance before whitening.
    sample_size : int, default 2000
        Rows per class kept in the bounded sample for the per-feature median and scale
        (pooled over classes) and each class's pilot mean.
    z_min : float, default 3.0
        "auto" only: a cluster is looked for beyond this robust z-score.
    min_gap : float, default 1.0
        "auto" only: width, in robust standard deviations, of an empty gap before a
        cluster; density valleys are measured in windows half as wide.
    min_cluster_size : int, default 5
        "auto" only: fewest rows past the cut for them to count as a cluster; classes with
        fewer than twice as many rows are not cut.
    max_cluster_fraction : float, default 0.35
        "auto" only: a "cluster" holding more of the class than this is not an outlier.
    min_tail_gap : float, default 3.0
        "auto" only: a gap with ``m`` rows beyond it, from ``|z| = z_in`` to ``z_out``, counts
        only when ``m * ln(z_out / z_in)`` reaches this (0: no check). The statistic is
        exponential with mean ``1 / a`` under a Pareto tail of index ``a`` wherever the gap
        lies (Renyi), so a heavy clean tail's own gaps rarely pass 3 while a trigger cluster
        does (measured on the tests' plants: 9 to 35; a style subgroup of clean digit 7: 2.5).
        Classes with fewer than 5 rows per feature-space dimension are not cut at all.
    point_mass_scale : {"fallback", "resolution"}, default "fallback"
        What a class's robust scale along its direction is when more than half its rows
        project to one point (to the histogram's resolution, 1/50 of the class's standard
        deviation): "fallback" takes the standard deviation itself (a genuine subgroup
        of binary or integer-coded features, a point mass and the rest, is then not
        extreme); "resolution" takes the grid's resolution. Image batches use
        "resolution": the background pixels where a trigger sits are exactly 0 in every
        clean image, so the clean rows are a point mass along the trigger's direction, and
        with the standard deviation as scale a trigger on a quarter of the class stays
        below ``z_min`` (measured on MNIST, benchmarks/README.md, Images).
    null_quantiles : {"edge", "interpolated"}, default "edge"
        How the decision layer reads the quantiles of the null it fits to this detector's
        suspicion per class (:meth:`~poisonguard.detectors.decision.TailNull.fit`): at the
        upper edges of its 0.05-wide bins, or interpolated inside them. Image batches use
        "interpolated": with ``point_mass_scale="resolution"`` a class that is a point mass
        along its direction is scored in units of the projection grid's resolution, its
        clean rows' quartiles lie one or two bins apart, and the edges decided the tail's
        shape (MNIST, a blend on 5% of the 7s: shape 1 for two seeds of three, the poison
        at p = 5e-4 and nothing flagged; 0 when interpolated, benchmarks/README.md, Images).
    subspace : int, default 1
        Top whitened directions of each class searched for a small cluster (1: the top
        direction alone, as Tran et al.). With more, each class's sample rows are projected
        on its ``subspace`` top directions and split by 2-means (k-means++ starts and starts
        that seed the outermost 3% along each direction); where the smaller side holds at
        least ``min_cluster_size`` rows, at most ``max_cluster_fraction`` of the class, and
        the discriminant (Fisher) direction between the two sides separates them by at
        least :data:`SUBSPACE_MIN_SEPARATION`, that direction replaces the top one (in classes
        with at least ``CUT_ROWS_PER_DIMENSION`` rows per dimension, as the cut). The cut,
        the guards and the decision layer are then the same. A model's embedding of its own
        poisoned training data learns the trigger as a feature of its own, but the class's
        top direction is often a direction of its clean rows (measured on MNIST with an MLP's
        hidden activations: the poison's is the second or third direction at 5-10%). Image
        batches use 4 (benchmarks/README.md, Images).
    seed : int, default 0
        Key of the row-id hash that selects the sample; seed of the 2-means starts.

    Attributes
    ----------
    model_ : SpectralModel
        The fitted state; ``model_.suspicion(X, labels)`` scores new rows.
    classes_ : ndarray of shape (K,)
    thresholds_ : dict
        Suspicion threshold per class (``inf``: the class is not cut).
    """

    name = "spectral"
    n_stages = 4
    reference_stages = frozenset({2})

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        "contamination": [StrOptions({"auto"}), Interval(Real, 0.0, 0.5, closed="right")],
        "clip": [Interval(Real, 0.0, None, closed="neither")],
        "shrinkage": [Interval(Real, 0.0, 1.0, closed="both")],
        "sample_size": [Interval(Integral, 2, None, closed="left")],
        "z_min": [Interval(Real, 0.0, None, closed="left")],
        "min_gap": [Interval(Real, 0.0, None, closed="neither")],
        "min_cluster_size": [Interval(Integral, 1, None, closed="left")],
        "max_cluster_fraction": [Interval(Real, 0.0, 0.5, closed="right")],
        "min_tail_gap": [Interval(Real, 0.0, None, closed="left")],
        "point_mass_scale": [StrOptions({"fallback", "resolution"})],
        "null_quantiles": [StrOptions({"edge", "interpolated"})],
        "subspace": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        *,
        contamination="auto",
        clip=6.0,
        shrinkage=0.1,
        sample_size=2000,
        z_min=3.0,
        min_gap=1.0,
        min_cluster_size=5,
        max_cluster_fraction=0.35,
        min_tail_gap=MIN_TAIL_GAP,
        point_mass_scale="fallback",
        null_quantiles="edge",
        subspace=1,
        seed=0,
    ):
        self.contamination = contamination
        self.clip = clip
        self.shrinkage = shrinkage
        self.sample_size = sample_size
        self.z_min = z_min
        self.min_gap = min_gap
        self.min_cluster_size = min_cluster_size
        self.max_cluster_fraction = max_cluster_fraction
        self.min_tail_gap = min_tail_gap
        self.point_mass_scale = point_mass_scale
        self.null_quantiles = null_quantiles
        self.subspace = subspace
        self.seed = seed

    # -- pass 0: bounded sample -> feature median / scale, pilot means ----------------------
    # -- pass 1: moments -> means, pooled covariance, whitened top directions ----------------
    # -- pass 2 (trusted reference rows, when given): their projection histograms, for the p-value floor
    # -- pass 3: projection histograms -> robust location / scale, thresholds, the p-value floor ---
    def batch_statistics(self, stage, state, X, labels, row_ids, into=None):
        stats = {} if into is None else into
        if stage == 0:
            return self.add_class_samples(stats, X, labels, row_ids)
        classes = state["classes"]
        codes = label_codes(classes, labels)
        X = np.ascontiguousarray(X)
        if stage == 1:
            st = state["standardize"]
            return add_class_moments(stats, classes, codes, X, st.median, st.inv_scale, st.clip, state["shift"])
        model: SpectralModel = state["partial"]
        sd = np.sqrt(model.top_eigenvalue)
        inv_unit = np.divide(1.0, sd, out=np.zeros_like(sd), where=sd > 0)
        bins = projection_bins(X, codes, model.median, model.inv_scale, model.clip, model.mean, model.direction, inv_unit,
                               PROJECTION_EDGES[0], 1.0 / (PROJECTION_EDGES[1] - PROJECTION_EDGES[0]),
                               len(PROJECTION_EDGES) - 1, np.empty(len(X), dtype=np.int64))
        return add_class_bins(stats, classes, codes, bins, PROJECTION_EDGES)

    def advance(self, stage, state, statistics):
        if stage == 0:
            return self._fit_standardizer(state, statistics)
        if stage == 1:
            return self._fit_directions(state, statistics)
        if stage == 2:
            return {**state, "trusted": statistics}
        return self._fit_thresholds(state, statistics)

    def _fit_standardizer(self, state, samples: dict):
        d = state["n_features"]
        rows = {label: s.result()[1] for label, s in samples.items()}
        pooled = np.concatenate(list(rows.values())) if rows else np.zeros((0, d))
        median, inv_scale = robust_feature_scale(pooled, d)
        standardize = _Standardizer(median, inv_scale, float(self.clip))
        classes = tuple(sorted(samples))
        standardized = {c: standardize(rows[c]) for c in classes}
        shift = np.array([standardized[c].mean(axis=0) for c in classes]).reshape(len(classes), d)
        # each class's sample rows about their class's mean, at most OTHER_CLASS_ROWS in all, for the other-class
        # test of a cut cluster (_fit_thresholds)
        centred = centred_sample_rows([standardized[c] for c in classes], shift)
        return {**state, "classes": classes, "standardize": standardize, "shift": shift, "centred": centred}

    def _fit_directions(self, state, moments: dict):
        d = state["n_features"]
        classes = tuple(sorted(moments))
        K = len(classes)
        counts = np.array([moments[c].count for c in classes], dtype=np.int64)
        means = np.array([moments[c].mean() for c in classes]).reshape(K, d)
        scatters = [moments[c].scatter() for c in classes]
        dof = counts.sum() - K
        pooled = sum(scatters) / dof if dof > 0 else np.eye(d)
        raw = np.linalg.eigvalsh(pooled)
        rank = int(np.sum(raw > 1e-9 * max(raw.max(), 1e-300)))  # dimensions with variance, before the ridge
        ridge = np.trace(pooled) / d
        if ridge > 0:
            pooled = (1.0 - self.shrinkage) * pooled + self.shrinkage * ridge * np.eye(d)
        else:
            pooled = np.eye(d)
        w, V = np.linalg.eigh(pooled)
        whiten = (V / np.sqrt(np.maximum(w, 1e-12 * w.max()))) @ V.T  # symmetric inverse square root
        directions = np.zeros((K, d))
        eigenvalues = np.zeros(K)
        separation = np.full(K, np.nan)
        for k, c in enumerate(classes):
            if counts[k] < 2:
                continue
            cov = whiten @ (scatters[k] / (counts[k] - 1)) @ whiten
            vals, vecs = np.linalg.eigh(cov)
            u = vecs[:, -1]
            if self.subspace > 1 and counts[k] >= CUT_ROWS_PER_DIMENSION * rank:  # as the cut: a direction fitted to
                # a few rows per dimension isolates whatever small subgroup a class holds
                found = self._cluster_direction(state["centred"][k] @ whiten @ vecs[:, ::-1][:, :self.subspace])
                if found is not None:
                    separation[k], a = found
                    u = vecs[:, ::-1][:, :self.subspace] @ a
                    u /= np.linalg.norm(u)
            v = whiten @ u
            v *= np.sign(v[np.argmax(np.abs(v))]) or 1.0  # deterministic sign
            directions[k] = v
            eigenvalues[k] = max(float(u @ cov @ u), 0.0)
        st = state["standardize"]
        partial = SpectralModel(
            classes=classes,
            median=st.median,
            inv_scale=st.inv_scale,
            clip=st.clip,
            mean=means,
            direction=directions,
            location=np.zeros(K),
            scale=np.ones(K),
            counts=counts,
            top_eigenvalue=eigenvalues,
            separation=separation,
            thresholds=np.full(K, np.inf),
            floor_z=np.zeros((K, 0)),
            floor_p=np.zeros((K, 0)),
        )
        return {**state, "partial": partial, "rank": rank}

    def _cluster_direction(self, Y: np.ndarray):
        """The best-separated small 2-means cluster of one class's sample rows ``Y`` (n, m), in its top whitened
        directions: ``(separation, a)``, ``a`` the (m,) discriminant direction from the rest to the cluster; None
        where no split has a small side that passes ``min_cluster_size``, ``max_cluster_fraction`` and
        :data:`SUBSPACE_MIN_SEPARATION`. The separation is ``(mu_s - mu_l) / (sd_s + sd_l)`` of the two sides'
        projections on ``a``, as the clustering detector's."""
        n, m = Y.shape
        if n < max(4 * self.min_cluster_size, 2 * m + 2):
            return None
        Y = Y.astype(np.float64) - Y.mean(axis=0)
        rng = np.random.RandomState(self.seed)
        seen, best = set(), None
        for init in [None] * SUBSPACE_STARTS + _tail_starts(Y):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # duplicate points: a degenerate split is skipped below
                km = KMeans(n_clusters=2, n_init=1, random_state=rng) if init is None else KMeans(n_clusters=2, init=init, n_init=1)
                labels = km.fit(Y).labels_
            small = labels == int(np.argmin(np.bincount(labels, minlength=2)))
            key = np.packbits(small).tobytes()
            if key in seen or not self.min_cluster_size <= small.sum() <= self.max_cluster_fraction * n:
                continue
            seen.add(key)
            A, B = Y[small] - Y[small].mean(axis=0), Y[~small] - Y[~small].mean(axis=0)
            within = (A.T @ A + B.T @ B) / (n - 2)
            a = np.linalg.solve(within + 1e-9 * max(np.trace(within) / m, 1e-300) * np.eye(m),
                                Y[small].mean(axis=0) - Y[~small].mean(axis=0))
            p = Y @ a
            spread = p[small].std() + p[~small].std()
            sep = (p[small].mean() - p[~small].mean()) / spread if spread > 0 else 0.0
            if sep >= SUBSPACE_MIN_SEPARATION and (best is None or sep > best[0]):
                best = (float(sep), a / np.linalg.norm(a))
        return best

    def _fit_thresholds(self, state, histograms: dict) -> SpectralModel:
        model: SpectralModel = state["partial"]
        K = len(model.classes)
        location, scale, thresholds = np.zeros(K), np.ones(K), np.full(K, np.inf)
        floors = {}  # class index -> (levels, floors), for the classes large enough to have one
        z_hist = np.zeros(len(SUSPICION_EDGES) + 1, dtype=np.int64)
        for k, c in enumerate(model.classes):
            counts = histograms[c].counts
            sd = np.sqrt(model.top_eigenvalue[k])
            loc, sc = robust_location_scale(PROJECTION_EDGES, counts, fallback_scale=np.nan)
            if np.isnan(sc):  # MAD below the grid's resolution, or most rows beyond the grid
                point_mass = self.point_mass_scale == "resolution" and counts[0] + counts[-1] <= counts.sum() / 2
                sc = PROJECTION_EDGES[1] - PROJECTION_EDGES[0] if point_mass else 1.0
            if sd > 0:
                location[k], scale[k] = loc * sd, sc * sd
            # whether the class's own cluster rule looks at it (under "auto", with enough rows per dimension)
            ruled = self.contamination == "auto" and \
                model.counts[k] >= max(2 * self.min_cluster_size, 3, CUT_ROWS_PER_DIMENSION * state["rank"])
            if self.contamination != "auto":
                z_hist += _rebin_abs_z(counts, loc, sc)
            elif ruled:
                thresholds[k] = cluster_threshold(
                    PROJECTION_EDGES,
                    counts,
                    loc,
                    sc,
                    z_min=self.z_min,
                    min_gap=self.min_gap,
                    min_size=self.min_cluster_size,
                    max_fraction=self.max_cluster_fraction,
                    min_tail_gap=self.min_tail_gap,
                )
            unit = model.direction[k] / sd if sd > 0 else model.direction[k]
            has_floor = model.counts[k] >= 2 * self.min_cluster_size  # a class too small to cut has no tail to floor either
            # the other classes' sample rows along this class's direction, projected once for the cut's check and the floor
            others = _other_class_z(state["centred"], k, unit, loc, sc) if has_floor or np.isfinite(thresholds[k]) else None
            own_cluster = OwnCluster(others, int(model.counts.sum() - model.counts[k]), int(counts.sum()),
                                     self.min_cluster_size)
            cut = thresholds[k:k + 1]
            if np.isfinite(cut[0]) and others is not None and not own_cluster(cut, _share_at_or_above(counts, loc, sc, cut))[0]:
                thresholds[k] = np.inf  # a cut stands only where its rows are a cluster of the class's own
            if has_floor:
                floors[k] = _class_floor(own_cluster, loc, sc, counts, thresholds[k], ruled)
                trusted = state.get("trusted", {}).get(c)
                if trusted is not None and trusted.total >= MIN_TRUSTED_FLOOR_ROWS:
                    floors[k] = _trusted_floor(*floors[k], trusted.counts, counts, loc, sc)
        # the model is a side input of every scoring chunk: only as many levels as some class uses (none for 5,000
        # classes of 2 rows, where padded arrays took 61 MB a copy)
        used = max((len(z) for z, _ in floors.values()), default=0)
        floor_z, floor_p = np.full((K, used), np.inf), np.zeros((K, used))
        for k, (z, p) in floors.items():
            floor_z[k, :len(z)], floor_p[k, :len(p)] = z, p
        fitted = replace(model, location=location, scale=scale, thresholds=thresholds, floor_z=floor_z, floor_p=floor_p)
        if self.contamination != "auto":
            fitted = fitted.with_threshold(upper_quantile_threshold(SUSPICION_EDGES, z_hist, self.contamination))
        return fitted


def _other_class_z(centred: list, k: int, unit_direction: np.ndarray, loc: float, sc: float) -> np.ndarray | None:
    """|z| of the other classes' sample rows (each about its own class's mean) along class k's direction, scaled as
    class k's rows are; None with too few of them (:func:`~poisonguard.detectors.thresholds.other_class_rows`)."""
    others = other_class_rows(centred, k)
    return None if others is None else np.abs(others @ unit_direction - loc) / sc


def _floor_at(levels: np.ndarray, floor: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The floor at suspicions ``z`` of a class whose floor is ``floor[i]`` from ``levels[i]`` (ascending) to the next
    level (0 where there are no levels). Below the lowest level, the lowest level's floor: the floor only grows
    towards the class's centre, and a p-value that fell there would rank a row below one further out."""
    if not len(levels):
        return np.zeros(len(z))
    return floor[np.maximum(np.searchsorted(levels, z, side="right") - 1, 0)]


def _share_at_or_above(counts: np.ndarray, loc: float, sc: float, levels: np.ndarray) -> np.ndarray:
    """Share of a class's rows (its projection histogram, rows counted at their bin's centre) with |z| >= each level."""
    z = np.abs(_CENTRES - loc) / sc
    order = np.argsort(z, kind="stable")
    beyond = np.concatenate([np.cumsum(counts[order][::-1])[::-1], [0]])  # rows at or above z[order][i]
    return beyond[np.searchsorted(z[order], levels, side="left")] / max(counts.sum(), 1)


def _class_floor(own_cluster: OwnCluster, loc: float, sc: float, counts: np.ndarray, cut: float,
                 ruled: bool) -> tuple[np.ndarray, np.ndarray]:
    """Class k's p-value floor (:meth:`SpectralModel.pvalue_floor`): ascending levels and their floors, at most
    3 FLOOR_LEVELS of each (none where nothing bounds the class).

    The levels are the largest |z| of the other classes' sample rows, of the class's own rows and of its rows below
    ``cut`` (bin centres of its projection histogram), FLOOR_LEVELS of each. From one level to the next the floor is:

    * below a finite ``cut`` (where the class's own rule cut a cluster), the share of the rows below the cut that
      reach the level: those rows are the class without the cluster, and a row among them is as rare as its rank
      among them says (a conformal p-value). On MNIST the tail fitted to a class's quantiles gave a few clean 1s far
      out along the poison's direction p-values of 1e-4 to 1e-7, and the poison, cut at p near 0, raised
      Benjamini-Hochberg's cut enough to take them (a user's embedding, 5% of the 7s: precision 0.94, 1.00 with the
      rank); in the field test's backdoored diamonds and loans batches it took the clean rows flagged from 0.17% and
      0.31% to 0.03%, and no recall;
    * the larger of the share of the other classes' rows beyond it and the share of the class's own rows at or
      beyond it, up to the first level where the class's rows are a cluster of its own (:class:`OwnCluster`), and
      0 from there on. A tail that every class has is the data's, and the class's
      own share of it is how often a clean row reaches it; the top of a planted cluster has too few rows beyond it
      for the test, but it is the same cluster. A class that its own rule looked at (``ruled``) and did not cut
      has no such level: in the field test's caravan dup3 batch, the majority class's farmers and tractor owners
      were rarer among the other class's rows (diluted by the copies), its rule did not cut them, and the tail
      fitted to its quantiles gave 191 of them p-values down to 1e-28 in memory, which the decision layer cut
      (2.97% of the clean rows; 0.22% with this floor). A class the rule could not look at (too few rows per
      dimension, or ``contamination``) keeps the level: there the other classes are the only evidence (a 3x3 patch
      on 27 of about 340 MNIST 1s, in the images' representation, was found only through it).

    ``own_cluster``: the other classes' |z| along the class's direction, and the test of a cluster.
    """
    total, others = counts.sum(), own_cluster.others
    if total == 0 or (others is None and not np.isfinite(cut)):
        return np.zeros(0), np.zeros(0)
    own = np.sort(np.abs(_CENTRES[counts > 0] - loc) / sc)
    outer = others[-FLOOR_LEVELS:] if others is not None else np.zeros(0)
    top = np.unique(np.concatenate([outer, own[-FLOOR_LEVELS:], own[own < cut][-FLOOR_LEVELS:]]))
    share = _share_at_or_above(counts, loc, sc, top)
    floor = np.zeros(len(top))
    if others is not None:
        # a class whose own rule looked and found no cluster has nothing planted to free: its tail is as common as
        # its rows say; where the rule could not look (too few rows per dimension, or a fixed share), the other
        # classes are the only evidence
        free = (np.cumsum(own_cluster(top, share)) > 0) & (np.isfinite(cut) or not ruled)
        floor = np.where(free, 0.0, np.maximum(own_cluster.reached(top) / len(others), share))
    if np.isfinite(cut):
        beyond_cut = _share_at_or_above(counts, loc, sc, np.array([cut]))[0]
        if beyond_cut < 1.0:
            floor = np.where(top < cut, np.maximum(floor, (share - beyond_cut) / (1.0 - beyond_cut)), floor)
    return top, floor


def _rebin_abs_z(counts: np.ndarray, location: float, scale: float) -> np.ndarray:
    """Move a projection histogram onto the suspicion grid.

    Each bin's rows are counted at the largest |z| inside the bin, so a threshold taken from
    the result never flags more than asked.
    """
    lo, hi = PROJECTION_EDGES[:-1], PROJECTION_EDGES[1:]
    z = np.maximum(np.abs(lo - location), np.abs(hi - location)) / scale
    idx = np.searchsorted(SUSPICION_EDGES, z, side="right")
    out = np.bincount(idx, weights=counts[1:-1], minlength=len(SUSPICION_EDGES) + 1).astype(np.int64)
    out[-1] += counts[0] + counts[-1]
    return out


def _trusted_floor(levels: np.ndarray, floor: np.ndarray, trusted: np.ndarray, counts: np.ndarray, loc: float,
                   sc: float) -> tuple[np.ndarray, np.ndarray]:
    """A class's p-value floor (:func:`_class_floor`'s ``levels`` and ``floor``) raised to the share of its trusted
    rows at least as far out (``trusted``: their projection histogram; ``counts``: the batch's), up to the first
    level the batch's rows reach :data:`~poisonguard.detectors.thresholds.OTHER_CLASS_RATIO` times as often as the
    trusted rows, and significantly so.

    Trusted rows are the class as it should be, so a row is no rarer than the share of them that reach it (a conformal
    p-value, counted at the histogram's bin centres), whatever the fitted tail or the other classes say: a subgroup
    the trusted rows hold as often is the data's (caravan's class `Yes`, 243 batch rows with 30% of the table trusted,
    too small for the cut rule: its boat owners, which the other class lacks, were 9 of the clean batch's rows
    flagged, and 1 with this floor). A tail the batch holds far more often than the trusted rows is new: there the
    floor stays as it was (a backdoor on 3% of diamonds, which the trusted rows reach at a share of 1e-3 or so, lost a
    quarter of its rows to a floor that ignored this). Beyond the farthest trusted row they say nothing either.
    """
    own = np.sort(np.abs(_CENTRES[trusted > 0] - loc) / sc)[-FLOOR_LEVELS:]
    beyond = own[-1:] + (PROJECTION_EDGES[1] - PROJECTION_EDGES[0]) / sc  # where the trusted share falls to 0
    z = np.unique(np.concatenate([levels, own, beyond]))
    before = _floor_at(levels, floor, z)
    share = _share_at_or_above(trusted, loc, sc, z)
    n = int(trusted.sum())
    new = np.cumsum(rare_elsewhere(np.rint(share * n).astype(np.int64), n, _share_at_or_above(counts, loc, sc, z))) > 0
    return z, np.where(new, before, np.maximum(before, share))
