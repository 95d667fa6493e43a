"""Benchmark: SpectralSignatureDetector against an in-memory per-class full-SVD baseline.

Run from the repository root (poisonguard installed, e.g. in .venv)::

    python benchmarks/bench_spectral.py            # 1,000,000 x 64 float32 rows, 10 classes
    python benchmarks/bench_spectral.py --quick    # 100,000 rows, a fast smoke run
    python benchmarks/bench_spectral.py --threads 2 --json out.json --profile

What is measured, in one process on the same seeded data:

* **detector**: ``SpectralSignatureDetector().fit(X, y)`` (three chunked passes), then
  scoring: ``suspicion(X, y)`` and the default ("auto") decision ``suspicion > threshold``
  (what ``predict`` does; checked once against ``predict``, untimed).
* **baseline**: the spectral-signature defence as ART implements it
  (``art.defences.detector.poison.SpectralSignatureDefense``): per class, copy the class's rows
  out of X, centre them, full thin SVD ``np.linalg.svd(M, full_matrices=False)``, score each
  row on the top right singular vector ``v``, flag the top ``eps_multiplier * expected_pp_poison``
  of every class. ART computes ``v`` from the centred rows but scores ``|x @ v|`` on the
  *uncentred* rows; here the centred rows are scored (``(M @ v) ** 2``) so that both methods
  compute the same quantity. ART's defaults (``expected_pp_poison=0.33``, ``eps_multiplier=1.5``)
  flag the top 49.5% of every class; that rule is reported, and, for context, the same rule
  told the true poison rate (1.5 x 3%).

Timings (``time.perf_counter``) are medians over ``--repeat`` interleaved runs, after a numba
warm-up on 1,000 rows whose time (JIT compile or on-disk cache load) is reported apart.
Memory is measured in one separate run per method, after the input array exists:
``tracemalloc`` peak (numpy registers its array buffers with it, but not LAPACK/BLAS workspace
that numpy or OpenBLAS allocate with plain malloc) and the peak resident set above the RSS at
the start (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``; for these runs the glibc
mmap threshold is pinned at 64 KiB so that large frees go back to the OS). Both are given as multiples of
``X.nbytes``. The data: 10 classes with different means, features correlated through a random
mixing matrix and on different scales/offsets; 3% of class 0 shifted by 3 marginal standard
deviations in 4 features (a backdoor-like cluster), for precision/recall. No assertions.
"""

import argparse
import os
import sys

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--rows", type=int, default=1_000_000)
p.add_argument("--features", type=int, default=64)
p.add_argument("--classes", type=int, default=10)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--repeat", type=int, default=3)
p.add_argument("--threads", type=int, default=1, help="BLAS / OpenMP / numba threads (default 1)")
p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
p.add_argument("--quick", action="store_true", help="100,000 rows (smoke run)")
p.add_argument("--profile", action="store_true", help="cProfile one detector fit, top 15 by cumtime")
args = p.parse_args()
if args.quick:
    args.rows = 100_000
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
for var in THREAD_VARS:  # before numpy / numba are imported
    os.environ[var] = str(args.threads)

import ctypes  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

try:  # glibc, for the memory runs (after the timings: pinning slows every allocation)
    LIBC = ctypes.CDLL("libc.so.6")
except OSError:
    LIBC = None

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_info  # noqa: E402

from poisonguard.detectors import SpectralSignatureDetector  # noqa: E402
from poisonguard.detectors import _kernels  # noqa: E402

ART_EXPECTED_PP_POISON, ART_EPS_MULTIPLIER = 0.33, 1.5
POISON_RATE, POISON_FEATURES, POISON_SHIFT = 0.03, 4, 3.0


def make_data(n_rows, d, K, seed):
    """Seeded rows: (X float32 (N, d), y int64 (N,), is_poison bool (N,))."""
    rng = np.random.default_rng(seed)
    per = n_rows // K
    mixing = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
    scale = np.exp(rng.uniform(-1.0, 2.0, d)).astype(np.float32)
    offset = rng.normal(0.0, 10.0, d).astype(np.float32)
    class_means = rng.normal(0.0, 1.0, (K, d)).astype(np.float32)
    y = rng.permutation(np.repeat(np.arange(K, dtype=np.int64), per))
    Z = rng.standard_normal((len(y), d), dtype=np.float32)
    Z += class_means[y]
    X = Z @ mixing.T
    del Z
    X *= scale
    X += offset
    marginal_sd = scale * np.linalg.norm(mixing, axis=1)
    poison = rng.choice(np.flatnonzero(y == 0), size=round(POISON_RATE * per), replace=False)
    feats = rng.choice(d, size=POISON_FEATURES, replace=False)
    X[np.ix_(poison, feats)] += POISON_SHIFT * marginal_sd[feats]
    is_poison = np.zeros(len(y), dtype=bool)
    is_poison[poison] = True
    return np.ascontiguousarray(X), y, is_poison


