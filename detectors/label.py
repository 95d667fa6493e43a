"""Confident learning (Northcutt, Jiang & Chuang, JAIR 2021) as combinable passes: label issues at pipeline scale.

Notation: N rows, d features, K classes; ``pi(x)`` (K,) a row's out-of-fold class
probabilities, ``c`` its given label, ``pi_c`` its self-confidence.

A flipped label sits among rows of another class: a classifier that did not train on the
row gives its label a low probability. cleanlab computes that from out-of-fold
probabilities of every row, held in memory in one process. Here:

1. **A bounded, hash-selected sample.** Pass 0 keeps the ``sample_size`` rows with the
   smallest keyed hash of their row id (the class proportions of the data), plus per class
   its ``min_class_sample`` smallest-hash rows, so a rare class is represented.
2. **K hash folds, out of fold for every row.** A row's fold is a hash of its feature
   values (``n_folds`` folds), so it depends only on the row: fold model ``f`` (scikit-
   learn's ``HistGradientBoostingClassifier`` by default, which takes missing values as
   they are) is fitted on the sample rows of the other folds, and every row, in the sample
   or not, is scored by the model of its own fold, which never saw it, nor any exact copy
   of it (a copy has the same fold). The model is small (K fold models) and a row's score
   depends only on the model and the row, never on the batch.
3. **The score** is cleanlab's self-confidence label-quality score ``pi_c``
   (``cleanlab.rank.get_label_quality_scores(method="self_confidence")``); ``suspicion`` is
   ``1 - pi_c``.
4. **A p-value** for the decision layer (:mod:`~poisonguard.detectors.decision`): if the
   given label were drawn from the model's own class probabilities, the chance of a label
   at least as improbable as ``c`` is ``p = sum of pi_j over classes j with pi_j <= pi_c``;
   for calibrated probabilities this is a valid p-value (``P(p <= t) <= t``). Probabilities
   are smoothed towards uniform first (``pi' = (1 - eps) pi + eps / K``, ``eps =
   smoothing``), so an overconfident model cannot give a clean but unusual row a vanishing
   p-value: no row's p-value is below ``smoothing / K``.
   Real models are not calibrated in the far tail, and real labels are not a function of
   the features: on the loans table (grades), 150-210 clean rows of every class get
   ``p < 1e-3`` out of fold, 100 times more than calibration allows, and a rare class the
   model under-predicts has most of its rows in doubt. So each class's p-values are
   *calibrated* on the class's own rows: ``p' = max(p, F_c(p))``, where ``F_c(t)`` is the
   share of the class's sample rows with ``p <= t`` out of fold (read on a grid of ``t``
   from 1 to 1e-6, 0.1 apart in ``-log10 t``, at the grid point at or above ``p``, so it
   never undercounts); with trusted reference rows, of those (a third pass), which no
   fold model trained on and which hold none of the batch's label noise. No class then
   has more than its share ``t`` of sample rows at ``p' <= t``, whatever the model, so the
   decision layer's cut cannot take a class's ordinary doubtful rows. The transform is
   monotone within a class and leaves p-values alone where the model is calibrated, so
   it keeps the ranking (a multiplicative factor of 100 instead made most rows' p-values 1
   and cost the flips 0.04-0.10 of ROC-AUC on credit, cells and loans).
5. **Per-class thresholds and the confident joint** (the estimated noise matrix for the
   report) are counts and sums: the thresholds ``t_j`` (mean self-confidence of class j)
   come from the sample's out-of-fold probabilities, the confident joint ``C[given][true]``
   is counted over every row in pass 1 (a row counts for the most probable class ``j``
   with ``pi_j >= t_j``), and both combine across workers; the joint is calibrated to the
   class counts as in cleanlab's ``calibrate_confident_joint``.

Memory: the sample (at most ``sample_size + K min_class_sample`` rows) and K fold models,
independent of N. Passes: 2 (sample; confident joint), and a third over trusted reference rows
when given (their p-values, for the calibration).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from numbers import Integral, Real

import numpy as np

from ..schemas.hashing import value_hash
from ._sklearn import Interval
from .base import BaseDetector, add_stratified_sample, label_codes, stratified_sample
from .decision import LOGP_EDGES, to_log_p
from .statistics import Histogram
from .thresholds import counts_at_or_above


def feature_folds(X: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold of each row from a hash of its feature values (:func:`~poisonguard.schemas.hashing.value_hash`)."""
    return (value_hash(X, seed) % np.uint64(n_folds)).astype(np.int64)


