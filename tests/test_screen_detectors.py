"""Screening with several detectors: every detector as a pipeline stage, the ensemble's
columns and decisions, reference-row passes, and runner / batch-size independence."""

import os

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from poisonguard.detectors import DETECTORS, EnsembleDetector
from poisonguard.pipelines import RunnerConfig, ScreenConfig, read_output, run_screen
from poisonguard.pipelines.screen import DEFAULT_DETECTORS
from poisonguard.schemas import ConfigError

#: Every detector that runs without trusted rows (novelty needs them: see the reference tests below).
ALL = tuple(name for name, cls in DETECTORS.items() if not cls.requires_reference)


def _flip(y, rng, rate):
    flipped = y.copy()
    rows = np.flatnonzero(rng.random(len(y)) < rate)
    flipped[rows] = (y[rows] + rng.integers(1, 3, len(rows))) % 3
    mask = np.zeros(len(y), bool)
    mask[rows] = True
    return flipped, mask


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """6,000 rows, 3 well-separated classes; 5% random label flips and a 3% feature backdoor.

    Plus 1,500 clean reference rows from the same distribution.
    """
    root = tmp_path_factory.mktemp("multi")
    rng = np.random.default_rng(3)

    def draw(n):
        y = rng.integers(0, 3, n)
        centres = np.array([[0, 0, 0, 0, 0, 0], [4, 4, 0, 0, 0, 0], [0, 4, 4, 0, 0, 0]], float)
        return centres[y] + rng.normal(size=(n, 6)), y

    X, y = draw(6000)
    y, flipped = _flip(y, rng, 0.05)
    backdoor = (~flipped) & (y == 0) & (rng.random(len(y)) < 0.09)  # ~3% of all rows
    X[backdoor, 4:6] = [6.0, -6.0]
    y[backdoor] = 2
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(6)])
    frame["label"] = y
    frame["poisoned"] = flipped | backdoor
    frame.iloc[:3000].to_parquet(root / "a.parquet", index=False)
    frame.iloc[3000:].to_parquet(root / "b.parquet", index=False)
    Xr, yr = draw(1500)
    reference = pd.DataFrame(Xr, columns=[f"f{i}" for i in range(6)])
    reference["label"] = yr
    reference.to_parquet(root / "reference.parquet", index=False)
    return root, frame


def _run(poisoned, out, **kwargs):
    root, _ = poisoned
    inputs = (str(root / "a.parquet"), str(root / "b.parquet"))
    return run_screen(ScreenConfig(inputs=inputs, out=str(out), detectors=kwargs.pop("detectors", ALL), **kwargs))


