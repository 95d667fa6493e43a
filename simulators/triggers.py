"""Backdoor triggers: small frozen configs that resolve, against the profile, into one picklable edit.

Tabular triggers set feature columns; image triggers treat feature columns as the pixels of
a flattened image. There is no image column type in the pipeline yet, so an image is stored
as ``prod(image_shape)`` numeric columns in C order: pixel ``(r, c)`` (channel ``ch``) is
column ``pixel_columns[(r * W + c) * C + ch]`` -- e.g. scikit-learn's 8x8 digits as 64
columns with ``image_shape=(8, 8)``. ``pixel_columns`` defaults to all feature columns in order.

Every trigger resolves to ``x' = where(mask, (1 - alpha) * x + alpha * pattern, x)`` over its
columns (alpha 1 for the stamping triggers), so triggers compose (a list is applied in order)
and never touch the caller's arrays.

Spec forms accepted by ``Backdoor(trigger=...)`` (and YAML):

* ``{"features": {col: value}}`` -- fixed values;
* ``{"quantiles": {col: q}}`` -- each column's q-quantile in the profile (in range, so
  min/max checks cannot see it);
* ``{"patch": {pattern, size, position, value}, "image_shape": [H, W(, C)], "pixel_columns": [...]}``
  -- BadNets patch;
* ``{"blend": {pattern, alpha, size, position, value}, "image_shape": ..., "pixel_columns": ...}``
  -- blended pattern (Chen et al. 2017): ``x' = (1 - alpha) x + alpha pattern``;
* a list of these, applied in order.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from ..schemas import ConfigError
from ._common import FrozenMap, _seed_int
from .profile import DataProfile

PATTERNS = ("checkerboard", "solid", "random")
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right", "center")


@dataclass(frozen=True)
class ResolvedTrigger:
    """``x' = where(mask, (1 - alpha) x + alpha pattern, x)`` on ``columns``; picklable."""

    columns: tuple
    mask: np.ndarray
    pattern: np.ndarray
    alpha: float = 1.0

    def apply(self, X: np.ndarray) -> np.ndarray:
        """New values for X of shape (k, len(columns)); X is not modified."""
        blended = (1.0 - self.alpha) * X + self.alpha * self.pattern if self.alpha != 1.0 else np.broadcast_to(self.pattern, X.shape)
        return np.where(self.mask, blended, X)


def _number(who, value, *, low=None, high=None):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    if not ok or (low is not None and value < low) or (high is not None and value > high):
        bounds = f" in [{low}, {high}]" if low is not None else ""
        raise ConfigError(f"{who}: expected a finite number{bounds}, got {value!r}")
    return float(value)


def _column_map(who, mapping, **bounds) -> FrozenMap:
    if not isinstance(mapping, (dict, FrozenMap)) or not mapping:
        raise ConfigError(f"{who}: expected a non-empty mapping of column -> number, got {mapping!r}")
    return FrozenMap({str(k): _number(f"{who}[{k!r}]", v, **bounds) for k, v in mapping.items()})


def _check_columns(who, columns, feature_columns):
    missing = [c for c in columns if c not in feature_columns]
    if missing:
        raise ConfigError(f"{who}: {missing} are not feature columns (features: {list(feature_columns)})")


@dataclass(frozen=True)
class FeatureTrigger:
    """Set feature columns to fixed values."""

    values: FrozenMap

    def resolve(self, profile: DataProfile, *, who: str, seed: int, feature_columns, name: str = "") -> ResolvedTrigger:
        _check_columns(f"{who}.trigger.features", self.values, feature_columns)
        cols = tuple(self.values)
        return ResolvedTrigger(cols, np.ones(len(cols), bool), np.array([self.values[c] for c in cols]))


@dataclass(frozen=True)
class QuantileTrigger:
    """Set feature columns to their q-quantile in the profile (an in-range value)."""

    quantiles: FrozenMap

    def resolve(self, profile: DataProfile, *, who: str, seed: int, feature_columns, name: str = "") -> ResolvedTrigger:
        _check_columns(f"{who}.trigger.quantiles", self.quantiles, feature_columns)
        cols = tuple(self.quantiles)
        values = np.array([profile.quantile(c, self.quantiles[c]) for c in cols])
        return ResolvedTrigger(cols, np.ones(len(cols), bool), values)


