"""Scores -> decisions: the one decision layer every detector goes through.

Detectors only score (higher = more suspicious). This module turns scores into flags with
a small set of rules, the same for every detector, as cleanlab separates ``rank`` from
``filter``. The common scale is the p-value of a row's score under a *null model* of its
class (how a clean row of that class scores), written as ``L = -log10 p``:

* a detector whose score already is a probability statement provides its own p-values
  (``model.scores_and_pvalues(X, labels)``): the label detector's calibrated-classifier p-value;
* for any other score the null is fitted per class on the score's distribution over the
  class (:class:`TailNull`): its median, and a generalised Pareto upper tail whose scale
  and shape come from the median and the 75th and 87.5th percentiles (Pickands'
  estimator; the shape is kept between 0, an exponential tail, and 1). The rows that the
  detector's own rule cuts as an outlying cluster (a gap or a second mode of the class's
  scores) are left out of the fit, so a planted cluster, however large, does not widen
  the null that is to judge it. A member's model may bound those p-values: from below
  (``pvalue_floor``, the spectral detector's tails that other classes hold too) and from
  above (``pvalue_ceiling``: the clustering and robust spectral detectors give a row beyond
  their own cut at most its conformal rank among the class's rows below it, whose tail the
  null extrapolates; a row's p-value is then the smaller of the two, at most twice a valid
  one, and only beyond a cut their other-class test let stand). A row's p-value depends only
  on the fitted null and the row, never on the batch it came in. Measured on the field-test
  tables' spectral scores (alpha 0.01): a Gaussian null flagged 0.7-8% of clean rows; an
  exponential tail through the median and upper quartile 0-1.4% (caravan's 85 integer-coded
  columns, whose scores reach 136 robust standard deviations, the worst) and lost every
  backdoor over a quarter of its class (door10); a scale from the 90th percentile flagged
  0-0.6% but lost diamonds door3 (recall 0.00 against 1.00); this null, 0-0.3% on the
  clean tables.

Several detectors combine on this scale, never by raw score magnitudes: a row's combined
p-value is ``min(1, min_j p_j / w_j)``, a weighted Bonferroni bound (valid whatever the
members' dependence, for weights ``w_j`` of the row's class that sum to 1); the rules cut ``L``
of that. The output's ``suspicion`` ranks: the same combination of the members' *ranking*
p-values (the label detector's before its calibration), with a quiet member's share cut further
(:func:`ranking_weights`) and ties broken (:func:`break_ties`). The weights
(:func:`member_weights`) split the false-discovery budget by where a member has something to
say. A score member whose own rule found no outlying cluster in the class (and that is not made
to compare with trusted rows) gives clean rows uniform p-values and the class's poison, if any,
nothing it can single out; with equal weights it took half the budget from the label member and
filled the ranking with its noise (measured in memory on the field-test tables with 10% label
flips, ``spectral,label``: ROC-AUC of the combined suspicion 0.92 / 0.79 / 0.75 / 0.66 / 0.72
on flights, diamonds, loans, credit, cells with equal weights, 0.98 / 0.92 / 0.90 / 0.75 / 0.81
with these; no backdoor found with equal weights was lost). Such a member keeps a tenth of a
full share. So does a member made to compare the batch with trusted rows (novelty) in a class
whose batch rows are no more often far from the trusted ones than its null, fitted on the
trusted rows, allows (:func:`excess_over_null`): label flips put few rows there that the
class's trusted rows lack, and at a full share novelty's uniform p-values cost the flips'
ranking what a quiet spectral did (in memory, the field test's split with 30% held out,
``spectral,label,novelty``, 10% flips: ROC-AUC 0.93 / 0.89 / 0.73 / 0.71 / 0.82 / 0.68 on
flights, diamonds, loans, credit, cells, caravan, and 0.95 / 0.91 / 0.86 / 0.75 / 0.83 / 0.78
with the test).

The rules (``DecisionRule.mode``):

``auto``
    no rate and no target class. Per class, the Benjamini-Hochberg step-up procedure at
    false-discovery level ``alpha`` on the combined p-values: the smallest ``L`` cut
    ``t`` such that at least ``n_c 10^-t / alpha`` rows of the class reach it. A clean
    class (every row null) loses nothing with probability at least ``1 - alpha``,
    whatever its size or the batch size; among flagged rows, the expected share of clean
    ones is at most ``alpha``. Computed from a per-class histogram of ``L`` (combinable),
    exactly to the grid's resolution (0.01 in ``L``).
``contamination``
    flag a fixed share of all rows, the highest combined suspicion first.
``reference``
    one cut on the combined suspicion, set on trusted rows so that at most
    ``target_fpr`` of them would be flagged.

Notation: N rows, K classes, M detectors; ``n_c`` rows in class c.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

from .statistics import uniform_grid
from .thresholds import counts_at_or_above

#: Grid of the ``L = -log10 p`` histograms: 0 to 60 in steps of 0.01 (p down to 1e-60; beyond, the overflow bin).
LOGP_EDGES = uniform_grid(0.0, 60.0, 6001)
#: Default false-discovery level of the "auto" rule.
DEFAULT_ALPHA = 0.01
#: Smallest tail scale of a fitted null, in score units: a class whose scores barely vary
#: (75% of rows on the median) is not made to flag its next-most-ordinary rows.
MIN_TAIL_SCALE = 0.25
#: Heaviest tail a fitted null may have (generalised Pareto shape; 1 is a Cauchy-like 1/s tail).
MAX_SHAPE = 1.0
#: Grid on which a score's class distribution is summarised to fit its null: -20 to 180, steps of 0.05.
SCORE_EDGES = uniform_grid(-20.0, 180.0, 4001)


def to_log_p(p: np.ndarray) -> np.ndarray:
    """``L = -log10 p``, 0 for p >= 1, NaN kept (a row no model scores)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = -np.log10(np.clip(p, 1e-300, 1.0))
    return np.where(np.isnan(p), np.nan, out + 0.0)


