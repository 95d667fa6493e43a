"""Shared fixtures. Tests pin BLAS/numba to one thread (DESIGN.md: contention on 2 cores)."""

import os
import re

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402


def plant_backdoor(X, y, *, source, target, features, values, fraction, rng):
    """Copy source-class rows, set ``features`` to ``values``, label them ``target``.

    The poison is ``fraction`` of the target class after the attack. Returns X, y and the
    ground-truth mask.
    """
    n_target = int((y == target).sum())
    k = int(round(fraction * n_target / (1.0 - fraction)))
    rows = rng.choice(np.flatnonzero(y == source), k, replace=False)
    poison = X[rows].copy()
    poison[:, features] = values
    X2 = np.vstack([X, poison])
    y2 = np.concatenate([y, np.full(k, target, dtype=y.dtype)])
    mask = np.zeros(len(y2), dtype=bool)
    mask[len(y):] = True
    return X2, y2, mask


def heavy_tailed_table(seed, n=20000, *, poison=True, extremes=True):
    """Synthetic transactions: skewed, heavy-tailed features (incomes, counts, durations).

    ``extremes`` multiplies a random feature of 0.5% of rows by 50 (rare, clean, extreme).
    ``poison`` plants a dirty-label backdoor: 3% of class 1 are class-0 rows with
    ``n_items`` = 12 and ``duration`` at the data's 99th percentile.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    income = rng.lognormal(10 + 0.3 * y, 0.8)
    n_items = rng.poisson(3 + y) + rng.pareto(2.5, n)
    duration = rng.exponential(30 + 10 * y)
    age = rng.normal(40 + 3 * y, 10)
    score = 0.5 * np.log(income) + 0.1 * age + rng.normal(0, 1, n)
    other = rng.normal(size=(n, 5)) + 0.3 * y[:, None]
    X = np.column_stack([income, n_items, duration, age, score, other])
    if extremes:
        hit = rng.random(n) < 0.005
        X[hit, rng.integers(0, 3, int(hit.sum()))] *= 50
    mask = np.zeros(n, dtype=bool)
    if poison:
        k = int(0.03 * (y == 1).sum() / 0.97)
        rows = rng.choice(np.flatnonzero(y == 0), k, replace=False)
        X[rows, 1] = 12.0
        X[rows, 2] = np.quantile(X[:, 2], 0.99)
        y[rows] = 1
        mask[rows] = True
    columns = ["income", "n_items", "duration", "age", "score"] + [f"x{i}" for i in range(5)]
    return X, y, mask, columns


@pytest.fixture(scope="session")
def cancer():
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    return X, y


@pytest.fixture(scope="session")
def cancer_backdoor(cancer):
    """Breast-cancer data with 5% of the benign class (1) being triggered malignant rows."""
    X, y = cancer
    rng = np.random.default_rng(0)
    features = [1, 28, 9]  # mean texture, worst symmetry, mean fractal dimension
    return plant_backdoor(X, y, source=0, target=1, features=features, values=X[:, features].max(axis=0), fraction=0.05, rng=rng)


def write_frame(path, frame: pd.DataFrame) -> str:
    path = str(path)
    if path.endswith(".csv"):
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def recall_precision(mask: np.ndarray, flagged: np.ndarray) -> tuple[float, float]:
    """Recall and precision of ``flagged`` against the poison ``mask`` (0 where undefined)."""
    tp = int((mask & flagged).sum())
    return tp / max(int(mask.sum()), 1), tp / max(int(flagged.sum()), 1)


def fit_in_parts(det, X, y, ids, parts, order=None, reference=None):
    """The pipeline's way to fit: per-batch statistics, merged in ``order``, then ``advance``.

    ``parts`` are row-index arrays (the batches), merged in ``order`` (default: as given).
    Passes in ``det.reference_stages`` read ``reference = (X_ref, y_ref)`` in three
    batches, or nothing. Returns the fitted model.
    """
    order = list(range(len(parts)) if order is None else order)
    state = det.initial_state(X.shape[1])
    for stage in range(det.n_stages):
        if stage in det.reference_stages:
            batches = [] if reference is None else [
                (reference[0][p], reference[1][p], p) for p in np.array_split(np.arange(len(reference[0])), 3)]
        else:
            batches = [(X[parts[i]], y[parts[i]], ids[parts[i]]) for i in order]
        merged = {}
        for Xb, yb, ib in batches:
            for key, stat in det.batch_statistics(stage, state, Xb, yb, ib).items():
                merged[key] = merged[key].merge(stat) if key in merged else stat
        state = det.advance(stage, state, merged)
    return state


# -- the real tables in ../shared/data (CI has them beside the project) ------------------------------
DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def real_frame(name: str) -> tuple[pd.DataFrame, list]:
    """A table in ../shared/data and its feature columns: the numeric columns missing in at most 20% of rows,
    complete rows only (as the field test reads them)."""
    path = os.path.join(DATA, f"{name}.parquet")
    if not os.path.exists(path):
        pytest.skip(f"real table {path} is absent (the project expects ../shared/data beside it)")
    df = pd.read_parquet(path)
    feats = [c for c in df.select_dtypes("number").columns if c != "id" and df[c].isna().mean() <= 0.2]
    return df.dropna(subset=feats).reset_index(drop=True), feats


def field_test_module(table: str):
    """``../shared/fieldtest/run.py`` as a module (its reader, its planting, its cleanlab reference); skips where it
    or the table it is asked for is absent."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fieldtest", "run.py")
    if not os.path.exists(path) or not os.path.exists(os.path.join(DATA, f"{table}.parquet")):
        pytest.skip(f"the field test {path} or its table {table} is absent (the project expects ../shared beside it)")
    import importlib.util

    spec = importlib.util.spec_from_file_location("poisonguard_field_test", path)
    field_test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(field_test)
    return field_test


