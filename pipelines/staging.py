"""Staging and cross-checks shared by the jobs (simulate, screen).

A job writes everything into a staging directory inside its output directory. Small
results of a pass (statistics, summaries) travel from the pipeline's terminal step to the
driver as pickles there. Before anything is published, the row counts of independent
pipelines and of the files written are cross-checked, so a runner that drops or duplicates
elements (DESIGN.md, Engines) fails the job instead of publishing short outputs.
Publication itself (one atomic rename, under a lock) is :mod:`.outdir`.
"""

from __future__ import annotations

import os
import pickle

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
