"""Great Expectations as a stage of the screening job.

One suite (Great Expectations 1.x JSON) is applied to every row the job reads:

* the **contract suite**, built from the data contract: the columns present, the feature
  columns' type, the label and every feature non-null, ids unique; with trusted
  ``--reference`` rows also at least one row, each feature's range (the trusted range widened by a
  tenth of its width on each side), its null rate, its mean (within half a trusted
  standard deviation of the trusted mean) and the set of classes. 1.x has no profiler:
  these facts come from :class:`FrameStatistics`, which combine exactly over chunks;
* or the user's own suite (``--expectations SUITE.json``), applied as written.

Where each expectation is evaluated:

* **row level** (column-map expectations: ``expect_column_values_to_...``): by Great
  Expectations itself, on each chunk (a pandas frame of the chunk's rows in the contract's
  view: valid rows, then invalid rows with unusable values as nulls). The context is built
  once per worker (:meth:`SuiteRunner.start`, called from ``DoFn.setup``). Counts are summed
  across chunks, ``mostly`` is applied to the sums, and every failing row is known by its
  ``row_id``, with the expectations it failed;
* **schema** expectations (columns present, their types): per chunk, and all chunks must
  pass; the observed value is the same in every chunk;
* **dataset level** (row count, uniqueness, mean, min, max, sum, standard deviation): on
  statistics merged over all chunks (exact sums, so the result does not depend on how the
  rows were chunked), never per chunk. The row ids' uniqueness is the duplicate-id check's
  result (:mod:`.ids`: bucketed, flat in memory); no id is kept here. Another column's
  uniqueness keeps its values until the end: memory grows with them.

An expectation that fits none of these (a median, say, which does not combine) is refused
when the suite is loaded, with a one-line error naming the file and the expectation.

Great Expectations is imported lazily: the import costs seconds, and a job without
validation, or a worker that never validates, does not pay it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import threading
from dataclasses import dataclass, field
from fractions import Fraction

import numba
import numpy as np
import pandas as pd
import pyarrow as pa

from ..schemas import ROW_ID, ConfigError
from .ids import Duplicates
from .rows import Contract

#: What a failed expectation does: ``report`` (default) records the failures (report,
#: ``failed_expectations`` column, the verdict line) and nothing else; ``quarantine`` moves
#: valid rows that fail a row-level expectation to ``quarantine/`` and breaches the batch for
#: a failed dataset-level one; ``breach`` breaches the batch for any failed expectation and
#: moves nothing. Reporting is the default because a value beyond the trusted rows' range is
#: not evidence of poison: on the cells table, 30% held out as trusted, the range
#: expectations (widened by a tenth) fail on 2.4% of the clean batch's rows, five times the
#: screen's budget for clean rows.
ON_FAILED = ("quarantine", "breach", "report")

#: Column added to every output: the row-level expectations a row failed, ``; ``-separated (null: none).
FAILED_EXPECTATIONS = "failed_expectations"

#: Rows validated in one Great Expectations run: consecutive chunks of a work unit are validated
#: together up to this many rows (its cost is mostly fixed per run and expectation).
VALIDATION_BLOCK_ROWS = 262_144

#: Values of failing rows kept per expectation in the merged result (the smallest row ids).
PARTIAL_ROWS = 20

DATASET_LEVEL = {
    "expect_table_row_count_to_be_between",
    "expect_table_row_count_to_equal",
    "expect_column_values_to_be_unique",
    "expect_column_mean_to_be_between",
    "expect_column_min_to_be_between",
    "expect_column_max_to_be_between",
    "expect_column_sum_to_be_between",
    "expect_column_stdev_to_be_between",
}
SCHEMA_LEVEL = {
    "expect_column_to_exist",
    "expect_table_columns_to_match_set",
    "expect_table_columns_to_match_ordered_list",
    "expect_table_column_count_to_equal",
    "expect_table_column_count_to_be_between",
    "expect_column_values_to_be_of_type",
    "expect_column_values_to_be_in_type_list",
}
#: Column-map expectations that compare rows with each other or depend on row order: not row level.
_NOT_ROW_LEVEL = {"expect_column_values_to_be_increasing", "expect_column_values_to_be_decreasing"}

REFERENCE_RANGE_MARGIN = 0.1  # of the trusted range, on each side
REFERENCE_MEAN_SDS = 0.5      # the batch mean's allowed distance from the trusted mean, in trusted sds


def _quiet_gx():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # never phone home, whatever the user's settings
    import great_expectations as gx  # noqa: PLC0415 - lazy on purpose: seconds to import

    return gx


_FINGERPRINT_LOCK = threading.Lock()
_FINGERPRINT_OFF = [0, None]  # validations under way in this process, the engine's threshold before the first


@contextlib.contextmanager
def _no_frame_fingerprint():
    """Great Expectations' pandas engine without its batch fingerprint, for the duration of our validations.

    For every frame under ``HASH_THRESHOLD`` (1 GB) the engine hashes the whole frame
    (``pd.util.hash_pandas_object``) into a batch marker that nothing here reads; measured,
    it was 2.5 s of the 3.9 s per million rows that validation cost. The threshold is a
    module constant with no setting, so it is lowered while at least one validation of
    ours runs in the process (a lock and a count, for threaded runners) and restored after.
    """
    from great_expectations.execution_engine import pandas_execution_engine as engine

    if not hasattr(engine, "HASH_THRESHOLD"):  # another version: nothing to switch off
        yield
        return
    with _FINGERPRINT_LOCK:
        if _FINGERPRINT_OFF[0] == 0:
            _FINGERPRINT_OFF[1] = engine.HASH_THRESHOLD
            engine.HASH_THRESHOLD = 0
        _FINGERPRINT_OFF[0] += 1
    try:
        yield
    finally:
        with _FINGERPRINT_LOCK:
            _FINGERPRINT_OFF[0] -= 1
            if _FINGERPRINT_OFF[0] == 0:
                engine.HASH_THRESHOLD = _FINGERPRINT_OFF[1]


def gx_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("great_expectations")
    except Exception:  # pragma: no cover - it is a dependency
        return None


# -- exact, order-independent sums ------------------------------------------------------------
@numba.njit(cache=True)
def _grow(partials, n, x):
    """Add ``x`` to the non-overlapping expansion ``partials[:n]`` (Shewchuk); return the new length."""
    i = 0
    for j in range(n):
        y = partials[j]
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo != 0.0:
            partials[i] = lo
            i += 1
        x = hi
    partials[i] = x
    return i + 1


@numba.njit(cache=True)
def _exact_sums(values, partials_sum, partials_sq):
    """Exact expansions of the sum and of the sum of squares of the finite ``values``.

    Each square is split exactly into a rounded product and its error (Dekker), so both
    sums are exact and their rounding does not depend on how the values were chunked.
    """
    ns, nq = 0, 0
    for x in values:
        if not np.isfinite(x):
            continue
        ns = _grow(partials_sum, ns, x)
        c = 134217729.0 * x
        xh = c - (c - x)
        xl = x - xh
        p = x * x
        e = ((xh * xh - p) + 2.0 * xh * xl) + xl * xl
        nq = _grow(partials_sq, nq, p)
        if e != 0.0:
            nq = _grow(partials_sq, nq, e)
    return ns, nq


def _compact(partials: np.ndarray) -> np.ndarray:
    out = np.zeros(max(len(partials), 1) + 64)
    n = 0
    for x in partials:
        n = _grow(out, n, float(x))
    return out[:n].copy()


@dataclass
class ColumnStatistics:
    """Combinable facts of one numeric column: non-null count, exact sums, extremes."""

    count: int = 0
    nulls: int = 0
    total: np.ndarray = field(default_factory=lambda: np.zeros(0))
    squares: np.ndarray = field(default_factory=lambda: np.zeros(0))
    minimum: float = math.inf
    maximum: float = -math.inf

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(values)
        self.nulls += int(np.isnan(values).sum())
        self.count += int(finite.sum())
        if finite.any():
            ps, pq = np.zeros(128), np.zeros(128)
            ns, nq = _exact_sums(values, ps, pq)
            self.total = _compact(np.concatenate([self.total, ps[:ns]]))
            self.squares = _compact(np.concatenate([self.squares, pq[:nq]]))
            self.minimum = min(self.minimum, float(values[finite].min()))
            self.maximum = max(self.maximum, float(values[finite].max()))

    def merge(self, other: ColumnStatistics) -> ColumnStatistics:
        self.count += other.count
        self.nulls += other.nulls
        self.total = _compact(np.concatenate([self.total, other.total]))
        self.squares = _compact(np.concatenate([self.squares, other.squares]))
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        return self

    @property
    def sum(self) -> float | None:
        return math.fsum(self.total) if self.count else None

    @property
    def mean(self) -> float | None:
        return float(Fraction(math.fsum(self.total)) / self.count) if self.count else None

    @property
    def stdev(self) -> float | None:
        """Sample standard deviation (ddof 1, as pandas and Great Expectations), from exact sums."""
        if self.count < 2:
            return None
        s1 = sum((Fraction(float(x)) for x in self.total), Fraction(0))
        s2 = sum((Fraction(float(x)) for x in self.squares), Fraction(0))
        var = (s2 - s1 * s1 / self.count) / (self.count - 1)
        return math.sqrt(max(float(var), 0.0))


@dataclass
class FrameStatistics:
    """Combinable statistics of contract frames: rows, numeric columns, class counts, values of unique-checked columns."""

    rows: int = 0
    columns: dict = field(default_factory=dict)    # name -> ColumnStatistics
    classes: dict = field(default_factory=dict)    # label -> rows
    label_nulls: int = 0
    unique: dict = field(default_factory=dict)     # name -> [pyarrow arrays of the non-null values]

    def add(self, frame: pd.DataFrame, numeric, label: str | None, unique=()) -> FrameStatistics:
        self.rows += len(frame)
        for name in numeric:
            self.columns.setdefault(name, ColumnStatistics()).add(pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64, na_value=np.nan))
        if label is not None:
            counts = frame[label].value_counts(dropna=True)
            for value, n in counts.items():
                key = _plain(value)
                self.classes[key] = self.classes.get(key, 0) + int(n)
            self.label_nulls += int(frame[label].isna().sum())
        for name in unique:
            values = frame[name]
            values = values[values.notna()]
            self.unique.setdefault(name, []).append(pa.array(values.to_list()) if len(values) else pa.array([], pa.null()))
        return self

    def merge(self, other: FrameStatistics) -> FrameStatistics:
        self.rows += other.rows
        self.label_nulls += other.label_nulls
        for name, cs in other.columns.items():
            if name in self.columns:
                self.columns[name].merge(cs)
            else:
                self.columns[name] = cs
        for key, n in other.classes.items():
            self.classes[key] = self.classes.get(key, 0) + n
        for name, arrays in other.unique.items():
            self.unique.setdefault(name, []).extend(arrays)
        return self

    def duplicates(self, name: str):
        """(non-null values, rows whose value occurs more than once, the duplicated values sorted) of a unique-checked column."""
        arrays = [a for a in self.unique.get(name, []) if len(a)]
        if not arrays:
            return 0, 0, []
        types = {a.type for a in arrays}
        if len(types) > 1:
            arrays = [a.cast(pa.string()) for a in arrays]
        values = pa.concat_arrays(arrays)
        counts = values.value_counts()
        n = counts.field("counts").to_numpy()
        dup = n > 1
        dup_values = sorted(counts.field("values").filter(pa.array(dup)).to_pylist(), key=_sort_key)
        return len(values), int(n[dup].sum()), dup_values


def _plain(value):
    """A JSON-able Python scalar for a pandas/numpy value."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _sort_key(value):
    return (str(type(value).__name__), value if isinstance(value, (int, float, str)) else str(value))