def field_test_batch(table: str, case: str, reference_share: float = 0.0):
    """``(frame, feature columns, truth)``: the field test's own batch (``../shared/fieldtest/run.py``: its reader, its
    planting, its seed 0), so a test can hold a case the field test showed. With ``reference_share``, the batch of
    ``run.py --reference-share``, and its trusted rows as a fourth item."""
    field_test = field_test_module(table)
    base, reference = field_test.load(table, 100_000), None
    if reference_share > 0:  # as run.py holds the trusted rows out
        held = np.random.default_rng([0, field_test.TABLES.index(table), 99]).random(len(base)) < reference_share
        base, reference = base[~held].reset_index(drop=True), base[held].reset_index(drop=True)
    rng = np.random.default_rng([0, field_test.TABLES.index(table), field_test.CASES.index(case)])  # as run.py seeds it
    frame, truth = field_test.plant(base, case, rng)
    feats = [c for c in frame.columns if c not in ("id", "label")]
    return (frame, feats, truth) if reference is None else (frame, feats, truth, reference)


def field_test_arrays(table: str, case: str):
    """``(X, y, ids, truth)`` of :func:`field_test_batch`: features, labels and the ids as text, as the screen reads
    them."""
    frame, feats, truth = field_test_batch(table, case)
    ids = frame["id"].astype(str).to_numpy(object)
    return frame[feats].to_numpy(float), frame["label"].to_numpy(object), ids, truth


def real_table(name: str):
    """``(X, y, ids)`` of a table in ../shared/data (see :func:`real_frame`)."""
    df, feats = real_frame(name)
    return df[feats].to_numpy(float), df["label"].astype(str).to_numpy(object), df["id"].to_numpy()


def plant_field_backdoor(X, y, rate, seed, columns=(0, 3), jitter=0.0):
    """As the field test plants it: ``rate`` of all rows, from the largest class, get column ``columns[0]`` at
    its 99th percentile and ``columns[1]`` at its 1st (in diamonds, carat and price), plus normal noise of
    ``jitter`` times the column's inter-quartile range (the field test's jdoor cases: 0.02), and the
    second-largest class's label. ``(X, y, truth)``."""
    rng = np.random.default_rng(seed)
    big, second = pd.Series(y).value_counts().index[:2]
    rows = rng.choice(np.flatnonzero(y == big), int(rate * len(y)), replace=False)
    X, y = X.copy(), y.copy()
    for j, q in zip(columns, (0.99, 0.01)):
        iqr = np.subtract(*np.quantile(X[:, j], [0.75, 0.25]))
        X[rows, j] = np.quantile(X[:, j], q) + rng.normal(0.0, jitter * iqr, len(rows))
    y[rows] = second
    truth = np.zeros(len(y), bool)
    truth[rows] = True
    return X, y, truth


# -- the command line ---------------------------------------------------------------------------
#: The one line a usage or input error prints on stderr (argparse's usage errors name the subcommand).
ERROR_LINE = re.compile(r"^poisonguard(?: screen| demo| simulate| run| history)?: error: \S")


def run_cli(argv) -> int:
    """Call the CLI's ``main``; its exit code (a SystemExit escaping ``main`` counts as its code)."""
    from poisonguard.pipelines.cli import EXIT_ERROR, main

    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:  # main() is meant to return; test_cli_errors checks that it does
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR


def one_error_line(err: str, *fragments) -> str:
    """stderr holds exactly one non-empty line: a poisonguard error naming every fragment."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert ERROR_LINE.match(lines[0]), lines[0]
    for fragment in fragments:
        assert str(fragment) in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]
