"""Real-world CSV files are read as people mean them.

- labels ``1`` and ``1.0`` are one class (in one file, or across CSV and Parquet), and the
  report says how labels were read;
- only empty cells are missing: ``NA``, ``null``, ``nan`` are text, kept as written, unless
  ``--na-values`` names them;
- a UTF-8 byte-order mark is skipped; quoted newlines work beyond the reader's block size;
- a column of numbers in one file and text (or another type) in another exits 2 naming
  the file and the column;
- ``.csv.gz`` files are read, also when a directory is searched.
"""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from conftest import one_error_line, run_cli
from poisonguard.pipelines import read_output
from poisonguard.pipelines.rows import normalise_labels






def frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    df = pd.DataFrame(rng.normal(size=(n, 3)) + 5.0 * labels[:, None], columns=["f1", "f2", "f3"])
    df["label"] = labels
    return df


def screen(out, *inputs, extra=()) -> int:
    return run_cli(["screen", *inputs, "--out", out, "--detectors", "spectral", "-q", *extra])


def report(out) -> dict:
    with open(os.path.join(out, "report.json")) as fh:
        return json.load(fh)


def outputs(out) -> pd.DataFrame:
    tables = [read_output(os.path.join(out, name)) for name in ("cleaned", "quarantine")]
    return pd.concat([t.to_pandas() for t in tables if t is not None], ignore_index=True)


def invalid(out) -> pd.DataFrame:
    table = read_output(os.path.join(out, "invalid"))
    return pd.DataFrame() if table is None else table.to_pandas()


# -- labels ------------------------------------------------------------------------------------
def test_whole_number_labels_are_normalised_and_other_text_is_not():
    got = normalise_labels(pa.array(["1", "1.0", "1.00", " 2 ", "+3", "-4.0", "-0", "0.0", "007", "1.5", "abc", "1e3", None, ""]))
    assert got.to_pylist() == ["1", "1", "1", "2", "3", "-4", "0", "0", "007", "1.5", "abc", "1e3", None, ""]


def test_labels_1_and_1_0_are_one_class_in_csv_and_across_parquet(tmp_path):
    df = frame()
    text = df.astype({"label": str})
    text.loc[::2, "label"] = text.loc[::2, "label"] + ".0"  # half the rows written by a float writer
    text.to_csv(tmp_path / "mixed.csv", index=False)
    assert screen(tmp_path / "one", tmp_path / "mixed.csv") == 0
    rep = report(tmp_path / "one")
    assert sorted(rep["classes"]) == ["0", "1"] and rep["counts"]["invalid"] == 0
    assert "'1.0'" in rep["inputs"]["label_normalisation"]
    assert sorted(outputs(tmp_path / "one")["label"].unique()) == ["0", "1"]
    frame(40, seed=1).to_parquet(tmp_path / "ints.parquet", index=False)  # int64 labels
    assert screen(tmp_path / "two", tmp_path / "mixed.csv", tmp_path / "ints.parquet") == 0
    assert sorted(report(tmp_path / "two")["classes"]) == ["0", "1"]
    assert report(tmp_path / "two")["counts"]["rows_in"] == 100
    (tmp_path / "only").mkdir()
    frame(40, seed=1).to_parquet(tmp_path / "only" / "ints.parquet", index=False)
    assert screen(tmp_path / "three", tmp_path / "only") == 0
    assert report(tmp_path / "three")["inputs"]["label_normalisation"] is None  # integer labels: nothing to normalise


# -- missing values ---------------------------------------------------------------------------------
def test_na_like_text_is_kept_and_only_empty_cells_are_missing(tmp_path):
    df = frame().astype({"label": str, "f2": object, "f3": object})
    df["region"] = ["NA", "EU", "N/A", "null"] * 15
    df["customer"] = [f"c{i}" if i % 5 else "null" for i in range(60)]
    df.loc[3, "label"] = "NA"  # a class called NA (say, North America)
    df.loc[4, "f2"] = "NA"  # a feature marked NA
    df.loc[5, "f3"] = None  # an empty cell
    df.to_csv(tmp_path / "a.csv", index=False)
    assert screen(tmp_path / "out", tmp_path / "a.csv") in (0, 1)
    rep = report(tmp_path / "out")
    assert rep["counts"]["rows_in"] == 60 and rep["counts"]["invalid"] == 2
    assert "NA" in rep["classes"] and rep["inputs"]["na_values"] == [""]
    assert rep["inputs"]["feature_columns"] == ["f1", "f2", "f3"]  # NA does not make f2 text
    kept = outputs(tmp_path / "out")
    assert set(kept["region"]) == {"NA", "EU", "N/A", "null"}
    assert (kept["customer"] == "null").sum() == 12 - int(df.loc[[4, 5], "customer"].eq("null").sum())
    bad = invalid(tmp_path / "out").set_index("row_id")
    assert bad.loc["a.csv:4", "reason"] == "column 'f2': 'NA' is not a number" and bad.loc["a.csv:4", "f2"] == "NA"
    assert bad.loc["a.csv:5", "reason"] == "column 'f3': missing value"


