"""The screening job: read -> validate -> fit the detector -> score and flag -> write.

:func:`run_screen` is the whole job behind ``poisonguard screen``; :class:`ScreenBatches`
is the same work as one composite ``PTransform`` for a user's own pipeline.

Output layout under ``out``::

    cleaned/      Parquet parts: valid rows that were not flagged, with their scores
    quarantine/   Parquet parts: flagged rows, with scores and the reason
    invalid/      Parquet parts: rows that failed parsing or validation, values as text
    report.json   counts, per-class summaries, detector parameters, validation, policy verdict, timings
    report.html   the same report as one self-contained page (works offline)
    expectations.json  the Great Expectations suite the rows were validated against

Everything is first written to a staging directory inside ``out`` and published only
when the whole job succeeded, with one atomic rename (:mod:`.outdir`: the versioned
layout behind these names, the lock, and the rules that keep inputs safe), so a failed
or killed run leaves the previous outputs as they were.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import apache_beam as beam
import numpy as np

from .. import __version__
from ..detectors import DETECTORS, BaseDetector, EnsembleDetector, PatternModel
from ..detectors.decision import DEFAULT_ALPHA, RANKING_QUIET_SHARE, TIE_BREAK
from ..schemas import OUTPUTS, ConfigError, PoisonguardError
from .images import (
    IMAGE_DEFAULT_DETECTORS, IMAGE_DETECTOR_PARAMS, ImageContract, ImageOptions, is_image_input, representation_pass, resolve_image_contract,
)
from .ids import Duplicates, check_duplicate_ids, duplicate_ids_pass
from .history import DriftRule, append_run, check_store, compare_with_history, run_record
from .html_report import write_html_report
from .io import discover_shards, part_name, split_units, write_part
from .report import inputs_section, library_versions, percent, rounded, write_json, write_report
from .rows import Contract, resolve_contract
from .runners import RunnerConfig, RunnerSession, runner_session
from .outdir import OutputDir
from .staging import count_problems, load_result, raise_if_lost, remove_staged, save_result, stage_pass
from .summary import ClassSummary, ScreenSummary
from .transforms import (
    MergeAll, ScreenedChunk, batch_statistics, calibrate, check_reference, merge_pass, read_and_validate, reference_summary,
    screen_chunk,
)
from .validation import ON_FAILED, VALIDATION_BLOCK_ROWS, FrameStatistics, SuiteRunner, Validation, apply_to_screened, contract_frame, validation_section

log = logging.getLogger("poisonguard")

DEFAULT_BATCH_ROWS = 65536
#: Detectors run when ``--detectors`` is not given: backdoor clusters, label issues and trigger patterns (the field
#: test's best set at the clean-row budget, benchmarks/README.md); with ``--reference``, also ``novelty`` against the
#: trusted rows.
DEFAULT_DETECTORS = ("spectral", "label", "pattern")
#: Default flagged budget: twice the decision layer's clean-row bound of about 0.5% (README, "Exit codes").
DEFAULT_MAX_FLAGGED_FRACTION = 0.01
#: What a drift alarm does (``--on-drift``).
ON_DRIFT = ("breach", "report")


@dataclass(frozen=True)
class Policy:
    """When a batch is rejected (exit code 1): the policy's knobs, each a CLI option and a job-file key.

    Fractions are of all input rows. By default a batch breaches when more than 1% of its
    rows are flagged (the decision layer keeps clean rows flagged at or under about 0.5%,
    so a clean batch stays inside with room to spare; README, "Exit codes"), when it has
    no valid row (an empty or fully invalid batch is never "accepted"), or when a drift
    alarm rings against the run history (with ``--history``). Invalid rows are tolerated
    (they are reported, and kept in ``invalid/``).
    """

    max_flagged_fraction: float = DEFAULT_MAX_FLAGGED_FRACTION
    max_invalid_fraction: float = 1.0
    #: what a failed expectation does (see pipelines.validation.ON_FAILED); by default it is reported only
    on_failed_expectation: str = "report"
    #: fewer valid rows than this breach the batch (default 1: an empty or fully invalid batch breaches; 0: never)
    min_valid_rows: int = 1
    #: what a drift alarm against the run history does: breach (default) or report only
    on_drift: str = "breach"

    def __post_init__(self):
        for name in ("max_flagged_fraction", "max_invalid_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"--{name.replace('_', '-')}: expected a fraction in [0, 1], got {value}")
        if self.on_failed_expectation not in ON_FAILED:
            raise ConfigError(f"--on-failed-expectation: expected one of {', '.join(ON_FAILED)}, got {self.on_failed_expectation!r}")
        if isinstance(self.min_valid_rows, bool) or not isinstance(self.min_valid_rows, int) or self.min_valid_rows < 0:
            raise ConfigError(f"--min-valid-rows: expected a non-negative integer, got {self.min_valid_rows!r}")
        if self.on_drift not in ON_DRIFT:
            raise ConfigError(f"--on-drift: expected one of {', '.join(ON_DRIFT)}, got {self.on_drift!r}")

    def verdict(self, summary: ScreenSummary, validation: dict | None = None) -> dict:
        n = max(summary.rows_in, 1)
        flagged, invalid = summary.quarantine / n, summary.invalid / n
        valid = summary.cleaned + summary.quarantine
        reasons = []
        if valid < self.min_valid_rows:
            what = ("the batch has no rows" if summary.rows_in == 0 else
                    f"all {summary.rows_in:,} rows are invalid" if valid == 0 else f"only {valid:,} valid rows")
            reasons.append(f"{what}; at least {self.min_valid_rows:,} valid row{'s' if self.min_valid_rows != 1 else ''} required")
        if flagged > self.max_flagged_fraction:
            reasons.append(f"{summary.quarantine:,} quarantined row{'s' if summary.quarantine != 1 else ''} ({percent(flagged)}) "
                           f"exceed{'s' if summary.quarantine == 1 else ''} the allowed {percent(self.max_flagged_fraction)}")
        if invalid > self.max_invalid_fraction:
            reasons.append(f"{summary.invalid:,} invalid row{'s' if summary.invalid != 1 else ''} ({percent(invalid)}) "
                           f"exceed{'s' if summary.invalid == 1 else ''} the allowed {percent(self.max_invalid_fraction)}")
        if validation is not None:
            failing = (validation["failed"] if self.on_failed_expectation == "breach" else
                       validation["failed_dataset_level"] if self.on_failed_expectation == "quarantine" else [])
            if failing:
                shown = ", ".join(failing[:3]) + (f" and {len(failing) - 3} more" if len(failing) > 3 else "")
                reasons.append(f"{len(failing)} failed expectation{'s' if len(failing) > 1 else ''}: {shown}")
        return {
            "max_flagged_fraction": self.max_flagged_fraction,
            "max_invalid_fraction": self.max_invalid_fraction,
            "on_failed_expectation": self.on_failed_expectation,
            "min_valid_rows": self.min_valid_rows,
            "on_drift": self.on_drift,
            "flagged_fraction": flagged,
            "invalid_fraction": invalid,
            "breached": bool(reasons),
            "reasons": reasons,
        }


@dataclass(frozen=True)
class ScreenConfig:
    """Everything ``poisonguard screen`` needs; see the CLI help for each field."""

    inputs: tuple[str, ...]
    out: str
    label_column: str = "label"
    id_column: str | None = None
    feature_columns: tuple[str, ...] | None = None
    detectors: tuple[str, ...] | None = None  # None: DEFAULT_DETECTORS, and novelty too with a reference
    detector_params: dict = field(default_factory=dict)  # detector name -> {parameter: value}
    contamination: float | None = None
    alpha: float = DEFAULT_ALPHA
    reference: tuple[str, ...] = ()
    target_fpr: float | None = None
    policy: Policy = field(default_factory=Policy)
    expectations: str | None = None  # a Great Expectations suite JSON file; default: the contract suite
    validate: bool = True            # False: no validation stage (no Great Expectations)
    batch_rows: int = DEFAULT_BATCH_ROWS
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    na_values: tuple[str, ...] = ()  # CSV cell texts read as missing, besides the empty cell
    allow_duplicate_ids: bool = False  # with id_column: accept (and report) ids that repeat
    images: ImageOptions = field(default_factory=ImageOptions)  # image inputs: column, size, representation (pipelines.images)
    history: str | None = None  # an SQLite run history: compare this run with it, then append it (pipelines.history)
    drift: DriftRule = field(default_factory=DriftRule)  # when the comparison rings (see Policy.on_drift)
    model: str | None = None  # a model directory from `poisonguard fit`: score against it, no refit (pipelines.model)

    def detector_names(self) -> tuple[str, ...]:
        """The detectors to run: as configured, or the default set (with ``novelty`` when there are trusted rows)."""
        if self.detectors is not None:
            return tuple(self.detectors)
        return (*DEFAULT_DETECTORS, "novelty") if self.reference else DEFAULT_DETECTORS

    def make_detector(self) -> EnsembleDetector:
        """The configured detectors as one :class:`EnsembleDetector`: the decision layer.

        Every run, one detector or several, decides through it: ``contamination`` flags a
        share of all rows by combined suspicion, else Benjamini-Hochberg per class at
        ``alpha``. Reference rows teach it its nulls; with ``target_fpr`` they also replace
        the cut (see :func:`calibrate_pass`).
        """
        names = list(self.detector_names())
        if not names:
            raise ConfigError(f"--detectors: expected one or more of: {', '.join(DETECTORS)}")
        for name in [*names, *self.detector_params]:
            if name not in DETECTORS:
                raise ConfigError(f"--detectors: unknown detector {name!r}; expected one or more of: {', '.join(DETECTORS)}")
        if len(set(names)) != len(names):
            raise ConfigError(f"--detectors: {','.join(names)} names a detector twice")
        for name in names:
            if DETECTORS[name].requires_reference and not self.reference:
                raise ConfigError(f"--detectors: {name} compares the batch with trusted rows; give them with --reference")
        members = [DETECTORS[name](**self.detector_params.get(name, {})) for name in names]
        det = EnsembleDetector(detectors=members, alpha=self.alpha,
                               **({} if self.contamination is None else {"contamination": self.contamination}))
        for d in (*members, det):
            try:
                d._validate_params()
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"detector {d.name}: {exc}") from None
        return det


@dataclass
class ScreenResult:
    """What :func:`run_screen` returns: the report (as written) and where things are."""

    report: dict
    out: str

    @property
    def breached(self) -> bool:
        return self.report["policy"]["breached"]

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)


# -- one pipeline per pass -------------------------------------------------------------------
# Each pass is a linear chain ending in one terminal step that saves a small result in the
# staging directory; the driver turns it into the next pass's constant. This is the shape
# every runner, DaskRunner included, executes correctly (see ScreenBatches for the
# single-pipeline variant).
def _read_statistics(shard, contract, batch_rows, detector, stage, state):
    for chunk in read_and_validate(shard, contract, batch_rows):
        yield from batch_statistics(chunk, detector, stage, state, contract)


def _read_reference(shard, contract, batch_rows, model):
    for chunk in read_and_validate(shard, contract, batch_rows):
        yield reference_summary(chunk, model, contract)


def _read_reference_statistics(shard, contract, batch_rows):
    for chunk in read_and_validate(shard, contract, batch_rows):
        frame = contract_frame(chunk.valid, chunk.invalid, contract)
        yield FrameStatistics().add(frame, contract.feature_columns, contract.label_column)


class _ScreenAndWrite(beam.DoFn):
    """Read, validate, screen and write the chunks of a work unit.

    With a validation stage, Great Expectations' context is built once per worker
    (``setup``) and every chunk is validated before its rows are split, consecutive chunks
    of a unit together up to ``VALIDATION_BLOCK_ROWS`` rows.
    """

    def __init__(self, contract, batch_rows, model, detector, staging, validation: Validation | None):
        self._args = (contract, batch_rows, model, detector, staging)
        self._validation = validation
        self._runner = None

    def setup(self):
        if self._validation is not None and self._runner is None:
            self._runner = SuiteRunner(self._validation, self._args[0]).start()

    def process(self, shard):
        contract, batch_rows, model, detector, staging = self._args
        self.setup()  # runners that skip setup still validate
        if self._runner is None:
            for chunk in read_and_validate(shard, contract, batch_rows):
                yield write_screened(screen_chunk(chunk, model, detector, contract), staging)
            return
        block, rows = [], 0  # consecutive chunks of this unit, validated in one run (all emitted from here)
        for chunk in read_and_validate(shard, contract, batch_rows):
            block.append(chunk)
            rows += chunk.valid.num_rows + chunk.invalid.num_rows
            if rows >= VALIDATION_BLOCK_ROWS:
                yield from self._screen_block(block)
                block, rows = [], 0
        yield from self._screen_block(block)

    def _screen_block(self, chunks):
        contract, _, model, detector, staging = self._args
        for chunk, checked in zip(chunks, self._runner.check_block(chunks)):
            screened = apply_to_screened(screen_chunk(chunk, model, detector, contract), checked, self._validation.on_failed)
            yield write_screened(screened, staging)


def write_screened(chunk: ScreenedChunk, staging: str) -> ScreenSummary:
    """Write a screened chunk's three parts; return its summary."""
    name = part_name(chunk.shard_index, chunk.number)
    for output in OUTPUTS:
        write_part(getattr(chunk, output), os.path.join(staging, output), name)
    log.info("screened %s: %d rows, %d flagged, %d invalid", name, chunk.summary.rows_in, chunk.summary.quarantine, chunk.summary.invalid)
    return chunk.summary


