"""The simulation job: read -> validate -> apply the configured attacks in order -> write.

:func:`run_simulate` is the whole job behind ``poisonguard simulate``.

Output layout under ``out``::

    data/          Parquet parts: the valid rows after the attacks, plus the rows attacks
                   injected; the input's columns, ``row_id`` and the ground truth
                   (``poisoned``, ``attack``, ``original_label``)
    invalid/       Parquet parts: rows that failed parsing or validation, values as text
    manifest.json  attacks and parameters, seed, row counts, class balance, input fingerprint, timings
    manifest.html  the same as one self-contained page
                   (schema: schemas/manifest.schema.json)

Passes, one linear pipeline each, every one ending in a single terminal step that saves a
small result in the staging directory (the shape every runner, DaskRunner included, runs
correctly; see DESIGN.md, Engines):

1. **profile**: a :class:`~poisonguard.simulators.DataProfile` of the valid input rows
   (class counts, feature ranges, a bounded hash-chosen sample); each attack is prepared
   against it (classes checked, quantiles and surrogates resolved);
2. **one pass per count-mode attack**, in order: apply the attacks before it (whose
   selections are then fixed per row: rate mode, or count mode with a known cutoff), and
   keep the ``count`` smallest selection keys of its eligible rows; the largest of them is
   its cutoff. Attack *i*'s eligibility depends on what attacks before it did, so its
   cutoff can only be computed once theirs are known: one pass each is the minimum;
3. **write**: apply every attack with its cutoff, write ``data/`` and ``invalid/`` parts,
   and combine per-chunk counts.

Everything is written to a staging directory inside ``out`` and published with one atomic
rename only when the job succeeded and the row counts cross-check (:mod:`.outdir`), so a
failed or killed run leaves the previous outputs as they were.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import __version__
from ..schemas import ATTACK, ORIGINAL_LABEL, POISONED, ConfigError
from ..simulators import DataProfile, SmallestHashes
from ..simulators.config import AttackConfig, attacks_from_dict, load_attack_config
from .ids import check_duplicate_ids, duplicate_ids_pass
from .images import ImageOptions, is_image_input, resolve_image_contract
from .io import discover_shards, part_name, split_units, write_part
from .html_report import write_manifest_html
from .report import inputs_section, library_versions, write_report
from .rows import Contract, resolve_contract
from .runners import RunnerConfig, RunnerSession, runner_session
from .outdir import OutputDir
from .staging import count_problems, raise_if_lost
from .transforms import Chunk, merge_pass, read_and_validate

log = logging.getLogger("poisonguard")

DEFAULT_BATCH_ROWS = 65536
#: Output directories of the simulation job, and the file whose presence marks a finished run.
SIMULATE_OUTPUTS = ("data", "invalid")
MANIFEST = "manifest.json"
MANIFEST_HTML = "manifest.html"


@dataclass(frozen=True)
class SimulateConfig:
    """Everything ``poisonguard simulate`` needs.

    Give the attacks either as ``config`` (path of a YAML attack config, see
    :func:`~poisonguard.simulators.config.load_attack_config`) or as ``attacks`` (Attack
    objects, applied in order). ``seed``, when not None, replaces the config's seed (the
    key of every row-selection hash). ``profile_sample_size`` bounds the rows the profile
    keeps for quantiles and surrogate models.
    """

    inputs: tuple[str, ...]
    out: str
    config: str | None = None
    attacks: tuple = ()
    seed: int | None = None
    label_column: str = "label"
    id_column: str | None = None
    feature_columns: tuple[str, ...] | None = None
    batch_rows: int = DEFAULT_BATCH_ROWS
    profile_sample_size: int = 20000
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    na_values: tuple[str, ...] = ()  # CSV cell texts read as missing, besides the empty cell
    allow_duplicate_ids: bool = False  # with id_column: accept (and report) ids that repeat
    images: ImageOptions = field(default_factory=ImageOptions)  # image inputs (pipelines.simulate_images)

    def attack_config(self) -> AttackConfig:
        """The attacks and the seed they run with (raises ConfigError naming the file and key)."""
        if (self.config is None) == (not self.attacks):
            raise ConfigError("simulate: give exactly one of an attack config file (--config) and a list of attacks")
        loaded = load_attack_config(self.config) if self.config is not None else attacks_from_dict(
            {"attacks": list(self.attacks)})
        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, int):
                raise ConfigError(f"--seed: expected an integer, got {self.seed!r}")
            loaded = dataclasses.replace(loaded, seed=self.seed)
        return loaded


@dataclass
class SimulateResult:
    """What :func:`run_simulate` returns: the manifest (as written) and where things are."""

    manifest: dict
    out: str

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)


# -- Beam-free pieces ------------------------------------------------------------------------
@dataclass
class SimulateSummary:
    """Combinable counts of what the write pass produced (merge in any order, same totals)."""

    rows_in: int = 0
    valid: int = 0
    invalid: int = 0
    rows_out: int = 0
    poisoned: int = 0
    touched: dict = field(default_factory=dict)
    injected: dict = field(default_factory=dict)
    by_attack: dict = field(default_factory=dict)
    classes_out: dict = field(default_factory=dict)  # rows per class in data/, after the attacks

    def merge(self, other: SimulateSummary) -> SimulateSummary:
        for name in ("rows_in", "valid", "invalid", "rows_out", "poisoned"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("touched", "injected", "by_attack", "classes_out"):
            mine = getattr(self, name)
            for key, n in getattr(other, name).items():
                mine[key] = mine.get(key, 0) + n
        return self


@dataclass
class SimulatedChunk:
    """One chunk after the attacks: the rows for ``data/`` and ``invalid/``, and its counts."""

    shard_index: int
    number: int
    data: pa.Table
    invalid: pa.Table
    summary: SimulateSummary


def output_schema(contract: Contract) -> pa.Schema:
    """Schema of ``data/``: ``row_id``, the input's columns, then the ground-truth columns the input lacks."""
    schema = contract.valid_schema()
    for name, typ in ((POISONED, pa.bool_()), (ATTACK, pa.string()), (ORIGINAL_LABEL, contract.label_type)):
        if name not in schema.names:
            schema = schema.append(pa.field(name, typ))
    return schema


