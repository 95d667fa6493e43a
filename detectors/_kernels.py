"""Numba kernels of the detectors: arithmetic on contiguous arrays, nothing else.

Each kernel has an obviously correct numpy twin in ``tests/naive.py``. The public wrappers
(in the detector modules) validate and prepare inputs; kernels never raise for user errors.

Notation: N rows, d features, K classes. ``codes`` (int64, shape (N,)) are class indices in
[0, K) or -1 for a class the model does not know (such rows get NaN).
"""

import numpy as np

from ._config import njit


@njit
def soft_clip(v, knee):
    """Identity on [-knee, knee]; beyond, knee + log(1 + excess): continuous, with slope 1 at the knee.

    Extreme values keep their order but lose their leverage, and unlike a hard clip they do
    not pile up on one value (a pile-up would look like a cluster).
    """
    if v > knee:
        return knee + np.log1p(v - knee)
    if v < -knee:
        return -knee - np.log1p(-v - knee)
    return v


@njit
def standardize_clip(X, median, inv_scale, clip, out):
    """out[i, j] = soft_clip((X[i, j] - median[j]) * inv_scale[j], clip)."""
    n, d = X.shape
    for i in range(n):
        for j in range(d):
            out[i, j] = soft_clip((X[i, j] - median[j]) * inv_scale[j], clip)
    return out


@njit
def _row_projection(X, i, c, median, inv_scale, clip, mean, direction):
    """sum_j (soft_clip((X[i, j] - median[j]) * inv_scale[j], clip) - mean[c, j]) * direction[c, j]."""
    acc = 0.0
    for j in range(X.shape[1]):
        acc += (soft_clip((X[i, j] - median[j]) * inv_scale[j], clip) - mean[c, j]) * direction[c, j]
    return acc


@njit
def project_standardized(X, codes, median, inv_scale, clip, mean, direction, out):
    """Project standardised, soft-clipped rows, centred on their class mean, onto their class direction.

    out[i] = _row_projection(X, i, codes[i], ...); NaN where codes[i] < 0.
    """
    for i in range(X.shape[0]):
        c = codes[i]
        out[i] = np.nan if c < 0 else _row_projection(X, i, c, median, inv_scale, clip, mean, direction)
    return out


@njit
def robust_z(X, codes, median, inv_scale, clip, mean, direction, location, inv_spread, out):
    """|projection - location[c]| * inv_spread[c] per row (the spectral suspicion); NaN where c < 0."""
    for i in range(X.shape[0]):
        c = codes[i]
        if c < 0:
            out[i] = np.nan
        else:
            out[i] = abs(_row_projection(X, i, c, median, inv_scale, clip, mean, direction) - location[c]) * inv_spread[c]
    return out


@njit
def standardize_grouped(X, codes, starts, median, inv_scale, clip, shift, out):
    """Standardise rows into class-grouped order, minus their class's shift.

    Row i is written to row ``starts[c] + (rows of class c before i)`` of ``out``, c =
    codes[i] (a stable counting sort; ``starts`` are the class offsets, K + 1 of them), as
    out[., j] = soft_clip((X[i, j] - median[j]) * inv_scale[j], clip) - shift[c, j].
    Each class is then one contiguous slice, and its second moments one BLAS call. Reading
    rows in order and writing K sequential streams keeps memory access sequential.
    """
    n, d = X.shape
    pos = starts[:-1].copy()
    for i in range(n):
        c = codes[i]
        k = pos[c]
        pos[c] = k + 1
        for j in range(d):
            out[k, j] = soft_clip((X[i, j] - median[j]) * inv_scale[j], clip) - shift[c, j]
    return out


@njit
def projection_bins(X, codes, median, inv_scale, clip, mean, direction, inv_unit, low, inv_width, n_bins, out):
    """Bin of each row's projection, in units of its class (times ``inv_unit[c]``), on a uniform grid.

    Bin 0 is underflow (below ``low``), bins 1..n_bins the grid, n_bins + 1 overflow; -1 for
    a row with a negative code. A NaN projection goes to overflow (where ``np.searchsorted``
    sorts NaN); it must never reach ``int()``, whose result for NaN is an arbitrary index.
    The caller counts the bins per class (:class:`~.statistics.Histogram`), so no (classes x
    bins) array is ever allocated.
    """
    for i in range(X.shape[0]):
        c = codes[i]
        if c < 0:
            out[i] = -1
            continue
        t = (_row_projection(X, i, c, median, inv_scale, clip, mean, direction) * inv_unit[c] - low) * inv_width
        if t < 0.0:
            out[i] = 0
        elif t < n_bins:  # False for NaN as well as for t >= n_bins
            out[i] = int(t) + 1
        else:
            out[i] = n_bins + 1
    return out