# -- the contract frame ---------------------------------------------------------------------------
def contract_frame(valid: pa.Table, invalid: pa.Table, contract: Contract) -> pd.DataFrame:
    """The rows of one chunk as Great Expectations sees them: valid rows, then invalid rows.

    Column dtypes are fixed by the contract, not by the chunk (features float64; integer
    labels pandas ``Int64``; every other column object), so an expectation on a type gives
    the same answer for every chunk. In invalid rows a value that is missing or not a
    number is null.
    """
    n_valid = valid.num_rows
    frame = {ROW_ID: pd.Series(valid.column(ROW_ID).to_pylist() + invalid.column(ROW_ID).to_pylist(), dtype=object)}
    for name in contract.columns:
        if name == ROW_ID:
            continue
        raw = invalid.column(name).to_pylist() if name in invalid.column_names else [None] * invalid.num_rows
        if name in contract.feature_columns:
            bad = pd.to_numeric(pd.Series(raw, dtype=object), errors="coerce").to_numpy(np.float64, na_value=np.nan)
            values = np.concatenate([valid.column(name).to_numpy(), bad]) if n_valid else bad
            frame[name] = pd.Series(values, dtype=np.float64)
        elif name == contract.label_column and pa.types.is_integer(contract.label_type):
            bad = pd.to_numeric(pd.Series(raw, dtype=object), errors="coerce")
            bad = bad.where(bad.isna() | (bad == bad.round()))
            frame[name] = pd.Series(np.concatenate([valid.column(name).to_numpy().astype(object), bad.astype(object).to_numpy()]),
                                    dtype=object).astype("Int64") if len(frame[ROW_ID]) else pd.Series([], dtype="Int64")
        else:
            frame[name] = pd.Series(valid.column(name).to_pylist() + [None if v is None or v == "" else v for v in raw], dtype=object)
    return pd.DataFrame(frame, index=pd.RangeIndex(n_valid + invalid.num_rows))


