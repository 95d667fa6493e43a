"""Reading inputs as Arrow record batches and writing Parquet directories.

Inputs are CSV or Parquet files, given as files, directories (searched recursively for
``*.csv``, ``*.csv.gz``, ``*.parquet`` and ``*.pq``; names starting with ``.`` or ``_``,
files or directories, are skipped) or glob patterns. Each file is a *shard*; a shard is
read in chunks of at most ``batch_rows`` rows, and each chunk travels through the pipeline
as one element (rows are never Beam elements).

CSV files are read with every column as text, so that a stray string in a numeric column
makes that one row invalid instead of failing the file; lines with the wrong number of
fields are kept as invalid rows too. Only empty cells are missing (plus the shard's
``na_values``): ``NA``, ``null`` or ``nan`` are text like any other, kept as written. A
UTF-8 byte-order mark is skipped, and quoted values may hold newlines. Problems with a whole file (missing, unreadable,
empty, without a required column) are found before the pipeline starts, by
:func:`inspect_inputs`, and raised as :class:`~poisonguard.schemas.InputError`.
"""

from __future__ import annotations

import csv
import glob
import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from ..schemas import ROW_ID, InputError

SUFFIXES = {".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: Spellings of "missing" that do not count against a CSV column being numeric when its type
#: is guessed (pyarrow's default null values); they are not missing values when read.
NA_SPELLINGS = frozenset(pa_csv.ConvertOptions().null_values)


@dataclass(frozen=True)
class Shard:
    """One unit of input work: a file, or some of a Parquet file's row groups.

    ``source`` is the name used in derived row ids; ``first_row`` the file offset of the
    unit's first row; ``row_groups`` the Parquet row groups it covers (None: all);
    ``na_values`` the CSV cell texts read as missing besides the empty cell.
    """

    path: str
    source: str
    format: str
    index: int = 0
    row_groups: tuple[int, ...] | None = None
    first_row: int = 0
    na_values: tuple[str, ...] = ()
    stop_row: int | None = None  # ImageFolder units: the unit's files are rows first_row..stop_row of the tree

#: A Parquet file is split into work units of whole row groups holding about this many rows,
#: so that one large file can be read by several workers.
UNIT_ROWS = 1 << 20


@dataclass(frozen=True)
class RawChunk:
    """Rows of one chunk of a shard as read, before validation.

    ``table`` holds the parsed rows; ``offsets`` their 0-based row index in the file;
    ``malformed`` the CSV lines that could not be split into fields, as
    ``(offset, reason)`` pairs.
    """

    shard: Shard
    number: int
    table: pa.Table
    offsets: np.ndarray
    malformed: list = field(default_factory=list)


def _suffix_format(path: str) -> str | None:
    lower = path.lower()
    return SUFFIXES[".csv.gz"] if lower.endswith(".csv.gz") else SUFFIXES.get(os.path.splitext(lower)[1])


def discover_shards(inputs: list[str], na_values=()) -> list[Shard]:
    """Expand files, directories and globs into shards, sorted within each argument.

    ``na_values``: CSV cell texts to read as missing, besides the empty cell (``--na-values``).
    """
    if not inputs:
        raise InputError("no input given: expected one or more CSV/Parquet files, directories or globs")
    found: list[tuple[str, str, str]] = []
    for arg in inputs:
        if glob.has_magic(arg):
            matches = sorted(p for p in glob.glob(arg, recursive=True) if os.path.isfile(p))
            root = _glob_root(arg)
            files = [p for p in matches if _suffix_format(p)]
            if not files:
                raise InputError(f"input '{arg}': the pattern matches no .csv, .csv.gz, .parquet or .pq file")
            found += [(p, os.path.relpath(p, root), _suffix_format(p)) for p in files]
        elif os.path.isdir(arg):
            files = sorted(_walk_visible(arg))
            if not files:
                from .images import is_imagefolder

                if is_imagefolder(arg):  # root/<label>/<image>: one ImageFolder input
                    found.append((arg, os.path.basename(os.path.normpath(arg)) or arg, "imagefolder"))
                    continue
                raise InputError(f"input '{arg}': the directory holds no .csv, .csv.gz, .parquet or .pq file, "
                                 "nor images in <label>/ subdirectories")
            found += [(p, os.path.relpath(p, arg), _suffix_format(p)) for p in files]
        elif os.path.exists(arg):
            fmt = "npz" if arg.lower().endswith(".npz") else _suffix_format(arg)
            if fmt is None:
                raise InputError(f"input '{arg}': unsupported file type; expected .csv, .csv.gz, .parquet, .pq, .npz "
                                 "or an ImageFolder directory")
            found.append((arg, os.path.basename(arg), fmt))
        else:
            raise InputError(f"input '{arg}': no such file or directory")
    seen: dict[str, str] = {}
    files: set[str] = set()
    shards = []
    for path, source, fmt in found:
        if os.path.abspath(path) in files:  # named twice (a file and its directory, say): read once
            continue
        files.add(os.path.abspath(path))
        source = source.replace(os.sep, "/")
        if source in seen:
            raise InputError(f"inputs '{seen[source]}' and '{path}' would give rows the same ids ('{source}:N'); use --id-column or rename one")
        seen[source] = path
        shards.append(Shard(path=path, source=source, format=fmt, index=len(shards), na_values=tuple(na_values)))
    return shards


def split_units(shards: list[Shard], unit_rows: int = UNIT_ROWS) -> list[Shard]:
    """Split Parquet files into work units of consecutive row groups (about ``unit_rows`` rows each).

    Row ids stay file offsets, so results do not depend on the split; units are numbered
    afresh. CSV files stay whole (a row's offset is only known after reading the lines
    before it).
    """
    units: list[Shard] = []
    for shard in shards:
        if shard.format == "imagefolder":
            from .images import split_image_units

            units += [replace(unit, index=len(units) + i) for i, unit in enumerate(split_image_units(shard))]
            continue
        if shard.format != "parquet":
            units.append(replace(shard, index=len(units)))
            continue
        meta = pq.read_metadata(shard.path)
        groups, rows, first = [], 0, 0
        for g in range(meta.num_row_groups):
            groups.append(g)
            rows += meta.row_group(g).num_rows
            if rows >= unit_rows or g == meta.num_row_groups - 1:
                units.append(replace(shard, index=len(units), row_groups=tuple(groups), first_row=first))
                first += rows
                groups, rows = [], 0
        if meta.num_row_groups == 0:
            units.append(replace(shard, index=len(units)))
    return units


def _walk_visible(root: str) -> Iterator[str]:
    """Input files below ``root``, skipping hidden and ``_``-prefixed files and directories
    (``.git``, ``.poisonguard-runs``, Spark's ``_temporary``): never input."""
    for d, dirs, names in os.walk(root):
        dirs[:] = [n for n in dirs if not n.startswith((".", "_"))]
        yield from (os.path.join(d, f) for f in names if _suffix_format(f) and not f.startswith((".", "_")))


def _glob_root(pattern: str) -> str:
    parts = pattern.split(os.sep)
    root = []
    for part in parts:
        if glob.has_magic(part):
            break
        root.append(part)
    return os.sep.join(root) or "."


# -- inspection ----------------------------------------------------------------------------
def read_schema(shard: Shard) -> pa.Schema:
    """The shard's column names and types.

    For CSV, a column counts as numeric (float64) when at least 90% of the non-empty values
    in the first block (about 1 MB) parse as numbers, so that a few stray strings make
    their rows invalid instead of silently turning the column into text; common spellings
    of "missing" (``NA``, ``null``...) do not count either way. Columns with no values
    there have type ``null``. Raises InputError naming the file when it is
    unreadable or empty.
    """
    try:
        if shard.format == "parquet":
            return pq.read_schema(shard.path)
        header = _csv_header(shard)
        reader = pa_csv.open_csv(
            shard.path,
            read_options=pa_csv.ReadOptions(use_threads=False, block_size=1 << 20),
            parse_options=pa_csv.ParseOptions(invalid_row_handler=lambda row: "skip", newlines_in_values=True),
            convert_options=_convert_options(shard, header),
        )
        try:
            first = reader.read_next_batch()
        except StopIteration:
            first = None
        fields = []
        for name in header:
            if first is None or first.column(name).null_count == first.num_rows:
                fields.append(pa.field(name, pa.null()))
                continue
            present = first.column(name).drop_null()
            present = present.filter(pc.invert(pc.is_in(present, value_set=pa.array(sorted(NA_SPELLINGS)))))
            numeric = len(present) > 0 and (~parse_numbers(present)[1]).mean() >= 0.9
            fields.append(pa.field(name, pa.float64() if numeric else pa.string()))
        return pa.schema(fields)
    except InputError:
        raise
    except (OSError, pa.ArrowException, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{shard.path}: cannot read the file as {shard.format.upper()}: {_first_line(exc)}") from None


def parse_numbers(text: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Parse text to float64: ``(values, unparsable)``, NaN and True where a value is no number.

    Arrow's cast does the work when every value parses ("nan" and "inf" included); when one
    does not, pandas parses value by value. Nulls give NaN but are not "unparsable".
    """
    try:
        return pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False), np.zeros(len(text), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    text = text.cast(pa.string())
    values = pd.to_numeric(pd.Series(text.to_numpy(zero_copy_only=False), dtype=object), errors="coerce")
    values = values.to_numpy(dtype=np.float64, na_value=np.nan)
    nan_literal = pc.is_in(pc.utf8_lower(pc.utf8_trim_whitespace(text)), value_set=pa.array(["nan", "+nan", "-nan"]))
    present = ~text.is_null().to_numpy(zero_copy_only=False)
    return values, present & np.isnan(values) & ~nan_literal.to_numpy(zero_copy_only=False)


def _convert_options(shard: Shard, header: list[str]) -> pa_csv.ConvertOptions:
    """Every column as text; only empty cells (and the shard's ``na_values``) are missing."""
    return pa_csv.ConvertOptions(column_types={name: pa.string() for name in header}, null_values=["", *shard.na_values],
                                 strings_can_be_null=True, quoted_strings_can_be_null=False)


def _csv_header(shard: Shard) -> list[str]:
    opener = gzip.open if shard.path.lower().endswith(".gz") else open
    with opener(shard.path, "rt", newline="", encoding="utf-8-sig") as fh:  # -sig: skip a byte-order mark
        try:
            header = next(csv.reader(fh))
        except StopIteration:
            raise InputError(f"{shard.path}: the file is empty; expected a CSV header row") from None
    if not header or all(not h.strip() for h in header):
        raise InputError(f"{shard.path}: the first line is blank; expected a CSV header row")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputError(f"{shard.path}: duplicate column name(s) in the header: {', '.join(dupes)}")
    return header


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# -- reading -------------------------------------------------------------------------------
def read_shard(shard: Shard, batch_rows: int) -> Iterator[RawChunk]:
    """Yield the shard's rows in chunks of at most ``batch_rows`` rows."""
    try:
        if shard.format == "parquet":
            yield from _read_parquet(shard, batch_rows)
        else:
            yield from _read_csv(shard, batch_rows)
    except InputError:
        raise
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
        raise InputError(f"{shard.path}: failed while reading: {_first_line(exc)}") from None


def _read_parquet(shard: Shard, batch_rows: int) -> Iterator[RawChunk]:
    start = shard.first_row
    pf = pq.ParquetFile(shard.path)
    groups = list(shard.row_groups) if shard.row_groups is not None else None
    for number, batch in enumerate(pf.iter_batches(batch_size=batch_rows, row_groups=groups)):
        n = batch.num_rows
        yield RawChunk(shard, number, pa.Table.from_batches([batch]), np.arange(start, start + n, dtype=np.int64))
        start += n


def _read_csv(shard: Shard, batch_rows: int) -> Iterator[RawChunk]:
    header = _csv_header(shard)
    malformed_lines: list[tuple[int, str]] = []  # (line number, reason), in file order

    def on_invalid_row(row) -> str:
        text = row.text if len(row.text) <= 200 else row.text[:197] + "..."
        malformed_lines.append(
            (int(row.number), f"malformed CSV line {row.number}: expected {row.expected_columns} fields, found {row.actual_columns}: {text!r}")
        )
        return "skip"

    reader = pa_csv.open_csv(
        shard.path,
        read_options=pa_csv.ReadOptions(use_threads=False, block_size=1 << 22),
        parse_options=pa_csv.ParseOptions(invalid_row_handler=on_invalid_row, newlines_in_values=True),
        convert_options=_convert_options(shard, header),
    )
    parsed = 0  # well-formed rows so far
    emitted = 0  # malformed lines already attached to a chunk
    number = 0
    for batch in reader:
        # The handler has now seen every malformed line up to the end of this block. A
        # well-formed row with parsed-index k sits after each malformed row i whose data-row
        # offset m_i satisfies m_i - i <= k.
        bad = _line_offsets(malformed_lines)
        bad_before = bad - np.arange(len(bad))
        for start in range(0, batch.num_rows, batch_rows):
            part = batch.slice(start, batch_rows)
            k = np.arange(parsed, parsed + part.num_rows, dtype=np.int64)
            offsets = k + np.searchsorted(bad_before, k, side="right")
            parsed += part.num_rows
            upto = emitted + int(np.count_nonzero(bad[emitted:] < offsets[-1])) if len(offsets) else emitted
            attached = [(int(off), reason) for off, (_, reason) in zip(bad[emitted:upto], malformed_lines[emitted:upto])]
            emitted = upto
            yield RawChunk(shard, number, pa.Table.from_batches([part]), offsets, attached)
            number += 1
    bad = _line_offsets(malformed_lines)
    rest = [(int(off), reason) for off, (_, reason) in zip(bad[emitted:], malformed_lines[emitted:])]
    if rest or number == 0:
        empty = pa.table({name: pa.array([], pa.string()) for name in header})
        yield RawChunk(shard, number, empty, np.zeros(0, dtype=np.int64), rest)


def _line_offsets(malformed_lines) -> np.ndarray:
    """Data-row offsets of malformed CSV lines (line 1 is the header)."""
    return np.array([line - 2 for line, _ in malformed_lines], dtype=np.int64)


# -- writing -------------------------------------------------------------------------------
def part_name(shard_index: int, chunk_number: int) -> str:
    """Deterministic file name of one chunk's part of an output directory."""
    return f"part-{shard_index:05d}-{chunk_number:06d}.parquet"


def write_part(table: pa.Table, directory: str, name: str) -> None:
    """Write one part file (skipped when the table has no rows)."""
    if table.num_rows == 0:
        return
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{name}.tmp")
    # pyarrow dictionary-encodes every column by default; for floating-point columns (features, scores) that
    # made writing 8-10x slower and the files larger (measured: 300,000 x 36 floats, 2.3 s against 0.3 s), and
    # row ids, unique by design, took a third of the rest (65,536 rows x 38 columns: 30 ms against 21 ms)
    pq.write_table(table, tmp, use_dictionary=[f.name for f in table.schema if not (pa.types.is_floating(f.type) or f.name == ROW_ID)])
    os.replace(tmp, os.path.join(directory, name))


def read_output(directory: str) -> pa.Table | None:
    """Read an output directory written by poisonguard (None when it holds no rows)."""
    files = sorted(f for f in os.listdir(directory) if f.endswith(".parquet")) if os.path.isdir(directory) else []
    if not files:
        return None
    return pa.concat_tables([pq.read_table(os.path.join(directory, f)) for f in files], promote_options="default")


