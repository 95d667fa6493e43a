"""Image inputs: ImageFolder trees, ``.npz`` arrays and Parquet image columns, read as Arrow chunks.

Inputs, recognised without flags:

* an **ImageFolder** tree ``root/<label>/<file>``, given as a directory that holds no
  CSV/Parquet file but has image files (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif``,
  ``.webp``, ``.tif``, ``.tiff``) in its subdirectories. Every visible file below a label
  directory is a row (a file that is no image becomes an invalid row, not a lost one);
  the row id is the path relative to ``root``; the label is the directory name (text).
  A tree is split into work units of :data:`UNIT_FILES` files.
* a **.npz** file (loaded with ``allow_pickle=False``) holding images ``(N, H, W)`` or
  ``(N, H, W, C)`` uint8 and labels ``(N,)``; the array names are ``images`` and
  ``labels`` unless ``--npz-arrays IMAGES,LABELS`` says otherwise. Rows become PNG bytes.
* a **Parquet** file with an image column: the Hugging Face layout ``struct<bytes, path>``
  or a binary column of PNG/JPEG bytes (found by the first value's signature), or the
  column ``--image-column`` names.

Every image row travels as the Hugging Face layout (``struct<bytes: binary, path: string>``)
or as the Parquet input's own column, so ``cleaned/`` and ``quarantine/`` hold the images
themselves: a dataset to train on.

Decoding is Pillow's, with its decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) kept:
an image over it, bytes that are no image Pillow can read, or an image of another size
becomes an invalid row with its reason. **Mixed sizes**: the batch has one image shape,
``--image-size HxW`` or else the first readable image's; an image of another size is
invalid ("image is 32x32, expected 28x28") unless ``--resize`` is given, which resizes it
(bilinear) to the declared shape. Colour: a batch whose first image is grey (mode L) is
read as grey, any other as RGB; each image is converted to that mode.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from ..schemas import POISONED, REASON, ROW_ID, SOURCE, ConfigError, InputError
from ..schemas.hashing import row_hash
from .io import RawChunk, Shard, _first_line, read_shard
from .representation import KINDS, SAMPLE_SIZE, Representation, fit_representation
from .rows import Contract, _as_bool, _as_text, _check_reserved, _Reasons, derived_ids, normalise_labels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: An ImageFolder tree is read in work units of this many files.
UNIT_FILES = 8192
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
#: Most image rows in one chunk (``--batch-rows`` may ask for fewer): encoded images are large rows.
CHUNK_ROWS = 8192
#: Images decoded at once when computing features (a chunk of 65,536 224x224 RGB images would be 10 GB decoded).
DECODE_BLOCK = 512
#: Name of the image column of ImageFolder and .npz inputs.
IMAGE_COLUMN = "image"
EMBEDDING_COLUMN = "embedding"
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
#: Detectors an image batch runs without ``--detectors``: spectral signatures on the pooled pixels (measured on
#: MNIST, benchmarks/README.md, Images: spectral + label found the same rows in 75 times the time).
IMAGE_DEFAULT_DETECTORS = ("spectral",)
#: Detector parameters for image batches (a user's --detector parameters win): see SpectralSignatureDetector's
#: ``point_mass_scale`` (clean images are a point mass along a trigger's direction), and a stronger ridge on the pooled
#: covariance (0.3 instead of 0.1): background pixels that are 0 in almost every image have almost no pooled variance,
#: and whitening them by it made a stroke that some clean 9s share a "cluster" once a third of the 7s carried a patch
#: (precision 0.81 at 0.1, 1.00 at 0.3; benchmarks/README.md, Images); and the null's quantiles read inside their bins
#: (``null_quantiles``): scored in units of the projection grid's resolution, a class's clean quartiles lie a bin or two
#: apart, and read at the bins' edges they gave the heaviest tail for two seeds of three of a blend on 5% of the 7s; and
#: the top 4 whitened directions searched for a cluster (``subspace``): in a model's embedding of its poisoned data the
#: poison's direction is often the class's second or third (MNIST with an MLP's activations, 5% and 10%).
IMAGE_DETECTOR_PARAMS = {"spectral": {"point_mass_scale": "resolution", "shrinkage": 0.3, "null_quantiles": "interpolated",
                                      "subspace": 4}}


@dataclass(frozen=True)
class ImageOptions:
    """How image inputs are read and represented (the CLI's image options)."""

    image_column: str | None = None  # None: found by type / signature
    image_size: tuple[int, int] | None = None  # (H, W); None: the first readable image's
    resize: bool = False  # resize other sizes to image_size instead of calling them invalid
    representation: str | None = None  # None: "embedding" when the input has one, else "pixels"
    npz_arrays: tuple[str, str] = ("images", "labels")
    sample_size: int = SAMPLE_SIZE
    seed: int = 0

    def __post_init__(self):
        if self.representation is not None and self.representation not in KINDS:
            raise ConfigError(f"--representation: expected one of {', '.join(KINDS)}, got {self.representation!r}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ConfigError(f"--image-size: expected HxW with positive sides, got {self.image_size!r}")
        if self.resize and self.image_size is None:
            raise ConfigError("--resize: needs --image-size HxW, the shape to resize to")
        if self.sample_size < 2:
            raise ConfigError(f"image sample size: expected at least 2, got {self.sample_size}")


# -- discovery ------------------------------------------------------------------------------
def is_imagefolder(root: str) -> bool:
    """Whether ``root`` is an ImageFolder tree: image files in its (visible) subdirectories."""
    for d, dirs, names in os.walk(root):
        dirs[:] = [n for n in dirs if not n.startswith((".", "_"))]
        if d != root and any(n.lower().endswith(IMAGE_SUFFIXES) for n in names if not n.startswith((".", "_"))):
            return True
    return False


def imagefolder_files(root: str) -> list[str]:
    """Every visible file below ``root``, as sorted relative paths with '/' (the row ids)."""
    out = []
    for d, dirs, names in os.walk(root):
        dirs[:] = [n for n in dirs if not n.startswith((".", "_"))]
        out += [os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/") for n in names if not n.startswith((".", "_"))]
    return sorted(out)


def split_image_units(shard: Shard, unit_files: int = UNIT_FILES) -> list[Shard]:
    """An ImageFolder shard as work units of ``unit_files`` consecutive files (``first_row`` .. ``stop_row``)."""
    n = len(imagefolder_files(shard.path))
    return [replace(shard, first_row=start, stop_row=min(start + unit_files, n)) for start in range(0, max(n, 1), unit_files)]


def is_image_input(shards: list[Shard], options: ImageOptions) -> bool:
    """Whether the inputs are images (an ImageFolder, .npz, or Parquet with an image column); mixing is an InputError."""
    kinds = [shard.format in ("imagefolder", "npz") or (shard.format == "parquet" and _parquet_image_column(shard, options) is not None)
             for shard in shards]
    if any(kinds) and not all(kinds):
        odd = shards[kinds.index(False)]
        raise InputError(f"{odd.path}: holds no images, but other inputs do; screen images and tables separately")
    if options.image_column is not None and not any(kinds):
        raise InputError(f"{shards[0].path}: --image-column {options.image_column}: no such column of images")
    return bool(kinds) and all(kinds)


def _parquet_image_column(shard: Shard, options: ImageOptions) -> str | None:
    try:
        schema = pq.read_schema(shard.path)
    except (OSError, pa.ArrowException) as exc:
        if options.image_column is not None:
            raise InputError(f"{shard.path}: cannot read the file as PARQUET: {_first_line(exc)}") from None
        return None  # the table reader says what is wrong with it
    if options.image_column is not None:
        if options.image_column not in schema.names:
            raise InputError(f"{shard.path}: --image-column: no column '{options.image_column}' (columns: {', '.join(schema.names)})")
        t = schema.field(options.image_column).type
        if not (_is_hf_struct(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)):
            raise InputError(f"{shard.path}: column '{options.image_column}' has type {t}; expected image bytes "
                             "(binary, or struct<bytes, path>)")
        return options.image_column
    for f in schema:
        if _is_hf_struct(f.type):
            return f.name
    binary = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    if binary:
        first = next(pq.ParquetFile(shard.path).iter_batches(batch_size=16, columns=binary), None)
        for name in binary:
            values = [v for v in (first.column(name).to_pylist() if first is not None else []) if v]
            if values and values[0].startswith(_SIGNATURES):
                return name
    return None


def _is_hf_struct(t: pa.DataType) -> bool:
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and pa.types.is_binary(t.field("bytes").type)


# -- decoding -------------------------------------------------------------------------------
def decode(data, shape: tuple[int, int, int], resize: bool):
    """``(pixels (H, W, C) uint8, None)`` or ``(None, reason)`` for one encoded image."""
    if data is None:
        return None, "missing image"
    h, w, c = shape
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.size != (w, h) and not resize:
                    return None, f"image is {im.size[1]}x{im.size[0]}, expected {h}x{w} (pass --image-size and --resize to resize)"
                im = im.convert("L" if c == 1 else "RGB")
                if im.size != (w, h):
                    im = im.resize((w, h), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return None, f"image over Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} pixels ({_first_line(exc)})"
    except UnidentifiedImageError:
        return None, f"not an image Pillow can read ({len(data):,} bytes)"
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return None, f"unreadable image: {_first_line(exc)}"
    return arr.reshape(h, w, c), None


def _first_image_shape(data_iter) -> tuple[int, int, int] | None:
    for data in data_iter:
        if not data:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as im:
                    return im.size[1], im.size[0], 1 if im.mode in ("L", "1", "I", "I;16", "F") else 3
        except (Image.DecompressionBombError, Image.DecompressionBombWarning, UnidentifiedImageError, OSError, SyntaxError, ValueError):
            continue
    return None


def image_bytes(column) -> list:
    """The encoded bytes of an image column (HF struct or binary), one per row (None where missing)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_struct(column.type):
        data = pc.struct_field(column, "bytes")
        return [None if not valid else v for v, valid in zip(data.to_pylist(), column.is_valid().to_pylist())]
    return column.to_pylist()


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless PNG bytes of one ``(H, W, C)`` uint8 image."""
    arr = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# -- reading --------------------------------------------------------------------------------
def read_image_shard(shard: Shard, batch_rows: int, options: ImageOptions = ImageOptions()):
    """Yield an ImageFolder unit's or a .npz file's rows as RawChunks of at most ``batch_rows`` rows."""
    if shard.format == "imagefolder":
        files = imagefolder_files(shard.path)[shard.first_row: shard.stop_row]
        for number, start in enumerate(range(0, len(files), batch_rows)):
            part = files[start: start + batch_rows]
            data = []
            for rel in part:
                with open(os.path.join(shard.path, rel), "rb") as fh:
                    data.append(fh.read())
            labels = [rel.split("/")[0] if "/" in rel else None for rel in part]
            table = pa.table({IMAGE_COLUMN: pa.array([{"bytes": b, "path": p} for b, p in zip(data, part)], IMAGE_STRUCT),
                              "label": pa.array(labels, pa.string())})
            yield RawChunk(shard, number, table, np.arange(shard.first_row + start, shard.first_row + start + len(part)))
        return
    images, labels = load_npz(shard.path, options.npz_arrays)
    for number, start in enumerate(range(0, len(images), batch_rows)):
        block = images[start: start + batch_rows]
        data = [encode_png(img) for img in block]
        table = pa.table({IMAGE_COLUMN: pa.array([{"bytes": b, "path": None} for b in data], IMAGE_STRUCT),
                          "label": pa.array(labels[start: start + batch_rows])})
        yield RawChunk(shard, number, table, np.arange(start, start + len(block)))


def load_npz(path: str, names: tuple[str, str]):
    """Images ``(N, H, W, C)`` uint8 and labels ``(N,)`` of a .npz file (``allow_pickle=False``); InputError naming the key."""
    img_key, lab_key = names
    try:
        with np.load(path, allow_pickle=False) as z:
            for key in names:
                if key not in z.files:
                    raise InputError(f"{path}: no array '{key}' (arrays: {', '.join(z.files)}); name them with --npz-arrays IMAGES,LABELS")
            images, labels = z[img_key], z[lab_key]
    except InputError:
        raise
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read as .npz without pickle: {_first_line(exc)}") from None
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
        raise InputError(f"{path}: array '{img_key}' has shape {images.shape} and dtype {images.dtype}; "
                         "expected uint8 images (N, H, W) or (N, H, W, 1|3)")
    if labels.ndim != 1 or len(labels) != len(images) or labels.dtype.kind not in "iuU":
        raise InputError(f"{path}: array '{lab_key}' has shape {labels.shape} and dtype {labels.dtype}; "
                         f"expected {len(images)} integer or text labels")
    return images, (labels.astype(np.int64) if labels.dtype.kind in "iu" else labels.astype(str))


# -- the contract -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageContract(Contract):
    """A row contract whose features are computed from an image column by a :class:`Representation`.

    ``feature_columns`` are the representation's feature names (not columns of the rows);
    ``representation`` is None until fitted (:func:`fit_representation_pass`).
    """

    image_column: str = IMAGE_COLUMN
    image_shape: tuple = ()
    resize: bool = False
    ids_from_paths: bool = False
    embedding_column: str | None = None
    representation: Representation | None = None
    options: ImageOptions = field(default_factory=ImageOptions)

    def decode_images(self, valid: pa.Table) -> np.ndarray:
        """The valid rows' images, decoded: ``(n, H, W, C)`` uint8."""
        out = np.empty((valid.num_rows, *self.image_shape), dtype=np.uint8)
        for i, data in enumerate(image_bytes(valid.column(self.image_column))):
            out[i] = decode(data, self.image_shape, self.resize)[0]
        return out

    def features(self, valid: pa.Table) -> np.ndarray:
        if valid.num_rows == 0:
            return np.zeros((0, len(self.feature_columns)))
        if self.representation.kind == "embedding":
            col = valid.column(self.embedding_column).combine_chunks()
            return np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float64).reshape(valid.num_rows, -1)
        out = np.empty((valid.num_rows, len(self.feature_columns)))
        for start in range(0, valid.num_rows, DECODE_BLOCK):  # bounded memory: one block of decoded images at a time
            out[start: start + DECODE_BLOCK] = self.representation.transform(self.decode_images(valid.slice(start, DECODE_BLOCK)))
        return out

    def validate(self, raw: RawChunk) -> tuple[pa.Table, pa.Table]:
        return validate_image_chunk(raw, self)

    def read(self, shard: Shard, batch_rows: int):
        batch_rows = min(batch_rows, CHUNK_ROWS)
        if shard.format == "parquet":
            return read_shard(shard, batch_rows)
        return read_image_shard(shard, batch_rows, self.options)


def resolve_image_contract(shards: list[Shard], options: ImageOptions, *, label_column: str = "label",
                           id_column: str | None = None) -> ImageContract:
    """The contract of image inputs (all ImageFolder, .npz or Parquet with an image column)."""
    formats = {s.format for s in shards}
    first = shards[0]
    if formats <= {"imagefolder", "npz"}:
        label_column = "label"
        names = (IMAGE_COLUMN, "label")
        image_column = IMAGE_COLUMN
        label_types = []
        for s in shards:
            if s.format == "npz":
                label_types.append(pa.int64() if load_npz(s.path, options.npz_arrays)[1].dtype.kind == "i" else pa.string())
            else:
                label_types.append(pa.string())
        label_type = pa.int64() if all(t == pa.int64() for t in label_types) else pa.string()
        passthrough = ((IMAGE_COLUMN, IMAGE_STRUCT),)
        sample = _first_bytes(first, options)
    elif formats == {"parquet"}:
        image_column = _parquet_image_column(first, options)
        schemas = [pq.read_schema(s.path) for s in shards]
        for s, schema in zip(shards, schemas):
            if image_column not in schema.names:
                raise InputError(f"{s.path}: no image column '{image_column}' (columns: {', '.join(schema.names)})")
            if label_column not in schema.names:
                raise InputError(f"{s.path}: no label column '{label_column}' (columns: {', '.join(schema.names)}); set it with --label-column")
        names = tuple(schemas[0].names)
        lt = [schema.field(label_column).type for schema in schemas]
        label_type = pa.int64() if all(pa.types.is_integer(t) for t in lt) else pa.string()
        passthrough = tuple((n, schemas[0].field(n).type) for n in names if n != label_column)
        sample = image_bytes(next(pq.ParquetFile(first.path).iter_batches(batch_size=256, columns=[image_column])).column(0))
    else:
        raise InputError(f"{first.path}: image inputs must all be ImageFolder trees and .npz files, or all Parquet")
    _check_reserved(first, names)
    if ROW_ID in names and id_column is None:
        id_column = ROW_ID
    if options.image_size is not None:
        detected = _first_image_shape(sample)
        shape = (*options.image_size, detected[2] if detected else 1)
    else:
        shape = _first_image_shape(sample)
        if shape is None:
            raise InputError(f"{first.path}: none of the first images is readable to learn the image size from; give it with --image-size HxW")
    embedding = EMBEDDING_COLUMN if EMBEDDING_COLUMN in names else None
    kind = options.representation or ("embedding" if embedding else "pixels")
    if kind == "embedding" and embedding is None:
        raise ConfigError(f"--representation embedding: {first.path} has no '{EMBEDDING_COLUMN}' column")
    return ImageContract(label_column, id_column, (), label_type, passthrough, names, (), image_column=image_column,
                         image_shape=tuple(int(v) for v in shape), resize=options.resize,
                         ids_from_paths=formats == {"imagefolder"} and id_column is None, embedding_column=embedding,
                         options=replace(options, representation=kind))


def _first_bytes(shard: Shard, options: ImageOptions) -> list:
    if shard.format == "npz":
        images, _ = load_npz(shard.path, options.npz_arrays)
        return [encode_png(img) for img in images[:16]]
    out = []
    for rel in imagefolder_files(shard.path)[:256]:
        with open(os.path.join(shard.path, rel), "rb") as fh:
            out.append(fh.read())
    return out


def with_representation(contract: ImageContract, representation: Representation) -> ImageContract:
    return replace(contract, representation=representation, feature_columns=representation.names())


# -- per-chunk validation ---------------------------------------------------------------------
def validate_image_chunk(raw: RawChunk, contract: ImageContract) -> tuple[pa.Table, pa.Table]:
    """Split a chunk of image rows into ``(valid, invalid)``; every row is in exactly one.

    A row is invalid with its reason when its label is missing, its image is missing, is
    no image Pillow can read, is over the decompression-bomb limit or has another size
    (without ``resize``), or its embedding (when that is the representation) is missing,
    of another length or not finite; for ImageFolder, when the file is not inside a label directory.
    """
    table, n = raw.table, raw.table.num_rows
    reasons = _Reasons(n)
    column = table.column(contract.image_column)
    data = image_bytes(column)
    if contract.ids_from_paths:
        ids = pc.struct_field(column.combine_chunks(), "path")
    else:
        ids = derived_ids(raw.shard.source, raw.offsets)
        if contract.id_column is not None:
            id_col = table.column(contract.id_column).cast(pa.string()).combine_chunks()
            reasons.add(id_col.is_null().to_numpy(zero_copy_only=False), lambda i: f"column '{contract.id_column}': missing id")
            ids = pc.coalesce(id_col, ids)
    label = table.column(contract.label_column)
    missing = label.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_string(label.type) or pa.types.is_large_string(label.type):
        label = normalise_labels(label.cast(pa.string()))
    reasons.add(missing, lambda i: (f"column '{contract.label_column}': missing label" if not contract.ids_from_paths
                                     else "file is not inside a <label>/ directory"))
    why = [decode(d, contract.image_shape, contract.resize)[1] for d in data]
    reasons.add(np.array([w is not None for w in why], dtype=bool), lambda i: f"column '{contract.image_column}': {why[i]}")
    if contract.representation is not None and contract.representation.kind == "embedding":
        _check_embedding(table.column(contract.embedding_column), contract, reasons)
    truth = _as_bool(table.column(POISONED), POISONED, reasons) if POISONED in table.column_names else None

    bad = reasons.bad
    keep, drop = pa.array(~bad), pa.array(bad)
    columns = {ROW_ID: ids.filter(keep), contract.label_column: label.filter(keep).cast(contract.label_type)}
    for name, typ in contract.passthrough:
        columns[name] = pa.array(truth[~bad], pa.bool_()) if name == POISONED else table.column(name).filter(keep).cast(typ)
    valid = pa.table(columns, schema=contract.valid_schema())
    invalid_rows = {ROW_ID: ids.filter(drop).to_pylist(), SOURCE: [raw.shard.source] * int(bad.sum()), REASON: list(reasons.text[bad])}
    for name in contract.columns:
        if name in invalid_rows:
            continue
        if name == contract.image_column:  # the file's path (ImageFolder) or size; the bytes stay with the input
            rows = np.flatnonzero(bad)
            paths = pc.struct_field(column.combine_chunks(), "path").to_pylist() if pa.types.is_struct(column.type) else [None] * n
            invalid_rows[name] = [paths[i] or (None if data[i] is None else f"<{len(data[i]):,} bytes>") for i in rows]
        else:
            invalid_rows[name] = _as_text(table.column(name).filter(drop))
    return valid, pa.table(invalid_rows, schema=contract.invalid_schema())


def _check_embedding(column, contract: ImageContract, reasons: _Reasons) -> None:
    d = contract.representation.embedding_dim
    values = column.to_pylist()

    def problem(v):
        if v is None:
            return "missing embedding"
        if len(v) != d:
            return f"embedding of length {len(v)}, expected {d}"
        if any(x is None for x in v) or not np.all(np.isfinite(np.asarray(v, dtype=np.float64))):
            return "embedding with a missing or non-finite value"
        return None

    why = [problem(v) for v in values]
    reasons.add(np.array([w is not None for w in why], dtype=bool), lambda i: f"column '{contract.embedding_column}': {why[i]}")


# -- the representation's bounded sample --------------------------------------------------------
class ImageSample:
    """The ``size`` valid images with the smallest keyed hash of their row id, and their labels (combinable)."""

    def __init__(self, size: int, shape):
        self.size = size
        self.hashes = np.empty(0, dtype=np.uint64)
        self.images = np.empty((0, *shape), dtype=np.uint8)
        self.labels = np.empty(0, dtype=object)

    def add(self, hashes, images, labels) -> ImageSample:
        self.hashes = np.concatenate([self.hashes, hashes])
        self.images = np.concatenate([self.images, images])
        self.labels = np.concatenate([self.labels, np.asarray(labels, dtype=object)])
        order = np.argsort(self.hashes, kind="stable")[: self.size]
        self.hashes, self.images, self.labels = self.hashes[order], self.images[order], self.labels[order]
        return self

    def merge(self, other: ImageSample) -> ImageSample:
        return self.add(other.hashes, other.images, other.labels)


def chunk_sample(valid: pa.Table, contract: ImageContract) -> ImageSample:
    """A chunk's part of the bounded sample (only its own smallest hashes are decoded)."""
    sample = ImageSample(contract.options.sample_size, contract.image_shape)
    if valid.num_rows == 0:
        return sample
    hashes = row_hash(valid.column(ROW_ID).to_numpy(zero_copy_only=False), contract.options.seed, purpose="image-representation")
    take = np.argsort(hashes, kind="stable")[: sample.size]
    part = valid.take(pa.array(take))
    return sample.add(hashes[take], contract.decode_images(part), contract.labels(part))


def embedding_dim(shards: list[Shard], contract: ImageContract) -> int:
    """Length of the first present embedding (the one every row must have)."""
    for batch in pq.ParquetFile(shards[0].path).iter_batches(batch_size=1024, columns=[contract.embedding_column]):
        for v in batch.column(0).to_pylist():
            if v is not None:
                return len(v)
    raise InputError(f"{shards[0].path}: column '{contract.embedding_column}' holds no embedding")


def finish_representation(contract: ImageContract, shards, sample: ImageSample | None) -> ImageContract:
    """Fit the configured representation (on the sample, when it needs one) into the contract."""
    kind = contract.options.representation
    if kind == "embedding":
        rep = fit_representation(kind, contract.image_shape, embedding_dim=embedding_dim(shards, contract))
    elif kind == "pixels":
        rep = fit_representation(kind, contract.image_shape)
    else:
        if sample is None or len(sample.hashes) < 2:
            raise InputError(f"--representation {kind}: fewer than 2 valid images to fit it on")
        rep = fit_representation(kind, contract.image_shape, sample.images, sample.labels, seed=contract.options.seed)
    return with_representation(contract, rep)


def _read_sample(shard: Shard, contract: ImageContract, batch_rows: int):
    from .transforms import read_and_validate

    for chunk in read_and_validate(shard, contract, batch_rows):
        yield chunk_sample(chunk.valid, contract)


def representation_pass(session, units, contract: ImageContract, batch_rows: int, staging: str, files) -> ImageContract:
    """Fit the contract's representation: one pass gathering a bounded hash-selected image sample (pca, surrogate)."""
    import apache_beam as beam

    from .transforms import merge_pass

    sample = None
    if contract.options.representation in ("pca", "surrogate"):
        sample = merge_pass(session, units, "Sample", beam.FlatMap(_read_sample, contract, batch_rows),
                            os.path.join(staging, "_image_sample.pkl"), "image sample")
    return finish_representation(contract, files, sample)


# -- command-line options ---------------------------------------------------------------------
def _size(text: str) -> tuple[int, int]:
    import argparse

    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 28x28), got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected positive sides, got {text!r}")
    return h, w


def _two_names(text: str) -> tuple[str, str]:
    import argparse

    names = tuple(v.strip() for v in text.split(","))
    if len(names) != 2 or not all(names):
        raise argparse.ArgumentTypeError(f"expected IMAGES,LABELS (two array names), got {text!r}")
    return names


def add_image_options(p, *, representation: bool = True) -> None:
    """The image options of ``screen`` (and ``simulate``, without the representation)."""
    g = p  # top-level options (a job file's top-level keys): images are recognised without them
    g.add_argument("--image-column", metavar="NAME",
                   help="Parquet column of images (PNG/JPEG bytes, or struct<bytes, path>) (default: found by type)")
    g.add_argument("--image-size", type=_size, metavar="HxW",
                   help="the images' shape (default: the first readable image's); another size is an invalid row")
    g.add_argument("--resize", action="store_true", help="with --image-size: resize other sizes to it instead")
    g.add_argument("--npz-arrays", type=_two_names, default=("images", "labels"), metavar="IMAGES,LABELS",
                   help=".npz inputs: names of the image and label arrays (default: images,labels)")
    if representation:
        g.add_argument("--representation", choices=KINDS, default=None,
                       help="features the detectors score: pixels (pooled, default), pca, surrogate (an MLP's hidden "
                            "activations) or embedding (the input's embedding column; the default when it has one)")


def image_options(args) -> ImageOptions:
    return ImageOptions(image_column=args.image_column, image_size=args.image_size, resize=args.resize,
                        representation=getattr(args, "representation", None), npz_arrays=args.npz_arrays)
