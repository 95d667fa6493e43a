"""Column names and Arrow schemas of the data contract (see DESIGN.md, "The data contract").

A dataset is a stream of Arrow record batches. After reading, every row carries

* ``row_id`` (utf8): taken from the configured id column, else ``"<source>:<offset>"`` where
  ``<source>`` is the file's path relative to the input argument that named it and
  ``<offset>`` the 0-based index of the row among the file's data rows;
* ``label``: the class, integer or string, under the name the user configured;
* the numeric feature columns (float64 after validation).

Screening adds ``score_<detector>`` (float64), ``suspicion`` (float64), ``flagged`` (bool)
and ``reason`` (utf8). Rows that fail parsing or validation leave in the ``invalid`` output
with every original value kept as text, plus ``source``, ``row_id`` and ``reason``.
"""

import pyarrow as pa

ROW_ID = "row_id"
LABEL = "label"
POISONED = "poisoned"
ATTACK = "attack"
ORIGINAL_LABEL = "original_label"
SUSPICION = "suspicion"
FLAGGED = "flagged"
REASON = "reason"
SOURCE = "source"
SCORE_PREFIX = "score_"

#: Output directories of the screening job; every input row ends in exactly one of them.
OUTPUTS = ("cleaned", "quarantine", "invalid")


def score_column(detector_name: str) -> str:
    """Name of the per-detector score column, e.g. ``score_spectral``."""
    return f"{SCORE_PREFIX}{detector_name}"


def screening_fields(detector_names) -> list[pa.Field]:
    """Fields the screening stage appends to every valid row, in order."""
    fields = [pa.field(score_column(n), pa.float64()) for n in detector_names]
    fields += [
        pa.field(SUSPICION, pa.float64()),
        pa.field(FLAGGED, pa.bool_()),
        pa.field(REASON, pa.string()),
    ]
    return fields


def invalid_schema(original_columns) -> pa.Schema:
    """Schema of the ``invalid`` output: identification, the reason, and the raw values as text."""
    fields = [pa.field(ROW_ID, pa.string()), pa.field(SOURCE, pa.string()), pa.field(REASON, pa.string())]
    reserved = {ROW_ID, SOURCE, REASON}
    fields += [pa.field(c, pa.string()) for c in original_columns if c not in reserved]
    return pa.schema(fields)
