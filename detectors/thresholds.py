"""From scores to decisions: robust location/scale, the outlying-cluster test, quantiles.

Scores (``suspicion``) say how unusual each row is; this module turns their distribution,
summarised as fixed-grid histograms (so it combines across workers), into thresholds.
Kept apart from scoring so that a row's score never depends on the decision rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, binom

from .statistics import uniform_grid

#: Grid of the suspicion histograms used for calibration: |z| in [0, 200), steps of 0.01.
SUSPICION_EDGES = uniform_grid(0.0, 200.0, 20001)
#: "auto" cuts a class only with at least this many rows per dimension of its feature space: below it, a
#: direction or robust covariance fitted to the class singles out genuine small subgroups (digits: 180
#: rows a class in 61 dimensions) as readily as planted ones, and a gap along it is no evidence of poison.
CUT_ROWS_PER_DIMENSION = 5
#: Default ``min_tail_gap`` of :func:`cluster_threshold`: a gap's Renyi spacing statistic must reach this.
MIN_TAIL_GAP = 3.0
#: A cut cluster stays cut only where it is a cluster of the class's own (:class:`OwnCluster`): the other classes' rows
#: reach it less than 1 / OTHER_CLASS_RATIO as often ...
OTHER_CLASS_RATIO = 3.0
#: ... and significantly less often (binomial, at this level) ...
OTHER_CLASS_SIGNIFICANCE = 1e-3
#: ... at least ``min_cluster_size`` of the class's rows reach it, and they are at least this share of all rows that
#: do, the other classes' rows counted from their sample at the upper bound of a one-sided interval at this error.
#: A dirty-label cluster is its target class's: its rows' share at the cut was 0.74-1.00 in the field test's
#: backdoored diamonds, loans, credit and cells batches (point estimates), 0.77 for a 3% cluster in a heavy-tailed
#: synthetic table of three overlapping classes, and all 27 rows of a 3x3 patch on MNIST 7s relabelled 1. A subgroup
#: that merely predicts the class is not: caravan's boat owners, ten times as common in its class `Yes` as in `No`,
#: were 0.27 of the rows that reach them in the clean batch, and 0.33-0.57 at the cut of the target10 batch, whose
#: own rule cut them with four of five detector seeds (at most 0.41 at the bound).
CLUSTER_PURITY = 0.5
CLUSTER_PURITY_ERROR = 0.1
#: ... judged on at most this many sample rows of all classes, and only with this many of the other classes.
OTHER_CLASS_ROWS = 20000
MIN_OTHER_ROWS = 200
#: :func:`own_cluster_cut` (the clustering and robust spectral detectors): the other classes are asked about a cut only
#: where their sample would hold at least this many rows beyond it at the class's share ...
MIN_EXPECTED_OTHER_ROWS = 10
#: ... and the cut stands from the first level at or beyond it where they reach less than 1 / OWN_CLUSTER_RATIO as
#: often as the class's rows (:class:`OwnCluster`'s other conditions as they are). Measured on the field test's tables,
#: the other classes' share beyond a cut against the class's: subgroups every class holds 0.7-1.5 (loans' early
#: pay-offs, caravan's rows off the mode of its zero-inflated columns, diamonds' class Ideal), the flights table's
#: JFK long-haul flights 0.32 (a subgroup three times as common in JFK, 61% of the rows that far out; 2.1% of the
#: clean table flagged at a ratio of 2), dirty-label clusters at most 0.06.
OWN_CLUSTER_RATIO = 5.0
#: ... at most this many levels, the innermost the cut's rows reach.
OWN_CLUSTER_LEVELS = 256

@dataclass(frozen=True)
class OwnCluster:
    """Whether a class's rows at or beyond levels of its suspicion are a cluster of its own, not structure the data
    has in every class. The cluster rules of the spectral, robust spectral and clustering detectors cut a class only
    there, and the spectral detector frees a tail's p-value floor only from there. Called with the levels (ascending)
    and the class's share of rows at or beyond each.

    Three conditions. The other classes' rows, each about its own class's centre and scored along the class's
    direction (or with its whitening), reach the level less than 1 / ``ratio`` (:data:`OTHER_CLASS_RATIO`) as
    often as the class's rows, and significantly so (:func:`rare_elsewhere`). At least ``min_rows`` of the class's
    rows reach it. And they are at least :data:`CLUSTER_PURITY` of all rows that do, the other classes' counted from
    their sample rows. A dirty-label cluster is in its target class only: the rows it was taken from lost their place
    when they were stamped.

    * Caravan's tractor owners (zero-inflated policy counts) are a few percent of both classes; along the majority
      class's spectral direction they lay past a gap, and its own rule cut them in the field test's poisoned batches
      (200 clean rows). In its door3 batch: 71 of the majority class's 5,300 rows beyond its cut, 2 of 522 sample
      rows of the other class (binomial p = 0.03): not cut.
    * Caravan's boat owners are ten times as common in its class `Yes` as in `No`, and a third of the rows that reach
      them along `Yes`'s direction. With 547 rows moved into `Yes` (the field test's target10), its own rule cut
      them in 8 of 10 runs (16 rows; in the field test 13 of the 16 flagged rows were clean); in the clean batch,
      where `Yes` is too small for the rule, the freed floor flagged all 13 (see :data:`CLUSTER_PURITY`).
    * Loans that are paid off early (large ``paid_principal``, no ``balance``) are 4-8% of every grade. The 2-means
      split of the clustering detector isolates them in grades C and D as a second mode, and the robust spectral
      detector's minimum covariance determinant, fitted on the loans still running, puts them past a gap: 2.03% and
      1.57% of the clean table were flagged. The other grades reach the cut at 0.7-1.5 times the class's share.

    ``others``: the other classes' suspicions (:func:`other_class_rows` gives their rows; None: too few to judge,
    and nothing is), ``other_rows``: how many rows the other classes have, ``rows``: how many the class has."""

    others: np.ndarray | None
    other_rows: int
    rows: int
    min_rows: int
    ratio: float = OTHER_CLASS_RATIO

    def __post_init__(self):
        if self.others is not None:
            object.__setattr__(self, "others", np.sort(self.others))

    def reached(self, levels: np.ndarray) -> np.ndarray:
        """How many of the other classes' sample rows lie beyond each level."""
        return len(self.others) - np.searchsorted(self.others, levels, side="right")

    def __call__(self, levels: np.ndarray, share: np.ndarray) -> np.ndarray:
        if self.others is None:
            return np.zeros(len(levels), dtype=bool)
        n, reached, held = len(self.others), self.reached(levels), share * self.rows
        elsewhere = beta.ppf(1.0 - CLUSTER_PURITY_ERROR, reached + 1, n - reached) * self.other_rows  # upper bound
        pure = held >= CLUSTER_PURITY * (held + elsewhere)
        return rare_elsewhere(reached, n, share, self.ratio) & (held >= self.min_rows) & pure