def _rows(out):
    frames = [read_output(os.path.join(out, name)) for name in ("cleaned", "quarantine")]
    return pd.concat([f.to_pandas() for f in frames if f is not None]).sort_values("row_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def ensemble_run(poisoned, tmp_path_factory):
    out = tmp_path_factory.mktemp("ensemble")
    return _run(poisoned, out), _rows(out)


def test_every_detector_runs_as_a_stage_and_the_ensemble_combines_them(poisoned, ensemble_run):
    result, rows = ensemble_run
    report = result.report
    assert len(rows) == 6000 and report["counts"]["rows_in"] == 6000
    assert [d["name"] for d in report["detectors"]] == list(ALL)
    decision = report["decision"]
    assert decision["members"] == list(ALL) and decision["threshold_mode"] == "auto"
    for name in ALL:
        assert rows[f"score_{name}"].notna().all()
    # the combined suspicion is -log10 of a p-value: never negative; flagged rows reach their class's cut
    assert (rows["suspicion"] >= 0).all()
    for label, facts in decision["classes"].items():
        mine = rows[rows["label"].astype(str) == label]
        cut = np.inf if facts["cut"] is None else facts["cut"]
        assert ((mine["suspicion"] >= cut) == mine["flagged"]).all()
    # each flagged row names its class and the detectors whose own p-value reached the cut
    for reason in rows.loc[rows["flagged"], "reason"].head(50):
        assert reason.startswith("class ") and any(f" {name}: p=" in reason for name in ALL)
    # the backdoor is cut; the scattered flips rank high but, at a 1% false-discovery level, are not cut
    backdoor = rows["poisoned"] & (rows["f4"] == 6.0)
    flagged = rows["flagged"]
    assert (flagged & backdoor).sum() >= 0.9 * backdoor.sum()
    assert (flagged & rows["poisoned"]).sum() >= 0.95 * flagged.sum()
    flips = rows["poisoned"] & ~backdoor
    assert roc_auc_score(flips[~backdoor], rows.loc[~backdoor, "suspicion"]) >= 0.9


def test_results_do_not_depend_on_batch_size(poisoned, ensemble_run, tmp_path):
    _, rows = ensemble_run
    _run(poisoned, tmp_path / "small", batch_rows=700)
    small = _rows(tmp_path / "small")
    assert (small["row_id"] == rows["row_id"]).all()
    assert (small["flagged"] == rows["flagged"]).all()
    for name in ALL:
        np.testing.assert_allclose(small[f"score_{name}"], rows[f"score_{name}"], rtol=1e-7, atol=1e-7)


def test_dask_runner_gives_the_same_screen(poisoned, ensemble_run, tmp_path):
    pytest.importorskip("dask.distributed")
    _, rows = ensemble_run
    _run(poisoned, tmp_path / "dask", runner=RunnerConfig(runner="dask", workers=2))
    dask_rows = _rows(tmp_path / "dask")
    assert (dask_rows["row_id"] == rows["row_id"]).all()
    assert (dask_rows["flagged"] == rows["flagged"]).all()
    np.testing.assert_allclose(dask_rows["suspicion"], rows["suspicion"], rtol=1e-7, atol=1e-7)


def test_reference_rows_feed_reference_passes_and_calibrate_the_ensemble(poisoned, tmp_path):
    root, _ = poisoned
    result = _run(poisoned, tmp_path / "ref", reference=(str(root / "reference.parquet"),), target_fpr=0.01)
    decision = result.report["decision"]
    assert decision["threshold_mode"] == "reference" and decision["target_fpr"] == 0.01
    cuts = {facts["cut"] for facts in decision["classes"].values()}
    assert len(cuts) == 1 and None not in cuts  # one cut for every class, set on the trusted rows
    assert result.report["detection"]["recall"] >= 0.8


def test_one_detector_decides_through_the_same_layer(poisoned, tmp_path):
    result = _run(poisoned, tmp_path / "one", detectors=("knn",))
    assert result.report["decision"]["members"] == ["knn"]
    rows = _rows(tmp_path / "one")
    assert "score_knn" in rows and (rows["suspicion"] >= 0).all()
    # one member: the suspicion is a monotone function of the detector's score within each class
    for _, part in rows.groupby("label"):
        order = np.argsort(part["score_knn"].to_numpy(), kind="stable")
        assert (np.diff(part["suspicion"].to_numpy()[order]) >= -1e-12).all()


def test_pipeline_fit_equals_in_memory_ensemble(poisoned, ensemble_run):
    _, frame = poisoned
    _, rows = ensemble_run
    ids = [f"{name}:{k}" for name, part in (("a.parquet", frame.iloc[:3000]), ("b.parquet", frame.iloc[3000:]))
           for k in range(len(part))]
    X = frame[[f"f{i}" for i in range(6)]].to_numpy()
    det = EnsembleDetector(detectors=[DETECTORS[name]() for name in ALL]).fit(X, frame["label"].to_numpy(), row_ids=ids)
    expected = pd.Series(det.suspicion(X, frame["label"].to_numpy()), index=ids).sort_index()
    np.testing.assert_allclose(rows.set_index("row_id")["suspicion"].sort_index(), expected, rtol=1e-7, atol=1e-7)


@pytest.fixture(scope="module")
def reference_run(poisoned, tmp_path_factory):
    """The default detectors with trusted rows: spectral, label, pattern and novelty."""
    root, _ = poisoned
    out = tmp_path_factory.mktemp("with-reference")
    result = run_screen(ScreenConfig(inputs=(str(root / "a.parquet"), str(root / "b.parquet")), out=str(out),
                                     reference=(str(root / "reference.parquet"),)))
    return result, _rows(out)


def test_trusted_rows_add_novelty_to_the_default_detectors(poisoned, reference_run):
    result, rows = reference_run
    assert result.report["decision"]["members"] == ["spectral", "label", "pattern", "novelty"]
    assert rows["score_novelty"].notna().all()
    backdoor = rows["poisoned"] & (rows["f4"] == 6.0)
    assert (rows["flagged"] & backdoor).sum() >= 0.9 * backdoor.sum()
    assert (rows["flagged"] & rows["poisoned"]).sum() >= 0.95 * rows["flagged"].sum()


def test_novelty_in_the_pipeline_equals_in_memory_and_ignores_batch_size(poisoned, reference_run, tmp_path):
    root, frame = poisoned
    _, rows = reference_run
    small = tmp_path / "small"
    run_screen(ScreenConfig(inputs=(str(root / "a.parquet"), str(root / "b.parquet")), out=str(small),
                            reference=(str(root / "reference.parquet"),), batch_rows=700))
    small_rows = _rows(small)
    assert (small_rows["row_id"] == rows["row_id"]).all() and (small_rows["flagged"] == rows["flagged"]).all()
    np.testing.assert_allclose(small_rows["score_novelty"], rows["score_novelty"], rtol=1e-7, atol=1e-7)
    reference = pd.read_parquet(root / "reference.parquet")
    features = [f"f{i}" for i in range(6)]
    ids = [f"{name}:{k}" for name, part in (("a.parquet", frame.iloc[:3000]), ("b.parquet", frame.iloc[3000:]))
           for k in range(len(part))]
    det = EnsembleDetector(detectors=[DETECTORS[name]() for name in (*DEFAULT_DETECTORS, "novelty")])
    det.fit(frame[features].to_numpy(), frame["label"].to_numpy(), row_ids=ids,
            X_reference=reference[features].to_numpy(), y_reference=reference["label"].to_numpy())
    expected = pd.Series(det.suspicion(frame[features].to_numpy(), frame["label"].to_numpy()), index=ids).sort_index()
    np.testing.assert_allclose(rows.set_index("row_id")["suspicion"].sort_index(), expected, rtol=1e-7, atol=1e-7)


def test_novelty_without_trusted_rows_is_a_usage_error(poisoned, tmp_path):
    with pytest.raises(ConfigError, match="--detectors: novelty compares the batch with trusted rows; give them with --reference"):
        _run(poisoned, tmp_path / "none", detectors=("spectral", "novelty"))
    assert not (tmp_path / "none").exists()
