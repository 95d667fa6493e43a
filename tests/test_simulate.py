"""The simulation job end to end: the YAML config, determinism, row conservation, errors, simulate -> screen."""

from __future__ import annotations

import hashlib
import json
import os
import re
import textwrap

import jsonschema
import numpy as np
import pandas as pd
import pytest

from poisonguard.pipelines import RunnerConfig, read_output
from poisonguard.pipelines.cli import main
from poisonguard.pipelines.simulate import SimulateConfig, run_simulate
from poisonguard.schemas import ConfigError, load_json_schema
from poisonguard.simulators import ATTACKS, Backdoor, LabelFlip
from poisonguard.simulators.config import attacks_from_dict, load_attack_config

FEATURES = ["amount", "n_items", "hour", "account_age", "distance_km"]

README_YAML = """\
seed: 7
attacks:
  - kind: label_flip
    mode: random          # random | targeted | noise_matrix | boundary
    rate: 0.10
  - kind: backdoor
    trigger:
      features: {amount: 950.0, n_items: 12}   # tabular; images: patch/blend
    source: "legit"       # optional: only rows of this class
    target: "fraud"
    rate: 0.05            # fraction of the eligible rows; or count: 500
"""

# Every kind, rate and count mode, injected rows: the determinism tests run this one.
MIXED_YAML = """\
seed: 3
attacks:
  - {kind: label_flip, mode: targeted, source: fraud, target: legit, count: 25}
  - {kind: backdoor, trigger: {features: {amount: 950.0, n_items: 12}}, source: legit, target: fraud, rate: 0.04}
  - {kind: inject, placement: far, count: 9}
  - {kind: duplicate_flip, rate: 0.02}
  - {kind: feature_noise, columns: [hour, distance_km], scale: 0.5, count: 30}
  - {kind: clean_label, trigger: {quantiles: {account_age: 0.99}}, target: fraud, rate: 0.05}
"""


def fraud_frame(n: int, seed: int) -> pd.DataFrame:
    """Synthetic card transactions: 25% fraud, skewed features, a text column that is no feature."""
    rng = np.random.default_rng(seed)
    fraud = rng.random(n) < 0.25
    return pd.DataFrame({
        "amount": np.round(rng.lognormal(3.5 + 0.7 * fraud, 0.6), 2),
        "n_items": rng.poisson(2 + 2 * fraud),
        "merchant": rng.choice(["grocer", "fuel", "online", "travel"], n),
        "hour": rng.integers(0, 24, n),
        "account_age": np.round(rng.exponential(400 - 250 * fraud), 1),
        "distance_km": np.round(rng.lognormal(2 + 0.5 * fraud, 1.0), 3),
        "label": np.where(fraud, "fraud", "legit"),
    })


BAD_LINES = ["abc,1,fuel,3,10.0,1.0,legit", "12.5,1,fuel,3,10.0,1.0,", "12.5,1,fuel"]