def frame_columns(contract: Contract) -> list[str]:
    return [ROW_ID, *(c for c in contract.columns if c != ROW_ID)]


# -- suites ---------------------------------------------------------------------------------------
def _expectation(kind: str, **kwargs) -> dict:
    return {"type": kind, "kwargs": kwargs}


def contract_suite(contract: Contract, reference: FrameStatistics | None = None) -> dict:
    """The data contract as a Great Expectations suite (JSON), with the trusted rows' facts when given."""
    label = contract.label_column
    ex = [
        _expectation("expect_table_columns_to_match_set", column_set=frame_columns(contract), exact_match=True),
        _expectation("expect_column_values_to_be_unique", column=ROW_ID),
        _expectation("expect_column_values_to_not_be_null", column=label),
    ]
    if pa.types.is_integer(contract.label_type):
        # GX matches pandas' nullable integer dtype by its class name (``pd.Int64Dtype``); "Int64" matches nothing
        ex.append(_expectation("expect_column_values_to_be_in_type_list", column=label, type_list=["Int64Dtype", "int64"]))
    if reference is not None:  # an empty batch is accepted unless there is a reference to compare it with
        ex.insert(0, _expectation("expect_table_row_count_to_be_between", min_value=1))
    if reference is not None and reference.classes:
        ex.append(_expectation("expect_column_values_to_be_in_set", column=label,
                               value_set=sorted(reference.classes, key=_sort_key)))
    for name in contract.feature_columns:
        ex.append(_expectation("expect_column_values_to_be_of_type", column=name, type_="float64"))
        stats = reference.columns.get(name) if reference is not None else None
        if stats is None or stats.count == 0:
            ex.append(_expectation("expect_column_values_to_not_be_null", column=name))
            continue
        null_rate = stats.nulls / reference.rows if reference.rows else 0.0
        ex.append(_expectation("expect_column_values_to_not_be_null", column=name,
                               **({"mostly": _round_down(1.0 - null_rate)} if null_rate > 0 else {})))
        margin = REFERENCE_RANGE_MARGIN * (stats.maximum - stats.minimum)
        ex.append(_expectation("expect_column_values_to_be_between", column=name,
                               min_value=_bound(stats.minimum - margin, False), max_value=_bound(stats.maximum + margin, True)))
        if stats.count >= 2:
            sd = stats.stdev or 0.0
            ex.append(_expectation("expect_column_mean_to_be_between", column=name,
                                   min_value=_bound(stats.mean - REFERENCE_MEAN_SDS * sd, False),
                                   max_value=_bound(stats.mean + REFERENCE_MEAN_SDS * sd, True)))
    source = "data contract and trusted reference rows" if reference is not None else "data contract"
    return {"name": "poisonguard_contract", "expectations": ex,
            "meta": {"poisonguard": {"built_from": source, "reference_rows": reference.rows if reference is not None else None}},
            "notes": None}


