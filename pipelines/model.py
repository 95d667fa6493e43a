"""Saved models: ``poisonguard fit`` on trusted rows, ``poisonguard screen --model`` in one read.

``fit`` runs the screening job's fit passes with the trusted rows as both the data and the
reference: the detectors learn what normal looks like from them, the decision layer fits
each member's null on them, and one cut on the combined suspicion is calibrated on them to
``target_fpr`` (the ``reference`` rule; a clean batch loses about that share of its rows).
The validation suite is the data contract with the trusted rows' ranges, classes and null
rates. Nothing of it depends on a batch, so ``screen --model`` scores and decides each batch
in one pass over its rows: read, validate, score, split, write.

Layout of ``MODEL_DIR`` (published atomically by :mod:`.outdir`, like every job's output)::

    model.json         format version, library versions, contract, detectors and parameters,
                       the decision rule, and the model as a JSON spec whose arrays are named
    arrays.npz         the arrays (numpy ``.npz``, read with ``allow_pickle=False``)
    expectations.json  the Great Expectations suite (its own JSON)

No pickle anywhere: the label detector's boosted trees are saved as node arrays
(:class:`~poisonguard.detectors.persist.BoostedTrees`). Loading checks the format version,
every array's dtype and shape against ``model.json``, and the model's own consistency, and
refuses anything else with one line. A model that keeps trusted rows (``knn``'s reference
sample) says so in ``model.json`` (``keeps_reference_rows``): it is data, and may be sensitive.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import numpy as np

from .. import __version__
from ..detectors import DETECTORS, EnsembleDetector, EnsembleModel
from ..detectors.decision import DEFAULT_ALPHA, TailNull
from ..detectors.label import LabelModel
from ..detectors.persist import MODEL_TYPES, BoostedTrees, ModelFormatError, decode, describe_value, encode
from ..schemas import OUTPUTS, ConfigError, InputError
from .io import discover_shards, split_units
from .outdir import OutputDir
from .report import library_versions, write_json, write_text
from .rows import Contract, resolve_contract
from .runners import RunnerConfig, runner_session

log = logging.getLogger("poisonguard")

FORMAT = "poisonguard-model"
FORMAT_VERSION = 11  # 2: the ensemble's per-class member weights; 3: spectral's other-class p-value floor; 4: pattern's hollow units;
# 5: the label detector's folds hash the label with the features, in repeats; 6: pattern's rest-of-row p-values;
# 7: the label detector's counts of exact copies; 8: pattern's per-class unit counts for values new against trusted rows;
# 9: pattern's cells grown against trusted rows, and the steps they may grow by; 10: the other classes' share beyond
# the clustering and robust spectral detectors' cuts; 11: their rows below the cut (a p-value ceiling beyond it)
MANIFEST, ARRAYS, SUITE = "model.json", "arrays.npz", "expectations.json"
#: Detectors fitted when ``fit --detectors`` is not given.
DEFAULT_FIT_DETECTORS = ("spectral", "influence", "label")
#: Share of the trusted rows the frozen cut may flag (``fit --target-fpr``).
DEFAULT_MODEL_FPR = 0.001
#: Detectors whose model is not a fixed function of the trusted rows, with why (fit refuses them).
NOT_SAVABLE = {
    "novelty": "it learns each batch against the trusted rows, so it has no model without the batch; "
               "screen with --reference instead",
    "pattern": "it mines each batch for the triggers the batch holds, and trusted rows hold none; "
               "screen without --model (with --reference, patterns the trusted rows also hold are dropped)",
}
#: Detectors whose saved model holds trusted rows.
KEEPS_ROWS = {"knn"}


@dataclass(frozen=True)
class FitConfig:
    """Everything ``poisonguard fit`` needs; see the CLI help for each field."""

    inputs: tuple[str, ...]
    out: str
    label_column: str = "label"
    id_column: str | None = None
    feature_columns: tuple[str, ...] | None = None
    detectors: tuple[str, ...] | None = None
    detector_params: dict = field(default_factory=dict)
    alpha: float = DEFAULT_ALPHA
    target_fpr: float = DEFAULT_MODEL_FPR
    validate: bool = True
    batch_rows: int = 65536
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    na_values: tuple[str, ...] = ()
    allow_duplicate_ids: bool = False


@dataclass
class SavedModel:
    """A loaded model directory: the manifest, the fitted :class:`EnsembleModel` and the suite (None without one)."""

    path: str
    manifest: dict
    model: EnsembleModel
    suite: dict | None

    @property
    def feature_columns(self) -> tuple[str, ...]:
        return tuple(self.manifest["contract"]["feature_columns"])

    @property
    def label_column(self) -> str:
        return self.manifest["contract"]["label_column"]

    def make_detector(self) -> EnsembleDetector:
        """The ensemble as fitted (members with their saved parameters), for screening and the report."""
        members = []
        for entry in self.manifest["detectors"]:
            try:
                members.append(DETECTORS[entry["name"]](**entry["params"]))
            except (KeyError, TypeError) as exc:
                raise ModelFormatError(f"{self.path}/{MANIFEST}: detector entry {entry.get('name')!r} is not valid ({exc})") from None
        det = EnsembleDetector(detectors=members, alpha=self.model.alpha)
        return det.set_params(feature_names=self.feature_columns)


# -- fit -------------------------------------------------------------------------------------------
def _fit_detector(config: FitConfig) -> EnsembleDetector:
    from .screen import ScreenConfig

    names = tuple(config.detectors) if config.detectors is not None else DEFAULT_FIT_DETECTORS
    for name in names:
        if name in NOT_SAVABLE:
            raise ConfigError(f"--detectors: {name} cannot be saved in a model: {NOT_SAVABLE[name]}")
    # the trusted rows are the reference too: detectors that need trusted rows get them
    return ScreenConfig(inputs=config.inputs, out=config.out, detectors=names, detector_params=config.detector_params,
                        alpha=config.alpha, reference=config.inputs).make_detector()


def run_fit(config: FitConfig) -> dict:
    """Fit on trusted rows and write the model directory; returns the manifest."""
    from .ids import check_duplicate_ids, duplicate_ids_pass
    from .screen import calibrate_pass, fit_passes, reference_statistics_pass
    from .staging import remove_staged, stage_pass
    from .validation import contract_suite

    t0 = time.perf_counter()
    if not 0.0 < config.target_fpr < 1.0:
        raise ConfigError(f"--target-fpr: expected a fraction in (0, 1), got {config.target_fpr}")
    if config.batch_rows < 1:
        raise ConfigError(f"--batch-rows: expected a positive integer, got {config.batch_rows}")
    detector = _fit_detector(config)
    files = discover_shards(list(config.inputs), na_values=config.na_values)
    contract = resolve_contract(files, label_column=config.label_column, id_column=config.id_column,
                                feature_columns=list(config.feature_columns) if config.feature_columns else None)
    detector.set_params(feature_names=tuple(contract.feature_columns))
    units = split_units(files)
    outputs = (MANIFEST, ARRAYS, *((SUITE,) if config.validate else ()))
    timings = {}
    with OutputDir(config.out, "fit", outputs, inputs=config.inputs, files=[f.path for f in files]) as outdir:
        staging = outdir.staging
        with runner_session(config.runner) as session:
            t = time.perf_counter()  # read and validate once; every further pass reads the columnar copy
            units = stage_pass(session, units, contract, config.batch_rows, staging)
            timings["read_s"] = time.perf_counter() - t
            check_duplicate_ids(duplicate_ids_pass(session, units, contract, config.batch_rows, staging), contract,
                                config.allow_duplicate_ids)
            t = time.perf_counter()
            model = fit_passes(session, detector, units, contract, config.batch_rows, staging, units, contract)
            timings["fit_s"] = time.perf_counter() - t
            t = time.perf_counter()
            model, reference = calibrate_pass(session, model, units, contract, config.batch_rows, config.target_fpr, staging,
                                              where=_trusted_inputs(config.inputs))
            timings["calibrate_s"] = time.perf_counter() - t
            suite = None
            if config.validate:
                t = time.perf_counter()
                stats = reference_statistics_pass(session, units, contract, config.batch_rows, staging)
                suite = contract_suite(contract, stats)
                timings["reference_statistics_s"] = time.perf_counter() - t
        remove_staged(staging)
        manifest = save_model(staging, model, detector, contract, config, reference, suite, timings, t0)
        outdir.publish()
    log.info("fitted %s on %d trusted rows in %.1f s -> %s", ", ".join(model.names), int(np.sum(model.counts)),
             time.perf_counter() - t0, config.out)
    return manifest


def _trusted_inputs(inputs) -> str:
    """fit's inputs as its errors name them (fit has no --reference: its inputs are the trusted rows)."""
    shown = ", ".join(str(i) for i in inputs[:3]) + (f" and {len(inputs) - 3} more" if len(inputs) > 3 else "")
    return f"the trusted input(s) {shown}"


