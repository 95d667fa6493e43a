"""Row injection: outliers far from or at the edge of the data, and label-flipped duplicates.

Injecting attacks never modify the input's rows: each selected row yields one new row,
derived from it alone, appended after the batch's rows with row id
``"<name>:<source row_id>"`` (so injection is batch-size independent and ids are unique).
The new row is a copy of its source row (every column, ``original_label`` included) with
the attack's changes, ``poisoned=True`` and ``attack=<name>``. Row ids must be strings.

Notation: d feature columns; ``sd_j`` is feature j's robust standard deviation (IQR / 1.349
on the profile's sample), ``min_j``/``max_j`` its exact range in the profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..schemas import ROW_ID, row_hash, uniform_from_hash
from .base import (
    Attack,
    DataProfile,
    PreparedAttack,
    _seed_int,
    check_class,
    check_positive,
    column_numpy,
    feature_matrix,
    hash_normal,
    other_class,
)

PLACEMENTS = ("far", "edge")
DIRECTIONS = ("shared", "per_row")


@dataclass(frozen=True, kw_only=True)
class Inject(Attack):
    """Availability / outlier injection: new rows far from the data or at the edge of its range.

    Parameters
    ----------
    placement : str, default "far"
        "far": ``x' = x + distance * sd * u`` for a unit direction u (an outlier any range
        check could see if large enough); "edge": each feature set to its profile min or max
        by the sign of u (a corner of the data's bounding box: in range, so min/max checks
        pass).
    distance : float > 0, default 10.0
        "far" placement: how far to move, in robust sd units along u.
    direction : str, default "shared"
        "shared": one seeded direction for all injected rows (a cluster); "per_row": a
        direction drawn per row from a keyed hash of (seed, row_id, column).
    label : label, optional
        Label of the injected rows (default: the source row's label).
    source : label, optional
        Only rows of this class are copied (default: any row).
    """

    kind: ClassVar[str] = "inject"

    placement: str = "far"
    distance: float = 10.0
    direction: str = "shared"
    label: Any = None
    source: Any = None

    def _validate(self) -> None:
        if self.placement not in PLACEMENTS:
            self._fail("placement", f"expected one of {list(PLACEMENTS)}, got {self.placement!r}")
        object.__setattr__(self, "distance", check_positive(self, "distance", self.distance))
        if self.direction not in DIRECTIONS:
            self._fail("direction", f"expected one of {list(DIRECTIONS)}, got {self.direction!r}")

    def prepare(self, profile: DataProfile, *, seed: int, label_column: str, feature_columns) -> PreparedAttack:
        feature_columns = tuple(feature_columns)
        if not feature_columns:
            self._fail("placement", "injection needs feature columns")
        for key in ("label", "source"):
            if getattr(self, key) is not None:
                check_class(self, key, getattr(self, key), profile.classes)
        sd = np.array([profile.robust_scale(c) for c in feature_columns])
        low = np.array([profile.feature_min[c] for c in feature_columns])
        high = np.array([profile.feature_max[c] for c in feature_columns])
        rng = np.random.default_rng(_seed_int(seed, self.name, "direction"))
        shared = rng.standard_normal(len(feature_columns))
        return _PreparedInject(self, sd, low, high, shared / np.linalg.norm(shared),
                               seed=seed, label_column=label_column, feature_columns=feature_columns)


class _PreparedInject(PreparedAttack):
    injects = True

    def __init__(self, attack: Inject, sd, low, high, shared, **kw):
        super().__init__(attack, **kw)
        self.sd, self.low, self.high, self.shared = sd, low, high, shared

    def required_columns(self):
        return (*super().required_columns(), *self.feature_columns)

    def _eligible(self, table, labels):
        src = self.attack.source
        return np.ones(len(labels), bool) if src is None else labels == src

    def _directions(self, ids):
        if self.attack.direction == "shared":
            return np.broadcast_to(self.shared, (len(ids), len(self.shared)))
        Z = np.column_stack([hash_normal(ids, self.seed, f"{self.attack.name}:direction:{c}") for c in self.feature_columns])
        return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)

    def _poison(self, table, idx):
        X = feature_matrix(table, self.feature_columns)[idx]
        U = self._directions(column_numpy(table, ROW_ID)[idx])
        if self.attack.placement == "far":
            new = X + self.attack.distance * self.sd * U
        else:
            new = np.where(U > 0, self.high, self.low) + np.zeros_like(X)
        out = {c: new[:, j] for j, c in enumerate(self.feature_columns)}
        if self.attack.label is not None:
            out[self.label_column] = np.array([self.attack.label] * len(idx), dtype=object)
        return out


@dataclass(frozen=True, kw_only=True)
class DuplicateFlip(Attack):
    """Duplicate selected rows with a flipped label (the original row stays, clean).

    Parameters
    ----------
    target : label, optional
        Label of the duplicates (default: a class drawn uniformly among the other classes,
        by a keyed hash of the row id).
    source : label, optional
        Only rows of this class are duplicated (default: any row not already of ``target``).
    """

    kind: ClassVar[str] = "duplicate_flip"

    target: Any = None
    source: Any = None

    def _validate(self) -> None:
        if self.target is not None and self.source is not None and self.source == self.target:
            self._fail("target", f"must differ from source, both are {self.source!r}")

    def prepare(self, profile: DataProfile, *, seed: int, label_column: str, feature_columns) -> PreparedAttack:
        if len(profile.classes) < 2:
            self._fail("target", f"flipping needs at least 2 classes in the data, found {list(profile.classes)}")
        for key in ("target", "source"):
            if getattr(self, key) is not None:
                check_class(self, key, getattr(self, key), profile.classes)
        return _PreparedDuplicate(self, profile.classes, seed=seed, label_column=label_column,
                                  feature_columns=feature_columns)


class _PreparedDuplicate(PreparedAttack):
    injects = True

    def __init__(self, attack: DuplicateFlip, classes, **kw):
        super().__init__(attack, **kw)
        self.classes = classes

    def _eligible(self, table, labels):
        a = self.attack
        ok = np.isin(labels, np.array(self.classes, dtype=object)) if a.target is None else labels != a.target
        return ok if a.source is None else ok & (labels == a.source)

    def _poison(self, table, idx):
        if self.attack.target is not None:
            return {self.label_column: np.array([self.attack.target] * len(idx), dtype=object)}
        ids = column_numpy(table, ROW_ID)[idx]
        u = uniform_from_hash(row_hash(ids, self.seed, purpose=f"{self.attack.name}:class"))
        return {self.label_column: other_class(column_numpy(table, self.label_column)[idx], self.classes, u)}