def _sig(x: float, digits: int = 6) -> float:
    """``x`` to ``digits`` significant digits: a suite a person can read and edit."""
    if x == 0 or not math.isfinite(x):
        return float(x)
    return float(f"{x:.{digits}g}")


def _bound(x: float, up: bool, digits: int = 6) -> float:
    """``x`` to ``digits`` significant digits, rounded outwards (up for an upper bound), so a bound never excludes ``x``."""
    r = _sig(x, digits)
    if math.isfinite(x) and x != 0 and (r < x if up else r > x):
        step = 10.0 ** (math.floor(math.log10(abs(x))) - digits + 1)
        r = _sig(r + step if up else r - step, digits)
    return r


def _round_down(x: float, digits: int = 6) -> float:
    return math.floor(x * 10**digits) / 10**digits


def load_suite(path: str) -> dict:
    """Read a Great Expectations suite JSON file; one-line errors name the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            suite = json.load(fh)
    except OSError as exc:
        raise ConfigError(f"--expectations {path}: cannot read it ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise ConfigError(f"{path}: expected a Great Expectations suite: an object with an 'expectations' list")
    for i, e in enumerate(suite["expectations"]):
        if not isinstance(e, dict) or not isinstance(e.get("type"), str) or not isinstance(e.get("kwargs", {}), dict):
            raise ConfigError(f"{path}: expectations[{i}]: expected an object with 'type' (a string) and 'kwargs' (an object)")
    suite.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    return suite


def scope_of(kind: str, where: str) -> str:
    """``row``, ``schema`` or ``dataset``; a ConfigError for an expectation that cannot be combined over chunks."""
    if kind in DATASET_LEVEL:
        return "dataset"
    if kind in SCHEMA_LEVEL:
        return "schema"
    _quiet_gx()
    from great_expectations.exceptions import ExpectationNotFoundError
    from great_expectations.expectations.expectation import ColumnMapExpectation, ColumnPairMapExpectation, MulticolumnMapExpectation
    from great_expectations.expectations.registry import get_expectation_impl

    try:
        cls = get_expectation_impl(kind)
    except ExpectationNotFoundError:
        raise ConfigError(f"{where}: unknown expectation type '{kind}'") from None
    if issubclass(cls, (ColumnMapExpectation, ColumnPairMapExpectation, MulticolumnMapExpectation)) and kind not in _NOT_ROW_LEVEL \
            and "unique" not in kind:
        return "row"
    supported = ", ".join(sorted(DATASET_LEVEL | SCHEMA_LEVEL))
    raise ConfigError(f"{where}: '{kind}' cannot be evaluated chunk by chunk and merged; use row-level "
                      f"(expect_column_values_to_...) expectations or one of: {supported}")


def check_suite(suite: dict, contract: Contract, where: str) -> list[str]:
    """The scope of each expectation; errors name the expectation and a column the rows do not have."""
    columns = set(frame_columns(contract))
    _quiet_gx()
    import great_expectations as gx

    try:
        gx.ExpectationSuite(**{k: v for k, v in suite.items() if k in ("name", "expectations", "meta", "notes", "id")})
    except Exception as exc:  # GX's own check of types and kwargs
        raise ConfigError(f"{where}: not a valid Great Expectations suite: {str(exc).strip().splitlines()[0]}") from None
    scopes = []
    for i, e in enumerate(suite["expectations"]):
        here = f"{where}: expectations[{i}] ({e['type']})"
        scopes.append(scope_of(e["type"], here))
        kw = e.get("kwargs", {})
        named = [kw[k] for k in ("column", "column_A", "column_B") if isinstance(kw.get(k), str)]
        named += [c for c in kw.get("column_list", []) if isinstance(c, str)]
        for c in named:
            if c not in columns:
                raise ConfigError(f"{here}: no column '{c}' (columns: {', '.join(sorted(columns))})")
    return scopes


# -- running a suite on chunks ------------------------------------------------------------------
def _label(e: dict) -> str:
    kw = e.get("kwargs", {})
    col = kw.get("column") or (",".join(kw["column_list"]) if isinstance(kw.get("column_list"), list) else None)
    if col is None and kw.get("column_A"):
        col = f"{kw['column_A']},{kw.get('column_B')}"
    return f"{e['type']}({col})" if col else e["type"]


@dataclass(frozen=True)
class Validation:
    """The suite, its scopes and the failure policy: what the screen pass needs (picklable, no GX objects)."""

    suite: dict
    scopes: tuple[str, ...]
    on_failed: str = "report"
    source: str = "contract"

    def names(self) -> list[str]:
        return [_label(e) for e in self.suite["expectations"]]

    def stats_columns(self, contract: Contract):
        """(numeric columns, columns whose values are kept for a uniqueness check) of the merged statistics.

        Row ids are never kept: derived ids are unique by construction, and a user's ids are
        counted by the duplicate-id check (:mod:`.ids`), whose result the merged result
        reuses. Keeping them made validation's memory grow by about 160 bytes a row.
        """
        numeric, unique = set(contract.feature_columns), set()
        for e, scope in zip(self.suite["expectations"], self.scopes):
            col = e.get("kwargs", {}).get("column")
            if scope == "dataset" and col:
                if e["type"] != "expect_column_values_to_be_unique":
                    numeric.add(col)
                elif col != ROW_ID:
                    unique.add(col)
        return sorted(numeric), sorted(unique)


class SuiteRunner:
    """Runs the per-chunk part of a suite with Great Expectations; :meth:`start` once per worker."""

    def __init__(self, validation: Validation, contract: Contract):
        self.validation, self.contract = validation, contract
        self._batch_definition = None

    def start(self) -> SuiteRunner:
        """Build the ephemeral context, data source and suite (once per worker: ``DoFn.setup``)."""
        if self._batch_definition is not None:
            return self
        gx = _quiet_gx()
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        asset = context.data_sources.add_pandas("poisonguard").add_dataframe_asset("chunk")
        self._batch_definition = asset.add_batch_definition_whole_dataframe("chunk")
        self._indices = [i for i, s in enumerate(self.validation.scopes) if s != "dataset"]
        self._suite = None
        if self._indices:
            chunk_suite = gx.ExpectationSuite(name="poisonguard_chunk", expectations=[
                copy.deepcopy(self.validation.suite["expectations"][i]) for i in self._indices])
            self._suite = context.suites.add(chunk_suite)
            self._ids = {e.id: i for e, i in zip(self._suite.expectations, self._indices)}
        return self

    def check(self, valid: pa.Table, invalid: pa.Table, order: tuple) -> ChunkValidation:
        """Validate one chunk: failing rows (positions in valid, then invalid) and the chunk's combinable result."""
        return self.check_frame(contract_frame(valid, invalid, self.contract), order)

    def check_block(self, chunks) -> list[ChunkValidation]:
        """Validate several chunks in one Great Expectations run; one result per chunk.

        Great Expectations' cost is mostly a fixed cost per expectation and run, so a block
        of chunks costs little more than one chunk. The block's combinable result goes with
        its first chunk (the others carry empty ones): the merged totals are the same as
        chunk by chunk.
        """
        if not chunks:
            return []
        frames = [contract_frame(c.valid, c.invalid, self.contract) for c in chunks]
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        block = self.check_frame(frame, (chunks[0].shard_index, chunks[0].number))
        out, start = [], 0
        for i, f in enumerate(frames):
            failed = block.failed[start:start + len(f)]
            start += len(f)
            out.append(ChunkValidation(failed, block.accumulator if i == 0 else ValidationAccumulator()))
        assert start == len(block.failed)
        return out

    def check_frame(self, frame: pd.DataFrame, order: tuple) -> ChunkValidation:
        self.start()
        names = self.validation.names()
        numeric, unique = self.validation.stats_columns(self.contract)
        stats = FrameStatistics().add(frame, numeric, self.contract.label_column, unique)
        acc = ValidationAccumulator(stats=stats)
        failed = {}  # frame position -> names of the row-level expectations it failed
        if self._suite is not None and len(frame):
            with _no_frame_fingerprint():
                result = self._batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(
                    self._suite, result_format={"result_format": "COMPLETE"})
            row_ids = frame[ROW_ID].to_numpy()
            for r in result.results:
                i = self._ids[r.expectation_config.id]
                res = dict(r.result or {})
                exc = r.exception_info or {}
                if exc.get("raised_exception"):
                    acc.errors[i] = str(exc.get("exception_message"))
                    continue
                if self.validation.scopes[i] == "row" or "unexpected_count" in res:
                    positions = [int(p) for p in res.get("unexpected_index_list") or []]
                    for p in positions:
                        failed.setdefault(p, []).append(names[i])
                    values = res.get("unexpected_list") or []
                    partial = sorted(((str(row_ids[p]), _plain(v)) for p, v in zip(positions, values)), key=lambda t: t[0])
                    acc.rows[i] = RowCounts(int(res.get("element_count", len(frame))), int(res.get("missing_count", 0) or 0),
                                            int(res.get("unexpected_count", 0)), "missing_count" in res, partial[:PARTIAL_ROWS])
                else:
                    acc.schema[i] = (order, bool(r.success), _jsonable(res))
        texts = np.full(len(frame), None, dtype=object)
        for p, failed_names in failed.items():
            texts[p] = "; ".join(failed_names)
        return ChunkValidation(texts, acc)


