"""The trigger-pattern detector over several planting seeds, in memory (issue 9).

For each table of ``../shared/data`` and each case of the field test (planted by
``../shared/fieldtest/run.py``, code that is not ours, with planting seeds 0..``--seeds``-1;
seed 0 is the field test's own), ``--detectors pattern`` is fitted and applied through the
decision layer as the screen does, and the table gives recall / precision, the share of
clean rows flagged, the strongest mined rule, and whether it names both planted features.

    python benchmarks/bench_patterns.py                                   # 6 tables x 5 cases x 3 seeds
    python benchmarks/bench_patterns.py --tables credit --cases door3 --seeds 5

The summary line counts the cases found at recall and precision 0.95 (issue 9's bar).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIELDTEST = os.path.join(HERE, "..", "..", "shared", "fieldtest")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", default="flights,diamonds,loans,credit,cells,caravan")
    ap.add_argument("--cases", default="clean,door1,door3,door10,jdoor3")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--flights-rows", type=int, default=100_000)
    args = ap.parse_args(argv)
    if not os.path.exists(os.path.join(FIELDTEST, "run.py")):
        print(f"bench_patterns: {FIELDTEST}/run.py is absent (the project expects ../shared beside it)", file=sys.stderr)
        return 2
    sys.path.insert(0, FIELDTEST)
    import run as fieldtest

    from poisonguard.detectors import EnsembleDetector, TriggerPatternDetector

    print("| table | case | seed | rows | planted | recall / precision | clean rows flagged | strongest rule | names both | secs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    found = total = 0
    for table in args.tables.split(","):
        frame = fieldtest.load(table, args.flights_rows)
        for case in args.cases.split(","):
            for seed in range(args.seeds):
                t = time.perf_counter()
                rng = np.random.default_rng([seed, fieldtest.TABLES.index(table), fieldtest.CASES.index(case)])  # as run.py seeds it
                poisoned, truth = fieldtest.plant(frame, case, rng)
                feats = [c for c in poisoned.columns if c not in ("id", "label")]
                X, y = poisoned[feats].to_numpy(float), poisoned["label"].to_numpy(object)
                det = EnsembleDetector(detectors=[TriggerPatternDetector()], feature_names=tuple(feats))
                det.fit(X, y, row_ids=poisoned["id"].to_numpy(np.int64))
                flagged = det.screen(det.model_, X, y).flagged
                planted = [f for f in feats if np.count_nonzero(frame[f].to_numpy(float) != poisoned[f].to_numpy(float)[: len(frame)])
                           >= 0.5 * truth.sum()] if truth.any() else []
                rules = [p["rule"] for facts in det.model_.models[0].summary(feats).values() for p in facts["patterns"]]
                tp = np.count_nonzero(flagged & truth)
                recall, precision = tp / max(truth.sum(), 1), tp / max(flagged.sum(), 1)
                if truth.any():
                    total += 1
                    found += recall >= 0.95 and precision >= 0.95
                names = "-" if not planted else ("yes" if rules and all(f in rules[0] for f in planted) else "no")
                print(f"| {table} | {case} | {seed} | {len(X):,} | {int(truth.sum()):,} | "
                      f"{'-' if not truth.any() else f'{recall:.2f} / {precision:.2f}'} | "
                      f"{np.count_nonzero(flagged & ~truth) / max(np.count_nonzero(~truth), 1):.2%} | "
                      f"{rules[0] if rules else '-'} | {names} | {time.perf_counter() - t:.1f} |", flush=True)
    print(f"\n{found} of {total} poisoned cases found at recall and precision 0.95")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