def fit_passes(session: RunnerSession, detector, units, contract: Contract, batch_rows: int, staging: str,
               ref_units=(), ref_contract: Contract | None = None):
    """Run the detector's fit passes, one pipeline each; return the model.

    Passes in ``detector.reference_stages`` read the reference units (none: no statistics).
    """
    state = detector.initial_state(len(contract.feature_columns))
    for stage in range(detector.n_stages):
        path = os.path.join(staging, f"_pass{stage}.pkl")
        started = time.perf_counter()
        on_reference = stage in detector.reference_stages
        pass_units, pass_contract = (ref_units, ref_contract) if on_reference else (units, contract)
        if not pass_units:
            state = detector.advance(stage, state, {})
            log.info("%s: fit pass %d/%d reads reference rows; none given, skipped", detector.name, stage + 1, detector.n_stages)
            continue
        session.run(lambda p: (
            p
            | "Units" >> beam.Create(pass_units, reshuffle=False)
            | "Summarise" >> beam.FlatMap(_read_statistics, pass_contract, batch_rows, detector, stage, state)
            | "MergePerClass" >> beam.CombinePerKey(MergeAll())
            | "Collect" >> beam.combiners.ToDict()
            | "Save" >> beam.Map(save_result, path)
        ))
        state = detector.advance(stage, state, load_result(path, f"pass {stage} statistics") or {})
        log.info("%s: fit pass %d/%d done in %.1f s", detector.name, stage + 1, detector.n_stages, time.perf_counter() - started)
    return state


