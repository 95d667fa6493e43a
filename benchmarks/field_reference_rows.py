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

``--in-memory`` fits the default detectors through the decision layer in this process instead, twice per
batch: without trusted rows, and with the held-out rows as ``X_reference`` (the default set then adds
``novelty``, as ``screen --reference`` does). Both land in the JSON (``poisonguard`` and ``with_reference``) and
in one printed row, with the clean rows flagged as counts; the row ids, the batch's and the trusted rows', are text,
as the screen hashes them (``novelty`` samples a class's trusted rows by id, so without the trusted rows' own ids
the fit differs from the screen's wherever a class has more than 5,000 of them: flights, diamonds)::

    python benchmarks/field_reference_rows.py --in-memory --tables loans --json both.json
    python benchmarks/field_reference_rows.py --in-memory --tables flights --cases door3,door10 --json some.json
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


def in_memory(frame, mask: np.ndarray, trusted=None) -> dict:
    """run.py's figures for the default screen fitted in this process (``trusted``: the held-out rows, or None)."""
    import time

    import run as fieldtest  # main() put ../shared/fieldtest on the path

    from poisonguard.detectors import DETECTORS, EnsembleDetector
    from poisonguard.pipelines.screen import DEFAULT_DETECTORS

    feats = [c for c in frame.columns if c not in ("id", "label")]
    names = (*DEFAULT_DETECTORS, "novelty") if trusted is not None else DEFAULT_DETECTORS
    t = time.perf_counter()
    det = EnsembleDetector(detectors=[DETECTORS[n]() for n in names], feature_names=feats)
    X, y = frame[feats].to_numpy(float), frame["label"].to_numpy(object)
    det.fit(X, y, row_ids=frame["id"].astype(str).to_numpy(object),
            X_reference=None if trusted is None else trusted[feats].to_numpy(float),
            y_reference=None if trusted is None else trusted["label"].to_numpy(object),
            reference_row_ids=None if trusted is None else trusted["id"].astype(str).to_numpy(object))
    screened = det.screen(det.model_, X, y)
    f = screened.flagged
    return {"recall": (f & mask).sum() / max(mask.sum(), 1), "precision": (f & mask).sum() / max(f.sum(), 1),
            "clean_flagged": (f & ~mask).sum() / max((~mask).sum(), 1), "clean_rows_flagged": int((f & ~mask).sum()),
            "auc": fieldtest.auc(mask, screened.suspicion),
            "flagged": int(f.sum()), "poisoned": int(mask.sum()), "secs": time.perf_counter() - t}


def in_memory_cell(m: dict) -> str:
    if np.isnan(m["auc"]):
        return f"clean, {m['clean_rows_flagged']} rows flagged"
    return f"{m['recall']:.2f} / {m['precision']:.2f} / {m['auc']:.5f} ({m['clean_rows_flagged']} clean)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tables", default="flights,diamonds,loans,credit,cells,caravan")
    ap.add_argument("--cases", default=None, help="comma-separated field-test cases (default: all of run.py's)")
    ap.add_argument("--reference-share", type=float, default=0.3, help="the share run.py holds out (default 0.3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flights-rows", type=int, default=100_000)
    ap.add_argument("--json", metavar="FILE", required=True)
    ap.add_argument("--in-memory", action="store_true", help="fit in this process, without and with the trusted rows")
    args = ap.parse_args(argv)
    if not os.path.exists(os.path.join(FIELDTEST, "run.py")):
        print(f"field_reference_rows: {FIELDTEST}/run.py is absent (the project expects ../shared beside it)", file=sys.stderr)
        return 2
    sys.path.insert(0, FIELDTEST)
    import run as fieldtest

    cases = args.cases.split(",") if args.cases else list(fieldtest.CASES)
    unknown = [c for c in cases if c not in fieldtest.CASES]
    if unknown:
        print(f"field_reference_rows: --cases: unknown case {unknown[0]!r} (run.py has {', '.join(fieldtest.CASES)})",
              file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="field-reference-rows-")
    results = []
    try:
        for table in args.tables.split(","):
            base = fieldtest.load(table, args.flights_rows)
            # as run.py holds the trusted rows out: the same generator, the same draw
            held = np.random.default_rng([args.seed, fieldtest.TABLES.index(table), 99]).random(len(base)) < args.reference_share
            trusted, base = base[held].reset_index(drop=True), base[~held].reset_index(drop=True)
            for case in cases:
                rng = np.random.default_rng([args.seed, fieldtest.TABLES.index(table), fieldtest.CASES.index(case)])
                frame, mask = fieldtest.plant(base, case, rng)
                row = {"table": table, "case": case, "rows": len(frame), "cleanlab": None}
                if args.in_memory:
                    row["poisonguard"], row["with_reference"] = (in_memory(frame, mask, trusted if ref else None)
                                                                 for ref in (False, True))
                    print(f"| {table} | {case} | {len(frame)} | {int(mask.sum())} | {in_memory_cell(row['poisonguard'])} | "
                          f"{in_memory_cell(row['with_reference'])} |", flush=True)
                else:
                    row["poisonguard"] = fieldtest.screen(frame, mask, work, None, [])
                    print(f"| {table} | {case} | {len(frame)} | {int(mask.sum())} | {fieldtest.cell(row['poisonguard'])} |",
                          flush=True)
                results.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with open(args.json, "w") as fh:
        json.dump(results, fh, indent=1, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
