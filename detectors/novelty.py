"""Novelty against trusted rows: per class, how unlike the reference a row is (a classifier two-sample test).

Notation: for class ``c``, ``B_c`` the batch's rows of the class and ``R_c`` the trusted
reference rows of the class.

Poison is new. A backdoor's trigger, a flipped row that looks like another class, an
injected copy of another class's row: each puts rows into ``B_c`` that ``R_c`` does not
have, while a cluster that the reference also has (a censoring value, a natural subgroup)
is not new. The density ratio ``p_B(x) / p_R(x)`` measures exactly that, and a classifier
trained to tell ``B_c`` from ``R_c`` estimates it (the classifier two-sample test; Lopez-Paz
& Oquab, ICLR 2017):

1. **Bounded, hash-selected samples.** Pass 0 keeps, per class, the ``class_sample`` batch
   rows with the smallest keyed hash of their row id; pass 1 does the same over the trusted
   rows.
2. **K hash folds, out of fold for every row.** A row's fold is a hash of its feature
   values (as in :mod:`~poisonguard.detectors.label`); fold model ``f`` of class ``c``
   (scikit-learn's ``HistGradientBoostingClassifier``, which takes missing values as they
   are) learns batch (1) against reference (0) on the sample rows of the other folds, and
   every row is scored by the model of its own fold, which never saw it or any exact copy.
3. **The score** is the out-of-fold log-odds of "batch", less the sample's prior log-odds:
   ``log p_B(x) / p_R(x)`` up to the models' error. A row like the reference scores about 0
   whatever the sample sizes; a row of a region the reference lacks scores high.
4. **The decision.** The score has no p-value of its own: the decision layer fits its null
   on the trusted rows' scores (:mod:`~poisonguard.detectors.ensemble`), which are out of
   fold as well, so a batch row and a trusted row of the same distribution score alike. A
   class with too few trusted or batch rows gets no model and scores 0 (never flagged).

Without trusted rows there is nothing to compare with: fitting refuses. Memory: two samples
of at most ``class_sample`` rows and ``n_folds`` models per class, independent of N.
Passes: 2 (the batch sample; the reference sample).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from numbers import Integral

import numpy as np
import pandas as pd

from ..schemas import ConfigError
from ._sklearn import Interval
from .base import BaseDetector, PerClassModel, describe_features, group_by_label, label_codes
from .label import feature_folds, fit_fold_models
from .statistics import ClassSample

_BATCH, _TRUSTED = "__novelty_batch__", "__novelty_trusted__"
#: Fewest rows of a class, in the batch sample and in the trusted sample, for it to get a model.
MIN_CLASS_ROWS = 20
#: Out-of-fold probabilities are clipped to this distance from 0 and 1 before the log-odds.
_EPS = 1e-6


def out_of_fold_log_odds(fold_models: tuple, X: np.ndarray, seed: int) -> np.ndarray:
    """Log-odds of "batch" for rows ``X`` of one class, each from the model of its own hash fold (0 where none)."""
    out = np.zeros(len(X))
    folds = feature_folds(X, len(fold_models), seed)
    for f, model in enumerate(fold_models):
        rows = np.flatnonzero(folds == f)
        if model is not None and len(rows):
            p = np.clip(model.predict_proba(X[rows])[:, 1], _EPS, 1.0 - _EPS)
            out[rows] = np.log(p) - np.log1p(-p)
    return out


@dataclass(frozen=True)
class NoveltyModel(PerClassModel):
    """Fitted state of :class:`NoveltyDetector`: per class, fold models telling batch from trusted rows."""

    #: Where another member is engaged in the class, this member keeps this share of a full one in the ranking
    #: ``suspicion`` (:func:`~poisonguard.detectors.decision.ranking_weights`); the decisions keep its full share.
    #: It sees every kind of new row, each more coarsely than the member made for it, and its p-values, fitted on
    #: the trusted rows, put a share ``t`` of a clean class at ``p <= t``. A flipped label sits at the label
    #: member's ``p`` of 0.05-0.1 (its fold models learn the flip rate), so with a full share those clean rows
    #: outranked the flips: with 30% of each table held out, flights' 10% flips ranked at ROC-AUC 0.968 with the
    #: reference and 1.000 without. A hundredth, a quiet member's share, lost the backdoor of caravan's door10
    #: that only this member ranks (0.984 with a full share, 0.578 with a hundredth); 0.03 keeps 0.909 of it and
    #: ranks every flip and duplicate case as without the reference, in memory (benchmarks/README.md, "With
    #: trusted rows: novelty's share of the ranking").
    ranking_share = 0.03

    classes: tuple
    models: tuple  # per class: a tuple of n_folds classifiers (None where a fold could not be fitted), or None
    prior_logit: np.ndarray  # (K,) log(batch sample rows / trusted sample rows)
    reference_median: np.ndarray  # (K, d) trusted rows' median per class (the occlusion value of explain)
    seed: int
    counts: np.ndarray  # (K,) batch rows per class
    trusted_rows: np.ndarray  # (K,) trusted rows per class
    sample_rows: np.ndarray  # (K, 2) batch and trusted sample rows per class
    two_sample_auc: np.ndarray  # (K,) out-of-fold ROC-AUC of batch against trusted on the samples (NaN: no model)
    thresholds: np.ndarray  # (K,) legacy per-detector cut (inf); decisions are the decision layer's

    def _log_odds(self, X: np.ndarray, codes: np.ndarray) -> np.ndarray:
        out = np.zeros(len(X))
        for k, fold_models in enumerate(self.models):
            rows = np.flatnonzero(codes == k)
            if fold_models is not None and len(rows):
                out[rows] = out_of_fold_log_odds(fold_models, X[rows], self.seed) - self.prior_logit[k]
        return out

    def suspicion(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Out-of-fold ``log p_batch(x) / p_trusted(x)`` per row, within its class (NaN for an unseen class)."""
        X = np.asarray(X, dtype=np.float64)
        codes = label_codes(self.classes, labels)
        return np.where(codes >= 0, self._log_odds(X, codes), np.nan)

    def explain(self, X: np.ndarray, labels: np.ndarray, feature_names=None, top: int = 3) -> list:
        """Per row, the features whose value makes it unlike the trusted rows, as text.

        Occlusion: each feature in turn is set to the trusted rows' median of the class, and
        the drop of the row's score is that feature's share ("price -4.1": the score falls by
        4.1 when price takes its trusted median). At most ``top`` features with a positive drop.
        """
        X = np.asarray(X, dtype=np.float64)
        codes = label_codes(self.classes, labels)
        n, d = X.shape
        if n == 0 or d == 0:
            return [None] * n
        base = self._log_odds(X, codes)
        occluded = np.repeat(X, d, axis=0)
        j = np.tile(np.arange(d), n)
        occluded[np.arange(n * d), j] = self.reference_median[np.repeat(np.maximum(codes, 0), d), j]
        drop = (base[:, None] - self._log_odds(occluded, np.repeat(codes, d)).reshape(n, d))
        out = []
        for i in range(n):
            if codes[i] < 0 or self.models[codes[i]] is None:
                out.append(None)
                continue
            order = [j for j in np.argsort(-drop[i], kind="stable")[:top] if drop[i, j] > 0]
            out.append(describe_features(feature_names, -drop[i], order))
        return out

    def summary(self) -> dict:
        return {
            str(c): {
                "rows": int(self.counts[k]),
                "trusted_rows": int(self.trusted_rows[k]),
                "sample_rows": int(self.sample_rows[k, 0]),
                "trusted_sample_rows": int(self.sample_rows[k, 1]),
                "batch_vs_trusted_auc": None if np.isnan(self.two_sample_auc[k]) else round(float(self.two_sample_auc[k]), 4),
            }
            for k, c in enumerate(self.classes)
        }

    def with_threshold(self, threshold: float) -> NoveltyModel:
        return replace(self, thresholds=np.full(len(self.classes), float(threshold)))


