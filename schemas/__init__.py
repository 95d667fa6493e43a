"""The data contract of poisonguard: column names, Arrow schemas, JSON Schemas, errors and row hashing."""

import json
from importlib import resources

from .contract import (
    ATTACK,
    FLAGGED,
    LABEL,
    ORIGINAL_LABEL,
    OUTPUTS,
    POISONED,
    REASON,
    ROW_ID,
    SCORE_PREFIX,
    SOURCE,
    SUSPICION,
    invalid_schema,
    score_column,
    screening_fields,
)
from .errors import ConfigError, InputError, PoisonguardError
from .hashing import row_hash, uniform_from_hash


def load_json_schema(name: str) -> dict:
    """Load one of the JSON Schemas shipped in this package, e.g. ``"report"``."""
    text = resources.files(__name__).joinpath(f"{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


__all__ = [
    "ATTACK",
    "ConfigError",
    "FLAGGED",
    "InputError",
    "LABEL",
    "ORIGINAL_LABEL",
    "OUTPUTS",
    "POISONED",
    "PoisonguardError",
    "REASON",
    "ROW_ID",
    "SCORE_PREFIX",
    "SOURCE",
    "SUSPICION",
    "invalid_schema",
    "load_json_schema",
    "row_hash",
    "score_column",
    "screening_fields",
    "uniform_from_hash",
]
