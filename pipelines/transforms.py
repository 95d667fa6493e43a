"""Beam stages of the screening job. Elements are chunks (Arrow tables of many rows), never rows.

The stages respect what Beam's DaskRunner can run (see DESIGN.md, Engines): inputs are read
by ``Create(shards) | FlatMap(read)``, nothing is emitted from ``finish_bundle``, no
``BatchElements``, windows, state or metrics; counts travel as data; and everything the job
writes flows into one terminal step, so a runner that computes only the last transform
still computes all of it.

Public stages:

* :class:`ReadChunks` - ``PBegin -> PCollection[Chunk]``: read and validate the inputs;
* :class:`FitDetector` - ``PCollection[Chunk] -> PCollection[model]`` (one element): the
  detector's passes, each a ``CombinePerKey`` over class labels;
* :class:`ScreenChunks` - ``PCollection[Chunk] -> PCollection[ScreenedChunk]``: score,
  flag and split every chunk, with the model as a side input;
* :class:`ScreenBatches` - all of the above (and calibration on reference rows) as one
  composite stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa

from ..detectors import BaseDetector, calibrated_threshold
from ..detectors.base import group_by_label
from ..detectors.statistics import Histogram
from ..detectors.thresholds import SUSPICION_EDGES
from ..schemas import ATTACK, FLAGGED, POISONED, REASON, ROW_ID, SUSPICION, InputError, score_column
from .io import Shard
from .rows import Contract
from .staging import StagedUnit, load_result, save_result
from .summary import ClassSummary, ScreenSummary


@dataclass
class Chunk:
    """One chunk of one input file: its valid rows and its invalid rows."""

    shard_index: int
    number: int
    valid: pa.Table
    invalid: pa.Table


@dataclass
class ScreenedChunk:
    """A chunk split into the three outputs, with its summary for the report."""

    shard_index: int
    number: int
    cleaned: pa.Table
    quarantine: pa.Table
    invalid: pa.Table
    summary: ScreenSummary
    flagged: np.ndarray | None = None  # per valid row, in the chunk's order: which went to quarantine


def read_and_validate(shard: Shard, contract: Contract, batch_rows: int):
    """The shard's chunks, read and validated; a unit staged by :func:`~.staging.stage_pass` is read from its copy."""
    if isinstance(shard, StagedUnit):
        yield from shard.read()
        return
    for raw in contract.read(shard, batch_rows):
        valid, invalid = contract.validate(raw)
        yield Chunk(shard.index, raw.number, valid, invalid)


class ReadChunks(beam.PTransform):
    """Read and validate the shards: ``PBegin -> PCollection[Chunk]``."""

    def __init__(self, shards: list[Shard], contract: Contract, batch_rows: int, label: str | None = None):
        super().__init__(label)
        self._shards, self._contract, self._batch_rows = shards, contract, batch_rows

    def expand(self, pbegin):
        return (
            pbegin
            | "ListShards" >> beam.Create(self._shards, reshuffle=False)
            | "ReadAndValidate" >> beam.FlatMap(read_and_validate, self._contract, self._batch_rows)
        )


# -- fitting -------------------------------------------------------------------------------
class MergeAll(beam.CombineFn):
    """Merge Beam-free partial results with their own ``merge`` (None for no input)."""

    def create_accumulator(self):
        return None

    def add_input(self, accumulator, statistic):
        return statistic if accumulator is None else accumulator.merge(statistic)

    def merge_accumulators(self, accumulators):
        merged = None
        for acc in accumulators:
            if acc is not None:
                merged = acc if merged is None else merged.merge(acc)
        return merged

    def extract_output(self, accumulator):
        return accumulator


def merge_pass(session, units, step: str, transform, path: str, what: str):
    """One Beam pass over the input units: ``transform`` (labelled ``step``) yields each unit's combinable partial
    results, :class:`MergeAll` merges them into one, staged at ``path`` and read back (None when nothing came out;
    ``what`` names the result in the error when the staged file cannot be read)."""
    session.run(lambda p: (
        p
        | "Units" >> beam.Create(units, reshuffle=False)
        | step >> transform
        | "Merge" >> beam.CombineGlobally(MergeAll())
        | "Save" >> beam.Map(save_result, path)
    ))
    return load_result(path, what)


