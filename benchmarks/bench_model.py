"""Benchmark: ``poisonguard screen --model`` throughput against pyarrow's own read of the same Parquet file.

Run from the repository root (poisonguard installed)::

    python benchmarks/bench_model.py                          # 1M and 4M rows x 32 float32 features, 10 classes
    python benchmarks/bench_model.py --rows 100000 --quick    # smoke run
    python benchmarks/bench_model.py --detectors spectral     # the cheapest model
    python benchmarks/bench_model.py --profile                # cProfile of the 1M screen, top functions
    python benchmarks/bench_model.py --ids                    # rows with a text id column, screened with --id-column

What is measured, all in one invocation on the same seeded files:

* a model is fitted once (``run_fit``) on a trusted file of ``--fit-rows`` rows;
* for each N in ``--rows``, a Parquet file of N rows x ``--features`` float32 features and an
  int64 label (row groups of 65,536 rows) is written, and in a fresh interpreter each:

  - **pyarrow**: ``pq.read_table`` of the file, then the same read as poisonguard's reader does
    it (``ParquetFile.iter_batches`` of 65,536 rows), best of ``--repeat``;
  - **screen --model**: ``run_screen`` with the model, Beam's in-process runner, 1 worker,
    default chunks, with and without the validation stage: end-to-end seconds (from the call
    to the published outputs, Beam start-up, reading, validation, scoring, writing the three
    outputs and the reports), rows/s, and the ratio to pyarrow's read;
  - **peak memory**: the child interpreter's peak resident set (``VmHWM``), and the part of it
    above the interpreter after imports, to see whether it is flat in N.

With ``--ids`` every row has a text id (``tx_id``, ``tx-000000042``) and the model is fitted and
the batches screened with ``--id-column tx_id``: the duplicate-id check runs (without it the
ids are derived from file and offset, unique by construction, and there is nothing to check).

BLAS/numba threads are pinned to ``--threads`` (default 1). No assertions: figures only.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--rows", default="1000000,4000000", help="comma-separated batch sizes (default 1000000,4000000)")
p.add_argument("--features", type=int, default=32)
p.add_argument("--classes", type=int, default=10)
p.add_argument("--fit-rows", type=int, default=200_000)
p.add_argument("--detectors", default=None, help="fit --detectors (default: fit's default set)")
p.add_argument("--repeat", type=int, default=2)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--quick", action="store_true", help="small fit and no validation run")
p.add_argument("--profile", action="store_true", help="cProfile one screen --model run of the first size")
p.add_argument("--ids", action="store_true", help="a text id column (tx_id), screened with --id-column")
p.add_argument("--json", metavar="PATH")
p.add_argument("--workdir", default=None)
p.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
args = p.parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = str(args.threads)


#: The text id column written with --ids.
ID_COLUMN = "tx_id"


def vm_hwm() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def vm_rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def make_table(path, rows, seed):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, rows, 500_000):
        n = min(500_000, rows - start)
        y = rng.integers(0, args.classes, n)
        X = rng.normal(size=(n, args.features)).astype(np.float32) + ((y[:, None] % 7) * 0.3).astype(np.float32)
        columns = {**{f"f{j:02d}": X[:, j] for j in range(args.features)}, "label": y}
        if args.ids:
            columns[ID_COLUMN] = pa.array([f"tx-{i:09d}" for i in range(start, start + n)], pa.string())
        table = pa.table(columns)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=65536)
    writer.close()


def child(kind, path, model, out, validate):
    """One measurement in this (fresh) interpreter; prints JSON."""
    import pyarrow.parquet as pq

    if kind == "pyarrow":
        base = vm_rss()
        best_table = best_iter = float("inf")
        for _ in range(args.repeat):
            t = time.perf_counter()
            table = pq.read_table(path)
            best_table = min(best_table, time.perf_counter() - t)
            rows = table.num_rows
            del table
            t = time.perf_counter()
            for _batch in pq.ParquetFile(path).iter_batches(batch_size=65536):
                pass
            best_iter = min(best_iter, time.perf_counter() - t)
        print(json.dumps({"read_table_s": best_table, "iter_batches_s": best_iter, "rows": rows, "peak_rss": vm_hwm(), "base_rss": base}))
        return
    from poisonguard.pipelines import ScreenConfig, run_screen
    from poisonguard.pipelines.screen import Policy

    import apache_beam  # noqa: F401  (imports before the baseline memory reading)
    import great_expectations  # noqa: F401

    base = vm_rss()
    config = ScreenConfig(inputs=(path,), out=out, model=model, validate=validate == "1", policy=Policy(max_flagged_fraction=1.0),
                          id_column=ID_COLUMN if args.ids else None)
    if kind == "profile":
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        run_screen(config)
        prof.disable()
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(18)
        return
    t = time.perf_counter()
    result = run_screen(config)
    total = time.perf_counter() - t
    print(json.dumps({"total_s": total, "timings": result.report["timings"], "rows": result.report["counts"]["rows_in"],
                      "flagged": result.report["counts"]["quarantine"], "peak_rss": vm_hwm(), "base_rss": base}))


def run_child(*argv):
    out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--repeat", str(args.repeat),
                          *(["--ids"] if args.ids else []), "--child", *argv],
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"child {argv} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def main():
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-model-")
    os.makedirs(workdir, exist_ok=True)
    tag = "-ids" if args.ids else ""
    trusted = os.path.join(workdir, f"trusted{tag}.parquet")
    fit_rows = 50_000 if args.quick else args.fit_rows
    make_table(trusted, fit_rows, seed=1)
    from poisonguard.pipelines.model import FitConfig, run_fit

    model = os.path.join(workdir, f"model{tag}")
    t = time.perf_counter()
    run_fit(FitConfig(inputs=(trusted,), out=model, detectors=tuple(args.detectors.split(",")) if args.detectors else None,
                      id_column=ID_COLUMN if args.ids else None))
    fit_s = time.perf_counter() - t
    manifest = json.load(open(os.path.join(model, "model.json")))
    names = [d["name"] for d in manifest["detectors"]]
    print(f"model: {', '.join(names)} fitted on {fit_rows:,} rows x {args.features} float32 in {fit_s:.1f} s; threads {args.threads}")
    results = []
    for n in [int(r) for r in args.rows.split(",")]:
        path = os.path.join(workdir, f"batch-{n}{tag}.parquet")
        if not os.path.exists(path):
            make_table(path, n, seed=n)
        size = os.path.getsize(path)
        arrow = json.loads(run_child("pyarrow", path, "-", "-", "0"))
        row = {"rows": n, "file_bytes": size, "pyarrow": arrow}
        for validate in (("0",) if args.quick else ("0", "1")):
            out = os.path.join(workdir, f"out-{n}{tag}-{validate}")
            row["screen_validate" if validate == "1" else "screen"] = json.loads(run_child("screen", path, model, out, validate))
        results.append(row)
        read = arrow["iter_batches_s"]
        print(f"\nN = {n:,} rows ({size / 1e6:.0f} MB Parquet)")
        print(f"  pyarrow read_table {arrow['read_table_s']:.3f} s ({n / arrow['read_table_s'] / 1e6:.1f} M rows/s); "
              f"iter_batches(65536) {read:.3f} s ({n / read / 1e6:.1f} M rows/s); peak RSS {arrow['peak_rss'] / 1e6:.0f} MB")
        for key, what in (("screen", "screen --model, no validation"), ("screen_validate", "screen --model, with validation")):
            if key not in row:
                continue
            r = row[key]
            print(f"  {what}: {r['total_s']:.2f} s = {n / r['total_s'] / 1e6:.3f} M rows/s ({r['total_s'] / read:.0f}x pyarrow's read); "
                  f"screen pass {r['timings'].get('screen_s', 0):.2f} s; peak RSS {r['peak_rss'] / 1e6:.0f} MB "
                  f"({(r['peak_rss'] - r['base_rss']) / 1e6:.0f} MB above the interpreter after imports); flagged {r['flagged']:,}")
    if args.profile:
        n = int(args.rows.split(",")[0])
        print("\nprofile of one screen --model run (no validation), by own time:")
        print(run_child("profile", os.path.join(workdir, f"batch-{n}{tag}.parquet"), model, os.path.join(workdir, "out-profile"), "0"))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"detectors": names, "fit_rows": fit_rows, "fit_s": fit_s, "threads": args.threads, "ids": args.ids,
                       "results": results}, fh, indent=2)


if __name__ == "__main__":
    if args.child:
        child(*args.child)
    else:
        main()
