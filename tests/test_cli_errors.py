"""Error handling of the ``poisonguard`` command line.

Usage and whole-file input errors must exit 2 with one line on stderr that starts with
``poisonguard: error:`` (``poisonguard screen: error:`` for argparse errors raised by the
subcommand's own parser) and names the offending option, file or column, never a
traceback. Row-level problems must never fail the run: such rows go to ``invalid/`` with
a reason, and every input row ends up in exactly one of cleaned/, quarantine/, invalid/.
"""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import one_error_line, run_cli
from poisonguard.pipelines.cli import main

EXIT_OK, EXIT_BREACHED, EXIT_ERROR = 0, 1, 2
FEATURES = ("f1", "f2", "f3")


# -- helpers ---------------------------------------------------------------------------------




def good_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """n rows in 3 well-separated classes, features f1..f3 and an integer label."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 6.0, 0.0], [0.0, 6.0, 6.0]])
    x = centres[labels] + rng.normal(size=(n, 3))
    df = pd.DataFrame(x, columns=list(FEATURES))
    df["label"] = labels
    return df


def write_good_csv(path, n: int = 60, seed: int = 0) -> str:
    good_frame(n, seed).to_csv(path, index=False)
    return str(path)


def read_report(out) -> dict:
    with open(os.path.join(out, "report.json")) as fh:
        return json.load(fh)


def read_dir(out, name: str) -> pa.Table | None:
    from poisonguard.pipelines import read_output

    return read_output(os.path.join(out, name))


def row_ids(table: pa.Table | None) -> list[str]:
    return [] if table is None else table.column("row_id").to_pylist()


def no_outputs(out) -> bool:
    """A failed run publishes nothing (the staging directory is removed too)."""
    if not os.path.exists(out):
        return True
    return not any(os.path.exists(os.path.join(out, n)) for n in ("cleaned", "quarantine", "invalid", "report.json"))


@pytest.fixture
def good_csv(tmp_path):
    return write_good_csv(tmp_path / "good.csv")


# -- usage errors ----------------------------------------------------------------------------
def test_unknown_option(good_csv, tmp_path, capsys):
    assert run_cli(["screen", good_csv, "--out", tmp_path / "out", "--bogus"]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, "--bogus")
    assert no_outputs(tmp_path / "out")


def test_missing_out(good_csv, capsys):
    assert run_cli(["screen", good_csv]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, "--out")


def test_missing_inputs(tmp_path, capsys):
    assert run_cli(["screen", "--out", tmp_path / "out"]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, "INPUT")


@pytest.mark.parametrize(
    "option, value",
    [
        ("--contamination", "2"),
        ("--contamination", "-0.1"),
        ("--contamination", "lots"),
        ("--max-flagged-fraction", "1.5"),
        ("--target-fpr", "2"),
        ("--workers", "0"),
        ("--workers", "two"),
        ("--threads", "0"),
        ("--batch-rows", "0"),
        ("--runner", "spark"),
    ],
)
def test_bad_option_value(good_csv, tmp_path, capsys, option, value):
    assert run_cli(["screen", good_csv, "--out", tmp_path / "out", option, value]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, option)
    assert no_outputs(tmp_path / "out")


def test_dask_address_needs_dask_runner(good_csv, tmp_path, capsys):
    assert run_cli(["screen", good_csv, "--out", tmp_path / "out", "--dask-address", "localhost:8786"]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, "--dask-address", "--runner dask")
    assert no_outputs(tmp_path / "out")


def test_unknown_detector(good_csv, tmp_path, capsys):
    assert run_cli(["screen", good_csv, "--out", tmp_path / "out", "--detectors", "nonesuch"]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, "--detectors", "nonesuch")


def test_no_command(capsys):
    assert run_cli([]) == EXIT_ERROR
    assert "Traceback" not in capsys.readouterr().err


# -- whole-file input errors -----------------------------------------------------------------
def test_input_path_does_not_exist(tmp_path, capsys):
    missing = str(tmp_path / "nowhere" / "data.csv")
    assert run_cli(["screen", missing, "--out", tmp_path / "out"]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, missing, "no such file")
    assert no_outputs(tmp_path / "out")


def test_one_missing_input_among_good_ones(good_csv, tmp_path, capsys):
    missing = str(tmp_path / "absent.parquet")
    assert run_cli(["screen", good_csv, missing, "--out", tmp_path / "out"]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, missing)
    assert no_outputs(tmp_path / "out")


def test_directory_without_data_files(tmp_path, capsys):
    d = tmp_path / "empty_dir"
    d.mkdir()
    (d / "notes.txt").write_text("nothing here\n")
    assert run_cli(["screen", d, "--out", tmp_path / "out"]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, str(d))


def test_glob_matching_nothing(tmp_path, capsys):
    pattern = str(tmp_path / "*.csv")
    assert run_cli(["screen", pattern, "--out", tmp_path / "out"]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, pattern)


def test_unsupported_extension(tmp_path, capsys):
    txt = tmp_path / "data.txt"
    good_frame(30).to_csv(txt, index=False)
    assert run_cli(["screen", txt, "--out", tmp_path / "out"]) == EXIT_ERROR
    line = one_error_line(capsys.readouterr().err, str(txt))
    assert "unsupported" in line


def test_empty_csv_file(tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert run_cli(["screen", empty, "--out", tmp_path / "out"]) == EXIT_ERROR
    line = one_error_line(capsys.readouterr().err, str(empty))
    assert "empty" in line
    assert no_outputs(tmp_path / "out")


@pytest.mark.parametrize("named", [False, True], ids=["inferred", "named"])
def test_header_only_csv_is_an_empty_batch_that_breaches(tmp_path, capsys, named):
    """A header-only file is an empty batch: it runs, with zero counts and empty outputs, and breaches the policy
    (exit 1, --min-valid-rows 1): an empty batch is never "accepted". With no data row no column type can be
    inferred, so every column but the label is a feature."""
    csv = tmp_path / "header_only.csv"
    csv.write_text("f1,f2,f3,label\n")
    out = tmp_path / "out"
    assert run_cli(["screen", csv, "--out", out, "-q", *(["--feature-columns", "f1,f2,f3"] if named else [])]) == EXIT_BREACHED
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.out.startswith("BREACHED (the batch has no rows")
    report = read_report(out)
    assert report["counts"] == {"rows_in": 0, "valid": 0, "cleaned": 0, "quarantine": 0, "invalid": 0}
    assert report["inputs"]["feature_columns"] == list(FEATURES)
    assert report["policy"]["breached"] and "no rows" in report["policy"]["reasons"][0]
    for name in ("cleaned", "quarantine", "invalid"):
        assert os.path.isdir(out / name)
        assert read_dir(out, name) is None
    # the knob: --min-valid-rows 0 accepts an empty batch
    assert run_cli(["screen", csv, "--out", out, "-q", "--min-valid-rows", "0"]) == EXIT_OK


def test_missing_label_column(tmp_path, capsys):
    csv = tmp_path / "nolabel.csv"
    good_frame(30).rename(columns={"label": "target"}).to_csv(csv, index=False)
    assert run_cli(["screen", csv, "--out", tmp_path / "out"]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, str(csv), "'label'", "--label-column")
    assert no_outputs(tmp_path / "out")


def test_custom_label_column_missing(good_csv, tmp_path, capsys):
    assert run_cli(["screen", good_csv, "--out", tmp_path / "out", "--label-column", "klass"]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, good_csv, "'klass'")


def test_label_column_missing_from_second_file(good_csv, tmp_path, capsys):
    other = tmp_path / "other.csv"
    good_frame(30).rename(columns={"label": "target"}).to_csv(other, index=False)
    assert run_cli(["screen", good_csv, other, "--out", tmp_path / "out"]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, str(other), "'label'")


def test_missing_id_column(good_csv, tmp_path, capsys):
    assert run_cli(["screen", good_csv, "--out", tmp_path / "out", "--id-column", "uid"]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, good_csv, "'uid'")


def test_unknown_feature_column(good_csv, tmp_path, capsys):
    assert run_cli(["screen", good_csv, "--out", tmp_path / "out", "--feature-columns", "f1,zzz"]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, good_csv, "zzz")
    assert no_outputs(tmp_path / "out")


def test_feature_column_is_the_label(good_csv, tmp_path, capsys):
    assert run_cli(["screen", good_csv, "--out", tmp_path / "out", "--feature-columns", "f1,label"]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, "--feature-columns", "'label'")


def test_garbage_parquet_file(tmp_path, capsys):
    bad = tmp_path / "garbage.parquet"
    bad.write_bytes(b"this is not a parquet file at all\x00\x01\x02" * 20)
    assert run_cli(["screen", bad, "--out", tmp_path / "out"]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, str(bad))
    assert no_outputs(tmp_path / "out")


def test_garbage_parquet_in_directory(good_csv, tmp_path, capsys):
    d = tmp_path / "inputs"
    d.mkdir()
    good_frame(30).to_parquet(d / "a.parquet", index=False)
    (d / "b.parquet").write_bytes(b"PAR1 not really")
    assert run_cli(["screen", d, "--out", tmp_path / "out"]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, "b.parquet")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read files with mode 000")
def test_unreadable_csv(tmp_path, capsys):
    csv = tmp_path / "locked.csv"
    write_good_csv(csv, 30)
    os.chmod(csv, 0)
    try:
        assert run_cli(["screen", csv, "--out", tmp_path / "out"]) == EXIT_ERROR
        one_error_line(capsys.readouterr().err, str(csv))
    finally:
        os.chmod(csv, 0o644)


def test_non_utf8_csv(tmp_path, capsys):
    csv = tmp_path / "latin1.csv"
    csv.write_bytes("f1,f2,f3,label\n1,2,3,caf\xe9\n".encode("latin-1"))
    assert run_cli(["screen", csv, "--out", tmp_path / "out"]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, str(csv))


# -- Beam options after '--' -------------------------------------------------------------------
def test_beam_options_pass_through(good_csv, tmp_path, capsys):
    out = tmp_path / "out"
    code = run_cli(["screen", good_csv, "--out", out, "-q", "--max-flagged-fraction", "1", "--", "--direct_num_workers=1"])
    assert code == EXIT_OK
    assert "Traceback" not in capsys.readouterr().err
    assert read_report(out)["runner"]["beam_args"] == ["--direct_num_workers=1"]


def test_demo_rejects_beam_options(tmp_path, capsys):
    assert run_cli(["demo", "--out", tmp_path / "demo", "--", "--x"]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, "demo", "'--'")
    assert not os.path.exists(tmp_path / "demo")


def test_main_returns_exit_code_for_demo_with_beam_options(tmp_path):
    try:
        code = main(["demo", "--out", str(tmp_path / "demo"), "--", "--x"])
    except SystemExit as exc:
        pytest.fail(f"main() raised SystemExit({exc.code}) instead of returning it")
    assert code == EXIT_ERROR


# -- policy exit codes -----------------------------------------------------------------------
def test_flagged_rows_breach_policy(tmp_path, capsys):
    csv = write_good_csv(tmp_path / "batch.csv", 120)
    out = tmp_path / "out"
    assert run_cli(["screen", csv, "--out", out, "--contamination", "0.05", "-q"]) == EXIT_BREACHED
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "BREACHED" in captured.out
    report = read_report(out)
    assert report["counts"]["quarantine"] > 0
    assert report["policy"]["breached"] is True
    assert len(row_ids(read_dir(out, "quarantine"))) == report["counts"]["quarantine"]


def test_flagged_rows_tolerated_by_policy(tmp_path, capsys):
    csv = write_good_csv(tmp_path / "batch.csv", 120)
    out = tmp_path / "out"
    code = run_cli(["screen", csv, "--out", out, "--contamination", "0.05", "--max-flagged-fraction", "1", "-q"])
    assert code == EXIT_OK
    assert "Traceback" not in capsys.readouterr().err
    report = read_report(out)
    assert report["counts"]["quarantine"] > 0
    assert report["policy"]["breached"] is False


# -- row-level problems go to invalid/ ------------------------------------------------------
# data-row offset -> (raw CSV line, column the reason must name, or None for malformed lines)
N_GOOD = 300
BAD_ROWS = {
    0: ("1.0,2.0", None),                    # too few fields, first data line
    5: ("1.0,2.0,3.0,", "label"),            # missing label
    64: ("1,2,3,4,5,6", None),               # malformed, first row of the second --batch-rows 64 chunk
    40: ("nan,1.0,1.0,0", "f1"),             # NaN literal
    77: ("1.0,inf,1.0,1", "f2"),             # infinity
    120: ("abc,1.0,1.0,2", "f1"),            # text in a numeric column
    181: ("1.0,1.0,,0", "f3"),               # empty feature cell
    250: ("1.0,2.0,3.0,1,99", None),         # too many fields
    301: ("-inf,1.0,1.0,2", "f1"),           # negative infinity
    305: ("1.0,2.0,3.0,   ", "label"),       # blank label
    310: ("0,0,0,0,0", None),                # too many fields, last line of the file
}


def write_messy_csv(directory) -> tuple[str, int]:
    """A CSV of N_GOOD good rows with the BAD_ROWS at their offsets; returns (path, data rows)."""
    good = good_frame(N_GOOD, seed=1)
    good_lines = iter(good.to_csv(index=False, header=False, float_format="%.6f").splitlines())
    n_rows = N_GOOD + len(BAD_ROWS)
    lines = ["f1,f2,f3,label"] + [BAD_ROWS[i][0] if i in BAD_ROWS else next(good_lines) for i in range(n_rows)]
    csv = directory / "messy.csv"
    csv.write_text("\n".join(lines) + "\n")
    return str(csv), n_rows


def screen_quietly(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run_cli(argv)
    return code, err.getvalue()


@pytest.fixture(scope="module")
def messy_run(tmp_path_factory):
    """One screening run over a CSV with good rows and the BAD_ROWS mixed in.

    The features are named explicitly: with automatic detection a stray 'abc' drops the
    column from the features (see test_stray_text_with_detected_features below).
    """
    tmp = tmp_path_factory.mktemp("messy")
    csv, n_rows = write_messy_csv(tmp)
    out = tmp / "out"
    # a small --batch-rows makes several chunks, so bad rows and malformed lines sit in later chunks
    code, err = screen_quietly(["screen", csv, "--out", out, "--batch-rows", "64", "--feature-columns", ",".join(FEATURES)])
    return {"code": code, "err": err, "out": out, "name": os.path.basename(csv), "n_rows": n_rows}


def test_messy_csv_is_not_a_usage_error(messy_run):
    assert messy_run["code"] in (EXIT_OK, EXIT_BREACHED), messy_run["err"]
    assert "Traceback" not in messy_run["err"]
    assert "error" not in messy_run["err"].lower()


def test_messy_csv_counts_conserve_rows(messy_run):
    counts = read_report(messy_run["out"])["counts"]
    assert counts["rows_in"] == messy_run["n_rows"]
    assert counts["rows_in"] == counts["cleaned"] + counts["quarantine"] + counts["invalid"]
    assert counts["valid"] == counts["cleaned"] + counts["quarantine"]
    assert counts["invalid"] == len(BAD_ROWS)


def test_messy_csv_row_ids_complete_and_unique(messy_run):
    out, name = messy_run["out"], messy_run["name"]
    ids = []
    for part in ("cleaned", "quarantine", "invalid"):
        ids += row_ids(read_dir(out, part))
    assert len(ids) == len(set(ids)), "a row id appears twice"
    assert set(ids) == {f"{name}:{i}" for i in range(messy_run["n_rows"])}


def test_messy_csv_bad_rows_are_invalid_with_reasons(messy_run):
    out, name = messy_run["out"], messy_run["name"]
    invalid = read_dir(out, "invalid")
    assert invalid is not None
    assert {"row_id", "source", "reason", "f1", "f2", "f3", "label"} <= set(invalid.column_names)
    rows = {r["row_id"]: r for r in invalid.to_pylist()}
    assert set(rows) == {f"{name}:{i}" for i in BAD_ROWS}
    for offset, (line, column) in BAD_ROWS.items():
        row = rows[f"{name}:{offset}"]
        assert row["source"] == name
        assert row["reason"], row
        if column is None:
            assert "malformed" in row["reason"], row
            assert f"line {offset + 2}" in row["reason"], row  # line 1 is the header
        else:
            assert f"column '{column}'" in row["reason"], row
    # the original values are kept as text
    assert rows[f"{name}:120"]["f1"] == "abc"
    assert rows[f"{name}:77"]["f2"] == "inf"
    for part in ("cleaned", "quarantine"):
        table = read_dir(out, part)
        if table is not None:
            assert not set(table.column("row_id").to_pylist()) & set(rows)


def test_parquet_nan_and_inf_rows_are_invalid(tmp_path, capsys):
    df = good_frame(150, seed=2)
    bad = {3: ("f1", np.nan), 50: ("f2", np.inf), 99: ("f3", -np.inf), 140: ("f1", np.nan)}
    for offset, (column, value) in bad.items():
        df.loc[offset, column] = value
    path = tmp_path / "batch.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)
    out = tmp_path / "out"
    assert run_cli(["screen", path, "--out", out, "-q"]) in (EXIT_OK, EXIT_BREACHED)
    assert "Traceback" not in capsys.readouterr().err
    counts = read_report(out)["counts"]
    assert counts["rows_in"] == len(df)
    assert counts["rows_in"] == counts["cleaned"] + counts["quarantine"] + counts["invalid"]
    assert counts["invalid"] == len(bad)
    rows = {r["row_id"]: r for r in read_dir(out, "invalid").to_pylist()}
    assert set(rows) == {f"batch.parquet:{i}" for i in bad}
    for offset, (column, _) in bad.items():
        reason = rows[f"batch.parquet:{offset}"]["reason"]
        assert f"column '{column}'" in reason, reason
    ids = row_ids(read_dir(out, "cleaned")) + row_ids(read_dir(out, "quarantine")) + list(rows)
    assert sorted(ids) == sorted(f"batch.parquet:{i}" for i in range(len(df)))


def test_stray_text_with_detected_features(tmp_path):
    csv, n_rows = write_messy_csv(tmp_path)
    out = tmp_path / "out"
    code, err = screen_quietly(["screen", csv, "--out", out, "-q"])
    assert code in (EXIT_OK, EXIT_BREACHED), err
    report = read_report(out)
    assert report["counts"]["rows_in"] == n_rows
    assert report["counts"]["invalid"] == len(BAD_ROWS)
    assert report["inputs"]["feature_columns"] == list(FEATURES)
    rows = {r["row_id"]: r for r in read_dir(out, "invalid").to_pylist()}
    assert "column 'f1'" in rows["messy.csv:120"]["reason"]
