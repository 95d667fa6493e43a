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

    return {
        "python": platform.python_version(),
        "poisonguard": __version__,
        "apache_beam": apache_beam.__version__,
        "pyarrow": pyarrow.__version__,
        "pandas": pandas.__version__,
        "numpy": numpy.__version__,
        "scikit_learn": sklearn.__version__,
        "numba": numba.__version__,
    }


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