def _contract_json(contract: Contract) -> dict:
    return {
        "label_column": contract.label_column,
        "label_type": str(contract.label_type),
        "feature_columns": list(contract.feature_columns),
    }


def save_model(directory: str, model: EnsembleModel, detector: EnsembleDetector, contract: Contract, config: FitConfig,
               reference, suite: dict | None, timings: dict, t0: float) -> dict:
    """Write ``model.json``, ``arrays.npz`` and the suite into ``directory``; return the manifest."""
    from .screen import _json_params

    arrays: dict = {}
    spec = encode(model, arrays)
    members = detector.members()
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "poisonguard_version": __version__,
        "versions": library_versions(),
        "trusted_inputs": {"paths": list(config.inputs), "valid_rows": int(reference.valid), "invalid_rows": int(reference.invalid)},
        "contract": _contract_json(contract),
        "detectors": [{"name": m.name, "params": _json_params(m)} for m in members],
        "decision": {"rule": "reference", "target_fpr": config.target_fpr, "alpha": config.alpha,
                     "cut": float(model.thresholds[0]) if len(model.thresholds) else None},
        "keeps_reference_rows": sorted(m.name for m in members if m.name in KEEPS_ROWS),
        "files": {"arrays": ARRAYS, "expectations": SUITE if suite is not None else None},
        "timings": {**timings, "total_s": time.perf_counter() - t0},
        "model": spec,
    }
    if manifest["keeps_reference_rows"]:
        manifest["note"] = ("this model holds a sample of the trusted rows themselves (" + ", ".join(manifest["keeps_reference_rows"]) +
                            "); treat the directory as the data it came from")
    tmp = os.path.join(directory, ARRAYS + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, os.path.join(directory, ARRAYS))
    if suite is not None:
        write_json(suite, os.path.join(directory, SUITE))
    write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n", os.path.join(directory, MANIFEST))
    return manifest