class NoveltyDetector(BaseDetector):
    """Per-class novelty against trusted reference rows: a classifier two-sample test, out of fold.

    Needs trusted rows (``X_reference`` in ``fit``; ``--reference`` on the command line).

    Parameters
    ----------
    class_sample : int, default 5000
        Rows per class kept from the batch, and as many from the trusted rows, to fit on.
    n_folds : int, default 3
        Hash folds (each model trains on the other folds of the samples).
    boosting_rounds : int, default 100
        Boosting iterations of each ``HistGradientBoostingClassifier``.
    seed : int, default 0
        Key of the row-id hash (the samples), the fold hash and the models' random state.
    """

    name = "novelty"
    n_stages = 2
    reference_stages = frozenset({1})
    requires_labels = True
    requires_reference = True

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        "class_sample": [Interval(Integral, MIN_CLASS_ROWS, None, closed="left")],
        "n_folds": [Interval(Integral, 2, None, closed="left")],
        "boosting_rounds": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, *, class_sample=5000, n_folds=3, boosting_rounds=100, seed=0):
        self.class_sample = class_sample
        self.n_folds = n_folds
        self.boosting_rounds = boosting_rounds
        self.seed = seed

    # -- pass 0: per-class samples of the batch; pass 1 (trusted rows): per-class samples of the reference
    def batch_statistics(self, stage, state, X, labels, row_ids, into=None):
        stats = {} if into is None else into
        key = _BATCH if stage == 0 else _TRUSTED
        hashes = self.row_hashes(row_ids)
        for label, rows in group_by_label(labels):
            stats.setdefault((key, label), ClassSample(int(self.class_sample), X.shape[1])).add_batch(X, hashes, rows)
        return stats

    def advance(self, stage, state, statistics):
        if stage == 0:
            return {**state, "batch": statistics}
        if not statistics:
            raise ConfigError("novelty: needs trusted reference rows to compare the batch with (--reference)")
        return self._fit_models(state["batch"], statistics, state["n_features"])

    def _fit_models(self, batch: dict, trusted: dict, d: int) -> NoveltyModel:
        from sklearn.metrics import roc_auc_score

        classes = tuple(sorted(label for _, label in batch))
        K = len(classes)
        models, prior, median, sample_rows, auc = [], np.zeros(K), np.zeros((K, d)), np.zeros((K, 2), np.int64), np.full(K, np.nan)
        trusted_rows = np.zeros(K, np.int64)
        for k, c in enumerate(classes):
            B = batch[(_BATCH, c)].result()[1]
            ref = trusted.get((_TRUSTED, c))
            R = ref.result()[1] if ref is not None else np.zeros((0, d))
            trusted_rows[k] = ref.count if ref is not None else 0
            sample_rows[k] = len(B), len(R)
            median[k] = pd.DataFrame(R).median().to_numpy() if len(R) else np.nan  # NaN: missing, as the models take it
            if len(B) < MIN_CLASS_ROWS or len(R) < MIN_CLASS_ROWS:
                models.append(None)
                continue
            rows = np.concatenate([B, R])
            target = np.r_[np.ones(len(B), np.int64), np.zeros(len(R), np.int64)]
            prior[k] = np.log(len(B) / len(R))
            # no early stopping (scikit-learn turns it on above 10,000 rows): it stops as soon as the clean
            # majority stops improving the validation loss, before the trees isolate a small new cluster
            models.append(tuple(fit_fold_models(rows, target, int(self.n_folds), int(self.seed),
                                                max_iter=int(self.boosting_rounds), early_stopping=False)))
            auc[k] = roc_auc_score(target, out_of_fold_log_odds(models[-1], rows, int(self.seed)))
        counts = np.array([batch[(_BATCH, c)].count for c in classes], dtype=np.int64)
        return NoveltyModel(classes, tuple(models), prior, median, int(self.seed), counts, trusted_rows,
                            sample_rows, auc, np.full(K, np.inf))
