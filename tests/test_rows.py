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
