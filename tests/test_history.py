"""Run history and drift (issue 12, item 5): every ``screen --history`` run appends one record to an SQLite store,
and a run whose flagged share or scores rise past the history's robust band breaches (exit 1) naming the drift
and the classes. Five clean batches of a real table, then one with a planted backdoor."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from html import unescape

import numpy as np
import pandas as pd
import pytest

from conftest import one_error_line, plant_field_backdoor, real_frame, run_cli, write_frame

BATCH = 3000
CLEAN_RUNS = 5


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    """Seven disjoint batches of diamonds: six clean (five for the history, one more), and a seventh with a 5% backdoor
    (carat at its 99th percentile, price at its 1st, relabelled to the second-largest class, as the field test plants
    it), with its ground truth."""
    df, feats = real_frame("diamonds")
    rng = np.random.default_rng(12)
    order = rng.permutation(len(df))
    root = tmp_path_factory.mktemp("diamonds")
    paths = []
    for i in range(CLEAN_RUNS + 2):
        part = df.iloc[np.sort(order[i * BATCH:(i + 1) * BATCH])].reset_index(drop=True)
        if i == 0:  # the poisoned batch (paths[POISONED])
            X, y, truth = plant_field_backdoor(part[feats].to_numpy(float), part["label"].astype(str).to_numpy(object), 0.05, 5)
            part[feats] = X
            part["label"] = y
            target = str(part["label"][truth].iloc[0])
        paths.append(write_frame(root / f"batch{i}.parquet", part))
    paths = paths[1:] + paths[:1]
    return {"root": root, "paths": paths, "feats": feats, "target": target, "planted": int(truth.sum())}


POISONED, EXTRA_CLEAN = CLEAN_RUNS + 1, CLEAN_RUNS


def _screen(batches, i, out, history, *extra):
    return run_cli(["screen", batches["paths"][i], "--out", out, "--history", history, "--id-column", "id",
                    "--feature-columns", ",".join(batches["feats"]), "--detectors", "spectral", "--no-validation", "-q", *extra])


def _report(out):
    with open(os.path.join(out, "report.json")) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def six_runs(batches, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    history = str(root / "history.sqlite")
    codes = [_screen(batches, i, root / f"out{i}", history) for i in range(CLEAN_RUNS)]
    codes.append(_screen(batches, POISONED, root / f"out{CLEAN_RUNS}", history))
    return {"root": root, "history": history, "codes": codes}


def test_clean_runs_accepted_then_poisoned_run_breaches_naming_the_drift(batches, six_runs):
    assert six_runs["codes"] == [0] * CLEAN_RUNS + [1]
    first = _report(six_runs["root"] / "out0")
    assert first["history"]["compared_runs"] == 0 and not first["history"]["judged"]
    assert not _report(six_runs["root"] / f"out{CLEAN_RUNS - 1}")["history"]["judged"]  # 4 runs before it: too few
    report = _report(six_runs["root"] / f"out{CLEAN_RUNS}")
    section = report["history"]
    assert section["alarm"] and section["compared_runs"] == CLEAN_RUNS
    assert batches["target"] in section["classes"]
    shares = {d["class"]: d for d in section["drifts"] if d["metric"] == "flagged_share" and d["detector"] is None}
    assert batches["target"] in shares and shares[batches["target"]]["value"] > shares[batches["target"]]["threshold"]
    drift = [r for r in report["policy"]["reasons"] if r.startswith("drift against the last 5 runs")]
    assert len(drift) == 1 and f"'{batches['target']}'" in drift[0], report["policy"]["reasons"]
    with open(six_runs["root"] / f"out{CLEAN_RUNS}" / "report.html") as fh:
        html = unescape(fh.read())
    assert "History and drift" in html and drift[0] in html  # in the verdict's reasons
    assert f"drift against the last 5 runs in class {batches['target']}" in html  # and the drift section


def test_drift_alone_breaches_and_on_drift_report_only_records(batches, six_runs, tmp_path):
    """With a budget the flagged share stays inside, the drift alone decides the exit code; --on-drift report keeps
    the alarm in the report and accepts."""
    copy = str(tmp_path / "h.sqlite")
    src = sqlite3.connect(six_runs["history"])
    with sqlite3.connect(copy) as dst:
        src.backup(dst)
    src.close()
    with sqlite3.connect(copy) as con:  # keep only the five clean runs
        con.execute("DELETE FROM run_classes WHERE run_id > 5")
        con.execute("DELETE FROM run_detectors WHERE run_id > 5")
        con.execute("DELETE FROM runs WHERE run_id > 5")
    assert _screen(batches, EXTRA_CLEAN, tmp_path / "clean", copy) == 0  # a sixth clean batch: judged, no alarm
    section = _report(tmp_path / "clean")["history"]
    assert section["judged"] and section["compared_runs"] == 5 and not section["alarm"], section["drifts"]
    assert _screen(batches, POISONED, tmp_path / "a", copy, "--max-flagged-fraction", "1") == 1
    assert _report(tmp_path / "a")["policy"]["reasons"][0].startswith("drift against the last 6 runs")
    assert _screen(batches, POISONED, tmp_path / "b", copy, "--max-flagged-fraction", "1", "--on-drift", "report") == 0
    report = _report(tmp_path / "b")
    assert report["history"]["alarm"] and report["policy"]["reasons"] == []


def test_history_command_shows_all_six_runs(six_runs, capsys):
    capsys.readouterr()
    assert run_cli(["history", "--history", six_runs["history"]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["run", "created", "rows"] and len(lines) == 1 + CLEAN_RUNS + 1
    assert [line.split()[0] for line in lines[1:]] == [str(i) for i in range(1, CLEAN_RUNS + 2)]
    assert all("accepted" in line for line in lines[1:-1]) and "BREACHED" in lines[-1]
    assert run_cli(["history", "--history", six_runs["history"], "--last", "2", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in runs] == [5, 6] and runs[1]["drift"] == 1 and runs[1]["classes"]


def test_store_is_plain_sqlite_in_wal_mode(batches, six_runs):
    """What README documents: query it with SQL."""
    with sqlite3.connect(six_runs["history"]) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = con.execute("SELECT run_id, valid, flagged, flagged_share, breached, drift FROM runs ORDER BY run_id").fetchall()
        assert [r[0] for r in rows] == list(range(1, CLEAN_RUNS + 2))
        assert all(r[1] == BATCH for r in rows[:-1]) and rows[-1][4:] == (1, 1)
        share = con.execute("SELECT flagged_share FROM run_classes WHERE run_id = 6 AND class = ?",
                            (batches["target"],)).fetchone()[0]
        clean = con.execute("SELECT max(flagged_share) FROM run_classes WHERE run_id <= 5 AND class = ?",
                            (batches["target"],)).fetchone()[0]
        assert share > clean + 0.01
        assert con.execute("SELECT count(*) FROM run_detectors WHERE detector = 'spectral'").fetchone()[0] == CLEAN_RUNS + 1


def test_not_a_history_store(tmp_path, batches, capsys):
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE mine (x)")
    before = other.read_bytes()
    assert _screen(batches, 0, tmp_path / "out", str(other)) == 2  # refused before anything runs or is written
    one_error_line(capsys.readouterr().err, str(other), "did not write")
    assert other.read_bytes() == before and not os.path.exists(tmp_path / "out" / "report.json")
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    assert run_cli(["history", "--history", text]) == 2
    one_error_line(capsys.readouterr().err, str(text))
    assert run_cli(["history", "--history", tmp_path / "absent.sqlite"]) == 2
    one_error_line(capsys.readouterr().err, "no such history file")


@pytest.mark.slow
def test_two_runs_started_at_once_both_land(batches, tmp_path):
    history = str(tmp_path / "h.sqlite")
    cmd = [sys.executable, "-m", "poisonguard.pipelines.cli", "screen"]
    procs = [subprocess.Popen([*cmd, batches["paths"][i], "--out", str(tmp_path / f"out{i}"), "--history", history,
                               "--id-column", "id", "--detectors", "spectral", "--no-validation", "-q"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    with sqlite3.connect(history) as con:
        outs = sorted(r[0] for r in con.execute("SELECT out FROM runs"))
        assert outs == sorted(str(tmp_path / f"out{i}") for i in (0, 1))
        assert con.execute("SELECT count(DISTINCT run_id) FROM run_classes").fetchone()[0] == 2


def _open_new_store_at_once(path, delay):
    import time
    from poisonguard.pipelines.history import _RUN_COLUMNS, append_run, check_store, recent_runs
    try:
        time.sleep(delay)
        check_store(path)
        recent_runs(path, 5, create=True)
        append_run(path, {**dict.fromkeys(_RUN_COLUMNS, 0), "classes": {}, "detectors_flagged": {}})
        return "ok"
    except Exception as exc:  # the message is what the test reports
        return str(exc)


def test_processes_opening_one_new_store_at_once_all_land(tmp_path):
    """Opening a new store while another process turns it into WAL mode is refused at once by SQLite, without waiting
    on its busy timeout; the store retries. 4 processes, started a few milliseconds apart, on each of 300 new files:
    before the retry, this test failed in 2 of 4 runs ('database is locked'); CI saw it with two screens at once."""
    import multiprocessing
    paths = [str(tmp_path / f"h{i}.sqlite") for i in range(300)]
    delays = np.random.default_rng(0).uniform(0, 0.01, (len(paths), 4))
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = [pool.starmap(_open_new_store_at_once, zip([path] * 4, pause)) for path, pause in zip(paths, delays)]
    assert [r for batch in results for r in batch if r != "ok"] == []
    for path in paths:
        with sqlite3.connect(path) as con:
            assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 4


# -- the alarm on its own (no pipeline) ---------------------------------------------------------------
def _record(share, p99=1.6, detectors="spectral", rows=3000, classes=None, run_id=0):
    classes = classes or {"a": (rows // 2, share), "b": (rows - rows // 2, share)}
    return {"run_id": run_id, "detectors": detectors, "valid": rows, "flagged_share": share, "suspicion_p99": p99,
            "classes": {c: {"rows": n, "flagged_share": s, "suspicion_p99": p99} for c, (n, s) in classes.items()},
            "detectors_flagged": {"spectral": {"flagged": int(share * rows), "flagged_share": share}}}


def test_alarm_rule_median_plus_robust_spreads_with_floors():
    from poisonguard.pipelines.history import DriftRule, check_drift

    rule = DriftRule(window=20, min_runs=5, k=5, floor=0.005, score_floor=1.0)
    past = [_record(s, run_id=i) for i, s in enumerate([0.002, 0.003, 0.002, 0.004, 0.003])]
    # median 0.003, MAD 0.001 -> spread 0.0014826; 5 spreads 0.0074 > floor; binomial 5 * sqrt(.005 * .995 / 3000) = 0.0064
    assert not check_drift(_record(0.010), past, rule)["alarm"]
    hit = check_drift(_record(0.011), past, rule)
    assert hit["alarm"] and hit["classes"] == []  # a class of 1,500 rows has a wider binomial band (0.0091) than 0.008
    assert check_drift(_record(0.013), past, rule)["classes"] == ["a", "b"]
    overall = next(d for d in hit["drifts"] if d["class"] is None and d["detector"] is None and d["metric"] == "flagged_share")
    assert overall["median"] == pytest.approx(0.003) and overall["threshold"] == pytest.approx(0.003 + 5 * 1.4826 * 0.001)
    # history all zero: the floor (plus binomial errors) holds the line instead of a zero spread
    zeros = [_record(0.0, run_id=i) for i in range(5)]
    assert not check_drift(_record(0.004), zeros, rule)["alarm"]
    assert check_drift(_record(0.02), zeros, rule)["alarm"]
    # fewer flags never ring; too few comparable runs (other detectors do not count) are no judgement
    assert not check_drift(_record(0.0), past, rule)["alarm"]
    other = [_record(0.0, detectors="spectral,label", run_id=i) for i in range(10)]
    section = check_drift(_record(0.5), past[:4] + other, rule)
    assert section["compared_runs"] == 4 and not section["judged"] and not section["alarm"]
    # the score: p99 above median + max(k spreads, score floor)
    assert not check_drift(_record(0.003, p99=2.5), past, rule)["alarm"]
    assert [d["metric"] for d in check_drift(_record(0.003, p99=2.7), past, rule)["drifts"]][:1] == ["suspicion_p99"]


def test_one_class_alone_does_not_ring_but_is_named_when_the_batch_does():
    from poisonguard.pipelines.history import DriftRule, check_drift

    rule = DriftRule()
    past = [_record(0.0, classes={"big": (2900, 0.0), "small": (100, 0.0)}, run_id=i) for i in range(5)]
    small_only = _record(15 / 3000, classes={"big": (2900, 0.0), "small": (100, 0.15)})  # 15 rows of a small class
    assert not check_drift(small_only, past, rule)["alarm"]
    both = _record(0.05, classes={"big": (2900, 0.047), "small": (100, 0.15)})
    section = check_drift(both, past, rule)
    assert section["alarm"] and section["classes"] == ["big", "small"]
    assert section["drifts"][0]["class"] is None  # the batch's own metrics first


def test_a_batch_of_300_classes_is_counted_whole_beyond_the_200_the_report_describes(tmp_path):
    """The report describes 200 classes one by one and sums up the rest (other_classes); the history's batch totals
    (rows, flagged share, quantiles, poison rate) take the rest in, its per-class table holds the 200."""
    from poisonguard.pipelines.history import run_record

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(6000, 4)), columns=list("abcd"))
    frame["label"] = np.repeat([f"c{i:03d}" for i in range(300)], 20)
    path = write_frame(tmp_path / "many.parquet", frame)
    history = str(tmp_path / "h.sqlite")
    out = tmp_path / "out"
    assert run_cli(["screen", path, "--out", out, "--detectors", "spectral", "--history", history, "-q"]) in (0, 1)
    report = json.loads((out / "report.json").read_text())
    assert len(report["classes"]) == 200 and report["other_classes"]["classes"] == 100
    with sqlite3.connect(history) as con:
        assert con.execute("SELECT COUNT(*) FROM run_classes").fetchone()[0] == 200
    other = report["other_classes"]
    other["flagged"] = other["summary"]["flagged"] = 30  # as if 30 of the summed-up classes' rows were flagged
    record = run_record(report)
    described = sum(c["flagged"] for c in report["classes"].values())
    assert record["flagged"] == described + 30
    assert record["flagged_share"] == pytest.approx((described + 30) / 6000)
    assert len(record["classes"]) == 200


def test_screen_with_a_saved_model_keeps_the_history_too(tmp_path):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(3000, 4)), columns=list("abcd"))
    frame["label"] = rng.choice(["x", "y"], 3000)
    trusted = write_frame(tmp_path / "trusted.parquet", frame)
    batch = write_frame(tmp_path / "batch.parquet", frame.sample(frac=0.5, random_state=1))
    assert run_cli(["fit", trusted, "--out", tmp_path / "model", "--detectors", "spectral", "-q"]) == 0
    history = str(tmp_path / "h.sqlite")
    for i in range(2):
        assert run_cli(["screen", batch, "--model", tmp_path / "model", "--out", tmp_path / f"out{i}", "--history", history,
                        "-q"]) == 0
    from poisonguard.pipelines.history import recent_runs

    assert [r["rows_in"] for r in recent_runs(history)] == [1500, 1500]
    assert "history" in json.loads((tmp_path / "out1" / "report.json").read_text())