@dataclass
class RowCounts:
    element: int
    missing: int
    unexpected: int
    has_missing: bool
    partial: list  # [(row_id, value)], the smallest row ids

    def merge(self, other: RowCounts) -> RowCounts:
        return RowCounts(self.element + other.element, self.missing + other.missing, self.unexpected + other.unexpected,
                         self.has_missing, sorted(self.partial + other.partial, key=lambda t: t[0])[:PARTIAL_ROWS])


@dataclass
class ValidationAccumulator:
    """A chunk's (or merged chunks') validation: row-level counts, schema results, statistics."""

    rows: dict = field(default_factory=dict)     # expectation index -> RowCounts
    schema: dict = field(default_factory=dict)   # index -> (chunk order, success, result of the first chunk)
    errors: dict = field(default_factory=dict)   # index -> exception message
    stats: FrameStatistics = field(default_factory=FrameStatistics)
    failed_rows: int = 0                         # valid + invalid rows failing at least one row-level expectation
    quarantined: int = 0                         # valid rows moved to quarantine for it

    def merge(self, other: ValidationAccumulator) -> ValidationAccumulator:
        for i, rc in other.rows.items():
            self.rows[i] = self.rows[i].merge(rc) if i in self.rows else rc
        for i, (order, ok, res) in other.schema.items():
            if i in self.schema:
                mine = self.schema[i]
                first = min(mine, (order, ok, res), key=lambda t: t[0])
                self.schema[i] = (first[0], mine[1] and ok, first[2])
            else:
                self.schema[i] = (order, ok, res)
        for i, msg in other.errors.items():
            self.errors.setdefault(i, msg)
        self.stats.merge(other.stats)
        self.failed_rows += other.failed_rows
        self.quarantined += other.quarantined
        return self


