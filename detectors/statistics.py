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
import pandas as pd


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


class DuplicateCounts:
    """Rows per (value hash, label) for the ``size`` smallest distinct value hashes (a combinable statistic).

    A value hash (:func:`~poisonguard.schemas.hashing.value_hash`) is the same for every exact
    copy of a row's features, so the rows of one hash are a group of duplicates and their
    labels. Which hashes are kept depends only on the hashes (a bottom-``size`` sketch), so
    the result is the same whatever the batching, and it is exact for every group up to
    ``size`` distinct rows. Each entry is three numbers (the hash, the label's index among the
    distinct labels met, the count); up to ``2 * size`` entries are buffered and trimmed in
    one go.
    """

    __slots__ = ("size", "hashes", "label_index", "counts", "labels", "_cut")

    def __init__(self, size: int):
        self.size = int(size)
        self.hashes = np.empty(0, dtype=np.uint64)
        self.label_index = np.empty(0, dtype=np.int64)
        self.counts = np.empty(0, dtype=np.int64)
        self.labels = pd.Index([], dtype=object)
        self._cut = None  # once ``size`` distinct hashes are held, only hashes at or below this can stay

    def add_batch(self, hashes: np.ndarray, labels: np.ndarray) -> DuplicateCounts:
        codes, uniques = pd.factorize(np.asarray(labels, dtype=object))
        return self._take(hashes, codes.astype(np.int64), pd.Index(uniques, dtype=object), np.ones(len(hashes), dtype=np.int64))

    def merge(self, other: DuplicateCounts) -> DuplicateCounts:
        return self._take(other.hashes, other.label_index, other.labels, other.counts)

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(hashes, labels, counts)``, one entry per (hash, label), sorted by hash."""
        self._trim()
        return self.hashes, self.labels.to_numpy()[self.label_index], self.counts

    def _take(self, hashes, label_index, labels, counts) -> DuplicateCounts:
        if self._cut is not None:
            keep = hashes <= self._cut
            hashes, label_index, counts = hashes[keep], label_index[keep], counts[keep]
        if len(hashes):
            if not self.labels.equals(labels):
                self.labels = self.labels.append(labels.difference(self.labels, sort=False))
                label_index = self.labels.get_indexer(labels)[label_index]
            self.hashes = np.concatenate([self.hashes, hashes])
            self.label_index = np.concatenate([self.label_index, label_index])
            self.counts = np.concatenate([self.counts, counts])
            if len(self.hashes) > 2 * self.size:
                self._trim()
        return self

    def _trim(self) -> None:
        """One entry per (hash, label), sorted by hash; only the ``size`` smallest distinct hashes."""
        order = np.lexsort((self.label_index, self.hashes))
        h, c = self.hashes[order], self.label_index[order]
        starts = np.flatnonzero(np.r_[True, (h[1:] != h[:-1]) | (c[1:] != c[:-1])]) if len(h) else np.zeros(0, np.int64)
        self.counts = np.add.reduceat(self.counts[order], starts) if len(starts) else self.counts
        self.hashes, self.label_index = h[starts], c[starts]
        distinct = np.unique(self.hashes)
        if len(distinct) >= self.size:
            self._cut = distinct[self.size - 1]
            keep = self.hashes <= self._cut
            self.hashes, self.label_index, self.counts = self.hashes[keep], self.label_index[keep], self.counts[keep]


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


#: Uniform grids by ``(low, high, points)``: each built once, read-only and shared (see :func:`uniform_grid`).
_GRIDS: dict = {}
_GRID_KEYS: dict = {}


def uniform_grid(low: float, high: float, points: int) -> np.ndarray:
    """``np.linspace(low, high, points)``, built once per process and shared, read-only.

    Histograms on such a grid pickle the grid's three numbers instead of its points (a
    20,001-point grid is 160 KB, and a fit holds a histogram per class), and unpickle onto
    the one shared array.
    """
    key = (float(low), float(high), int(points))
    grid = _GRIDS.get(key)
    if grid is None:
        grid = np.linspace(*key)
        grid.flags.writeable = False
        _GRIDS[key], _GRID_KEYS[id(grid)] = grid, key
    return grid


def group_rows(codes: np.ndarray):
    """Yield ``(code, row indices)`` per distinct non-negative code, in code order (one sort, not one scan per code)."""
    valid = np.flatnonzero(codes >= 0)
    order = valid[np.argsort(codes[valid], kind="stable")]
    if len(order) == 0:
        return
    sorted_codes = codes[order]
    for rows in np.split(order, np.flatnonzero(np.diff(sorted_codes)) + 1):
        yield int(codes[rows[0]]), rows


def add_class_bins(stats: dict, classes, codes: np.ndarray, bins: np.ndarray, edges: np.ndarray) -> dict:
    """Count each row's bin (:meth:`Histogram.add_bins`) into ``stats[classes[code]]``, rows of code < 0 left out."""
    for k, rows in group_rows(codes):
        stats.setdefault(classes[k], Histogram(edges)).add_bins(bins[rows])
    return stats


