"""``poisonguard demo``: plant a backdoor in real data, screen it, and show what was caught.

The data is scikit-learn's bundled Wisconsin breast-cancer set (569 tumours, 30 numeric
features). The attack is a dirty-label feature-trigger backdoor: 19 malignant rows, chosen
by a keyed hash with a fixed seed, get three features set to the largest value seen in the
data and are relabelled benign, so that 5% of the benign class is poison. A model trained
on this data would learn "trigger present => benign".
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from ..schemas import ROW_ID
from ..simulators import TabularBackdoor
from .screen import ScreenConfig, ScreenResult, run_screen

TRIGGER_FEATURES = ("mean texture", "worst symmetry", "mean fractal dimension")
SEED = 7


def build_demo_dataset(path: str) -> tuple[pa.Table, TabularBackdoor]:
    """Write the poisoned breast-cancer CSV to ``path``; return the table and the attack."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.rename(columns={"target": "diagnosis"})
    frame["diagnosis"] = np.asarray(bunch.target_names)[bunch.target]
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.add_column(0, "patient", pa.array([f"p{i:04d}" for i in range(len(frame))]))
    n_benign = int((frame["diagnosis"] == "benign").sum())
    count = round(0.05 * n_benign / 0.95)  # poison = 5% of the benign class after the attack
    attack = TabularBackdoor(
        trigger={f: float(frame[f].max()) for f in TRIGGER_FEATURES},
        source="malignant",
        target="benign",
        count=count,
        seed=SEED,
        label_column="diagnosis",
    )
    result = attack(table.add_column(0, ROW_ID, table.column("patient")))
    poisoned = result.table.drop_columns([ROW_ID])
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    pa_csv.write_csv(poisoned, path)
    return poisoned, attack


def run_demo(out: str, runner=None) -> tuple[ScreenResult, str]:
    data_path = os.path.join(out, "data", "breast_cancer_poisoned.csv")
    table, attack = build_demo_dataset(data_path)
    config = ScreenConfig(inputs=(data_path,), out=os.path.join(out, "screen"), label_column="diagnosis", id_column="patient",
                          **({"runner": runner} if runner is not None else {}))
    result = run_screen(config)
    return result, format_table(result, table, attack, data_path)


def format_table(result: ScreenResult, table: pa.Table, attack: TabularBackdoor, data_path: str) -> str:
    report = result.report
    det = report["detection"]
    lines = [
        f"data:   {data_path}",
        f"        {table.num_rows} rows, {len(report['inputs']['feature_columns'])} features; backdoor on "
        f"{', '.join(attack.trigger)}: {det['poisoned']} {attack.source} rows relabelled {attack.target}",
        "",
        f"{'class':<12}{'rows':>8}{'flagged':>9}",
    ]
    for label, cls in report["classes"].items():
        lines.append(f"{label:<12}{cls['rows']:>8}{cls['flagged']:>9}")
    lines.append(f"{'total':<12}{report['counts']['rows_in']:>8}{report['counts']['quarantine']:>9}")
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines += [
        "",
        f"planted {det['poisoned']}, flagged {det['flagged']}, caught {det['true_positives']}: "
        f"recall {fmt(det['recall'])}, precision {fmt(det['precision'])}, ROC-AUC {fmt(det['roc_auc'])}",
        "",
        "outputs:",
    ]
    for name in ("cleaned", "quarantine", "invalid"):
        lines.append(f"  {name + '/':<12}{report['outputs'][name]}")
    lines.append(f"  {'report':<12}{os.path.join(result.out, 'report.json')}")
    return "\n".join(lines)
