"""The validation stage: Great Expectations inside the screening job."""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from poisonguard.pipelines import RunnerConfig, ScreenConfig, read_output, run_screen
from poisonguard.pipelines.cli import main
from poisonguard.pipelines.report import percent
from poisonguard.pipelines import screen as screen_module
from poisonguard.pipelines.screen import Policy
from poisonguard.pipelines.validation import ColumnStatistics, _bound


def _table(seed, n, *, labels=("cat", "dog", "eel")):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "amount": rng.lognormal(3, 0.5, n),
        "n_items": rng.poisson(4, n).astype(float),
        "score": rng.normal(0, 1, n),
        "label": rng.choice(list(labels), n),
    })
    frame.insert(0, "id", [f"r{seed}-{i:05d}" for i in range(n)])
    return frame


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "trusted.parquet"
    _table(1, 4000).to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """3000 rows like the reference; row r2-00017 has an amount far above the trusted range."""
    frame = _table(2, 3000)
    frame.loc[17, "amount"] = 1e5
    path = tmp_path_factory.mktemp("batch") / "batch.parquet"
    frame.to_parquet(path, index=False)
    return path, frame


#: The policy that moves rows failing a row-level expectation (the default only reports them).
QUARANTINE = Policy(on_failed_expectation="quarantine")


def _screen(inputs, out, **kwargs):
    kwargs.setdefault("detectors", ("spectral",))
    kwargs.setdefault("id_column", "id")
    return run_screen(ScreenConfig(inputs=tuple(map(str, inputs)), out=str(out), **kwargs))


def _result(report, name):
    matches = [r for r in report["validation"]["great_expectations"]["results"] if r["meta"]["poisonguard"]["name"] == name]
    assert len(matches) == 1, name
    return matches[0]


def _rows(out, name):
    table = read_output(os.path.join(out, name))
    return table.to_pandas() if table is not None else pd.DataFrame({"row_id": [], "failed_expectations": []})


@pytest.mark.parametrize("on_failed", ["quarantine", "breach", "report"])
def test_value_outside_reference_range_fails_its_expectation_and_the_policy_acts(batch, reference, tmp_path, on_failed):
    path, _ = batch
    # a lenient flag allowance isolates what the expectation does from what the detector does
    policy = Policy(max_flagged_fraction=0.01, on_failed_expectation=on_failed)
    result = _screen([path], tmp_path, reference=(str(reference),), policy=policy)
    report = json.load(open(result.path("report.json")))
    validation = report["validation"]
    assert validation["source"] == "data contract and trusted reference rows"
    between = _result(report, "expect_column_values_to_be_between(amount)")
    assert between["success"] is False
    assert between["result"]["unexpected_count"] == 1
    assert between["result"]["partial_unexpected_list"] == [1e5]
    assert between["result"]["partial_unexpected_index_list"] == [{"row_id": "r2-00017"}]
    assert "expect_column_values_to_be_between(amount)" in validation["failed_row_level"]
    for other in ("n_items", "score"):  # rows like the trusted ones pass the others
        assert _result(report, f"expect_column_values_to_be_between({other})")["success"] is True
    assert _result(report, "expect_column_values_to_be_in_set(label)")["success"] is True
    assert _result(report, "expect_column_values_to_be_unique(row_id)")["success"] is True

    outs = {name: _rows(tmp_path, name) for name in ("cleaned", "quarantine", "invalid")}
    marked = pd.concat([outs["cleaned"], outs["quarantine"]])
    marked = marked[marked["failed_expectations"].notna()]
    assert marked["row_id"].tolist() == ["r2-00017"]
    assert marked["failed_expectations"].tolist() == ["expect_column_values_to_be_between(amount)"]
    where = "quarantine" if "r2-00017" in set(outs["quarantine"]["row_id"]) else "cleaned"
    policy_json = report["policy"]
    if on_failed == "quarantine":
        assert where == "quarantine"
        row = outs["quarantine"].set_index("row_id").loc["r2-00017"]
        assert "expect_column_values_to_be_between(amount)" in row["reason"]
        # the row is dealt with; only dataset-level failures (the mean it shifts) breach
        assert not any("expect_column_values_to_be_between(amount)" in r for r in policy_json["reasons"])
        assert "expect_column_mean_to_be_between(amount)" in validation["failed_dataset_level"]
    elif on_failed == "breach":
        assert policy_json["breached"] is True
        assert any("expect_column_values_to_be_between(amount)" in r for r in policy_json["reasons"])
    else:
        assert not any("expect_column" in r for r in policy_json["reasons"])
    counts = report["counts"]
    assert counts["rows_in"] == counts["cleaned"] + counts["quarantine"] + counts["invalid"] == 3000
    # the suite as applied is written beside the report, in Great Expectations' JSON
    suite = json.load(open(result.path("expectations.json")))
    (amount,) = [e["kwargs"] for e in suite["expectations"]
                 if e["type"] == "expect_column_values_to_be_between" and e["kwargs"]["column"] == "amount"]
    trusted = pd.read_parquet(reference)["amount"]
    assert amount["min_value"] < trusted.min() and trusted.max() < amount["max_value"] < 1e5
    assert any(e["type"] == "expect_column_values_to_be_in_set" and e["kwargs"]["value_set"] == ["cat", "dog", "eel"]
               for e in suite["expectations"])


