"""From scores to decisions: robust location/scale, the outlying-cluster test, quantiles.

Scores (``suspicion``) say how unusual each row is; this module turns their distribution,
summarised as fixed-grid histograms (so it combines across workers), into thresholds.
Kept apart from scoring so that a row's score never depends on the decision rule.
"""

from __future__ import annotations

import numpy as np

from .statistics import uniform_grid

#: Grid of the suspicion histograms used for calibration: |z| in [0, 200), steps of 0.01.
SUSPICION_EDGES = uniform_grid(0.0, 200.0, 20001)
#: "auto" cuts a class only with at least this many rows per dimension of its feature space: below it, a
#: direction or robust covariance fitted to the class singles out genuine small subgroups (digits: 180
#: rows a class in 61 dimensions) as readily as planted ones, and a gap along it is no evidence of poison.
CUT_ROWS_PER_DIMENSION = 5
#: Default ``min_tail_gap`` of :func:`cluster_threshold`: a gap's Renyi spacing statistic must reach this.
MIN_TAIL_GAP = 3.0


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
