"""The data profile attacks are prepared against, and the count-mode cutoff accumulators.

Both are Beam-free combiners (create / add / merge / result): the pipeline wraps them in a
``CombineFn``; any batching and merge order gives the same result.
"""

from __future__ import annotations

import numbers

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..schemas import ROW_ID, ConfigError, row_hash
from ._common import column_numpy, feature_matrix, require_columns

_PROFILE_PURPOSE = "profile-sample"


class DataProfile:
    """Combinable statistics of the input data that attacks need, computed in one pass.

    Exact counts (rows, rows per class), per-feature min/max, and a bounded sample: the
    ``sample_size`` rows with the smallest ``row_hash(row_id, seed, "profile-sample")``,
    which is the same whatever the batching or merge order. Quantiles, robust scales and the
    boundary surrogate come from that sample. Picklable; Beam wraps it in a ``CombineFn``
    (``empty`` / ``add_table`` / ``merge``).

    Use :meth:`empty` then :meth:`add_table` per batch and :meth:`merge` across workers, or
    :meth:`from_table` in memory.
    """

    def __init__(self, *, label_column: str, feature_columns, seed: int, sample_size: int = 20000):
        if not isinstance(sample_size, numbers.Integral) or isinstance(sample_size, bool) or sample_size < 1:
            raise ConfigError(f"profile.sample_size: expected a positive integer, got {sample_size!r}")
        self.label_column = str(label_column)
        self.feature_columns = tuple(str(c) for c in feature_columns)
        self.seed = int(seed)
        self.sample_size = int(sample_size)
        self.n_rows = 0
        self.class_counts: dict = {}
        d = len(self.feature_columns)
        self._min = np.full(d, np.inf)
        self._max = np.full(d, -np.inf)
        self._hash = np.empty(0, np.uint64)
        self._X = np.empty((0, d))
        self._y = np.empty(0, object)
        self._ids = np.empty(0, object)

    @classmethod
    def empty(cls, *, label_column: str, feature_columns, seed: int, sample_size: int = 20000) -> "DataProfile":
        """A profile of no rows."""
        return cls(label_column=label_column, feature_columns=feature_columns, seed=seed, sample_size=sample_size)

    @classmethod
    def from_table(cls, table: pa.Table, *, label_column: str, feature_columns, seed: int, sample_size: int = 20000):
        """The profile of one in-memory table."""
        return cls.empty(label_column=label_column, feature_columns=feature_columns, seed=seed,
                         sample_size=sample_size).add_table(table)

    # -- accumulate
    def add_table(self, table: pa.Table) -> "DataProfile":
        """Add the rows of ``table`` (needs ``row_id``, the label and the feature columns); returns self."""
        require_columns(table, (ROW_ID, self.label_column, *self.feature_columns), "profile")
        if table.num_rows == 0:
            return self
        self.n_rows += table.num_rows
        counts = pc.value_counts(table.column(self.label_column).combine_chunks())
        for item in counts.to_pylist():
            self.class_counts[item["values"]] = self.class_counts.get(item["values"], 0) + item["counts"]
        X = feature_matrix(table, self.feature_columns)
        if X.shape[1]:
            with np.errstate(invalid="ignore"):
                self._min = np.fmin(self._min, np.nanmin(X, axis=0, initial=np.inf, where=~np.isnan(X)))
                self._max = np.fmax(self._max, np.nanmax(X, axis=0, initial=-np.inf, where=~np.isnan(X)))
        ids = column_numpy(table, ROW_ID)
        h = row_hash(ids, self.seed, purpose=_PROFILE_PURPOSE)
        keep = np.argsort(h, kind="stable")[: self.sample_size]
        labels = column_numpy(table, self.label_column).astype(object)
        self._absorb(h[keep], X[keep], labels[keep], ids[keep].astype(object))
        return self

    def merge(self, other: "DataProfile") -> "DataProfile":
        """Fold ``other`` into this profile; any merge order gives the same result. Returns self."""
        same = (self.label_column, self.feature_columns, self.seed, self.sample_size)
        if same != (other.label_column, other.feature_columns, other.seed, other.sample_size):
            raise ConfigError("profile.merge: the two profiles were built with different columns, seed or sample_size")
        self.n_rows += other.n_rows
        for label, n in other.class_counts.items():
            self.class_counts[label] = self.class_counts.get(label, 0) + n
        self._min = np.fmin(self._min, other._min)
        self._max = np.fmax(self._max, other._max)
        self._absorb(other._hash, other._X, other._y, other._ids)
        return self

    def _absorb(self, h, X, y, ids) -> None:
        h = np.concatenate([self._hash, h])
        order = np.argsort(h, kind="stable")[: self.sample_size]
        self._hash = h[order]
        self._X = np.concatenate([self._X, X])[order]
        self._y = np.concatenate([self._y, y])[order]
        self._ids = np.concatenate([self._ids, ids])[order]

    # -- results
    @property
    def classes(self) -> tuple:
        """Sorted tuple of every label seen (nulls excluded)."""
        return tuple(sorted(k for k in self.class_counts if k is not None))

    @property
    def feature_min(self) -> dict:
        return {c: float(v) for c, v in zip(self.feature_columns, self._min)}

    @property
    def feature_max(self) -> dict:
        return {c: float(v) for c, v in zip(self.feature_columns, self._max)}

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The bounded sample as ``(X, y, row_ids)``, ordered by hash: X float64 (m, d), m <= sample_size."""
        return self._X.copy(), np.array(self._y.tolist()), np.array(self._ids.tolist())

    def _column(self, column: str) -> np.ndarray:
        if column not in self.feature_columns:
            raise ConfigError(f"profile: '{column}' is not one of the feature columns {list(self.feature_columns)}")
        values = self._X[:, self.feature_columns.index(column)]
        values = values[~np.isnan(values)]
        if values.size == 0:
            raise ConfigError(f"profile: no non-null value of '{column}' in the data")
        return values

    def quantile(self, column: str, q: float) -> float:
        """The ``q``-quantile of ``column`` estimated from the sample (exact when N <= sample_size)."""
        return float(np.quantile(self._column(column), q))

    def median(self, column: str) -> float:
        return self.quantile(column, 0.5)

    def robust_scale(self, column: str) -> float:
        """Robust standard deviation of ``column``: IQR / 1.349, else the sd, else 1.0 (constant column)."""
        values = self._column(column)
        q1, q3 = np.quantile(values, [0.25, 0.75])
        for scale in ((q3 - q1) / 1.349, float(np.std(values))):
            if np.isfinite(scale) and scale > 0:
                return float(scale)
        return 1.0


def count_cutoff(hashes_of_eligible_rows: np.ndarray, count: int, *, name: str = "attack") -> int:
    """The ``count``-th smallest key: count mode selects eligible rows with ``key <= cutoff``.

    Raises ConfigError naming the attack when fewer than ``count`` rows are eligible.
    """
    h = np.asarray(hashes_of_eligible_rows, dtype=np.uint64)
    if count > h.size:
        raise ConfigError(f"{name}.count: {count} rows asked but only {h.size} are eligible")
    return int(np.partition(h, count - 1)[count - 1])


class SmallestHashes:
    """Combinable bottom-``count`` of uint64 keys, for the pipeline's count-mode pass.

    ``add`` the keys of each batch's eligible rows, ``merge`` accumulators in any order, then
    ``cutoff()`` gives the value to pass to :meth:`PreparedAttack.apply`.
    """

    def __init__(self, count: int, *, name: str = "attack"):
        self.count = int(count)
        self.name = name
        self.seen = 0
        self.values = np.empty(0, np.uint64)

    def add(self, hashes) -> "SmallestHashes":
        h = np.asarray(hashes, dtype=np.uint64)
        self.seen += h.size
        self._keep(h)
        return self

    def merge(self, other: "SmallestHashes") -> "SmallestHashes":
        self.seen += other.seen
        self._keep(other.values)
        return self

    def _keep(self, h) -> None:
        both = np.concatenate([self.values, h])
        if both.size > self.count:
            both = np.partition(both, self.count - 1)[: self.count]
        self.values = np.sort(both)

    def cutoff(self) -> int:
        if self.seen < self.count:
            raise ConfigError(f"{self.name}.count: {self.count} rows asked but only {self.seen} are eligible")
        return int(self.values[self.count - 1])
