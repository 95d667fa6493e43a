"""``poisonguard simulate`` on image inputs: stamp backdoor triggers on the images themselves.

The attack config is the usual YAML (``backdoor`` or ``clean_label`` with a ``patch`` or
``blend`` trigger; ``image_shape`` may be left out, it is the batch's). Each image row of
the eligible class (``source``, or the ``target`` for ``clean_label``) is chosen when the
keyed hash of ``(seed, row_id)`` falls below ``rate`` (so the choice does not depend on
order, batch size or worker count, and the share is ``rate`` of the eligible rows up to
sampling noise); its image is decoded, the trigger applied to its pixels
(``x' = (1 - alpha) x + alpha pattern`` on the trigger's region, rounded to uint8), and
re-encoded as PNG, which is lossless: what a model trains on is exactly the stamped image.

The output keeps the input's format, with the ground truth (``poisoned``, ``attack``,
``original_label`` by ``row_id``) alongside:

* ImageFolder in: ``DIR/data/<label>/<file>`` (a poisoned image under its new label, same
  file name, ``.png``) and ``DIR/ground_truth.parquet`` (row ids are the new relative paths);
* ``.npz`` in: ``DIR/data.npz`` with the same array names, plus ``poisoned`` and
  ``original_labels``;
* Parquet in: ``DIR/data/part-*.parquet`` with the ground-truth columns added.

Invalid rows (unreadable images, see :mod:`.images`) are written to ``DIR/invalid/`` with
their reason, as the screening job does.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from types import SimpleNamespace

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..schemas import ATTACK, ORIGINAL_LABEL, POISONED, ROW_ID, ConfigError
from ..schemas.hashing import row_hash
from ..simulators.backdoor import Backdoor, CleanLabel
from ..simulators.triggers import ImageTrigger
from .images import ImageContract, decode, encode_png, image_bytes
from .io import part_name, write_part
from .outdir import OutputDir
from .runners import runner_session
from .staging import count_problems, load_result, raise_if_lost, save_result
from .transforms import read_and_validate


def stamp(pixels: np.ndarray, trigger: ImageTrigger, seed: int, name: str) -> np.ndarray:
    """A new ``(H, W, C)`` uint8 image with the trigger applied (the input is not modified)."""
    shape = pixels.shape
    resolved = _resolve(trigger, shape, seed, name)
    flat = pixels.reshape(1, -1).astype(np.float64)
    return np.clip(np.round(resolved.apply(flat)), 0, 255).astype(np.uint8).reshape(shape)


def _resolve(trigger: ImageTrigger, shape, seed: int, name: str):
    """The trigger resolved on uint8 pixels (low 0, high 255 unless ``value`` says otherwise)."""
    t = replace(trigger, image_shape=tuple(shape), pixel_columns=None)
    cols = tuple(str(i) for i in range(int(np.prod(shape))))
    pixel_range = SimpleNamespace(feature_min=dict.fromkeys(cols, 0.0), feature_max=dict.fromkeys(cols, 255.0))
    return t.resolve(pixel_range, who=name, seed=seed, feature_columns=cols, name=name)


def run_image_simulate(config, contract: ImageContract, files, units) -> dict:
    """Apply the config's trigger attacks to image inputs; write the output in the input's format. Returns the manifest."""
    attack_config = config.attack_config().for_labels(contract.label_type)
    attacks = []
    for attack in attack_config.attacks:
        if not isinstance(attack, (Backdoor, CleanLabel)) or not all(isinstance(t, ImageTrigger) for t in attack.trigger):
            raise ConfigError(f"attack '{attack.name}': image inputs take backdoor or clean_label attacks with patch or blend "
                              "triggers only")
        if attack.rate is None:
            raise ConfigError(f"attack '{attack.name}': image inputs take a rate (a share of the eligible rows), not a count")
        attacks.append(attack)
    seed = attack_config.seed
    formats = {f.format for f in files}
    outputs = {"imagefolder": ("data", "ground_truth.parquet"), "npz": ("data.npz",)}.get(sorted(formats)[0], ("data",))
    with OutputDir(config.out, "simulate", (*outputs, "invalid", "manifest.json"), inputs=tuple(config.inputs),
                   files=[f.path for f in files]) as outdir:
        staging = outdir.staging
        for folder in ("invalid", *(("data",) if "data" in outputs else ())):
            os.makedirs(os.path.join(staging, folder), exist_ok=True)
        fmt = sorted(formats)[0]
        with runner_session(config.runner) as session:
            path = os.path.join(staging, "_counts.pkl")
            session.run(lambda p: (
                p
                | "Units" >> beam.Create(units, reshuffle=False)
                | "PoisonAndWrite" >> beam.FlatMap(_simulate_unit, contract, config.batch_rows, tuple(attacks), seed, fmt, staging)
                | "Collect" >> beam.combiners.ToList()
                | "Save" >> beam.Map(save_result, path)
            ))
            per_chunk = load_result(path, "chunk counts") or []
        counts = {key: sum(c[key] for c in per_chunk) for key in ("rows_in", "valid", "invalid", "poisoned")}
        truth_parts = [pq.read_table(os.path.join(staging, "_truth", f)) for f in sorted(os.listdir(os.path.join(staging, "_truth")))] \
            if os.path.isdir(os.path.join(staging, "_truth")) else []
        npz_parts = sorted(os.listdir(os.path.join(staging, "_npz"))) if os.path.isdir(os.path.join(staging, "_npz")) else []
        if fmt == "imagefolder":
            truth = pa.concat_tables(truth_parts) if truth_parts else _truth_table([], {k: [] for k in ("ids", "poisoned", "attack", "labels", "original")})
            pq.write_table(truth, os.path.join(staging, "ground_truth.parquet"))
        if fmt == "npz":
            _write_npz(staging, npz_parts, contract, config)
        counts.update(touched=counts["poisoned"], injected=0, rows_out=counts["valid"])
        manifest = {"job": "simulate", "format": sorted(formats)[0], "seed": seed, "counts": counts,
                    "attacks": [{"name": a.name, "kind": a.kind, "rate": a.rate} for a in attacks],
                    "image_shape": list(contract.image_shape)}
        with open(os.path.join(staging, "manifest.json"), "w") as fh:
            json.dump(manifest, fh, indent=2)
        problems = count_problems(staging, {"invalid": counts["invalid"], **({"data": counts["valid"]} if fmt == "parquet" else {})},
                                  files, counts["rows_in"])
        written = (sum(len(names) for _, _, names in os.walk(os.path.join(staging, "data"))) if fmt == "imagefolder" else
                   len(np.load(os.path.join(staging, "data.npz"), allow_pickle=False)[POISONED]) if fmt == "npz" else counts["valid"])
        if written != counts["valid"]:
            problems.append(f"{counts['valid']} valid rows but {written} written")
        shutil.rmtree(os.path.join(staging, "_truth"), ignore_errors=True)
        shutil.rmtree(os.path.join(staging, "_npz"), ignore_errors=True)
        raise_if_lost(problems)
        outdir.publish()
    return manifest


def _simulate_unit(unit, contract: ImageContract, batch_rows: int, attacks, seed: int, fmt: str, staging: str):
    """Poison and write one work unit's chunks; yield each chunk's counts."""
    for chunk in read_and_validate(unit, contract, batch_rows):
        valid = chunk.valid
        name = part_name(chunk.shard_index, chunk.number)
        write_part(chunk.invalid, os.path.join(staging, "invalid"), name)
        ids = valid.column(ROW_ID).to_numpy(zero_copy_only=False)
        labels = contract.labels(valid)
        data = image_bytes(valid.column(contract.image_column))
        new_labels = labels.copy().astype(object)
        poisoned = np.zeros(valid.num_rows, dtype=bool)
        attack_names = np.full(valid.num_rows, None, dtype=object)
        for attack in attacks:
            eligible = (labels == _cast(attack.target, labels)) if isinstance(attack, CleanLabel) else (
                labels == _cast(attack.source, labels) if attack.source is not None else labels != _cast(attack.target, labels))
            u = row_hash(ids, seed, purpose=f"attack:{attack.name}").astype(np.float64) / 2.0 ** 64
            chosen = np.flatnonzero(eligible & ~poisoned & (u < attack.rate))
            for i in chosen:
                pixels = decode(data[i], contract.image_shape, contract.resize)[0]
                for t in attack.trigger:
                    pixels = stamp(pixels, t, seed, attack.name)
                data[i] = encode_png(pixels)
            if isinstance(attack, Backdoor):
                new_labels[chosen] = _cast(attack.target, labels)
            poisoned[chosen] = True
            attack_names[chosen] = attack.name
        truth = {"labels": new_labels, "original": labels, "poisoned": poisoned, "attack": attack_names, "ids": ids}
        if fmt == "imagefolder":
            write_part(_write_tree(staging, data, truth), os.path.join(staging, "_truth"), name)
        elif fmt == "npz":
            os.makedirs(os.path.join(staging, "_npz"), exist_ok=True)
            images = np.stack([decode(b, contract.image_shape, False)[0] for b in data]) if data else np.zeros((0, *contract.image_shape), np.uint8)
            np.savez(os.path.join(staging, "_npz", name.replace(".parquet", ".npz")), images=images, labels=np.asarray(list(new_labels)),
                     original=np.asarray(list(labels)), poisoned=poisoned)
        else:
            out = valid.set_column(valid.schema.get_field_index(contract.image_column), contract.image_column,
                                   _like(valid.column(contract.image_column), data))
            out = out.set_column(out.schema.get_field_index(contract.label_column), contract.label_column,
                                 pa.array(list(new_labels)).cast(contract.label_type))
            out = (out.append_column(POISONED, pa.array(poisoned)).append_column(ATTACK, pa.array(list(attack_names), pa.string()))
                   .append_column(ORIGINAL_LABEL, pa.array(list(labels)).cast(contract.label_type)).drop_columns([ROW_ID]))
            write_part(out, os.path.join(staging, "data"), name)
        yield {"rows_in": valid.num_rows + chunk.invalid.num_rows, "valid": valid.num_rows, "invalid": chunk.invalid.num_rows,
               "poisoned": int(poisoned.sum())}


def _cast(value, labels: np.ndarray):
    """A configured class as the labels' type (int labels compare with ints, text with text)."""
    if labels.dtype.kind in "iu":
        return int(value)
    return str(value)


