"""Tabular backdoor: set trigger features to fixed values, relabel to the target class.

Rows are selected by a keyed hash of ``(seed, row_id)`` (see
:func:`poisonguard.schemas.row_hash`), never by position or a global random state, so the
same rows are poisoned whatever the batch size or order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..schemas import ATTACK, ORIGINAL_LABEL, POISONED, ROW_ID, ConfigError, row_hash, uniform_from_hash


@dataclass(frozen=True)
class AttackResult:
    """The poisoned table and its ground truth, together so they cannot drift apart.

    ``table`` carries ``poisoned`` (bool), ``attack`` (str, "" for clean rows) and
    ``original_label``; ``mask`` is ``table['poisoned']`` as a numpy array.
    """

    table: pa.Table
    mask: np.ndarray


@dataclass(frozen=True)
class TabularBackdoor:
    """Dirty-label feature-trigger backdoor.

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

    trigger: MappingProxyType
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
        object.__setattr__(self, "trigger", MappingProxyType({str(k): float(v) for k, v in dict(self.trigger).items()}))
        if (self.rate is None) == (self.count is None):
            raise ConfigError("backdoor: give exactly one of 'rate' and 'count'")
        if self.rate is not None and not 0.0 < self.rate <= 1.0:
            raise ConfigError(f"backdoor.rate: expected a fraction in (0, 1], got {self.rate}")
        if self.count is not None and (not isinstance(self.count, int) or self.count < 0):
            raise ConfigError(f"backdoor.count: expected a non-negative integer, got {self.count!r}")

    def __call__(self, table: pa.Table) -> AttackResult:
        """Return a poisoned copy of ``table`` (which needs ``row_id`` and the label column)."""
        for column in (ROW_ID, self.label_column, *self.trigger):
            if column not in table.column_names:
                raise ConfigError(f"backdoor: the data has no column '{column}'")
        labels = table.column(self.label_column).to_numpy(zero_copy_only=False)
        eligible = labels != self.target if self.source is None else labels == self.source
        hashes = row_hash(table.column(ROW_ID).to_numpy(zero_copy_only=False), self.seed, purpose=self.name)
        if self.rate is not None:
            chosen = eligible & (uniform_from_hash(hashes) < self.rate)
        else:
            candidates = np.flatnonzero(eligible)
            if self.count > len(candidates):
                raise ConfigError(f"backdoor.count: {self.count} rows asked but only {len(candidates)} are eligible")
            picked = candidates[np.argsort(hashes[candidates], kind="stable")[: self.count]]
            chosen = np.zeros(len(labels), dtype=bool)
            chosen[picked] = True

        out = table
        mask = pa.array(chosen)
        for column, value in self.trigger.items():
            idx = out.schema.get_field_index(column)
            col = out.column(column)
            out = out.set_column(idx, column, pc.if_else(mask, pa.scalar(value, col.type), col))
        label_idx = out.schema.get_field_index(self.label_column)
        label_col = out.column(self.label_column)
        out = out.set_column(label_idx, self.label_column, pc.if_else(mask, pa.scalar(self.target, label_col.type), label_col))
        previous = table.column(POISONED).to_numpy(zero_copy_only=False) if POISONED in table.column_names else np.zeros(len(labels), bool)
        out = _set(out, POISONED, pa.array(previous | chosen))
        attack = np.where(chosen, self.name, table.column(ATTACK).to_numpy(zero_copy_only=False) if ATTACK in table.column_names else "")
        out = _set(out, ATTACK, pa.array(attack.astype(str), pa.string()))
        original = table.column(ORIGINAL_LABEL) if ORIGINAL_LABEL in table.column_names else label_col
        out = _set(out, ORIGINAL_LABEL, original)
        return AttackResult(out, np.asarray(previous | chosen))


def _set(table: pa.Table, name: str, values) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.schema.get_field_index(name), name, values)
    return table.append_column(name, values)
