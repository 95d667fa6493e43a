"""Run history and drift: one record per screening run in an SQLite store, and a robust alarm against past runs.

``poisonguard screen --history PATH`` (or a job file's ``history`` key) compares the run with the
last runs in the store before its report is written, then appends the run's record once its
outputs are published. The store is plain SQLite (standard library ``sqlite3``) in WAL mode, so
runs started at once each land, and anyone can query it with SQL; its tables are :data:`DDL`
(README, "History and drift").

Everything a record holds comes from the run's ``report.json``: the counts, the flagged share per
class and per detector, an estimated poison rate, the expectations' pass rate, and quantiles of
``suspicion`` (-log10 of the combined p-value, one scale for every detector, so runs compare).

The alarm (:class:`DriftRule`): a metric of this run (the flagged share of all valid rows and of
each detector; the 99th percentile of ``suspicion``) rings when it exceeds the median of the same
metric over the last ``window`` comparable runs (same detectors) by more than a tolerance: ``k``
robust spreads (1.4826 x the median absolute deviation), and never less than a floor (``floor``
for shares, widened by ``k`` binomial standard errors of the share; ``score_floor`` for
suspicion). When it rings, the same test on each class's flagged share and p99 names the classes
where the batch drifted. Fewer than ``min_runs`` comparable runs: no judgement. Only rises ring:
fewer flags are no poisoning alarm.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass

from ..schemas import ConfigError

#: Identifies a poisonguard history store (table ``meta``), and its layout's version.
STORE_FORMAT, STORE_VERSION = "poisonguard-history", 1
#: Seconds a run waits for another run's write to finish before giving up.
BUSY_TIMEOUT_S = 60.0
#: Storey's lambda on the suspicion grid: suspicion < 0.3 is a combined p-value > 10**-0.3 (about 0.501).
STOREY_SUSPICION = 0.3
#: Quantiles of ``suspicion`` kept per run and per class.
QUANTILES = (0.5, 0.9, 0.99)

DDL = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id INTEGER PRIMARY KEY AUTOINCREMENT,
        created TEXT NOT NULL,                -- the report's UTC time, ISO 8601
        out TEXT NOT NULL,                    -- the output directory (report.json is there)
        inputs TEXT NOT NULL,                 -- JSON list of the input paths as given
        detectors TEXT NOT NULL,              -- the decision layer's members, comma-separated
        rows_in INTEGER NOT NULL, valid INTEGER NOT NULL, cleaned INTEGER NOT NULL,
        quarantine INTEGER NOT NULL, invalid INTEGER NOT NULL,
        flagged INTEGER NOT NULL,             -- valid rows the decision layer flagged
        flagged_share REAL,                   -- flagged / valid (NULL without valid rows)
        invalid_share REAL,                   -- invalid / rows_in
        estimated_poison_rate REAL,           -- Storey-type estimate per class from the suspicion histogram, weighted by rows
        expectations_evaluated INTEGER, expectations_failed INTEGER,
        expectation_pass_rate REAL,           -- NULL without a validation stage
        suspicion_p50 REAL, suspicion_p90 REAL, suspicion_p99 REAL, suspicion_max REAL,
        breached INTEGER NOT NULL,            -- 1: exit code 1
        drift INTEGER NOT NULL,               -- 1: the drift alarm rang (breached or not, see --on-drift)
        drift_classes TEXT NOT NULL,          -- JSON list: the classes whose metrics rang
        reasons TEXT NOT NULL,                -- JSON list: the policy's reasons
        poisonguard_version TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS run_classes (
        run_id INTEGER NOT NULL REFERENCES runs(run_id), class TEXT NOT NULL,
        rows INTEGER NOT NULL, flagged INTEGER NOT NULL, flagged_share REAL,
        estimated_poison_rate REAL, suspicion_p50 REAL, suspicion_p90 REAL, suspicion_p99 REAL, suspicion_max REAL,
        PRIMARY KEY (run_id, class)
    )""",
    """CREATE TABLE IF NOT EXISTS run_detectors (
        run_id INTEGER NOT NULL REFERENCES runs(run_id), detector TEXT NOT NULL,
        flagged INTEGER NOT NULL,             -- flagged rows whose reason names this detector
        flagged_share REAL,                   -- of the valid rows
        PRIMARY KEY (run_id, detector)
    )""",
)