def add_class_values(stats: dict, classes, codes: np.ndarray, values: np.ndarray, edges: np.ndarray) -> dict:
    """Count each row's value (:meth:`Histogram.add_batch`) into ``stats[classes[code]]``, rows of code < 0 left out."""
    for k, rows in group_rows(codes):
        stats.setdefault(classes[k], Histogram(edges)).add_batch(values[rows])
    return stats


class Histogram:
    """Counts of values on a fixed grid ``edges`` plus an underflow and an overflow bin.

    ``counts[0]`` holds values below ``edges[0]``, ``counts[-1]`` values at or above
    ``edges[-1]``; NaN values are not counted. Only the non-empty bins are stored (their
    indices and counts), so a histogram costs memory by the bins its values reach, not by
    the grid: a class of 2 rows on a 20,001-point grid holds 2 bins, not 20,002.
    ``counts`` builds the dense array on demand.
    """

    __slots__ = ("edges", "bins", "bin_counts")

    def __init__(self, edges: np.ndarray):
        self.edges = edges
        self.bins = np.empty(0, dtype=np.int64)  # sorted indices of the non-empty bins (0: underflow)
        self.bin_counts = np.empty(0, dtype=np.int64)

    def add_batch(self, values: np.ndarray) -> Histogram:
        values = values[~np.isnan(values)]
        return self.add_bins(np.searchsorted(self.edges, values, side="right"))

    def add_bins(self, bins: np.ndarray) -> Histogram:
        """Count values by their bin index (0 underflow, ``len(edges)`` overflow), e.g. from a kernel."""
        if len(bins):
            self._add(*np.unique(bins, return_counts=True))
        return self

    def merge(self, other: Histogram) -> Histogram:
        if len(other.edges) != len(self.edges):
            raise ValueError("cannot merge histograms on different grids")
        self._add(other.bins, other.bin_counts)
        return self

    def _add(self, bins: np.ndarray, counts: np.ndarray) -> None:
        if len(self.bins) == 0:
            self.bins, self.bin_counts = bins.astype(np.int64), counts.astype(np.int64)
            return
        self.bins, where = np.unique(np.concatenate([self.bins, bins]), return_inverse=True)
        merged = np.zeros(len(self.bins), dtype=np.int64)
        np.add.at(merged, where, np.concatenate([self.bin_counts, counts]))
        self.bin_counts = merged

    @property
    def counts(self) -> np.ndarray:
        """The dense counts, ``len(edges) + 1`` of them (a new array)."""
        dense = np.zeros(len(self.edges) + 1, dtype=np.int64)
        dense[self.bins] = self.bin_counts
        return dense

    @property
    def total(self) -> int:
        return int(self.bin_counts.sum())

    def __reduce__(self):
        key = _GRID_KEYS.get(id(self.edges))
        return (_rebuild_histogram, (key if key is not None else self.edges, self.bins, self.bin_counts))


def _rebuild_histogram(grid, bins, counts) -> Histogram:
    hist = Histogram(uniform_grid(*grid) if isinstance(grid, tuple) else grid)
    hist.bins, hist.bin_counts = bins, counts
    return hist
