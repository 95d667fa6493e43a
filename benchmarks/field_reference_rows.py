"""The field test's ``--reference-share`` batches screened without ``--reference``: the same rows, for a fair comparison.

``../shared/fieldtest/run.py --reference-share S`` holds a share ``S`` of each clean table out as
trusted rows and plants the attacks in the rest; its run without a reference plants into the
whole table, so the two differ in their rows as well as in the reference. This script rebuilds
run.py's held-out batches with run.py's own code and seeds (``load``, ``plant``, ``screen``) and
screens them with the default detectors and no ``--reference``, writing run.py's JSON format, so
that the two can be set side by side (issue 8: with a reference, never worse than without)::

    python benchmarks/field_reference_rows.py --tables caravan,cells,credit --json same_rows.json
    python ../shared/fieldtest/run.py --no-cleanlab --reference-share 0.3 --tables caravan,cells,credit --json with_ref.json

Run it inside the project's virtualenv (``poisonguard`` on the PATH), as run.py is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np

FIELDTEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "fieldtest")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tables", default="flights,diamonds,loans,credit,cells,caravan")
    ap.add_argument("--reference-share", type=float, default=0.3, help="the share run.py holds out (default 0.3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flights-rows", type=int, default=100_000)
    ap.add_argument("--json", metavar="FILE", required=True)
    args = ap.parse_args(argv)
    if not os.path.exists(os.path.join(FIELDTEST, "run.py")):
        print(f"field_reference_rows: {FIELDTEST}/run.py is absent (the project expects ../shared beside it)", file=sys.stderr)
        return 2
    sys.path.insert(0, FIELDTEST)
    import run as fieldtest

    work = tempfile.mkdtemp(prefix="field-reference-rows-")
    results = []
    try:
        for table in args.tables.split(","):
            base = fieldtest.load(table, args.flights_rows)
            # as run.py holds the trusted rows out: the same generator, the same draw
            held = np.random.default_rng([args.seed, fieldtest.TABLES.index(table), 99]).random(len(base)) < args.reference_share
            base = base[~held].reset_index(drop=True)
            for case in fieldtest.CASES:
                rng = np.random.default_rng([args.seed, fieldtest.TABLES.index(table), fieldtest.CASES.index(case)])
                frame, mask = fieldtest.plant(base, case, rng)
                measured = fieldtest.screen(frame, mask, work, None, [])
                print(f"| {table} | {case} | {len(frame)} | {int(mask.sum())} | {fieldtest.cell(measured)} |", flush=True)
                results.append({"table": table, "case": case, "rows": len(frame), "poisonguard": measured, "cleanlab": None})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with open(args.json, "w") as fh:
        json.dump(results, fh, indent=1, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
