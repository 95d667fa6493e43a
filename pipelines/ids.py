"""Duplicate row ids: found in one pass, an error unless the user accepts them.

With ``--id-column``, ids come from the user's data and may repeat; then a flagged row
cannot be traced to one input row, and attacks keyed by id touch every copy. The pass
reads every row's id (valid and invalid rows alike), groups the ids by a keyed hash into
:data:`BUCKETS` buckets (one ``CombinePerKey``, so no machine holds more than a bucket),
counts each id inside its bucket, and keeps only the duplicates: their number and a few
examples. Derived ids (``<file>:<offset>``) are unique by construction and need no pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import pyarrow as pa

from ..schemas import ROW_ID, InputError, row_hash
from .rows import Contract
from .runners import RunnerSession
from .staging import load_result, save_result
from .transforms import MergeAll, read_and_validate

#: Buckets the ids are spread over; each is counted on one worker.
BUCKETS = 64
#: Duplicate ids named in the report and in the error.
EXAMPLES = 5


@dataclass
class IdCounts:
    """How often each id of one bucket occurs: unique ids (sorted) and their counts."""

    ids: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, ids) -> IdCounts:
        unique, counts = np.unique(np.asarray(ids, dtype=object), return_counts=True)
        return cls(unique, counts.astype(np.int64))

    def merge(self, other: IdCounts) -> IdCounts:
        unique, inverse = np.unique(np.concatenate([self.ids, other.ids]), return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate([self.counts, other.counts]), minlength=len(unique))
        return IdCounts(unique, counts.astype(np.int64))


@dataclass
class Duplicates:
    """Rows whose id another row shares (``rows``), ids that repeat (``ids``), and examples ``(id, count)``."""

    rows: int = 0
    ids: int = 0
    examples: list = field(default_factory=list)

    @classmethod
    def of(cls, counts: IdCounts) -> Duplicates:
        repeated = counts.counts > 1
        examples = [(str(i), int(c)) for i, c in zip(counts.ids[repeated], counts.counts[repeated])]
        return cls(int(counts.counts[repeated].sum()), int(repeated.sum()), _top(examples))

    def merge(self, other: Duplicates) -> Duplicates:
        return Duplicates(self.rows + other.rows, self.ids + other.ids, _top(self.examples + other.examples))

    def describe(self) -> str:
        shown = ", ".join(f"{i!r} x{c}" for i, c in self.examples)
        return f"{self.rows} rows share {self.ids} id(s) (e.g. {shown})"

    def to_json(self) -> dict:
        return {"rows": self.rows, "ids": self.ids, "examples": [{"id": i, "rows": c} for i, c in self.examples]}


def _top(examples: list) -> list:
    """The most repeated ids first, ties by id: the same whatever the merge order."""
    return sorted(examples, key=lambda e: (-e[1], e[0]))[:EXAMPLES]


def bucketed_ids(chunk) -> list[tuple[int, IdCounts]]:
    """``(bucket, IdCounts)`` of every row id in a chunk, valid and invalid rows."""
    ids = pa.concat_arrays([chunk.valid.column(ROW_ID).combine_chunks(), chunk.invalid.column(ROW_ID).combine_chunks()])
    if len(ids) == 0:
        return []
    ids = ids.to_numpy(zero_copy_only=False).astype(object)
    buckets = (row_hash(ids, 0, "id-buckets") % np.uint64(BUCKETS)).astype(np.int64)
    order = np.argsort(buckets, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(buckets[order]) != 0])
    return [(int(buckets[order[s]]), IdCounts.of(part)) for s, part in zip(starts, np.split(ids[order], starts[1:]))]


def _read_ids(shard, contract: Contract, batch_rows: int):
    for chunk in read_and_validate(shard, contract, batch_rows):
        yield from bucketed_ids(chunk)


def duplicate_ids_pass(session: RunnerSession, units, contract: Contract, batch_rows: int, staging: str) -> Duplicates:
    """One pass over the inputs: the rows whose id repeats (nothing to do without an id column)."""
    if contract.id_column is None:
        return Duplicates()
    return count_duplicate_ids(session, units, _read_ids, f"{staging}/_duplicate_ids.pkl", contract, batch_rows)


def count_duplicate_ids(session: RunnerSession, elements, ids_of, path: str, *args) -> Duplicates:
    """The rows whose id repeats, in one pipeline: ``ids_of(element, *args)`` yields ``(bucket, IdCounts)``
    (:func:`bucketed_ids`) for each of ``elements`` (work units of the inputs, or files a pass wrote); the
    counts meet per bucket, only the duplicates leave it, and ``path`` (under staging) carries the result back."""
    session.run(lambda p: (
        p
        | "Elements" >> beam.Create(elements, reshuffle=False)
        | "IdsByBucket" >> beam.FlatMap(ids_of, *args)
        | "CountPerBucket" >> beam.CombinePerKey(MergeAll())
        | "KeepDuplicates" >> beam.Map(lambda kv: Duplicates.of(kv[1]))
        | "Merge" >> beam.CombineGlobally(MergeAll())
        | "Save" >> beam.Map(save_result, path)
    ))
    return load_result(path, "duplicate id count") or Duplicates()


def check_duplicate_ids(duplicates: Duplicates, contract: Contract, allow: bool) -> None:
    """InputError when ids repeat, unless ``allow`` (``--allow-duplicate-ids``)."""
    if duplicates.rows and not allow:
        raise InputError(f"column '{contract.id_column}': {duplicates.describe()}; ids must be unique so that every "
                         "flagged row can be traced; fix the ids, or pass --allow-duplicate-ids to accept and report them")