@dataclass(frozen=True)
class TailNull:
    """Per-class null of a score: a generalised Pareto upper tail from the class median, (K,) arrays.

    ``p(s) = min(1, 0.5 (1 + shape (s - location) / scale) ** (-1 / shape))`` for a row of
    class c scoring s above the median, 1 at or below it (``shape = 0``: the exponential
    tail ``0.5 exp(-(s - location) / scale)``): the chance that a clean row of the class
    scores at least s. NaN scores stay NaN.
    """

    location: np.ndarray
    scale: np.ndarray
    shape: np.ndarray

    @classmethod
    def fit(cls, histograms: list[np.ndarray], interpolate: bool = False) -> TailNull:
        """From per-class histograms of the score on :data:`SCORE_EDGES` (underflow, bins, overflow).

        Pickands' estimator from the median and the 75th and 87.5th percentiles (upper-tail
        probabilities 1/2, 1/4, 1/8): ``shape = log2((q87.5 - q75) / (q75 - q50))``, clamped
        to [0, MAX_SHAPE] (never lighter than exponential), and the scale that puts the
        75th percentile where it is. Three quantiles make a noisy estimate: fitted on 2,000
        Pareto draws (tail index 1.5) it is about 0.1 light, and fresh draws reach
        ``p <= 0.001`` 1.6 times as often as they should; a margin of 0.1 on the shape
        lost a 3% backdoor on diamonds, so there is none (``tests/test_decision.py`` checks
        the tail fitted on 20,000 rows to within twice the nominal rate).

        ``interpolate``: read the quantiles inside their bin (linearly) rather than at its upper
        edge. The edges are exact enough for scores that spread over many bins (robust z-scores,
        0.05 bins); a score whose class quartiles lie one or two bins apart gets its shape from
        where the edges fall: spectral's image scores, in units of its projection grid where a
        class is a point mass along its direction (:class:`~poisonguard.detectors.spectral.SpectralSignatureDetector`,
        ``null_quantiles``), quartiles 0.16 / 0.24 / 0.31 read as 0.20 / 0.25 / 0.35 gave shape 1
        instead of 0 (MNIST, a blend on 5% of the 7s, benchmarks/README.md, Images).
        """
        loc, scale, shape = [], [], []
        for counts in histograms:
            q50, q75, q875 = histogram_quantiles(SCORE_EDGES, counts, (0.5, 0.75, 0.875), interpolate=interpolate)
            lower, upper = max(q75 - q50, 1e-12), max(q875 - q75, 0.0)
            xi = float(np.clip(np.log2(upper / lower), 0.0, MAX_SHAPE)) if upper > 0 else 0.0
            sigma = lower * xi / (2.0 ** xi - 1.0) if xi > 1e-9 else lower / np.log(2.0)
            loc.append(q50)
            scale.append(max(sigma, MIN_TAIL_SCALE))
            shape.append(xi)
        return cls(np.asarray(loc, float), np.asarray(scale, float), np.asarray(shape, float))

    def pvalues(self, scores: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """p-value of each row's score (``codes``: class index, -1 for an unknown class -> NaN)."""
        known = codes >= 0
        c = np.maximum(codes, 0)
        excess = np.maximum(scores - self.location[c], 0.0) / self.scale[c]
        xi = self.shape[c]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            pareto = np.exp(-np.log1p(xi * excess) / np.where(xi > 1e-9, xi, 1.0))
            p = 0.5 * np.where(xi > 1e-9, pareto, np.exp(-excess))
        p = np.where(scores <= self.location[c], 1.0, p)
        return np.where(known & ~np.isnan(scores), np.minimum(p, 1.0), np.nan)


def histogram_quantiles(edges: np.ndarray, counts: np.ndarray, qs, interpolate: bool = False) -> list[float]:
    """Quantiles of the values a histogram summarises (bin upper edges; the grid's ends beyond it).

    ``interpolate``: inside an interior bin, linearly between its edges (its rows taken as spread
    evenly over it), so that a quantile moves with the values rather than in steps of a bin.
    """
    total = counts.sum()
    if total == 0:
        return [0.0 for _ in qs]
    cum = np.cumsum(counts)
    out = []
    # counts[k] is the bin [edges[k - 1], edges[k]); counts[0] underflow, counts[-1] overflow
    for q in qs:
        k = int(np.searchsorted(cum, q * total))  # the first bin whose cumulative count reaches q
        if interpolate and 0 < k < len(edges):  # counts[k] > 0: cum[k - 1] < q total <= cum[k]
            share = (q * total - cum[k - 1]) / counts[k]
            out.append(float(edges[k - 1] + share * (edges[k] - edges[k - 1])))
        else:
            out.append(float(edges[min(k, len(edges) - 1)]))
    return out


def bh_cut(log_p_counts: np.ndarray, alpha: float) -> float:
    """Benjamini-Hochberg cut on ``L = -log10 p`` from a histogram of ``L`` on :data:`LOGP_EDGES`.

    The smallest grid edge ``t`` with ``#{L >= t} >= n 10^-t / alpha`` (the step-up rule
    read off the histogram: p-values at or below ``10^-t`` are rejected); ``inf`` when no
    edge qualifies. Rows whose ``L`` reaches the cut are flagged.
    """
    n = log_p_counts.sum()
    if n == 0:
        return float("inf")
    at_least = counts_at_or_above(log_p_counts)
    ok = np.flatnonzero((at_least >= n * 10.0 ** -LOGP_EDGES / alpha) & (LOGP_EDGES > 0))
    return float(LOGP_EDGES[ok[0]]) if len(ok) else float("inf")


#: Share of a full weight kept by a member with nothing to say in a class (:func:`member_weights`).
QUIET_MEMBER_SHARE = 0.1
#: The same share in the ranking ``suspicion`` (:func:`ranking_weights`).
RANKING_QUIET_SHARE = 0.01
#: :func:`excess_over_null`: the p-value level whose share of rows is compared with the level itself ...
EXCESS_LEVEL = 0.01
#: ... and how improbable, for rows that follow the null, the share found must be.
EXCESS_SIGNIFICANCE = 1e-3


def excess_over_null(counts: np.ndarray, null: TailNull, k: int, level: float = EXCESS_LEVEL,
                     significance: float = EXCESS_SIGNIFICANCE) -> bool:
    """Whether a class holds more rows at ``p <= level`` under its fitted null than rows that follow it would.

    ``counts``: the class's scores as a histogram on :data:`SCORE_EDGES` (underflow, bins, overflow); ``k``
    its index in ``null``. A row counts when its bin's lower edge already has ``p <= level``, which never
    counts more rows than there are. Rows that follow the null have ``p <= level`` with probability at
    most ``level``, so their count is at most binomial(n, level); the class shows an excess when the
    count found has a binomial tail probability at most ``significance``.
    """
    n = int(counts.sum())
    if n == 0:
        return False
    p_low = null.pvalues(SCORE_EDGES, np.full(len(SCORE_EDGES), k))  # at each bin's lower edge (counts[1:])
    found = int(counts[1:][p_low <= level].sum())
    return found > 0 and binom.sf(found - 1, n, level) <= significance


def member_weights(engaged: np.ndarray) -> np.ndarray:
    """(K, M) Bonferroni weights from (K, M) booleans: in each class, engaged members a full share, the others
    :data:`QUIET_MEMBER_SHARE` of one, normalised to sum to 1 (equal weights where all or none are engaged).

    A member is engaged in a class when its p-values there carry evidence beyond the class's own tail: it gives
    its own p-values (the label detector's calibrated classifier; the pattern detector only in the classes where it
    mined a pattern, its ``evidence``), it is made to compare the batch with trusted
    rows (novelty) and the class holds more batch rows at small p-values than its null, fitted on the trusted
    rows, allows (:func:`excess_over_null`), or its own rule cut an outlying cluster in the class. A null
    fitted on trusted rows does not engage a member by itself: its p-values on clean rows are as uniform as with
    a null fitted on the data, and with full weight they cost the label flips with ``--reference`` what they cost
    without (measured on the field test: flights 0.89 against 0.99 without a reference). Where the cluster rule
    or the excess test decides, the weights depend on the data, and the bound is looser: a null row's combined
    p-value is at most ``t`` with probability at most ``t`` times the sum over members of the largest weight each
    can get (1/2 + 10/11, about 1.41, for a label and a score member), and only in a class where a clean batch
    makes the cluster rule or the excess test fire.
    """
    engaged = np.asarray(engaged, bool)
    share = np.where(engaged, 1.0, QUIET_MEMBER_SHARE)
    return share / share.sum(axis=1, keepdims=True) if share.size else share


def ranking_weights(weights: np.ndarray, engaged_shares: np.ndarray | None = None) -> np.ndarray:
    """(N, M) the weights of the ranking ``suspicion`` from the decisions' (:func:`member_weights`, per row): a
    quiet member keeps :data:`RANKING_QUIET_SHARE` of an engaged one's share instead of ``QUIET_MEMBER_SHARE``.

    ``engaged_shares``: (M,) the share of a full one that each member keeps in the ranking where it is engaged
    and so is a member with a full share (default 1 each; the novelty member's is
    :attr:`~poisonguard.detectors.novelty.NoveltyModel.ranking_share`).

    The decisions need the tenth: it bounds what a quiet member's p-values can cost the budget, and lets a
    strong one through. In a ranking, the p-values of a member with nothing to say in the class are noise that
    rows of the engaged members' evidence compete with: with a tenth, a clean row at spectral ``p = 0.05``
    ranked with a flipped label at label ``p = 0.5``. Measured in memory on the field test's rows, default set,
    10% flips, label folds drawn once (ROC-AUC of the ranking, label p-values before calibration): a tenth
    0.853 / 0.822 / 0.930 on cells, credit, caravan, a hundredth 0.872 / 0.835 / 0.940, the label member alone
    0.876 / 0.837 / 0.955; every backdoor ranked as before (0.99-1.00 where found).
    """
    if weights.size == 0:
        return weights
    engaged = weights >= weights.max(axis=1, keepdims=True) * (1.0 - 1e-9)
    share = np.where(engaged, 1.0, RANKING_QUIET_SHARE)
    if engaged_shares is not None:
        cap = np.asarray(engaged_shares, float)[None, :]
        capped = engaged & (cap < 1.0) & (engaged & (cap >= 1.0)).any(axis=1, keepdims=True)
        share = np.where(capped, np.maximum(cap, RANKING_QUIET_SHARE), share)
    return share / share.sum(axis=1, keepdims=True)


#: Width, in ``L = -log10 p``, of the tie-break in the ranking ``suspicion`` (:func:`break_ties`).
TIE_BREAK = 1e-4


def break_ties(L: np.ndarray, tie_scores: list[np.ndarray], weights: np.ndarray | None = None) -> np.ndarray:
    """The ranking ``suspicion``: the combined ``L`` plus ``TIE_BREAK`` times the members' weighted mean tie score.

    ``tie_scores`` are per member and row, in [0, 1], higher = more suspicious (a member's finer score, or one
    minus its p-value). Most rows' combined p-value is 1 (``L = 0``): every row whose label the label member's
    model finds the most probable has label p-value 1, and no other member sees anything in it. Those rows,
    58-93% of the field-test tables with 10% label flips, would tie; the tie-break orders them, and any rows
    whose ``L`` differ by less than ``TIE_BREAK`` (p-values within 0.03%), by what the members still say. It
    is far below the decisions' resolution (0.01 in ``L``), and decisions never read it: they take ``L``.
    """
    M = len(tie_scores)
    w = np.full((len(L), M), 1.0 / M) if weights is None else weights
    mean = sum(w[:, j] * np.nan_to_num(np.clip(t, 0.0, 1.0), nan=0.0) for j, t in enumerate(tie_scores))
    return L + TIE_BREAK * mean


def combine_pvalues(pvalues: list[np.ndarray], weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted Bonferroni: ``min(1, min_j p_j / w_j)`` per row, ignoring a member's NaN (NaN where all are).

    ``weights``: (N, M) per row (its class's weights), or None for equal weights ``1 / M``.
    """
    if len(pvalues) == 1:
        return pvalues[0]
    if weights is None:
        return np.minimum(1.0, len(pvalues) * np.fmin.reduce(pvalues))
    return np.minimum(1.0, np.fmin.reduce([p / weights[:, j] for j, p in enumerate(pvalues)]))
