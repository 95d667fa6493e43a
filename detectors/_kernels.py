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
def project_standardized(X, codes, median, inv_scale, clip, mean, direction, out):
    """Project standardized, clipped rows onto their class direction.

    out[i] = sum_j (soft_clip((X[i, j] - median[j]) * inv_scale[j], clip) - mean[c, j]) * direction[c, j]
    with c = codes[i]; NaN where c < 0.
    """
    n, d = X.shape
    for i in range(n):
        c = codes[i]
        if c < 0:
            out[i] = np.nan
            continue
        acc = 0.0
        for j in range(d):
            acc += (soft_clip((X[i, j] - median[j]) * inv_scale[j], clip) - mean[c, j]) * direction[c, j]
        out[i] = acc
    return out
