"""Exit codes a scheduler can trust (issue 12, item 6): 0 accepted, 1 the policy breached, 2 a usage or input error.

An empty or fully invalid batch breaches (``--min-valid-rows``, default 1); the default flagged budget
(``--max-flagged-fraction`` 0.01) leaves room for the decision layer's clean-row bound (about 0.5%), so a
clean real table is accepted while a share of flagged rows above the budget breaches.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from conftest import one_error_line, real_frame, run_cli, write_frame

EXIT_OK, EXIT_BREACHED, EXIT_ERROR = 0, 1, 2


def _report(out) -> dict:
    with open(os.path.join(out, "report.json")) as fh:
        return json.load(fh)


def _frame(n=300, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    df = pd.DataFrame(rng.normal(size=(n, 3)) + labels[:, None] * 4.0, columns=["f1", "f2", "f3"])
    df["label"] = labels
    return df


def test_fully_invalid_batch_breaches(tmp_path, capsys):
    """Every row lacks its label: nothing valid is left, which is a breach, not an acceptance."""
    df = _frame(90).astype({"label": object})
    df["label"] = None
    csv = write_frame(tmp_path / "all_invalid.csv", df)
    out = tmp_path / "out"
    assert run_cli(["screen", csv, "--out", out, "-q"]) == EXIT_BREACHED
    assert capsys.readouterr().out.startswith("BREACHED (all 90 rows are invalid")
    report = _report(out)
    assert report["counts"]["invalid"] == 90 and report["counts"]["valid"] == 0
    assert report["policy"]["min_valid_rows"] == 1 and report["policy"]["breached"]
    # the knob turns it off: then only the invalid budget speaks (default 1: never)
    assert run_cli(["screen", csv, "--out", out, "-q", "--min-valid-rows", "0"]) == EXIT_OK
    assert run_cli(["screen", csv, "--out", out, "-q", "--min-valid-rows", "0", "--max-invalid-fraction", "0.5"]) == EXIT_BREACHED


def test_min_valid_rows_counts_valid_rows(tmp_path, capsys):
    csv = write_frame(tmp_path / "b.csv", _frame(60))
    out = tmp_path / "out"
    assert run_cli(["screen", csv, "--out", out, "-q", "--min-valid-rows", "61"]) == EXIT_BREACHED
    assert "only 60 valid rows; at least 61 valid rows required" in capsys.readouterr().out
    assert run_cli(["screen", csv, "--out", out, "-q", "--min-valid-rows", "60"]) == EXIT_OK


@pytest.mark.parametrize("value", ["-1", "x"])
def test_min_valid_rows_must_be_a_count(tmp_path, capsys, value):
    csv = write_frame(tmp_path / "b.csv", _frame(30))
    assert run_cli(["screen", csv, "--out", tmp_path / "out", "--min-valid-rows", value]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, "--min-valid-rows", "non-negative integer")


def test_default_budget_accepts_a_clean_real_table_and_breaches_above_it(tmp_path):
    """cells (2,019 rows, 56 features), clean: the default policy accepts it. A forced 0.5% cut (the clean-row
    bound) stays within the default 1% budget; 0 makes any flagged row a breach; a 3% cut breaches."""
    df, feats = real_frame("cells")
    path = write_frame(tmp_path / "cells.parquet", df)
    base = ["screen", path, "--out", tmp_path / "out", "--id-column", "id",
            "--feature-columns", ",".join(feats), "--no-validation", "-q"]
    assert run_cli(base) == EXIT_OK
    report = _report(tmp_path / "out")
    assert report["policy"]["max_flagged_fraction"] == 0.01
    assert report["policy"]["flagged_fraction"] <= 0.005
    base += ["--detectors", "spectral"]  # the cuts below are fixed shares: one detector is enough, and quicker
    assert run_cli([*base, "--contamination", "0.005"]) == EXIT_OK
    assert 0 < _report(tmp_path / "out")["policy"]["flagged_fraction"] <= 0.006
    assert run_cli([*base, "--contamination", "0.005", "--max-flagged-fraction", "0"]) == EXIT_BREACHED
    assert run_cli([*base, "--contamination", "0.03"]) == EXIT_BREACHED
    assert "exceed the allowed 1%" in _report(tmp_path / "out")["policy"]["reasons"][0]


def test_empty_partition_beside_full_ones(tmp_path):
    """A header-only file among others (an hour with no rows, listed first) adds nothing: the columns' types come from
    the files with rows, and the batch of the other files is screened as usual."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("f1,f2,f3,label\n")
    write_frame(tmp_path / "in" / "b.csv", _frame(90))
    out = tmp_path / "out"
    assert run_cli(["screen", tmp_path / "in", "--out", out, "-q"]) == EXIT_OK
    report = _report(out)
    assert report["counts"]["rows_in"] == 90 and report["inputs"]["feature_columns"] == ["f1", "f2", "f3"]
    assert len(report["inputs"]["files"]) == 2


def test_the_cli_policy_defaults_are_the_policy_s_and_the_drift_rule_s():
    """The parser states its defaults as literals (building it imports nothing heavy); they must be the library's."""
    from poisonguard.pipelines.cli import build_parser
    from poisonguard.pipelines.history import DriftRule
    from poisonguard.pipelines.screen import Policy

    args = build_parser().parse_args(["screen", "in.csv", "--out", "out"])
    policy, drift = Policy(), DriftRule()
    for name in ("max_flagged_fraction", "max_invalid_fraction", "min_valid_rows", "on_failed_expectation", "on_drift"):
        assert getattr(args, name) == getattr(policy, name), name
    for name in ("window", "min_runs", "k", "floor", "score_floor"):
        assert getattr(args, f"drift_{name}") == getattr(drift, name), name


@pytest.mark.parametrize("detector", ["spectral", "robust_spectral", "influence", "clustering", "knn", "label"])
def test_a_header_only_batch_breaches_whatever_the_detector(tmp_path, detector):
    """An empty batch is a breach (exit 1), never a crash: influence once raised KeyError on zero rows."""
    path = tmp_path / "empty.csv"
    path.write_text("a,b,label\n")
    assert run_cli(["screen", path, "--out", tmp_path / "out", "--detectors", detector, "-q"]) == 1
    assert _report(tmp_path / "out")["counts"]["rows_in"] == 0
