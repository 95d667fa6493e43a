"""The screening job end to end: row conservation, determinism across batch sizes and runners."""

import json
import os

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from conftest import heavy_tailed_table
from poisonguard.detectors import EnsembleDetector, SpectralSignatureDetector
from poisonguard.pipelines import (
    ReadChunks, RunnerConfig, ScreenBatches, ScreenConfig, discover_shards, read_output, resolve_contract, run_screen,
)
from poisonguard.pipelines import screen as screen_module
from poisonguard.pipelines.io import split_units


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """20k heavy-tailed rows with a 3% backdoor, split over three Parquet files and one CSV.

    The CSV also carries four bad rows, which must end in invalid/.
    """
    root = tmp_path_factory.mktemp("data")
    X, y, mask, columns = heavy_tailed_table(0, n=20000)
    frame = pd.DataFrame(X, columns=columns)
    frame.insert(0, "label", [f"class-{v}" for v in y])
    frame["poisoned"] = mask
    parts = np.array_split(np.arange(len(frame)), 4)
    for i, rows in enumerate(parts[:3]):
        frame.iloc[rows].to_parquet(root / f"part{i}.parquet", index=False)
    csv = frame.iloc[parts[3]].astype({"poisoned": str})
    text = csv.to_csv(index=False).splitlines()
    text += ["class-1,1,2,3,4,5,6,7,8,9,abc,False", ",1,2,3,4,5,6,7,8,9,10,False", "class-2,inf,2,3,4,5,6,7,8,9,10,False",
             "class-0,1,2,3"]
    (root / "part3.csv").write_text("\n".join(text) + "\n")
    return root, frame, mask, len(frame) + 4


def _screen(dataset, out, **kwargs):
    """Screen with ``spectral`` alone: this module tests the job's mechanics, not the default's detection."""
    root, *_ = dataset
    config = ScreenConfig(inputs=(str(root),), out=str(out), **{"detectors": ("spectral",), **kwargs})
    return run_screen(config)


def _outputs(out):
    tables = {name: read_output(os.path.join(out, name)) for name in ("cleaned", "quarantine", "invalid")}
    return {k: (v.to_pandas() if v is not None else pd.DataFrame({"row_id": []})) for k, v in tables.items()}


def _input_ids(dataset):
    root, frame, _, _ = dataset
    parts = np.array_split(np.arange(len(frame)), 4)
    ids = [f"part{i}.parquet:{k}" for i in range(3) for k in range(len(parts[i]))]
    ids += [f"part3.csv:{k}" for k in range(len(parts[3]) + 4)]
    return ids


