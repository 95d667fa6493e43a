"""Several detectors as one: their fits run side by side, their scores combine per row.

No single detector catches every attack (spectral signatures find backdoor clusters but
not scattered label flips; k-NN label consistency finds flips but not clean-label
triggers), so screening usually runs several. :class:`EnsembleDetector` is itself a
detector of the contract in :mod:`~poisonguard.detectors.base`, so both drivers (the
in-memory ``fit`` and the Beam job) run it unchanged:

* **Fit.** The members' passes run side by side: pass ``s`` of the ensemble runs, for every
  member, its next pending pass that reads the same rows (data or trusted reference
  rows), so an ensemble needs as many passes over the data as its longest member, not
  their sum. Statistics are keyed ``(member name, member key)`` and split again before
  each member's ``advance``.
* **Scores.** Every member reports its own ``suspicion``, kept in the output as
  ``score_<member>``. By the contract each is in robust standard-deviation units of its
  class's score distribution on the fitted rows (the batch's own robust score
  distribution), so they are comparable, and the combined ``suspicion`` is their maximum:
  a row is as suspicious as the most alarmed detector says.
* **Decisions.** By default (``contamination="auto"``) a row is flagged when any member
  flags it by its own rule; each member's default flags under 1% of clean rows. With a
  float ``contamination`` the combined suspicion is cut at that share of all rows (one
  more pass, a histogram of the combined score). :meth:`calibrate` on trusted reference
  rows sets one threshold on the combined suspicion instead, so that at most
  ``target_fpr`` of the reference rows would be flagged. A flagged row's reason names
  every member that flagged it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from numbers import Real

import numpy as np

from ..schemas import ConfigError
from ._sklearn import Interval, StrOptions
from .base import BaseDetector, Screened
from .statistics import Histogram
from .thresholds import SUSPICION_EDGES, upper_quantile_threshold

#: Pseudo-member index of the ensemble's own pass (the combined-score histogram).
_OWN = -1


@dataclass(frozen=True)
class EnsembleModel:
    """Fitted state of :class:`EnsembleDetector`: the members' models and the combination rule.

    ``threshold`` is None for the union of the members' decisions, else one threshold on
    the combined suspicion (from ``contamination`` or calibration).
    """

    names: tuple
    models: tuple
    threshold: float | None = None

    @property
    def classes(self) -> tuple:
        return self.models[0].classes

    @property
    def counts(self) -> np.ndarray:
        return self.models[0].counts

    @property
    def thresholds(self) -> np.ndarray:
        return np.full(len(self.classes), np.nan if self.threshold is None else self.threshold)

    def member_suspicion(self, X: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
        return [m.suspicion(X, labels) for m in self.models]

    @staticmethod
    def combine(scores: list[np.ndarray]) -> np.ndarray:
        """Row-wise maximum, ignoring a member's NaN (NaN only where every member has none)."""
        return np.fmax.reduce(scores) if len(scores) > 1 else scores[0]

    def suspicion(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return self.combine(self.member_suspicion(X, labels))

    def margin(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Negative for flagged rows: the smallest member margin, or threshold - combined suspicion."""
        if self.threshold is not None:
            return self.threshold - self.suspicion(X, labels)
        margins = [m.margin(X, labels) for m in self.models]
        return np.fmin.reduce(margins) if len(margins) > 1 else margins[0]

    def with_threshold(self, threshold: float) -> EnsembleModel:
        return replace(self, threshold=float(threshold))

    def summary(self) -> dict:
        return {name: model.summary() for name, model in zip(self.names, self.models)}


class EnsembleDetector(BaseDetector):
    """Run several detectors as one and combine their scores (maximum of robust z-scores).

    Parameters
    ----------
    detectors : list of BaseDetector, or None, default None
        The members, each configured as wanted; names must be distinct. None: one of each
        registered detector with default settings.
    contamination : "auto" or float in (0, 0.5], default "auto"
        "auto": flag a row when any member flags it by its own rule; a float: flag that
        share of all rows by combined suspicion.
    seed : int, default 0
        Unused by the ensemble itself (each member keeps its own seed); kept for the
        common interface.

    Attributes
    ----------
    model_ : EnsembleModel
    classes_ : ndarray of shape (K,)
    """

    name = "ensemble"

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        "detectors": [list, tuple, None],
        "contamination": [StrOptions({"auto"}), Interval(Real, 0.0, 0.5, closed="right")],
    }

    def __init__(self, *, detectors=None, contamination="auto", seed=0):
        self.detectors = detectors
        self.contamination = contamination
        self.seed = seed

    # -- members and their schedule ------------------------------------------------------------
    def members(self) -> list[BaseDetector]:
        if self.detectors is None:
            from . import DETECTORS

            return [cls() for name, cls in DETECTORS.items() if cls is not EnsembleDetector]
        members = list(self.detectors)
        if not members:
            raise ConfigError("ensemble: expected at least one detector")
        for m in members:
            if not isinstance(m, BaseDetector) or isinstance(m, EnsembleDetector):
                raise ConfigError(f"ensemble: members must be detectors (not ensembles), got {m!r}")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ConfigError(f"ensemble: detector names must be distinct, got {', '.join(names)}")
        return members

    def schedule(self) -> list[tuple[str, list[tuple[int, int]]]]:
        """The ensemble's passes: ``(input, [(member index, member pass), ...])``.

        ``input`` is "data" or "reference". Members advance in lockstep; a member whose next
        pass reads the reference rows waits until no member has a data pass pending, so
        reference passes are shared too.
        """
        members = self.members()
        pending = [0] * len(members)
        passes = []
        while any(p < m.n_stages for p, m in zip(pending, members)):
            wants = {i: ("reference" if pending[i] in m.reference_stages else "data")
                     for i, m in enumerate(members) if pending[i] < m.n_stages}
            kind = "data" if "data" in wants.values() else "reference"
            steps = [(i, pending[i]) for i, w in wants.items() if w == kind]
            for i, _ in steps:
                pending[i] += 1
            passes.append((kind, steps))
        if self.contamination != "auto":
            passes.append(("data", [(_OWN, 0)]))
        return passes

    @property
    def n_stages(self) -> int:
        return len(self.schedule())

    @property
    def reference_stages(self) -> frozenset:
        return frozenset(s for s, (kind, _) in enumerate(self.schedule()) if kind == "reference")

    @property
    def requires_labels(self) -> bool:
        return any(m.requires_labels for m in self.members())

    # -- the contract -----------------------------------------------------------------------------
    def initial_state(self, n_features: int):
        self._validate_params()
        members = self.members()
        return {"members": members, "schedule": self.schedule(), "states": [m.initial_state(n_features) for m in members]}

    def batch_statistics(self, stage, state, X, labels, row_ids, into=None):
        out = {} if into is None else into
        for i, member_stage in state["schedule"][stage][1]:
            if i == _OWN:
                key = (self.name, "combined")
                hist = out.get(key) or Histogram(SUSPICION_EDGES)
                out[key] = hist.add_batch(state["partial"].suspicion(X, labels))
                continue
            member = state["members"][i]
            part = None if into is None else {k: v for (owner, k), v in into.items() if owner == member.name}
            part = member.batch_statistics(member_stage, state["states"][i], X, labels, row_ids, into=part)
            out.update({(member.name, k): v for k, v in part.items()})
        return out

    def advance(self, stage, state, statistics):
        states = list(state["states"])
        for i, member_stage in state["schedule"][stage][1]:
            if i == _OWN:
                hist = statistics.get((self.name, "combined"))
                counts = hist.counts if hist is not None else np.zeros(len(SUSPICION_EDGES) + 1, np.int64)
                return state["partial"].with_threshold(upper_quantile_threshold(SUSPICION_EDGES, counts, self.contamination))
            member = state["members"][i]
            states[i] = member.advance(member_stage, states[i], {k: v for (owner, k), v in statistics.items() if owner == member.name})
        state = {**state, "states": states}
        if stage == len(state["schedule"]) - 1 or state["schedule"][stage + 1][1] == [(_OWN, 0)]:
            model = EnsembleModel(tuple(m.name for m in state["members"]), tuple(states))
            if stage == len(state["schedule"]) - 1:
                return model
            state["partial"] = model
        return state

    def _set_model(self, model) -> None:
        self.model_ = model
        self.classes_ = np.asarray(model.classes, dtype=object)

    # -- scoring ----------------------------------------------------------------------------------
    def screen(self, model: EnsembleModel, X: np.ndarray, labels: np.ndarray) -> Screened:
        scores = model.member_suspicion(X, labels)
        combined = model.combine(scores)
        reasons = np.full(len(X), None, dtype=object)
        if model.threshold is not None:
            flagged = combined > model.threshold
            top = np.argmax(np.nan_to_num(np.vstack(scores), nan=-np.inf), axis=0)
            for i in np.flatnonzero(flagged):
                reasons[i] = (f"ensemble: suspicion {combined[i]:.2f} > threshold {model.threshold:.2f} "
                              f"(highest: {model.names[top[i]]})")
            return Screened(dict(zip(model.names, scores)), combined, flagged, reasons)
        thresholds = [m.thresholds_for(labels) for m in model.models]
        member_flags = np.vstack([s > t for s, t in zip(scores, thresholds)])
        flagged = member_flags.any(axis=0)
        for i in np.flatnonzero(flagged):
            parts = [f"{model.names[j]}: suspicion {scores[j][i]:.2f} > threshold {thresholds[j][i]:.2f}"
                     for j in np.flatnonzero(member_flags[:, i])]
            reasons[i] = "; ".join(parts) + f" (class {str(labels[i])!r})"
        return Screened(dict(zip(model.names, scores)), combined, flagged, reasons)
