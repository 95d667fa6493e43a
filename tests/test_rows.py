"""The row contract on single chunks: ids, ground-truth parsing and reasons."""

import numpy as np
import pyarrow as pa

from poisonguard.pipelines.io import RawChunk, Shard
from poisonguard.pipelines.rows import Contract, validate_chunk


def _contract(columns, id_column=None):
    passthrough = tuple((c, pa.bool_() if c == "poisoned" else pa.string()) for c in columns if c not in ("f", "label"))
    return Contract("label", id_column, ("f",), pa.string(), passthrough, tuple(columns))


def _chunk(table, offsets=None, malformed=()):
    shard = Shard(path="data/x.csv", source="x.csv", format="csv")
    offsets = np.arange(table.num_rows) if offsets is None else np.asarray(offsets)
    return RawChunk(shard, 0, table, offsets, list(malformed))


def test_ground_truth_text_is_parsed_and_bad_values_are_invalid():
    table = pa.table({"f": ["1", "2", "3", "4", "5"], "label": ["a"] * 5, "poisoned": ["True", " false", "1", "maybe", None]})
    valid, invalid = validate_chunk(_chunk(table), _contract(["f", "label", "poisoned"]))
    assert valid.column("poisoned").to_pylist() == [True, False, True]
    assert invalid.column("row_id").to_pylist() == ["x.csv:3", "x.csv:4"]
    assert set(invalid.column("reason").to_pylist()) == {"column 'poisoned': expected true or false"}
    assert invalid.column("poisoned").to_pylist() == ["maybe", None]


def test_id_column_is_used_and_a_missing_id_is_invalid():
    table = pa.table({"id": ["u1", None, "u3"], "f": ["1", "2", "x"], "label": ["a", "b", "a"]})
    valid, invalid = validate_chunk(_chunk(table, offsets=[10, 11, 12]), _contract(["id", "f", "label"], id_column="id"))
    assert valid.column("row_id").to_pylist() == ["u1"]
    rows = dict(zip(invalid.column("row_id").to_pylist(), invalid.column("reason").to_pylist()))
    assert rows == {"x.csv:11": "column 'id': missing id", "u3": "column 'f': 'x' is not a number"}


def test_several_problems_in_one_row_are_all_named_and_malformed_lines_kept():
    table = pa.table({"f": [" ", "inf"], "label": [None, "a"]})
    valid, invalid = validate_chunk(_chunk(table, offsets=[0, 2], malformed=[(1, "malformed CSV line 3: ...")]), _contract(["f", "label"]))
    assert valid.num_rows == 0
    reasons = dict(zip(invalid.column("row_id").to_pylist(), invalid.column("reason").to_pylist()))
    assert reasons["x.csv:0"] == "column 'label': missing label; column 'f': ' ' is not a number"
    assert reasons["x.csv:2"] == "column 'f': non-finite value 'inf'"
    assert reasons["x.csv:1"].startswith("malformed CSV line 3")
    assert invalid.column("source").to_pylist() == ["x.csv"] * 3


def _parquet_contract(table, features):
    passthrough = tuple((c, table.schema.field(c).type) for c in table.column_names if c not in (*features, "label"))
    kept = tuple((c, table.schema.field(c).type) for c in features)
    return Contract("label", None, tuple(features), pa.int64(), passthrough, tuple(table.column_names), kept)


def test_parquet_float_features_keep_their_type_and_widen_exactly_into_the_matrix():
    rng = np.random.default_rng(0)
    f32 = rng.normal(size=300).astype(np.float32)
    f32[[5, 77]] = [np.inf, np.nan]  # invalid: non-finite
    table = pa.table({"a": f32, "b": rng.normal(size=300), "c": rng.integers(-5, 5, 300), "label": rng.integers(0, 3, 300),
                      "note": [f"n{i}" for i in range(300)]})
    shard = Shard(path="data/x.parquet", source="x.parquet", format="parquet")
    contract = _parquet_contract(table, ["a", "b", "c"])
    valid, invalid = validate_chunk(RawChunk(shard, 0, table, np.arange(300)), contract)
    assert sorted(invalid.column("row_id").to_pylist()) == ["x.parquet:5", "x.parquet:77"]
    assert set(invalid.column("reason").to_pylist()) == {"column 'a': non-finite value inf", "column 'a': non-finite value nan"}
    assert valid.schema.field("a").type == pa.float32() and valid.schema.field("c").type == pa.int64()
    ok = np.setdiff1d(np.arange(300), [5, 77])
    expected = np.column_stack([f32[ok].astype(np.float64), table.column("b").to_numpy()[ok], table.column("c").to_numpy()[ok]])
    X = contract.features(valid)
    assert X.flags.c_contiguous and X.dtype == np.float64
    np.testing.assert_array_equal(X, expected)
    # a clean chunk: every row valid, the input's columns as they came
    clean = table.filter(pa.array(np.isin(np.arange(300), ok)))
    valid, invalid = validate_chunk(RawChunk(shard, 0, clean, ok), contract)
    assert invalid.num_rows == 0 and valid.column("note").to_pylist() == clean.column("note").to_pylist()
    np.testing.assert_array_equal(contract.features(valid), expected)
    X32 = _parquet_contract(clean.select(["a", "label"]), ["a"]).features(valid.select(["row_id", "a", "label"]))
    np.testing.assert_array_equal(X32[:, 0], f32[ok].astype(np.float64))
