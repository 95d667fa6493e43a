"""Benchmark: the confident-learning label detector at scale, against cleanlab on the same rows.

Run from the repository root (poisonguard installed with the ``bench`` extra, e.g. in .venv)::

    python benchmarks/bench_label_scale.py                      # 1,000,000 x 32, 10 classes, and 250,000 rows
    python benchmarks/bench_label_scale.py --rows 100000        # one smaller size (smoke run)

Data: a seeded table of ``--rows`` rows, 32 float32 features and 10 classes whose means
overlap, so the labels are only partly predictable; 5% of the labels are flipped to another
class at random (the ground truth). Written once per size as Parquet.

Each contender runs in a fresh interpreter, which prints its own peak resident memory
(``ru_maxrss``), so one's memory never counts against the other:

* **poisonguard**: ``poisonguard screen DATA --detectors label --no-validation`` (Beam's
  in-process runner, one worker): read, fit on the bounded hash sample (100,000 rows, 5 hash
  folds of ``HistGradientBoostingClassifier`` drawn twice) with the counts of exact copies
  (at most 1,000,000 distinct rows), the confident joint over every row, the decision layer,
  and writing cleaned/ and quarantine/;
* **cleanlab**: pandas reads the same file, scikit-learn's ``cross_val_predict`` gives
  out-of-fold probabilities from the same model (3 folds, 100 rounds), and
  ``cleanlab.filter.find_label_issues`` finds the issues: all of it in memory.

Reported per size: wall time, peak memory, ROC-AUC of each one's score against the flips
(poisonguard's ``suspicion``, cleanlab's self-confidence quality score), and rows flagged.
No assertions: these machines are shared, so read the ratios, not the seconds.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--rows", type=int, action="append", help="table sizes (default: 250,000 and 1,000,000)")
p.add_argument("--features", type=int, default=32)
p.add_argument("--classes", type=int, default=10)
p.add_argument("--flip", type=float, default=0.05)
p.add_argument("--threads", type=int, default=1, help="OpenMP / BLAS / numba threads for both (default 1)")
p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
p.add_argument("--workdir", default=None, help="where to write the data and outputs (default: a temporary directory)")
args = p.parse_args()
sizes = args.rows or [250_000, 1_000_000]

POISONGUARD = """
import resource, sys
from poisonguard.pipelines.cli import main
rc = main(sys.argv[1:])
print("PEAK", rc, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

CLEANLAB = """
import resource, sys, json
import numpy as np, pyarrow.parquet as pq
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
table = pq.read_table(sys.argv[1]).to_pandas()
features = [c for c in table.columns if c.startswith("f")]
X, labels = table[features].to_numpy(), table["label"].to_numpy()
model = HistGradientBoostingClassifier(max_iter=100, random_state=0)
probs = cross_val_predict(model, X, labels, cv=StratifiedKFold(3, shuffle=True, random_state=0), method="predict_proba")
issues = find_label_issues(labels, probs)
quality = get_label_quality_scores(labels, probs, method="self_confidence")
np.save(sys.argv[2], 1.0 - quality)
print("PEAK", int(issues.sum()), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def make_table(path, rows, seed=0):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = rng.integers(0, args.classes, rows)
    centres = rng.normal(scale=0.6, size=(args.classes, args.features))
    X = (rng.normal(size=(rows, args.features)) + centres[y]).astype(np.float32)
    flipped = rng.random(rows) < args.flip
    given = np.where(flipped, (y + rng.integers(1, args.classes, rows)) % args.classes, y)
    frame = pd.DataFrame(X, columns=[f"f{j:02d}" for j in range(args.features)])
    frame.insert(0, "id", np.arange(rows, dtype=np.int64))
    frame["label"] = given
    frame["flipped"] = flipped
    frame.to_parquet(path, index=False)


def run(code, argv, env):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    peak = [line for line in done.stdout.splitlines() if line.startswith("PEAK")]
    if not peak:
        sys.exit(f"bench_label_scale: a contender failed:\n{done.stderr[-3000:]}")
    _, result, kb = peak[-1].split()
    return seconds, int(kb) / 1024, int(result)


def main():
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq
    from sklearn.metrics import roc_auc_score

    env = {**os.environ, **{v: str(args.threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                            "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}}
    work = args.workdir or tempfile.mkdtemp(prefix="pg-label-scale-")
    os.makedirs(work, exist_ok=True)
    results = []
    for rows in sizes:
        data = os.path.join(work, f"label_{rows}.parquet")
        if not os.path.exists(data):
            make_table(data, rows)
        truth = pq.read_table(data, columns=["id", "flipped"]).to_pandas().set_index("id")["flipped"]
        out = os.path.join(work, f"out_{rows}")
        seconds, peak, _ = run(POISONGUARD, ["screen", data, "--out", out, "--detectors", "label", "--id-column", "id",
                                             "--label-column", "label", "--feature-columns",
                                             ",".join(f"f{j:02d}" for j in range(args.features)), "--no-validation",
                                             "--max-flagged-fraction", "1"], env)
        parts = {d: pq.read_table(os.path.join(out, d), columns=["id", "suspicion"]).to_pandas()
                 if os.listdir(os.path.join(out, d)) else pd.DataFrame({"id": [], "suspicion": []})
                 for d in ("cleaned", "quarantine")}
        scored, quarantined = pd.concat(parts.values()), parts["quarantine"]
        flips = truth.loc[scored["id"]].to_numpy()
        ours = {"contender": "poisonguard screen --detectors label", "rows": rows, "seconds": round(seconds, 1),
                "peak_mb": round(peak), "roc_auc": round(roc_auc_score(flips, scored["suspicion"]), 4),
                "flagged": int(len(quarantined)), "flagged_flips": int(truth.loc[quarantined["id"]].sum())}
        scores = os.path.join(work, f"cleanlab_{rows}.npy")
        seconds, peak, n_issues = run(CLEANLAB, [data, scores], env)
        theirs = {"contender": "cleanlab find_label_issues + cross_val_predict", "rows": rows,
                  "seconds": round(seconds, 1), "peak_mb": round(peak),
                  "roc_auc": round(roc_auc_score(truth.to_numpy(), np.load(scores)), 4), "flagged": n_issues,
                  "flagged_flips": None}
        results += [ours, theirs]
        for r in (ours, theirs):
            print(json.dumps(r), flush=True)
    print("\n| rows | contender | time (s) | peak memory (MB) | ROC-AUC on the flips | rows flagged |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['rows']:,} | {r['contender']} | {r['seconds']:,} | {r['peak_mb']:,} | {r['roc_auc']} | {r['flagged']:,} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