def run_detector(X, y):
    t0 = time.perf_counter()
    det = SpectralSignatureDetector().fit(X, y)
    t1 = time.perf_counter()
    suspicion = det.suspicion(X, y)
    flags = suspicion > det.model_.thresholds_for(y)
    t2 = time.perf_counter()
    return {"fit": t1 - t0, "score": t2 - t1, "total": t2 - t0}, det, suspicion, flags


def run_baseline(X, y, flag_fraction=ART_EPS_MULTIPLIER * ART_EXPECTED_PP_POISON):
    t0 = time.perf_counter()
    scores = np.empty(len(X), dtype=np.float64)
    flags = np.zeros(len(X), dtype=bool)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        Xc = X[rows]  # a copy, as ART's segment_by_class makes
        M = Xc - Xc.mean(axis=0)
        _, _, vt = np.linalg.svd(M, full_matrices=False)
        s = (M @ vt[0]) ** 2
        scores[rows] = s
        flags[rows] = s >= np.quantile(s, max(1.0 - flag_fraction, 0.0))  # ART keeps score < cutoff
    return {"total": time.perf_counter() - t0}, scores, flags


def per_class_top(scores, y, fraction):
    flags = np.zeros(len(scores), dtype=bool)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        flags[rows] = scores[rows] >= np.quantile(scores[rows], 1.0 - fraction)
    return flags


def detection(flags, is_poison):
    tp = int(np.sum(flags & is_poison))
    n_flag, n_poison = int(flags.sum()), int(is_poison.sum())
    return {"flagged": n_flag, "true_pos": tp, "precision": tp / n_flag if n_flag else float("nan"),
            "recall": tp / n_poison if n_poison else float("nan")}


def _status_kib(key):
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))


def measure_memory(fn):
    """Peak bytes above the state before ``fn()``: (tracemalloc peak, resident-set peak or None)."""
    gc.collect()
    if LIBC is not None:  # pin the mmap threshold so freed large buffers leave the RSS at once
        LIBC.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        LIBC.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        rss0 = _status_kib("VmRSS")
    except OSError:
        rss0 = None
    tracemalloc.start()
    fn()
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss_peak = None if rss0 is None else (_status_kib("VmHWM") - rss0) * 1024
    return traced_peak, rss_peak