def fit_fold_models(rows: np.ndarray, target: np.ndarray, n_folds: int, seed: int, **options) -> list:
    """One ``HistGradientBoostingClassifier`` per hash fold, each fitted on the rows of the other folds
    (:func:`feature_folds`); None for a fold whose other folds hold a single class. ``options`` go to the model."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    folds = feature_folds(rows, n_folds, seed)
    models = []
    for f in range(n_folds):
        train = folds != f
        models.append(None if len(np.unique(target[train])) < 2 else
                      HistGradientBoostingClassifier(random_state=seed, **options).fit(rows[train], target[train]))
    return models


#: Grid of ``-log10 t`` on which a class's share ``F_c(t)`` of p-values at or below ``t`` is kept.
CALIBRATION_GRID = np.round(np.arange(0.0, 6.05, 0.1), 10)


def calibration_curve(log_p_counts: np.ndarray) -> np.ndarray:
    """``F(t)`` at ``t = 10^-CALIBRATION_GRID`` from a histogram of ``-log10 p`` on ``LOGP_EDGES`` (zeros when empty).

    Read at the grid edge at or below ``-log10 t``, so it counts at least every p-value at or below ``t``.
    """
    total = log_p_counts.sum()
    if total == 0:
        return np.zeros(len(CALIBRATION_GRID))
    at_least = counts_at_or_above(log_p_counts)
    m = np.floor(CALIBRATION_GRID / (LOGP_EDGES[1] - LOGP_EDGES[0]) + 1e-9).astype(int)
    return at_least[m] / total


def calibrate_pvalues(p: np.ndarray, curves: np.ndarray) -> np.ndarray:
    """``max(p, F(t))`` per row, ``t`` the grid point at or above ``p``; ``curves`` (N, G) each row's class curve."""
    L = to_log_p(p)
    g = np.clip(np.floor(np.nan_to_num(L, nan=0.0) / (CALIBRATION_GRID[1] - CALIBRATION_GRID[0]) + 1e-9).astype(int),
                0, len(CALIBRATION_GRID) - 1)
    return np.where(np.isnan(p), np.nan, np.maximum(p, curves[np.arange(len(p)), g]))