def apply_prepared(table: pa.Table, prepared, cutoffs) -> tuple[pa.Table, list]:
    """Apply prepared attacks in order (each to the previous output); return the table and the results."""
    results = []
    for attack, cutoff in zip(prepared, cutoffs):
        result = attack.apply(table, cutoff)
        table = result.table
        results.append(result)
    return table, results


def simulate_chunk(chunk: Chunk, prepared, cutoffs, schema: pa.Schema, label_column: str | None = None) -> SimulatedChunk:
    """Poison one chunk's valid rows; its invalid rows pass through unchanged (``label_column``: count rows per class out)."""
    summary = SimulateSummary(rows_in=chunk.valid.num_rows + chunk.invalid.num_rows, valid=chunk.valid.num_rows,
                              invalid=chunk.invalid.num_rows)
    if chunk.valid.num_rows:
        table, results = apply_prepared(chunk.valid, prepared, cutoffs)
        for attack, result in zip(prepared, results):
            name = attack.attack.name
            summary.touched[name] = result.touched
            summary.injected[name] = result.injected
        data = table.select(schema.names).cast(schema)
        poisoned = data.column(POISONED).to_numpy(zero_copy_only=False)
        summary.poisoned = int(poisoned.sum())
        for item in pc.value_counts(data.column(ATTACK).filter(pa.array(poisoned)).combine_chunks()).to_pylist():
            summary.by_attack[item["values"]] = item["counts"]
        for item in pc.value_counts(data.column(label_column).combine_chunks()).to_pylist() if label_column else ():
            summary.classes_out[str(item["values"])] = item["counts"]
    else:
        data = schema.empty_table()
    summary.rows_out = data.num_rows
    return SimulatedChunk(chunk.shard_index, chunk.number, data, chunk.invalid, summary)


def write_simulated(chunk: SimulatedChunk, staging: str) -> SimulateSummary:
    """Write a simulated chunk's two parts; return its summary."""
    name = part_name(chunk.shard_index, chunk.number)
    write_part(chunk.data, os.path.join(staging, "data"), name)
    write_part(chunk.invalid, os.path.join(staging, "invalid"), name)
    s = chunk.summary
    log.info("simulated %s: %d rows in, %d out, %d poisoned, %d invalid", name, s.rows_in, s.rows_out, s.poisoned, s.invalid)
    return s


