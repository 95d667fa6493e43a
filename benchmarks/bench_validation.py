"""Benchmark: the cost of the validation stage (Great Expectations) in ``poisonguard screen``.

Run from the repository root (poisonguard installed, e.g. in .venv)::

    python benchmarks/bench_validation.py             # 1,000,000 x 32 rows, 10 classes
    python benchmarks/bench_validation.py --quick     # 100,000 rows
    python benchmarks/bench_validation.py --classes 1000 --json out.json

What is measured: the whole screening job (``run_screen``, Beam's in-process runner, the
``spectral`` detector, default chunks of 65,536 rows) on the same seeded Parquet file,

* **off**: ``--no-validation``;
* **contract**: the default contract suite (columns, types, nulls, unique ids, row count);
* **reference**: the contract suite with a trusted reference (100,000 rows of the same
  distribution): ranges, null rates, means and the class set as well;

interleaved over ``--repeat`` runs, medians reported, and the ratio of each to **off**. The
first validated run in the process pays Great Expectations' import (reported apart, from
a fresh interpreter); later runs reuse it, as a long-lived worker would. Also reported: the
sizes of ``report.json`` and ``report.html`` of the last run. No assertions.
"""

import argparse
import os
import subprocess
import sys

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--rows", type=int, default=1_000_000)
p.add_argument("--features", type=int, default=32)
p.add_argument("--classes", type=int, default=10)
p.add_argument("--repeat", type=int, default=2)
p.add_argument("--threads", type=int, default=1, help="BLAS / numba threads (default 1)")
p.add_argument("--quick", action="store_true", help="100,000 rows (smoke run)")
p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
p.add_argument("--workdir", default=None, help="where to write the data and outputs (default: a temporary directory)")
args = p.parse_args()
if args.quick:
    args.rows = 100_000
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from poisonguard.pipelines import ScreenConfig, run_screen  # noqa: E402
from poisonguard.pipelines.screen import Policy  # noqa: E402


def make_table(path, rows, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, args.classes, rows)
    X = rng.normal(size=(rows, args.features)).astype(np.float32) + (y[:, None] % 7).astype(np.float32) * 0.2
    frame = pd.DataFrame(X, columns=[f"f{j:02d}" for j in range(args.features)])
    frame["label"] = y
    frame.to_parquet(path, index=False, row_group_size=250_000)


def gx_import_seconds():
    code = "import time, os; os.environ['GX_ANALYTICS_ENABLED']='False'; t=time.perf_counter(); import great_expectations; print(time.perf_counter()-t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main():
    work = args.workdir or tempfile.mkdtemp(prefix="bench-validation-")
    data, ref = os.path.join(work, "batch.parquet"), os.path.join(work, "reference.parquet")
    t = time.perf_counter()
    make_table(data, args.rows, 0)
    make_table(ref, min(args.rows, 100_000), 1)
    print(f"data: {args.rows:,} x {args.features} rows, {args.classes} classes ({time.perf_counter() - t:.1f} s to write); "
          f"threads {args.threads}; work dir {work}")
    print(f"great_expectations import (fresh interpreter): {gx_import_seconds():.1f} s")
    modes = {
        "off": dict(validate=False),
        "contract": dict(),
        "reference": dict(reference=(ref,)),
    }
    times = {m: [] for m in modes}
    stage = {m: [] for m in modes}
    out = os.path.join(work, "out")
    for r in range(args.repeat + 1):  # round 0 warms numba and the Great Expectations import
        for mode, extra in modes.items():
            config = ScreenConfig(inputs=(data,), out=out, detectors=("spectral",),
                                  policy=Policy(max_flagged_fraction=1.0, on_failed_expectation="report"), **extra)
            t = time.perf_counter()
            result = run_screen(config)
            elapsed = time.perf_counter() - t
            if r:
                times[mode].append(elapsed)
                stage[mode].append(result.report["timings"]["screen_s"])
            print(f"  round {r} {mode:9s} {elapsed:7.1f} s (screen pass {result.report['timings']['screen_s']:.1f} s)", flush=True)
    off = statistics.median(times["off"])
    figures = {"rows": args.rows, "features": args.features, "classes": args.classes, "threads": args.threads, "modes": {}}
    print(f"\n{'mode':10s} {'job s':>8s} {'ratio':>7s} {'screen pass s':>14s}")
    for mode in modes:
        med = statistics.median(times[mode])
        figures["modes"][mode] = {"job_s": med, "ratio_to_off": med / off, "screen_pass_s": statistics.median(stage[mode])}
        print(f"{mode:10s} {med:8.1f} {med / off:7.2f} {statistics.median(stage[mode]):14.1f}")
    for name in ("report.json", "report.html"):
        path = os.path.join(out, name)
        if os.path.exists(path):
            figures[f"{name}_bytes"] = os.path.getsize(path)
            print(f"{name}: {os.path.getsize(path) / 1024:.0f} KiB")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)


if __name__ == "__main__":
    main()
