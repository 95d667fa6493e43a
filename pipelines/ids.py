"""Duplicate row ids: found in one pass, an error unless the user accepts them.

With ``--id-column``, ids come from the user's data and may repeat; then a flagged row
cannot be traced to one input row, and attacks keyed by id touch every copy. The pass
reads every row's id (valid and invalid rows alike), groups the ids by a keyed hash into
:data:`BUCKETS` buckets (one ``CombinePerKey``, so no machine holds more than a bucket),
counts each id inside its bucket once the bucket is complete, and keeps only the
duplicates: their number and a few examples. Derived ids (``<file>:<offset>``) are unique
by construction and need no pass.

Memory: the in-process runner holds every bucket at once, so where the number of rows is
known (a staged input, or the rows a screen pass wrote) the buckets are counted in groups
of about :data:`IDS_PER_GROUP` ids, one pipeline each, each reading the ids again: the peak
stays flat in N at the cost of re-reading one column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..schemas import ROW_ID, InputError, row_hash
from .rows import Contract
from .runners import RunnerSession
from .staging import load_result, save_result
from .transforms import MergeAll, read_and_validate

#: Buckets the ids are spread over; each is counted on one worker.
BUCKETS = 64
#: Duplicate ids named in the report and in the error.
EXAMPLES = 5
#: Ids counted in one pipeline at most (about 20-40 bytes each as Arrow strings); more rows, more groups of buckets.
IDS_PER_GROUP = 2_000_000


@dataclass
class BucketIds:
    """The ids of one bucket as they arrive (Arrow string arrays), counted once the bucket is complete.

    Merging only gathers the arrays: counting at every merge (``np.unique`` of everything so
    far, as this did before) made 4,000,000 ids take 133 s instead of seconds.
    """

    parts: list

    def merge(self, other: BucketIds) -> BucketIds:
        return BucketIds(self.parts + other.parts)

    def repeated(self) -> list[tuple[str, int]]:
        """``(id, rows)`` of every id that occurs more than once."""
        parts = [p for p in self.parts if len(p)]
        if not parts:
            return []
        counts = pc.value_counts(pa.concat_arrays(parts))
        n = counts.field("counts").to_numpy()
        repeated = n > 1
        if not repeated.any():
            return []
        values = counts.field("values").filter(pa.array(repeated)).to_pylist()
        return [(str(v), int(c)) for v, c in zip(values, n[repeated])]


@dataclass
class Duplicates:
    """Rows whose id another row shares (``rows``), ids that repeat (``ids``), and examples ``(id, count)``."""

    rows: int = 0
    ids: int = 0
    examples: list = field(default_factory=list)

    @classmethod
    def of(cls, bucket: BucketIds) -> Duplicates:
        repeated = bucket.repeated()
        return cls(sum(c for _, c in repeated), len(repeated), _top(repeated))

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


def bucketed_ids(chunk) -> list[tuple[int, BucketIds]]:
    """``(bucket, BucketIds)`` of every row id in a chunk, valid and invalid rows."""
    ids = pa.concat_arrays([chunk.valid.column(ROW_ID).combine_chunks(), chunk.invalid.column(ROW_ID).combine_chunks()])
    if len(ids) == 0:
        return []
    ids = ids.cast(pa.string())
    buckets = (row_hash(ids.to_numpy(zero_copy_only=False), 0, "id-buckets") % np.uint64(BUCKETS)).astype(np.int64)
    order = np.argsort(buckets, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(buckets[order]) != 0])
    ends = np.r_[starts[1:], len(order)]
    # a bucket's own copy: a slice would carry (and pickle) the whole chunk's buffer
    return [(int(buckets[order[s]]), BucketIds([ids.take(pa.array(order[s:e]))])) for s, e in zip(starts, ends)]


def _read_ids(shard, contract: Contract, batch_rows: int):
    for chunk in read_and_validate(shard, contract, batch_rows):
        yield from bucketed_ids(chunk)


def duplicate_ids_pass(session: RunnerSession, units, contract: Contract, batch_rows: int, staging: str) -> Duplicates:
    """One pass over the inputs (one per group of buckets where they are staged): the rows whose id repeats
    (nothing to do without an id column)."""
    if contract.id_column is None:
        return Duplicates()
    rows = sum(getattr(u, "rows", 0) for u in units)
    return count_duplicate_ids(session, units, _read_ids, f"{staging}/_duplicate_ids.pkl", contract, batch_rows, rows=rows)


def count_duplicate_ids(session: RunnerSession, elements, ids_of, path: str, *args, rows: int = 0) -> Duplicates:
    """The rows whose id repeats: ``ids_of(element, *args)`` yields ``(bucket, BucketIds)`` (:func:`bucketed_ids`)
    for each of ``elements`` (work units of the inputs, or files a pass wrote); the ids meet per bucket, only the
    duplicates leave it, and ``path`` (under staging) carries the result back. With ``rows`` (how many ids there
    are, 0: not known) above :data:`IDS_PER_GROUP`, the buckets are counted a group at a time, one pipeline each."""
    groups = bucket_groups(rows)
    total = Duplicates()
    for group in range(groups):
        session.run(lambda p: (
            p
            | "Elements" >> beam.Create(elements, reshuffle=False)
            | "IdsByBucket" >> beam.FlatMap(_in_group, ids_of, group, groups, *args)
            | "CountPerBucket" >> beam.CombinePerKey(MergeAll())
            | "KeepDuplicates" >> beam.Map(lambda kv: Duplicates.of(kv[1]))
            | "Merge" >> beam.CombineGlobally(MergeAll())
            | "Save" >> beam.Map(save_result, path)
        ))
        total = total.merge(load_result(path, "duplicate id count") or Duplicates())
    return total


def bucket_groups(rows: int) -> int:
    """How many pipelines count ``rows`` ids (0: not known, one), each holding about :data:`IDS_PER_GROUP` of them."""
    return min(BUCKETS, max(1, math.ceil(rows / IDS_PER_GROUP)))


def _in_group(element, ids_of, group: int, groups: int, *args):
    for bucket, ids in ids_of(element, *args):
        if bucket % groups == group:
            yield bucket, ids


def check_duplicate_ids(duplicates: Duplicates, contract: Contract, allow: bool) -> None:
    """InputError when ids repeat, unless ``allow`` (``--allow-duplicate-ids``)."""
    if duplicates.rows and not allow:
        raise InputError(f"column '{contract.id_column}': {duplicates.describe()}; ids must be unique so that every "
                         "flagged row can be traced; fix the ids, or pass --allow-duplicate-ids to accept and report them")
