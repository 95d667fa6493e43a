"""Combinable per-class statistics: the first part of every detector.

Each statistic is a small Beam-free accumulator with ``add_batch`` and ``merge`` that
returns the same answer whatever the order of batches and merges (up to float rounding for
the moments, exactly for the sample and the histograms). A Beam ``CombineFn`` adapter in
``poisonguard.pipelines`` only calls ``merge``; the batch-level ``add_batch`` runs in the
scoring ``ParDo`` and in the in-memory estimator alike.

Notation: n rows in a batch of one class, d features.
"""

from __future__ import annotations

import numpy as np


class HashSample:
    """A bounded, deterministic sample: the ``size`` rows with the smallest row hash.

    Because membership depends only on each row's hash, the sample is the same whatever
    the batch size, order or number of workers. Internally up to ``2 * size`` candidates
    are buffered and trimmed in one go, so adding and merging cost amortised linear time;
    :meth:`result` gives the exact sample, sorted by hash.
    """

    __slots__ = ("size", "hashes", "rows", "_cut")

    def __init__(self, size: int, n_features: int):
        self.size = int(size)
        self.hashes = np.empty(0, dtype=np.uint64)
        self.rows = np.empty((0, n_features), dtype=np.float64)
        self._cut = None  # once full, only hashes below this can enter

    def add_batch(self, X: np.ndarray, hashes: np.ndarray, rows: np.ndarray | None = None) -> HashSample:
        """Offer rows ``X[rows]`` with hashes ``hashes[rows]`` (all rows by default).

        Only candidates that can still make the sample are gathered from ``X``.
        """
        candidates = np.arange(len(hashes)) if rows is None else rows
        h = hashes[candidates]
        if self._cut is not None:
            below = h < self._cut
            candidates, h = candidates[below], h[below]
        if len(h) > self.size:  # only the batch's own smallest hashes can make it in
            keep = np.argpartition(h, self.size - 1)[: self.size]
            candidates, h = candidates[keep], h[keep]
        return self._take(h, X[candidates])

    def merge(self, other: HashSample) -> HashSample:
        hashes, rows = other.hashes, other.rows
        if self._cut is not None:
            below = hashes < self._cut
            hashes, rows = hashes[below], rows[below]
        return self._take(hashes, rows)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(hashes, rows)`` of the sample, sorted by hash."""
        self._trim()
        order = np.argsort(self.hashes, kind="stable")
        return self.hashes[order], self.rows[order]

    def _take(self, hashes: np.ndarray, rows: np.ndarray) -> HashSample:
        """Append candidates already below the cut; trim or set the cut as the buffer fills."""
        if len(hashes):
            self.hashes = np.concatenate([self.hashes, hashes])
            self.rows = np.concatenate([self.rows, np.asarray(rows, dtype=np.float64)])
            if len(self.hashes) > 2 * self.size:
                self._trim()
            elif len(self.hashes) >= self.size:  # full: from now on only smaller hashes can enter
                self._cut = np.partition(self.hashes, self.size - 1)[self.size - 1]
        return self

    def _trim(self) -> None:
        if len(self.hashes) > self.size:
            keep = np.argpartition(self.hashes, self.size - 1)[: self.size]
            self.hashes, self.rows = self.hashes[keep], self.rows[keep]
        if len(self.hashes) == self.size:
            self._cut = self.hashes.max()


class Moments:
    """Count, sum and second moments of rows, about a fixed shift ``K``.

    Accumulating ``(x - K)`` in float64, with ``K`` close to the mean (taken from a pilot
    sample), avoids the cancellation of the textbook ``E[x^2] - E[x]^2``.
    """

    __slots__ = ("shift", "count", "total", "gram")

    def __init__(self, shift: np.ndarray):
        d = len(shift)
        self.shift = np.asarray(shift, dtype=np.float64)
        self.count = 0
        self.total = np.zeros(d, dtype=np.float64)
        self.gram = np.zeros((d, d), dtype=np.float64)

    def add_batch(self, Z: np.ndarray) -> Moments:
        """Add rows ``Z`` (n, d)."""
        if len(Z) == 0:
            return self
        return self.add_shifted_batch(np.asarray(Z, dtype=np.float64) - self.shift)

    def add_shifted_batch(self, S: np.ndarray) -> Moments:
        """Add rows already shifted (``S = Z - shift``), e.g. a slice of a grouped buffer.

        The batch's products are taken in ``S``'s precision (float32 halves the BLAS time)
        and added to the float64 accumulators.
        """
        if len(S) == 0:
            return self
        self.count += len(S)
        self.total += S.sum(axis=0, dtype=np.float64)
        self.gram += S.T @ S
        return self

    def merge(self, other: Moments) -> Moments:
        if not np.array_equal(self.shift, other.shift):
            raise ValueError("cannot merge moments taken about different shifts")
        self.count += other.count
        self.total += other.total
        self.gram += other.gram
        return self

    def mean(self) -> np.ndarray:
        return self.shift + self.total / max(self.count, 1)

    def scatter(self) -> np.ndarray:
        """Sum of outer products of the centred rows: ``sum (x - mean)(x - mean)^T``."""
        if self.count == 0:
            return np.zeros_like(self.gram)
        m = self.total / self.count
        return self.gram - self.count * np.outer(m, m)


class LabelledSample:
    """The ``size`` rows with the smallest row hash, with their labels (a combinable statistic).

    Like :class:`~poisonguard.detectors.statistics.HashSample`, membership depends only on
    each row's hash, so the sample is the same whatever the batching; it also keeps labels.
    """

    __slots__ = ("size", "hashes", "rows", "labels")

    def __init__(self, size: int, n_features: int):
        self.size = int(size)
        self.hashes = np.empty(0, dtype=np.uint64)
        self.rows = np.empty((0, n_features), dtype=np.float64)
        self.labels = np.empty(0, dtype=object)

    def add_batch(self, X: np.ndarray, hashes: np.ndarray, labels: np.ndarray) -> LabelledSample:
        keep = np.arange(len(hashes))
        if len(self.hashes) >= self.size:
            keep = keep[hashes < self.hashes.max()]
        if len(keep) > self.size:
            keep = keep[np.argpartition(hashes[keep], self.size - 1)[: self.size]]
        return self._take(hashes[keep], X[keep], np.asarray(labels, dtype=object)[keep])

    def merge(self, other: LabelledSample) -> LabelledSample:
        return self._take(other.hashes, other.rows, other.labels)

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(hashes, rows, labels)`` sorted by hash."""
        order = np.argsort(self.hashes, kind="stable")
        return self.hashes[order], self.rows[order], self.labels[order]

    def _take(self, hashes, rows, labels) -> LabelledSample:
        if len(hashes):
            self.hashes = np.concatenate([self.hashes, hashes])
            self.rows = np.concatenate([self.rows, np.asarray(rows, dtype=np.float64)])
            self.labels = np.concatenate([self.labels, labels])
            if len(self.hashes) > self.size:
                keep = np.argpartition(self.hashes, self.size - 1)[: self.size]
                self.hashes, self.rows, self.labels = self.hashes[keep], self.rows[keep], self.labels[keep]
        return self


