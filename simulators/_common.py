"""Small helpers shared by the attack modules: an immutable mapping, column access, hash-drawn normals."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from ..schemas import ConfigError, row_hash, uniform_from_hash


class FrozenMap(Mapping):
    """An immutable, hashable and picklable mapping (``MappingProxyType`` does not pickle)."""

    __slots__ = ("_data",)

    def __init__(self, data=()):
        object.__setattr__(self, "_data", dict(data))

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __hash__(self):
        return hash(tuple(self._data.items()))

    def __eq__(self, other):
        return isinstance(other, Mapping) and dict(self._data) == dict(other)

    def __repr__(self):
        return f"{dict(self._data)!r}"

    def __getstate__(self):
        return self._data

    def __setstate__(self, state):
        object.__setattr__(self, "_data", state)


def _seed_int(seed: int, *parts) -> int:
    """A stable 64-bit integer from the seed and labels, for seeded local generators."""
    text = ":".join([str(int(seed)), *map(str, parts)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def hash_normal(row_ids, seed: int, purpose: str) -> np.ndarray:
    """Standard normal draws, one per row id, from two keyed hashes (Box-Muller); no RNG state."""
    u1 = uniform_from_hash(row_hash(row_ids, seed, purpose=f"{purpose}#1"))
    u2 = uniform_from_hash(row_hash(row_ids, seed, purpose=f"{purpose}#2"))
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)  # 1 - u1 in (0, 1]


def column_numpy(table: pa.Table, name: str) -> np.ndarray:
    """A column as numpy (object dtype for strings); never a view the caller may write through."""
    return np.array(table.column(name).to_numpy(zero_copy_only=False), copy=True)


def feature_matrix(table: pa.Table, columns) -> np.ndarray:
    """Columns as a float64 matrix of shape (N, len(columns)); nulls become NaN."""
    if not columns:
        return np.empty((table.num_rows, 0))
    cols = [table.column(c).cast(pa.float64()).to_numpy(zero_copy_only=False) for c in columns]
    return np.column_stack(cols).astype(np.float64, copy=False)


def require_columns(table: pa.Table, columns, who: str) -> None:
    for column in columns:
        if column not in table.column_names:
            raise ConfigError(f"{who}: the data has no column '{column}'")
