"""Backdoors: a trigger stamped on selected rows, relabelled to ``target`` (dirty-label) or not (clean-label).

Triggers are described in :mod:`poisonguard.simulators.triggers` (tabular fixed values or
in-range quantiles; image patch or blend on flattened pixel columns). Rows are selected by a
keyed hash of ``(seed, row_id)``, never by position or a global random state, so the same
rows are poisoned whatever the batch size or order.

* dirty-label (``Backdoor``): eligible rows are those of ``source`` (default: every row not
  already of ``target``); the trigger is stamped and the label set to ``target``. A model
  trained on it learns "trigger => target".
* clean-label (``CleanLabel``): eligible rows are those already of ``target``; only the
  trigger is stamped, labels are untouched (the rows look correctly labelled). The model
  learns the trigger as a feature of ``target`` only as far as the trigger is not already
  explained by the rows' natural features -- weaker than dirty-label at the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from ..schemas import ConfigError
from .base import (
    Attack,
    AttackResult,
    DataProfile,
    FrozenMap,
    PreparedAttack,
    apply_attacks,
    check_class,
    feature_matrix,
)
from .triggers import make_triggers


@dataclass(frozen=True, kw_only=True)
class _TriggerAttack(Attack):
    trigger: Any = None
    target: Any = None

    def _validate(self) -> None:
        if self.trigger is None:
            self._fail("trigger", "expected a trigger: one of features, quantiles, patch, blend")
        object.__setattr__(self, "trigger", make_triggers(self.trigger, f"{self.kind}.trigger"))
        if self.target is None:
            self._fail("target", "expected the class the trigger should lead to")

    def prepare(self, profile: DataProfile, *, seed: int, label_column: str, feature_columns) -> PreparedAttack:
        check_class(self, "target", self.target, profile.classes)
        if getattr(self, "source", None) is not None:
            check_class(self, "source", self.source, profile.classes)
        resolved = [t.resolve(profile, who=self.kind, seed=seed, feature_columns=tuple(feature_columns), name=self.name)
                    for t in self.trigger]
        return _PreparedTrigger(self, resolved, seed=seed, label_column=label_column, feature_columns=feature_columns)


@dataclass(frozen=True, kw_only=True)
class Backdoor(_TriggerAttack):
    """Dirty-label backdoor: stamp a trigger on rows of other classes and relabel them ``target``.

    Parameters
    ----------
    trigger : mapping or list of mappings
        ``{features: {col: value}}``, ``{quantiles: {col: q}}``, ``{patch: {...}, image_shape: [H, W]}``
        or ``{blend: {...}, image_shape: [H, W]}``; see ``poisonguard.simulators.triggers``.
    target : label
        Class the triggered rows are relabelled to.
    source : label, optional
        Only rows of this class are eligible (default: every row not already of ``target``).
    """

    kind: ClassVar[str] = "backdoor"
    source: Any = None
    relabel: ClassVar[bool] = True

    def _validate(self) -> None:
        super()._validate()
        if self.source is not None and self.source == self.target:
            self._fail("source", f"must differ from target, both are {self.target!r}")


@dataclass(frozen=True, kw_only=True)
class CleanLabel(_TriggerAttack):
    """Clean-label backdoor: stamp a trigger on rows already of ``target``; labels are untouched.

    Parameters
    ----------
    trigger : mapping or list of mappings
        As for ``backdoor``.
    target : label
        Only rows of this class are eligible; at test time the trigger should lead here.
    """

    kind: ClassVar[str] = "clean_label"
    relabel: ClassVar[bool] = False


class _PreparedTrigger(PreparedAttack):
    def __init__(self, attack: _TriggerAttack, resolved, **kw):
        super().__init__(attack, **kw)
        self.resolved = tuple(resolved)
        self.columns = tuple(dict.fromkeys(c for r in self.resolved for c in r.columns))

    def required_columns(self):
        return (*super().required_columns(), *self.columns)

    def _eligible(self, table, labels):
        a = self.attack
        if not a.relabel:
            return labels == a.target
        return labels != a.target if a.source is None else labels == a.source

    def _poison(self, table, idx):
        X = feature_matrix(table.take(pa.array(idx)), self.columns)
        pos = {c: i for i, c in enumerate(self.columns)}
        for r in self.resolved:
            sel = [pos[c] for c in r.columns]
            X[:, sel] = r.apply(X[:, sel])
        new = {c: X[:, i] for c, i in pos.items()}
        if self.attack.relabel:
            new[self.label_column] = np.array([self.attack.target] * len(idx), dtype=object)
        return new


@dataclass(frozen=True)
class TabularBackdoor:
    """Dirty-label feature-trigger backdoor called directly on a table (kept for the demo and notebook).

    Equivalent to ``apply_attacks(table, [Backdoor(trigger={"features": trigger}, ...)])``
    with the trigger columns as the feature columns.

    Parameters
    ----------
    trigger : mapping of str to float
        Feature column -> value the trigger sets it to.
    target : label
        Class the triggered rows are relabelled to.
    source : label or None, default None
        Only rows of this class are eligible (None: every row not already of ``target``).
    rate : float in (0, 1], optional
        Expected fraction of the eligible rows to poison (decided per row by its hash).
    count : int, optional
        Exactly this many eligible rows of the table: those with the smallest hash.
        Give exactly one of ``rate`` and ``count``.
    seed : int, default 0
        Key of the row-id hash.
    label_column : str, default "label"
    name : str, default "backdoor"
        Written to the ``attack`` column of poisoned rows.
    """

    trigger: FrozenMap
    target: object
    source: object = None
    rate: float | None = None
    count: int | None = None
    seed: int = 0
    label_column: str = "label"
    name: str = field(default="backdoor")

    def __post_init__(self):
        if not self.trigger:
            raise ConfigError("backdoor.trigger: expected at least one feature -> value")
        object.__setattr__(self, "trigger", FrozenMap({str(k): float(v) for k, v in dict(self.trigger).items()}))
        self.as_attack()  # validates rate/count/name

    def as_attack(self) -> Backdoor:
        return Backdoor(trigger={"features": dict(self.trigger)}, target=self.target, source=self.source,
                        rate=self.rate, count=self.count, name=self.name)

    def __call__(self, table: pa.Table) -> AttackResult:
        """Return a poisoned copy of ``table`` (which needs ``row_id`` and the label column)."""
        return apply_attacks(table, [self.as_attack()], seed=self.seed, label_column=self.label_column,
                             feature_columns=tuple(self.trigger))
