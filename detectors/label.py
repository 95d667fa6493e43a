"""Confident learning (Northcutt, Jiang & Chuang, JAIR 2021) as combinable passes: label issues at pipeline scale.

Notation: N rows, d features, K classes; ``pi(x)`` (K,) a row's out-of-fold class
probabilities, ``c`` its given label, ``pi_c`` its self-confidence.

A flipped label sits among rows of another class: a classifier that did not train on the
row gives its label a low probability. cleanlab computes that from out-of-fold
probabilities of every row, held in memory in one process. Here:

1. **A bounded, hash-selected sample.** Pass 0 keeps the ``sample_size`` rows with the
   smallest keyed hash of their row id (the class proportions of the data), plus per class
   its ``min_class_sample`` smallest-hash rows, so a rare class is represented. 100,000 rows
   by default: a table up to that size is fitted whole, as cleanlab fits it. On the field
   test's flights batch (100,000 rows, the field test's text ids), 10% flips ranked at ROC-AUC
   0.99983 from a 50,000-row sample, 0.99986 from 75,000 and 0.99988 from every row (cleanlab,
   3 folds of every row: 0.99987). The models' cost grows with the sample, never with N: at
   1,000,000 rows x 32 in 10 classes, ``screen --detectors label`` took 2.4 times cleanlab's
   time at under half its memory (0.8 times with a 50,000-row sample and about 100 rounds;
   benchmarks/README.md).
2. **K hash folds, out of fold for every row.** A row's fold is a hash of its feature
   values and its label (``n_folds`` folds), so it depends only on the row: fold model ``f``
   (scikit-learn's ``HistGradientBoostingClassifier`` by default, which takes missing values
   as they are) is fitted on the sample rows of the other folds, and every row, in the
   sample or not, is scored by the model of its own fold, which never saw it, nor any exact
   copy of it under the same label (such a copy has the same fold). A copy under another
   label mostly falls in another fold, so the model that scores it has seen the same point
   with the other label: one of the two labels is wrong, and an injected copy is the row the
   model finds the less likely (duplicates injected under another class: ROC-AUC 0.91-0.94
   -> 0.94-0.98 on the credit and cells tables, measured over three fold seeds). The folds
   are drawn ``n_repeats`` times with independent hash keys, and a row's probabilities are
   the mean over the repeats: one draw of 3 folds moved the ROC-AUC of 10% flips and of
   duplicates on the loans table by up to 0.18 between hash keys. Two repeats of 5 folds
   ranked the field test's flips and duplicates at 0.85-0.99 on loans, cells, credit and
   caravan, one draw of 3 folds at 0.70-0.98, cleanlab at 0.75-0.99 on the same rows; for
   four times the fit and twice the scoring. The model is small (``n_folds x n_repeats``
   fold models) and a row's score depends only on the model and the row, never on the
   batch. Each fold model runs all of its boosting rounds. scikit-learn's early stopping, on
   by default above 10,000 rows, holds out a tenth of the fold's rows and stops when their
   loss, made noisy by the very labels in doubt, stops falling. A fold of more than
   ``LARGE_FOLD_ROWS`` (10,000) sample rows gets 200 rounds, a smaller one scikit-learn's
   100. On the field test's flights batch (a 50,000-row sample, 40,000 rows a fold), ``--detectors label`` in
   memory: 10% flips and targeted flips at ROC-AUC 0.99977 / 0.99948 with early stopping and
   100 rounds; 0.99990 / 0.99966 with every row and 200 rounds; cleanlab 0.99987 / 0.99952.
   Through the field test (``poisonguard screen`` on the same rows): 0.99980 / 0.99945 ->
   0.99983 / 0.99957, the flips still 0.00004 below cleanlab. On diamonds, in memory: 0.9606
   / 0.9252 -> 0.9607 / 0.9270. Small folds keep 100 rounds: 200 learn the flips, and the
   field test's loans targeted flips (6,200 rows a fold) fell from 0.87 to 0.78 (cleanlab
   0.75), cells' and credit's flips by up to 0.01.
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
   fold model trained on and which hold none of the batch's label noise. There the calibrated
   p-value is the conformal one alone: ``p' = F_c(t) = (k + 1) / (n + 1)``, ``k`` of the
   class's ``n`` trusted rows at or below ``t`` (valid for a clean row exchangeable with the
   trusted ones whatever the model, and Benjamini-Hochberg keeps its false-discovery control
   on such p-values: Bates et al., Annals of Statistics 2023). Not ``max(p, F_c)``: fold
   models that learnt 10% flips give every flipped label ``p`` of 0.05-0.1, which no cut at
   1% reaches, while hardly any trusted row is that doubtful (the field test's flights flip10
   batch with 30% held out: 8% of the flips flagged with the maximum, 96% without it, at
   precision 0.997). And not ``k / n``: a batch row is not among the trusted
   rows, and counted so, a row beyond every trusted row kept the model's own far-tail
   p-value, where the model is overconfident (cells door10 with 30% held out lost a clean row
   at ``p = 5.8e-4``, against the sample calibration's ``1.6e-3`` without the reference). No class then
   has more than its share ``t`` of sample rows at ``p' <= t``, whatever the model, so the
   decision layer's cut cannot take a class's ordinary doubtful rows. The transform is
   monotone within a class and leaves p-values alone where the model is calibrated, so
   it keeps the ranking within a class (a multiplicative factor of 100 instead made most rows'
   p-values 1 and cost the flips 0.04-0.10 of ROC-AUC on credit, cells and loans). Across
   classes it does reorder rows, so the decision layer cuts the calibrated p-values and ranks
   by the ones before calibration (:meth:`LabelModel.scores_pvalues_ranking`), their ties
   broken by ``1 - pi_c``: ranked by the calibrated ones, the field test's 10% flips scored ROC-AUC
   0.919 / 0.840 / 0.801 on loans, cells and credit in memory (one draw of 3 folds), by the
   others 0.967 / 0.874 / 0.841, as ``1 - pi_c`` alone (cleanlab's ranking) does.
5. **Per-class thresholds and the confident joint** (the estimated noise matrix for the
   report) are counts and sums: the thresholds ``t_j`` (mean self-confidence of class j)
   come from the sample's out-of-fold probabilities, the confident joint ``C[given][true]``
   is counted over every row in pass 1 (a row counts for the most probable class ``j``
   with ``pi_j >= t_j``), and both combine across workers; the joint is calibrated to the
   class counts as in cleanlab's ``calibrate_confident_joint``.

6. **Many classes.** A gradient-boosting model grows one tree per class per round, so its
   cost is linear in K, and a class with a handful of rows cannot be learnt at all. The
   fold models therefore learn at most ``max_classes`` *groups*: every class with at least
   ``min_class_rows`` sample rows (the largest ``max_classes - 1`` of them where there are more)
   is its own group, and the remaining classes share one group, "other classes". Everything
   above is per group: a row of a small class is scored by how likely the model finds
   "one of the small classes" for it, so a small-class row that looks like a large class is
   still suspicious, and 5,000 classes of 2 rows cost one group and no model.
7. **Exact copies count as evidence.** A boosted tree does not learn single points (its leaves
   hold at least 20 rows), so a fold model that trained on a row says nothing particular
   about an exact copy of it under another label, which is how injected duplicates look.
   Pass 0 therefore also counts rows per (value hash of the features, label)
   (:class:`~poisonguard.detectors.statistics.DuplicateCounts`), and a row's probabilities
   become ``(a pi + n) / (a + m)``: ``n`` (G,) the labels of the other rows with exactly its
   features (at float32 precision; the row itself not counted), ``m`` their number, and
   ``a = duplicate_weight`` the weight of the model's opinion, in rows. A copy of a row under
   another label then doubts both labels, the copy's most where the model agrees with the
   original; copies that agree make their label surer. Measured by the field test
   (``run.py --detectors label``, seed 0), ``a = 2``: duplicates injected under another class
   went from ROC-AUC 0.942 / 0.888 / 0.952 / 0.983 / 0.986 to 0.965 / 0.925 / 0.973 / 0.988 /
   0.990 on diamonds, loans, credit, cells and caravan (cleanlab: 0.759 / 0.825 / 0.935 / 0.974
   / 0.986), and on flights from 0.99971 to 0.99983 (cleanlab 0.99998). 10% flips and targeted
   flips moved by 0.0002 or less, except on caravan, whose census codes make 20% of its rows
   exact copies of another and 2% copies under another label: 0.963 -> 0.960 and 0.977 ->
   0.976 (cleanlab 0.954 and 0.974; in memory, ``a = 1`` lost 0.006 and 0.003). The
   counts are exact for the ``duplicate_sketch_size`` smallest value hashes (every row of a
   table with fewer distinct rows; beyond that, a hash-chosen share of the groups), and the
   model keeps only the groups of two rows or more. cleanlab's 0.99998 on flights comes from
   its folds, which are not shuffled: the injected copies are the batch's last rows, so one
   fold holds all of them, and the model that scores them never saw a copy's label. With
   shuffled folds (``StratifiedKFold(3, shuffle=True)``, two seeds), the same model and
   score rank them at 0.99963 / 0.99966; ``label``, 0.99983-0.99986 (before point 8).
8. **Contested rows do not train large fold models.** A sample row with an exact copy under
   another group (point 7's counts) holds a label that the data itself disputes. A fold
   model of more than ``LARGE_FOLD_ROWS`` rows learns no single point, so such rows teach it
   only a blend: with copies of 3,000 of flights' 35,660 EWR rows injected as JFK, the fold
   models gave JFK a median 0.039 on the copies' features (0.0002 without them), and the
   clean JFK rows' own probability fell to 0.87 at the 1st percentile (0.9985 without). Large folds
   therefore train without contested rows, which are still scored like every row, their
   copies' labels counted (point 7). Injected copies, in memory: flights 0.99984 -> 0.99998
   (50,000-row sample; cleanlab 0.99998, from its unshuffled folds), diamonds 0.965 -> 0.974;
   flips 0.0003 or less either way. Small folds keep them: there a model that trained on a
   row's original has learnt its neighbourhood, and without them cells' copies fell from
   0.988 to 0.963 and credit's from 0.973 to 0.956 (keeping only the contested rows whose
   copy the fold scores: cells 0.988, credit 0.969, caravan 0.990 -> 0.989). The model
   keeps, per group, the sample rows it trained on (``summary()``: ``sample_rows_trained_on``).

Memory: the sample (at most ``sample_size + K min_class_sample`` rows), the fold models
(at most ``max_classes`` groups each) and the duplicate counts (at most ``2 duplicate_sketch_size``
entries while counting), independent of N; per class, only its row count and group. Passes: 2 (sample; confident joint), and a third over trusted reference rows
when given (their p-values, for the calibration).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from numbers import Integral, Real

import numpy as np
import pandas as pd

from ..schemas.hashing import value_hash
from ._sklearn import Interval
from .base import BaseDetector, OwnPValueModel, add_stratified_sample, label_codes, stratified_sample
from .decision import LOGP_EDGES, to_log_p
from .statistics import DuplicateCounts, Histogram, group_rows
from .thresholds import counts_at_or_above


def feature_folds(X: np.ndarray, n_folds: int, seed: int, codes: np.ndarray | None = None,
                  repeat: int = 0) -> np.ndarray:
    """Fold of each row from a hash of its feature values, and of its label's class index ``codes`` where given
    (:func:`~poisonguard.schemas.hashing.value_hash`); each ``repeat`` of the folds has its own hash key."""
    return (value_hash(X, seed + (repeat << 32), codes) % np.uint64(n_folds)).astype(np.int64)


def duplicate_hashes(X: np.ndarray, seed: int) -> np.ndarray:
    """The value hash that groups exact copies of rows' features (module docstring, point 7); its own key."""
    return value_hash(X, seed + DUPLICATE_KEY)


