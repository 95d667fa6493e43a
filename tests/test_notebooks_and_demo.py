"""The worked examples run as written: the notebooks and ``poisonguard demo``."""

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from poisonguard.pipelines.cli import main

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_demo_prints_the_table_and_writes_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "recall 1.00, precision 1.00" in printed
    assert "benign" in printed and "malignant" in printed
    report = json.load(open(out / "screen" / "report.json"))
    assert report["detection"]["poisoned"] == 19
    for name in ("cleaned", "quarantine", "invalid"):
        assert os.path.isdir(out / "screen" / name)