def batch_statistics(chunk: Chunk, detector: BaseDetector, stage: int, state, contract: Contract):
    """``(label, statistic)`` pairs of one chunk for fit pass ``stage``."""
    if chunk.valid.num_rows == 0:
        return
    X = contract.features(chunk.valid)
    labels = contract.labels(chunk.valid)
    row_ids = chunk.valid.column(ROW_ID).to_numpy(zero_copy_only=False)
    yield from detector.batch_statistics(stage, state, X, labels, row_ids).items()


def _advance(statistics: dict, state, detector: BaseDetector, stage: int):
    return detector.advance(stage, state, statistics or {})


class FitDetector(beam.PTransform):
    """Run a detector's fit passes: ``PCollection[Chunk] -> PCollection[model]`` (one element).

    Passes in ``detector.reference_stages`` read ``reference`` (a ``PCollection[Chunk]`` of
    trusted rows) instead; without it they see no rows.
    """

    def __init__(self, detector: BaseDetector, contract: Contract, reference=None, label: str | None = None):
        super().__init__(label)
        self._detector, self._contract, self._reference = detector, contract, reference

    def expand(self, chunks):
        det = self._detector
        state = chunks.pipeline | "InitialState" >> beam.Create([det.initial_state(len(self._contract.feature_columns))])
        reference = self._reference
        if reference is None and det.reference_stages:
            reference = chunks.pipeline | "NoReference" >> beam.Create([])
        for stage in range(det.n_stages):
            rows = reference if stage in det.reference_stages else chunks
            state = (
                rows
                | f"Pass{stage}/Summarise" >> beam.FlatMap(batch_statistics, det, stage, beam.pvalue.AsSingleton(state), self._contract)
                | f"Pass{stage}/MergePerKey" >> beam.CombinePerKey(MergeAll())
                | f"Pass{stage}/Collect" >> beam.combiners.ToDict()
                | f"Pass{stage}/Advance" >> beam.Map(_advance, beam.pvalue.AsSingleton(state), det, stage)
            )
        return state


# -- scoring -------------------------------------------------------------------------------
def screen_chunk(chunk: Chunk, model, detector: BaseDetector, contract: Contract) -> ScreenedChunk:
    """Score a chunk, flag its rows and split it into cleaned / quarantine."""
    valid = chunk.valid
    labels = contract.labels(valid)
    screened = detector.screen(model, contract.features(valid), labels)
    suspicion, flagged = screened.suspicion, screened.flagged
    scored = valid
    for name, scores in screened.columns.items():
        scored = scored.append_column(score_column(name), pa.array(scores, pa.float64()))
    scored = (
        scored.append_column(SUSPICION, pa.array(suspicion, pa.float64()))
        .append_column(FLAGGED, pa.array(flagged, pa.bool_()))
        .append_column(REASON, pa.array(screened.reasons, pa.string()))
    )
    keep = pa.array(~flagged)
    summary = ScreenSummary(
        rows_in=valid.num_rows + chunk.invalid.num_rows,
        cleaned=int((~flagged).sum()),
        quarantine=int(flagged.sum()),
        invalid=chunk.invalid.num_rows,
    )
    for label, rows in group_by_label(labels):
        summary.classes[str(label)] = cs = ClassSummary()
        cs.add(suspicion[rows], flagged[rows], {name: scores[rows] for name, scores in screened.columns.items()})
    summary.add_rows(valid.column(ROW_ID), labels, suspicion, flagged, screened.reasons, list(screened.columns))
    if POISONED in valid.column_names:  # ground truth, parsed to bool by the row contract
        attacks = valid.column(ATTACK).to_numpy(zero_copy_only=False) if ATTACK in valid.column_names else None
        summary.add_truth(valid.column(POISONED).to_numpy(zero_copy_only=False), flagged, suspicion, attacks)
    return ScreenedChunk(chunk.shard_index, chunk.number, scored.filter(keep), scored.filter(pa.array(flagged)), chunk.invalid, summary,
                         flagged)