# -- the passes --------------------------------------------------------------------------------
def _read_profile(shard, contract: Contract, batch_rows: int, seed: int, sample_size: int):
    for chunk in read_and_validate(shard, contract, batch_rows):
        yield DataProfile.empty(label_column=contract.label_column, feature_columns=contract.feature_columns,
                                seed=seed, sample_size=sample_size).add_table(chunk.valid)


def _read_smallest(shard, contract: Contract, batch_rows: int, prepared, cutoffs):
    """Bottom-``count`` keys of the last prepared attack's eligible rows, after the ones before it."""
    *before, attack = prepared
    for chunk in read_and_validate(shard, contract, batch_rows):
        table, _ = apply_prepared(chunk.valid, before, cutoffs)
        eligible = attack.eligible(table)
        yield SmallestHashes(attack.attack.count, name=attack.attack.name).add(attack.hashes(table)[eligible])


def _read_simulate_write(shard, contract: Contract, batch_rows: int, prepared, cutoffs, schema: pa.Schema, staging: str):
    for chunk in read_and_validate(shard, contract, batch_rows):
        yield write_simulated(simulate_chunk(chunk, prepared, cutoffs, schema, contract.label_column), staging)


def profile_pass(session: RunnerSession, units, contract: Contract, batch_rows: int, seed: int, sample_size: int,
                 staging: str) -> DataProfile:
    return merge_pass(session, units, "Profile", beam.FlatMap(_read_profile, contract, batch_rows, seed, sample_size),
                      os.path.join(staging, "_profile.pkl"), "data profile") or DataProfile.empty(
        label_column=contract.label_column, feature_columns=contract.feature_columns, seed=seed, sample_size=sample_size)


def cutoff_pass(session: RunnerSession, units, contract: Contract, batch_rows: int, prepared, cutoffs, staging: str) -> int:
    """The count-mode cutoff of ``prepared[-1]``, given the cutoffs of the attacks before it."""
    attack = prepared[-1].attack
    smallest = merge_pass(session, units, "SmallestKeys", beam.FlatMap(_read_smallest, contract, batch_rows, prepared, cutoffs),
                          os.path.join(staging, f"_cutoff{len(prepared) - 1}.pkl"), f"{attack.name} cutoff")
    smallest = smallest or SmallestHashes(attack.count, name=attack.name)
    return smallest.cutoff()


def write_pass(session: RunnerSession, units, contract: Contract, batch_rows: int, prepared, cutoffs, staging: str) -> SimulateSummary:
    schema = output_schema(contract)
    return merge_pass(session, units, "SimulateAndWrite",
                      beam.FlatMap(_read_simulate_write, contract, batch_rows, prepared, cutoffs, schema, staging),
                      os.path.join(staging, "_summary.pkl"), "summary") or SimulateSummary()


