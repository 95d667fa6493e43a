"""The detector contract: combinable statistics -> fit -> numba scoring, and two drivers.

A detector describes its fit as ``n_stages`` passes over the data. In pass ``k`` every
batch is summarised per class by :meth:`BaseDetector.batch_statistics` (combinable
statistics from :mod:`poisonguard.detectors.statistics`), the summaries are merged, and
:meth:`BaseDetector.advance` turns the merged summaries into the state for the next pass.
The state after the last pass is the fitted *model*; ``model.suspicion(X, labels)`` scores
rows with a numba kernel, and ``model.thresholds_for(labels)`` gives each row's threshold.

Two drivers run the same three steps:

* the scikit-learn-style estimator (:meth:`BaseDetector.fit`), in memory, chunk by chunk;
* the Beam stage in :mod:`poisonguard.pipelines` (``CombinePerKey`` per pass, the model
  as a side input to a batched scoring ``ParDo``).

Some passes read the trusted *reference* rows instead of the data (``reference_stages``):
a detector that measures each row's effect on a trusted set (influence) accumulates the
reference statistics there. Without reference rows such a pass receives no statistics and
the detector falls back to what it can do without them.

Every model's ``suspicion`` is in robust standard-deviation units of its class's score
distribution on the fitted rows (0 = typical, 3 = three robust sd more suspicious than
typical), so the scores of different detectors are comparable and the ensemble can
combine them; ``model.counts`` holds the rows per class the fit saw.

Scores follow scikit-learn's outlier convention: ``score_samples`` is higher for more
normal rows, ``decision_function = threshold - suspicion`` is negative for flagged rows and
``predict`` returns -1 (flagged) or +1. :meth:`BaseDetector.suspicion` is the
poison-oriented view: higher is more suspicious.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from numbers import Integral

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from ..schemas import ConfigError, row_hash
from ._sklearn import Interval
from ._kernels import standardize_grouped
from .statistics import ClassSample, HashSample, Histogram, LabelledSample, Moments, group_rows
from .thresholds import SUSPICION_EDGES, cut_pvalue_ceiling, upper_quantile_threshold

#: Rows per chunk when the estimator walks an in-memory array (bounds temporary memory).
CHUNK_ROWS = 65536


def group_by_label(labels: np.ndarray):
    """Yield ``(label, row_indices)`` per distinct label, labels as plain Python values, sorted."""
    if len(labels) == 0:
        return
    codes, uniques = pd.factorize(labels, sort=True)
    for k, rows in group_rows(codes):
        label = uniques[k]
        yield (label.item() if isinstance(label, np.generic) else label), rows


#: Statistic keys of a stratified sample: the pooled sample, and ``(SAMPLE_FLOOR, label)`` per class.
SAMPLE_POOL, SAMPLE_FLOOR = "__sample_pool__", "__sample_floor__"


def add_stratified_sample(stats: dict, X: np.ndarray, hashes: np.ndarray, labels: np.ndarray, size: int,
                          class_size: int) -> dict:
    """Add a batch to a stratified hash sample: the ``size`` rows of smallest hash over all classes
    (the data's class proportions) and, per class, its ``class_size`` rows of smallest hash and its row count."""
    stats.setdefault(SAMPLE_POOL, LabelledSample(size, X.shape[1])).add_batch(X, hashes, labels)
    for label, rows in group_by_label(labels):
        stats.setdefault((SAMPLE_FLOOR, label), ClassSample(class_size, X.shape[1])).add_batch(X, hashes, rows)
    return stats


def class_floors(samples: dict) -> dict:
    """``{label: ClassSample}``: the per-class samples among a pass's statistics (:func:`add_stratified_sample`),
    whatever other statistics the detector keeps beside them."""
    return {key[1]: s for key, s in samples.items() if isinstance(key, tuple) and key[0] == SAMPLE_FLOOR}


def stratified_sample(samples: dict, n_features: int) -> tuple[tuple, np.ndarray, np.ndarray, np.ndarray]:
    """``(classes, rows, codes, counts)`` of a merged stratified sample (:func:`add_stratified_sample`).

    ``rows`` (n, d) are the pooled and per-class samples together, each row once, sorted by
    hash; ``codes`` their class indices in the sorted ``classes``; ``counts`` (K,) rows per
    class over all batches.
    """
    floors = class_floors(samples)
    classes = tuple(sorted(floors))
    parts = [(h, rows, label_codes(classes, labels)) for h, rows, labels in
             ([samples[SAMPLE_POOL].result()] if SAMPLE_POOL in samples else [])]
    for k, c in enumerate(classes):
        h, rows = floors[c].result()
        parts.append((h, rows, np.full(len(h), k, dtype=np.int64)))
    if parts:
        _, first = np.unique(np.concatenate([h for h, _, _ in parts]), return_index=True)  # sorted by hash, each row once
        rows = np.concatenate([r for _, r, _ in parts])[first]
        codes = np.concatenate([c for _, _, c in parts])[first]
    else:
        rows, codes = np.zeros((0, n_features)), np.zeros(0, dtype=np.int64)
    return classes, rows, codes, np.array([floors[c].count for c in classes], dtype=np.int64)


def describe_features(feature_names, values: np.ndarray, order) -> str | None:
    """``"carat +18.6, price +3.1"``: features ``order`` with their ``values`` (None when ``order`` is empty)."""
    return ", ".join(f"{feature_names[j] if feature_names is not None else f'x[{j}]'} {values[j]:+.1f}" for j in order) or None


def _row_ids(ids, n: int, name: str, rows: str) -> np.ndarray:
    """The ids given to ``fit`` as ``name`` for the ``n`` rows of ``rows``, or their positions ``0..n-1``."""
    ids = np.arange(n) if ids is None else np.asarray(ids)
    if len(ids) != n:
        raise ConfigError(f"{name} has {len(ids)} entries but {rows} has {n} rows")
    return ids


def label_codes(classes, labels: np.ndarray) -> np.ndarray:
    """Index of each label in ``classes``; -1 for a label the model has not seen."""
    return pd.Index(list(classes)).get_indexer(pd.Index(labels)).astype(np.int64)


class BaseDetector(OutlierMixin, BaseEstimator):
    """Shared driver code; subclasses define the stages, the model and ``name``."""

    #: Short name used for the ``score_<name>`` column and on the command line.
    name: str = ""
    #: Number of passes over the data the fit needs.
    n_stages: int = 1
    #: Passes that read the trusted reference rows instead of the data.
    reference_stages: frozenset = frozenset()
    #: Whether the detector needs real class labels (False: ``y=None`` means one class).
    requires_labels: bool = False
    #: Whether the fit needs trusted reference rows (it refuses without them).
    requires_reference: bool = False
    #: Whether the model gives its own p-values (``model.scores_and_pvalues(X, labels)``, both from
    #: one evaluation); otherwise the decision layer fits a null to the score (:mod:`~poisonguard.detectors.decision`).
    has_pvalues: bool = False
    #: How the decision layer reads the quantiles of the null it fits to the score: "edge" (each bin's upper edge)
    #: or "interpolated" (:meth:`~poisonguard.detectors.decision.TailNull.fit`); spectral makes it a parameter.
    null_quantiles: str = "edge"

    _parameter_constraints: dict = {
        "seed": [Interval(Integral, 0, None, closed="left")],
    }

    # -- the contract, shared by both drivers ---------------------------------------------
    def initial_state(self, n_features: int):
        """State before the first pass (parameters validated)."""
        self._validate_params()
        return {"n_features": n_features}

    def batch_statistics(self, stage: int, state, X: np.ndarray, labels: np.ndarray, row_ids: np.ndarray,
                         into: dict | None = None) -> dict:
        """Summaries of one batch for pass ``stage``: ``{key: statistic}``.

        Keys are any picklable values (usually class labels); statistics have ``merge``.
        ``row_ids`` (one per row) select deterministic samples via :meth:`row_hashes`.
        With ``into``, the batch is added to those statistics (created as needed) and
        ``into`` is returned: the in-memory driver accumulates that way, which is the same
        as merging per-batch statistics but skips work a sample would discard.
        """
        raise NotImplementedError

    def advance(self, stage: int, state, statistics: dict):
        """Turn merged statistics of pass ``stage`` into the next state (the model after the last)."""
        raise NotImplementedError

    def row_hashes(self, row_ids) -> np.ndarray:
        """Keyed hashes of row ids that select this detector's bounded samples."""
        return row_hash(row_ids, self.seed, purpose=f"{self.name}-sample")

    def add_class_samples(self, stats: dict, X: np.ndarray, labels: np.ndarray, row_ids) -> dict:
        """Add a batch to per-class bounded samples (``{label: HashSample(self.sample_size)}``)."""
        hashes = self.row_hashes(row_ids)
        for label, rows in group_by_label(labels):
            if label not in stats:
                stats[label] = HashSample(self.sample_size, X.shape[1])
            stats[label].add_batch(X, hashes, rows)
        return stats

    # -- in-memory driver ----------------------------------------------------------------
    def fit(self, X, y=None, *, row_ids=None, X_reference=None, y_reference=None, reference_row_ids=None):
        """Fit on rows ``X`` (N, d) with class labels ``y`` (N,).

        ``y=None`` treats all rows as one class (detectors that need labels refuse).
        ``row_ids`` (N,), optional, identify rows for the deterministic bounded samples; by
        default ``0..N-1``. Passing the pipeline's row ids reproduces its result exactly.
        ``X_reference``, ``y_reference``: trusted rows for the passes in
        ``reference_stages`` (ignored by detectors without such passes); ``reference_row_ids``
        their ids, by default ``0..M-1``. Trusted rows are sampled by id as well (``novelty``
        keeps 5,000 a class), so passing the ids the pipeline reads from ``--reference``
        reproduces its result where a class has more trusted rows than that.
        """
        self._validate_params()
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=1)
        y = self._check_labels(y, len(X))
        ids = _row_ids(row_ids, len(X), "row_ids", "X")
        reference = None
        if X_reference is not None:
            X_ref = validate_data(self, X_reference, dtype=[np.float64, np.float32], reset=False)
            ref_ids = _row_ids(reference_row_ids, len(X_ref), "reference_row_ids", "X_reference")
            reference = (X_ref, self._check_labels(y_reference, len(X_ref)), ref_ids)
        elif self.requires_reference:
            raise ConfigError(f"{self.name}: the fit needs trusted reference rows (X_reference, y_reference)")
        state = self.initial_state(X.shape[1])
        for stage in range(self.n_stages):
            rows = reference if stage in self.reference_stages else (X, y, ids)
            merged: dict = {}
            if rows is not None:
                for start in range(0, len(rows[0]), CHUNK_ROWS):
                    part = slice(start, start + CHUNK_ROWS)
                    self.batch_statistics(stage, state, rows[0][part], rows[1][part], rows[2][part], into=merged)
            state = self.advance(stage, state, merged)
        self._set_model(state)
        return self

    def _set_model(self, model) -> None:
        self.model_ = model
        self.classes_ = np.asarray(model.classes, dtype=object)
        self.thresholds_ = dict(zip(model.classes, model.thresholds.tolist()))

    def calibrate(self, X, y, *, target_fpr: float = 0.01):
        """Set one threshold for all classes from trusted reference rows.

        The threshold is the smallest value that at most ``target_fpr`` of the reference
        rows exceed (to a resolution of 0.01). Rows of classes the model has not seen are
        ignored.
        """
        check_is_fitted(self, "model_")
        hist = Histogram(SUSPICION_EDGES).add_batch(self._chunked("decision_values", X, y))
        self._set_model(self.model_.with_threshold(calibrated_threshold(hist, target_fpr)))
        return self

    def _chunked(self, method: str, X, y) -> np.ndarray:
        """``model_.<method>(X, labels)`` over validated rows, chunk by chunk."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        y = self._check_labels(y, len(X))
        out = np.empty(len(X), dtype=np.float64)
        for start in range(0, len(X), CHUNK_ROWS):
            part = slice(start, start + CHUNK_ROWS)
            out[part] = getattr(self.model_, method)(X[part], y[part])
        return out

    def suspicion(self, X, y=None) -> np.ndarray:
        """Per-row suspicion (N,), higher = more suspicious; NaN for unseen classes."""
        return self._chunked("suspicion", X, y)

    def score_samples(self, X, y=None) -> np.ndarray:
        """Opposite of :meth:`suspicion`: higher = more normal (scikit-learn convention)."""
        return -self.suspicion(X, y)

    def decision_function(self, X, y=None) -> np.ndarray:
        """``threshold - suspicion`` (the margin): negative for flagged rows."""
        return self._chunked("margin", X, y)

    def predict(self, X, y=None) -> np.ndarray:
        """-1 for rows flagged as suspicious, +1 otherwise."""
        return np.where(self.decision_function(X, y) < 0, -1, 1)

    def fit_predict(self, X, y=None, **kwargs) -> np.ndarray:
        return self.fit(X, y, **kwargs).predict(X, y)

    def screen(self, model, X: np.ndarray, labels: np.ndarray) -> Screened:
        """Score a batch against a fitted ``model`` and decide (the pipeline's scoring step)."""
        suspicion = model.suspicion(X, labels)
        thresholds = model.thresholds_for(labels)
        flagged = suspicion > thresholds
        reasons = np.full(len(X), None, dtype=object)
        for i in np.flatnonzero(flagged):
            reasons[i] = f"{self.name}: suspicion {suspicion[i]:.2f} > threshold {thresholds[i]:.2f} of class {str(labels[i])!r}"
        return Screened({self.name: suspicion}, suspicion, flagged, reasons)

    def _check_labels(self, y, n_rows: int) -> np.ndarray:
        if y is None:
            if self.requires_labels:
                raise ConfigError(f"{self.name}: y (class labels) is required")
            classes = getattr(self, "classes_", None)
            if classes is not None and len(classes) > 1:
                raise ConfigError(f"y (class labels) is required: the detector was fitted on {len(classes)} classes")
            return np.full(n_rows, 0 if classes is None or len(classes) == 0 else classes[0], dtype=object)
        y = column_or_1d(y, warn=False)
        if len(y) != n_rows:
            raise ConfigError(f"y has {len(y)} labels but X has {n_rows} rows")
        if pd.isna(y).any():
            raise ConfigError("y contains missing labels")
        return y


class PerClassModel:
    """Mixin for fitted models (frozen dataclasses) with ``classes`` (K,) and ``thresholds`` (K,).

    Subclasses define ``suspicion(X, labels)``; rows of classes the fit did not see get an
    infinite threshold (never flagged).
    """

    def thresholds_for(self, labels: np.ndarray) -> np.ndarray:
        codes = label_codes(self.classes, labels)
        return np.where(codes >= 0, self.thresholds[np.maximum(codes, 0)], np.inf) if len(self.classes) else np.full(len(codes), np.inf)

    def margin(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``threshold - suspicion``: negative for flagged rows."""
        return self.thresholds_for(labels) - self.suspicion(X, labels)

    def decision_values(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """What the thresholds cut (a threshold set on trusted rows is set on these): the suspicion."""
        return self.suspicion(X, labels)

    def with_threshold(self, threshold: float):
        """The same model with one threshold for every class (calibration)."""
        return replace(self, thresholds=np.full(len(self.classes), float(threshold)))


class CutCeilingModel(PerClassModel):
    """Mixin for per-class models whose "auto" cut bounds the p-values of the rows beyond it (the clustering and
    robust spectral detectors): ``below_cut`` (K,) counts each class's rows below its cut (0: not cut)."""

    def pvalue_ceiling(self, scores: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Largest p-value of a row beyond its class's cut: its conformal rank among the rows below the cut
        (:func:`~poisonguard.detectors.thresholds.cut_pvalue_ceiling`); the decision layer takes the smaller."""
        return cut_pvalue_ceiling(scores, codes, self.thresholds, self.below_cut)

    def with_threshold(self, threshold: float):
        """One threshold for every class (calibration); the cuts' p-value ceilings go with the cuts."""
        return replace(self, thresholds=np.full(len(self.classes), float(threshold)),
                       below_cut=np.zeros_like(self.below_cut))


class OwnPValueModel:
    """Mixin for fitted models that give their own p-values (``scores_and_pvalues``): the decision layer cuts, so
    the legacy per-detector threshold is infinite (nothing is flagged by it)."""

    def thresholds_for(self, labels: np.ndarray) -> np.ndarray:
        return np.full(len(labels), np.inf)

    def margin(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return self.thresholds_for(labels) - self.suspicion(X, labels)

    def decision_values(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return self.suspicion(X, labels)

    def with_threshold(self, threshold: float):
        return replace(self, thresholds=np.full(len(self.classes), float(threshold)))

    def scores_pvalues_ranking(self, X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(scores, pvalues, ranking p-values)`` from one evaluation of the model: the decision layer cuts the
        p-values and ranks by the ranking p-values (the same here; the label detector ranks by its p-value before
        the per-class calibration)."""
        scores, pvalues = self.scores_and_pvalues(X, labels)
        return scores, pvalues, pvalues

    def tie_scores(self, scores: np.ndarray, pvalues: np.ndarray) -> np.ndarray:
        """Per row, in [0, 1], higher = more suspicious: what orders rows whose p-values tie (one minus the p-value
        here; a model whose score is finer than its p-value says so)."""
        return 1.0 - pvalues


@dataclass(frozen=True)
class Screened:
    """A scored batch: per-detector suspicion, the combined suspicion, decisions and reasons."""

    columns: dict  # detector name -> (N,) suspicion
    suspicion: np.ndarray  # (N,) combined suspicion
    flagged: np.ndarray  # (N,) bool
    reasons: np.ndarray  # (N,) object: why a flagged row was flagged, None otherwise


def add_class_moments(stats: dict, classes: tuple, codes: np.ndarray, X: np.ndarray, median: np.ndarray,
                      inv_scale: np.ndarray, clip: float, shift: np.ndarray) -> dict:
    """Add a batch to per-class second moments of standardised rows about ``shift[class]``.

    Rows are standardised (median / scale, log-compressed beyond ``clip``) straight into
    class-grouped order, so each class is one contiguous slice and one BLAS call. The
    moments are taken at the input's precision: float32 rows (accurate to ~1e-7 anyway)
    use single-precision BLAS, half the time; the accumulators stay float64.
    """
    X = np.ascontiguousarray(X)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(classes)))]).astype(np.int64)
    buffer = np.empty(X.shape, dtype=np.float32 if X.dtype == np.float32 else np.float64)
    grouped = standardize_grouped(X, codes, bounds, median, inv_scale, clip, shift, buffer)
    for k in np.flatnonzero(np.diff(bounds)):
        if classes[k] not in stats:
            stats[classes[k]] = Moments(shift[k])
        stats[classes[k]].add_shifted_batch(grouped[bounds[k]:bounds[k + 1]])
    return stats


def robust_feature_scale(rows: np.ndarray, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature median and inverse robust scale of sample ``rows`` (n, d).

    The scale is the inter-quartile range / 1.349 (the standard deviation for normal data),
    else the standard deviation where the IQR is 0, else 1. No rows: median 0, scale 1.
    """
    if len(rows) == 0:
        return np.zeros(n_features), np.ones(n_features)
    q1, median, q3 = np.percentile(rows, [25, 50, 75], axis=0)
    scale = (q3 - q1) / 1.349
    sd = rows.std(axis=0)
    scale = np.where(scale > 0, scale, np.where(sd > 0, sd, 1.0))
    return median, 1.0 / scale


def calibrated_threshold(histogram: Histogram, target_fpr: float) -> float:
    """Threshold that at most ``target_fpr`` of the reference rows in ``histogram`` exceed."""
    if not 0.0 < target_fpr < 1.0:
        raise ConfigError(f"target FPR must be in (0, 1), got {target_fpr}")
    if histogram.total == 0:
        raise ConfigError("no reference rows of a known class to calibrate on")
    return upper_quantile_threshold(histogram.edges, histogram.counts, target_fpr)
