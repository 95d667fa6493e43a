"""Benchmark: detection quality of every detector against the attack library, and timings.

Run from the repository root (poisonguard installed, e.g. in .venv; cleanlab for the
reference column: ``pip install -e '.[bench]'``)::

    python benchmarks/bench_detectors.py quality              # attack x rate x detector, 3 seeds
    python benchmarks/bench_detectors.py quality --seeds 5 --json quality.json
    python benchmarks/bench_detectors.py timing               # fit + score per detector, 1,000,000 rows
    python benchmarks/bench_detectors.py timing --rows 100000 # a fast smoke run

**quality.** For each dataset, attack, rate and seed the attack library poisons the data
(rows chosen by keyed hash of the seed and row id; ground truth from the ``poisoned``
column), and each detector is fitted with its default settings (no knowledge of the poison
rate or target class) and scored. Reported per detector, as the mean over seeds: recall
and precision of the default decision (``predict``) and ROC-AUC of ``suspicion`` against
the poison mask; ``clean`` rows give the share of rows flagged on unpoisoned data.
The ``cleanlab`` column is ``cleanlab.filter.find_label_issues`` with out-of-sample
probabilities from 5-fold cross-validated logistic regression (cleanlab's recommended
use), its ROC-AUC from ``1 - get_label_quality_scores``; it is given for the label-flip
attacks only (it detects label noise, not triggers). Datasets: a seeded synthetic 5-class
set (20,000 x 16, correlated Gaussian features), scikit-learn's breast_cancer, wine and
digits (8x8 images as 64 pixel columns; the backdoor there is a BadNets 3x3 patch).

**timing.** Seeded synthetic data (``--rows`` x 32 float64, 10 classes, a 3% backdoor);
per detector the median of ``--repeat`` runs of ``fit`` and of ``suspicion`` over all rows,
after a warm-up fit on 2,000 rows (numba compile or cache load). BLAS, OpenMP and numba
threads are pinned to ``--threads`` (default 1) before numpy is imported. No assertions:
the script reports figures.
"""

import argparse
import os
import sys

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("what", choices=("quality", "timing"))
p.add_argument("--seeds", type=int, default=3)
p.add_argument("--rows", type=int, default=1_000_000, help="timing: rows (default 1,000,000)")
p.add_argument("--repeat", type=int, default=3, help="timing: runs per detector (median)")
p.add_argument("--detectors", default=None, help="comma-separated subset (default: all, and the ensemble)")
p.add_argument("--threads", type=int, default=1)
p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
args = p.parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import importlib.util  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_digits, load_wine  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from poisonguard.detectors import DETECTORS, EnsembleDetector  # noqa: E402
from poisonguard.simulators import Backdoor, LabelFlip, apply_attacks  # noqa: E402

NAMES = args.detectors.split(",") if args.detectors else [*DETECTORS, "ensemble"]


def make_detector(name: str):
    if name == "ensemble":
        return EnsembleDetector(detectors=[cls() for cls in DETECTORS.values()])
    return DETECTORS[name]()


# -- data --------------------------------------------------------------------------------------
def synthetic(seed: int, n: int = 20000, d: int = 16, k: int = 5, dtype=np.float64):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centres = rng.normal(scale=0.8, size=(k, d))
    mixing = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    X = (rng.normal(size=(n, d)) @ mixing + centres[y]).astype(dtype)
    return X, y


def dataset(name: str):
    if name == "synthetic":
        return synthetic(1234)
    loader = {"breast_cancer": load_breast_cancer, "wine": load_wine, "digits": load_digits}[name]
    X, y = loader(return_X_y=True)
    return X.astype(np.float64), y


def attack_list(data: str, attack: str, rate: float, X: np.ndarray, y: np.ndarray):
    classes = np.unique(y)
    n_poison = max(1, round(rate * len(y)))
    if attack == "clean":
        return []
    if attack == "flip_random":
        return [LabelFlip(mode="random", count=n_poison)]
    if attack == "flip_boundary":
        return [LabelFlip(mode="boundary", count=n_poison)]
    source, target = int(classes[0]), int(classes[-1])
    if data == "digits":
        trigger = {"patch": {"pattern": "checkerboard", "size": 3, "position": "bottom_right", "value": 16.0},
                   "image_shape": [8, 8]}
    else:  # two features set to their 99th percentile together: in range, jointly unusual
        trigger = {"quantiles": {"f0": 0.99, "f1": 0.01}}
    count = min(n_poison, int((y == source).sum()))
    return [Backdoor(trigger=trigger, source=source, target=target, count=count)]


def poisoned(data: str, attack: str, rate: float, seed: int):
    X, y = dataset(data)
    columns = [f"f{i}" for i in range(X.shape[1])]
    table = pa.table({"row_id": [f"r{i}" for i in range(len(y))], "label": y, **{c: X[:, i] for i, c in enumerate(columns)}})
    result = apply_attacks(table, attack_list(data, attack, rate, X, y), seed=seed, label_column="label", feature_columns=columns)
    out = result.table
    Xp = np.column_stack([out.column(c).to_numpy() for c in columns])
    return Xp, out.column("label").to_numpy(), result.mask, out.column("row_id").to_numpy(zero_copy_only=False)