@pytest.fixture(scope="module")
def baseline(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline")
    result = _screen(dataset, out)
    return result, _outputs(out)


def test_every_row_ends_in_exactly_one_output(dataset, baseline):
    result, outs = baseline
    ids = pd.concat([outs[k]["row_id"] for k in outs]).tolist()
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(_input_ids(dataset))
    counts = result.report["counts"]
    assert counts["rows_in"] == dataset[3] == counts["cleaned"] + counts["quarantine"] + counts["invalid"]
    assert (len(outs["cleaned"]), len(outs["quarantine"]), len(outs["invalid"])) == (counts["cleaned"], counts["quarantine"], counts["invalid"])
    assert counts["invalid"] == 4
    reasons = " | ".join(outs["invalid"]["reason"])
    for expected in ("column 'x4': 'abc' is not a number", "column 'label': missing label", "column 'income': non-finite value",
                     "malformed CSV line"):
        assert expected in reasons


def test_report_matches_schema_and_carries_detection_metrics(baseline):
    """The synthetic backdoor ranks on top; the cut keeps the clean-row bound rather than the backdoor.

    The planted rows score about 5.7 robust standard deviations, inside the range of the
    class's clean heavy tail (up to 8.4), so a per-class rule that bounds the clean rows
    it flags (Benjamini-Hochberg at 1%) cannot cut them here; the old per-detector rule
    did, and on real tables it flagged up to 9% of clean rows. Detection floors are
    tested on planted poison in real tables (``test_decision.py``).
    """
    result, outs = baseline
    report = json.load(open(result.path("report.json")))
    assert report == result.report
    det = report["detection"]
    assert det["roc_auc"] > 0.99
    assert det["false_positive_rate"] <= 0.005
    assert det["flagged"] == report["counts"]["quarantine"]
    assert set(report["classes"]) == {"class-0", "class-1", "class-2"}
    assert sum(c["flagged"] for c in report["classes"].values()) == report["counts"]["quarantine"]
    assert set(outs["cleaned"]["flagged"]) == {False}
    if len(outs["quarantine"]):
        assert set(outs["quarantine"]["flagged"]) == {True}
        assert outs["quarantine"]["reason"].str.match(r"class 'class-\d': spectral: p=").all()


def test_job_equals_in_memory_estimator(dataset, baseline):
    _, frame, _, _ = dataset
    _, outs = baseline
    valid = pd.concat([outs["cleaned"], outs["quarantine"]]).sort_values("row_id")
    features = ["income", "n_items", "duration", "age", "score"] + [f"x{i}" for i in range(5)]
    X, y = valid[features].to_numpy(), valid["label"].to_numpy(dtype=object)
    det = EnsembleDetector(detectors=[SpectralSignatureDetector()]).fit(X, y, row_ids=valid["row_id"].to_numpy(dtype=object))
    np.testing.assert_allclose(det.model_.models[0].suspicion(X, y), valid["score_spectral"].to_numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(det.suspicion(X, y), valid["suspicion"].to_numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(det.predict(X, y) < 0, valid["flagged"].to_numpy())


def _assert_same_outputs(a, b):
    for name in ("cleaned", "quarantine", "invalid"):
        x = a[name].sort_values("row_id").reset_index(drop=True)
        y = b[name].sort_values("row_id").reset_index(drop=True)
        assert x["row_id"].tolist() == y["row_id"].tolist(), name
        if "suspicion" in x:
            np.testing.assert_allclose(x["suspicion"].to_numpy(), y["suspicion"].to_numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("batch_rows", [97, 1000])
def test_batch_size_does_not_change_results(dataset, baseline, tmp_path, batch_rows):
    _screen(dataset, tmp_path, batch_rows=batch_rows)
    _assert_same_outputs(baseline[1], _outputs(tmp_path))


@pytest.mark.slow
def test_multiprocessing_direct_runner_gives_same_results(dataset, baseline, tmp_path):
    _screen(dataset, tmp_path, runner=RunnerConfig(workers=2), batch_rows=4096)
    _assert_same_outputs(baseline[1], _outputs(tmp_path))


@pytest.mark.slow
def test_dask_runner_gives_same_results(dataset, baseline, tmp_path):
    result = _screen(dataset, tmp_path, runner=RunnerConfig(runner="dask", workers=2), batch_rows=3000)
    _assert_same_outputs(baseline[1], _outputs(tmp_path))
    assert result.report["counts"] == baseline[0].report["counts"]


def test_screen_batches_in_a_users_pipeline(dataset, baseline, tmp_path):
    """The composite PTransform (side-input variant) gives the job's flags on a portable runner."""
    root, *_ = dataset
    shards = discover_shards([str(root)])
    contract = resolve_contract(shards)
    expected = baseline[1]["quarantine"]["row_id"].tolist()
    with beam.Pipeline(runner=FnApiRunner()) as p:
        chunks = p | ReadChunks(shards, contract, 5000)
        screened = chunks | ScreenBatches(EnsembleDetector(detectors=[SpectralSignatureDetector()]), contract)
        flagged = screened | beam.FlatMap(lambda c: c.quarantine.column("row_id").to_pylist())
        assert_that(flagged, equal_to(expected))


def test_reference_calibration(dataset, tmp_path):
    ref = tmp_path / "reference.parquet"
    X, y, _, columns = heavy_tailed_table(9, n=6000, poison=False)
    frame = pd.DataFrame(X, columns=columns)
    frame.insert(0, "label", [f"class-{v}" for v in y])
    frame.to_parquet(ref, index=False)
    result = _screen(dataset, tmp_path / "out", reference=(str(ref),), target_fpr=0.01)
    report = result.report
    assert report["decision"]["threshold_mode"] == "reference"
    assert report["reference"]["valid"] == 6000
    assert report["detection"]["false_positive_rate"] <= 0.02
    # a cut at 1% false positives on trusted rows is more sensitive than the 1% false-discovery default
    auto = _screen(dataset, tmp_path / "auto").report["detection"]
    assert report["detection"]["recall"] > auto["recall"]


def test_failed_run_leaves_no_outputs(dataset, tmp_path, monkeypatch):
    def boom(chunk, staging):
        raise RuntimeError("disk full")

    monkeypatch.setattr(screen_module, "write_screened", boom)
    with pytest.raises(Exception, match="disk full"):
        _screen(dataset, tmp_path)
    assert os.listdir(tmp_path) == []


def test_lost_rows_are_detected_before_publishing(dataset, tmp_path, monkeypatch):
    """If a runner dropped a chunk, the cross-check fails the job and publishes nothing."""
    original = screen_module.write_screened

    def drop_first_part(chunk, staging):
        summary = original(chunk, staging)
        if (chunk.shard_index, chunk.number) == (0, 0):
            os.remove(os.path.join(staging, "cleaned", "part-00000-000000.parquet"))
        return summary

    monkeypatch.setattr(screen_module, "write_screened", drop_first_part)
    with pytest.raises(Exception, match="row conservation violated.*cleaned/ holds"):
        _screen(dataset, tmp_path)
    assert os.listdir(tmp_path) == []


def test_parquet_split_into_row_group_units_gives_same_results(tmp_path, monkeypatch):
    """A large Parquet file is read as several work units; ids and results do not change."""
    X, y, mask, columns = heavy_tailed_table(2, n=12000)
    frame = pd.DataFrame(X, columns=columns)
    frame.insert(0, "label", y)
    frame["poisoned"] = mask
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "one.parquet"
    frame.to_parquet(path, index=False, row_group_size=1000)
    whole = run_screen(ScreenConfig(inputs=(str(path),), out=str(tmp_path / "whole"), batch_rows=4096))
    monkeypatch.setattr(screen_module, "split_units", lambda shards: split_units(shards, unit_rows=2500))
    assert len(split_units(discover_shards([str(path)]), unit_rows=2500)) == 4
    units = run_screen(ScreenConfig(inputs=(str(path), str(tmp_path / "data")), out=str(tmp_path / "units"), batch_rows=4096))
    _assert_same_outputs(_outputs(tmp_path / "whole"), _outputs(tmp_path / "units"))
    assert whole.report["counts"] == units.report["counts"]
    assert units.report["inputs"]["files"] == [str(path)]  # named twice, read once
    ids = _outputs(tmp_path / "units")
    assert sorted(pd.concat([ids[k]["row_id"] for k in ids])) == sorted(f"one.parquet:{i}" for i in range(12000))


@pytest.mark.slow
def test_existing_dask_cluster_by_address(dataset, baseline, tmp_path):
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        _screen(dataset, tmp_path, runner=RunnerConfig(runner="dask", dask_address=cluster.scheduler_address, workers=2))
    _assert_same_outputs(baseline[1], _outputs(tmp_path))