@pytest.fixture(scope="module")
def fraud_data(tmp_path_factory):
    """6000 rows in one CSV plus three bad lines (a text amount, a missing label, a short line)."""
    root = tmp_path_factory.mktemp("fraud")
    frame = fraud_frame(6000, 0)
    text = frame.to_csv(index=False).splitlines() + BAD_LINES
    path = root / "transactions.csv"
    path.write_text("\n".join(text) + "\n")
    config = root / "attack.yaml"
    config.write_text(README_YAML)
    return path, config, frame


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory):
    """2000 rows over a Parquet file and a CSV file (with the bad lines), and the mixed config."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "in").mkdir()
    frame = fraud_frame(2000, 1)
    frame.iloc[:1200].to_parquet(root / "in" / "a.parquet", index=False, row_group_size=500)
    (root / "in" / "b.csv").write_text("\n".join(frame.iloc[1200:].to_csv(index=False).splitlines() + BAD_LINES) + "\n")
    config = root / "mixed.yaml"
    config.write_text(MIXED_YAML)
    return root / "in", config


def _data(out) -> pd.DataFrame:
    return read_output(os.path.join(out, "data")).to_pandas().sort_values("row_id").reset_index(drop=True)


def _invalid(out) -> pd.DataFrame:
    return read_output(os.path.join(out, "invalid")).to_pandas().sort_values("row_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def readme_run(fraud_data, tmp_path_factory):
    path, config, _ = fraud_data
    out = tmp_path_factory.mktemp("readme") / "out"
    return run_simulate(SimulateConfig(inputs=(str(path),), out=str(out), config=str(config))), out


@pytest.fixture(scope="module")
def mixed_baseline(mixed_data, tmp_path_factory):
    root, config = mixed_data
    out = tmp_path_factory.mktemp("mixed-baseline")
    result = run_simulate(SimulateConfig(inputs=(str(root),), out=str(out), config=str(config), batch_rows=65536))
    return result, _data(out), _invalid(out)


# -- the YAML of the README, as written ------------------------------------------------------
def test_readme_yaml_works_as_written(fraud_data, readme_run):
    path, config, frame = fraud_data
    result, out = readme_run
    manifest = result.manifest
    assert manifest["seed"] == 7
    assert [(a["name"], a["kind"]) for a in manifest["attacks"]] == [("label_flip_random", "label_flip"), ("backdoor", "backdoor")]
    assert manifest["attacks"][1]["params"]["trigger"] == {"features": {"amount": 950.0, "n_items": 12}}
    assert manifest["attacks"][1]["params"]["source"] == "legit" and manifest["attacks"][0]["params"]["rate"] == 0.1
    data = _data(out)
    assert list(data.columns) == ["row_id", *frame.columns, "poisoned", "attack", "original_label"]
    flipped = data[data["attack"] == "label_flip_random"]
    assert 0.08 < len(flipped) / 6000 < 0.12
    assert (flipped["label"] != flipped["original_label"]).all()
    backdoor = data[data["attack"] == "backdoor"]
    legit_left = ((data["original_label"] == "legit") & ~data["poisoned"]).sum() + len(backdoor)
    assert 0.035 < len(backdoor) / legit_left < 0.065
    assert (backdoor[["amount", "n_items"]] == [950.0, 12.0]).all().all()
    assert set(backdoor["label"]) == {"fraud"} and set(backdoor["original_label"]) == {"legit"}
    # rows no attack touched are the input's rows, unchanged
    clean = data[~data["poisoned"]]
    original = frame.assign(row_id=[f"transactions.csv:{i}" for i in range(len(frame))]).set_index("row_id").loc[clean["row_id"]]
    np.testing.assert_array_equal(clean[FEATURES].to_numpy(), original[FEATURES].to_numpy(dtype=float))
    assert (clean["label"].to_numpy() == original["label"].to_numpy()).all()
    assert (clean["merchant"].to_numpy() == original["merchant"].to_numpy()).all()
    assert set(clean["attack"]) == {""}


def test_row_conservation_and_manifest(fraud_data, readme_run):
    path, _, frame = fraud_data
    result, out = readme_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == result.manifest
    jsonschema.validate(manifest, load_json_schema("manifest"))
    data, invalid = _data(out), _invalid(out)
    ids = sorted(data["row_id"].tolist() + invalid["row_id"].tolist())
    assert ids == sorted(f"transactions.csv:{i}" for i in range(len(frame) + len(BAD_LINES)))
    counts = manifest["counts"]
    assert counts["rows_in"] == len(frame) + 3 == counts["valid"] + counts["invalid"]
    assert counts["invalid"] == 3 == len(invalid)
    reasons = " | ".join(invalid["reason"])
    for expected in ("column 'amount': 'abc' is not a number", "column 'label': missing label", "malformed CSV line"):
        assert expected in reasons
    by_column = data.loc[data["poisoned"], "attack"].value_counts().to_dict()
    assert counts["by_attack"] == by_column
    for attack in manifest["attacks"]:
        assert attack["touched"] + attack["injected"] == by_column[attack["name"]]
    assert counts["rows_out"] == len(data) == counts["valid"] + counts["injected"]
    assert counts["touched"] == sum(a["touched"] for a in manifest["attacks"]) == counts["poisoned"] == int(data["poisoned"].sum())
    fingerprint = manifest["inputs"]["fingerprint"]
    assert fingerprint["files"][0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert fingerprint["bytes"] == path.stat().st_size
    assert manifest["inputs"]["feature_columns"] == FEATURES  # 'merchant' is text: passed through, not a feature
    assert manifest["config"]["sha256"] == hashlib.sha256(README_YAML.encode()).hexdigest()
    assert sorted(n for n in os.listdir(out) if not n.startswith(".")) == ["data", "invalid", "manifest.html", "manifest.json"]


def test_mixed_config_counts_are_exact_and_injected_rows_conserved(mixed_baseline):
    result, data, invalid = mixed_baseline
    manifest = result.manifest
    by_name = {a["name"]: a for a in manifest["attacks"]}
    assert by_name["label_flip_targeted"]["touched"] == 25
    assert by_name["inject"]["injected"] == 9
    assert by_name["feature_noise"]["touched"] == 30
    assert by_name["duplicate_flip"]["injected"] > 0
    assert manifest["passes"] == 5  # profile + three count-mode attacks + write
    counts = manifest["counts"]
    assert counts["rows_out"] == counts["valid"] + counts["injected"] == len(data)
    assert data["row_id"].is_unique
    injected = data[data["row_id"].str.startswith(("inject:", "duplicate_flip:"))]
    assert len(injected) == counts["injected"] and injected["poisoned"].all()
    assert counts["rows_in"] == 2003 and counts["invalid"] == 3 == len(invalid)
    assert data.loc[data["poisoned"], "attack"].value_counts().to_dict() == counts["by_attack"]


# -- determinism -------------------------------------------------------------------------------
def _assert_same(expected: pd.DataFrame, got: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(expected, got, check_exact=True)


@pytest.mark.parametrize("batch_rows", [7, 100])
def test_batch_size_does_not_change_the_output(mixed_data, mixed_baseline, tmp_path, batch_rows):
    root, config = mixed_data
    result = run_simulate(SimulateConfig(inputs=(str(root),), out=str(tmp_path), config=str(config), batch_rows=batch_rows))
    _assert_same(mixed_baseline[1], _data(tmp_path))
    _assert_same(mixed_baseline[2], _invalid(tmp_path))
    assert result.manifest["counts"] == mixed_baseline[0].manifest["counts"]
    assert [a["touched"] for a in result.manifest["attacks"]] == [a["touched"] for a in mixed_baseline[0].manifest["attacks"]]


# Rate mode only (two passes): each pass starts its own worker processes, several seconds each.
RATE_YAML = """\
seed: 5
attacks:
  - {kind: label_flip, mode: random, rate: 0.1}
  - {kind: backdoor, trigger: {features: {amount: 950.0, n_items: 12}}, source: legit, target: fraud, rate: 0.04}
  - {kind: duplicate_flip, rate: 0.02}
