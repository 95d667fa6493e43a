"""Obviously correct numpy twins of the numba kernels (compared in test_kernels.py)."""

import numpy as np


def soft_clip(v, knee):
    v = np.asarray(v, dtype=np.float64)
    out = v.copy()
    hi, lo = v > knee, v < -knee
    out[hi] = knee + np.log1p(v[hi] - knee)
    out[lo] = -knee - np.log1p(-v[lo] - knee)
    return out


def standardize_clip(X, median, inv_scale, clip):
    return soft_clip((X - median) * inv_scale, clip)


def project_standardized(X, codes, median, inv_scale, clip, mean, direction):
    Z = standardize_clip(X, median, inv_scale, clip)
    out = np.full(len(X), np.nan)
    known = codes >= 0
    c = codes[known]
    out[known] = np.einsum("ij,ij->i", Z[known] - mean[c], direction[c])
    return out


def standardize_grouped(X, codes, median, inv_scale, clip, shift):
    order = np.argsort(codes, kind="stable")
    return standardize_clip(X[order], median, inv_scale, clip) - shift[codes[order]]


def projection_histogram(X, codes, median, inv_scale, clip, mean, direction, inv_unit, low, width, n_bins, n_classes):
    p = project_standardized(X, codes, median, inv_scale, clip, mean, direction)
    counts = np.zeros((n_classes, n_bins + 2), dtype=np.int64)
    edges = low + width * np.arange(n_bins + 1)
    for c in range(n_classes):
        v = p[codes == c] * inv_unit[c]
        counts[c] = np.bincount(np.searchsorted(edges, v, side="right"), minlength=n_bins + 2)
    return counts


def robust_z(X, codes, median, inv_scale, clip, mean, direction, location, inv_spread):
    p = project_standardized(X, codes, median, inv_scale, clip, mean, direction)
    safe = np.maximum(codes, 0)
    return np.where(codes >= 0, np.abs(p - location[safe]) * inv_spread[safe], np.nan)


def histogram_from_bins(bins, codes, n_bins, n_classes):
    """The (classes x bins) counts of the per-row bins ``_kernels.projection_bins`` gives (rows of code < 0 left out)."""
    counts = np.zeros((n_classes, n_bins + 2), dtype=np.int64)
    known = codes >= 0
    np.add.at(counts, (codes[known], bins[known]), 1)
    return counts
