"""Saved models: ``poisonguard fit`` on trusted rows, then ``screen --model`` in one read, with no pickle anywhere."""

import json
import os
import shutil
import zipfile

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import one_error_line, plant_field_backdoor, real_frame, recall_precision, run_cli

from poisonguard.detectors import ConfidentLabelDetector, EnsembleDetector
from poisonguard.detectors.persist import BoostedTrees, decode, encode
from poisonguard.pipelines.model import DEFAULT_FIT_DETECTORS, FORMAT_VERSION

# Smaller label samples than the default keep the fit to seconds; the field backdoor is found by influence.
FAST = {"label": {"sample_size": 8000, "boosting_rounds": 40}}


# -- boosted trees without pickle ---------------------------------------------------------------------
@pytest.mark.parametrize("n_classes", [2, 4, 10])
def test_boosted_trees_predict_exactly_what_the_live_model_predicts(n_classes):
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(n_classes)
    X = rng.normal(size=(3000, 6))
    X[rng.random(X.shape) < 0.05] = np.nan  # missing values take the side the trees learnt
    y = (np.nan_to_num(X[:, 0]) + rng.normal(size=3000) > 0).astype(int)
    if n_classes > 2:
        y = (y + 2 * (np.nan_to_num(X[:, 1]) > 0) + 4 * rng.integers(0, n_classes // 4 + 1, len(y))) % n_classes
    live = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(X, y)
    frozen = BoostedTrees.from_sklearn(live)
    rows = rng.normal(size=(2000, 6)) * 3
    rows[rng.random(rows.shape) < 0.05] = np.nan
    rows[:3, 0], rows[3:6, 1] = np.inf, -np.inf
    assert np.array_equal(frozen.predict_proba(rows), live.predict_proba(rows))  # bit for bit
    assert np.array_equal(frozen.predict_proba(rows.astype(np.float32)), live.predict_proba(rows.astype(np.float32)))
    assert list(frozen.classes_) == list(live.classes_)


def test_a_fitted_label_model_round_trips_through_json_and_arrays(cancer, tmp_path):
    X, y = cancer
    X, y = np.vstack([X, X[:5]]), np.r_[y, 1 - y[:5]]  # five exact copies under the other label
    det = ConfidentLabelDetector(sample_size=400, boosting_rounds=20).fit(X, y)
    assert len(det.model_.duplicate_hashes) == 10
    arrays = {}
    spec = json.loads(json.dumps(encode(det.model_, arrays)))
    np.savez(tmp_path / "a.npz", **arrays)
    with np.load(tmp_path / "a.npz", allow_pickle=False) as npz:
        model = decode(spec, {k: npz[k] for k in npz.files})
    assert all(isinstance(m, BoostedTrees) for m in model.models if m is not None)
    live, saved = det.model_.scores_and_pvalues(X, y), model.scores_and_pvalues(X, y)
    assert np.array_equal(live[0], saved[0]) and np.array_equal(live[1], saved[1])


# -- fit, then screen --model on a real table -----------------------------------------------------------
@pytest.fixture(scope="module")
def diamonds_split(tmp_path_factory):
    """diamonds: 70% trusted rows (a Parquet file), and the other 30% with the field test's 3% backdoor planted."""
    df, feats = real_frame("diamonds")
    held = np.random.default_rng(0).random(len(df)) < 0.3
    root = tmp_path_factory.mktemp("diamonds")
    trusted = str(root / "trusted.parquet")
    df[~held][[*feats, "label"]].to_parquet(trusted, index=False)
    batch = df[held]
    X, y, truth = plant_field_backdoor(batch[feats].to_numpy(float), batch["label"].astype(str).to_numpy(object), 0.03, seed=3)
    frame = pd.DataFrame(X, columns=feats)
    frame["label"] = y
    path = str(root / "batch.parquet")
    frame.to_parquet(path, index=False)
    return root, trusted, path, truth


@pytest.fixture(scope="module")
def diamonds_model(diamonds_split):
    from poisonguard.pipelines.model import FitConfig, run_fit

    root, trusted, _, _ = diamonds_split
    out = str(root / "model")
    run_fit(FitConfig(inputs=(trusted,), out=out, detector_params=FAST))
    return out


def count_reads(monkeypatch) -> list:
    """Record every shard read from here on (at ``Contract.read``, under every pass) and return the growing list."""
    from poisonguard.pipelines import io, rows

    reads, original = [], io.read_shard

    def counting(shard, batch_rows):
        reads.append(shard)
        return original(shard, batch_rows)

    monkeypatch.setattr(rows, "read_shard", counting)
    return reads


def flagged_rows(out: str, n: int) -> np.ndarray:
    """Which batch rows (by their derived id's offset) went to quarantine/."""
    ids = pq.read_table(os.path.join(out, "quarantine")).column("row_id").to_pylist() if os.listdir(os.path.join(out, "quarantine")) else []
    flagged = np.zeros(n, bool)
    flagged[[int(i.rsplit(":", 1)[1]) for i in ids]] = True
    return flagged


@pytest.mark.slow
def test_a_model_fitted_on_clean_rows_screens_poisoned_batches_as_well_as_or_better_than_a_refit(diamonds_split, diamonds_model,
                                                                                                  capsys):
    """The refit learns the batch's poison as normal; the frozen model fitted on the clean rows does not. The refit
    runs the model's detectors (a screen's default set adds ``pattern``, which mines each batch and cannot be saved)."""
    root, _, batch, truth = diamonds_split
    assert run_cli(["screen", batch, "--model", diamonds_model, "--out", root / "frozen", "--max-flagged-fraction", "1", "-q"]) == 0
    assert run_cli(["screen", batch, "--out", root / "refit", "--detectors", ",".join(DEFAULT_FIT_DETECTORS),
                    "--max-flagged-fraction", "1", "-q"]) == 0
    frozen = recall_precision(truth, flagged_rows(str(root / "frozen"), len(truth)))
    refit = recall_precision(truth, flagged_rows(str(root / "refit"), len(truth)))
    assert frozen[0] >= refit[0] and frozen[1] >= refit[1], (frozen, refit)
    assert frozen[0] >= 0.85 and frozen[1] >= 0.9, frozen
    clean_loss = (flagged_rows(str(root / "frozen"), len(truth)) & ~truth).mean()
    assert clean_loss <= 0.005
    report = json.load(open(root / "frozen" / "report.json"))
    assert report["decision"]["threshold_mode"] == "reference" and report["reference"]["paths"] == [diamonds_model]


def test_the_batch_is_read_once_with_a_model_and_once_with_a_refit(diamonds_split, diamonds_model, monkeypatch):
    """screen --model reads and validates the batch in its one pass; a refit (fit passes, calibration, the screen
    pass) reads it once too, into a columnar copy that every further pass reads."""
    root, _, batch, truth = diamonds_split
    shards = count_reads(monkeypatch)
    assert run_cli(["screen", batch, "--model", diamonds_model, "--out", root / "once", "--max-flagged-fraction", "1", "-q"]) == 0
    assert [r.index for r in shards if r.path == batch] == [0]  # validation included: one read of the one work unit
    report = json.load(open(root / "once" / "report.json"))
    assert report["validation"]["evaluated"] > 0 and report["counts"]["rows_in"] == len(truth)
    shards.clear()
    assert run_cli(["screen", batch, "--out", root / "refit-reads", "--detectors", "spectral", "-q",
                    "--max-flagged-fraction", "1"]) == 0
    assert [r.index for r in shards if r.path == batch] == [0]
    assert json.load(open(root / "refit-reads" / "report.json"))["counts"]["rows_in"] == len(truth)
    assert not [n for n in os.listdir(os.path.realpath(root / "refit-reads" / ".current")) if n.startswith("_")]  # copy removed


def test_screen_model_flags_the_same_rows_whatever_the_batch_size(diamonds_split, diamonds_model):
    root, _, batch, truth = diamonds_split
    for name, rows in (("b-default", None), ("b-small", "1500")):
        extra = [] if rows is None else ["--batch-rows", rows]
        assert run_cli(["screen", batch, "--model", diamonds_model, "--out", root / name, "--max-flagged-fraction", "1", "-q",
                        "--no-validation", *extra]) == 0
    a, b = flagged_rows(str(root / "b-default"), len(truth)), flagged_rows(str(root / "b-small"), len(truth))
    assert a.sum() > 0 and np.array_equal(a, b)
    sa = pq.read_table(root / "b-default" / "cleaned").sort_by("row_id").column("suspicion").to_numpy()
    sb = pq.read_table(root / "b-small" / "cleaned").sort_by("row_id").column("suspicion").to_numpy()
    assert np.array_equal(sa, sb)


# -- what is in the model directory -----------------------------------------------------------------------
PICKLE_MAGIC = tuple(bytes([0x80, proto]) for proto in range(2, 6))


def _files(root):
    for folder, _, names in os.walk(root):
        for name in names:
            yield os.path.join(folder, name)


def test_the_model_directory_holds_no_pickle(diamonds_model):
    files = list(_files(diamonds_model))
    assert files and not [f for f in files if f.endswith((".pkl", ".pickle"))]
    manifest = json.load(open(os.path.join(diamonds_model, "model.json")))
    assert manifest["format_version"] == FORMAT_VERSION and manifest["versions"]["scikit_learn"]
    assert manifest["keeps_reference_rows"] == []
    for path in files:
        data = open(path, "rb").read()
        assert not data.startswith(PICKLE_MAGIC), path
        if path.endswith(".npz"):
            with zipfile.ZipFile(path) as zf:
                for member in zf.namelist():
                    body = zf.read(member)
                    assert body.startswith(b"\x93NUMPY") and b"'O'" not in body[:200] and b"pickle" not in body, member
            with np.load(path, allow_pickle=False) as npz:
                assert all(npz[name].dtype != object for name in npz.files)
        else:
            json.loads(data)  # the manifest, the suite and poisonguard's own marker: all JSON


def _copy(model, tmp_path, name):
    target = tmp_path / name
    shutil.copytree(os.path.realpath(os.path.join(model, "model.json")).rsplit("/", 1)[0], target)
    return target


def _screen_error(capsys, model, batch, out):
    capsys.readouterr()
    assert run_cli(["screen", batch, "--model", model, "--out", out, "-q"]) == 2
    return capsys.readouterr().err


def test_a_tampered_or_wrong_version_model_is_refused_in_one_line(diamonds_split, diamonds_model, tmp_path, capsys):
    _, _, batch, _ = diamonds_split
    # a shape edited in the manifest
    shape = _copy(diamonds_model, tmp_path, "shape")
    manifest = json.load(open(shape / "model.json"))
    thresholds = manifest["model"]["fields"]["thresholds"]
    thresholds["shape"] = [thresholds["shape"][0] + 1]
    json.dump(manifest, open(shape / "model.json", "w"))
    one_error_line(_screen_error(capsys, shape, batch, tmp_path / "o1"), "--model", "thresholds", "the manifest says")
    # an array replaced by one of another shape
    arrays = _copy(diamonds_model, tmp_path, "arrays")
    with np.load(arrays / "arrays.npz", allow_pickle=False) as npz:
        content = {k: npz[k] for k in npz.files}
    name = manifest["model"]["fields"]["thresholds"]["array"]
    content[name] = np.zeros(len(content[name]) + 2)
    np.savez(arrays / "arrays.npz", **content)
    one_error_line(_screen_error(capsys, arrays, batch, tmp_path / "o2"), "--model", name)
    # another format version
    version = _copy(diamonds_model, tmp_path, "version")
    manifest = json.load(open(version / "model.json"))
    manifest["format_version"] = 99
    json.dump(manifest, open(version / "model.json", "w"))
    one_error_line(_screen_error(capsys, version, batch, tmp_path / "o3"), "format version 99", f"reads version {FORMAT_VERSION}")
    # member weights that do not split the false-discovery budget
    weights = _copy(diamonds_model, tmp_path, "weights")
    with np.load(weights / "arrays.npz", allow_pickle=False) as npz:
        tripled = {k: npz[k] for k in npz.files}
    wname = manifest["model"]["fields"]["weights"]["array"]
    tripled[wname] = 3 * tripled[wname]
    np.savez(weights / "arrays.npz", **tripled)
    one_error_line(_screen_error(capsys, weights, batch, tmp_path / "o7"), "--model", "weights", "summing to 1 per class")
    # a missing file
    missing = _copy(diamonds_model, tmp_path, "missing")
    os.remove(missing / "arrays.npz")
    one_error_line(_screen_error(capsys, missing, batch, tmp_path / "o4"), "arrays.npz is missing")
    # an object array (pickle) in the arrays file
    objects = _copy(diamonds_model, tmp_path, "objects")
    content[name] = np.array([{"a": 1}, None], dtype=object)
    np.savez(objects / "arrays.npz", **content)
    one_error_line(_screen_error(capsys, objects, batch, tmp_path / "o5"), "without pickle")
    # not a model at all
    one_error_line(_screen_error(capsys, tmp_path, batch, tmp_path / "o6"), "no model.json")
    assert not any(os.path.exists(tmp_path / f"o{i}" / "report.json") for i in range(1, 8))


def test_fit_refuses_a_detector_it_cannot_save_and_a_directory_it_did_not_write(diamonds_split, tmp_path, capsys):
    _, trusted, _, _ = diamonds_split
    for batch_only in ("novelty", "pattern"):
        assert run_cli(["fit", trusted, "--out", tmp_path / "m", "--detectors", f"spectral,{batch_only}"]) == 2
        one_error_line(capsys.readouterr().err, batch_only, "cannot be saved")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    assert run_cli(["fit", trusted, "--out", tmp_path / "theirs", "--detectors", "spectral"]) == 2
    one_error_line(capsys.readouterr().err, "theirs")
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "mine"


def test_a_knn_model_says_it_keeps_trusted_rows(tmp_path, capsys):
    df, feats = real_frame("diamonds")
    path = str(tmp_path / "small.parquet")
    df.iloc[:3000][[*feats, "label"]].to_parquet(path, index=False)
    assert run_cli(["fit", path, "--out", tmp_path / "knn", "--detectors", "knn", "-q"]) == 0
    assert "keeps trusted rows (knn)" in capsys.readouterr().out
    manifest = json.load(open(tmp_path / "knn" / "model.json"))
    assert manifest["keeps_reference_rows"] == ["knn"] and "trusted rows" in manifest["note"]
    assert run_cli(["screen", path, "--model", tmp_path / "knn", "--out", tmp_path / "s", "-q", "--max-flagged-fraction", "1"]) == 0


def test_options_the_model_fixes_cannot_be_given_again(diamonds_split, diamonds_model, tmp_path, capsys):
    _, trusted, batch, _ = diamonds_split
    assert run_cli(["screen", batch, "--model", diamonds_model, "--detectors", "spectral", "--out", tmp_path / "o"]) == 2
    one_error_line(capsys.readouterr().err, "--detectors", "--model")
    assert run_cli(["screen", batch, "--model", diamonds_model, "--reference", trusted, "--out", tmp_path / "o"]) == 2
    one_error_line(capsys.readouterr().err, "--reference", "--model")


def test_the_in_memory_ensemble_and_the_saved_model_agree(diamonds_split, diamonds_model):
    """What screen --model decides is what the estimator decides with the loaded model."""
    from poisonguard.pipelines.model import load_model

    _, _, batch, truth = diamonds_split
    saved = load_model(diamonds_model)
    frame = pd.read_parquet(batch)
    X, y = frame[list(saved.feature_columns)].to_numpy(float), frame["label"].to_numpy(object)
    det: EnsembleDetector = saved.make_detector()
    screened = det.screen(saved.model, X, y)
    recall, precision = recall_precision(truth, screened.flagged)
    assert recall >= 0.85 and precision >= 0.9


@pytest.mark.slow
def test_repeated_ids_are_found_without_a_second_read_and_the_id_type_changes_nothing(diamonds_split, diamonds_model, monkeypatch, capsys):
    root, _, batch, truth = diamonds_split
    frame = pd.read_parquet(batch).iloc[:2000]
    frame.insert(0, "id", np.arange(len(frame)))
    frame.loc[7, "id"] = 3  # id 3 twice
    path = str(root / "with-ids.parquet")
    frame.to_parquet(path, index=False)
    shards = count_reads(monkeypatch)
    capsys.readouterr()
    assert run_cli(["screen", path, "--model", diamonds_model, "--id-column", "id", "--out", root / "ids", "-q"]) == 2
    one_error_line(capsys.readouterr().err, "column 'id'", "2 rows share 1 id")
    assert [r.path for r in shards] == [path] and not os.path.exists(root / "ids" / "report.json")
    shards.clear()
    assert run_cli(["screen", path, "--model", diamonds_model, "--id-column", "id", "--allow-duplicate-ids", "--out", root / "ids",
                    "-q", "--max-flagged-fraction", "1"]) == 0
    assert [r.path for r in shards] == [path]
    report = json.load(open(root / "ids" / "report.json"))
    assert report["inputs"]["duplicate_ids"]["rows"] == 2 and report["counts"]["rows_in"] == 2000
    # the same rows with text ids: the same scores, row by row
    frame["id"] = "row-" + frame["id"].astype(str)
    text = str(root / "with-text-ids.parquet")
    frame.to_parquet(text, index=False)
    assert run_cli(["screen", text, "--model", diamonds_model, "--id-column", "id", "--allow-duplicate-ids", "--out", root / "ids-text",
                    "-q", "--max-flagged-fraction", "1"]) == 0

    def scores(out):
        rows = pd.concat([pd.read_parquet(os.path.join(out, o)) for o in ("cleaned", "quarantine") if os.listdir(os.path.join(out, o))])
        return rows.sort_values(["carat", "depth", "table", "price", "x", "y", "z", "suspicion"])["suspicion"].to_numpy()

    assert np.array_equal(scores(root / "ids"), scores(root / "ids-text"))


@pytest.mark.slow
def test_screen_model_flags_the_same_rows_with_two_worker_processes(diamonds_split, diamonds_model):
    root, _, batch, truth = diamonds_split
    for name, extra in (("w1", []), ("w2", ["--workers", "2", "--batch-rows", "4000"])):
        assert run_cli(["screen", batch, "--model", diamonds_model, "--out", root / name, "--max-flagged-fraction", "1", "-q",
                        "--no-validation", *extra]) == 0
    a, b = flagged_rows(str(root / "w1"), len(truth)), flagged_rows(str(root / "w2"), len(truth))
    assert a.sum() > 0 and np.array_equal(a, b)


def test_fit_reads_the_trusted_rows_once(tmp_path, monkeypatch):
    """fit's passes (the detectors, the nulls, the calibration, the suite's statistics) read the columnar copy."""
    df, feats = real_frame("diamonds")
    path = str(tmp_path / "trusted.csv")
    df.iloc[:3000][[*feats, "label"]].to_csv(path, index=False)
    shards = count_reads(monkeypatch)
    assert run_cli(["fit", path, "--out", tmp_path / "m", "--detectors", "spectral,influence", "-q"]) == 0
    assert [r.path for r in shards] == [path]
    manifest = json.load(open(tmp_path / "m" / "model.json"))
    assert manifest["trusted_inputs"]["valid_rows"] == 3000 and manifest["timings"]["read_s"] >= 0


# -- a label model that groups classes (detectors/label.py, point 6) --------------------------------------
@pytest.fixture(scope="module")
def grouped_model(tmp_path_factory):
    """Classes A and B (2,990 rows) and three classes of 5 rows, which the label model puts in one group."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 4))
    y = np.where(X[:, 0] > 0, "A", "B").astype(object)
    y[:5], y[5:10], y[10:15] = "C", "D", "E"
    frame = pd.DataFrame(X, columns=list("abcd"))
    frame["label"] = y
    root = tmp_path_factory.mktemp("grouped")
    trusted, batch = str(root / "trusted.csv"), str(root / "batch.csv")
    frame.to_csv(trusted, index=False)
    frame.iloc[:1000].to_csv(batch, index=False)
    out = str(root / "model")
    assert run_cli(["fit", trusted, "--out", out, "-q"]) == 0
    return root, batch, out


def test_a_label_model_with_grouped_classes_loads_and_screens(grouped_model, tmp_path):
    from poisonguard.pipelines.model import load_model

    _, batch, model = grouped_model
    label = dict(zip(load_model(model).model.names, load_model(model).model.models))["label"]
    assert len(label.classes) == 5 and label.n_groups == 3  # A, B, and one group for C, D, E
    assert label.calibration.shape[0] == label.joint.shape[0] == len(label.calibrated_on) == 3
    assert run_cli(["screen", batch, "--model", model, "--out", tmp_path / "s", "-q", "--max-flagged-fraction", "1"]) == 0
    report = json.load(open(tmp_path / "s" / "report.json"))
    counts = report["counts"]
    assert counts["rows_in"] == 1000 and counts["cleaned"] + counts["quarantine"] + counts["invalid"] == 1000


def _tamper_array(model, tmp_path, name, field_path, change):
    """A copy of ``model`` whose array at ``field_path`` (keys into model.json's spec) is ``change(array)``, declared
    as such in model.json, so that only the model's own consistency can tell."""
    target = _copy(model, tmp_path, name)
    manifest = json.load(open(target / "model.json"))
    spec = manifest["model"]
    for key in field_path:
        spec = spec["fields"][key] if isinstance(key, str) else spec["tuple"][key]
    with np.load(target / "arrays.npz", allow_pickle=False) as npz:
        content = {k: npz[k] for k in npz.files}
    content[spec["array"]] = new = change(content[spec["array"]])
    spec["dtype"], spec["shape"] = new.dtype.name, list(new.shape)
    np.savez(target / "arrays.npz", **content)
    json.dump(manifest, open(target / "model.json", "w"))
    return target


def test_a_label_model_whose_groups_do_not_agree_is_refused_in_one_line(grouped_model, tmp_path, capsys):
    from poisonguard.pipelines.model import load_model

    _, batch, model = grouped_model
    names = load_model(model).model.names
    label = ("models", list(names).index("label"))
    fold = next(i for i, m in enumerate(load_model(model).model.models[label[1]].models) if m is not None)
    cases = [
        ("group_of", lambda a: np.where(a == a.max(), 3, a), ["label.group_of", "0..2"]),  # a fourth group
        ("group_of", lambda a: a[:-1], ["label.group_of", "(5,)"]),
        ("joint", lambda a: np.zeros((5, 5), dtype=a.dtype), ["label.joint", "(3, 3)"]),  # per class, not per group
        ("calibration", lambda a: a[:, :-1], ["label.calibration"]),
        ("fallback", lambda a: np.ones(5) / 5, ["label.sample_rows", "(5,) for 5 groups"]),  # five groups, facts for three
        (("models", fold, "classes"), lambda a: a + 1, ["fold model predicts groups", "0..2"]),
        ("duplicate_groups", lambda a: np.r_[a, 3], ["label: duplicate_hashes", "one entry each"]),
    ]
    for i, (path, change, fragments) in enumerate(cases):
        path = path if isinstance(path, tuple) else (path,)
        tampered = _tamper_array(model, tmp_path, f"g{i}", (*label, *path), change)
        one_error_line(_screen_error(capsys, tampered, batch, tmp_path / f"o{i}"), "--model", *fragments)
        assert not os.path.exists(tmp_path / f"o{i}" / "report.json")


# -- tampered trees ----------------------------------------------------------------------------------------
def _tree(left, right, is_leaf):
    n = len(left)
    return dict(classes=np.array([0, 1]), baseline=np.array([0.0]), tree_start=np.array([0, n]), feature=np.zeros(n, dtype=np.int64),
                threshold=np.zeros(n), missing_left=np.ones(n, dtype=np.uint8), left=np.array(left), right=np.array(right),
                is_leaf=np.array(is_leaf, dtype=np.uint8), value=np.zeros(n))


@pytest.mark.parametrize("left,right,is_leaf", [
    ([1, 2, 1], [1, 2, 1], [0, 0, 0]),  # /tmp/review/t1/cyc.py: node 2 leads back to node 1, which leads to node 2
    ([1, 1, 0], [2, 2, 0], [0, 0, 1]),  # node 1 is its own left child
    ([1, 2, 0, 1, 0], [4, 3, 0, 2, 0], [0, 0, 1, 0, 1]),  # node 3 leads back to its parent, node 1
])
def test_trees_whose_children_lead_back_are_refused_before_any_prediction(left, right, is_leaf):
    from poisonguard.detectors.persist import ModelFormatError

    with pytest.raises(ModelFormatError, match=r"^boosted trees: a child index"):
        BoostedTrees(**_tree(left, right, is_leaf))  # refused when built, so the kernel never walks the cycle


def test_a_saved_tree_with_a_cycle_is_refused_when_the_model_loads(grouped_model, tmp_path, capsys):
    from poisonguard.detectors.persist import ModelFormatError
    from poisonguard.pipelines.model import load_model

    _, _, model = grouped_model
    ensemble = load_model(model).model
    member = list(ensemble.names).index("label")
    fold, trees = next((i, m) for i, m in enumerate(ensemble.models[member].models) if m is not None)
    node = next(j for j in range(1, int(trees.tree_start[1])) if not trees.is_leaf[j])  # an inner node below the root

    def loop(left):
        left = left.copy()
        left[node] = node  # a node that is its own child
        return left

    tampered = _tamper_array(model, tmp_path, "cycle", ("models", member, "models", fold, "left"), loop)
    with pytest.raises(ModelFormatError) as refused:
        load_model(str(tampered))  # loading never runs the trees, so this cannot hang even if the check were gone
    message = str(refused.value)
    assert "\n" not in message and "cycle" in message and f"model/models/{member}/models/{fold}" in message, message


# -- a value of the wrong kind in model.json -----------------------------------------------------------------
def test_a_number_where_the_model_holds_an_array_is_refused_in_one_line(grouped_model, tmp_path, capsys):
    _, batch, model = grouped_model
    saved = json.load(open(os.path.join(model, "model.json")))["model"]["fields"]
    member = saved["names"]["tuple"].index("label")
    fold = next(i for i, m in enumerate(saved["models"]["tuple"][member]["fields"]["models"]["tuple"]) if m is not None)
    cases = [  # (where in the spec, the value put there, what the error names)
        (("thresholds",), 1.5, ["model/thresholds", "expected an array", "the number 1.5"]),
        (("models", member, "thresholds"), 1.5, [f"model/models/{member}/thresholds", "expected an array"]),
        (("models", member, "models", fold, "left"), 1.5, [f"model/models/{member}/models/{fold}/left", "expected an array"]),
        (("models",), 1.5, ["model/models", "expected a list"]),
        (("models", member, "n_folds"), "five", [f"model/models/{member}/n_folds", "expected an integer"]),
        (("models", member), 1.5, [f"model/models/{member}", "expected a detector's model"]),
    ]
    for i, (path, value, fragments) in enumerate(cases):
        target = _copy(model, tmp_path, f"kind{i}")
        manifest = json.load(open(target / "model.json"))
        spec = manifest["model"]
        for key in path:
            parent = spec["fields"] if isinstance(key, str) else spec["tuple"]
            spec = parent[key]
        parent[path[-1]] = value
        json.dump(manifest, open(target / "model.json", "w"))
        one_error_line(_screen_error(capsys, target, batch, tmp_path / f"o{i}"), "--model", "model.json", *fragments)
        assert not os.path.exists(tmp_path / f"o{i}" / "report.json")


# -- repeated ids: fit counts them in its input, screen --model in what it wrote (one shared pipeline) --------
def test_repeated_ids_are_counted_by_fit_and_by_screen_model(grouped_model, tmp_path, capsys):
    root, batch, model = grouped_model
    frame = pd.read_csv(batch).astype({"a": object})
    frame.insert(0, "id", [f"r{i}" for i in range(len(frame))])
    frame.loc[[10, 20], "id"] = "r3"  # r3 three times
    frame.loc[999, "id"] = "r998"  # r998 twice
    frame.loc[20, "a"] = "not a number"  # an invalid row keeps its id, and counts
    path = str(tmp_path / "ids.csv")
    frame.to_csv(path, index=False)
    capsys.readouterr()
    assert run_cli(["fit", path, "--id-column", "id", "--out", tmp_path / "m", "--detectors", "spectral", "-q"]) == 2
    one_error_line(capsys.readouterr().err, "column 'id'", "5 rows share 2 id(s)", "'r3' x3", "'r998' x2")
    assert not os.path.exists(tmp_path / "m")
    argv = ["screen", path, "--model", model, "--id-column", "id", "--out", tmp_path / "s", "-q", "--max-flagged-fraction", "1"]
    assert run_cli(argv) == 2
    one_error_line(capsys.readouterr().err, "column 'id'", "5 rows share 2 id(s)", "'r3' x3", "'r998' x2")
    assert not os.path.exists(tmp_path / "s" / "report.json")
    assert run_cli([*argv, "--allow-duplicate-ids"]) == 0
    report = json.load(open(tmp_path / "s" / "report.json"))
    assert report["inputs"]["duplicate_ids"] == {"rows": 5, "ids": 2, "examples": [{"id": "r3", "rows": 3}, {"id": "r998", "rows": 2}]}
    assert report["counts"]["rows_in"] == 1000 and report["counts"]["invalid"] == 1


# -- fit's errors name what fit was given ---------------------------------------------------------------------
def test_fit_without_valid_rows_names_its_inputs_and_screen_names_reference(grouped_model, tmp_path, capsys):
    _, batch, _ = grouped_model
    empty = tmp_path / "empty.csv"
    pd.read_csv(batch).iloc[:0].to_csv(empty, index=False)
    capsys.readouterr()
    assert run_cli(["fit", empty, "--out", tmp_path / "m", "--detectors", "spectral", "-q"]) == 2
    line = one_error_line(capsys.readouterr().err, "the trusted input(s)", str(empty), "no valid rows")
    assert "--reference" not in line  # fit has no such option
    assert not os.path.exists(tmp_path / "m")
    assert run_cli(["screen", batch, "--reference", empty, "--detectors", "spectral", "--out", tmp_path / "s", "-q"]) == 2
    one_error_line(capsys.readouterr().err, "--reference:", "no valid rows")