#: Offset of the duplicate hash's key from the fold hashes' (``seed + (repeat << 32)``).
DUPLICATE_KEY = 1 << 48


def class_groups(sample_rows: np.ndarray, max_classes: int, min_class_rows: float) -> tuple[np.ndarray, np.ndarray]:
    """``(group of each class, the classes with a group of their own)`` (module docstring, point 6): the classes
    with at least ``min_class_rows`` sample rows, at most ``max_classes - 1`` of them (the largest; ties to the
    earlier class) where others are left, in class order, each its own group; every other class in one last
    group."""
    eligible = np.flatnonzero(sample_rows >= min_class_rows)
    if len(eligible) > max_classes or (len(eligible) == max_classes and len(eligible) < len(sample_rows)):
        by_size = eligible[np.lexsort((eligible, -sample_rows[eligible]))]
        eligible = np.sort(by_size[: max_classes - 1])
    group_of = np.full(len(sample_rows), len(eligible), dtype=np.int64)
    group_of[eligible] = np.arange(len(eligible))
    return group_of, eligible


def fit_fold_models(rows: np.ndarray, target: np.ndarray, n_folds: int, seed: int, codes: np.ndarray | None = None,
                    repeat: int = 0, trainable: np.ndarray | None = None, **options) -> list:
    """One ``HistGradientBoostingClassifier`` per hash fold, each fitted on the rows of the other folds
    (:func:`feature_folds`, with ``codes`` and ``repeat``) that are ``trainable`` (all where None); None for a fold
    whose training rows hold a single class. ``options`` go to the model."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    folds = feature_folds(rows, n_folds, seed, codes, repeat)
    models = []
    for f in range(n_folds):
        train = folds != f if trainable is None else (folds != f) & trainable
        models.append(None if len(np.unique(target[train])) < 2 else
                      HistGradientBoostingClassifier(random_state=seed, **options).fit(rows[train], target[train]))
    return models


#: Grid of ``-log10 t`` on which a class's share ``F_c(t)`` of p-values at or below ``t`` is kept.
CALIBRATION_GRID = np.round(np.arange(0.0, 6.05, 0.1), 10)


def calibration_curve(log_p_counts: np.ndarray, conformal: bool = False) -> np.ndarray:
    """``F(t)`` at ``t = 10^-CALIBRATION_GRID`` from a histogram of ``-log10 p`` on ``LOGP_EDGES`` (zeros when empty).

    Read at the grid edge at or below ``-log10 t``, so it counts at least every p-value at or below ``t``. With
    ``conformal``, for rows that are not among those counted (trusted rows, for a batch's rows): ``(k + 1) /
    (n + 1)``, the conformal p-value, which counts the row itself as a sampled row's ``F`` does.
    """
    total = log_p_counts.sum()
    if total == 0:
        return np.zeros(len(CALIBRATION_GRID))
    at_least = counts_at_or_above(log_p_counts)
    m = np.floor(CALIBRATION_GRID / (LOGP_EDGES[1] - LOGP_EDGES[0]) + 1e-9).astype(int)
    return (at_least[m] + 1) / (total + 1) if conformal else at_least[m] / total


def calibrate_pvalues(p: np.ndarray, curves: np.ndarray, conformal: np.ndarray | None = None) -> np.ndarray:
    """``max(p, F(t))`` per row, ``t`` the grid point at or above ``p``; ``curves`` (N, G) each row's class curve.
    Where ``conformal`` (N,) holds, ``F(t)`` alone: the curve is the rows' conformal p-value on trusted rows."""
    L = to_log_p(p)
    g = np.clip(np.floor(np.nan_to_num(L, nan=0.0) / (CALIBRATION_GRID[1] - CALIBRATION_GRID[0]) + 1e-9).astype(int),
                0, len(CALIBRATION_GRID) - 1)
    F = curves[np.arange(len(p)), g]
    calibrated = np.maximum(p, F) if conformal is None else np.where(conformal, F, np.maximum(p, F))
    return np.where(np.isnan(p), np.nan, calibrated)


def pvalue_from_probabilities(P: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``sum of P[i, j] over j with P[i, j] <= P[i, codes[i]]`` per row (NaN for codes < 0)."""
    known = codes >= 0
    own = P[np.arange(len(P)), np.maximum(codes, 0)]
    p = np.where(P <= own[:, None], P, 0.0).sum(axis=1)
    return np.where(known, np.minimum(p, 1.0), np.nan)


@dataclass(frozen=True)
class LabelModel(OwnPValueModel):
    """Fitted state of :class:`ConfidentLabelDetector`: the fold models and the confident-learning facts."""

    classes: tuple
    group_of: np.ndarray  # (K,) each class's group: its own for modelled classes, the shared last one for the rest
    models: tuple  # n_repeats x n_folds fitted classifiers, repeat by repeat (None: a fold with one group or no rows)
    fallback: np.ndarray  # (G,) group shares of the sample: a fold without a model predicts these
    n_folds: int
    seed: int
    smoothing: float
    counts: np.ndarray  # (K,) rows per class seen by the fit
    sample_rows: np.ndarray  # (G,) sample rows per group
    self_confidence: np.ndarray  # (G,) t_j: mean out-of-fold self-confidence of group j on the sample
    calibration: np.ndarray  # (G, len(CALIBRATION_GRID)): F_g(t), from the sample or trusted rows (module docstring)
    joint: np.ndarray  # (G, G) confident joint C[given, true], counted over every row
    thresholds: np.ndarray  # (K,) legacy per-detector cut (inf); decisions are the decision layer's
    calibrated_on: tuple = ()  # per group: "sample" or "reference" (trusted rows)
    # exact copies in the fitted rows (module docstring, point 7): one entry per (value hash, group) of every hash
    # with two rows or more, sorted by hash; rows per entry; the model's weight in rows
    duplicate_hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    duplicate_groups: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    duplicate_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    duplicate_weight: float = 2.0
    # (G,) sample rows per group the fold models trained on: all but those left out as contested (point 8)
    trained_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def n_groups(self) -> int:
        return len(self.fallback)

    def group_names(self) -> list[str]:
        """The modelled classes' names, then "other classes" where some classes share the last group."""
        names = [""] * self.n_groups
        for k, g in enumerate(self.group_of):
            names[g] = str(self.classes[k]) if np.count_nonzero(self.group_of == g) == 1 else ""
        return [n or f"other classes ({np.count_nonzero(self.group_of == g)})" for g, n in enumerate(names)]

    def groups(self, labels: np.ndarray) -> np.ndarray:
        """Each label's group; -1 for a label the model has not seen."""
        return self._groups(label_codes(self.classes, labels))

    def _groups(self, class_codes: np.ndarray) -> np.ndarray:
        return np.where(class_codes >= 0, self.group_of[np.maximum(class_codes, 0)], -1)

    @property
    def n_repeats(self) -> int:
        return len(self.models) // self.n_folds

    def probabilities(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Out-of-fold group probabilities (N, G), smoothed: in each repeat, from the model of the row's own fold (a
        hash of its features and its label), averaged over the repeats."""
        return self._probabilities(X, label_codes(self.classes, labels))

    def groups_and_probabilities(self, X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(groups(labels), probabilities(X, labels))``, looking the labels up once."""
        class_codes = label_codes(self.classes, labels)
        return self._groups(class_codes), self._probabilities(X, class_codes)

    def _probabilities(self, X: np.ndarray, class_codes: np.ndarray) -> np.ndarray:
        G = self.n_groups
        X = np.asarray(X, dtype=np.float64)
        total = np.zeros((len(X), G))
        for r in range(self.n_repeats):
            P = np.tile(self.fallback, (len(X), 1))
            folds = feature_folds(X, self.n_folds, self.seed, class_codes, r)
            for f, model in enumerate(self.models[r * self.n_folds:(r + 1) * self.n_folds]):
                rows = np.flatnonzero(folds == f)
                if model is None or len(rows) == 0:
                    continue
                proba = model.predict_proba(X[rows])
                P[rows] = 0.0
                P[np.ix_(rows, model.classes_)] = proba
            total += P
        P = (1.0 - self.smoothing) * total / max(self.n_repeats, 1) + self.smoothing / max(G, 1)
        rows, copies = self.copy_labels(X, self._groups(class_codes))
        if len(rows):
            a = self.duplicate_weight
            P[rows] = (a * P[rows] + copies) / (a + copies.sum(axis=1, keepdims=True))
        return P

    def copy_labels(self, X: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, n)``: the rows of ``X`` with an exact copy among the fitted rows, and per such row the copies'
        groups (n, G), the row itself (its group ``groups``, -1 for none) not counted (module docstring, point 7)."""
        if not len(self.duplicate_hashes) or not len(X):
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.n_groups))
        h = duplicate_hashes(X, self.seed)
        lo = np.searchsorted(self.duplicate_hashes, h, side="left")
        hi = np.searchsorted(self.duplicate_hashes, h, side="right")
        rows = np.flatnonzero(hi > lo)
        n = np.zeros((len(rows), self.n_groups))
        width = (hi - lo)[rows]  # each row's entries lo..hi - 1, concatenated:
        entries = np.repeat(lo[rows] - np.cumsum(np.r_[0, width[:-1]]), width) + np.arange(width.sum())
        np.add.at(n, (np.repeat(np.arange(len(rows)), width), self.duplicate_groups[entries]), self.duplicate_counts[entries])
        own = groups[rows]
        mine = np.flatnonzero(own >= 0)
        n[mine, own[mine]] = np.maximum(n[mine, own[mine]] - 1.0, 0.0)
        others = n.sum(axis=1) > 0
        return rows[others], n[others]

    def self_confidence_scores(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """cleanlab's self-confidence label-quality score ``pi_c`` (higher = more likely correct); NaN for unseen classes."""
        return self._evaluate(X, labels)[0]

    def suspicion(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return 1.0 - self._evaluate(X, labels)[0]

    def pvalues(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Per-row p-value, calibrated on the class's own rows (see :attr:`calibration`)."""
        return self._evaluate(X, labels)[1]

    def scores_and_pvalues(self, X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(suspicion, pvalues)`` from one evaluation of the fold models."""
        own, p, _ = self._evaluate(X, labels)
        return 1.0 - own, p

    def scores_pvalues_ranking(self, X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(suspicion, calibrated p-values, p-values before the calibration)`` from one evaluation of the fold
        models (what the decision layer calls): it cuts the calibrated ones and ranks by the others (module
        docstring, point 4)."""
        own, p, raw = self._evaluate(X, labels)
        return 1.0 - own, p, raw

    def tie_scores(self, scores: np.ndarray, pvalues: np.ndarray) -> np.ndarray:
        """``1 - pi_c`` (cleanlab's self-confidence ranking), finer than the p-value: that is 1 for every row whose
        label the model finds the most probable, and steps with the calibration grid."""
        return scores

    def _evaluate(self, X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Self-confidence ``pi_c``, calibrated p-value and p-value before calibration per row, from one
        ``probabilities`` call."""
        codes, P = self.groups_and_probabilities(X, labels)
        own = np.where(codes >= 0, P[np.arange(len(P)), np.maximum(codes, 0)], np.nan)
        p = pvalue_from_probabilities(P, codes)
        if not self.n_groups:
            return own, p, p
        group = np.maximum(codes, 0)
        trusted = np.array([source == "reference" for source in self.calibrated_on], dtype=bool)[group] \
            if self.calibrated_on else None
        return own, calibrate_pvalues(p, self.calibration[group], trusted), p

    def noise_matrix(self) -> np.ndarray:
        """Estimated ``P(given = i, true = j)`` over groups: the confident joint calibrated to the group counts, normalised."""
        C = self.joint.astype(float)
        row = C.sum(axis=1, keepdims=True)
        counts = np.bincount(self.group_of, weights=self.counts, minlength=self.n_groups)
        C = np.divide(C, row, out=np.zeros_like(C), where=row > 0) * counts[:, None]
        return C / max(C.sum(), 1.0)

    def explain(self, X: np.ndarray, labels: np.ndarray, feature_names=None) -> list:
        """Per row, as text: the probability out of fold of its label and of the likeliest group, and the labels
        of its exact copies (None for a label the model has not seen)."""
        codes, P = self.groups_and_probabilities(X, labels)
        names = self.group_names()
        rows, copies = self.copy_labels(X, codes)
        copied = {int(r): ", ".join(f"{int(n[g])} as {names[g]}" for g in np.flatnonzero(n)) for r, n in zip(rows, copies)}
        out = []
        for i, g in enumerate(codes):
            if g < 0:
                out.append(None)
                continue
            best = int(np.argmax(P[i]))
            text = f"its label at {P[i, g]:.2g}" + ("" if best == g else f", {names[best]} at {P[i, best]:.2g}")
            out.append(text + (f"; exact copies: {copied[i]}" if i in copied else ""))
        return out

    def rows_with_a_copy_under_another_label(self) -> np.ndarray:
        """(G,) rows per group whose features some row of another group also has, exactly (point 7)."""
        mixed = mixed_entries(self.duplicate_hashes)
        return np.bincount(self.duplicate_groups[mixed], weights=self.duplicate_counts[mixed], minlength=self.n_groups)

    def summary(self) -> dict:
        """Per group (a modelled class, or the small classes together): rows, self-confidence, estimated noise."""
        joint = self.noise_matrix()
        names = self.group_names()
        counts = np.bincount(self.group_of, weights=self.counts, minlength=self.n_groups)
        copied = self.rows_with_a_copy_under_another_label()
        return {
            name: {
                "rows": int(counts[g]),
                "sample_rows": int(self.sample_rows[g]),
                "sample_rows_trained_on": int(self.trained_rows[g]) if len(self.trained_rows) else int(self.sample_rows[g]),
                "modelled": self.models != (None,) * len(self.models),
                "mean_self_confidence": round(float(self.self_confidence[g]), 4),
                "rows_at_p_below_0.001": round(float(self.calibration[g][int(np.flatnonzero(CALIBRATION_GRID == 3.0)[0])]), 4),
                "calibrated_on": self.calibrated_on[g] if self.calibrated_on else "sample",
                "rows_with_a_copy_under_another_label": int(copied[g]),
                "estimated_label_noise": round(float(1.0 - joint[g, g] / joint[g].sum()), 4) if joint[g].sum() > 0 else None,
                "estimated_true_classes": {names[j]: round(float(joint[g, j] / joint[g].sum()), 4)
                                           for j in range(len(names)) if joint[g].sum() > 0 and joint[g, j] > 0},
            }
            for g, name in enumerate(names)
        }


def mixed_entries(hashes: np.ndarray) -> np.ndarray:
    """Which entries of :class:`LabelModel`'s ``duplicate_hashes`` (one per hash and group) share their hash with
    another entry: exact copies under two groups or more (points 7 and 8)."""
    _, inverse, entries = np.unique(hashes, return_inverse=True, return_counts=True)
    return entries[inverse] > 1


def contested(rows: np.ndarray, hashes: np.ndarray, seed: int) -> np.ndarray:
    """Which ``rows`` have an exact copy under another group among ``hashes`` (:func:`mixed_entries`; point 8)."""
    return np.isin(duplicate_hashes(rows, seed), hashes[mixed_entries(hashes)])


def copies_in(counts: DuplicateCounts | None, classes: tuple, group_of: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(hashes, groups, rows)`` of :class:`LabelModel`'s duplicate fields: the counts per (value hash, group) of
    every value hash held by two rows or more, sorted by hash and group."""
    if counts is None:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    hashes, labels, n = counts.result()
    codes = label_codes(classes, labels)
    known = codes >= 0
    frame = pd.DataFrame({"hash": hashes[known], "group": group_of[codes[known]], "rows": n[known]})
    entries = frame.groupby(["hash", "group"], sort=True)["rows"].sum().reset_index()
    entries = entries[entries.groupby("hash")["rows"].transform("sum").to_numpy() >= 2]
    return (entries["hash"].to_numpy(np.uint64), entries["group"].to_numpy(np.int64),
            entries["rows"].to_numpy(np.int64))


class _Joint:
    """Confident-joint counts (K, K) and rows per class (combinable)."""

    __slots__ = ("counts",)

    def __init__(self, K: int):
        self.counts = np.zeros((K, K), dtype=np.int64)

    def merge(self, other: _Joint) -> _Joint:
        self.counts += other.counts
        return self


_JOINT, _TRUSTED, _DUPLICATES = "__label_joint__", "__label_trusted__", "__label_duplicates__"
#: Fewest trusted rows of a class for its calibration to come from them rather than the sample.
MIN_TRUSTED_ROWS = 50
#: Boosting rounds of the fold models by default (module docstring, point 2): ``LARGE_FOLD_ROUNDS`` where a fold
#: trains on more than ``LARGE_FOLD_ROWS`` sample rows (where scikit-learn would stop early), ``SMALL_FOLD_ROUNDS``
#: (scikit-learn's default) on fewer.
SMALL_FOLD_ROUNDS, LARGE_FOLD_ROUNDS, LARGE_FOLD_ROWS = 100, 200, 10_000


class ConfidentLabelDetector(BaseDetector):
    """Confident-learning label-issue detector: out-of-fold class probabilities on a hash sample.

    Parameters
    ----------
    sample_size : int, default 100000
        Rows of the pooled hash sample the fold models are fitted on.
    min_class_sample : int, default 200
        Each class also contributes its smallest-hash rows up to this many.
    n_folds : int, default 5
        Hash folds (each model trains on the other folds of the sample).
    n_repeats : int, default 2
        Independent fold assignments (each its own hash key); a row's probabilities are the mean over the repeats
        of its fold model's. The fit trains ``n_folds x n_repeats`` models; scoring runs ``n_repeats`` per row.
    boosting_rounds : int or None, default None
        Boosting iterations of each ``HistGradientBoostingClassifier``, all of them (no early stopping). None: 200
        where a fold model trains on more than 10,000 sample rows, 100 on fewer (the module docstring, point 2).
    smoothing : float in [0, 0.5), default 0.001
        Probabilities are mixed with the uniform distribution by this weight before the
        p-value, which bounds each row's p-value below by ``smoothing / G`` (G groups).
    max_classes : int, default 100
        Most groups the fold models learn: the largest classes get their own group, the
        others share one (the module docstring, point 6).
    min_class_rows : int, default 20
        Fewest sample rows for a class to get its own group.
    duplicate_weight : float > 0, default 2.0
        Weight of the fold models' probabilities, in rows, against the labels of a row's exact copies (the module
        docstring, point 7); a large value leaves the copies out of the scores (large folds still train without
        contested rows: point 8).
    duplicate_sketch_size : int, default 1000000
        Distinct feature rows (the smallest value hashes) whose copies and labels are counted.
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
        "n_repeats": [Interval(Integral, 1, None, closed="left")],
        "boosting_rounds": [Interval(Integral, 1, None, closed="left"), None],
        "smoothing": [Interval(Real, 0.0, 0.5, closed="left")],
        "max_classes": [Interval(Integral, 2, None, closed="left")],
        "min_class_rows": [Interval(Integral, 1, None, closed="left")],
        "duplicate_weight": [Interval(Real, 0.0, None, closed="neither")],
        "duplicate_sketch_size": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, *, sample_size=100_000, min_class_sample=200, n_folds=5, n_repeats=2, boosting_rounds=None,
                 smoothing=0.001, max_classes=100, min_class_rows=20, duplicate_weight=2.0,
                 duplicate_sketch_size=1_000_000, seed=0):
        self.sample_size = sample_size
        self.min_class_sample = min_class_sample
        self.n_folds = n_folds
        self.n_repeats = n_repeats
        self.boosting_rounds = boosting_rounds
        self.smoothing = smoothing
        self.max_classes = max_classes
        self.min_class_rows = min_class_rows
        self.duplicate_weight = duplicate_weight
        self.duplicate_sketch_size = duplicate_sketch_size
        self.seed = seed

    # -- pass 0: the pooled and per-class samples, row counts -> fold models, thresholds
    # -- pass 1: the confident joint over every row
    # -- pass 2 (trusted reference rows, when given): their p-values per class -> calibration
    def batch_statistics(self, stage, state, X, labels, row_ids, into=None):
        stats = {} if into is None else into
        if stage == 2:
            model: LabelModel = state
            codes, P = model.groups_and_probabilities(X, labels)
            L = to_log_p(pvalue_from_probabilities(P, codes))
            for g, rows in group_rows(codes):
                stats.setdefault((_TRUSTED, g), Histogram(LOGP_EDGES)).add_batch(L[rows])
            return stats
        if stage == 0:
            stats.setdefault(_DUPLICATES, DuplicateCounts(self.duplicate_sketch_size)).add_batch(
                duplicate_hashes(X, int(self.seed)), labels)
            return add_stratified_sample(stats, X, self.row_hashes(row_ids), labels, self.sample_size, self.min_class_sample)
        model: LabelModel = state["partial"]
        codes, P = model.groups_and_probabilities(X, labels)
        confident = np.where(P >= model.self_confidence[None, :], P, -1.0)
        true = np.argmax(confident, axis=1)
        ok = (codes >= 0) & (confident.max(axis=1) >= 0)
        joint = stats.setdefault(_JOINT, _Joint(model.n_groups))
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
        """A group with enough trusted rows takes its calibration from them: rows no fold model
        trained on, and free of the batch's label noise, which the sample's calibration has to absorb. It is
        the rows' conformal p-value (``calibration_curve(conformal=True)``; module docstring, point 4)."""
        calibration = model.calibration.copy()
        sources = list(model.calibrated_on)
        for g in range(model.n_groups):
            hist = statistics.get((_TRUSTED, g))
            if hist is not None and hist.total >= MIN_TRUSTED_ROWS:
                calibration[g], sources[g] = calibration_curve(hist.counts, conformal=True), "reference"
        return replace(model, calibration=calibration, calibrated_on=tuple(sources))

    def _fit_models(self, state, statistics: dict) -> LabelModel:
        classes, rows, class_codes, counts = stratified_sample(statistics, state["n_features"])
        group_of, _ = class_groups(np.bincount(class_codes, minlength=len(classes)), int(self.max_classes),
                                   int(self.min_class_rows))
        codes = group_of[class_codes]
        K = int(group_of.max()) + 1 if len(group_of) else 0  # groups
        fallback = np.bincount(codes, minlength=K).astype(float) + 1.0
        fallback /= fallback.sum()
        large = len(rows) * (1 - 1 / int(self.n_folds)) > LARGE_FOLD_ROWS
        rounds = self.boosting_rounds or (LARGE_FOLD_ROUNDS if large else SMALL_FOLD_ROUNDS)
        copies = copies_in(statistics.get(_DUPLICATES), classes, group_of)
        trainable = ~contested(rows, copies[0], int(self.seed)) if large else np.ones(len(rows), dtype=bool)
        models = [m for r in range(int(self.n_repeats)) for m in
                  fit_fold_models(rows, codes, int(self.n_folds), int(self.seed), class_codes, r, trainable,
                                  max_iter=int(rounds), early_stopping=False)]
        model = LabelModel(classes, group_of, tuple(models), fallback, int(self.n_folds), int(self.seed),
                           float(self.smoothing), counts, np.bincount(codes, minlength=K), np.zeros(K),
                           np.zeros((K, len(CALIBRATION_GRID))), np.zeros((K, K), dtype=np.int64),
                           np.full(len(classes), np.inf), (), *copies, float(self.duplicate_weight),
                           np.bincount(codes[trainable], minlength=K))
        P = model._probabilities(rows, class_codes)
        own = P[np.arange(len(P)), codes]
        sums = np.bincount(codes, weights=own, minlength=K)
        n = np.bincount(codes, minlength=K)
        p = pvalue_from_probabilities(P, codes)
        calibration = np.array([calibration_curve(Histogram(LOGP_EDGES).add_batch(to_log_p(p[codes == k])).counts)
                                for k in range(K)]).reshape(K, len(CALIBRATION_GRID))
        return replace(model, self_confidence=np.divide(sums, n, out=np.ones(K), where=n > 0), calibration=calibration,
                       calibrated_on=("sample",) * K)
