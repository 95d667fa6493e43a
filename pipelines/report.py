"""Writing job records (screen report, simulate manifest): shared sections, schema validation, atomic write."""

from __future__ import annotations

import json
import math
import os

import jsonschema
import pyarrow as pa

from ..schemas import PoisonguardError, load_json_schema
from .rows import LABEL_NORMALISATION


def _clean(value):
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def inputs_section(paths, files, contract) -> dict:
    """The ``inputs`` section of a job record: what was read, and how its columns were taken."""
    return {
        "paths": list(paths),
        "files": [f.path for f in files],
        "label_column": contract.label_column,
        "id_column": contract.id_column,
        "feature_columns": list(contract.feature_columns),
        "label_type": str(contract.label_type),
        "label_normalisation": LABEL_NORMALISATION if pa.types.is_string(contract.label_type) else None,
        "na_values": ["", *(files[0].na_values if files else ())],
    }


def rounded(value, digits: int = 6):
    """``value`` with every float rounded to ``digits`` significant digits (0.7000000000000028 -> 0.7)."""
    if isinstance(value, float) and math.isfinite(value):
        return 0.0 if value == 0 else float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def percent(fraction: float | None) -> str:
    """A fraction as a percentage a person can read: never ``0.00%`` for a non-zero share.

    Two significant digits below 1%, two decimals above; exact 0 and 1 read ``0%`` and ``100%``.
    """
    if fraction is None:
        return "n/a"
    value = 100.0 * fraction
    if value == 0:
        return "0%"
    if value == 100:
        return "100%"
    if abs(value) >= 1:
        text = f"{value:.2f}".rstrip("0").rstrip(".")
        if text == "100":  # 99.999...%: not all of it
            text = "99.99"
        return f"{text}%"
    return f"{value:.2g}%" if abs(value) >= 1e-4 else f"{value:.1e}%"


def write_text(text: str, path: str) -> int:
    """Write ``text`` to ``path`` atomically (temporary file, then rename); returns the size in bytes."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return len(text.encode("utf-8"))


def write_json(value, path: str) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    write_text(json.dumps(_clean(value), indent=2) + "\n", path)


def library_versions() -> dict:
    """Versions of Python, poisonguard and the libraries that decide its results."""
    import platform

    import apache_beam
    import numba
    import numpy
    import pandas
    import pyarrow
    import sklearn

    from .. import __version__

    from importlib.metadata import PackageNotFoundError, version

    try:  # without importing it: that costs seconds
        gx = version("great_expectations")
    except PackageNotFoundError:  # pragma: no cover - a dependency
        gx = "not installed"
    return {
        "python": platform.python_version(),
        "poisonguard": __version__,
        "apache_beam": apache_beam.__version__,
        "pyarrow": pyarrow.__version__,
        "pandas": pandas.__version__,
        "numpy": numpy.__version__,
        "scikit_learn": sklearn.__version__,
        "numba": numba.__version__,
        "great_expectations": gx,
    }


def write_report(report: dict, path: str, schema: str = "report") -> dict:
    """Validate ``report`` against ``schemas/<schema>.schema.json`` and write it to ``path`` atomically."""
    report = _clean(report)
    try:
        jsonschema.validate(report, load_json_schema(schema))
    except jsonschema.ValidationError as exc:  # a bug in poisonguard, not in the user's input
        where = "/".join(str(p) for p in exc.absolute_path)
        raise PoisonguardError(f"internal error: the {schema} does not match its schema at '{where}': {exc.message}") from None
    write_text(json.dumps(report, indent=2) + "\n", path)
    return report
