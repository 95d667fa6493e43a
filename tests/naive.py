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