def calibrate_pass(session: RunnerSession, model, ref_units, contract: Contract, batch_rows: int, target_fpr: float | None, staging: str,
                   where: str = "--reference"):
    """Score the trusted rows; with ``target_fpr``, replace the cut by one that flags at most that share of them.
    ``where`` names the trusted rows in the error when none is valid."""
    reference = merge_pass(session, ref_units, "ScoreReference", beam.FlatMap(_read_reference, contract, batch_rows, model),
                           os.path.join(staging, "_reference.pkl"), "reference summary")
    if target_fpr is None:  # the trusted rows already taught the decision layer its nulls; its rule stands
        return model, check_reference(reference, where)
    return calibrate(model, reference, target_fpr, where), reference


def reference_statistics_pass(session: RunnerSession, ref_units, contract: Contract, batch_rows: int, staging: str) -> FrameStatistics:
    """Combinable facts of the trusted rows (ranges, null rates, means, classes) for the contract suite."""
    return merge_pass(session, ref_units, "Statistics", beam.FlatMap(_read_reference_statistics, contract, batch_rows),
                      os.path.join(staging, "_reference_statistics.pkl"), "reference statistics") or FrameStatistics()


def screen_pass(session: RunnerSession, model, detector: BaseDetector, units, contract: Contract, batch_rows: int, staging: str,
                validation: Validation | None = None) -> ScreenSummary:
    return merge_pass(session, units, "ScreenAndWrite",
                      beam.ParDo(_ScreenAndWrite(contract, batch_rows, model, detector, staging, validation)),
                      os.path.join(staging, "_summary.pkl"), "summary") or ScreenSummary()