# -- metrics ------------------------------------------------------------------------------------
def metrics(mask: np.ndarray, flagged: np.ndarray, score: np.ndarray) -> dict:
    tp = int((flagged & mask).sum())
    out = {"flagged": float(flagged.mean()), "recall": tp / mask.sum() if mask.any() else None,
           "precision": tp / flagged.sum() if flagged.any() else (None if mask.any() else 1.0), "auc": None}
    if mask.any() and not mask.all():
        out["auc"] = float(roc_auc_score(mask, np.nan_to_num(score, nan=0.0)))
    return out


def cleanlab_metrics(X, y, mask):
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    codes = np.unique(y, return_inverse=True)[1]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probs = cross_val_predict(model, X, codes, cv=5, method="predict_proba")
    issues = find_label_issues(codes, probs)
    return metrics(mask, issues, 1.0 - get_label_quality_scores(codes, probs))


GRID = {
    "synthetic": [("clean", 0.0), ("flip_random", 0.05), ("flip_random", 0.10), ("flip_random", 0.20),
                  ("flip_boundary", 0.10), ("backdoor", 0.01), ("backdoor", 0.03), ("backdoor", 0.10)],
    "breast_cancer": [("clean", 0.0), ("flip_random", 0.10), ("backdoor", 0.03)],
    "wine": [("clean", 0.0), ("flip_random", 0.10)],
    "digits": [("clean", 0.0), ("flip_random", 0.10), ("backdoor", 0.03)],
}


def quality():
    rows = []
    have_cleanlab = importlib.util.find_spec("cleanlab") is not None
    if not have_cleanlab:
        print("cleanlab not installed: no reference column (pip install -e '.[bench]')", file=sys.stderr)
    for data, grid in GRID.items():
        for attack, rate in grid:
            per = {name: [] for name in NAMES + (["cleanlab"] if have_cleanlab and attack.startswith("flip") else [])}
            seeds = range(args.seeds) if attack != "clean" else range(1)
            for seed in seeds:
                X, y, mask, ids = poisoned(data, attack, rate, seed)
                for name in NAMES:
                    det = make_detector(name)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        det.fit(X, y, row_ids=ids)
                    per[name].append(metrics(mask, det.predict(X, y) == -1, det.suspicion(X, y)))
                if "cleanlab" in per:
                    per["cleanlab"].append(cleanlab_metrics(X, y, mask))
            row = {"dataset": data, "attack": attack, "rate": rate, "seeds": len(seeds)}
            for name, runs in per.items():
                row[name] = {k: _mean([r[k] for r in runs]) for k in ("flagged", "recall", "precision", "auc")}
            rows.append(row)
            print(_line(row, per), flush=True)
    return rows


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _fmt(v):
    return "-" if v is None else f"{v:.2f}"


def _line(row, per) -> str:
    cells = []
    for name in per:
        m = row[name]
        if row["attack"] == "clean":
            cells.append(f"{m['flagged'] * 100:.2f}% flagged")
        else:
            cells.append(f"{_fmt(m['recall'])} / {_fmt(m['precision'])} / {_fmt(m['auc'])}")
    return f"| {row['dataset']} | {row['attack']} | {row['rate']:.0%} | " + " | ".join(cells) + " |"


def timing():
    X, y = synthetic(0, n=args.rows, d=32, k=10)
    X[: args.rows // 33, :2] = 6.0  # a backdoor-like cluster, relabelled to class 0
    y[: args.rows // 33] = 0
    results = {}
    for name in NAMES:
        make_detector(name).fit(X[:2000], y[:2000])  # warm-up: numba compile / cache load
        fits, scores = [], []
        for _ in range(args.repeat):
            det = make_detector(name)
            t = time.perf_counter()
            det.fit(X, y)
            fits.append(time.perf_counter() - t)
            t = time.perf_counter()
            det.suspicion(X, y)
            scores.append(time.perf_counter() - t)
        results[name] = {"fit_s": float(np.median(fits)), "score_s": float(np.median(scores))}
        print(f"| {name} | {results[name]['fit_s']:.2f} s | {results[name]['score_s']:.2f} s | "
              f"{args.rows / (results[name]['fit_s'] + results[name]['score_s']) / 1e6:.2f} M rows/s |", flush=True)
    return results


if __name__ == "__main__":
    if args.what == "quality":
        print("recall / precision / ROC-AUC (mean over seeds); clean: share of rows flagged")
        print("| dataset | attack | rate | " + " | ".join(NAMES) + " | cleanlab (flips only) |")
        figures = quality()
    else:
        print(f"{args.rows:,} x 32 float64, 10 classes, {args.threads} thread(s), median of {args.repeat}")
        print("| detector | fit | score | throughput |")
        figures = timing()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)
