"""Fitted models as JSON and plain arrays: no pickle, nothing that runs code when loaded.

A fitted model is a tree of frozen dataclasses (:class:`~.ensemble.EnsembleModel`, its
members' models, their nulls) holding numpy arrays, numbers, text and tuples. The label
detector's fold models are scikit-learn ``HistGradientBoostingClassifier`` objects: they are
turned into :class:`BoostedTrees`, their trees' node arrays, which predict exactly what the
live model predicts (same float64 additions in the same order, the same link function).

:func:`encode` turns a model into a JSON-able *spec* and a dict of named arrays (for one
``.npz`` file, read back with ``allow_pickle=False``); :func:`decode` rebuilds it, accepting
only the classes in :data:`MODEL_TYPES`, only the fields each class has, only values of the
kind each field's annotation names (an array, a list, a number), and only arrays of the
dtype and shape the spec declares. Anything else is a :class:`ModelFormatError` with
one line naming what is wrong.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..schemas import ConfigError
from ._config import njit


class ModelFormatError(ConfigError):
    """A saved model that cannot be loaded: wrong version, missing file, or a field or array not as declared."""


# -- boosted trees without pickle ------------------------------------------------------------------
@njit
def _raw_predict(X, baseline, tree_start, feature, threshold, missing_left, left, right, is_leaf, value, n_per_iter, out):
    """``out[i, k] = baseline[k] + sum over iterations of tree(it, k)(X[i])``, trees walked as scikit-learn does.

    Rows in blocks that stay in cache, tree by tree within a block; each ``out[i, k]`` still
    adds its trees in iteration order, as scikit-learn does, so the sums are bit-identical.
    """
    n_trees = len(tree_start) - 1
    n = X.shape[0]
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        for i in range(start, stop):
            for k in range(n_per_iter):
                out[i, k] = baseline[k]
        for t in range(n_trees):
            k = t % n_per_iter
            base = tree_start[t]
            for i in range(start, stop):
                node = base
                while not is_leaf[node]:
                    x = X[i, feature[node]]
                    if np.isnan(x):
                        go_left = missing_left[node] != 0
                    else:
                        go_left = x <= threshold[node]
                    node = base + (left[node] if go_left else right[node])
                out[i, k] += value[node]


_BLOCK = 512
_TREE_ARRAYS = ("classes", "baseline", "tree_start", "feature", "threshold", "missing_left", "left", "right", "is_leaf", "value")


class BoostedTrees:
    """A fitted ``HistGradientBoostingClassifier`` as node arrays, with the same ``predict_proba``.

    Trees are stored one after the other (``tree_start`` (T + 1,) offsets into the node
    arrays), iteration by iteration and within an iteration class by class, as scikit-learn
    keeps ``_predictors``; ``left`` and ``right`` are node indices within the tree.
    Categorical splits are not supported (poisonguard's features are numbers).
    """

    def __init__(self, *, classes, baseline, tree_start, feature, threshold, missing_left, left, right, is_leaf, value):
        self.classes_ = np.asarray(classes)
        self.baseline = np.asarray(baseline, dtype=np.float64)
        self.tree_start = np.asarray(tree_start, dtype=np.int64)
        self.feature = np.asarray(feature, dtype=np.int64)
        self.threshold = np.asarray(threshold, dtype=np.float64)
        self.missing_left = np.asarray(missing_left, dtype=np.uint8)
        self.left = np.asarray(left, dtype=np.int64)
        self.right = np.asarray(right, dtype=np.int64)
        self.is_leaf = np.asarray(is_leaf, dtype=np.uint8)
        self.value = np.asarray(value, dtype=np.float64)
        self._check()

    def _check(self) -> None:
        n_nodes, n_trees, n_per_iter = len(self.feature), len(self.tree_start) - 1, len(self.baseline)
        problems = []
        if any(len(getattr(self, a)) != n_nodes for a in ("threshold", "missing_left", "left", "right", "is_leaf", "value")):
            problems.append("node arrays of different lengths")
        if n_per_iter < 1 or n_trees < 0 or n_trees % n_per_iter:
            problems.append(f"{n_trees} trees for {n_per_iter} per iteration")
        elif len(self.classes_) != (2 if n_per_iter == 1 else n_per_iter):
            problems.append(f"{len(self.classes_)} classes for {n_per_iter} trees per iteration")
        if n_trees >= 0 and (self.tree_start[0] != 0 or self.tree_start[-1] != n_nodes or np.any(np.diff(self.tree_start) < 1)):
            problems.append("tree offsets out of order")
        if not problems and n_nodes:
            size = np.repeat(np.diff(self.tree_start), np.diff(self.tree_start))
            own = np.arange(n_nodes) - np.repeat(self.tree_start[:-1], np.diff(self.tree_start))  # index within the tree
            inner = self.is_leaf == 0
            if np.any((self.left[inner] < 1) | (self.left[inner] >= size[inner]) | (self.right[inner] < 1) |
                      (self.right[inner] >= size[inner])):
                problems.append("a child index outside its tree")
            # scikit-learn numbers a tree's nodes depth first, so a child always comes after its parent; a child
            # at or before it could lead back to it, and the prediction kernel would walk the cycle forever
            elif np.any((self.left[inner] <= own[inner]) | (self.right[inner] <= own[inner])):
                problems.append("a child index at or before its parent's (a cycle); trees number their nodes depth first")
            if np.any(inner & ((self.feature < 0) | (self.feature >= 1 << 20))):
                problems.append("a feature index out of range")
        if problems:
            raise ModelFormatError(f"boosted trees: {problems[0]}")

    @classmethod
    def from_sklearn(cls, model) -> BoostedTrees:
        if getattr(model, "is_categorical_", None) is not None and np.any(model.is_categorical_):
            raise ConfigError("label detector: fold models with categorical splits cannot be saved")
        trees = [p for iteration in model._predictors for p in iteration]
        nodes = [t.nodes for t in trees]
        if any(np.any(n["is_categorical"]) for n in nodes):
            raise ConfigError("label detector: fold models with categorical splits cannot be saved")
        sizes = [len(n) for n in nodes]
        cat = np.concatenate(nodes) if nodes else np.zeros(0, dtype=[("feature_idx", "i8"), ("num_threshold", "f8"),
                                                                        ("missing_go_to_left", "u1"), ("left", "u4"),
                                                                        ("right", "u4"), ("is_leaf", "u1"), ("value", "f8")])
        return cls(classes=model.classes_, baseline=np.ravel(model._baseline_prediction),
                   tree_start=np.r_[0, np.cumsum(sizes)], feature=cat["feature_idx"], threshold=cat["num_threshold"],
                   missing_left=cat["missing_go_to_left"], left=cat["left"], right=cat["right"], is_leaf=cat["is_leaf"],
                   value=cat["value"])

    def arrays(self) -> dict:
        return {name: (self.classes_ if name == "classes" else getattr(self, name)) for name in _TREE_ARRAYS}

    def decision_raw(self, X) -> np.ndarray:
        """Raw predictions (N, trees per iteration), as ``HistGradientBoostingClassifier._raw_predict``."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ConfigError(f"boosted trees: expected a 2-d array, got shape {X.shape}")
        if len(self.feature) and X.shape[1] <= int(self.feature[self.is_leaf == 0].max(initial=-1)):
            raise ConfigError(f"boosted trees: rows have {X.shape[1]} features, the trees use more")
        out = np.empty((len(X), len(self.baseline)), dtype=np.float64, order="F")  # as scikit-learn's (softmax rounds by layout)
        _raw_predict(X, self.baseline, self.tree_start, self.feature, self.threshold, self.missing_left, self.left, self.right,
                     self.is_leaf, self.value, len(self.baseline), out)
        return out

    def predict_proba(self, X) -> np.ndarray:
        from ._sklearn import HalfBinomialLoss, HalfMultinomialLoss

        raw = self.decision_raw(X)
        loss = HalfBinomialLoss() if raw.shape[1] == 1 else HalfMultinomialLoss(n_classes=raw.shape[1])
        return loss.predict_proba(raw)


# -- models <-> JSON spec + arrays -----------------------------------------------------------------
def _model_types() -> dict:
    from .clustering import ClusteringModel
    from .decision import TailNull
    from .ensemble import EnsembleModel
    from .influence import InfluenceModel
    from .knn import KNNLabelModel
    from .label import LabelModel
    from .pattern import PatternModel
    from .robust_spectral import RobustSpectralModel
    from .spectral import SpectralModel

    return {cls.__name__: cls for cls in (EnsembleModel, TailNull, SpectralModel, RobustSpectralModel, InfluenceModel,
                                          ClusteringModel, KNNLabelModel, LabelModel, PatternModel)}


#: The dataclasses a saved model may contain, by name (nothing else is ever built when loading).
MODEL_TYPES = _model_types

_ALLOWED_DTYPES = {"float64", "float32", "int64", "int32", "uint8", "uint32", "uint64", "bool"}


def encode(obj, arrays: dict, path: str = "model"):
    """JSON spec of ``obj``; its arrays go into ``arrays`` under names derived from ``path``."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(obj, np.ndarray):
        if obj.dtype.name not in _ALLOWED_DTYPES:
            raise ConfigError(f"{path}: an array of type {obj.dtype} cannot be saved without pickle")
        name = path.replace("/", ".")
        arrays[name] = obj
        return {"array": name, "dtype": obj.dtype.name, "shape": list(obj.shape)}
    if isinstance(obj, (tuple, list)):
        return {"tuple": [encode(v, arrays, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return {"dict": {k: encode(v, arrays, f"{path}/{k}") for k, v in obj.items()}}
    if type(obj).__name__ == "HistGradientBoostingClassifier":
        obj = BoostedTrees.from_sklearn(obj)
    if isinstance(obj, BoostedTrees):
        return {"type": "BoostedTrees", "fields": {k: encode(v, arrays, f"{path}/{k}") for k, v in obj.arrays().items()}}
    types = MODEL_TYPES()
    if dataclasses.is_dataclass(obj) and types.get(type(obj).__name__) is type(obj):
        return {"type": type(obj).__name__,
                "fields": {f.name: encode(getattr(obj, f.name), arrays, f"{path}/{f.name}") for f in dataclasses.fields(obj)}}
    raise ConfigError(f"{path}: a {type(obj).__name__} cannot be saved without pickle")


#: What a field's annotation (a string: the model modules use ``from __future__ import annotations``) admits.
_KINDS = {"np.ndarray": (np.ndarray,), "tuple": (tuple,), "float": (float, int), "int": (int,), "str": (str,),
          "bool": (bool,), "dict": (dict,), "None": (type(None),)}
_KIND_NAMES = {"np.ndarray": "an array", "tuple": "a list", "float": "a number", "int": "an integer", "str": "text",
               "bool": "true or false", "dict": "a mapping", "None": "null"}


def describe_value(value) -> str:
    """A decoded value in a few words, for an error line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    if isinstance(value, tuple):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _check_kind(path: str, annotation, value) -> None:
    """A one-line :class:`ModelFormatError` where ``value`` is not what the field's annotation says (an array where
    an array belongs, a number where a number does); annotations this does not know are left to the model's checks."""
    names = [part.strip() for part in str(annotation).split("|")]
    if any(name not in _KINDS for name in names):
        return
    for name in names:
        if isinstance(value, _KINDS[name]) and not (isinstance(value, bool) and name in ("int", "float")):
            return
    raise ModelFormatError(f"{path}: expected {' or '.join(_KIND_NAMES[n] for n in names)}, got {describe_value(value)}")


def decode(spec, arrays, path: str = "model"):
    """Rebuild what :func:`encode` wrote; ``arrays`` maps names to arrays (e.g. an ``np.load`` result)."""
    if spec is None or isinstance(spec, (bool, str, int, float)):
        return spec
    if not isinstance(spec, dict) or len(spec) not in (1, 2, 3):
        raise ModelFormatError(f"{path}: unexpected entry {str(spec)[:60]!r}")
    if "float" in spec:
        if spec["float"] not in ("inf", "-inf", "nan"):
            raise ModelFormatError(f"{path}: unexpected number {spec['float']!r}")
        return float(spec["float"])
    if "array" in spec:
        name = spec["array"]
        if name not in arrays:
            raise ModelFormatError(f"{path}: array '{name}' is missing from the arrays file")
        value = arrays[name]
        if value.dtype.name != spec.get("dtype") or list(value.shape) != spec.get("shape"):
            raise ModelFormatError(f"{path}: array '{name}' is {value.dtype.name} {list(value.shape)}, the manifest says "
                                   f"{spec.get('dtype')} {spec.get('shape')}")
        return value
    if "tuple" in spec:
        if not isinstance(spec["tuple"], list):
            raise ModelFormatError(f"{path}: expected a list")
        return tuple(decode(v, arrays, f"{path}/{i}") for i, v in enumerate(spec["tuple"]))
    if "dict" in spec:
        if not isinstance(spec["dict"], dict):
            raise ModelFormatError(f"{path}: expected a mapping")
        return {k: decode(v, arrays, f"{path}/{k}") for k, v in spec["dict"].items()}
    kind, fields = spec.get("type"), spec.get("fields")
    if not isinstance(fields, dict):
        raise ModelFormatError(f"{path}: unexpected entry {str(spec)[:60]!r}")
    if kind == "BoostedTrees":
        expected = set(_TREE_ARRAYS)
        cls = None
    else:
        cls = MODEL_TYPES().get(kind)
        if cls is None:
            raise ModelFormatError(f"{path}: unknown model type {kind!r}")
        expected = {f.name for f in dataclasses.fields(cls)}
    if set(fields) != expected:
        missing, extra = sorted(expected - set(fields)), sorted(set(fields) - expected)
        raise ModelFormatError(f"{path}: {kind} fields differ" + (f"; missing: {', '.join(missing)}" if missing else "") +
                               (f"; unexpected: {', '.join(extra)}" if extra else ""))
    values = {k: decode(v, arrays, f"{path}/{k}") for k, v in fields.items()}
    annotations = {f.name: f.type for f in dataclasses.fields(cls)} if cls is not None else dict.fromkeys(_TREE_ARRAYS, "np.ndarray")
    for k, value in values.items():
        _check_kind(f"{path}/{k}", annotations[k], value)
    if cls is None:
        try:
            return BoostedTrees(**values)
        except ModelFormatError as exc:
            raise ModelFormatError(f"{path}: {exc}") from None
    return cls(**values)
