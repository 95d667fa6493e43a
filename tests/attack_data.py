"""Data and helpers for tests/test_attacks.py: Arrow tables from sklearn's bundled sets, batch runs."""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from poisonguard.simulators import DataProfile, SmallestHashes
from poisonguard.simulators.base import feature_matrix

LABEL = "label"
SYNTH_FEATURES = tuple(f"x{i}" for i in range(5))
PIXELS = tuple(f"p{i}" for i in range(64))


def make_table(X, y, columns, prefix="r", extra=True) -> pa.Table:
    """row_id (str), label, an untouched text column, then the float64 features."""
    data = {"row_id": pa.array([f"{prefix}{i:05d}" for i in range(len(y))]), LABEL: pa.array(np.asarray(y))}
    if extra:
        data["note"] = pa.array([f"n{i % 7}" for i in range(len(y))])
    for j, c in enumerate(columns):
        data[c] = pa.array(np.ascontiguousarray(X[:, j], dtype=np.float64))
    return pa.table(data)


@lru_cache(maxsize=None)
def synth_table(n=3000, seed=0) -> pa.Table:
    """Three Gaussian classes in 5 dimensions, plus a text column attacks must leave alone."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centers = rng.normal(0, 1.5, (3, len(SYNTH_FEATURES)))
    X = centers[y] + rng.normal(size=(n, len(SYNTH_FEATURES)))
    return make_table(X, y, SYNTH_FEATURES)


@lru_cache(maxsize=None)
def digits_table() -> pa.Table:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return make_table(X, y, PIXELS)


@lru_cache(maxsize=None)
def split(name: str):
    """(X_train, X_test, y_train, y_test, columns) of a bundled sklearn set, stratified 70/30."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    bunch = {"cancer": datasets.load_breast_cancer, "digits": datasets.load_digits, "wine": datasets.load_wine}[name]()
    columns = PIXELS if name == "digits" else tuple(str(c) for c in bunch.feature_names)
    Xtr, Xte, ytr, yte = train_test_split(bunch.data, bunch.target, test_size=0.3, random_state=0, stratify=bunch.target)
    return Xtr, Xte, ytr, yte, columns


def model():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))


def fit(table: pa.Table, columns):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model().fit(feature_matrix(table, columns), table.column(LABEL).to_numpy())


def profile_of(table, columns, seed=0, **kw) -> DataProfile:
    return DataProfile.from_table(table, label_column=LABEL, feature_columns=columns, seed=seed, **kw)


def prepare(attack, table, columns, seed=0):
    return attack.prepare(profile_of(table, columns, seed), seed=seed, label_column=LABEL, feature_columns=columns)


def apply_in_batches(prepared, table: pa.Table, batch_size: int, *, shuffle_seed=0) -> pa.Table:
    """Apply batch by batch; count mode gets its cutoff from SmallestHashes merged in a shuffled order."""
    batches = [table.slice(i, batch_size) for i in range(0, table.num_rows, batch_size)]
    cutoff = None
    if prepared.needs_cutoff:
        parts = [SmallestHashes(prepared.attack.count, name=prepared.attack.name).add(prepared.hashes(b)[prepared.eligible(b)])
                 for b in batches]
        order = np.random.default_rng(shuffle_seed).permutation(len(parts))
        acc = SmallestHashes(prepared.attack.count, name=prepared.attack.name)
        for i in order:
            acc.merge(parts[i])
        cutoff = acc.cutoff()
    return pa.concat_tables([prepared.apply(b, cutoff).table for b in batches])


def sort_by_id(table: pa.Table) -> pa.Table:
    return table.take(pc.sort_indices(table, [("row_id", "ascending")]))