# -- the job ---------------------------------------------------------------------------------
def run_screen(config: ScreenConfig) -> ScreenResult:
    """Run the screening job end to end; raises PoisonguardError for bad input or options."""
    if config.history:
        check_store(config.history)
    if config.model is not None:  # a saved model: one pass, no fit
        from .model import run_screen_model

        return run_screen_model(config)
    t0 = time.perf_counter()
    detector = config.make_detector()
    if config.batch_rows < 1:
        raise ConfigError(f"--batch-rows: expected a positive integer, got {config.batch_rows}")
    files = discover_shards(list(config.inputs), na_values=config.na_values)
    if is_image_input(files, config.images):  # decoded and represented inside the pipeline (pipelines.images)
        if config.reference:
            raise ConfigError("--reference: trusted reference rows are not supported for image inputs yet")
        params = {name: {**extra, **config.detector_params.get(name, {})} for name, extra in IMAGE_DETECTOR_PARAMS.items()}
        config = replace(config, detectors=config.detectors or IMAGE_DEFAULT_DETECTORS,
                         detector_params={**config.detector_params, **params})
        detector = config.make_detector()
        contract = resolve_image_contract(files, config.images, label_column=config.label_column, id_column=config.id_column)
    else:
        contract = resolve_contract(
            files, label_column=config.label_column, id_column=config.id_column,
            feature_columns=list(config.feature_columns) if config.feature_columns else None,
        )
    detector.set_params(feature_names=tuple(contract.feature_columns))  # for the reasons of flagged rows
    ref_units, ref_contract = [], None
    if config.reference:
        ref_files = discover_shards(list(config.reference), na_values=config.na_values)
        ref_contract = _reference_contract(contract, ref_files)
        ref_units = split_units(ref_files)
    validation = None if isinstance(contract, ImageContract) else _validation(config, contract)
    units = split_units(files)
    total_bytes = sum(os.path.getsize(f.path) for f in files)
    log.info("screening %d file(s) in %d work unit(s), %.1f MB: label '%s', %d feature column(s), detector(s) %s, runner %s x%d",
             len(files), len(units), total_bytes / 1e6, contract.label_column, len(contract.feature_columns),
             ", ".join(config.detector_names()), config.runner.runner, config.runner.workers)
    timings = {"inspect_s": time.perf_counter() - t0}

    outputs = (*OUTPUTS, *((SUITE_FILE,) if validation is not None else ()), "report.html", "report.json")
    with OutputDir(config.out, "screen", outputs, inputs=(*config.inputs, *config.reference),
                   files=[f.path for f in files]) as outdir:
        staging = outdir.staging
        with runner_session(config.runner) as session:
            if isinstance(contract, ImageContract):  # no staging copy: each pass decodes the images again
                contract = representation_pass(session, units, contract, config.batch_rows, staging, files)
                detector.set_params(feature_names=tuple(contract.feature_columns))
            else:
                t = time.perf_counter()  # read and validate once; every further pass reads the columnar copy
                units = stage_pass(session, units, contract, config.batch_rows, staging)
                if ref_units:
                    ref_units = stage_pass(session, ref_units, ref_contract, config.batch_rows, staging, "reference")
                timings["read_s"] = time.perf_counter() - t
            duplicates = duplicate_ids_pass(session, units, contract, config.batch_rows, staging)
            check_duplicate_ids(duplicates, contract, config.allow_duplicate_ids)
            t = time.perf_counter()
            model = fit_passes(session, detector, units, contract, config.batch_rows, staging, ref_units, ref_contract)
            timings["fit_s"] = time.perf_counter() - t
            reference = None
            if ref_units:
                t = time.perf_counter()
                model, reference = calibrate_pass(session, model, ref_units, ref_contract, config.batch_rows, config.target_fpr, staging)
                timings["calibrate_s"] = time.perf_counter() - t
            if validation is not None and validation.suite is None:  # the contract suite, with the trusted rows' facts
                t = time.perf_counter()
                validation = _contract_validation(config, contract,
                                                  reference_statistics_pass(session, ref_units, ref_contract, config.batch_rows, staging))
                timings["reference_statistics_s"] = time.perf_counter() - t
            t = time.perf_counter()
            summary = screen_pass(session, model, detector, units, contract, config.batch_rows, staging, validation)
            timings["screen_s"] = time.perf_counter() - t
        remove_staged(staging)
        _check_conservation(summary, model, files, staging)
        report = build_report(config, detector, contract, files, summary, model,
                              {"valid": reference.valid, "invalid": reference.invalid} if reference else None, timings, validation,
                              duplicates)
        if isinstance(contract, ImageContract):
            report["inputs"]["image_column"] = contract.image_column
            report["representation"] = contract.representation.describe()
        return finish_screen(config, outdir, report, summary, validation, t0)