class ClassSample(HashSample):
    """A class's ``size`` smallest-hash rows plus the exact number of rows offered (combinable).

    The count is the class's row count over all batches (``model.counts``), so the one-pass
    fit still reports the rows per class it saw.
    """

    __slots__ = ("count",)

    def __init__(self, size: int, n_features: int):
        super().__init__(size, n_features)
        self.count = 0

    def add_batch(self, X: np.ndarray, hashes: np.ndarray, rows: np.ndarray | None = None) -> ClassSample:
        self.count += len(hashes) if rows is None else len(rows)
        super().add_batch(X, hashes, rows)
        return self

    def merge(self, other: ClassSample) -> ClassSample:
        self.count += other.count
        super().merge(other)
        return self


class Histogram:
    """Counts of values on a fixed grid ``edges`` plus an underflow and an overflow bin.

    ``counts[0]`` holds values below ``edges[0]``, ``counts[-1]`` values at or above
    ``edges[-1]``; NaN values are not counted.
    """

    __slots__ = ("edges", "counts")

    def __init__(self, edges: np.ndarray):
        self.edges = edges
        self.counts = np.zeros(len(edges) + 1, dtype=np.int64)

    def add_batch(self, values: np.ndarray) -> Histogram:
        values = values[~np.isnan(values)]
        idx = np.searchsorted(self.edges, values, side="right")
        self.counts += np.bincount(idx, minlength=len(self.counts))
        return self

    def merge(self, other: Histogram) -> Histogram:
        self.counts += other.counts
        return self

    @property
    def total(self) -> int:
        return int(self.counts.sum())