# -- the job ---------------------------------------------------------------------------------
def run_simulate(config: SimulateConfig) -> SimulateResult:
    """Run the simulation job end to end; raises PoisonguardError for bad input, config or options.

    The attack config, the inputs' columns and every column an attack names are checked
    before any pipeline runs; a class an attack names is checked against the data after
    the profile pass. Either way nothing is published.
    """
    t0 = time.perf_counter()
    attack_config = config.attack_config()
    if isinstance(config.batch_rows, bool) or not isinstance(config.batch_rows, int) or config.batch_rows < 1:
        raise ConfigError(f"--batch-rows: expected a positive integer, got {config.batch_rows!r}")
    DataProfile.empty(label_column=config.label_column, feature_columns=(), seed=0,
                      sample_size=config.profile_sample_size)  # checks profile_sample_size before any pipeline
    files = discover_shards(list(config.inputs), na_values=config.na_values)
    if is_image_input(files, config.images):  # triggers stamped on the images themselves
        from .simulate_images import run_image_simulate

        contract = resolve_image_contract(files, config.images, label_column=config.label_column, id_column=config.id_column)
        return SimulateResult(run_image_simulate(config, contract, files, split_units(files)), config.out)
    contract = resolve_contract(
        files, label_column=config.label_column, id_column=config.id_column,
        feature_columns=list(config.feature_columns) if config.feature_columns else None,
        keep_feature_types=False,  # attacks write real values (triggers, noise) into features
    )
    attack_config = attack_config.for_labels(contract.label_type)
    attack_config.check_columns(contract.feature_columns, contract.columns)
    seed, attacks = attack_config.seed, attack_config.attacks
    units = split_units(files)
    fingerprint = input_fingerprint(files)
    log.info("simulating %d attack(s) (%s) with seed %d on %d file(s) in %d work unit(s), %.1f MB: label '%s', "
             "%d feature column(s), runner %s x%d", len(attacks), ", ".join(a.name for a in attacks), seed, len(files),
             len(units), fingerprint["bytes"] / 1e6, contract.label_column, len(contract.feature_columns),
             config.runner.runner, config.runner.workers)
    timings = {"inspect_s": time.perf_counter() - t0}

    read_paths = (*config.inputs, *((config.config,) if config.config else ()))
    with OutputDir(config.out, "simulate", (*SIMULATE_OUTPUTS, MANIFEST_HTML, MANIFEST), inputs=read_paths,
                   files=[f.path for f in files]) as outdir:
        staging = outdir.staging
        with runner_session(config.runner) as session:
            duplicates = duplicate_ids_pass(session, units, contract, config.batch_rows, staging)
            check_duplicate_ids(duplicates, contract, config.allow_duplicate_ids)
            t = time.perf_counter()
            profile = profile_pass(session, units, contract, config.batch_rows, seed, config.profile_sample_size, staging)
            timings["profile_s"] = time.perf_counter() - t
            log.info("profile: %d valid rows, classes %s (%.1f s)", profile.n_rows, list(profile.classes), timings["profile_s"])
            prepared = []
            for i, attack in enumerate(attacks):
                with attack_config.located(i):
                    prepared.append(attack.prepare(profile, seed=seed, label_column=contract.label_column,
                                                   feature_columns=contract.feature_columns))
            t = time.perf_counter()
            cutoffs: list[int | None] = []
            for i, attack in enumerate(prepared):
                if not attack.needs_cutoff:
                    cutoffs.append(None)
                    continue
                with attack_config.located(i):
                    cutoffs.append(cutoff_pass(session, units, contract, config.batch_rows, prepared[: i + 1], cutoffs, staging))
                log.info("%s: cutoff of the %d smallest keys found", attack.attack.name, attack.attack.count)
            if any(c is not None for c in cutoffs):
                timings["count_s"] = time.perf_counter() - t
            t = time.perf_counter()
            summary = write_pass(session, units, contract, config.batch_rows, prepared, cutoffs, staging)
            timings["simulate_s"] = time.perf_counter() - t
        _check_conservation(summary, profile, attacks, files, staging)
        for output in SIMULATE_OUTPUTS:
            os.makedirs(os.path.join(staging, output), exist_ok=True)
        manifest = build_manifest(config, attack_config, contract, files, fingerprint, summary, timings,
                                  passes=2 + sum(c is not None for c in cutoffs), classes_in=profile.class_counts)
        manifest["inputs"]["duplicate_ids"] = duplicates.to_json()
        manifest["timings"]["total_s"] = time.perf_counter() - t0
        manifest = write_report(manifest, os.path.join(staging, MANIFEST), schema="manifest")
        write_manifest_html(manifest, os.path.join(staging, MANIFEST_HTML))
        outdir.publish()
        log.info("done in %.1f s: %d rows in, %d invalid, %d touched, %d injected, %d rows out -> %s",
                 manifest["timings"]["total_s"], summary.rows_in, summary.invalid, sum(summary.touched.values()),
                 sum(summary.injected.values()), summary.rows_out, config.out)
        return SimulateResult(manifest, config.out)