USER_SUITE = {
    "name": "team_suite",
    "expectations": [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "amount", "min_value": 5, "max_value": 60, "mostly": 0.9}},
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "score", "min_value": -2, "max_value": 2}},
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "label", "value_set": ["cat", "dog"]}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "n_items"}},
        {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "id", "regex": "^r3-000"}},
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "n_items"}},
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "amount", "min_value": 0, "max_value": 30}},
        {"type": "expect_column_stdev_to_be_between", "kwargs": {"column": "score", "min_value": 0.5, "max_value": 2}},
        {"type": "expect_column_max_to_be_between", "kwargs": {"column": "n_items", "max_value": 10}},
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 100, "max_value": 2000}},
        {"type": "expect_column_values_to_be_of_type", "kwargs": {"column": "score", "type_": "float64"}},
    ],
    "meta": {"owner": "data team"},
}


def _gx_alone(frame, suite):
    """Great Expectations by itself on a whole pandas frame: results by position in the suite."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    batch = context.data_sources.add_pandas("alone").add_dataframe_asset("all").add_batch_definition_whole_dataframe("all")
    gx_suite = context.suites.add(gx.ExpectationSuite(name="alone", expectations=suite["expectations"]))
    result = batch.get_batch(batch_parameters={"dataframe": frame}).validate(gx_suite, result_format="SUMMARY")
    by_id = {r.expectation_config.id: r for r in result.results}
    return [by_id[e.id] for e in gx_suite.expectations]


def test_user_suite_gives_the_results_of_great_expectations_alone(tmp_path, monkeypatch):
    """Validated chunk by chunk (4 chunks, one Great Expectations run each) and merged, as GX gives on all rows at once."""
    monkeypatch.setattr(screen_module, "VALIDATION_BLOCK_ROWS", 1)
    frame = _table(3, 2500)
    frame.to_parquet(tmp_path / "batch.parquet", index=False)
    (tmp_path / "suite.json").write_text(json.dumps(USER_SUITE))
    result = _screen([tmp_path / "batch.parquet"], tmp_path / "out", expectations=str(tmp_path / "suite.json"), batch_rows=700,
                     policy=Policy(max_flagged_fraction=1.0, on_failed_expectation="report"))
    ours = result.report["validation"]["great_expectations"]["results"]
    # the same expectations, in the suite's order, as written
    assert [r["expectation_config"]["type"] for r in ours] == [e["type"] for e in USER_SUITE["expectations"]]
    assert [r["expectation_config"]["kwargs"] for r in ours] == [e["kwargs"] for e in USER_SUITE["expectations"]]
    assert json.load(open(result.path("expectations.json")))["expectations"] == USER_SUITE["expectations"]

    alone = _gx_alone(frame.rename(columns={"id": "id"}).assign(row_id=frame["id"]), USER_SUITE)
    outcomes = []
    for mine, theirs in zip(ours, alone):
        kind = mine["expectation_config"]["type"]
        assert mine["success"] == theirs.success, kind
        for key in ("element_count", "unexpected_count", "missing_count"):
            if key in theirs.result:
                assert mine["result"][key] == theirs.result[key], (kind, key)
        for key in ("unexpected_percent", "missing_percent"):
            if theirs.result.get(key) is not None:
                assert mine["result"][key] == pytest.approx(theirs.result[key], rel=1e-12), (kind, key)
        if "observed_value" in theirs.result:
            expected = theirs.result["observed_value"]
            if isinstance(expected, float):
                assert mine["result"]["observed_value"] == pytest.approx(expected, rel=1e-12), kind
            else:
                assert mine["result"]["observed_value"] == expected, kind
        outcomes.append(mine["success"])
    assert False in outcomes and True in outcomes  # the comparison covers both verdicts


def _validation_json(report):
    return json.dumps(report["validation"], sort_keys=True)


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    """Rows that fail several row-level and dataset-level expectations, with invalid rows and duplicate ids, in CSV and Parquet."""
    root = tmp_path_factory.mktemp("dirty")
    frame = _table(4, 3000)
    frame.loc[[5, 700, 2999], "amount"] = [1e4, -50.0, 3e3]
    frame.loc[[10, 11], "id"] = "dup"
    frame.loc[1400:2100, "score"] += 4.0
    frame.iloc[:2000].to_parquet(root / "a.parquet", index=False)
    text = frame.iloc[2000:].to_csv(index=False).splitlines()
    text += ["x1,abc,1,0.5,cat", "x2,1,,0.5,dog", "x3,1,2,0.3,"]
    (root / "b.csv").write_text("\n".join(text) + "\n")
    return root


@pytest.fixture(scope="module")
def dirty_baseline(dirty, reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("dirty_out")
    return _screen([dirty], out, reference=(str(reference),), batch_rows=65536, policy=QUARANTINE,
                   allow_duplicate_ids=True), out


def test_validation_names_failing_rows_and_dataset_failures(dirty_baseline):
    result, out = dirty_baseline
    validation = result.report["validation"]
    assert "expect_column_values_to_be_unique(row_id)" in validation["failed_dataset_level"]
    unique = _result(result.report, "expect_column_values_to_be_unique(row_id)")
    assert unique["result"]["unexpected_count"] == 2 and unique["result"]["partial_unexpected_list"] == ["dup"]
    assert "expect_column_mean_to_be_between(score)" in validation["failed_dataset_level"]
    assert result.breached  # a failed dataset-level expectation breaches under the quarantine policy
    invalid = _rows(out, "invalid").set_index("row_id")
    # in the rows Great Expectations sees, a value that is not a number is null
    assert invalid.loc["x1"]["failed_expectations"] == "expect_column_values_to_not_be_null(amount)"
    assert invalid.loc["x2"]["failed_expectations"] == "expect_column_values_to_not_be_null(n_items)"
    assert invalid.loc["x3"]["failed_expectations"] == "expect_column_values_to_not_be_null(label)"
    quarantine = _rows(out, "quarantine").set_index("row_id")
    for row in ("r4-00005", "r4-00700", "r4-02999"):
        assert "expect_column_values_to_be_between(amount)" in quarantine.loc[row]["failed_expectations"]


@pytest.mark.parametrize("batch_rows, block_rows", [(97, 1), (1000, 2500), (700, 10**6)])
def test_validation_results_do_not_depend_on_batch_size(dirty, reference, dirty_baseline, tmp_path, monkeypatch, batch_rows, block_rows):
    """Chunks of any size, validated one by one (block_rows 1), a few at a time, or a whole unit at once."""
    monkeypatch.setattr(screen_module, "VALIDATION_BLOCK_ROWS", block_rows)
    result = _screen([dirty], tmp_path, reference=(str(reference),), batch_rows=batch_rows, policy=QUARANTINE,
                     allow_duplicate_ids=True)
    assert _validation_json(result.report) == _validation_json(dirty_baseline[0].report)
    assert result.report["counts"] == dirty_baseline[0].report["counts"]


@pytest.mark.slow
def test_validation_results_do_not_depend_on_runner(dirty, reference, dirty_baseline, tmp_path):
    result = _screen([dirty], tmp_path, reference=(str(reference),), batch_rows=500, runner=RunnerConfig(runner="dask", workers=2),
                     policy=QUARANTINE, allow_duplicate_ids=True)
    assert _validation_json(result.report) == _validation_json(dirty_baseline[0].report)
    assert result.report["counts"] == dirty_baseline[0].report["counts"]


def test_no_validation_leaves_the_stage_out(batch, tmp_path):
    path, _ = batch
    result = _screen([path], tmp_path, validate=False)
    assert result.report["validation"] is None
    assert not os.path.exists(result.path("expectations.json"))
    assert "failed_expectations" not in _rows(tmp_path, "cleaned")


@pytest.mark.parametrize("content, message", [
    ("{not json", "suite.json: not JSON"),
    ('{"expectations": [{"kwargs": {}}]}', "suite.json: expectations[0]: expected an object with 'type'"),
    ('{"expectations": [{"type": "expect_column_values_to_be_purple", "kwargs": {"column": "amount"}}]}',
     "unknown expectation type 'expect_column_values_to_be_purple'"),
    ('{"expectations": [{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "amt"}}]}',
     "expectations[0] (expect_column_values_to_not_be_null): no column 'amt'"),
    ('{"expectations": [{"type": "expect_column_median_to_be_between", "kwargs": {"column": "amount", "min_value": 1}}]}',
     "'expect_column_median_to_be_between' cannot be evaluated chunk by chunk"),
])
def test_bad_suite_is_one_line_naming_the_file(batch, tmp_path, capsys, content, message):
    path, _ = batch
    (tmp_path / "suite.json").write_text(content)
    code = main(["screen", str(path), "--out", str(tmp_path / "out"), "--id-column", "id", "--detectors", "spectral",
                 "--expectations", str(tmp_path / "suite.json"), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "out" / "report.json")


def test_exact_sums_do_not_depend_on_chunking():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(1e8, 1, 5000), rng.normal(0, 1e-6, 5000), [np.nan, 3.0]])
    whole = ColumnStatistics()
    whole.add(values)
    for pieces in (3, 17, 1000):
        merged = ColumnStatistics()
        for part in np.array_split(values, pieces)[::-1]:
            one = ColumnStatistics()
            one.add(part)
            merged.merge(one)
        assert (merged.sum, merged.mean, merged.stdev, merged.count, merged.nulls) == (whole.sum, whole.mean, whole.stdev, whole.count, whole.nulls)
    finite = values[np.isfinite(values)]
    assert whole.sum == math.fsum(finite)
    assert whole.stdev == pytest.approx(np.std(finite, ddof=1), rel=1e-9)


@pytest.mark.parametrize("fraction, text", [(0.0, "0%"), (1.0, "100%"), (3 / 9000, "0.033%"), (1e-7, "1.0e-05%"),
                                            (0.5, "50%"), (0.12345, "12.35%"), (0.999999, "99.99%")])
def test_percent_is_never_zero_for_a_nonzero_share(fraction, text):
    assert percent(fraction) == text


def test_written_suite_applied_back_gives_the_same_results(dirty, dirty_baseline, tmp_path):
    """expectations.json is a suite a user can keep and pass back: the same expectations, the same results."""
    result, out = dirty_baseline
    again = _screen([dirty], tmp_path, expectations=str(out / "expectations.json"), allow_duplicate_ids=True)
    assert again.report["validation"]["source"] == f"file {out / 'expectations.json'}"
    assert json.dumps(again.report["validation"]["great_expectations"]["results"], sort_keys=True) == \
        json.dumps(result.report["validation"]["great_expectations"]["results"], sort_keys=True)


@pytest.mark.parametrize("x", [0.123456789, -0.123456789, 5.0, 1e-300, 123456789.0, -7.77777777])
def test_rounded_bounds_never_exclude_the_value(x):
    assert _bound(x, up=False) <= x <= _bound(x, up=True)
    assert abs(_bound(x, up=True) - x) <= 1e-5 * abs(x)


def test_the_engines_frame_fingerprint_is_off_only_while_we_validate():
    """The pandas engine's batch fingerprint (a hash of every frame) is switched off during our validations, and
    the engine's own threshold is back afterwards, also when validations overlap in threads."""
    import threading

    from great_expectations.execution_engine import pandas_execution_engine as engine

    from poisonguard.pipelines.validation import _no_frame_fingerprint

    before = engine.HASH_THRESHOLD
    with _no_frame_fingerprint():
        assert engine.HASH_THRESHOLD == 0
        with _no_frame_fingerprint():
            assert engine.HASH_THRESHOLD == 0
        assert engine.HASH_THRESHOLD == 0
    assert engine.HASH_THRESHOLD == before
    barrier, seen = threading.Barrier(8), []

    def validate():
        with _no_frame_fingerprint():
            barrier.wait()
            seen.append(engine.HASH_THRESHOLD)

    threads = [threading.Thread(target=validate) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [0] * 8 and engine.HASH_THRESHOLD == before
