"""Shared machinery of every attack: configs, row selection and ground-truth bookkeeping.

Notation: N rows in a batch, d feature columns, K classes (from the profile, never the batch).

An attack is a frozen :class:`Attack` config. :meth:`Attack.prepare` turns it, with a
:class:`DataProfile` of the whole input, into a picklable :class:`PreparedAttack` whose
:meth:`~PreparedAttack.apply` is a pure function of one batch. Which rows are touched is
decided by a keyed hash of ``(seed, row_id)`` (purpose = the attack's ``name``), never by row
order or a global random state:

* rate mode: ``selected = eligible & (uniform_from_hash(h) < rate)``;
* count mode: ``selected = eligible & (h <= cutoff)``, ``cutoff`` the ``count``-th smallest key
  among all eligible rows of the dataset (:class:`SmallestHashes` / :func:`count_cutoff`,
  in :mod:`.profile` with :class:`DataProfile`; all three are re-exported here).

so the output is the same for any batch size, order or worker count. Rows already poisoned
by an earlier attack are never eligible.

Ground truth travels with the data: ``poisoned`` (bool, OR-ed over attacks), ``attack``
(str, "" for clean rows, the first attack's name kept) and ``original_label`` (the label
before any relabelling; the earliest value kept). They are appended at the end of the
schema when missing; the input's columns keep their order and types.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..schemas import ATTACK, ORIGINAL_LABEL, POISONED, ROW_ID, ConfigError, row_hash, uniform_from_hash
from ._common import FrozenMap, _seed_int, column_numpy, feature_matrix, hash_normal, require_columns
from .profile import DataProfile, SmallestHashes, count_cutoff

# Re-exported: the pipeline and the config loader import these from ``base``.
__all__ = [
    "Attack", "AttackResult", "DataProfile", "FrozenMap", "PreparedAttack", "SmallestHashes", "apply_attacks",
    "check_class", "check_positive", "column_numpy", "count_cutoff", "feature_matrix",
    "hash_normal", "other_class", "with_ground_truth", "_seed_int",
]


@dataclass(frozen=True)
class AttackResult:
    """The poisoned table and its ground truth, together so they cannot drift apart.

    Attributes
    ----------
    table : pyarrow.Table
        The input's columns (same order and types) plus ``poisoned``, ``attack`` and
        ``original_label``; injected rows come after the input's rows.
    mask : ndarray of bool, shape (N_out,)
        ``table['poisoned']`` as numpy (every poisoned row, including earlier attacks').
    touched : int, default 0
        Existing rows this call modified.
    injected : int, default 0
        New rows this call appended.
    """

    table: pa.Table
    mask: np.ndarray
    touched: int = 0
    injected: int = 0


# ----------------------------------------------------------------------------- attacks


_PARAM = re.compile(r"^(\w+) : (.+)$")


@dataclass(frozen=True, kw_only=True)
class Attack:
    """Base of every attack config: a frozen dataclass validated at construction.

    Parameters
    ----------
    name : str, default the kind
        Written to the ``attack`` column of poisoned rows; also the hash purpose, so two
        attacks with different names select independent rows.
    rate : float in (0, 1], optional
        Expected fraction of the eligible rows to poison, decided per row by its hash.
    count : int >= 1, optional
        Exactly this many eligible rows of the whole dataset: those with the smallest hash.
        Give exactly one of ``rate`` and ``count``.
    """

    kind: ClassVar[str] = "attack"

    name: str = ""
    rate: float | None = None
    count: int | None = None

    def __post_init__(self):
        if not self.name:
            object.__setattr__(self, "name", self.default_name())
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"{self.kind}.name: expected a non-empty string, got {self.name!r}")
        self._check_budget()
        self._validate()

    # -- hooks for subclasses
    def default_name(self) -> str:
        return self.kind

    def _validate(self) -> None:
        """Check the attack-specific fields (raise ConfigError via :meth:`_fail`)."""

    def _check_budget(self) -> None:
        if (self.rate is None) == (self.count is None):
            self._fail("rate", f"give exactly one of 'rate' and 'count' (got rate={self.rate!r}, count={self.count!r})")
        if self.rate is not None:
            if isinstance(self.rate, bool) or not isinstance(self.rate, numbers.Real) or not 0.0 < self.rate <= 1.0:
                self._fail("rate", f"expected a fraction in (0, 1], got {self.rate!r}")
            object.__setattr__(self, "rate", float(self.rate))
        if self.count is not None:
            if isinstance(self.count, bool) or not isinstance(self.count, numbers.Integral) or self.count < 1:
                self._fail("count", f"expected a positive integer, got {self.count!r}")
            object.__setattr__(self, "count", int(self.count))

    def _fail(self, field: str, message: str):
        raise ConfigError(f"{self.kind}.{field}: {message}")

    def prepare(self, profile: DataProfile, *, seed: int, label_column: str, feature_columns) -> "PreparedAttack":
        """Resolve profile-dependent values (classes, quantiles, surrogate) into a batch function."""
        raise NotImplementedError

    @classmethod
    def summary(cls) -> str:
        """First line of the class docstring."""
        return inspect.cleandoc(cls.__doc__ or "").split("\n", 1)[0]

    @classmethod
    def describe(cls) -> list[tuple[str, str, str, str]]:
        """``[(field, type, default, meaning)]`` for every config field, from the docstring."""
        docs = {}
        for klass in reversed(cls.__mro__):
            lines = inspect.cleandoc(klass.__dict__.get("__doc__") or "").splitlines()
            current = None
            for line in lines:
                match = _PARAM.match(line)
                if match:
                    current = match.group(1)
                    docs[current] = [match.group(2), []]
                elif current and line.startswith("    "):
                    docs[current][1].append(line.strip())
                elif current and line.strip() and not line.startswith(" "):
                    current = None
        rows = []
        for f in dataclasses.fields(cls):
            type_text, meaning = docs.get(f.name, [str(f.type), []])
            type_part, _, default_text = type_text.partition(", default ")
            if not default_text:
                optional = type_part.endswith(", optional") or f.name not in docs
                default_text = "None" if optional and f.default is not dataclasses.MISSING else "required"
                type_part = type_part.removesuffix(", optional")
            rows.append((f.name, type_part, default_text, " ".join(meaning)))
        return rows


class PreparedAttack:
    """An attack bound to the profile: picklable, and pure functions of a batch.

    Subclasses override ``_eligible`` (which rows may be attacked), ``_poison`` (new values of
    the selected rows, or of the injected copies when ``injects``), and optionally
    ``_rate_select`` / ``hashes`` (boundary flips rank rows by margin).
    """

    injects: ClassVar[bool] = False

    def __init__(self, attack: Attack, *, seed: int, label_column: str, feature_columns):
        self.attack = attack
        self.seed = int(seed)
        self.label_column = str(label_column)
        self.feature_columns = tuple(feature_columns)

    @property
    def needs_cutoff(self) -> bool:
        """True in count mode: the pipeline must pass ``cutoff`` from a :class:`SmallestHashes` pass."""
        return self.attack.count is not None

    # -- selection
    def required_columns(self) -> tuple[str, ...]:
        return (ROW_ID, self.label_column)

    def eligible(self, table: pa.Table) -> np.ndarray:
        """Bool per row: rows this attack may touch. Rows already poisoned never are."""
        require_columns(table, self.required_columns(), self.attack.name)
        ok = self._eligible(table, column_numpy(table, self.label_column))
        if POISONED in table.column_names:
            previous = table.column(POISONED).fill_null(False).to_numpy(zero_copy_only=False)
            ok = ok & ~previous.astype(bool)
        return np.asarray(ok, dtype=bool)

    def _eligible(self, table: pa.Table, labels: np.ndarray) -> np.ndarray:
        return np.ones(table.num_rows, dtype=bool)

    def hashes(self, table: pa.Table) -> np.ndarray:
        """uint64 selection key per row: ``row_hash(row_id, seed, purpose=attack.name)``."""
        return row_hash(column_numpy(table, ROW_ID), self.seed, purpose=self.attack.name)

    def _rate_select(self, table: pa.Table, hashes: np.ndarray) -> np.ndarray:
        return uniform_from_hash(hashes) < self.attack.rate

    def select(self, table: pa.Table, cutoff: int | None = None) -> np.ndarray:
        """Bool per row: the rows :meth:`apply` poisons (or copies, for injections)."""
        ok = self.eligible(table)
        keys = self.hashes(table)
        if self.attack.count is None:
            return ok & self._rate_select(table, keys)
        if cutoff is None:
            cutoff = count_cutoff(keys[ok], self.attack.count, name=self.attack.name)
        return ok & (keys <= np.uint64(cutoff))

    # -- the attack itself
    def _poison(self, table: pa.Table, idx: np.ndarray) -> dict[str, np.ndarray]:
        """New values of the label and/or feature columns for the rows ``idx``."""
        raise NotImplementedError

    def apply(self, table: pa.Table, cutoff: int | None = None) -> AttackResult:
        """Return a poisoned copy of ``table``; ``cutoff`` is required for exact counts across batches."""
        chosen = self.select(table, cutoff)
        idx = np.flatnonzero(chosen)
        out = with_ground_truth(table, self.label_column)
        new_values = self._poison(out, idx) if idx.size else {}
        if self.injects:
            extra = _injected_rows(out, idx, new_values, self.attack.name) if idx.size else None
            result = out if extra is None else pa.concat_tables([out, extra])
            mask = column_numpy(result, POISONED).astype(bool)
            return AttackResult(result, mask, touched=0, injected=int(idx.size))
        mask_arr = pa.array(chosen)
        for column, values in new_values.items():
            out = _replace_rows(out, column, idx, values, mask_arr, self.attack.name)
        previous = column_numpy(out, POISONED).astype(bool)
        out = _set(out, POISONED, pa.array(previous | chosen))
        attack = column_numpy(out, ATTACK).astype(object)
        attack[idx] = self.attack.name
        out = _set(out, ATTACK, pa.array(attack, pa.string()))
        return AttackResult(out, previous | chosen, touched=int(idx.size), injected=0)


def with_ground_truth(table: pa.Table, label_column: str) -> pa.Table:
    """``table`` with ``poisoned``, ``attack`` and ``original_label`` appended where missing."""
    n = table.num_rows
    if POISONED not in table.column_names:
        table = table.append_column(POISONED, pa.array(np.zeros(n, bool)))
    if ATTACK not in table.column_names:
        table = table.append_column(ATTACK, pa.array([""] * n, pa.string()))
    if ORIGINAL_LABEL not in table.column_names:
        table = table.append_column(ORIGINAL_LABEL, table.column(label_column))
    return table


def _set(table: pa.Table, name: str, values) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.schema.get_field_index(name), name, values)
    return table.append_column(name, values)


def _typed(values, typ: pa.DataType, column: str, who: str) -> pa.Array:
    try:
        return pa.array(values, type=typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"{who}: cannot write the attack's values into column '{column}' of type {typ}: {exc}") from None


def _replace_rows(table, column, idx, values, mask_arr, who) -> pa.Table:
    col = table.column(column)
    full = column_numpy(table, column)
    if full.dtype.kind in "iub" and np.asarray(values).dtype.kind in "fO":
        full = full.astype(object)
    full[idx] = values
    new = pc.if_else(mask_arr, _typed(full, col.type, column, who), col)
    return _set(table, column, new)


def _injected_rows(out: pa.Table, idx: np.ndarray, new_values: dict, name: str) -> pa.Table:
    copies = out.take(pa.array(idx))
    ids = column_numpy(copies, ROW_ID)
    if not pa.types.is_string(out.schema.field(ROW_ID).type) and not pa.types.is_large_string(out.schema.field(ROW_ID).type):
        raise ConfigError(f"{name}: injected rows get string row ids '{name}:<source row_id>'; "
                          f"the data's row_id column is {out.schema.field(ROW_ID).type}")
    copies = _set(copies, ROW_ID, pa.array([f"{name}:{r}" for r in ids], out.schema.field(ROW_ID).type))
    for column, values in new_values.items():
        copies = _set(copies, column, _typed(np.asarray(values), out.schema.field(column).type, column, name))
    copies = _set(copies, POISONED, pa.array(np.ones(len(idx), bool)))
    copies = _set(copies, ATTACK, pa.array([name] * len(idx), pa.string()))
    return copies


def apply_attacks(table: pa.Table, attacks, *, seed: int, label_column: str, feature_columns,
                  profile: DataProfile | None = None) -> AttackResult:
    """In memory: profile ``table`` (unless given), then apply each attack in order to the previous output.

    ``touched`` and ``injected`` of the result add up over the attacks.
    """
    feature_columns = tuple(feature_columns)
    if profile is None:
        profile = DataProfile.from_table(table, label_column=label_column, feature_columns=feature_columns, seed=seed)
    names = [a.name for a in attacks]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"attacks.name: each attack needs its own name; repeated: {duplicated}")
    out = with_ground_truth(table, label_column)
    touched = injected = 0
    for attack in attacks:
        prepared = attack.prepare(profile, seed=seed, label_column=label_column, feature_columns=feature_columns)
        result = prepared.apply(out)
        out, touched, injected = result.table, touched + result.touched, injected + result.injected
    return AttackResult(out, column_numpy(out, POISONED).astype(bool), touched=touched, injected=injected)


def check_class(attack: Attack, field: str, value, classes: tuple) -> None:
    """ConfigError unless ``value`` is one of the profile's classes."""
    if value not in classes:
        attack._fail(field, f"{value!r} is not a class of the data; classes are {list(classes)}")


def check_positive(attack: Attack, field: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        attack._fail(field, f"expected a positive number, got {value!r}")
    return float(value)


def other_class(labels: np.ndarray, classes: tuple, u: np.ndarray) -> np.ndarray:
    """A class drawn uniformly among ``classes`` other than each row's label, from uniforms ``u``."""
    codes = pd.Index(list(classes)).get_indexer(pd.Index(list(labels)))
    k = len(classes)
    r = np.minimum((u * (k - 1)).astype(np.int64), k - 2)
    r = np.where(r >= codes, r + 1, r)
    return np.array(classes, dtype=object)[r]