def finish_screen(config: ScreenConfig, outdir: OutputDir, report: dict, summary: ScreenSummary,
                  validation: Validation | None, t0: float) -> ScreenResult:
    """What every screening run ends with (with or without a saved model): the run against the history, the suite
    as applied, report.json and report.html, publication, and the run's record appended to the history."""
    staging = outdir.staging
    for output in OUTPUTS:  # an output no row went to is still published, empty
        os.makedirs(os.path.join(staging, output), exist_ok=True)
    report["timings"]["total_s"] = time.perf_counter() - t0
    if config.history:  # this run against the past ones; its own record is appended once it is published
        report = compare_with_history(report, config.history, config.drift, config.policy.on_drift)
    if validation is not None:  # the suite as applied: a file to edit and pass back with --expectations
        write_json(validation.suite, os.path.join(staging, SUITE_FILE))
    report = write_report(report, os.path.join(staging, "report.json"))
    write_html_report(report, os.path.join(staging, "report.html"))
    outdir.publish()
    if config.history:
        try:
            append_run(config.history, run_record(report))
        except (PoisonguardError, sqlite3.Error, OSError) as exc:  # published already: a retry would publish it twice
            log.warning("the outputs are published in %s, but the run could not be added to the history %s: %s",
                        config.out, config.history, exc)
    log.info("done in %.1f s: %d rows in, %d cleaned, %d quarantined, %d invalid -> %s",
             report["timings"]["total_s"], summary.rows_in, summary.cleaned, summary.quarantine, summary.invalid, config.out)
    return ScreenResult(report, config.out)


