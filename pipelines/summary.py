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


@dataclass
class ClassSummary:
    rows: int = 0
    flagged: int = 0
    total: float = 0.0
    minimum: float = float("inf")
    maximum: float = float("-inf")
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(len(REPORT_EDGES) + 1, dtype=np.int64))

    def add(self, suspicion: np.ndarray, flagged: np.ndarray) -> None:
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
                "mean": self.total / self.rows if self.rows else None,
                "min": self.minimum if self.rows else None,
                "max": self.maximum if self.rows else None,
                "p50": self.quantile(0.5),
                "p90": self.quantile(0.9),
                "p99": self.quantile(0.99),
                "histogram": {"edges": [float(REPORT_EDGES[0]), float(REPORT_EDGES[-1]), len(REPORT_EDGES) - 1],
                              "counts": self.histogram[1:-1].tolist(), "above": int(self.histogram[-1])},
            },
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
        return self

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
        auc = None
        if positives and negatives:
            # P(score_poisoned > score_clean) + 0.5 P(tie), ties at bin resolution
            clean_below = np.cumsum(self.clean_hist) - self.clean_hist
            auc = float((self.poisoned_hist * (clean_below + 0.5 * self.clean_hist)).sum() / (positives * negatives))
        return {
            "rows": self.truth_rows,
            "poisoned": positives,
            "flagged": tp + fp,
            "true_positives": tp,
            "recall": tp / positives if positives else None,
            "precision": tp / (tp + fp) if tp + fp else None,
            "false_positive_rate": fp / negatives if negatives else None,
            "roc_auc": auc,
            "by_attack": {name: {"rows": n, "flagged": k, "recall": k / n} for name, (n, k) in sorted(self.by_attack.items())},
        }
