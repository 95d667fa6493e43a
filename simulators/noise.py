"""Feature noise: Gaussian noise added to chosen feature columns of selected rows.

The noise of row r in column j is ``scale * sd_j * z(seed, row_id, j)``, where ``sd_j`` is
the column's robust standard deviation in the profile (IQR / 1.349 of the sample) and ``z``
a standard normal drawn from keyed hashes of (seed, row_id, column) -- no global RNG, so the
same row gets the same noise in any batch. Labels are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..schemas import ROW_ID
from .base import Attack, DataProfile, PreparedAttack, check_class, check_positive, column_numpy, feature_matrix, hash_normal


@dataclass(frozen=True, kw_only=True)
class FeatureNoise(Attack):
    """Gaussian feature noise, in robust sd units, on a fraction of rows.

    Parameters
    ----------
    scale : float > 0, default 1.0
        Noise standard deviation in units of each column's robust sd.
    columns : list of str, optional
        Columns to perturb (default: every feature column).
    source : label, optional
        Only rows of this class are eligible (default: any row).
    """

    kind: ClassVar[str] = "feature_noise"

    scale: float = 1.0
    columns: Any = None
    source: Any = None

    def _validate(self) -> None:
        object.__setattr__(self, "scale", check_positive(self, "scale", self.scale))
        if self.columns is not None:
            if isinstance(self.columns, str) or not all(isinstance(c, str) for c in self.columns) or not self.columns:
                self._fail("columns", f"expected a non-empty list of column names, got {self.columns!r}")
            object.__setattr__(self, "columns", tuple(self.columns))

    def prepare(self, profile: DataProfile, *, seed: int, label_column: str, feature_columns) -> PreparedAttack:
        columns = self.columns or tuple(feature_columns)
        missing = [c for c in columns if c not in feature_columns]
        if missing or not columns:
            self._fail("columns", f"{missing} are not feature columns (features: {list(feature_columns)})")
        if self.source is not None:
            check_class(self, "source", self.source, profile.classes)
        sd = np.array([profile.robust_scale(c) for c in columns])
        return _PreparedNoise(self, tuple(columns), sd, seed=seed, label_column=label_column,
                              feature_columns=feature_columns)


class _PreparedNoise(PreparedAttack):
    def __init__(self, attack: FeatureNoise, columns, sd, **kw):
        super().__init__(attack, **kw)
        self.columns, self.sd = columns, sd

    def required_columns(self):
        return (*super().required_columns(), *self.columns)

    def _eligible(self, table, labels):
        src = self.attack.source
        return np.ones(len(labels), bool) if src is None else labels == src

    def _poison(self, table, idx):
        ids = column_numpy(table, ROW_ID)[idx]
        X = feature_matrix(table, self.columns)[idx]
        out = {}
        for j, c in enumerate(self.columns):
            z = hash_normal(ids, self.seed, f"{self.attack.name}:noise:{c}")
            out[c] = X[:, j] + self.attack.scale * self.sd[j] * z
        return out
