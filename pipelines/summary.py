"""Beam-free, combinable counts of what a screening run wrote, for the report.

Each written chunk yields a :class:`ScreenSummary`; the summaries merge in any order to
the same totals (integer counts, fixed-grid histograms), so the report does not depend on
the runner, worker count or batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: Grid of the per-class suspicion histograms in the report (0 to 50 in steps of 0.1).
REPORT_EDGES = np.linspace(0.0, 50.0, 501)
#: Grid of the per-class histograms of each detector's score: robust standard deviations, -5 to 45 in steps of 0.25 ...
SCORE_EDGES = np.linspace(-5.0, 45.0, 201)
#: ... except the label detector's score, 1 - self-confidence, which lies in [0, 1] (steps of 0.01).
UNIT_EDGES = np.linspace(0.0, 1.0, 101)
#: The most suspicious rows kept for the report.
TOP_ROWS = 20
#: Most points of a ROC or precision-recall curve in the report.
CURVE_POINTS = 200


def score_edges(detector: str) -> np.ndarray:
    return UNIT_EDGES if detector == "label" else SCORE_EDGES


def sig(value, digits: int = 4):
    """A float to ``digits`` significant digits (ints, None and the rest unchanged): numbers rounded to sense."""
    if isinstance(value, (float, np.floating)) and np.isfinite(value):
        return 0.0 if value == 0 else float(f"{float(value):.{digits}g}")
    return value


def histogram_json(edges: np.ndarray, counts: np.ndarray) -> dict:
    """A histogram as explicit ``[lower edge, upper edge, count]`` bins, the empty ones left out.

    ``counts`` has an underflow and an overflow bin around the ``len(edges) - 1`` bins.
    """
    inner = counts[1:-1]
    return {
        "bins": [[sig(edges[i], 6), sig(edges[i + 1], 6), int(inner[i])] for i in np.flatnonzero(inner)],
        "below": int(counts[0]),
        "above": int(counts[-1]),
        "range": [sig(edges[0], 6), sig(edges[-1], 6)],
    }


@dataclass
class ClassSummary:
    rows: int = 0
    flagged: int = 0
    total: float = 0.0
    minimum: float = float("inf")
    maximum: float = float("-inf")
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(len(REPORT_EDGES) + 1, dtype=np.int64))
    scores: dict = field(default_factory=dict)  # detector -> histogram of its score on score_edges(detector)

    def add(self, suspicion: np.ndarray, flagged: np.ndarray, scores: dict | None = None) -> None:
        for name, values in (scores or {}).items():
            edges = score_edges(name)
            hist = self.scores.setdefault(name, np.zeros(len(edges) + 1, dtype=np.int64))
            values = np.asarray(values, dtype=np.float64)
            hist += np.bincount(np.searchsorted(edges, values[np.isfinite(values)], side="right"), minlength=len(hist))
        self.rows += len(suspicion)
        self.flagged += int(flagged.sum())
        if len(suspicion):
            self.total += float(suspicion.sum())
            self.minimum = min(self.minimum, float(suspicion.min()))
            self.maximum = max(self.maximum, float(suspicion.max()))
            self.histogram += np.bincount(np.searchsorted(REPORT_EDGES, suspicion, side="right"), minlength=len(self.histogram))

    def merge(self, other: ClassSummary) -> None:
        self.rows += other.rows
        self.flagged += other.flagged
        self.total += other.total
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        self.histogram += other.histogram
        for name, hist in other.scores.items():
            self.scores[name] = self.scores[name] + hist if name in self.scores else hist.copy()

    def quantile(self, q: float) -> float | None:
        """Upper edge of the histogram bin holding the q-quantile (None when empty or off the grid)."""
        if self.rows == 0:
            return None
        k = int(np.searchsorted(np.cumsum(self.histogram), q * self.rows))
        if k >= len(REPORT_EDGES):
            return None
        return float(REPORT_EDGES[k])

    def to_json(self) -> dict:
        return {
            "rows": self.rows,
            "flagged": self.flagged,
            "suspicion": {
                "mean": sig(self.total / self.rows) if self.rows else None,
                "min": sig(self.minimum) if self.rows else None,
                "max": sig(self.maximum) if self.rows else None,
                "p50": sig(self.quantile(0.5), 6),
                "p90": sig(self.quantile(0.9), 6),
                "p99": sig(self.quantile(0.99), 6),
                "histogram": histogram_json(REPORT_EDGES, self.histogram),
            },
            "scores": {name: histogram_json(score_edges(name), hist) for name, hist in sorted(self.scores.items())},
        }


@dataclass
class ScreenSummary:
    """Row counts per output, per class, and confusion counts when ground truth is present."""

    rows_in: int = 0
    cleaned: int = 0
    quarantine: int = 0
    invalid: int = 0
    classes: dict = field(default_factory=dict)
    # ground truth (a boolean 'poisoned' column in the input): counts of (poisoned, flagged)
    truth_rows: int = 0
    true_positive: int = 0
    false_positive: int = 0
    false_negative: int = 0
    poisoned_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(REPORT_EDGES) + 1, dtype=np.int64))
    clean_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(REPORT_EDGES) + 1, dtype=np.int64))
    # with an 'attack' column too: per attack name, [poisoned rows, flagged among them]
    by_attack: dict = field(default_factory=dict)
    # with a validation stage: the chunks' merged Great Expectations results (pipelines.validation)
    validation: object = None
    # rows whose reason names each detector (its own p-value reached the cut)
    flagged_by: dict = field(default_factory=dict)
    # the most suspicious valid rows: (-suspicion, row_id, label, reason, flagged), best first
    top: list = field(default_factory=list)

    def merge(self, other: ScreenSummary) -> ScreenSummary:
        for name in ("rows_in", "cleaned", "quarantine", "invalid", "truth_rows", "true_positive", "false_positive", "false_negative"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.poisoned_hist = self.poisoned_hist + other.poisoned_hist
        self.clean_hist = self.clean_hist + other.clean_hist
        for name, (rows, flagged) in other.by_attack.items():
            mine = self.by_attack.setdefault(name, [0, 0])
            mine[0] += rows
            mine[1] += flagged
        for label, cs in other.classes.items():
            if label in self.classes:
                self.classes[label].merge(cs)
            else:
                mine = ClassSummary()
                mine.merge(cs)
                self.classes[label] = mine
        for name, n in other.flagged_by.items():
            self.flagged_by[name] = self.flagged_by.get(name, 0) + n
        self.top = sorted(self.top + other.top)[:TOP_ROWS]
        if other.validation is not None:
            self.validation = other.validation if self.validation is None else self.validation.merge(other.validation)
        return self

    def add_rows(self, row_ids, labels, suspicion: np.ndarray, flagged: np.ndarray, reasons, detectors) -> None:
        """Count flags per detector (from the reasons) and keep the chunk's most suspicious rows."""
        flagged_reasons = [r for r in (reasons[i] for i in np.flatnonzero(flagged)) if r]
        for name in detectors:
            marks = (f": {name}: p=", f"; {name}: p=")
            self.flagged_by[name] = self.flagged_by.get(name, 0) + sum(1 for r in flagged_reasons if any(m in r for m in marks))
        if len(suspicion):
            k = min(TOP_ROWS, len(suspicion))
            idx = np.argpartition(-suspicion, k - 1)[:k] if k < len(suspicion) else np.arange(len(suspicion))
            ids = row_ids.take(idx).to_pylist() if hasattr(row_ids, "take") else [row_ids[i] for i in idx]
            rows = [(-float(suspicion[i]), str(r), str(labels[i]), reasons[i], bool(flagged[i])) for i, r in zip(idx, ids)]
            self.top = sorted(self.top + rows)[:TOP_ROWS]

    def top_json(self) -> list:
        return [{"row_id": r, "label": c, "suspicion": sig(-s), "flagged": f, "reason": why} for s, r, c, why, f in self.top]

    def add_truth(self, poisoned: np.ndarray, flagged: np.ndarray, suspicion: np.ndarray, attacks: np.ndarray | None = None) -> None:
        """Count one chunk against its ground truth; ``attacks`` (attack name per row) splits recall by attack."""
        self.truth_rows += len(poisoned)
        self.true_positive += int((poisoned & flagged).sum())
        self.false_positive += int((~poisoned & flagged).sum())
        self.false_negative += int((poisoned & ~flagged).sum())
        bins = np.searchsorted(REPORT_EDGES, suspicion, side="right")
        self.poisoned_hist += np.bincount(bins[poisoned], minlength=len(self.poisoned_hist))
        self.clean_hist += np.bincount(bins[~poisoned], minlength=len(self.clean_hist))
        if attacks is not None:
            names, codes = np.unique(np.where(pd.isna(attacks[poisoned]), "", attacks[poisoned]).astype(str), return_inverse=True)
            rows = np.bincount(codes, minlength=len(names))
            caught = np.bincount(codes, weights=flagged[poisoned], minlength=len(names))
            for name, n, k in zip(names, rows, caught):
                mine = self.by_attack.setdefault(str(name) or "(unnamed)", [0, 0])
                mine[0] += int(n)
                mine[1] += int(k)

    def detection_json(self) -> dict | None:
        """Recall, precision, FPR and a histogram-resolution ROC-AUC against the ground truth."""
        if self.truth_rows == 0:
            return None
        tp, fp, fn = self.true_positive, self.false_positive, self.false_negative
        positives, negatives = tp + fn, self.truth_rows - tp - fn
        auc, curves = None, None
        if positives and negatives:
            curves = _curves(self.poisoned_hist, self.clean_hist, positives, negatives)
            # P(score_poisoned > score_clean) + 0.5 P(tie), ties at bin resolution
            clean_below = np.cumsum(self.clean_hist) - self.clean_hist
            auc = float((self.poisoned_hist * (clean_below + 0.5 * self.clean_hist)).sum() / (positives * negatives))
        return {
            "rows": self.truth_rows,
            "poisoned": positives,
            "flagged": tp + fp,
            "true_positives": tp,
            "recall": sig(tp / positives, 6) if positives else None,
            "precision": sig(tp / (tp + fp), 6) if tp + fp else None,
            "false_positive_rate": sig(fp / negatives, 6) if negatives else None,
            "roc_auc": sig(auc, 6),
            "curves": curves,
            "by_attack": {name: {"rows": n, "flagged": k, "recall": sig(k / n, 6)} for name, (n, k) in sorted(self.by_attack.items())},
        }


def _curves(poisoned_hist: np.ndarray, clean_hist: np.ndarray, positives: int, negatives: int) -> dict:
    """ROC and precision-recall points for cuts at each suspicion bin edge, highest first (at most CURVE_POINTS)."""
    tp = np.cumsum(poisoned_hist[::-1])
    fp = np.cumsum(clean_hist[::-1])
    change = np.flatnonzero((poisoned_hist[::-1] + clean_hist[::-1]) > 0)
    if len(change) > CURVE_POINTS:
        change = change[np.unique(np.linspace(0, len(change) - 1, CURVE_POINTS).round().astype(int))]
    tpr, fpr = tp[change] / positives, fp[change] / negatives
    precision = tp[change] / np.maximum(tp[change] + fp[change], 1)
    return {
        "roc": [[0.0, 0.0]] + [[sig(x, 4), sig(y, 4)] for x, y in zip(fpr, tpr)],
        "precision_recall": [[sig(r, 4), sig(p, 4)] for r, p in zip(tpr, precision)],
    }