SUITE_FILE = "expectations.json"


def _validation(config: ScreenConfig, contract: Contract) -> Validation | None:
    """The validation stage as configured; a contract suite that needs the trusted rows' facts is left to build (suite None)."""
    on_failed = config.policy.on_failed_expectation
    if not config.validate:
        if config.expectations:
            raise ConfigError("--expectations: cannot be combined with --no-validation")
        return None
    if config.expectations:
        from .validation import check_suite, load_suite

        suite = load_suite(config.expectations)
        return Validation(suite, tuple(check_suite(suite, contract, config.expectations)), on_failed, f"file {config.expectations}")
    if config.reference:
        return Validation(None, (), on_failed, "contract")
    return _contract_validation(config, contract, None)


def _contract_validation(config: ScreenConfig, contract: Contract, reference: FrameStatistics | None) -> Validation:
    from .validation import check_suite, contract_suite

    suite = contract_suite(contract, reference)
    source = "data contract and trusted reference rows" if reference is not None else "data contract"
    return Validation(suite, tuple(check_suite(suite, contract, "contract suite")), config.policy.on_failed_expectation, source)


def _reference_contract(contract: Contract, ref_shards) -> Contract:
    """Reference rows are read with the batch's label and feature columns and their own ids and extra columns
    (a ``simulate`` output's ``row_id``, the batch's id column where they have it, else derived ids)."""
    ref = resolve_contract(ref_shards, label_column=contract.label_column, id_column=contract.id_column,
                           feature_columns=list(contract.feature_columns), optional_id=True)
    return Contract(contract.label_column, ref.id_column, contract.feature_columns, contract.label_type, ref.passthrough, ref.columns)