class ScreenChunks(beam.PTransform):
    """Score and split chunks: ``PCollection[Chunk] -> PCollection[ScreenedChunk]``.

    ``model`` is the one-element PCollection from :class:`FitDetector` (or a calibrated
    version of it); it reaches every worker as a side input.
    """

    def __init__(self, model, detector: BaseDetector, contract: Contract, label: str | None = None):
        super().__init__(label)
        self._model, self._detector, self._contract = model, detector, contract

    def expand(self, chunks):
        return chunks | "ScoreAndFlag" >> beam.Map(screen_chunk, beam.pvalue.AsSingleton(self._model), self._detector, self._contract)


# -- calibration on trusted reference rows -------------------------------------------------------
@dataclass
class ReferenceSummary:
    """Histogram of the reference rows' decision values (what a threshold cuts), and how many were valid / invalid."""

    histogram: Histogram
    valid: int
    invalid: int

    def merge(self, other: ReferenceSummary) -> ReferenceSummary:
        self.histogram.merge(other.histogram)
        self.valid += other.valid
        self.invalid += other.invalid
        return self


def reference_summary(chunk: Chunk, model, contract: Contract) -> ReferenceSummary:
    values = model.decision_values(contract.features(chunk.valid), contract.labels(chunk.valid))
    return ReferenceSummary(Histogram(SUSPICION_EDGES).add_batch(values), chunk.valid.num_rows, chunk.invalid.num_rows)


def check_reference(reference: ReferenceSummary | None, where: str = "--reference") -> ReferenceSummary:
    """The reference summary, if it holds valid rows of a class the inputs have; else a one-line error that starts
    with ``where``, what the user gave the trusted rows as (``--reference`` for screen, the inputs for fit)."""
    if reference is None or reference.histogram.total == 0:
        raise InputError(f"{where}: no valid rows of a class present in the inputs")
    return reference


def calibrate(model, reference: ReferenceSummary | None, target_fpr: float, where: str = "--reference"):
    """The model with one threshold: at most ``target_fpr`` of the reference rows exceed it."""
    return model.with_threshold(calibrated_threshold(check_reference(reference, where).histogram, target_fpr))


class ScreenBatches(beam.PTransform):
    """Fit a detector on chunks and screen them: ``PCollection[Chunk] -> PCollection[ScreenedChunk]``.

    The whole job as one composite stage for a user's own pipeline (the model travels as
    a side input). With ``reference`` (a ``PCollection[Chunk]`` of trusted rows) the
    threshold is calibrated so that at most ``target_fpr`` of the reference rows would be
    flagged. After application, ``.model`` is the one-element PCollection of the model.

    Beam's DaskRunner cannot run side inputs fed by a PCollection that also feeds the main
    path (it silently duplicates elements); :func:`poisonguard.pipelines.run_screen`
    therefore runs the same steps as one pipeline per pass, which every runner handles.
    """

    def __init__(self, detector: BaseDetector, contract: Contract, reference=None, target_fpr: float = 0.01, label=None):
        super().__init__(label)
        self._detector, self._contract = detector, contract
        self._reference, self._target_fpr = reference, target_fpr
        self.model = None

    def expand(self, chunks):
        model = chunks | "Fit" >> FitDetector(self._detector, self._contract, self._reference)
        if self._reference is not None:
            summary = (
                self._reference
                | "ScoreReference" >> beam.Map(reference_summary, beam.pvalue.AsSingleton(model), self._contract)
                | "MergeReference" >> beam.CombineGlobally(MergeAll())
            )
            model = model | "Calibrate" >> beam.Map(calibrate, beam.pvalue.AsSingleton(summary), self._target_fpr)
        self.model = model
        return chunks | "Screen" >> ScreenChunks(model, self._detector, self._contract)
