"""From scores to decisions: robust location/scale, the outlying-cluster test, quantiles.

Scores (``suspicion``) say how unusual each row is; this module turns their distribution,
summarised as fixed-grid histograms (so it combines across workers), into thresholds.
Kept apart from scoring so that a row's score never depends on the decision rule.
"""

from __future__ import annotations

import numpy as np

#: Grid of the suspicion histograms used for calibration: |z| in [0, 200), steps of 0.01.
SUSPICION_EDGES = np.linspace(0.0, 200.0, 20001)


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
) -> float:
    """Suspicion threshold that cuts off an outlying cluster, or ``inf`` when there is none.

    Beyond ``z_min`` robust standard deviations on either side of the location, look for
    empty stretches at least ``min_gap`` wide beyond which lie at least ``min_size`` rows
    but no more than ``max_fraction`` of all rows. A clean distribution, however heavy its
    tail, thins out without such a gap followed by a mass of rows; a planted cluster sits
    beyond one. The cut is the middle of the widest such gap (on either side), so no row
    lies near it and stray tail rows between the bulk and the cluster are left alone.
    """
    total = counts.sum()
    if total == 0:
        return float("inf")
    z_lo = (edges[:-1] - location) / scale  # z at the lower edge of interior bin k (counts[k + 1])
    z_hi = (edges[1:] - location) / scale
    interior = counts[1:-1]
    best_cut, best_width = float("inf"), 0.0
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
        # rows strictly further out than position i on this side, grid overflow included
        beyond = np.cumsum(c[::-1])[::-1] - c + beyond_grid
        for first, last in _empty_runs(c):
            if beyond[last] < min_size:
                break  # nothing big enough lies further out
            if beyond[last] > max_fraction * total:
                continue
            near, far = (z_lo[idx[first]], z_hi[idx[last]]) if side > 0 else (-z_hi[idx[first]], -z_lo[idx[last]])
            width = far - near
            if width >= min_gap and width > best_width:
                best_cut, best_width = 0.5 * (near + far), width
    return float(best_cut)


def _empty_runs(c: np.ndarray):
    """(first, last) positions of each run of zeros in ``c``, in order."""
    empty = np.concatenate([[False], c == 0, [False]])
    change = np.flatnonzero(empty[1:] != empty[:-1])
    return zip(change[0::2], change[1::2] - 1)


def upper_quantile_threshold(edges: np.ndarray, counts: np.ndarray, fraction: float) -> float:
    """Smallest grid edge ``t`` with at most ``fraction`` of the counted values above it.

    ``counts`` follows :class:`~poisonguard.detectors.statistics.Histogram` (underflow,
    interior bins, overflow). Values above the grid count as above every edge.
    """
    total = counts.sum()
    if total == 0:
        return float("inf")
    allowed = fraction * total
    # above[k] = number of values at or above edges[k]
    above = np.cumsum(counts[::-1])[::-1][1:]
    ok = np.flatnonzero(above <= allowed)
    if len(ok) == 0:
        return float("inf")
    return float(edges[ok[0]])