_RUN_COLUMNS = ("created", "out", "inputs", "detectors", "rows_in", "valid", "cleaned", "quarantine", "invalid", "flagged",
                "flagged_share", "invalid_share", "estimated_poison_rate", "expectations_evaluated", "expectations_failed",
                "expectation_pass_rate", "suspicion_p50", "suspicion_p90", "suspicion_p99", "suspicion_max", "breached",
                "drift", "drift_classes", "reasons", "poisonguard_version")
_CLASS_COLUMNS = ("rows", "flagged", "flagged_share", "estimated_poison_rate", "suspicion_p50", "suspicion_p90",
                  "suspicion_p99", "suspicion_max")


@dataclass(frozen=True)
class DriftRule:
    """When a run has drifted from its history (see the module docstring); each field is a CLI option."""

    window: int = 20          # --drift-window: the last N comparable runs
    min_runs: int = 5         # --drift-min-runs: fewer comparable runs, no judgement
    k: float = 5.0            # --drift-k: robust spreads (and binomial standard errors) of tolerance
    floor: float = 0.005      # --drift-floor: least rise of a flagged share that rings (0.005: half a percentage point)
    score_floor: float = 1.0  # --drift-score-floor: least rise of suspicion p99 that rings (1: ten times smaller p-values)

    def __post_init__(self):
        for name, least in (("window", 1), ("min_runs", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"--drift-{name.replace('_', '-')}: expected an integer >= {least}, got {value!r}")
        if self.min_runs > self.window:
            raise ConfigError(f"--drift-min-runs: {self.min_runs} is more than --drift-window {self.window}")
        for name in ("k", "floor", "score_floor"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"--drift-{name.replace('_', '-')}: expected a number >= 0, got {value!r}")

    def describe(self) -> str:
        return (f"a metric rings when above the median of the last {self.window} comparable runs (same detectors; at least "
                f"{self.min_runs}) by more than {self.k:g} robust spreads (1.4826 x MAD), at least {self.floor:g} for a flagged "
                f"share (and {self.k:g} binomial standard errors) and {self.score_floor:g} for suspicion p99")


# -- facts of one run, from its report -----------------------------------------------------------
def _histogram(summary: dict) -> tuple[list, int, int]:
    hist = summary["suspicion"]["histogram"]
    return [tuple(b) for b in hist["bins"]], int(hist["below"]), int(hist["above"])


def _quantile(bins, below: int, above: int, n: int, q: float, maximum) -> float | None:
    """Upper edge of the bin holding the q-quantile (as the report's quantiles); past the grid, the maximum."""
    if n == 0:
        return None
    target, seen = q * n, below
    if seen >= target and below:
        return 0.0
    for _, hi, count in sorted(bins):
        seen += count
        if seen >= target:
            return float(hi)
    return None if maximum is None else float(maximum)


def _storey(bins, below: int, n: int, weights: list[float]) -> float | None:
    """Share of non-null rows by Storey's estimator on the combined p-values, corrected for the weighted Bonferroni min.

    pi0 = #{p > lambda} / (n prod_j (1 - lambda w_j)): under the null (members independent) a combined p-value
    ``min_j p_j / w_j`` exceeds lambda with probability prod_j (1 - lambda w_j). Dependent members make clean rows
    exceed it more often, so the estimate errs low. Returns 1 - pi0, clipped to [0, 1].
    """
    if n == 0:
        return None
    lam = 10.0 ** -STOREY_SUSPICION
    high_p = below + sum(count for _, hi, count in bins if hi <= STOREY_SUSPICION + 1e-9)
    pi0 = high_p / (n * math.prod(max(0.0, 1.0 - lam * w) for w in weights))
    return min(1.0, max(0.0, 1.0 - pi0))


def _class_weights(report: dict, label) -> list[float]:
    """The members' weights in a class, from the report's decision section (equal for a class it does not describe)."""
    members = report["decision"]["members"]
    facts = (report["decision"]["classes"].get(label) or {}).get("members", {}) if label is not None else {}
    return [facts.get(m, {}).get("weight") or 1.0 / len(members) for m in members]


def _share(k, n):
    return k / n if n else None


def run_record(report: dict) -> dict:
    """The history record of a screening run: what the store keeps of its report (``history`` section included)."""
    drift = (report.get("history") or {}).get("alarm", False)
    counts, members = report["counts"], report["decision"]["members"]
    classes, parts, merged, below, above, maximum = {}, [], {}, 0, 0, None
    # the classes the report describes one by one, and the rest summed up together (in the batch's totals only)
    other = report.get("other_classes")
    for label, cs in [*report["classes"].items(), *([(None, other["summary"])] if other else [])]:
        bins, b, a = _histogram(cs)
        top = cs["suspicion"]["max"]
        part = {
            "rows": cs["rows"], "flagged": cs["flagged"], "flagged_share": _share(cs["flagged"], cs["rows"]),
            "estimated_poison_rate": _storey(bins, b, cs["rows"], _class_weights(report, label)),
            **{f"suspicion_p{round(q * 100)}": _quantile(bins, b, a, cs["rows"], q, top) for q in QUANTILES},
            "suspicion_max": top,
        }
        parts.append(part)
        if label is not None:
            classes[label] = part
        for lo, hi, count in bins:
            merged[(lo, hi)] = merged.get((lo, hi), 0) + count
        below, above = below + b, above + a
        maximum = top if maximum is None or (top is not None and top > maximum) else maximum
    bins = [(lo, hi, c) for (lo, hi), c in merged.items()]
    rows = sum(c["rows"] for c in parts)
    flagged = sum(c["flagged"] for c in parts)
    validation = report.get("validation")
    evaluated = validation["evaluated"] if validation else None
    failed = len(validation["failed"]) if validation else None
    return {
        "created": report["created"], "out": os.path.dirname(report["outputs"]["cleaned"]) or ".",
        "inputs": json.dumps(report["inputs"]["paths"]), "detectors": ",".join(members),
        **{k: counts[k] for k in ("rows_in", "valid", "cleaned", "quarantine", "invalid")},
        "flagged": flagged, "flagged_share": _share(flagged, rows), "invalid_share": _share(counts["invalid"], counts["rows_in"]),
        # per class (each class has its own null), then weighted by the classes' rows
        "estimated_poison_rate": (sum(c["rows"] * c["estimated_poison_rate"] for c in parts if c["rows"]) / rows
                                  if rows else None),
        "expectations_evaluated": evaluated, "expectations_failed": failed,
        "expectation_pass_rate": (evaluated - failed) / evaluated if evaluated else None,
        **{f"suspicion_p{round(q * 100)}": _quantile(bins, below, above, rows, q, maximum) for q in QUANTILES},
        "suspicion_max": maximum, "breached": int(report["policy"]["breached"]), "drift": int(drift),
        "drift_classes": json.dumps((report.get("history") or {}).get("classes", [])),
        "reasons": json.dumps(report["policy"]["reasons"]), "poisonguard_version": report["poisonguard_version"],
        "classes": classes,
        "detectors_flagged": {name: {"flagged": n, "flagged_share": _share(n, counts["valid"])}
                              for name, n in (report.get("flagged_by") or {}).items()},
    }


# -- the store ----------------------------------------------------------------------------------
def _connect(path: str, create: bool) -> sqlite3.Connection:
    if os.path.isdir(path):
        raise ConfigError(f"--history {path}: is a directory; expected a history file (SQLite)")
    if not create and not os.path.exists(path):
        raise ConfigError(f"--history {path}: no such history file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ConfigError(f"--history {path}: its directory {parent} does not exist")
    try:
        con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise ConfigError(f"--history {path}: cannot open it: {exc}") from None
    try:
        _while_busy(lambda: _open_store(con, path, create))
    except sqlite3.OperationalError as exc:
        con.close()
        if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
            raise ConfigError(f"--history {path}: still locked by another run after {BUSY_TIMEOUT_S:.0f} s") from None
        raise ConfigError(f"--history {path}: not a poisonguard history store ({exc})") from None
    except sqlite3.DatabaseError as exc:
        con.close()
        raise ConfigError(f"--history {path}: not a poisonguard history store ({exc})") from None
    except BaseException:
        con.close()
        raise
    return con


def _open_store(con: sqlite3.Connection, path: str, create: bool) -> None:
    _check_store(con, path)
    if create:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("BEGIN IMMEDIATE")
        try:
            for statement in DDL:
                con.execute(statement)
            con.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?), ('version', ?)", (STORE_FORMAT, str(STORE_VERSION)))
            con.execute("COMMIT")
        finally:
            if con.in_transaction:
                con.execute("ROLLBACK")
        _check_store(con, path)


def _while_busy(step):
    """Run ``step``, again while SQLite answers SQLITE_BUSY without waiting. Its busy timeout does not cover every case:
    a connection that reads a new file while another one turns it into WAL mode is refused at once (seen with two
    screens started together on one new history file)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    pause = 0.01
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _check_store(con: sqlite3.Connection, path: str) -> None:
    """Refuse a database poisonguard did not make, or of another layout version (nothing is written to it)."""
    tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return
    meta = dict(con.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
    if meta.get("format") != STORE_FORMAT:
        raise ConfigError(f"--history {path}: an SQLite database poisonguard did not write (no '{STORE_FORMAT}' entry in "
                          "its meta table); give a new file or a poisonguard history")
    if meta.get("version") != str(STORE_VERSION):
        raise ConfigError(f"--history {path}: history layout version {meta.get('version')}; this poisonguard reads version "
                          f"{STORE_VERSION}")


def recent_runs(path: str, last: int | None = None, *, create: bool = False, detectors: str | None = None) -> list[dict]:
    """The last ``last`` runs (all with None; only those with these ``detectors``, comma-separated, if given), oldest
    first, each with its ``classes`` and ``detectors_flagged``."""
    con = _connect(path, create)
    try:
        con.row_factory = sqlite3.Row
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "runs" not in tables:
            return []
        limit = -1 if last is None else int(last)
        where, params = ("WHERE detectors = ?", (detectors,)) if detectors is not None else ("", ())
        runs = [dict(r) for r in con.execute(f"SELECT * FROM runs {where} ORDER BY run_id DESC LIMIT ?", (*params, limit))][::-1]
        if not runs:
            return []
        ids = tuple(r["run_id"] for r in runs)
        marks = ",".join("?" * len(ids))
        by_id = {r["run_id"]: {**r, "classes": {}, "detectors_flagged": {}} for r in runs}
        for row in con.execute(f"SELECT * FROM run_classes WHERE run_id IN ({marks})", ids):
            row = dict(row)
            by_id[row.pop("run_id")]["classes"][row.pop("class")] = row
        for row in con.execute(f"SELECT * FROM run_detectors WHERE run_id IN ({marks})", ids):
            row = dict(row)
            by_id[row.pop("run_id")]["detectors_flagged"][row.pop("detector")] = row
        return [by_id[i] for i in ids]
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"--history {path}: cannot read it: {exc}") from None
    finally:
        con.close()


def append_run(path: str, record: dict) -> int:
    """Append one run's record (one transaction; concurrent runs wait for each other); its ``run_id``."""
    con = _connect(path, create=True)
    try:
        con.execute("BEGIN IMMEDIATE")
        cur = con.execute(f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)}) VALUES ({', '.join('?' * len(_RUN_COLUMNS))})",
                          [record[c] for c in _RUN_COLUMNS])
        run_id = cur.lastrowid
        con.executemany(f"INSERT INTO run_classes VALUES (?, ?, {', '.join('?' * len(_CLASS_COLUMNS))})",
                        [(run_id, label, *(facts[c] for c in _CLASS_COLUMNS)) for label, facts in record["classes"].items()])
        con.executemany("INSERT INTO run_detectors VALUES (?, ?, ?, ?)",
                        [(run_id, name, f["flagged"], f["flagged_share"]) for name, f in record["detectors_flagged"].items()])
        con.execute("COMMIT")
        return run_id
    except sqlite3.Error as exc:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise ConfigError(f"--history {path}: cannot append the run: {exc}") from None
    finally:
        con.close()


