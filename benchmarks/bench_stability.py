"""Stability of the default screen's flag sets over detector seeds and id types (issue 8).

For each table of ``../shared/data`` and each attack case of the field test (planted by
``../shared/fieldtest/run.py``, code that is not ours), the screen's default detectors
(``--detectors`` for others) are fitted through the decision layer in memory ``--seeds`` times with the
row ids as integers and as text: 2 x seeds flag sets per case. Every one of them should
flag the same rows; the table reports the smallest pairwise Jaccard index of the flag sets
(1.00: identical; "-" where no run flags anything), how many rows the runs flag (fewest
and most), and the recall of the planted rows at the worst run.

    python benchmarks/bench_stability.py                                  # every table, 4 cases
    python benchmarks/bench_stability.py --tables credit,cells --cases clean,door3 --seeds 3
    python benchmarks/bench_stability.py --detectors pattern --cases clean,door1,door3,jdoor3

Seeds move the hash keys of the detectors' bounded samples (which rows are sampled) and the
label detector's folds; the id type moves the row hashes themselves. The field test's own
table reader and planting are used unchanged, with its seed (0), so the planted rows are
the ones of a field-test run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIELDTEST = os.path.join(HERE, "..", "..", "shared", "fieldtest")


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def flag_sets(X, y, ids, seeds: int, detectors: list[str]) -> list[np.ndarray]:
    from poisonguard.detectors import DETECTORS, EnsembleDetector

    out = []
    for seed, as_text in itertools.product(range(seeds), (False, True)):
        row_ids = ids.astype(str).astype(object) if as_text else ids
        det = EnsembleDetector(detectors=[DETECTORS[name](seed=seed) for name in detectors])
        det.fit(X, y, row_ids=row_ids)
        out.append(det.predict(X, y) < 0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", default="flights,diamonds,loans,credit,cells,caravan")
    ap.add_argument("--cases", default="clean,door3,jdoor3,flip10")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--detectors", default=None, help="comma-separated (default: the screen's default set)")
    ap.add_argument("--flights-rows", type=int, default=100_000)
    args = ap.parse_args(argv)
    if not os.path.exists(os.path.join(FIELDTEST, "run.py")):
        print(f"bench_stability: {FIELDTEST}/run.py is absent (the project expects ../shared beside it)", file=sys.stderr)
        return 2
    sys.path.insert(0, FIELDTEST)
    import run as fieldtest

    from poisonguard.pipelines.screen import DEFAULT_DETECTORS

    detectors = args.detectors.split(",") if args.detectors else list(DEFAULT_DETECTORS)

    print(f"{','.join(detectors)}: {args.seeds} detector seeds x int and text ids = {2 * args.seeds} runs per case")
    print("| table | case | rows | planted | smallest Jaccard | rows flagged (fewest-most) | recall at the worst run | secs |")
    print("|---|---|---|---|---|---|---|---|")
    for table in args.tables.split(","):
        frame = fieldtest.load(table, args.flights_rows)
        for case in args.cases.split(","):
            t = time.perf_counter()
            rng = np.random.default_rng([0, fieldtest.TABLES.index(table), fieldtest.CASES.index(case)])  # as run.py seeds it
            poisoned, truth = fieldtest.plant(frame, case, rng)
            feats = [c for c in poisoned.columns if c not in ("id", "label")]
            X = poisoned[feats].to_numpy(float)
            y = poisoned["label"].to_numpy(object)
            sets = flag_sets(X, y, poisoned["id"].to_numpy(np.int64), args.seeds, detectors)
            pairs = [jaccard(a, b) for a, b in itertools.combinations(sets, 2)]
            counts = [int(s.sum()) for s in sets]
            worst = min(pairs) if any(counts) else None
            recall = min(np.count_nonzero(s & truth) / truth.sum() for s in sets) if truth.any() else None
            print(f"| {table} | {case} | {len(X):,} | {int(truth.sum()):,} | {'-' if worst is None else f'{worst:.3f}'} | "
                  f"{min(counts):,}-{max(counts):,} | {'-' if recall is None else f'{recall:.2f}'} | {time.perf_counter() - t:.0f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
