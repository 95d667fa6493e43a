"""Writing reports: validated against ``schemas/report.schema.json``, written atomically."""

from __future__ import annotations

import json
import math
import os

import jsonschema

from ..schemas import PoisonguardError, load_json_schema


def _clean(value):
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_report(report: dict, path: str, schema: str = "report") -> dict:
    """Validate ``report`` against ``schemas/<schema>.schema.json`` and write it to ``path`` atomically."""
    report = _clean(report)
    try:
        jsonschema.validate(report, load_json_schema(schema))
    except jsonschema.ValidationError as exc:  # a bug in poisonguard, not in the user's input
        where = "/".join(str(p) for p in exc.absolute_path)
        raise PoisonguardError(f"internal error: the {schema} does not match its schema at '{where}': {exc.message}") from None
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, path)
    return report
