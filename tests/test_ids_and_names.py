"""Reserved output column names and duplicate ids.

- an input column named like one the outputs add (``reason``, ``source``, ``suspicion``,
  ``flagged``, ``score_<detector>``) is an error naming the file and the column: the
  outputs would otherwise hold two columns of one name, which no reader can open;
- with ``--id-column``, ids that repeat are an error naming the column and examples,
  unless ``--allow-duplicate-ids``: then they are counted in the report, the same for any
  batch size or worker split.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from conftest import one_error_line, run_cli
from poisonguard.pipelines import read_output
from poisonguard.pipelines.ids import BUCKETS, BucketIds, Duplicates, bucketed_ids
from poisonguard.pipelines.transforms import Chunk






def frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    df = pd.DataFrame(rng.normal(size=(n, 3)) + 5.0 * labels[:, None], columns=["f1", "f2", "f3"])
    df["label"] = labels
    df["cust"] = [f"c{i:03d}" for i in range(n)]
    return df


def report(out) -> dict:
    with open(os.path.join(out, "report.json")) as fh:
        return json.load(fh)


@pytest.mark.parametrize("column", ["reason", "source", "suspicion", "flagged", "score_spectral", "score_label"])
def test_a_reserved_input_column_is_an_error_naming_it(tmp_path, capsys, column):
    df = frame()
    df[column] = "x"
    df.to_parquet(tmp_path / "a.parquet", index=False)
    assert run_cli(["screen", tmp_path / "a.parquet", "--out", tmp_path / "out", "-q"]) == 2
    one_error_line(capsys.readouterr().err, str(tmp_path / "a.parquet"), f"column '{column}'", "reserve")
    assert not (tmp_path / "out").exists()


def test_simulate_refuses_reserved_columns_too(tmp_path, capsys):
    df = frame()
    df["reason"] = "why"
    df.to_csv(tmp_path / "a.csv", index=False)
    (tmp_path / "attack.yaml").write_text("attacks:\n  - {kind: label_flip, mode: random, rate: 0.1}\n")
    assert run_cli(["simulate", tmp_path / "a.csv", "--config", tmp_path / "attack.yaml", "--out", tmp_path / "out", "-q"]) == 2
    one_error_line(capsys.readouterr().err, "column 'reason'")


def test_duplicate_ids_are_an_error_by_default(tmp_path, capsys):
    df = frame()
    df.loc[10, "cust"] = "c001"
    df.loc[[20, 30], "cust"] = "c002"
    df.to_csv(tmp_path / "a.csv", index=False)
    argv = ["screen", tmp_path / "a.csv", "--out", tmp_path / "out", "--id-column", "cust", "--detectors", "spectral", "-q"]
    assert run_cli(argv) == 2
    one_error_line(capsys.readouterr().err, "column 'cust'", "5 rows share 2 id(s)", "'c002' x3", "'c001' x2",
                   "--allow-duplicate-ids")
    assert not (tmp_path / "out").exists()
    assert run_cli([*argv, "--allow-duplicate-ids"]) == 0
    dup = report(tmp_path / "out")["inputs"]["duplicate_ids"]
    assert dup == {"rows": 5, "ids": 2, "examples": [{"id": "c002", "rows": 3}, {"id": "c001", "rows": 2}]}
    assert report(tmp_path / "out")["counts"]["rows_in"] == 60


@pytest.mark.parametrize("with_model", [False, True], ids=["staged-input", "written-parts"])
def test_duplicates_counted_a_group_of_buckets_at_a_time_are_the_same(tmp_path, monkeypatch, with_model):
    """Above IDS_PER_GROUP ids the buckets are counted in groups, one pipeline each (flat memory): same result."""
    from poisonguard.pipelines import ids

    df = frame()
    df.loc[10, "cust"] = "c001"
    df.loc[[20, 30], "cust"] = "c002"
    df.to_csv(tmp_path / "a.csv", index=False)
    argv = ["screen", tmp_path / "a.csv", "--id-column", "cust", "--allow-duplicate-ids", "-q"]
    if with_model:
        frame(seed=5).to_csv(tmp_path / "trusted.csv", index=False)
        assert run_cli(["fit", tmp_path / "trusted.csv", "--out", tmp_path / "model", "--detectors", "spectral", "-q"]) == 0
        argv += ["--model", tmp_path / "model"]
    else:
        argv += ["--detectors", "spectral"]
    assert run_cli([*argv, "--out", tmp_path / "one"]) == 0
    groups, bucket_groups = [], ids.bucket_groups
    monkeypatch.setattr(ids, "IDS_PER_GROUP", 7)
    monkeypatch.setattr(ids, "bucket_groups", lambda rows: groups.append(bucket_groups(rows)) or groups[-1])
    assert run_cli([*argv, "--out", tmp_path / "groups"]) == 0
    assert groups == [9]  # 60 rows, 7 ids a group
    expected = {"rows": 5, "ids": 2, "examples": [{"id": "c002", "rows": 3}, {"id": "c001", "rows": 2}]}
    assert report(tmp_path / "one")["inputs"]["duplicate_ids"] == expected
    assert report(tmp_path / "groups")["inputs"]["duplicate_ids"] == expected


def test_duplicates_across_files_and_invalid_rows_count(tmp_path, capsys):
    a, b = frame(), frame(seed=1).astype({"f1": object})
    b["cust"] = [f"d{i:03d}" for i in range(60)]
    b.loc[0, "cust"] = "c005"  # the same id in another file
    b.loc[1, "f1"] = "oops"  # an invalid row keeps its id
    b.loc[1, "cust"] = "c006"
    a.to_parquet(tmp_path / "a.parquet", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    assert run_cli(["screen", tmp_path / "a.parquet", tmp_path / "b.csv", "--out", tmp_path / "out", "--id-column", "cust",
                    "--detectors", "spectral", "--batch-rows", "7", "-q"]) == 2
    one_error_line(capsys.readouterr().err, "4 rows share 2 id(s)", "'c005' x2", "'c006' x2")


def test_unique_ids_pass_and_report_no_duplicates(tmp_path):
    frame().to_csv(tmp_path / "a.csv", index=False)
    assert run_cli(["screen", tmp_path / "a.csv", "--out", tmp_path / "out", "--id-column", "cust", "--detectors", "spectral",
                    "-q"]) == 0
    assert report(tmp_path / "out")["inputs"]["duplicate_ids"] == {"rows": 0, "ids": 0, "examples": []}
    ids = read_output(str(tmp_path / "out" / "cleaned")).column("row_id").to_pylist()
    assert sorted(ids) == [f"c{i:03d}" for i in range(60)]


def test_duplicate_counts_do_not_depend_on_chunking_or_merge_order():
    import pyarrow as pa

    rng = np.random.default_rng(3)
    ids = np.array([f"id{v}" for v in rng.integers(0, 400, 1000)], dtype=object)
    expected_values, expected_counts = np.unique(ids, return_counts=True)
    truth = Duplicates(int(expected_counts[expected_counts > 1].sum()), int((expected_counts > 1).sum()))

    def chunk(part):
        table = pa.table({"row_id": pa.array(list(part), pa.string())})
        return Chunk(0, 0, table, table.slice(0, 0))

    for sizes, seed in (((1000,), 0), ((1, 99, 300, 600), 1), ((250,) * 4, 2)):
        pieces = np.split(ids, np.cumsum(sizes)[:-1])
        per_bucket: dict[int, BucketIds] = {}
        order = np.random.default_rng(seed).permutation(len(pieces))
        for i in order:
            for bucket, counts in bucketed_ids(chunk(pieces[i])):
                assert 0 <= bucket < BUCKETS
                per_bucket[bucket] = counts if bucket not in per_bucket else per_bucket[bucket].merge(counts)
        merged = Duplicates()
        for bucket in sorted(per_bucket, reverse=bool(seed % 2)):
            merged = merged.merge(Duplicates.of(per_bucket[bucket]))
        assert (merged.rows, merged.ids) == (truth.rows, truth.ids)
        top = sorted(((str(v), int(c)) for v, c in zip(expected_values, expected_counts) if c > 1), key=lambda e: (-e[1], e[0]))
        assert merged.examples == top[:5]