def _like(column, data) -> pa.Array:
    if pa.types.is_struct(column.type):
        paths = column.combine_chunks().field("path").to_pylist()
        return pa.array([{"bytes": b, "path": p} for b, p in zip(data, paths)], column.type)
    return pa.array(data, column.type)


def _write_tree(staging: str, data, truth) -> pa.Table:
    new_ids = []
    for b, rid, lab in zip(data, truth["ids"], truth["labels"]):
        name = os.path.splitext(rid.split("/", 1)[1])[0] + ".png"
        rel = f"{lab}/{name}"
        path = os.path.join(staging, "data", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(b)
        new_ids.append(rel)
    return _truth_table(new_ids, truth)


def _truth_table(new_ids, truth) -> pa.Table:
    return pa.table({ROW_ID: pa.array(new_ids, pa.string()), "source_id": pa.array(list(truth["ids"]), pa.string()),
                     POISONED: pa.array(list(truth["poisoned"]), pa.bool_()), ATTACK: pa.array(list(truth["attack"]), pa.string()),
                     "label": pa.array([str(v) for v in truth["labels"]], pa.string()),
                     ORIGINAL_LABEL: pa.array([str(v) for v in truth["original"]], pa.string())})


def _write_npz(staging: str, parts, contract: ImageContract, config) -> None:
    """One .npz from the chunks' parts (in file order), with the input's array names."""
    loaded = []
    for name in parts:
        with np.load(os.path.join(staging, "_npz", name), allow_pickle=False) as z:
            loaded.append({k: z[k] for k in ("images", "labels", "original", "poisoned")})
    images = np.concatenate([p["images"] for p in loaded]) if loaded else np.zeros((0, *contract.image_shape), np.uint8)
    if contract.image_shape[2] == 1:
        images = images[..., 0]
    img_key, lab_key = config.images.npz_arrays
    np.savez(os.path.join(staging, "data.npz"), **{img_key: images, lab_key: np.concatenate([p["labels"] for p in loaded]),
                                                   "original_labels": np.concatenate([p["original"] for p in loaded]),
                                                   POISONED: np.concatenate([p["poisoned"] for p in loaded])})