def centred_sample_rows(samples: list[np.ndarray], centres: np.ndarray) -> list[np.ndarray]:
    """Each class's (standardised) sample rows about its centre, the first ``OTHER_CLASS_ROWS / K`` of each (float32).

    A hash sample is sorted by hash, so its first rows are a random subset of it, the same whatever the batching.
    """
    take = max(1, OTHER_CLASS_ROWS // max(len(samples), 1))
    return [(rows[:take] - centres[k]).astype(np.float32) for k, rows in enumerate(samples)]


def other_class_rows(centred: list[np.ndarray], k: int) -> np.ndarray | None:
    """The rows of :func:`centred_sample_rows` of every class but k (float64); None with fewer than
    :data:`MIN_OTHER_ROWS` of them."""
    others = [rows for j, rows in enumerate(centred) if j != k]
    if sum(len(rows) for rows in others) < MIN_OTHER_ROWS:
        return None
    return np.concatenate(others).astype(np.float64)


def own_cluster_cut(edges: np.ndarray, counts: np.ndarray, loc: float, sc: float, cut: float, others: np.ndarray | None,
                    other_rows: int, min_rows: int) -> tuple[float, float]:
    """Where a class's cut stands once the other classes are asked: from the first level at or beyond it where the
    class's rows are a cluster of its own (``inf`` where there is none: the rows beyond the cut are structure the other
    classes hold too); and the share of the other classes' sample rows beyond the cut (NaN where there are none to
    ask).

    ``counts``: the class's score histogram on ``edges`` (underflow, bins, overflow), ``z = (score - loc) / sc``;
    ``cut`` in z; ``others``: the z of the other classes' rows (:func:`other_class_rows`, each about its own class's
    centre, scored as the class's rows are; None: too few, and the cut stands); ``other_rows``: how many rows the
    other classes have. The levels are the cut and the lower edges of the class's occupied bins beyond it that at least
    half of the rows beyond the cut reach; a cluster of the class's own is :class:`OwnCluster` with
    :data:`OWN_CLUSTER_RATIO`. A cluster can sit past a stretch of the class's tail that the other classes' tails
    reach too, and a few rows far out are no evidence for the rest (loans' grade C, cut at z 24, 172 rows of its early
    pay-offs, holds 9 rows beyond z 235 against 3 of 5,319 sample rows of the other grades). The other classes are
    asked only where their sample would hold at least :data:`MIN_EXPECTED_OTHER_ROWS` rows beyond the cut at the
    class's share; with fewer, a subgroup that every class holds could be missing from it by chance, and the cut
    stands (breast_cancer: 11 stamped rows among the 368 of its benign class, against 212 malignant rows, 6 expected).
    """
    if others is None:
        return cut, float("nan")
    total = counts.sum()
    beyond = np.cumsum(counts[::-1])[::-1]  # beyond[1 + i]: rows in interior bin i (lower edge edges[i]) and above
    first = int(np.searchsorted(edges, loc + cut * sc, side="left"))
    bins = first + np.flatnonzero((counts[1 + first:-1] > 0) & (beyond[1 + first:-1] >= beyond[1 + first] / 2.0))
    bins = bins[:OWN_CLUSTER_LEVELS]
    levels = np.concatenate([[cut], (edges[bins] - loc) / sc])
    shares = np.concatenate([[beyond[1 + first]], beyond[1 + bins]]) / max(total, 1)
    own = OwnCluster(others, other_rows, int(total), min_rows, ratio=OWN_CLUSTER_RATIO)
    other_share = float(own.reached(levels[:1])[0] / len(others))
    if shares[0] * len(others) < MIN_EXPECTED_OTHER_ROWS:
        return cut, other_share
    first_own = np.flatnonzero(own(levels, shares))
    return (float(levels[first_own[0]]) if len(first_own) else float("inf")), other_share


def cut_pvalue_ceiling(scores: np.ndarray, codes: np.ndarray, thresholds: np.ndarray, below: np.ndarray) -> np.ndarray:
    """Largest p-value a row beyond its class's own cut may have (1 elsewhere; NaN where the score is NaN).

    ``thresholds`` (K,): the classes' cuts in the score's units; ``below`` (K,): how many of the class's rows lie
    below its cut (0: the class is not cut, no ceiling). The rows below a cut are the class without the cluster the
    cut found, and the decision layer fits the class's null on them; a row beyond all of them is as rare among them
    as a conformal p-value says, ``1 / (below + 1)``, whatever the tail fitted to their quantiles extrapolates.
    ``codes``: each row's class index, -1 for an unknown class.
    """
    known = codes >= 0
    c = np.maximum(codes, 0)
    if not len(thresholds):
        return np.where(np.isnan(scores), np.nan, 1.0)
    beyond = known & (below[c] > 0) & (scores > thresholds[c])
    return np.where(np.isnan(scores), np.nan, np.where(beyond, 1.0 / (below[c] + 1.0), 1.0))


def rare_elsewhere(reached, n_others: int, share, ratio: float = OTHER_CLASS_RATIO):
    """The other classes reach a level less than 1 / ``ratio`` as often as the class, and significantly."""
    return (np.asarray(reached) * ratio < share * n_others) & \
        (binom.cdf(reached, n_others, share) <= OTHER_CLASS_SIGNIFICANCE)


def _centers(edges: np.ndarray) -> np.ndarray:
    """Centres of the interior bins, with -inf/+inf standing for underflow and overflow."""
    mid = 0.5 * (edges[:-1] + edges[1:])
    return np.concatenate([[-np.inf], mid, [np.inf]])


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    cum = np.cumsum(w)
    k = int(np.searchsorted(cum, 0.5 * cum[-1]))
    return float(v[min(k, len(v) - 1)])


def robust_location_scale(edges: np.ndarray, counts: np.ndarray, fallback_scale: float) -> tuple[float, float]:
    """Median and 1.4826 x MAD of the values summarised by a histogram (to bin resolution).

    ``fallback_scale`` is used when more than half the values share one bin (MAD = 0).
    """
    if counts.sum() == 0:
        return 0.0, fallback_scale
    centers = _centers(edges)
    location = weighted_median(centers, counts)
    if not np.isfinite(location):  # more than half beyond the grid: no robust estimate
        return 0.0, fallback_scale
    mad = weighted_median(np.abs(centers - location), counts)
    scale = 1.4826 * mad
    resolution = edges[1] - edges[0]
    if not np.isfinite(scale) or scale < resolution:
        scale = fallback_scale
    return location, float(scale)


def cluster_threshold(
    edges: np.ndarray,
    counts: np.ndarray,
    location: float,
    scale: float,
    *,
    z_min: float,
    min_gap: float,
    min_size: int,
    max_fraction: float,
    min_significance: float = 4.0,
    min_tail_gap: float = 0.0,
    origin: float = 0.0,
) -> float:
    """Suspicion threshold that cuts off an outlying cluster, or ``inf`` when there is none.

    Only the part of the distribution beyond ``z_min`` robust standard deviations from
    ``location`` (either side) is searched, and a cluster must hold at least ``min_size``
    rows and at most ``max_fraction`` of all rows. Two shapes count as a cluster:

    1. **a gap**: an empty stretch at least ``min_gap`` wide with the cluster beyond it.
       The cut is the middle of the widest such gap, so stray tail rows between the bulk
       and the cluster are left alone;
    2. **a valley** (when there is no gap): the density, counted in windows ``min_gap / 2``
       wide, falls to ``v`` rows and then rises again to a peak of ``B`` rows further out,
       with ``(B - v) / sqrt(B + v) >= min_significance`` (a Poisson z-test: a clean
       tail, however heavy, keeps falling; a planted cluster is a second mode). The cut is
       the middle of the most significant valley.

    A gap must also be wide *relative to how far out it lies* (``min_tail_gap``): with
    ``m`` rows beyond it and ``s_in < s_out`` the scores at its inner and outer edge,
    measured from their natural zero ``origin`` (in z units: ``s = z - origin``), the
    spacing statistic ``m * ln(s_out / s_in)`` must reach ``min_tail_gap``. Under a
    Pareto tail of index ``a`` this statistic is exponential with mean ``1 / a`` (the
    Renyi representation behind Hill's estimator), whatever the scale and however far
    out the gap lies, so 3 is a 5% tail for ``a = 1``: a heavy clean tail that has
    spread to z = 14 has gaps of several z by itself, and a few rows beyond such a gap
    are not a cluster; a planted cluster lies well beyond it (a trigger puts its rows at
    one far point) or holds many rows. ``0`` turns the check off.

    A clean distribution, however heavy its tail, has neither, so its class loses nothing.
    """
    total = counts.sum()
    if total == 0:
        return float("inf")
    z_lo = (edges[:-1] - location) / scale  # z at the lower edge of interior bin k (counts[k + 1])
    z_hi = (edges[1:] - location) / scale
    width = z_hi[0] - z_lo[0]
    interior = counts[1:-1]
    gap_cut, gap_width = float("inf"), 0.0
    valley_cut, valley_score = float("inf"), min_significance
    window = max(int(round(0.5 * min_gap / width)), 1)
    for side in (+1, -1):
        if side > 0:
            idx = np.flatnonzero(z_lo >= z_min)
            beyond_grid = counts[-1]
        else:
            idx = np.flatnonzero(z_hi <= -z_min)[::-1]
            beyond_grid = counts[0]
        if len(idx) == 0:
            continue
        c = interior[idx]
        near = z_lo[idx] if side > 0 else -z_hi[idx]  # |z| at the inner edge of position i
        zero = side * origin  # the scores' natural zero, in the units of ``near``
        # rows strictly further out than position i on this side, grid overflow included
        beyond = np.cumsum(c[::-1])[::-1] - c + beyond_grid
        for first, last in _empty_runs(c):
            if beyond[last] < min_size:
                break  # nothing big enough lies further out
            if beyond[last] > max_fraction * total:
                continue
            w = near[last] + width - near[first]
            if min_tail_gap > 0 and not tail_gap_ok(beyond[last], near[first] - zero, near[last] + width - zero,
                                                    min_tail_gap):
                continue
            if w >= min_gap and w > gap_width:
                gap_cut, gap_width = 0.5 * (near[first] + near[last] + width), w
        # valleys: windowed counts v[i] over positions i..i+window-1, peak further out
        csum = np.concatenate([[0], np.cumsum(c)])
        n_win = len(c) - window + 1
        if n_win <= window:
            continue
        v = csum[window:window + n_win] - csum[:n_win]
        v[-1] += beyond_grid  # the grid's overflow belongs to the outermost window
        peak = np.maximum.accumulate(v[::-1])[::-1]  # peak[i] = max v[i:]
        for i in range(n_win - window):
            b = peak[i + window]
            if b < min_size:
                break
            mid = i + window // 2
            mass = beyond[mid] + c[mid]
            if mass > max_fraction * total or mass < min_size:
                continue
            score = (b - v[i]) / np.sqrt(b + v[i])
            if score > valley_score:
                valley_cut, valley_score = near[mid], score
    return float(gap_cut if np.isfinite(gap_cut) else valley_cut)


def tail_gap_ok(rows_beyond: float, inner: float, outer: float, min_tail_gap: float) -> bool:
    """Renyi spacing test of a gap from ``inner`` to ``outer`` (distances from the scores' zero) with rows beyond.

    ``rows_beyond * ln(outer / inner) >= min_tail_gap``; see :func:`cluster_threshold`.
    """
    if inner <= 0:
        return True
    return bool(rows_beyond * np.log(outer / inner) >= min_tail_gap)


def _empty_runs(c: np.ndarray):
    """(first, last) positions of each run of zeros in ``c``, in order."""
    empty = np.concatenate([[False], c == 0, [False]])
    change = np.flatnonzero(empty[1:] != empty[:-1])
    return zip(change[0::2], change[1::2] - 1)


def counts_at_or_above(counts: np.ndarray) -> np.ndarray:
    """``out[k]`` = values at or above ``edges[k]``, from a histogram laid out as
    :class:`~poisonguard.detectors.statistics.Histogram` (underflow, interior bins, overflow)."""
    return np.cumsum(counts[::-1])[::-1][1:]


def upper_quantile_threshold(edges: np.ndarray, counts: np.ndarray, fraction: float) -> float:
    """Smallest grid edge ``t`` with at most ``fraction`` of the counted values above it.

    ``counts`` follows :class:`~poisonguard.detectors.statistics.Histogram` (underflow,
    interior bins, overflow). Values above the grid count as above every edge.
    """
    total = counts.sum()
    if total == 0:
        return float("inf")
    allowed = fraction * total
    above = counts_at_or_above(counts)
    ok = np.flatnonzero(above <= allowed)
    if len(ok) == 0:
        return float("inf")
    return float(edges[ok[0]])