"""


@pytest.mark.slow
def test_multiprocessing_direct_runner_gives_the_same_output(mixed_data, tmp_path):
    root, _ = mixed_data
    config = tmp_path / "rate.yaml"
    config.write_text(RATE_YAML)
    run_simulate(SimulateConfig(inputs=(str(root),), out=str(tmp_path / "one"), config=str(config)))
    run_simulate(SimulateConfig(inputs=(str(root),), out=str(tmp_path / "two"), config=str(config), batch_rows=300,
                                runner=RunnerConfig(workers=2)))
    _assert_same(_data(tmp_path / "one"), _data(tmp_path / "two"))
    _assert_same(_invalid(tmp_path / "one"), _invalid(tmp_path / "two"))


@pytest.mark.slow
def test_dask_runner_gives_the_same_output(mixed_data, mixed_baseline, tmp_path):
    root, config = mixed_data
    result = run_simulate(SimulateConfig(inputs=(str(root),), out=str(tmp_path), config=str(config), batch_rows=250,
                                         runner=RunnerConfig(runner="dask", workers=2)))
    _assert_same(mixed_baseline[1], _data(tmp_path))
    _assert_same(mixed_baseline[2], _invalid(tmp_path))
    assert result.manifest["counts"] == mixed_baseline[0].manifest["counts"]


def test_seed_override_changes_the_rows_and_is_recorded(mixed_data, mixed_baseline, tmp_path):
    root, config = mixed_data
    result = run_simulate(SimulateConfig(inputs=(str(root),), out=str(tmp_path), config=str(config), seed=11))
    assert result.manifest["seed"] == 11 and result.manifest["config"]["seed_override"] == 11
    other = _data(tmp_path)
    base = mixed_baseline[1]
    assert set(other.loc[other["poisoned"], "row_id"]) != set(base.loc[base["poisoned"], "row_id"])
    assert result.manifest["attacks"][0]["touched"] == 25  # counts stay exact


def test_attacks_as_python_objects(fraud_data, tmp_path):
    path, _, _ = fraud_data
    attacks = (LabelFlip(mode="targeted", source="fraud", target="legit", count=40),
               Backdoor(trigger={"features": {"amount": 950.0}}, target="fraud", rate=0.02))
    result = run_simulate(SimulateConfig(inputs=(str(path),), out=str(tmp_path), attacks=attacks, seed=5))
    assert [a["touched"] for a in result.manifest["attacks"]][0] == 40
    assert result.manifest["config"] == {"path": None, "sha256": None, "seed_override": 5}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_numeric_labels_match_the_config_whatever_the_file_type(cancer, tmp_path, fmt):
    """Breast-cancer data (labels 0/1): CSV labels are text, Parquet labels integers; `target: 1` fits both."""
    X, y = cancer
    frame = pd.DataFrame(X[:, :6], columns=[f"f{i}" for i in range(6)]).assign(label=y)
    path = tmp_path / f"cancer.{fmt}"
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path, index=False)
    config = tmp_path / "c.yaml"
    config.write_text("attacks:\n  - {kind: backdoor, trigger: {quantiles: {f1: 0.99}}, source: 0, target: '1', count: 15}\n")
    result = run_simulate(SimulateConfig(inputs=(str(path),), out=str(tmp_path / "out"), config=str(config)))
    data = _data(tmp_path / "out")
    one = "1" if fmt == "csv" else 1
    assert result.manifest["attacks"][0]["touched"] == 15 and result.manifest["attacks"][0]["params"]["target"] == one
    poisoned = data[data["poisoned"]]
    assert poisoned["label"].tolist() == [one] * 15 and poisoned["original_label"].tolist() == [0 if one == 1 else "0"] * 15


# -- errors: exit code 2, one line naming the file and key path, nothing written ------------------
def _cli(argv, capsys):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    return code, lines


BAD_CONFIGS = {
    "unknown key": ("attacks:\n  - {kind: label_flip, rat: 0.1}\n",
                    ["attacks[0].rat", "unknown key", "allowed keys: kind, name, rate, count, mode"]),
    "wrong type": ("attacks:\n  - kind: backdoor\n    trigger: {features: {amount: high}}\n    target: fraud\n    rate: 0.1\n",
                   ["attacks[0].trigger.features.amount", "expected a number", "'high'"]),
    "bad value": ("seed: 1\nattacks:\n  - {kind: label_flip, rate: 0.1}\n  - {kind: label_flip, mode: sideways, rate: 1.5}\n",
                  ["attacks[1].mode", "expected one of: random, targeted, noise_matrix, boundary"]),
    "rate out of range": ("attacks:\n  - {kind: label_flip, rate: 1.5}\n", ["attacks[0].rate", "expected a number <= 1"]),
    "unknown kind": ("attacks:\n  - {kind: label_flop, rate: 0.1}\n",
                     ["attacks[0].kind", "unknown attack kind 'label_flop'", "label_flip, backdoor"]),
    "rate and count": ("attacks:\n  - {kind: label_flip, rate: 0.1, count: 3}\n", ["attacks[0].rate", "exactly one of 'rate' and 'count'"]),
    "targeted without target": ("attacks:\n  - {kind: label_flip, mode: targeted, source: legit, rate: 0.1}\n",
                                ["attacks[0].", "'source' and 'target'"]),
    "repeated name": ("attacks:\n  - {kind: label_flip, name: a, rate: 0.1}\n  - {kind: label_flip, name: a, rate: 0.1}\n",
                      ["attacks[1].name", "already the name of attacks[0]"]),
    "invalid yaml": ("attacks:\n  - {kind: label_flip, rate: 0.1\n", ["invalid YAML at line"]),
    "duplicate key": ("seed: 1\nseed: 2\nattacks:\n  - {kind: label_flip, rate: 0.1}\n", ["duplicate key 'seed'"]),
    "no attacks": ("seed: 1\n", ["attacks", "required key missing"]),
    "not a mapping": ("- kind: label_flip\n", ["expected a mapping with an 'attacks' list"]),
    "unknown trigger feature": ("attacks:\n  - {kind: backdoor, trigger: {features: {amunt: 1.0}}, target: fraud, rate: 0.1}\n",
                                ["attacks[0].trigger.features.amunt", "no column 'amunt'", "feature columns: amount"]),
    "text column as trigger": ("attacks:\n  - {kind: backdoor, trigger: {features: {merchant: 1.0}}, target: fraud, rate: 0.1}\n",
                               ["attacks[0].trigger.features.merchant", "not a feature column"]),
    "class not in the data": ("attacks:\n  - {kind: backdoor, trigger: {features: {amount: 1.0}}, target: fruad, rate: 0.1}\n",
                              ["attacks[0].target", "'fruad' is not a class of the data"]),
    "count above eligible rows": ("attacks:\n  - {kind: label_flip, mode: targeted, source: fraud, target: legit, count: 100000}\n",
                                  ["attacks[0].count", "100000 rows asked"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_exits_2_naming_the_key_and_writes_nothing(case, fraud_data, tmp_path, capsys):
    path, _, _ = fraud_data
    text, fragments = BAD_CONFIGS[case]
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    out = tmp_path / "out"
    code, lines = _cli(["simulate", path, "--config", config, "--out", out, "-q"], capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("poisonguard: error: "), lines
    if case not in ("not a mapping",):
        assert str(config) in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not (out / "data").exists() and not (out / "manifest.json").exists()


@pytest.mark.parametrize("case", ["missing config", "missing input", "no label column", "bad seed", "config is a directory"])
def test_bad_invocation_exits_2_and_writes_nothing(case, fraud_data, tmp_path, capsys):
    path, config, _ = fraud_data
    out = tmp_path / "out"
    argv = {
        "missing config": ["simulate", path, "--config", tmp_path / "nope.yaml", "--out", out],
        "missing input": ["simulate", tmp_path / "nope.csv", "--config", config, "--out", out],
        "no label column": ["simulate", path, "--config", config, "--out", out, "--label-column", "y"],
        "bad seed": ["simulate", path, "--config", config, "--out", out, "--seed", "x"],
        "config is a directory": ["simulate", path, "--config", tmp_path, "--out", out],
    }[case]
    code, lines = _cli(argv, capsys)
    assert code == 2 and len(lines) == 1 and re.match(r"^poisonguard(?: simulate)?: error: \S", lines[0]), lines
    expected = {"missing config": "nope.yaml: no such attack config file", "missing input": "no such file or directory",
                "no label column": "no label column 'y'", "bad seed": "--seed", "config is a directory": "is a directory"}[case]
    assert expected in lines[0]
    assert not out.exists()


def test_previous_outputs_survive_a_failed_run(fraud_data, tmp_path, capsys):
    path, config, _ = fraud_data
    out = tmp_path / "out"
    assert _cli(["simulate", path, "--config", config, "--out", out, "-q"], capsys)[0] == 0
    before = (out / "manifest.json").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("attacks:\n  - {kind: backdoor, trigger: {features: {amount: 1.0}}, target: fruad, rate: 0.1}\n")
    assert _cli(["simulate", path, "--config", bad, "--out", out, "-q"], capsys)[0] == 2
    assert (out / "manifest.json").read_text() == before
    assert sorted(n for n in os.listdir(out) if not n.startswith(".")) == ["data", "invalid", "manifest.html", "manifest.json"]


# -- the config module and the attacks listing ---------------------------------------------------
def test_config_in_python_matches_the_file(fraud_data):
    _, config, _ = fraud_data
    import yaml

    from_file = load_attack_config(str(config))
    from_dict = attacks_from_dict(yaml.safe_load(README_YAML))
    assert from_file.seed == from_dict.seed == 7
    assert from_file.attacks == from_dict.attacks
    seed, attacks = from_file
    assert isinstance(attacks[0], LabelFlip) and isinstance(attacks[1], Backdoor)


def test_default_names_are_numbered_explicit_duplicates_rejected():
    doc = {"attacks": [{"kind": "label_flip", "rate": 0.1}, {"kind": "label_flip", "rate": 0.2},
                       {"kind": "label_flip", "rate": 0.3, "name": "label_flip_random_2"}]}
    assert [a.name for a in attacks_from_dict(doc).attacks] == ["label_flip_random", "label_flip_random_3", "label_flip_random_2"]
    with pytest.raises(ConfigError, match=r"attacks\[1\]\.name"):
        attacks_from_dict({"attacks": [{"kind": "inject", "rate": 0.1, "name": "x"}, {"kind": "inject", "rate": 0.1, "name": "x"}]})


def test_schema_knows_every_attack_and_its_fields():
    """schemas/attack_config.schema.json stays in step with the attack classes."""
    import dataclasses

    schema = load_json_schema("attack_config")
    assert schema["$defs"]["attack"]["properties"]["kind"]["enum"] == list(ATTACKS)
    for kind, cls in ATTACKS.items():
        fields = {"kind"} | {f.name for f in dataclasses.fields(cls)}
        assert set(schema["$defs"][kind]["properties"]) == fields, kind


def test_attacks_subcommand_lists_every_kind_and_parameter(capsys):
    assert main(["attacks"]) == 0
    out = capsys.readouterr().out
    for kind, cls in ATTACKS.items():
        assert re.search(rf"^{kind}: ", out, re.M), kind
        for name, typ, default, _ in cls.describe():
            assert f"  {name} ({typ}; default: {default})" in out


# -- simulate, then screen ---------------------------------------------------------------------
def test_simulated_backdoor_is_caught_by_screen(fraud_data, tmp_path, capsys):
    path, _, _ = fraud_data
    config = tmp_path / "backdoor.yaml"
    config.write_text(textwrap.dedent("""\
        seed: 1
        attacks:
          - kind: backdoor
            trigger: {features: {amount: 950.0, n_items: 12}}
            source: legit
            target: fraud
            rate: 0.03
    """))
    sim, screened = tmp_path / "sim", tmp_path / "screened"
    assert _cli(["simulate", path, "--config", config, "--out", sim, "-q"], capsys)[0] == 0
    code, _ = _cli(["screen", sim / "data", "--out", screened, "--detectors", "spectral,label", "-q"], capsys)
    assert code == 1  # flagged rows breach the default policy
    report = json.loads((screened / "report.json").read_text())
    manifest = json.loads((sim / "manifest.json").read_text())
    detection = report["detection"]
    assert detection["poisoned"] == manifest["counts"]["poisoned"] > 100
    assert detection["recall"] >= 0.9 and detection["precision"] >= 0.8
    assert list(detection["by_attack"]) == ["backdoor"]
    assert detection["by_attack"]["backdoor"]["rows"] == manifest["counts"]["by_attack"]["backdoor"]
    assert detection["by_attack"]["backdoor"]["flagged"] == detection["true_positives"]
    assert report["inputs"]["feature_columns"] == FEATURES  # not poisoned/attack/original_label/merchant
    assert report["counts"]["rows_in"] == manifest["counts"]["rows_out"]
    quarantine = read_output(str(screened / "quarantine")).to_pandas()
    assert quarantine["row_id"].str.startswith("transactions.csv:").all()  # simulate's row ids are kept