@dataclass
class ChunkValidation:
    failed: np.ndarray   # per frame row: the row-level expectations it failed, '; '-joined, or None
    accumulator: ValidationAccumulator


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- merged result ----------------------------------------------------------------------------
def _between(x, kw) -> bool:
    if x is None:
        return False
    lo, hi = kw.get("min_value"), kw.get("max_value")
    if lo is not None and (x <= lo if kw.get("strict_min") else x < lo):
        return False
    if hi is not None and (x >= hi if kw.get("strict_max") else x > hi):
        return False
    return True


def _mostly(kw, nonmissing: int, unexpected: int) -> bool:
    if nonmissing == 0:
        return True
    mostly = kw.get("mostly", 1.0)
    return (nonmissing - unexpected) / nonmissing >= (1.0 if mostly is None else mostly)


def _row_result(rc: RowCounts, kw) -> tuple[bool, dict]:
    nonmissing = rc.element - rc.missing
    res = {
        "element_count": rc.element,
        "unexpected_count": rc.unexpected,
        "unexpected_percent": 100.0 * rc.unexpected / nonmissing if nonmissing else None,
        "partial_unexpected_list": [_jsonable(v) for _, v in rc.partial],
        "partial_unexpected_index_list": [{ROW_ID: r} for r, _ in rc.partial],
    }
    if rc.has_missing:
        res.update({
            "missing_count": rc.missing,
            "missing_percent": 100.0 * rc.missing / rc.element if rc.element else None,
            "unexpected_percent_total": 100.0 * rc.unexpected / rc.element if rc.element else None,
            "unexpected_percent_nonmissing": 100.0 * rc.unexpected / nonmissing if nonmissing else None,
        })
    return _mostly(kw, nonmissing, rc.unexpected), res