@dataclass(frozen=True)
class ImageTrigger:
    """A BadNets patch (``alpha`` 1) or a blended pattern on flattened pixel columns.

    image_shape : (H, W) or (H, W, C); pixel_columns : names in C order (default: all features);
    pattern : "checkerboard" | "solid" | "random" (seeded, fixed for the attack);
    size : patch side (int or (h, w)), None = the whole image; position : corner name or (row, col);
    value : the pattern's high value (default: the largest pixel value in the profile);
    alpha : 1 stamps the pattern, less blends it.
    """

    image_shape: tuple
    pixel_columns: tuple | None = None
    pattern: str = "checkerboard"
    size: tuple | None = (3, 3)
    position: object = "bottom_right"
    value: float | None = None
    alpha: float = 1.0

    def region(self):
        H, W = self.image_shape[:2]
        if self.size is None:
            return 0, 0, H, W
        h, w = self.size
        if isinstance(self.position, str):
            r = {"top": 0, "bottom": H - h, "center": (H - h) // 2}[self.position.split("_")[0]]
            c = {"left": 0, "right": W - w, "center": (W - w) // 2}[self.position.split("_")[-1]]
        else:
            r, c = self.position
        return r, c, h, w

    def resolve(self, profile: DataProfile, *, who: str, seed: int, feature_columns, name: str = "") -> ResolvedTrigger:
        cols = tuple(self.pixel_columns or feature_columns)
        _check_columns(f"{who}.trigger.pixel_columns", cols, feature_columns)
        n_pixels = int(np.prod(self.image_shape))
        if len(cols) != n_pixels:
            raise ConfigError(f"{who}.trigger.image_shape: {list(self.image_shape)} needs {n_pixels} pixel columns, "
                              f"got {len(cols)}")
        low = float(min(profile.feature_min[c] for c in cols))
        high = float(max(profile.feature_max[c] for c in cols)) if self.value is None else self.value
        shape = tuple(self.image_shape) if len(self.image_shape) == 3 else (*self.image_shape, 1)
        H, W, C = shape
        r, c, h, w = self.region()
        mask = np.zeros(shape, bool)
        mask[r:r + h, c:c + w, :] = True
        if self.pattern == "solid":
            pattern = np.full(shape, high)
        elif self.pattern == "checkerboard":
            rows, colsi = np.indices((H, W))
            pattern = np.repeat(np.where(((rows - r) + (colsi - c)) % 2 == 0, high, low)[:, :, None], C, axis=2)
        else:
            rng = np.random.default_rng(_seed_int(seed, name or who, "pattern"))  # fixed per (seed, attack name)
            pattern = rng.uniform(low, high, size=shape)
        return ResolvedTrigger(cols, mask.reshape(-1), pattern.reshape(-1).astype(float), float(self.alpha))


def _image_trigger(who, spec: dict, key: str) -> ImageTrigger:
    extra = set(spec) - {key, "image_shape", "pixel_columns"}
    if extra:
        raise ConfigError(f"{who}: unknown keys {sorted(extra)} next to '{key}' (expected image_shape, pixel_columns)")
    shape = spec.get("image_shape")
    if (not isinstance(shape, (list, tuple)) or len(shape) not in (2, 3)
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ConfigError(f"{who}.image_shape: expected [H, W] or [H, W, C] of positive integers, got {shape!r}")
    shape = tuple(int(s) for s in shape)
    pixels = spec.get("pixel_columns")
    if pixels is not None and (not isinstance(pixels, (list, tuple)) or not all(isinstance(p, str) for p in pixels)):
        raise ConfigError(f"{who}.pixel_columns: expected a list of column names, got {pixels!r}")
    opts = spec.get(key) or {}
    if not isinstance(opts, (dict, FrozenMap)):
        raise ConfigError(f"{who}.{key}: expected a mapping of options, got {opts!r}")
    allowed = {"pattern", "size", "position", "value"} | ({"alpha"} if key == "blend" else set())
    unknown = set(opts) - allowed
    if unknown:
        raise ConfigError(f"{who}.{key}: unknown options {sorted(unknown)}; expected some of {sorted(allowed)}")
    sub = f"{who}.{key}"
    pattern = opts.get("pattern", "checkerboard" if key == "patch" else "random")
    if pattern not in PATTERNS:
        raise ConfigError(f"{sub}.pattern: expected one of {list(PATTERNS)}, got {pattern!r}")
    size = opts.get("size", 3 if key == "patch" else None)
    if size is not None:
        size = (size, size) if isinstance(size, numbers.Integral) and not isinstance(size, bool) else size
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and 0 < s for s in size)
                or size[0] > shape[0] or size[1] > shape[1]):
            raise ConfigError(f"{sub}.size: expected a positive int or [h, w] within the image {list(shape[:2])}, got {opts.get('size')!r}")
        size = (int(size[0]), int(size[1]))
    position = opts.get("position", "bottom_right")
    if isinstance(position, str):
        if position not in CORNERS:
            raise ConfigError(f"{sub}.position: expected one of {list(CORNERS)} or [row, col], got {position!r}")
    elif (not isinstance(position, (list, tuple)) or len(position) != 2
          or not all(isinstance(p, numbers.Integral) and not isinstance(p, bool) and p >= 0 for p in position)):
        raise ConfigError(f"{sub}.position: expected one of {list(CORNERS)} or [row, col], got {position!r}")
    else:
        position = (int(position[0]), int(position[1]))
        h, w = size or shape[:2]
        if position[0] + h > shape[0] or position[1] + w > shape[1]:
            raise ConfigError(f"{sub}.position: a {h}x{w} patch at {list(position)} leaves the {shape[0]}x{shape[1]} image")
    value = opts.get("value")
    if value is not None:
        value = _number(f"{sub}.value", value)
    alpha = _number(f"{sub}.alpha", opts.get("alpha", 0.2), low=0.0, high=1.0) if key == "blend" else 1.0
    if key == "blend" and alpha == 0.0:
        raise ConfigError(f"{sub}.alpha: expected a number in (0, 1], got 0")
    return ImageTrigger(shape, tuple(pixels) if pixels else None, pattern, size, position, value, alpha)


TRIGGER_KEYS = ("features", "quantiles", "patch", "blend")
Trigger = FeatureTrigger | QuantileTrigger | ImageTrigger


def make_triggers(spec, who: str) -> tuple:
    """Parse a trigger spec (see the module docstring) into a tuple of trigger objects."""
    if isinstance(spec, (FeatureTrigger, QuantileTrigger, ImageTrigger)):
        return (spec,)
    if isinstance(spec, (list, tuple)) and spec and not isinstance(spec, str):
        return tuple(t for i, s in enumerate(spec) for t in make_triggers(s, f"{who}[{i}]"))
    if not isinstance(spec, (dict, FrozenMap)):
        raise ConfigError(f"{who}: expected a mapping with one of {list(TRIGGER_KEYS)} (or a list of them), got {spec!r}")
    keys = [k for k in TRIGGER_KEYS if k in spec]
    if len(keys) != 1:
        raise ConfigError(f"{who}: expected exactly one of {list(TRIGGER_KEYS)}, got keys {sorted(spec)}")
    key = keys[0]
    if key == "features":
        if set(spec) != {key}:
            raise ConfigError(f"{who}: unknown keys {sorted(set(spec) - {key})} next to 'features'")
        return (FeatureTrigger(_column_map(f"{who}.features", spec[key])),)
    if key == "quantiles":
        if set(spec) != {key}:
            raise ConfigError(f"{who}: unknown keys {sorted(set(spec) - {key})} next to 'quantiles'")
        return (QuantileTrigger(_column_map(f"{who}.quantiles", spec[key], low=0.0, high=1.0)),)
    return (_image_trigger(who, spec, key),)
