"""Outputs keep the input's Arrow types, so cleaned/ joins back to the user's tables.

Parquet in: every column comes out with its type (int64 ids and features, float32,
timestamps, strings, dictionaries); ``row_id`` is text. ``simulate`` keeps the types of
every column but the features, which it widens to float64 because attacks write real
values into them (documented). CSV in: features float64, other columns text.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from poisonguard.pipelines import read_output
from poisonguard.pipelines.cli import main


def table(n: int = 80, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    label = np.arange(n) % 2
    return pa.table({
        "cust_id": pa.array(np.arange(n) + 1_000_000_000_000 * (seed + 1), pa.int64()),
        "n_items": pa.array(rng.integers(0, 5, n) + 10 * label, pa.int64()),
        "f32": pa.array(rng.normal(size=n) + 4 * label, pa.float32()),
        "amount": pa.array(rng.normal(size=n) * 3 + 8 * label, pa.float64()),
        "seen": pa.array(pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(n), unit="h"), pa.timestamp("us")),
        "city": pa.array([f"city{i % 7}" for i in range(n)], pa.string()),
        "segment": pa.array([["retail", "pro", "gov"][i % 3] for i in range(n)]).dictionary_encode(),
        "label": pa.array(label, pa.int64()),
    })


def output_types(out, name) -> dict:
    return {f.name: f.type for f in pq.read_schema(os.path.join(out, name, sorted(os.listdir(os.path.join(out, name)))[0]))}


def test_screen_keeps_every_parquet_type(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    first, second = table(), table(seed=1)
    pq.write_table(first, data / "a.parquet")
    pq.write_table(second, data / "b.parquet")
    out = tmp_path / "out"
    assert main(["screen", str(data), "--out", str(out), "--id-column", "cust_id", "--detectors", "spectral",
                 "--max-flagged-fraction", "1", "-q"]) == 0
    types = output_types(out, "cleaned")
    for field in first.schema:
        assert types[field.name] == field.type, (field.name, types[field.name], field.type)
    assert types["row_id"] == pa.string()
    cleaned = read_output(str(out / "cleaned"))
    quarantine = read_output(str(out / "quarantine"))
    both = cleaned if quarantine is None else pa.concat_tables([cleaned, quarantine])
    joined = pa.concat_tables([first, second]).join(both.select(["cust_id", "n_items", "seen", "score_spectral"]),
                                                     keys=["cust_id", "n_items", "seen"])
    assert joined.num_rows == 160  # every output row joins back to its input row on the typed values


def test_mixed_csv_and_parquet_gives_float_features_and_text(tmp_path):
    pq.write_table(table(), tmp_path / "a.parquet")
    table(seed=1).to_pandas().to_csv(tmp_path / "b.csv", index=False)
    out = tmp_path / "out"
    assert main(["screen", str(tmp_path / "a.parquet"), str(tmp_path / "b.csv"), "--out", str(out), "--detectors", "spectral",
                 "--max-flagged-fraction", "1", "-q"]) == 0
    types = output_types(out, "cleaned")
    assert {types[c] for c in ("n_items", "f32", "amount", "cust_id")} == {pa.float64()}
    assert {types[c] for c in ("seen", "city", "segment", "label")} == {pa.string()}


def test_simulate_keeps_types_but_widens_features(tmp_path):
    pq.write_table(table(), tmp_path / "a.parquet")
    (tmp_path / "attack.yaml").write_text("attacks:\n  - {kind: backdoor, trigger: {features: {n_items: 2.5}}, target: 1, rate: 0.2}\n")
    out = tmp_path / "out"
    assert main(["simulate", str(tmp_path / "a.parquet"), "--config", str(tmp_path / "attack.yaml"), "--out", str(out),
                 "--id-column", "cust_id", "-q"]) == 0
    types = output_types(out, "data")
    source = table().schema
    for name in ("cust_id", "seen", "city", "segment", "label"):
        assert types[name] == source.field(name).type, name
    assert {types[c] for c in ("n_items", "f32", "amount")} == {pa.float64()}
    data = read_output(str(out / "data")).to_pandas()
    assert (data.loc[data["poisoned"], "n_items"] == 2.5).all() and data["poisoned"].sum() > 0