def pvalue_from_probabilities(P: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``sum of P[i, j] over j with P[i, j] <= P[i, codes[i]]`` per row (NaN for codes < 0)."""
    known = codes >= 0
    own = P[np.arange(len(P)), np.maximum(codes, 0)]
    p = np.where(P <= own[:, None], P, 0.0).sum(axis=1)
    return np.where(known, np.minimum(p, 1.0), np.nan)


@dataclass(frozen=True)
class LabelModel:
    """Fitted state of :class:`ConfidentLabelDetector`: the fold models and the confident-learning facts."""

    classes: tuple
    models: tuple  # n_folds fitted classifiers (None where a fold had one class or no rows)
    fallback: np.ndarray  # (K,) class shares of the sample: a fold without a model predicts these
    n_folds: int
    seed: int
    smoothing: float
    counts: np.ndarray  # (K,) rows per class seen by the fit
    sample_rows: np.ndarray  # (K,) sample rows per class
    self_confidence: np.ndarray  # (K,) t_j: mean out-of-fold self-confidence of class j on the sample
    calibration: np.ndarray  # (K, G): F_c(t) on CALIBRATION_GRID, from the sample or trusted rows (see the module docstring)
    joint: np.ndarray  # (K, K) confident joint C[given, true], counted over every row
    thresholds: np.ndarray  # (K,) legacy per-detector cut (inf); decisions are the decision layer's
    calibrated_on: tuple = ()  # per class: "sample" or "reference" (trusted rows)

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """Out-of-fold class probabilities (N, K), each row from its own fold's model, smoothed."""
        K = len(self.classes)
        X = np.asarray(X, dtype=np.float64)
        P = np.tile(self.fallback, (len(X), 1))
        folds = feature_folds(X, self.n_folds, self.seed)
        for f, model in enumerate(self.models):
            rows = np.flatnonzero(folds == f)
            if model is None or len(rows) == 0:
                continue
            proba = model.predict_proba(X[rows])
            P[rows] = 0.0
            P[np.ix_(rows, model.classes_)] = proba
        return (1.0 - self.smoothing) * P + self.smoothing / max(K, 1)

    def self_confidence_scores(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """cleanlab's self-confidence label-quality score ``pi_c`` (higher = more likely correct); NaN for unseen classes."""
        return self._evaluate(X, labels)[0]

    def suspicion(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return 1.0 - self._evaluate(X, labels)[0]

    def pvalues(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Per-row p-value, calibrated on the class's own rows (see :attr:`calibration`)."""
        return self._evaluate(X, labels)[1]

    def scores_and_pvalues(self, X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(suspicion, pvalues)`` from one evaluation of the fold models (what the decision layer calls)."""
        own, p = self._evaluate(X, labels)
        return 1.0 - own, p

    def _evaluate(self, X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Self-confidence ``pi_c`` and calibrated p-value per row, from one ``probabilities`` call."""
        codes = label_codes(self.classes, labels)
        P = self.probabilities(X)
        own = np.where(codes >= 0, P[np.arange(len(P)), np.maximum(codes, 0)], np.nan)
        p = pvalue_from_probabilities(P, codes)
        return own, (calibrate_pvalues(p, self.calibration[np.maximum(codes, 0)]) if len(self.classes) else p)

    def thresholds_for(self, labels: np.ndarray) -> np.ndarray:
        return np.full(len(labels), np.inf)

    def margin(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return self.thresholds_for(labels) - self.suspicion(X, labels)

    def with_threshold(self, threshold: float) -> LabelModel:
        return replace(self, thresholds=np.full(len(self.classes), float(threshold)))

    def noise_matrix(self) -> np.ndarray:
        """Estimated ``P(given = i, true = j)``: the confident joint calibrated to the class counts, normalised."""
        C = self.joint.astype(float)
        row = C.sum(axis=1, keepdims=True)
        C = np.divide(C, row, out=np.zeros_like(C), where=row > 0) * self.counts[:, None]
        return C / max(C.sum(), 1.0)

    def summary(self) -> dict:
        joint = self.noise_matrix()
        names = [str(c) for c in self.classes]
        return {
            str(c): {
                "rows": int(self.counts[k]),
                "sample_rows": int(self.sample_rows[k]),
                "mean_self_confidence": float(self.self_confidence[k]),
                "rows_at_p_below_0.001": float(self.calibration[k][int(np.flatnonzero(CALIBRATION_GRID == 3.0)[0])]),
                "calibrated_on": self.calibrated_on[k] if self.calibrated_on else "sample",
                "estimated_label_noise": float(1.0 - joint[k, k] / joint[k].sum()) if joint[k].sum() > 0 else None,
                "estimated_true_classes": {names[j]: round(float(joint[k, j] / joint[k].sum()), 4)
                                           for j in range(len(names)) if joint[k].sum() > 0 and joint[k, j] > 0},
            }
            for k, c in enumerate(self.classes)
        }


class _Joint:
    """Confident-joint counts (K, K) and rows per class (combinable)."""

    __slots__ = ("counts",)

    def __init__(self, K: int):
        self.counts = np.zeros((K, K), dtype=np.int64)

    def merge(self, other: _Joint) -> _Joint:
        self.counts += other.counts
        return self


_JOINT, _TRUSTED = "__label_joint__", "__label_trusted__"
#: Fewest trusted rows of a class for its calibration to come from them rather than the sample.
MIN_TRUSTED_ROWS = 50


class ConfidentLabelDetector(BaseDetector):
    """Confident-learning label-issue detector: out-of-fold class probabilities on a hash sample.

    Parameters
    ----------
    sample_size : int, default 50000
        Rows of the pooled hash sample the fold models are fitted on.
    min_class_sample : int, default 200
        Each class also contributes its smallest-hash rows up to this many.
    n_folds : int, default 3
        Hash folds (each model trains on the other folds of the sample).
    boosting_rounds : int, default 100
        Boosting iterations of each ``HistGradientBoostingClassifier``.
    smoothing : float in [0, 0.5), default 0.001
        Probabilities are mixed with the uniform distribution by this weight before the
        p-value, which bounds each row's p-value below by ``smoothing / K``.
    seed : int, default 0
        Key of the row-id hash (the sample), the fold hash and the models' random state.
    """

    name = "label"
    n_stages = 3
    reference_stages = frozenset({2})
    requires_labels = True
    has_pvalues = True

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        "sample_size": [Interval(Integral, 10, None, closed="left")],
        "min_class_sample": [Interval(Integral, 1, None, closed="left")],
        "n_folds": [Interval(Integral, 2, None, closed="left")],
        "boosting_rounds": [Interval(Integral, 1, None, closed="left")],
        "smoothing": [Interval(Real, 0.0, 0.5, closed="left")],
    }

    def __init__(self, *, sample_size=50000, min_class_sample=200, n_folds=3, boosting_rounds=100, smoothing=0.001, seed=0):
        self.sample_size = sample_size
        self.min_class_sample = min_class_sample
        self.n_folds = n_folds
        self.boosting_rounds = boosting_rounds
        self.smoothing = smoothing
        self.seed = seed

    # -- pass 0: the pooled and per-class samples, row counts -> fold models, thresholds
    # -- pass 1: the confident joint over every row
    # -- pass 2 (trusted reference rows, when given): their p-values per class -> calibration
    def batch_statistics(self, stage, state, X, labels, row_ids, into=None):
        stats = {} if into is None else into
        if stage == 2:
            model: LabelModel = state
            codes = label_codes(model.classes, labels)
            L = to_log_p(pvalue_from_probabilities(model.probabilities(X), codes))
            for k in np.unique(codes[codes >= 0]):
                stats.setdefault((_TRUSTED, model.classes[k]), Histogram(LOGP_EDGES)).add_batch(L[codes == k])
            return stats
        if stage == 0:
            return add_stratified_sample(stats, X, self.row_hashes(row_ids), labels, self.sample_size, self.min_class_sample)
        model: LabelModel = state["partial"]
        codes = label_codes(model.classes, labels)
        P = model.probabilities(X)
        confident = np.where(P >= model.self_confidence[None, :], P, -1.0)
        true = np.argmax(confident, axis=1)
        ok = (codes >= 0) & (confident.max(axis=1) >= 0)
        joint = stats.setdefault(_JOINT, _Joint(len(model.classes)))
        np.add.at(joint.counts, (codes[ok], true[ok]), 1)
        return stats

    def advance(self, stage, state, statistics):
        if stage == 0:
            return {**state, "partial": self._fit_models(state, statistics)}
        if stage == 2:
            return self._calibrate_on_trusted_rows(state, statistics)
        model: LabelModel = state["partial"]
        joint = statistics.get(_JOINT)
        return replace(model, joint=joint.counts if joint is not None else np.zeros_like(model.joint))

    def _calibrate_on_trusted_rows(self, model: LabelModel, statistics: dict) -> LabelModel:
        """A class with enough trusted rows takes its calibration from them: rows no fold model
        trained on, and free of the batch's label noise, which the sample's calibration has to absorb."""
        calibration = model.calibration.copy()
        sources = list(model.calibrated_on)
        for k, c in enumerate(model.classes):
            hist = statistics.get((_TRUSTED, c))
            if hist is not None and hist.total >= MIN_TRUSTED_ROWS:
                calibration[k], sources[k] = calibration_curve(hist.counts), "reference"
        return replace(model, calibration=calibration, calibrated_on=tuple(sources))

    def _fit_models(self, state, samples: dict) -> LabelModel:
        classes, rows, codes, counts = stratified_sample(samples, state["n_features"])
        K = len(classes)
        fallback = np.bincount(codes, minlength=K).astype(float) + 1.0
        fallback /= fallback.sum()
        models = fit_fold_models(rows, codes, int(self.n_folds), int(self.seed), max_iter=int(self.boosting_rounds))
        model = LabelModel(classes, tuple(models), fallback, int(self.n_folds), int(self.seed), float(self.smoothing),
                           counts, np.bincount(codes, minlength=K), np.zeros(K), np.zeros((K, len(CALIBRATION_GRID))),
                           np.zeros((K, K), dtype=np.int64), np.full(K, np.inf))
        P = model.probabilities(rows)
        own = P[np.arange(len(P)), codes]
        sums = np.bincount(codes, weights=own, minlength=K)
        n = np.bincount(codes, minlength=K)
        p = pvalue_from_probabilities(P, codes)
        calibration = np.array([calibration_curve(Histogram(LOGP_EDGES).add_batch(to_log_p(p[codes == k])).counts)
                                for k in range(K)]).reshape(K, len(CALIBRATION_GRID))
        return replace(model, self_confidence=np.divide(sums, n, out=np.ones(K), where=n > 0), calibration=calibration,
                       calibrated_on=("sample",) * K)