def main():
    print(f"threads: --threads {args.threads}; " + ", ".join(f"{v}={os.environ[v]}" for v in THREAD_VARS))
    for lib in threadpool_info():
        print(f"  {lib['user_api']}: {lib['internal_api']} {lib.get('version')} num_threads={lib['num_threads']}"
              f" ({os.path.basename(lib['filepath'])})")
    X, y, is_poison = make_data(args.rows, args.features, args.classes, args.seed)
    mb = X.nbytes / 1e6
    print(f"data: {X.shape[0]:,} x {X.shape[1]} {X.dtype}, {args.classes} classes, seed {args.seed}, "
          f"X.nbytes = {mb:.1f} MB; poison: {is_poison.sum():,} rows of class 0")

    # numba warm-up: first call compiles (or loads the on-disk cache), second is steady state
    Xw, yw = X[:1000], y[:1000]
    t0 = time.perf_counter()
    run_detector(Xw, yw)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_detector(Xw, yw)
    second = time.perf_counter() - t0
    kernels = (_kernels.standardize_clip, _kernels.project_standardized)
    misses = sum(sum(k.stats.cache_misses.values()) for k in kernels)
    hits = sum(sum(k.stats.cache_hits.values()) for k in kernels)
    run_baseline(Xw, yw)  # LAPACK first call
    print(f"warm-up (1,000 rows): first fit+score {first:.3f} s, second {second:.3f} s -> "
          f"compile/cache-load ~ {first - second:.3f} s (numba cache: {misses} compiled, {hits} loaded)")

    runs_det, runs_base = [], []
    for _ in range(args.repeat):
        gc.collect()
        runs_det.append(run_detector(X, y)[0])
        gc.collect()
        runs_base.append(run_baseline(X, y)[0])
    med = {f"detector_{k}": statistics.median(r[k] for r in runs_det) for k in ("fit", "score", "total")}
    med["baseline_total"] = statistics.median(r["total"] for r in runs_base)
    ratio = med["baseline_total"] / med["detector_total"]

    _, det, suspicion, det_flags = run_detector(X, y)
    predict_agrees = bool(np.array_equal(det.predict(X, y) == -1, det_flags))
    _, base_scores, base_flags = run_baseline(X, y)
    del det, suspicion
    mem = {"detector": measure_memory(lambda: run_detector(X, y)), "baseline": measure_memory(lambda: run_baseline(X, y))}
    oracle = per_class_top(base_scores, y, ART_EPS_MULTIPLIER * POISON_RATE)
    det_results = {
        "detector (contamination='auto')": detection(det_flags, is_poison),
        f"baseline, ART default (top {ART_EPS_MULTIPLIER * ART_EXPECTED_PP_POISON:.1%}/class)": detection(base_flags, is_poison),
        f"baseline, told rate (top {ART_EPS_MULTIPLIER * POISON_RATE:.1%}/class)": detection(oracle, is_poison),
    }

    print(f"\ntimings, median of {args.repeat} (s)   " + "  ".join(f"run{i + 1}" for i in range(args.repeat)))
    for key, runs, field in [("detector_fit", runs_det, "fit"), ("detector_score", runs_det, "score"),
                             ("detector_total", runs_det, "total"), ("baseline_total", runs_base, "total")]:
        print(f"  {key:<16} {med[key]:8.3f}        " + "  ".join(f"{r[field]:5.2f}" for r in runs))
    print(f"  ratio baseline / detector: {ratio:.2f}x  (target >= 10x)")
    print(f"\npeak memory above the input (X.nbytes = {mb:.1f} MB)")
    print(f"  {'method':<10} {'tracemalloc MB':>15} {'x input':>8} {'RSS MB':>8} {'x input':>8}")
    for name, (traced, rss) in mem.items():
        rss_txt = f"{rss / 1e6:8.1f} {rss / X.nbytes:8.2f}" if rss is not None else f"{'n/a':>8} {'':>8}"
        print(f"  {name:<10} {traced / 1e6:15.1f} {traced / X.nbytes:8.2f} {rss_txt}")
    print("  (target: input + peak extra < 2 x input, i.e. 'x input' < 1; or < 2 read as extra only)")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"  process ru_maxrss (whole run, data generation included): {maxrss / 1e6:.1f} MB")
    print(f"\ndetection of the {int(is_poison.sum()):,} planted rows")
    print(f"  {'rule':<42} {'flagged':>9} {'precision':>9} {'recall':>7}")
    for name, r in det_results.items():
        print(f"  {name:<42} {r['flagged']:9,} {r['precision']:9.3f} {r['recall']:7.3f}")
    print(f"  detector flags == (predict == -1): {predict_agrees}")

    if args.profile:
        import cProfile
        import pstats

        det = SpectralSignatureDetector()  # wrap its stage hooks (instance attributes) to time each pass
        phase = dict.fromkeys([f"pass {k} {w}" for k in range(det.n_stages) for w in ("batches", "advance")], 0.0)
        hooks = {"batches": det.batch_statistics, "advance": det.advance}

        def timed(what):
            def call(stage, *a, **kw):
                t = time.perf_counter()
                out = hooks[what](stage, *a, **kw)
                phase[f"pass {stage} {what}"] += time.perf_counter() - t
                return out
            return call

        det.batch_statistics, det.advance = timed("batches"), timed("advance")
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.runcall(det.fit, X, y)
        total = time.perf_counter() - t0
        print(f"\ndetector fit by phase (one profiled fit, {total:.3f} s; 'rest' = input validation, hashing, chunking)")
        print("  " + ", ".join(f"{k} {v:.3f}" for k, v in phase.items()) + f", rest {total - sum(phase.values()):.3f}")
        print("profile of that fit (top 15 by cumulative time)")
        pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative").print_stats(15)

    if args.json:
        out = {
            "config": {k: getattr(args, k) for k in ("rows", "features", "classes", "seed", "repeat", "threads")},
            "blas": threadpool_info(), "input_bytes": X.nbytes,
            "warmup_s": {"first": first, "second": second, "numba_compiled": misses, "numba_cache_loaded": hits},
            "runs": {"detector": runs_det, "baseline": runs_base}, "median_s": med, "ratio": ratio,
            "memory_peak_extra_bytes": {k: {"tracemalloc": t, "rss": r} for k, (t, r) in mem.items()},
            "ru_maxrss_bytes": maxrss, "detection": det_results, "predict_agrees": predict_agrees,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
