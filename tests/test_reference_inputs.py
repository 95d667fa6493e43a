"""Trusted rows without the batch's id column (issue 12, item 7): ``--reference`` (and a model's fit, which reads
trusted rows through the same ``resolve_contract(..., optional_id=True)``) takes a ``poisonguard simulate`` output
(ids in ``row_id``) or any table without the batch's id column (ids derived from file and offset)."""

from __future__ import annotations

import json
import os

import pytest

from conftest import real_frame, run_cli, write_frame
from poisonguard.pipelines.io import discover_shards
from poisonguard.pipelines.rows import resolve_contract

N_REF, N_BATCH = 700, 500


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """cells split into trusted rows (a plain table, and the same rows through ``poisonguard simulate``) and a batch."""
    df, feats = real_frame("cells")
    root = tmp_path_factory.mktemp("cells")
    ref = write_frame(root / "ref.parquet", df.iloc[:N_REF])
    batch = write_frame(root / "batch.parquet", df.iloc[N_REF:N_REF + N_BATCH])
    no_id = write_frame(root / "ref_no_id.csv", df.iloc[:N_REF].drop(columns=["id"]))
    config = root / "one_flip.yaml"
    config.write_text("seed: 3\nattacks:\n  - {kind: label_flip, mode: random, count: 1}\n")
    assert run_cli(["simulate", ref, "--config", config, "--out", root / "sim", "--id-column", "id", "-q"]) == 0
    assert run_cli(["simulate", batch, "--config", config, "--out", root / "sim_batch", "--id-column", "id", "-q"]) == 0
    return {"root": root, "feats": feats, "ref": ref, "batch": batch, "no_id": no_id, "sim": str(root / "sim" / "data"),
            "sim_batch": str(root / "sim_batch" / "data")}


def _screen(cells, batch, reference, out, *extra):
    code = run_cli(["screen", batch, "--reference", reference, "--out", out, "--feature-columns", ",".join(cells["feats"]),
                    "-q", *extra])
    assert code in (0, 1), f"screen exited {code}"
    with open(os.path.join(out, "report.json")) as fh:
        return json.load(fh)


def test_simulate_output_as_reference_of_a_batch_with_an_id_column(cells, tmp_path):
    """The bug of issue 12: the batch's ids are in 'id', the simulate output's in 'row_id' (it has both columns)."""
    report = _screen(cells, cells["batch"], cells["sim"], tmp_path / "out", "--id-column", "id")
    assert report["reference"]["valid"] == N_REF and report["reference"]["invalid"] == 0
    assert report["counts"]["rows_in"] == N_BATCH
    assert report["validation"]["source"] == "data contract and trusted reference rows"
    assert "novelty" in report["decision"]["members"]


def test_plain_table_as_reference_of_a_simulate_output(cells, tmp_path):
    """The other way round: the batch's ids are simulate's 'row_id', the trusted table has none."""
    report = _screen(cells, cells["sim_batch"], cells["ref"], tmp_path / "out", "--no-validation")
    assert report["inputs"]["id_column"] == "row_id"
    assert report["reference"]["valid"] == N_REF
    assert report["counts"]["rows_in"] == N_BATCH


def test_reference_without_any_id_column(cells, tmp_path):
    report = _screen(cells, cells["batch"], cells["no_id"], tmp_path / "out", "--id-column", "id", "--no-validation",
                     "--detectors", "spectral,novelty")
    assert report["reference"]["valid"] == N_REF


def test_optional_id_contract(cells):
    """resolve_contract(optional_id=True) picks row_id, else the given id column where present, else derived ids;
    without it, the batch's reading stays strict."""
    sim = discover_shards([cells["sim"]])
    plain = discover_shards([cells["no_id"]])
    assert resolve_contract(sim, label_column="label", id_column="id", optional_id=True).id_column == "row_id"
    assert resolve_contract(plain, label_column="label", id_column="id", optional_id=True).id_column is None
    assert resolve_contract(discover_shards([cells["ref"]]), id_column="id", optional_id=True).id_column == "id"
    from poisonguard.schemas import InputError

    with pytest.raises(InputError, match="no id column 'id'"):
        resolve_contract(plain, label_column="label", id_column="id")
