"""The attack registry: YAML ``kind`` -> config class, and building an attack from a mapping."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ..schemas import ConfigError
from .backdoor import Backdoor, CleanLabel
from .base import Attack
from .injection import DuplicateFlip, Inject
from .label_flip import LabelFlip
from .noise import FeatureNoise

#: kind -> Attack subclass (label_flip's variants are its ``mode`` field).
ATTACKS: dict[str, type[Attack]] = {
    cls.kind: cls for cls in (LabelFlip, Backdoor, CleanLabel, Inject, DuplicateFlip, FeatureNoise)
}


def make_attack(spec: Mapping, *, where: str = "attack") -> Attack:
    """Build an attack from ``{"kind": ..., field: value, ...}`` (one YAML list item).

    Unknown kinds and unknown fields raise ConfigError naming them; field values are
    validated by the attack class itself.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping with a 'kind', got {spec!r}")
    kind = spec.get("kind")
    if kind not in ATTACKS:
        raise ConfigError(f"{where}.kind: expected one of {sorted(ATTACKS)}, got {kind!r}")
    cls = ATTACKS[kind]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(spec) - fields - {"kind"})
    if unknown:
        raise ConfigError(f"{kind}.{unknown[0]}: unknown field; {kind} takes {sorted(fields)}")
    return cls(**{k: v for k, v in spec.items() if k != "kind"})