# -- the alarm ----------------------------------------------------------------------------------
def _robust(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    median = _median(values)
    return median, 1.4826 * _median(sorted(abs(v - median) for v in values))


def _median(values: list[float]) -> float:
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def _metrics(record: dict) -> dict:
    """(metric, class, detector) -> (value, rows it is a share of, or None for a score)."""
    out = {("flagged_share", None, None): (record["flagged_share"], record["valid"]),
           ("suspicion_p99", None, None): (record["suspicion_p99"], None)}
    for label, c in record["classes"].items():
        out[("flagged_share", label, None)] = (c["flagged_share"], c["rows"])
        out[("suspicion_p99", label, None)] = (c["suspicion_p99"], None)
    for name, d in record["detectors_flagged"].items():
        out[("flagged_share", None, name)] = (d["flagged_share"], record["valid"])
    return out


def _what(metric: str, label, detector) -> str:
    name = "flagged share" if metric == "flagged_share" else "suspicion p99"
    return name + (f" of class '{label}'" if label is not None else f" by {detector}" if detector is not None else "")


def _fmt(metric: str, value: float) -> str:
    return f"{100 * value:.2g}%" if metric == "flagged_share" else f"{value:.3g}"


def check_drift(record: dict, past: list[dict], rule: DriftRule) -> dict:
    """The report's ``history`` section: this run against the past runs with the same detectors."""
    comparable = [r for r in past if r["detectors"] == record["detectors"]][-rule.window:]
    section = {"compared_runs": len(comparable), "compared_run_ids": [r["run_id"] for r in comparable],
               "rule": rule.describe(), "window": rule.window, "min_runs": rule.min_runs, "k": rule.k, "floor": rule.floor,
               "score_floor": rule.score_floor, "judged": len(comparable) >= rule.min_runs, "alarm": False, "drifts": [],
               "classes": []}
    if not section["judged"]:
        return section
    history = [_metrics(r) for r in comparable]
    for key, (value, n) in _metrics(record).items():
        if value is None:
            continue
        values = [h[key][0] for h in history if key in h and h[key][0] is not None]
        if len(values) < rule.min_runs:
            continue
        median, spread = _robust(values)
        metric = key[0]
        if metric == "flagged_share":
            q = max(median, rule.floor)
            tolerance = max(rule.k * spread, rule.floor, rule.k * math.sqrt(q * (1 - q) / n) if n else 0.0)
        else:
            tolerance = max(rule.k * spread, rule.score_floor)
        if value > median + tolerance:
            section["drifts"].append({
                "metric": metric, "class": key[1], "detector": key[2], "value": value, "median": median, "spread": spread,
                "threshold": median + tolerance, "runs": len(values),
                "message": f"{_what(*key)} {_fmt(metric, value)} above the last {len(values)} runs' median "
                           f"{_fmt(metric, median)} + tolerance {_fmt(metric, tolerance)}",
            })
    # The batch's own metrics ring; a class's say where. A small class's share or p99 moves with a handful of rows
    # (the detectors flag clusters, not independent rows), so on its own it would ring on clean batches.
    section["alarm"] = any(d["class"] is None for d in section["drifts"])
    if not section["alarm"]:
        section["drifts"] = []
    section["drifts"].sort(key=lambda d: d["class"] is not None)
    section["classes"] = sorted({d["class"] for d in section["drifts"] if d["class"] is not None})
    return section


def drift_reason(section: dict) -> str:
    """One line for the policy's reasons, naming the drifts and the classes."""
    drifts = section["drifts"]
    shown = "; ".join(d["message"] for d in drifts[:3]) + (f"; and {len(drifts) - 3} more" if len(drifts) > 3 else "")
    classes = f" in class{'es' if len(section['classes']) > 1 else ''} {', '.join(repr(c) for c in section['classes'])}" \
        if section["classes"] else ""
    return f"drift against the last {section['compared_runs']} runs{classes}: {shown}"


def compare_with_history(report: dict, path: str, rule: DriftRule, on_drift: str) -> dict:
    """Add the ``history`` section to a report; a drift alarm adds a policy reason (and breaches with ``on_drift='breach'``)."""
    record = run_record(report)
    past = recent_runs(path, rule.window, create=True, detectors=record["detectors"])
    section = {"path": path, **check_drift(record, past, rule)}
    report = {**report, "history": section}
    if section["alarm"] and on_drift == "breach":
        report["policy"] = {**report["policy"], "breached": True, "reasons": [*report["policy"]["reasons"], drift_reason(section)]}
    return report


def check_store(path: str) -> None:
    """Before a run: a ConfigError unless ``path`` is a poisonguard history store, or a new file in an existing directory."""
    if os.path.exists(path) or os.path.isdir(path):
        _connect(path, create=False).close()
    elif not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise ConfigError(f"--history {path}: its directory {os.path.dirname(os.path.abspath(path))} does not exist")


# -- printing ------------------------------------------------------------------------------------
def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.2f}%"


def history_table(runs: list[dict]) -> str:
    """The runs as a fixed-width table, oldest first."""
    header = ("run", "created", "rows in", "valid", "flagged", "invalid", "est. poison", "exp. pass", "susp. p99",
              "verdict", "drift")
    rows = [header]
    for r in runs:
        rows.append((str(r["run_id"]), r["created"], f"{r['rows_in']:,}", f"{r['valid']:,}", _pct(r["flagged_share"]),
                     f"{r['invalid']:,}", _pct(r["estimated_poison_rate"]), _pct(r["expectation_pass_rate"]),
                     "" if r["suspicion_p99"] is None else f"{r['suspicion_p99']:.3g}",
                     "BREACHED" if r["breached"] else "accepted",
                     (", ".join(json.loads(r["drift_classes"])) or "yes") if r["drift"] else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {2, 3, 4, 5, 6, 7, 8}
    return "\n".join("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
                     for row in rows)
