"""Staging and cross-checks shared by the jobs (simulate, screen, fit).

A job writes everything into a staging directory inside its output directory. Small
results of a pass (statistics, summaries) travel from the pipeline's terminal step to the
driver as pickles there. Before anything is published, the row counts of independent
pipelines and of the files written are cross-checked, so a runner that drops or duplicates
elements (DESIGN.md, Engines) fails the job instead of publishing short outputs.
Publication itself (one atomic rename, under a lock) is :mod:`.outdir`.

Jobs that read their inputs more than once (a fit's passes, calibration, the screen pass)
read and validate them once into a columnar copy there (:func:`stage_pass`: Arrow IPC
files, memory-mapped by every later pass), which is removed before publication.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from ..schemas import PoisonguardError


def save_result(result, path: str) -> int:
    """Terminal step of a pass: pickle ``result`` to ``path`` atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as fh:
        pickle.dump(result, fh)
    os.replace(tmp, path)
    return 1


def load_result(path: str, what: str):
    """Read (and remove) what :func:`save_result` wrote; a missing file means the pass produced nothing."""
    if not os.path.exists(path):
        raise PoisonguardError(f"the pipeline finished without producing its {what}; nothing was written")
    with open(path, "rb") as fh:
        result = pickle.load(fh)
    os.remove(path)
    return result


def written_rows(folder: str) -> int:
    """Rows in the Parquet parts of ``folder``, from their metadata (0 if there is none)."""
    if not os.path.isdir(folder):
        return 0
    return sum(pq.read_metadata(os.path.join(folder, f)).num_rows for f in os.listdir(folder))


def count_problems(staging: str, expected: dict[str, int], files, rows_read: int) -> list[str]:
    """Disagreements between the counted rows and the part files / Parquet inputs.

    ``expected`` maps an output folder in ``staging`` to the rows the job counted for it;
    for all-Parquet inputs the rows the files' metadata declare must equal ``rows_read``.
    """
    problems = []
    for output, count in expected.items():
        written = written_rows(os.path.join(staging, output))
        if written != count:
            problems.append(f"{output}/ holds {written} rows but the summary counts {count}")
    if all(f.format == "parquet" for f in files):
        declared = sum(pq.read_metadata(f.path).num_rows for f in files)
        if declared != rows_read:
            problems.append(f"the inputs declare {declared} rows but {rows_read} were read")
    return problems


def raise_if_lost(problems: list[str]) -> None:
    if problems:
        raise PoisonguardError("row conservation violated (" + "; ".join(problems) + "); nothing was published")


# -- the columnar staging copy: read and validate once ----------------------------------------------
@dataclass(frozen=True)
class StagedUnit:
    """A work unit already read and validated: its chunks as Arrow IPC files in ``directory``.

    Every pass after the first reads these files (memory-mapped, zero-copy) instead of
    parsing the input again; the valid rows keep the types the contract gave them (a
    Parquet float32 feature stays float32, CSV numbers are float64 once parsed).
    """

    unit: object  # the io.Shard it was read from
    directory: str
    numbers: tuple[int, ...]  # chunk numbers, in reading order
    rows: int = 0             # valid and invalid rows of all its chunks

    @property
    def index(self) -> int:
        return self.unit.index

    @property
    def path(self) -> str:
        return self.unit.path

    def chunk_paths(self, number: int) -> tuple[str, str]:
        stem = os.path.join(self.directory, f"{self.unit.index:05d}-{number:06d}")
        return f"{stem}.valid.arrow", f"{stem}.invalid.arrow"

    def read(self):
        """Yield the unit's chunks (:class:`~.transforms.Chunk`) from the staged files."""
        from .transforms import Chunk

        for number in self.numbers:
            valid, invalid = (_read_ipc(p) for p in self.chunk_paths(number))
            yield Chunk(self.unit.index, number, valid, invalid)


def _write_ipc(table: pa.Table, path: str) -> None:
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _read_ipc(path: str) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(path, "r")).read_all()


def stage_unit(unit, contract, batch_rows: int, directory: str):
    """Read and validate one unit once, writing each chunk's valid and invalid rows to ``directory``."""
    from .transforms import read_and_validate

    numbers, rows = [], 0
    staged = StagedUnit(unit, directory, ())
    for chunk in read_and_validate(unit, contract, batch_rows):
        valid_path, invalid_path = staged.chunk_paths(chunk.number)
        _write_ipc(chunk.valid, valid_path)
        _write_ipc(chunk.invalid, invalid_path)
        numbers.append(chunk.number)
        rows += chunk.valid.num_rows + chunk.invalid.num_rows
    yield StagedUnit(unit, directory, tuple(numbers), rows)


def stage_pass(session, units, contract, batch_rows: int, staging: str, name: str = "input") -> list[StagedUnit]:
    """One pass that parses and validates ``units`` into a columnar copy under ``staging``; the staged units, in order."""
    import apache_beam as beam

    directory = os.path.join(staging, f"_staged-{name}")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(staging, f"_staged-{name}.pkl")
    session.run(lambda p: (
        p
        | "Units" >> beam.Create(units, reshuffle=False)
        | "ReadValidateStage" >> beam.FlatMap(stage_unit, contract, batch_rows, directory)
        | "Collect" >> beam.combiners.ToList()
        | "Save" >> beam.Map(save_result, path)
    ))
    staged = sorted(load_result(path, f"staged {name}") or [], key=lambda s: s.index)
    if [s.index for s in staged] != [u.index for u in units]:
        raise_if_lost([f"{len(units)} work units were read but {len(staged)} were staged"])
    return staged


def remove_staged(staging: str) -> None:
    """Remove the staging copies before the outputs are published."""
    import shutil

    for name in os.listdir(staging):
        if name.startswith("_staged-"):
            shutil.rmtree(os.path.join(staging, name), ignore_errors=True)