def _dataset_result(kind: str, kw: dict, stats: FrameStatistics, duplicates: Duplicates) -> tuple[bool, dict]:
    if kind == "expect_table_row_count_to_be_between":
        return _between(stats.rows, kw), {"observed_value": stats.rows}
    if kind == "expect_table_row_count_to_equal":
        return stats.rows == kw.get("value"), {"observed_value": stats.rows}
    col = kw["column"]
    if kind == "expect_column_values_to_be_unique":
        if col == ROW_ID:  # every row has an id; the duplicate-id check counted the repeats
            nonmissing, unexpected = stats.rows, duplicates.rows
            dup_values = sorted((i for i, _ in duplicates.examples), key=_sort_key)
        else:
            nonmissing, unexpected, dup_values = stats.duplicates(col)
        rc = RowCounts(stats.rows, stats.rows - nonmissing, unexpected, True, [])
        ok, res = _row_result(rc, kw)
        res["partial_unexpected_list"] = [_jsonable(v) for v in dup_values[:PARTIAL_ROWS]]
        res.pop("partial_unexpected_index_list")
        return ok, res
    cs = stats.columns.get(col, ColumnStatistics())
    observed = {
        "expect_column_mean_to_be_between": cs.mean,
        "expect_column_min_to_be_between": cs.minimum if cs.count else None,
        "expect_column_max_to_be_between": cs.maximum if cs.count else None,
        "expect_column_sum_to_be_between": cs.sum,
        "expect_column_stdev_to_be_between": cs.stdev,
    }[kind]
    return _between(observed, kw), {"observed_value": observed}


