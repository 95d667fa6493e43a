"""The output directory: inputs are never touched, publication is atomic and locked.

- an ``--out`` that overlaps an input (is one, lies inside one, contains one) is refused
  with one line, and the input is byte for byte intact;
- poisonguard writes only into a new or empty directory or one it marked; it deletes
  nothing it did not write;
- a process killed at any point of publication leaves either the previous outputs or the
  new ones, complete, never a mix; its lock dies with it and the next run removes what it
  left;
- two runs into one ``--out``: one publishes, the other is refused;
- hidden and ``_`` directories are never read as input.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import publish_fault
from conftest import one_error_line, run_cli
from poisonguard.pipelines import read_output
from poisonguard.pipelines.outdir import CURRENT, LOCK, MARKER, RUNS, OutputDir

HELPER = os.path.join(os.path.dirname(__file__), "publish_fault.py")
OUTPUTS = ("cleaned", "quarantine", "invalid", "expectations.json", "report.html", "report.json")






def write_csv(path, n: int = 60, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    frame = pd.DataFrame(rng.normal(size=(n, 3)) + 5.0 * labels[:, None], columns=["f1", "f2", "f3"])
    frame["label"] = labels
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    frame.to_csv(path, index=False)
    return str(path)


def snapshot(root) -> dict[str, str]:
    """Every file below ``root`` (hidden ones too) with the sha256 of its bytes, except the
    lock file (it holds the pid of the last run that took the lock) and staging directories."""
    found = {}
    for d, dirs, names in os.walk(root):
        dirs[:] = [n for n in dirs if not n.startswith("staging-")]
        for name in names:
            if name == LOCK:
                continue
            path = os.path.join(d, name)
            with open(path, "rb") as fh:
                found[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return found


def report(out) -> dict:
    with open(os.path.join(out, "report.json")) as fh:
        return json.load(fh)


def rows(out, name) -> int:
    table = read_output(os.path.join(out, name))
    return 0 if table is None else table.num_rows


def screen(inputs, out, *extra) -> list[str]:
    return ["screen", *([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs), "--out", out,
            "--detectors", "spectral", "-q", *extra]


# -- --out apart from the inputs ---------------------------------------------------------------
def test_out_equal_to_the_input_directory_is_refused(tmp_path, capsys):
    data = tmp_path / "data"
    write_csv(data / "a.csv")
    before = snapshot(data)
    assert run_cli(screen(data, data)) == 2
    one_error_line(capsys.readouterr().err, f"--out '{data}'", f"input '{data}'")
    assert snapshot(data) == before


def test_out_inside_the_input_directory_is_refused(tmp_path, capsys):
    data = tmp_path / "data"
    write_csv(data / "a.csv")
    before = snapshot(data)
    assert run_cli(screen(data, data / "screened")) == 2
    one_error_line(capsys.readouterr().err, str(data / "screened"), f"input '{data}'", "inside the input")
    assert snapshot(data) == before and not (data / "screened").exists()


def test_out_containing_the_input_is_refused_and_the_input_survives(tmp_path, capsys):
    """The reported data loss: the input lived in OUT/cleaned/ and publishing deleted it."""
    out = tmp_path / "out"
    write_csv(out / "cleaned" / "a.csv")
    before = snapshot(out)
    assert run_cli(screen(out / "cleaned", out)) == 2
    one_error_line(capsys.readouterr().err, f"--out '{out}'", str(out / "cleaned"))
    assert snapshot(out) == before
    assert run_cli(screen(out / "cleaned" / "a.csv", out)) == 2  # the file itself
    one_error_line(capsys.readouterr().err, "inside the output directory")
    assert snapshot(out) == before


def test_links_globs_references_and_configs_count_as_inputs(tmp_path, capsys):
    out = tmp_path / "out"
    inner = write_csv(out / "data" / "a.csv")
    other = write_csv(tmp_path / "elsewhere" / "b.csv")
    os.symlink(inner, tmp_path / "elsewhere" / "link.csv")  # a link into out, read through a directory
    before = snapshot(out)
    assert run_cli(screen(tmp_path / "elsewhere", out)) == 2
    one_error_line(capsys.readouterr().err, "link.csv")
    assert run_cli(screen(str(out / "*" / "*.csv"), out)) == 2
    one_error_line(capsys.readouterr().err, f"--out '{out}'")
    assert run_cli(screen(other, out, "--reference", out / "data")) == 2
    one_error_line(capsys.readouterr().err, f"input '{out / 'data'}'")
    config = out / "attack.yaml"
    config.write_text("attacks:\n  - {kind: label_flip, mode: random, rate: 0.1}\n")
    assert run_cli(["simulate", other, "--config", config, "--out", out, "-q"]) == 2
    one_error_line(capsys.readouterr().err, f"input '{config}'")
    assert {k: v for k, v in snapshot(out).items() if k != "attack.yaml"} == before


def test_rerun_of_an_earlier_output_as_input_is_refused(tmp_path, capsys):
    data = write_csv(tmp_path / "a.csv")
    out = tmp_path / "out"
    assert run_cli(screen(data, out)) in (0, 1)
    before = snapshot(out)
    assert run_cli(screen(out / "cleaned", out)) == 2  # OUT/cleaned is a link into OUT
    one_error_line(capsys.readouterr().err, str(out / "cleaned"))
    assert snapshot(out) == before


# -- ownership -------------------------------------------------------------------------------------
def test_a_non_empty_directory_without_the_marker_is_refused_not_cleaned(tmp_path, capsys):
    data = write_csv(tmp_path / "a.csv")
    out = tmp_path / "mine"
    (out / "cleaned").mkdir(parents=True)
    (out / "cleaned" / "thesis.parquet").write_text("years of work")
    (out / "report.json").write_text("{}")
    before = snapshot(out)
    assert run_cli(screen(data, out)) == 2
    one_error_line(capsys.readouterr().err, f"--out '{out}'", "not empty", MARKER)
    assert snapshot(out) == before and sorted(os.listdir(out)) == ["cleaned", "report.json"]


def test_an_empty_directory_is_claimed_and_rerun_into(tmp_path):
    data = write_csv(tmp_path / "a.csv")
    out = tmp_path / "empty"
    out.mkdir()
    assert run_cli(screen(data, out)) in (0, 1)
    assert sorted(os.listdir(out)) == sorted([CURRENT, LOCK, MARKER, RUNS, *OUTPUTS])
    for name in OUTPUTS:
        assert os.readlink(out / name) == os.path.join(CURRENT, name)
    assert os.readlink(out / CURRENT) == os.path.join(RUNS, "000001")
    assert json.loads((out / MARKER).read_text()) == {"written_by": "poisonguard", "job": "screen", "format": 1}
    first = report(out)["counts"]
    assert first["rows_in"] == 60 == rows(out, "cleaned") + rows(out, "quarantine") + rows(out, "invalid")
    write_csv(tmp_path / "a.csv", n=90, seed=1)
    for expected in ("000002", "000003"):
        assert run_cli(screen(data, out)) in (0, 1)
        assert os.readlink(out / CURRENT) == os.path.join(RUNS, expected)
    # the current and the previous version are kept, older ones removed
    assert sorted(os.listdir(out / RUNS)) == ["000002", "000003"]
    assert report(out)["counts"]["rows_in"] == 90 == rows(out, "cleaned") + rows(out, "quarantine") + rows(out, "invalid")
    assert report(out)["outputs"]["cleaned"] == str(out / "cleaned")


def test_a_foreign_file_in_an_owned_directory_is_never_replaced(tmp_path, capsys):
    data = write_csv(tmp_path / "a.csv")
    out = tmp_path / "out"
    assert run_cli(screen(data, out)) in (0, 1)
    os.unlink(out / "report.json")
    (out / "report.json").write_text("my notes")
    (out / "notes.txt").write_text("kept")
    assert run_cli(screen(data, out)) == 2
    one_error_line(capsys.readouterr().err, "'report.json' was not written by poisonguard")
    assert (out / "report.json").read_text() == "my notes"
    os.unlink(out / "report.json")
    assert run_cli(screen(data, out)) in (0, 1)  # an extra file is left alone
    assert (out / "notes.txt").read_text() == "kept" and report(out)["counts"]["rows_in"] == 60


def test_screen_and_simulate_do_not_share_an_output_directory(tmp_path, capsys):
    data = write_csv(tmp_path / "a.csv")
    out = tmp_path / "out"
    assert run_cli(screen(data, out)) in (0, 1)
    config = tmp_path / "attack.yaml"
    config.write_text("attacks:\n  - {kind: label_flip, mode: random, rate: 0.1}\n")
    before = snapshot(out)
    assert run_cli(["simulate", data, "--config", config, "--out", out, "-q"]) == 2
    one_error_line(capsys.readouterr().err, "poisonguard screen", "'simulate'")
    assert snapshot(out) == before


def test_hidden_and_underscore_directories_are_never_input(tmp_path):
    data = tmp_path / "data"
    write_csv(data / "a.csv")
    write_csv(data / ".poisonguard-staging-x" / "cleaned" / "b.csv", n=100)
    write_csv(data / "_temporary" / "c.csv", n=100)
    write_csv(data / "sub" / ".hidden.csv", n=100)
    out = tmp_path / "out"
    assert run_cli(screen(data, out)) in (0, 1)
    assert report(out)["counts"]["rows_in"] == 60
    assert report(out)["inputs"]["files"] == [str(data / "a.csv")]


# -- the lock ---------------------------------------------------------------------------------------
def test_a_held_lock_refuses_the_second_run(tmp_path, capsys):
    data = write_csv(tmp_path / "a.csv")
    out = tmp_path / "out"
    assert run_cli(screen(data, out)) in (0, 1)
    before = snapshot(out)
    with open(out / LOCK, "r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert run_cli(screen(data, out)) == 2
        one_error_line(capsys.readouterr().err, "another poisonguard run", str(out / LOCK))
    assert snapshot(out) == before
    assert run_cli(screen(data, out)) in (0, 1)  # released: the next run goes ahead


def _start_held(argv) -> subprocess.Popen:
    """A child running the CLI that stops at the start of publication (and says so)."""
    proc = subprocess.Popen([sys.executable, HELPER, "hold", "cli", *map(str, argv)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "publishing", proc.communicate()
    return proc


def test_two_runs_into_one_out_one_wins_the_other_is_refused(tmp_path, capsys):
    small, large = write_csv(tmp_path / "small.csv"), write_csv(tmp_path / "large.csv", n=90)
    out = tmp_path / "out"
    first = _start_held(screen(large, out))
    try:
        assert run_cli(screen(small, out)) == 2
        one_error_line(capsys.readouterr().err, f"another poisonguard run (pid {first.pid})", f"--out '{out}'")
    finally:
        stdout, stderr = first.communicate("\n", timeout=300)
    assert first.returncode in (0, 1), stderr
    assert report(out)["counts"]["rows_in"] == 90 == rows(out, "cleaned") + rows(out, "quarantine") + rows(out, "invalid")
    assert sorted(os.listdir(out / RUNS)) == ["000001"]


def test_a_killed_run_leaves_the_previous_outputs_and_no_lock(tmp_path):
    """SIGKILL in the middle of a run: the lock dies with the process; the next run cleans up."""
    data, other = write_csv(tmp_path / "a.csv"), write_csv(tmp_path / "b.csv", n=90)
    out = tmp_path / "out"
    assert run_cli(screen(data, out)) in (0, 1)
    before = snapshot(out)
    victim = _start_held(screen(other, out))
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    staged = [n for n in os.listdir(out / RUNS) if n.startswith("staging-")]
    assert len(staged) == 1  # what the dead run left
    assert snapshot(out) == before
    assert report(out)["counts"]["rows_in"] == 60
    assert run_cli(screen(other, out)) in (0, 1)
    assert sorted(os.listdir(out / RUNS)) == ["000001", "000002"]
    assert report(out)["counts"]["rows_in"] == 90 == rows(out, "cleaned") + rows(out, "quarantine") + rows(out, "invalid")


# -- fault injection inside publication ---------------------------------------------------------
def _fake(out, tag, kill_at) -> int:
    """Publish small files holding ``tag`` in a child process killed before its ``kill_at``-th change."""
    return subprocess.run([sys.executable, HELPER, "kill", str(kill_at), "fake", str(out), tag], capture_output=True, text=True).returncode


def test_killed_at_every_point_of_publication_never_shows_a_mix(tmp_path):
    """Kill before each file-system change of a publication in turn (1st, 2nd, ...) until one
    completes: each time the published outputs are all old or all new, and the next run
    publishes cleanly over whatever was left."""
    points, outcomes = 0, set()
    for kill_at in range(1, 200):
        out = tmp_path / f"out{kill_at}"
        for tag in ("run1", "run2"):  # two earlier versions, so that publication also prunes one
            publish_fault.fake_publish(str(out), tag)
        assert publish_fault.published_tag(out) == "run2"
        code = _fake(out, "run3", kill_at)
        seen = publish_fault.published_tag(out)
        if code == 0:
            assert seen == "run3"
            break
        assert code == publish_fault.KILLED
        points += 1
        assert seen in ("run2", "run3")
        outcomes.add(seen)
        publish_fault.fake_publish(str(out), "run4")  # the lock died with the process; leftovers are removed
        assert publish_fault.published_tag(out) == "run4"
        assert not [n for n in os.listdir(out / RUNS) if not n.isdigit()]
        assert len(os.listdir(out / RUNS)) == 2
        assert not [n for n in os.listdir(out) if "tmp" in n or n.startswith(".poisonguard-link")]
    # killed before the rename, between it and the swap, and while the oldest version was removed
    assert points >= 4 and outcomes == {"run2", "run3"}, (points, outcomes)


@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_cli_killed_inside_publication_keeps_the_previous_run_or_the_new_one(tmp_path, kill_at):
    data, other = write_csv(tmp_path / "a.csv"), write_csv(tmp_path / "b.csv", n=90)
    out = tmp_path / "out"
    assert run_cli(screen(data, out)) in (0, 1)
    previous = snapshot(out)
    killed = subprocess.run([sys.executable, HELPER, "kill", str(kill_at), "cli", *map(str, screen(other, out))],
                            capture_output=True, text=True)
    assert killed.returncode in (publish_fault.KILLED, 0, 1), killed.stderr
    counts = report(out)["counts"]
    assert counts["rows_in"] in (60, 90)  # the previous run or the new one
    assert counts["rows_in"] == rows(out, "cleaned") + rows(out, "quarantine") + rows(out, "invalid")
    assert counts["cleaned"] == rows(out, "cleaned") and counts["quarantine"] == rows(out, "quarantine")
    if counts["rows_in"] == 60:  # the previous run, byte for byte
        old = os.path.join(RUNS, "000001")
        assert {k: v for k, v in snapshot(out).items() if k.startswith(old)} == {k: v for k, v in previous.items() if k.startswith(old)}
    assert run_cli(screen(other, out)) in (0, 1)  # the next run goes ahead and cleans up
    assert report(out)["counts"]["rows_in"] == 90
    assert not [n for n in os.listdir(out / RUNS) if n.startswith("staging-")]


def test_an_unpublished_first_run_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with OutputDir(str(tmp_path / "new"), "screen", OUTPUTS) as od:
            assert os.path.isdir(od.staging)
            raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with OutputDir(str(tmp_path / "empty"), "screen", OUTPUTS):
        pass  # left without publishing
    assert os.listdir(tmp_path / "empty") == []


# -- Ctrl-C ---------------------------------------------------------------------------------------
def test_ctrl_c_inside_the_pipeline_exits_130_with_one_line(tmp_path):
    data, other = write_csv(tmp_path / "a.csv"), write_csv(tmp_path / "b.csv", n=90)
    out = tmp_path / "out"
    assert run_cli(screen(data, out)) in (0, 1)
    before = snapshot(out)
    proc = subprocess.Popen([sys.executable, HELPER, "stall", "cli", *map(str, screen(other, out))], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "screening", proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate("\n", timeout=300)
    assert proc.returncode == 130, err
    assert [line for line in err.splitlines() if line.strip()] == [
        "poisonguard: interrupted; the previous outputs are as they were"]
    assert snapshot(out) == before and not [n for n in os.listdir(out / RUNS) if n.startswith("staging-")]


@pytest.mark.slow
def test_ctrl_c_with_worker_processes_prints_one_line_not_their_tracebacks(tmp_path):
    """Ctrl-C reaches the whole process group, workers included; only the driver speaks.

    Where the signal lands (between passes or inside one) is up to the scheduler; either
    way the outcome is the same. The worker-output mechanism is tested directly below."""
    data = write_csv(tmp_path / "a.csv", n=20000)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "poisonguard.pipelines.cli", *map(str, screen(data, out)[:-1]),
                             "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a terminal's foreground job
    lines = []
    for line in proc.stderr:  # progress lines: wait until a pipeline with worker processes has run
        lines.append(line)
        if "fit pass 1/" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    rest = proc.stderr.read()
    proc.wait(timeout=300)
    assert proc.returncode == 130, "".join(lines) + rest
    assert [line for line in rest.splitlines() if line.strip() and "fit pass" not in line] == [
        "poisonguard: interrupted; the previous outputs are as they were"], rest
    assert not out.exists()


def test_ctrl_c_right_after_stderr_is_held_still_gives_it_back(capfd, monkeypatch):
    """A Ctrl-C landing just after fd 2 switches to the held file (the signal handler runs at the next bytecode)
    must not leave it switched: the command line's "interrupted" line would vanish into the file."""
    from poisonguard.pipelines import runners

    real_dup2 = os.dup2
    switched = []

    def dup2_then_ctrl_c(fd, fd2):
        real_dup2(fd, fd2)
        if not switched:
            switched.append(fd)
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(os, "dup2", dup2_then_ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            with runners._worker_stderr_captured():
                os.write(2, b"worker noise\n")
    os.write(2, b"poisonguard: interrupted\n")
    assert capfd.readouterr().err == "poisonguard: interrupted\n"


def test_held_worker_output_is_shown_on_failure_but_not_after_ctrl_c(capfd):
    """What worker processes wrote (fd 2, held in a file) is replayed when a run fails, not when it was interrupted."""
    from poisonguard.pipelines import runners

    def failing_run(interrupted: bool):
        if interrupted:
            runners.INTERRUPTED.set()
        try:
            with runners._worker_stderr_captured():
                os.write(2, b"Traceback (most recent call last):\n  worker noise\nKeyboardInterrupt\n")
                raise RuntimeError("KeyboardInterrupt [while running 'Summarise']")
        except RuntimeError:
            pass
        finally:
            runners.INTERRUPTED.clear()
        return capfd.readouterr().err

    assert "worker noise" in failing_run(interrupted=False)
    assert failing_run(interrupted=True) == ""