def _check_conservation(summary: ScreenSummary, model, files, staging: str) -> None:
    """Cross-check row counts between independent pipelines and the files written.

    A runner that silently drops or duplicates elements (DESIGN.md, Engines) is caught
    here, before anything is published: the valid rows seen by the fit must be the rows
    screened, the part files must hold what the summary says, and for Parquet inputs the
    rows read must be the rows the files' metadata declare.
    """
    problems = []
    if summary.cleaned + summary.quarantine + summary.invalid != summary.rows_in:
        problems.append(f"{summary.rows_in} rows in, but {summary.cleaned} cleaned + {summary.quarantine} quarantined + "
                        f"{summary.invalid} invalid")
    fitted = int(np.sum(model.counts))
    if fitted != summary.cleaned + summary.quarantine:
        problems.append(f"the fit saw {fitted} valid rows but {summary.cleaned + summary.quarantine} were screened")
    problems += count_problems(staging, {output: getattr(summary, output) for output in OUTPUTS}, files, summary.rows_in)
    raise_if_lost(problems)


def _json_params(detector: BaseDetector) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in detector.get_params(deep=False).items()
            if k != "detectors"}


def _why(facts: dict, summary, mode: str, alpha: float, target_fpr) -> str:
    """In words, why a class was or was not cut, from the decision's numbers and the rows flagged."""
    flagged = summary.flagged if summary is not None else 0
    rows = summary.rows if summary is not None else 0
    if facts["cut"] is None:
        if mode != "auto":
            return f"not cut: no cut applies to its {rows} rows"
        why = (f"not cut: none of its {rows} rows had a combined p-value small enough for Benjamini-Hochberg "
               f"at false-discovery level {alpha:g}")
        groups = [f"{name}'s at p <= {m['group_cut_p']:.2g}" for name, m in facts["members"].items() if "group_cut_p" in m]
        # rows flagged without a class cut lie in a group of rows that a member rejects at its own cut (ensemble.decide)
        return why + (f"; {flagged} rows flagged as a group of rows that a detector rejects at its own cut "
                      f"({', '.join(groups)})" if flagged and groups else "")
    rule = (f"Benjamini-Hochberg at {alpha:g}" if mode == "auto" else "the fixed share of all rows" if mode == "contamination"
            else f"trusted rows at false-positive rate {target_fpr:g}")
    return (f"cut at suspicion {facts['cut']:.3g} (combined p <= {facts['cut_p']:.2g}, by {rule}): "
            f"{flagged} of its {rows} rows flagged")


#: Classes the report describes one by one: those with the most flagged rows, then the largest. The others are
#: summed up in ``other_classes``, so report.json stays small (well under 2 MB) whatever the number of classes.
MAX_REPORT_CLASSES = 200


def described_classes(summary: ScreenSummary) -> tuple[list, list]:
    """``(described, summed up)``: the classes the report details (:data:`MAX_REPORT_CLASSES`) and the rest."""
    classes = summary.classes
    order = sorted(classes, key=lambda c: (-classes[c].flagged, -classes[c].rows, str(c)))
    return order[:MAX_REPORT_CLASSES], order[MAX_REPORT_CLASSES:]


def _other_classes(summary: ScreenSummary, rest: list, whys: list[str]) -> dict | None:
    """What the classes beyond :data:`MAX_REPORT_CLASSES` add up to, and how many were (not) cut."""
    if not rest:
        return None
    verdicts: dict[str, int] = {}
    for why in whys:
        verdict = why.split(":", 1)[0]
        verdicts[verdict] = verdicts.get(verdict, 0) + 1
    together = ClassSummary()
    for c in rest:
        together.merge(summary.classes[c])
    return {"classes": len(rest), "rows": together.rows, "flagged": together.flagged,
            "decisions": dict(sorted(verdicts.items())),
            "why": f"only the {MAX_REPORT_CLASSES} classes with the most flagged rows, then the most rows, are described "
                   "one by one",
            "summary": together.to_json()}