def merged_result(validation: Validation, acc: ValidationAccumulator | None, duplicates: Duplicates | None = None) -> dict:
    """Great Expectations' suite-result JSON for the whole run, from the merged chunk results and
    the duplicate-id check's result (``None``: no id repeats)."""
    acc = acc or ValidationAccumulator()
    duplicates = duplicates or Duplicates()
    results = []
    for i, (e, scope) in enumerate(zip(validation.suite["expectations"], validation.scopes)):
        kw = e.get("kwargs", {})
        exception = {"raised_exception": False, "exception_traceback": None, "exception_message": None}
        if i in acc.errors:
            ok, res = False, {}
            exception = {"raised_exception": True, "exception_traceback": None, "exception_message": acc.errors[i]}
        elif scope == "dataset":
            ok, res = _dataset_result(e["type"], kw, acc.stats, duplicates)
        elif i in acc.rows:
            ok, res = _row_result(acc.rows[i], kw)
        elif i in acc.schema:
            _, ok, res = acc.schema[i]
        else:  # no rows were read at all
            ok, res = True, {}
        results.append({
            "success": bool(ok),
            "expectation_config": {"type": e["type"], "kwargs": kw, "meta": e.get("meta", {})},
            "result": _jsonable(res),
            "meta": {"poisonguard": {"scope": scope, "name": _label(e)}},
            "exception_info": exception,
        })
    n_ok = sum(r["success"] for r in results)
    return {
        "success": n_ok == len(results),
        "results": results,
        "suite_name": validation.suite.get("name"),
        "suite_parameters": {},
        "statistics": {
            "evaluated_expectations": len(results),
            "successful_expectations": n_ok,
            "unsuccessful_expectations": len(results) - n_ok,
            "success_percent": 100.0 * n_ok / len(results) if results else None,
        },
        "meta": {"great_expectations_version": gx_version(), "evaluated": "per chunk (row and schema level), "
                 "on merged statistics (dataset level)"},
    }


def validation_section(validation: Validation, acc: ValidationAccumulator | None, duplicates: Duplicates | None = None) -> dict:
    """The report's ``validation`` section: the policy, the failures in short, and GX's merged result."""
    gx_result = merged_result(validation, acc, duplicates)
    failed = [r for r in gx_result["results"] if not r["success"]]
    return {
        "suite": validation.suite.get("name"),
        "source": validation.source,
        "on_failed_expectation": validation.on_failed,
        "evaluated": len(gx_result["results"]),
        "failed": [r["meta"]["poisonguard"]["name"] for r in failed],
        "failed_row_level": [r["meta"]["poisonguard"]["name"] for r in failed if r["meta"]["poisonguard"]["scope"] == "row"],
        "failed_dataset_level": [r["meta"]["poisonguard"]["name"] for r in failed if r["meta"]["poisonguard"]["scope"] != "row"],
        "rows_failing": acc.failed_rows if acc else 0,
        "rows_quarantined": acc.quarantined if acc else 0,
        "great_expectations": gx_result,
    }


# -- acting on the failures ---------------------------------------------------------------------
def failed_column(failed: np.ndarray) -> pa.Array:
    return pa.array(failed, pa.string())


def apply_to_screened(screened, checked: ChunkValidation, on_failed: str):
    """Mark a screened chunk's rows with the expectations they failed; with ``quarantine``, move failing cleaned rows.

    Every output gets the ``failed_expectations`` column; the chunk's summary carries the
    validation results and the moved rows count as quarantined.
    """
    from dataclasses import replace

    from ..schemas import REASON

    n_valid = len(screened.flagged)
    failed_valid, failed_invalid = checked.failed[:n_valid], checked.failed[n_valid:]
    flagged = np.asarray(screened.flagged, dtype=bool)
    in_cleaned, in_quarantine = failed_valid[~flagged], failed_valid[flagged]
    cleaned = screened.cleaned.append_column(FAILED_EXPECTATIONS, failed_column(in_cleaned))
    quarantine = screened.quarantine.append_column(FAILED_EXPECTATIONS, failed_column(in_quarantine))
    both = np.not_equal(in_quarantine, None)
    if both.any():  # flagged rows that also failed expectations: the reason says both
        old = quarantine.column(REASON).to_pylist()
        new = [r if names is None else f"{r}; failed expectations: {names}" if r else f"failed expectations: {names}"
               for r, names in zip(old, in_quarantine)]
        quarantine = quarantine.set_column(quarantine.schema.get_field_index(REASON), REASON, pa.array(new, pa.string()))
    invalid = screened.invalid.append_column(FAILED_EXPECTATIONS, failed_column(failed_invalid))
    acc = checked.accumulator
    acc.failed_rows += int(np.not_equal(checked.failed, None).sum())
    if on_failed == "quarantine":
        move = np.not_equal(in_cleaned, None)
        if move.any():
            out = cleaned.filter(pa.array(move))
            reasons = pa.array([f"failed expectations: {names}" for names in in_cleaned[move]], pa.string())
            out = out.set_column(out.schema.get_field_index(REASON), REASON, reasons)
            cleaned = cleaned.filter(pa.array(~move))
            quarantine = pa.concat_tables([quarantine, out])
            acc.quarantined += int(move.sum())
    summary = screened.summary
    moved = screened.cleaned.num_rows - cleaned.num_rows
    summary.cleaned -= moved
    summary.quarantine += moved
    summary.validation = acc
    return replace(screened, cleaned=cleaned, quarantine=quarantine, invalid=invalid, summary=summary)