def input_fingerprint(files) -> dict:
    """sha256 of every input file's bytes, and one sha256 over (source, size, file hash) in input order.

    Content, not size and modification time: a copy of the same data has the same
    fingerprint, and a file edited in place does not. Costs one read of the inputs (about
    1 GB/s), done before the pipeline starts.
    """
    entries, total = [], hashlib.sha256()
    for shard in files:
        digest, size = hashlib.sha256(), 0
        with open(shard.path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
        entries.append({"path": shard.path, "source": shard.source, "bytes": size, "sha256": digest.hexdigest()})
        total.update(f"{shard.source}\t{size}\t{digest.hexdigest()}\n".encode())
    return {"method": "sha256-of-file-bytes", "sha256": total.hexdigest(), "bytes": sum(e["bytes"] for e in entries), "files": entries}


def _check_conservation(summary: SimulateSummary, profile: DataProfile, attacks, files, staging: str) -> None:
    """Cross-check row counts between the passes, the attacks' budgets and the files written.

    Catches a runner that silently drops or duplicates elements (DESIGN.md, Engines) before
    anything is published.
    """
    problems = []
    injected = sum(summary.injected.values())
    if summary.valid + summary.invalid != summary.rows_in:
        problems.append(f"{summary.rows_in} rows in, but {summary.valid} valid + {summary.invalid} invalid")
    if summary.rows_out != summary.valid + injected:
        problems.append(f"{summary.rows_out} rows out, but {summary.valid} valid + {injected} injected")
    if profile.n_rows != summary.valid:
        problems.append(f"the profile saw {profile.n_rows} valid rows but {summary.valid} were written")
    for attack in attacks:
        if attack.count is not None:
            done = summary.touched.get(attack.name, 0) + summary.injected.get(attack.name, 0)
            if done != attack.count:
                problems.append(f"attack '{attack.name}' asked for {attack.count} rows but poisoned {done}")
    problems += count_problems(staging, {"data": summary.rows_out, "invalid": summary.invalid}, files, summary.rows_in)
    raise_if_lost(problems)


def _jsonable(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def attack_params(attack, spec=None) -> dict:
    """Every field of an attack (defaults included) as JSON values, ``name`` excluded.

    A trigger is recorded as the config wrote it (the attack holds it parsed).
    """
    params = {f.name: _jsonable(getattr(attack, f.name)) for f in dataclasses.fields(attack) if f.name != "name"}
    if isinstance(spec, Mapping) and "trigger" in spec:
        params["trigger"] = _jsonable(spec["trigger"])
    return params


def _class_balance(before: dict, after: dict) -> dict:
    """Rows per class in the valid input and in data/ after the attacks (class names as text)."""
    before = {str(k): int(n) for k, n in before.items() if k is not None}
    return {c: {"before": before.get(c, 0), "after": int(after.get(c, 0))} for c in sorted({*before, *after})}


def build_manifest(config: SimulateConfig, attack_config: AttackConfig, contract: Contract, files, fingerprint: dict,
                   summary: SimulateSummary, timings: dict, passes: int, classes_in: dict | None = None) -> dict:
    return {
        "job": "simulate",
        "poisonguard_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {"path": config.config, "sha256": attack_config.sha256, "seed_override": config.seed},
        "seed": attack_config.seed,
        "attacks": [
            {"name": a.name, "kind": a.kind, "params": attack_params(a, spec),
             "touched": summary.touched.get(a.name, 0), "injected": summary.injected.get(a.name, 0)}
            for a, spec in itertools.zip_longest(attack_config.attacks, attack_config.specs)
        ],
        "inputs": {**inputs_section(config.inputs, files, contract), "fingerprint": fingerprint},
        "counts": {
            "rows_in": summary.rows_in,
            "valid": summary.valid,
            "invalid": summary.invalid,
            "touched": sum(summary.touched.values()),
            "injected": sum(summary.injected.values()),
            "rows_out": summary.rows_out,
            "poisoned": summary.poisoned,
            "by_attack": dict(sorted(summary.by_attack.items())),
        },
        "classes": _class_balance(classes_in, summary.classes_out) if classes_in is not None else None,
        "outputs": {name: os.path.join(config.out, name) for name in SIMULATE_OUTPUTS},
        "runner": config.runner.describe(),
        "batch_rows": config.batch_rows,
        "passes": passes,
        "timings": dict(timings),
        "versions": library_versions(),
    }
