"""Keyed, platform-independent hashing of row ids.

Which rows an attack touches and which rows a detector samples are decided by a keyed hash
of ``(seed, row_id)``, never by row order or a global random state, so results do not
depend on the runner, the worker count or the batch size.
"""

import hashlib

import numpy as np
import pandas as pd


def _hash_key(seed: int, purpose: str) -> str:
    # pandas' SipHash takes a 16-character key; derive it from the seed and the purpose so
    # that, say, the detector's sample and an attack's selection are independent.
    digest = hashlib.blake2b(f"{purpose}:{int(seed)}".encode(), digest_size=8).hexdigest()
    return digest  # 16 hex characters


def row_hash(row_ids, seed: int, purpose: str = "sample") -> np.ndarray:
    """Return a uint64 SipHash of each row id, keyed by ``seed`` and ``purpose``.

    Parameters
    ----------
    row_ids : array-like of str or int, shape (N,)
        Row identifiers; integers and strings hash differently (``1`` is not ``"1"``).
    seed : int
        Key of the hash.
    purpose : str, default "sample"
        Domain separator, so different uses of one seed draw independent rows.
    """
    values = np.asarray(row_ids)
    key = _hash_key(seed, purpose)
    if values.dtype.kind in "iu":
        # pandas keys only its string hash; integers go through splitmix64 keyed by the same
        # key, twice, so that consecutive ids map to unrelated, seed-dependent values.
        k = np.uint64(int(key, 16))
        x = values.astype(np.int64, copy=False).view(np.uint64)
        with np.errstate(over="ignore"):
            return _splitmix64(_splitmix64(x ^ k) + k)
    values = values.astype(object, copy=False)
    return pd.util.hash_array(values, encoding="utf8", hash_key=key, categorize=False)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, a bijection of uint64 that mixes every input bit into every output bit."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def value_hash(X: np.ndarray, seed: int, codes: np.ndarray | None = None) -> np.ndarray:
    """A keyed uint64 hash of each row's feature values (N, d), at float32 precision, and of its integer
    code (N,) where ``codes`` is given (a label's class index).

    It depends on the values alone (-0 as 0, every NaN alike), not on the row id or its
    type, so a row read as float32 or float64, and any exact copy of it, hash alike.
    """
    X = np.asarray(X, dtype=np.float32).astype(np.float64)
    X = np.where(np.isnan(X), np.nan, X + 0.0)  # canonical NaN; -0.0 + 0.0 == +0.0
    bits = np.ascontiguousarray(X).view(np.uint64)
    # the seed's key, wrapped to 64 bits in Python integers (numpy warns on a scalar uint64 overflow)
    h = np.full(len(X), (int(seed) * 0x9E3779B97F4A7C15 + 1) % (1 << 64), dtype=np.uint64)
    for j in range(bits.shape[1]):
        h = _splitmix64(h ^ bits[:, j])
    if codes is not None:
        h = _splitmix64(h ^ np.asarray(codes, dtype=np.int64).view(np.uint64))
    return h


def uniform_from_hash(hashes: np.ndarray) -> np.ndarray:
    """Map uint64 hashes to floats uniform in [0, 1) (53 significant bits)."""
    return (np.asarray(hashes, dtype=np.uint64) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