def _decision(model, mode: str, alpha: float, target_fpr, summary: ScreenSummary | None = None) -> dict:
    """How the members' scores became one suspicion and one decision, with every class's cut and why."""
    if mode == "auto":
        rule = (f"Benjamini-Hochberg per class at false-discovery level {alpha:g}; a detector that tests groups of rows "
                "(pattern's cells) also flags the rows of a group it rejects at its own cut")
    elif mode == "contamination":
        rule = "a fixed share of all rows by combined suspicion"
    else:
        rule = f"one cut set on trusted rows to a false-positive rate of {target_fpr:g}"
    return {
        "members": list(model.names),
        "suspicion": ("the ranking: -log10 of the members' p-values combined as the cuts combine them, min(1, smallest "
                       "member p-value / its weight) (weighted Bonferroni; each class's member weights are under "
                       "classes.<class>.members), except that the label member enters before its per-class calibration "
                       f"and a quiet member with {RANKING_QUIET_SHARE:g} of a share, plus at most {TIE_BREAK:g} to order "
                       "rows whose p-values tie, by the members' finer scores; the cuts read the calibrated combination"),
        "threshold_mode": mode,
        "rule": rule,
        "alpha": alpha if mode == "auto" else None,
        "target_fpr": target_fpr if mode == "reference" else None,
        "classes": {c: {**rounded(facts), "why": _why(facts, (summary.classes.get(c) if summary else None), mode, alpha, target_fpr)}
                    for c, facts in model.decision_summary().items()},
    }


def _member_summary(member_model, contract) -> dict:
    """A member's per-class facts; the pattern detector's rules name the features."""
    if isinstance(member_model, PatternModel):
        return member_model.summary(tuple(contract.feature_columns))
    return member_model.summary()


def _bounded(report: dict, summary: ScreenSummary) -> dict:
    """Keep the per-class sections to the described classes (:func:`described_classes`); sum up the rest."""
    described, rest = described_classes(summary)
    report["other_classes"] = None
    if not rest:
        return report
    dropped = set(rest)
    decision = report["decision"]
    whys = [decision["classes"][c]["why"] for c in rest if c in decision["classes"]]
    decision["classes"] = {c: v for c, v in decision["classes"].items() if c not in dropped}
    for member in report["detectors"]:
        member["classes"] = {c: v for c, v in member["classes"].items() if c not in dropped}
    report["classes"] = {c: v for c, v in report["classes"].items() if c not in dropped}
    report["other_classes"] = _other_classes(summary, rest, whys)
    return report


def build_report(config: ScreenConfig, detector, contract: Contract, files, summary: ScreenSummary, model, reference, timings,
                 validation: Validation | None, duplicates: Duplicates) -> dict:
    members = detector.members()
    threshold_mode = ("reference" if reference and config.target_fpr is not None else
                      "auto" if detector.contamination == "auto" else "contamination")
    checks = validation_section(validation, summary.validation, duplicates) if validation is not None else None
    report = {
        "job": "screen",
        "poisonguard_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": {**inputs_section(config.inputs, files, contract), "duplicate_ids": duplicates.to_json()},
        "counts": {
            "rows_in": summary.rows_in,
            "valid": summary.cleaned + summary.quarantine,
            "cleaned": summary.cleaned,
            "quarantine": summary.quarantine,
            "invalid": summary.invalid,
        },
        "outputs": {name: os.path.join(config.out, name) for name in OUTPUTS},
        "detectors": [
            {
                "name": member.name,
                "params": _json_params(member),
                "classes": {c: rounded({k: v for k, v in facts.items() if k != "threshold"})
                            for c, facts in _member_summary(member_model, contract).items()},
            }
            for member, member_model in zip(members, model.models)
        ],
        "decision": _decision(model, threshold_mode, config.alpha, config.target_fpr, summary),
        "classes": {label: cs.to_json() for label, cs in sorted(summary.classes.items())},
        "flagged_by": {name: summary.flagged_by.get(name, 0) for name in model.names},
        "top_rows": summary.top_json(),
        "reference": ({"paths": list(config.reference), **reference} if reference else None),
        "validation": checks,
        "policy": config.policy.verdict(summary, checks),
        "detection": summary.detection_json(),
        "runner": config.runner.describe(),
        "batch_rows": config.batch_rows,
        "timings": dict(timings),
        "versions": library_versions(),
    }
    return _bounded(report, summary)