# -- load ------------------------------------------------------------------------------------------
def load_model(path: str) -> SavedModel:
    """Read a model directory written by ``poisonguard fit``; one-line :class:`ModelFormatError` for anything else."""
    where = f"--model {path}"
    if not os.path.isdir(path):
        raise ModelFormatError(f"{where}: not a directory")
    manifest_path = os.path.join(path, MANIFEST)
    try:
        with open(manifest_path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        raise ModelFormatError(f"{where}: no {MANIFEST}; expected a directory written by 'poisonguard fit'") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{where}: {MANIFEST} is not readable JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelFormatError(f"{where}: {MANIFEST} is not a poisonguard model (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelFormatError(f"{where}: model format version {manifest.get('format_version')!r}; this poisonguard "
                               f"({__version__}) reads version {FORMAT_VERSION}; refit with 'poisonguard fit'")
    for key in ("contract", "detectors", "model", "files"):
        if key not in manifest:
            raise ModelFormatError(f"{where}: {MANIFEST} has no '{key}'")
    arrays_path = os.path.join(path, ARRAYS)
    try:
        with np.load(arrays_path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise ModelFormatError(f"{where}: {ARRAYS} is missing") from None
    except (OSError, ValueError, EOFError) as exc:  # ValueError: an object array (pickle) or a damaged file
        raise ModelFormatError(f"{where}: {ARRAYS} cannot be read without pickle ({str(exc).splitlines()[0]})") from None
    try:
        model = decode(manifest["model"], arrays)
    except ModelFormatError as exc:
        raise ModelFormatError(f"{where}: {MANIFEST}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f"{where}: the model in {MANIFEST} is not valid ({str(exc).splitlines()[0]})") from None
    _check_model(where, model, manifest)
    suite = None
    if manifest["files"].get("expectations"):
        try:
            with open(os.path.join(path, SUITE), encoding="utf-8") as fh:
                suite = json.load(fh)
        except FileNotFoundError:
            raise ModelFormatError(f"{where}: {SUITE} is missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFormatError(f"{where}: {SUITE} is not readable JSON ({str(exc).splitlines()[0]})") from None
    return SavedModel(path, manifest, model, suite)


_PER_CLASS_DIRECTIONS = {"SpectralModel", "RobustSpectralModel", "ClusteringModel"}  # (K, d) arrays per class


def _check_model(where: str, model, manifest: dict) -> None:
    """Shapes that must agree with each other and with the contract."""
    if not isinstance(model, EnsembleModel):
        raise ModelFormatError(f"{where}: the model is a {type(model).__name__}, expected an EnsembleModel")
    d = len(manifest["contract"].get("feature_columns", []))
    names = [e.get("name") for e in manifest["detectors"]]
    if list(model.names) != names or len(model.models) != len(names) or len(model.nulls) != len(names):
        raise ModelFormatError(f"{where}: the model's members {list(model.names)} do not match the detectors {names}")
    types = MODEL_TYPES()
    for i, (member, null) in enumerate(zip(model.models, model.nulls)):
        if type(member).__name__ in ("EnsembleModel", "TailNull") or types.get(type(member).__name__) is not type(member):
            raise ModelFormatError(f"{where}: {MANIFEST}: model/models/{i} is {describe_value(member)}, expected a detector's model")
        if null is not None and not isinstance(null, TailNull):
            raise ModelFormatError(f"{where}: {MANIFEST}: model/nulls/{i} is {describe_value(null)}, expected a TailNull or null")
    K = len(model.classes)
    problems = []
    if model.thresholds.shape != (K,):
        problems.append(f"thresholds have shape {model.thresholds.shape}, expected ({K},)")
    M = len(model.names)
    if model.weights is not None and (model.weights.shape != (K, M) or not np.all(model.weights > 0)
                                      or not np.allclose(model.weights.sum(axis=1), 1.0)):
        problems.append(f"weights have shape {model.weights.shape}, expected ({K}, {M}) positive weights summing to 1 per class")
    for name, member, null in zip(model.names, model.models, model.nulls):
        if tuple(member.classes) != tuple(model.classes):
            problems.append(f"{name} has other classes")
        for fname in ("counts", "thresholds", "location", "scale"):
            value = getattr(member, fname, None)
            if isinstance(value, np.ndarray) and value.shape != (K,):
                problems.append(f"{name}.{fname} has shape {value.shape}, expected ({K},)")
        for fname in ("median", "inv_scale"):
            value = getattr(member, fname, None)
            if isinstance(value, np.ndarray) and value.shape != (d,):
                problems.append(f"{name}.{fname} has shape {value.shape}, expected ({d},) for {d} features")
        for fname in ("mean", "direction", "center", "axis"):
            value = getattr(member, fname, None) if type(member).__name__ in _PER_CLASS_DIRECTIONS else None
            if isinstance(value, np.ndarray) and value.shape != (K, d):
                problems.append(f"{name}.{fname} has shape {value.shape}, expected ({K}, {d})")
        if isinstance(member, LabelModel):
            problems.extend(_label_problems(name, member, K, d))
        if null is not None and any(a.shape != (K,) for a in (null.location, null.scale, null.shape)):
            problems.append(f"{name}'s null is not one per class")
    if problems:
        raise ModelFormatError(f"{where}: {problems[0]}")


def _label_problems(name: str, member, K: int, d: int) -> list[str]:
    """A label model's groups (``detectors/label.py``, point 6): ``group_of`` (K,) maps classes to G groups, and
    its per-group facts and every fold model's classes are over those G groups."""
    from ..detectors.label import CALIBRATION_GRID

    G = len(member.fallback) if isinstance(member.fallback, np.ndarray) and member.fallback.ndim == 1 else -1
    if G < 0:
        return [f"{name}.fallback has shape {np.shape(member.fallback)}, expected one entry per group"]
    problems = []
    group_of = member.group_of
    if group_of.shape != (K,):
        problems.append(f"{name}.group_of has shape {group_of.shape}, expected ({K},)")
    elif not np.issubdtype(group_of.dtype, np.integer) or np.any((group_of < 0) | (group_of >= G)):
        problems.append(f"{name}.group_of holds a group outside 0..{G - 1}")
    for fname, shape in (("sample_rows", (G,)), ("self_confidence", (G,)), ("calibration", (G, len(CALIBRATION_GRID))),
                         ("joint", (G, G))):
        value = getattr(member, fname)
        if value.shape != shape:
            problems.append(f"{name}.{fname} has shape {value.shape}, expected {shape} for {G} groups")
    if len(member.trained_rows) and member.trained_rows.shape != (G,):  # empty: a model saved before the field
        problems.append(f"{name}.trained_rows has shape {member.trained_rows.shape}, expected ({G},) for {G} groups")
    if len(member.calibrated_on) != G:
        problems.append(f"{name}.calibrated_on has {len(member.calibrated_on)} entries, expected {G} (one per group)")
    hashes, groups, counts = member.duplicate_hashes, member.duplicate_groups, member.duplicate_counts
    if not (hashes.shape == groups.shape == counts.shape and hashes.ndim == 1):
        problems.append(f"{name}: duplicate_hashes, duplicate_groups and duplicate_counts have shapes {hashes.shape}, "
                        f"{groups.shape} and {counts.shape}, expected one entry each per copy group and label")
    elif hashes.dtype != np.uint64 or np.any(hashes[1:] < hashes[:-1]):
        problems.append(f"{name}.duplicate_hashes are not unsigned 64-bit hashes in ascending order")
    elif not np.issubdtype(groups.dtype, np.integer) or np.any((groups < 0) | (groups >= G)) or np.any(counts < 1):
        problems.append(f"{name}: a duplicate count is below 1 or its group outside 0..{G - 1}")
    if not member.duplicate_weight > 0:
        problems.append(f"{name}.duplicate_weight is {member.duplicate_weight!r}, expected a positive number")
    if member.n_folds < 1 or not member.models or len(member.models) % member.n_folds:
        problems.append(f"{name} has {len(member.models)} fold models, expected a whole number of repeats of "
                        f"{member.n_folds} folds")
    for trees in member.models:
        if trees is None:
            continue
        if not isinstance(trees, BoostedTrees):
            problems.append(f"{name}: a fold model is a {type(trees).__name__}, expected boosted trees")
            continue
        used = int(trees.feature[trees.is_leaf == 0].max(initial=-1))
        if used >= d:
            problems.append(f"{name}: a tree splits on feature {used} of {d}")
        classes = trees.classes_
        if (classes.ndim != 1 or not np.issubdtype(classes.dtype, np.integer) or np.any((classes < 0) | (classes >= G))
                or len(np.unique(classes)) != len(classes)):
            problems.append(f"{name}: a fold model predicts groups {classes.tolist()[:10]}, expected distinct groups in 0..{G - 1}")
    return problems


# -- screen --model --------------------------------------------------------------------------------
def run_screen_model(config):
    """``screen --model``: score and decide every batch row against the saved model, in one read."""
    from .ids import check_duplicate_ids
    from .screen import SUITE_FILE, build_report, finish_screen, screen_pass
    from .staging import count_problems, raise_if_lost
    from .validation import Validation, check_suite, load_suite

    t0 = time.perf_counter()
    saved = load_model(config.model)
    _check_screen_options(config, saved)
    if config.batch_rows < 1:
        raise ConfigError(f"--batch-rows: expected a positive integer, got {config.batch_rows}")
    detector = saved.make_detector()
    model = saved.model
    files = discover_shards(list(config.inputs), na_values=config.na_values)
    contract = resolve_contract(files, label_column=saved.label_column, id_column=config.id_column,
                                feature_columns=list(saved.feature_columns))
    label_type = saved.manifest["contract"].get("label_type")
    if str(contract.label_type) != label_type:
        raise InputError(f"{files[0].path}: label column '{contract.label_column}' is read as {contract.label_type}, "
                         f"but the model at {config.model} was fitted on {label_type} labels; give the labels as the trusted table had them")
    validation = None
    on_failed = config.policy.on_failed_expectation
    if config.validate and config.expectations:
        suite = load_suite(config.expectations)
        validation = Validation(suite, tuple(check_suite(suite, contract, config.expectations)), on_failed, f"file {config.expectations}")
    elif config.validate and saved.suite is not None:
        validation = Validation(saved.suite, tuple(check_suite(saved.suite, contract, f"{config.model}/{SUITE}")), on_failed,
                                f"model {config.model}")
    elif config.validate and config.expectations is None and saved.suite is None:
        raise ConfigError(f"--model {config.model}: the model has no validation suite (fitted with --no-validation); "
                          "pass --expectations or --no-validation")
    units = split_units(files)
    log.info("screening %d file(s) in %d work unit(s) against the model %s (%s), no refit", len(files), len(units),
             config.model, ", ".join(model.names))
    timings = {"inspect_s": time.perf_counter() - t0}
    outputs = (*OUTPUTS, *((SUITE_FILE,) if validation is not None else ()), "report.html", "report.json")
    with OutputDir(config.out, "screen", outputs, inputs=(*config.inputs, config.model), files=[f.path for f in files]) as outdir:
        staging = outdir.staging
        with runner_session(config.runner) as session:
            t = time.perf_counter()
            summary = screen_pass(session, model, detector, units, contract, config.batch_rows, staging, validation)
            timings["screen_s"] = time.perf_counter() - t
            # with --id-column, repeated ids are counted in what the pass wrote, not by reading the input again
            duplicates = written_duplicate_ids(session, staging, contract, summary.rows_in)
            check_duplicate_ids(duplicates, contract, config.allow_duplicate_ids)
        raise_if_lost(([] if summary.cleaned + summary.quarantine + summary.invalid == summary.rows_in else
                       [f"{summary.rows_in} rows in, but {summary.cleaned} cleaned + {summary.quarantine} quarantined + "
                        f"{summary.invalid} invalid"]) +
                      count_problems(staging, {o: getattr(summary, o) for o in OUTPUTS}, files, summary.rows_in))
        target_fpr = saved.manifest["decision"]["target_fpr"]
        report_config = replace(config, target_fpr=target_fpr, alpha=model.alpha, detectors=tuple(model.names), reference=())
        trusted = saved.manifest.get("trusted_inputs", {})
        report = build_report(report_config, detector, contract, files, summary, model,
                              {"valid": trusted.get("valid_rows", 0), "invalid": trusted.get("invalid_rows", 0)}, timings, validation,
                              duplicates)
        report["reference"] = {"paths": [config.model], "valid": trusted.get("valid_rows", 0), "invalid": trusted.get("invalid_rows", 0)}
        return finish_screen(report_config, outdir, report, summary, validation, t0)


def _written_ids(path: str):
    from types import SimpleNamespace

    import pyarrow.parquet as pq

    from ..schemas import ROW_ID
    from .ids import bucketed_ids

    ids = pq.read_table(path, columns=[ROW_ID])
    yield from bucketed_ids(SimpleNamespace(valid=ids, invalid=ids.slice(0, 0)))


def written_duplicate_ids(session, staging: str, contract: Contract, rows: int):
    """Repeated ids among the rows a screen pass wrote (every input row, once): the duplicate-id check without a read."""
    from .ids import Duplicates, count_duplicate_ids

    if contract.id_column is None:
        return Duplicates()
    parts = sorted(os.path.join(staging, o, name) for o in OUTPUTS if os.path.isdir(os.path.join(staging, o))
                   for name in os.listdir(os.path.join(staging, o)) if name.endswith(".parquet"))
    if not parts:
        return Duplicates()
    return count_duplicate_ids(session, parts, _written_ids, os.path.join(staging, "_written_ids.pkl"), rows=rows)


def _check_screen_options(config, saved: SavedModel) -> None:
    """Options that a saved model fixes cannot be given again."""
    fixed = [("--detectors", config.detectors is not None), ("--reference", bool(config.reference)),
             ("--target-fpr", config.target_fpr is not None), ("--contamination", config.contamination is not None),
             ("--alpha", config.alpha != DEFAULT_ALPHA)]
    for option, given in fixed:
        if given:
            raise ConfigError(f"{option}: cannot be combined with --model; the model fixes it (refit with 'poisonguard fit')")
    if config.feature_columns and tuple(config.feature_columns) != saved.feature_columns:
        raise ConfigError(f"--feature-columns: the model {config.model} was fitted on {','.join(saved.feature_columns)}")
    if config.label_column not in ("label", saved.label_column):
        raise ConfigError(f"--label-column: the model {config.model} was fitted with label column '{saved.label_column}'")