def test_na_values_option_extends_what_is_missing(tmp_path):
    df = frame().astype({"label": str})
    df["region"] = ["NA", "EU", "null", "-"] * 15
    df.loc[3, "label"] = "NA"
    df.to_csv(tmp_path / "a.csv", index=False)
    assert screen(tmp_path / "out", tmp_path / "a.csv", extra=["--na-values", "NA,-"]) in (0, 1)
    rep = report(tmp_path / "out")
    assert rep["inputs"]["na_values"] == ["", "NA", "-"] and rep["counts"]["invalid"] == 1
    assert invalid(tmp_path / "out")["reason"].tolist() == ["column 'label': missing label"]
    region = outputs(tmp_path / "out")["region"]
    assert region.isna().sum() == 29 and set(region.dropna()) == {"EU", "null"}


# -- encodings and layout -----------------------------------------------------------------------
def test_a_byte_order_mark_is_skipped(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + frame().to_csv(index=False).encode())
    assert screen(tmp_path / "out", path, extra=["--feature-columns", "f1,f2,f3"]) == 0
    assert report(tmp_path / "out")["counts"]["cleaned"] == 60
    assert report(tmp_path / "out")["inputs"]["feature_columns"] == ["f1", "f2", "f3"]


def test_quoted_newlines_beyond_the_block_size(tmp_path):
    """Over 4 MB (the reader's block), values with newlines inside quotes."""
    df = frame(2000)
    note = "line one\nline two, with a comma\n" * 100  # ~3.2 KB
    df["note"] = [f"row {i}\n{note}" for i in range(len(df))]
    df.to_csv(tmp_path / "notes.csv", index=False)
    assert os.path.getsize(tmp_path / "notes.csv") > 6 << 20
    assert screen(tmp_path / "out", tmp_path / "notes.csv") in (0, 1)
    rep = report(tmp_path / "out")
    assert rep["counts"]["rows_in"] == 2000 and rep["counts"]["invalid"] == 0
    kept = outputs(tmp_path / "out").sort_values("row_id", key=lambda s: s.str.split(":").str[1].astype(int))
    assert kept["note"].tolist() == df["note"].tolist()


def test_csv_gz_files_are_read_in_directories(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    frame(60).to_csv(data / "a.csv", index=False)
    with gzip.open(data / "b.csv.gz", "wt") as fh:
        fh.write(frame(40, seed=1).to_csv(index=False))
    assert screen(tmp_path / "out", data) == 0
    rep = report(tmp_path / "out")
    assert rep["inputs"]["files"] == [str(data / "a.csv"), str(data / "b.csv.gz")]
    assert rep["counts"]["rows_in"] == 100 and rep["counts"]["invalid"] == 0
    assert "b.csv.gz:39" in set(outputs(tmp_path / "out")["row_id"])
    assert screen(tmp_path / "gz", data / "b.csv.gz") == 0 and report(tmp_path / "gz")["counts"]["rows_in"] == 40


# -- files that disagree ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["parquet-int-vs-text", "csv-vs-parquet", "csv-vs-csv", "int-vs-timestamp"])
def test_a_file_whose_types_disagree_exits_2_naming_file_and_column(tmp_path, capsys, case):
    base, other = frame(), frame(seed=1)
    base["x"] = np.arange(60)
    if case == "int-vs-timestamp":
        other["x"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(60), unit="D")
    else:
        other["x"] = [f"t{i}" for i in range(60)]
    first = tmp_path / ("a.csv" if case == "csv-vs-csv" else "a.parquet")
    second = tmp_path / ("b.parquet" if case in ("parquet-int-vs-text", "int-vs-timestamp") else "b.csv")
    for df, path in ((base, first), (other, second)):
        df.to_csv(path, index=False) if path.suffix == ".csv" else df.to_parquet(path, index=False)
    assert screen(tmp_path / "out", first, second) == 2
    one_error_line(capsys.readouterr().err, str(second), "column 'x'", str(first), "same type")
    assert not (tmp_path / "out").exists()
