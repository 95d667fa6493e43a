"""Job files (issue 12, item 4): ``poisonguard run JOB.yaml``. Keys come from ``screen``'s parser (one per option),
a JSON Schema validates them with one-line errors naming the key, ``{date}`` fills partitioned paths, and the command
line overrides any key."""

from __future__ import annotations

import json
import os
import shlex

import numpy as np
import pandas as pd

from conftest import one_error_line, run_cli
from poisonguard.pipelines.cli import build_parser
from poisonguard.pipelines.jobs import BEAM_ARGS, job_keys, job_schema, screen_parser

DATE = "2026-11-28"


def _frame(n, seed, with_id=True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    df = pd.DataFrame(rng.normal(size=(n, 3)) + labels[:, None] * 4.0, columns=["f1", "f2", "f3"])
    df["label"] = labels
    if with_id:
        df.insert(0, "id", np.arange(n) + 1000 * seed)
    return df


def _yaml(doc) -> str:
    return json.dumps(doc, indent=1)  # JSON is YAML


def _every_key(tmp_path) -> dict:
    """A job with every key: today's keys with values other than their defaults where the run allows, and any key
    added to screen since (null: its default), so that a new option is in it too."""
    (tmp_path / "landing" / DATE).mkdir(parents=True)
    _frame(240, 1).to_csv(tmp_path / "landing" / DATE / "part-0.csv", index=False)
    _frame(240, 2).to_csv(tmp_path / "landing" / DATE / "part-1.csv", index=False)
    _frame(300, 3, with_id=False).to_csv(tmp_path / "trusted.csv", index=False)  # no id column (item 7)
    doc = {
        "inputs": [str(tmp_path / "landing" / "{date}" / "*.csv")],
        "out": str(tmp_path / "screened" / "{date:%Y/%m/%d}"),
        "label_column": "label", "id_column": "id", "feature_columns": ["f1", "f2", "f3"],
        "detectors": ["spectral", "label", "novelty"], "alpha": 0.02, "contamination": None,
        "reference": [str(tmp_path / "trusted.csv")], "target_fpr": 0.05,
        "history": str(tmp_path / "history.sqlite"), "na_values": ["NA", "-"], "allow_duplicate_ids": True,
        "policy": {"max_flagged_fraction": 0.5, "max_invalid_fraction": 0.5, "min_valid_rows": 10, "on_drift": "report",
                   "drift_window": 10, "drift_min_runs": 3, "drift_k": 4, "drift_floor": 0.01, "drift_score_floor": 2},
        "validation": {"expectations": None, "on_failed_expectation": "breach", "no_validation": False},
        "execution": {"runner": "direct", "dask_address": None, "workers": 1, "threads": 1, "batch_rows": 100,
                      "quiet": True, "debug": False},
        BEAM_ARGS: ["--direct_num_workers=1"],
    }
    for section, actions in job_keys(screen_parser(build_parser())).items():
        for key in actions:
            (doc if section is None else doc[section]).setdefault(key, None)
    return doc


def _report(out) -> dict:
    with open(os.path.join(out, "report.json")) as fh:
        return json.load(fh)


def test_every_screen_option_has_a_key():
    """The keys are the parser's: every option of screen, with its type, in the schema (and the schema is valid)."""
    import jsonschema

    parser = build_parser()
    schema = job_schema(parser)
    jsonschema.Draft202012Validator.check_schema(schema)
    props = schema["properties"]
    keys = {k for k, v in props.items() if "properties" not in v} | {
        k for v in props.values() if "properties" in v for k in v["properties"]}
    dests = {a.dest for a in screen_parser(parser)._actions if a.dest != "help"}
    assert dests <= keys and keys - dests == {BEAM_ARGS}
    assert props["policy"]["properties"]["max_flagged_fraction"]["maximum"] == 1
    assert props["execution"]["properties"]["runner"]["enum"][:2] == ["direct", "dask"]
    assert set(schema["required"]) == {"inputs", "out"}


def test_job_with_every_key_runs(tmp_path, capsys):
    doc = _every_key(tmp_path)
    job = tmp_path / "job.yaml"
    job.write_text(_yaml(doc))
    code = run_cli(["run", job, "--date", DATE])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = tmp_path / "screened" / "2026" / "11" / "28"
    report = _report(out)
    assert report["counts"]["rows_in"] == 480 and len(report["inputs"]["files"]) == 2
    assert report["inputs"]["na_values"] == ["", "NA", "-"] and report["inputs"]["id_column"] == "id"
    assert report["decision"]["members"] == ["spectral", "label", "novelty"]
    assert report["decision"]["threshold_mode"] == "reference" and report["decision"]["target_fpr"] == 0.05
    assert report["reference"]["valid"] == 300
    assert report["batch_rows"] == 100 and report["runner"]["beam_args"] == ["--direct_num_workers=1"]
    policy = report["policy"]
    assert (policy["max_flagged_fraction"], policy["max_invalid_fraction"], policy["min_valid_rows"], policy["on_drift"],
            policy["on_failed_expectation"]) == (0.5, 0.5, 10, "report", "breach")
    assert report["history"]["window"] == 10 and report["history"]["min_runs"] == 3 and report["history"]["k"] == 4
    assert os.path.exists(tmp_path / "history.sqlite")


def test_wrong_key_is_one_line_naming_it(tmp_path, capsys):
    doc = _every_key(tmp_path)
    doc["policy"]["max_flaged_fraction"] = 0.1
    job = tmp_path / "job.yaml"
    job.write_text(_yaml(doc))
    assert run_cli(["run", job]) == 2
    line = one_error_line(capsys.readouterr().err, str(job), "policy.max_flaged_fraction", "unknown key")
    assert "max_flagged_fraction" in line.split("allowed keys:")[1]
    assert not os.path.exists(tmp_path / "screened")
    for bad, fragments in [({"outt": "x"}, ["outt: unknown key"]),
                           ({"execution": {"workers": 0}}, ["execution.workers", ">= 1"]),
                           ({"detectors": 3}, ["detectors", "expected a list or a string"]),
                           ({"validation": {"on_failed_expectation": "drop"}}, ["validation.on_failed_expectation", "breach"])]:
        job.write_text(_yaml({"inputs": ["a.csv"], "out": "o", **bad}))
        assert run_cli(["run", job]) == 2
        one_error_line(capsys.readouterr().err, str(job), *fragments)
    job.write_text(_yaml({"inputs": ["a.csv"]}))
    assert run_cli(["run", job]) == 2
    one_error_line(capsys.readouterr().err, str(job), "out: required key missing")


def test_unsafe_or_huge_yaml_is_refused(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("inputs: !!python/object/apply:os.system ['echo hi']\nout: o\n")
    assert run_cli(["run", job]) == 2
    one_error_line(capsys.readouterr().err, str(job))
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    job.write_text(laughs)
    assert run_cli(["run", job]) == 2
    one_error_line(capsys.readouterr().err, str(job), "job file")


def test_command_line_overrides_win(tmp_path, capsys):
    doc = _every_key(tmp_path)
    job = tmp_path / "job.yaml"
    job.write_text(_yaml(doc))
    capsys.readouterr()
    argv = ["run", job, "--date", DATE, "--set", "policy.max_flagged_fraction=0.02", "--set", "detectors=spectral,novelty",
            "--max-invalid-fraction", "0.25", "--batch-rows", "64", "--show", "--", "--direct_running_mode=in_memory"]
    assert run_cli(argv) == 0
    shown = shlex.split(capsys.readouterr().out.strip())
    assert shown[:2] == ["poisonguard", "screen"]
    args = build_parser().parse_args(shown[1:shown.index("--")])  # the command line it runs parses as screen's
    assert (args.max_flagged_fraction, args.max_invalid_fraction, args.batch_rows) == (0.02, 0.25, 64)
    assert args.detectors == ("spectral", "novelty") and args.min_valid_rows == 10
    assert args.inputs == [str(tmp_path / "landing" / DATE / "*.csv")]
    assert shown[shown.index("--") + 1:] == ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
    # the job's budget (0.5) accepts this batch, whose trusted-row cut at 5% flags a few percent; the override breaches
    assert run_cli([a for a in argv if a != "--show"]) == 1
    report = _report(tmp_path / "screened" / "2026" / "11" / "28")
    assert "exceed the allowed 2%" in report["policy"]["reasons"][0]
    assert report["policy"]["max_flagged_fraction"] == 0.02 and report["policy"]["max_invalid_fraction"] == 0.25
    assert report["batch_rows"] == 64 and report["decision"]["members"] == ["spectral", "novelty"]


def test_set_unknown_key_and_bad_date(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(_yaml({"inputs": ["a.csv"], "out": "o"}))
    assert run_cli(["run", job, "--set", "polcy.max_flagged_fraction=1"]) == 2
    one_error_line(capsys.readouterr().err, "--set polcy.max_flagged_fraction", "unknown key")
    assert run_cli(["run", job, "--date", "28/11/2026"]) == 2
    one_error_line(capsys.readouterr().err, "--date", "YYYY-MM-DD")
    assert run_cli(["run", tmp_path / "absent.yaml"]) == 2
    one_error_line(capsys.readouterr().err, "absent.yaml", "no such job file")
