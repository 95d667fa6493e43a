"""Several detectors as one, decided by the shared decision layer (:mod:`.decision`).

No single detector catches every attack (spectral signatures find backdoor clusters but
not scattered label flips; label-quality scores find flips but not a consistent
trigger), so screening usually runs several. :class:`EnsembleDetector` is itself a
detector of the contract in :mod:`~poisonguard.detectors.base`, so both drivers (the
in-memory ``fit`` and the Beam job) run it unchanged, and the screening job runs every
detector through it, one member or several: it is where scores become decisions.

* **Fit.** The members' passes run side by side: pass ``s`` of the ensemble runs, for every
  member, its next pending pass that reads the same rows (data or trusted reference
  rows), so an ensemble needs as many passes over the data as its longest member, not
  their sum. Statistics are keyed ``(member name, member key)`` and split again before
  each member's ``advance``. Then the decision layer's own passes: per class, a histogram
  of each member's score on the trusted reference rows (when given) and on the data
  (without the rows the member's own rule cuts as a cluster), for the null of members
  without p-values of their own (:class:`~poisonguard.detectors.decision.TailNull`,
  fitted on the trusted rows of a class that has at least ``MIN_REFERENCE_TAIL_ROWS`` of them,
  ``MIN_REFERENCE_ROWS`` for novelty); and
  per class, a histogram of the combined ``L = -log10 p``, for the cut.
* **Scores.** Every member reports its own score, kept in the output as
  ``score_<member>``. Members combine on the p-value scale, never by raw magnitudes: a
  row's combined p-value is ``min(1, min_j p_j / w_j)`` (weighted Bonferroni, the weights
  of its class from :func:`~poisonguard.detectors.decision.member_weights`: a score member
  that found no cluster in the class keeps a tenth of a share, and so does one made to
  compare the batch with trusted rows where the class's batch rows show no excess over its
  null, :func:`~poisonguard.detectors.decision.excess_over_null`); the cuts read ``-log10`` of that,
  ``L``. The output's ``suspicion`` ranks (:meth:`EnsembleModel.ranking`): the members' ranking p-values
  (the label member's before calibration) combined with a quiet member at a hundredth of a share
  (:func:`~poisonguard.detectors.decision.ranking_weights`), its ties broken by at most ``1e-4`` (the
  members' finer scores, :func:`~poisonguard.detectors.decision.break_ties`).
* **Decisions.** ``contamination="auto"``: Benjamini-Hochberg per class at level
  ``alpha``; a float: that share of all rows by combined suspicion; :meth:`calibrate` on
  trusted reference rows: one cut so that at most ``target_fpr`` of them would be
  flagged. A flagged row's reason names the class, every member whose own p-value
  reached the cut, and what that member says drove the score.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from numbers import Real

import numpy as np

from ..schemas import ConfigError
from ._sklearn import Interval, StrOptions
from .base import BaseDetector, Screened, label_codes
from .decision import (
    DEFAULT_ALPHA,
    LOGP_EDGES,
    SCORE_EDGES,
    TailNull,
    bh_cut,
    break_ties,
    combine_pvalues,
    excess_over_null,
    member_weights,
    ranking_weights,
    to_log_p,
)
from .statistics import Histogram, group_rows
from .thresholds import upper_quantile_threshold


def _engaged_by_evidence(model: EnsembleModel) -> np.ndarray:
    """(K, M) engagement before the null pass: every member is engaged, except a member with its own p-values whose
    model says in which classes it has evidence (``model.evidence``: the pattern detector, in the classes where it
    mined a pattern); elsewhere its p-values are all 1 and a full share would only take budget from the others."""
    engaged = np.ones((len(model.classes), len(model.models)), bool)
    for j, (member, null) in enumerate(zip(model.models, model.nulls)):
        if null is None and hasattr(member, "evidence"):
            engaged[:, j] = member.evidence
    return engaged


#: Pseudo-member indices of the decision layer's own passes.
_NULL, _DECIDE, _REFERENCE_NULL = -1, -2, -3
#: Fewest trusted rows of a class for the null of a detector made to compare with them (novelty) to be fitted on them.
MIN_REFERENCE_ROWS = 50
#: Fewest trusted rows of a class for any other member's null to be fitted on them rather than on the data (without
#: the rows the member's own rule cuts). The tail's shape comes from the class's 75th and 87.5th percentiles, and
#: from a few hundred rows it came out heavy enough to lose backdoors the data's own null finds: credit with 30%
#: held out (about 850 and 360 trusted rows in its two classes), spectral's null shape 0.68 from the trusted rows
#: against 0.22 from the data, and door3 and door10 found at recall 0.00 instead of 1.00 and 0.91.
MIN_REFERENCE_TAIL_ROWS = 1000


@dataclass(frozen=True)
class EnsembleModel:
    """Fitted state of :class:`EnsembleDetector`: the members' models, their nulls and the cuts.

    ``nulls[j]`` is None for a member that gives its own p-values. ``weights`` (K, M) are the
    members' Bonferroni weights per class (None: equal). ``thresholds`` (K,) are cuts on the
    combined suspicion ``L`` per class (``inf``: the class is not cut); ``mode`` says which
    rule set them.
    """

    names: tuple
    models: tuple
    nulls: tuple
    thresholds: np.ndarray
    mode: str = "auto"
    alpha: float = DEFAULT_ALPHA
    null_sources: tuple = ()  # per member, per class: "reference" or "data" (None: the member's own p-values)
    weights: np.ndarray | None = None  # (K, M) Bonferroni weights per class; None: 1 / M each

    @property
    def classes(self) -> tuple:
        return self.models[0].classes

    @property
    def counts(self) -> np.ndarray:
        return self.models[0].counts

    def member_evidence(self, X: np.ndarray, labels: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Each member's score, p-value and ranking p-value per row: its own p-values, or its score under its
        fitted null (then the ranking p-value is the p-value itself).

        A member with p-values of its own gives all three from one evaluation of its model
        (``scores_pvalues_ranking``), so the label detector's classifiers run once per batch.
        """
        codes = label_codes(self.classes, labels)
        scores, pvalues, ranking = [], [], []
        for m, null in zip(self.models, self.nulls):
            if null is None:
                s, p, r = m.scores_pvalues_ranking(X, labels)
            else:
                s = m.suspicion(X, labels)
                p = r = null.pvalues(s, codes)
                if hasattr(m, "pvalue_floor"):
                    p = r = np.maximum(p, m.pvalue_floor(s, codes))
                if hasattr(m, "pvalue_ceiling"):
                    p = r = np.fmin(p, m.pvalue_ceiling(s, codes))
            scores.append(s), pvalues.append(p), ranking.append(r)
        return scores, pvalues, ranking

    def row_weights(self, labels: np.ndarray) -> np.ndarray | None:
        """(N, M) each row's class weights (equal for a class the model has not seen); None for equal weights."""
        if self.weights is None:
            return None
        codes = label_codes(self.classes, labels)
        equal = np.full((1, len(self.models)), 1.0 / len(self.models))
        return np.where((codes >= 0)[:, None], self.weights[np.maximum(codes, 0)] if len(self.classes) else equal, equal)

    def decide(self, pvalues: list[np.ndarray], labels: np.ndarray,
               weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(combined L, cut per row, margin)`` from the members' p-values and the rows' weights
        (:meth:`row_weights`, which the caller computes once per batch); a row is flagged where the margin is
        negative.

        The cut is the class's (Benjamini-Hochberg under "auto"). Under "auto", a member whose p-value is a
        family-wise adjusted p-value of a group of rows (``tests_groups``: the pattern detector's cells) also flags
        its rows at ``p <= alpha * w``, its weighted share of the level: the cell's hypothesis is rejected, and
        with it all its rows. A clean class loses a row that way with probability at most ``alpha * w``. Row by
        row, Benjamini-Hochberg would ask a 60-row cell of an 800-row class for ``p <= alpha * 60 / 800``.
        """
        combined = to_log_p(combine_pvalues(pvalues, weights))
        cuts = self.thresholds_for(labels)
        margin = np.nextafter(cuts, -np.inf) - combined
        if self.mode == "auto":
            for j, member in enumerate(self.models):
                if getattr(member, "tests_groups", False):  # its p-values are NaN for a class it has not seen
                    w = weights[:, j] if weights is not None else 1.0 / len(self.models)
                    margin = np.fmin(margin, np.nextafter(-np.log10(self.alpha * w), -np.inf) - to_log_p(pvalues[j]))
        return combined, cuts, margin

    def combine(self, pvalues: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
        """Combined p-value per row from the members' p-values (weighted Bonferroni)."""
        return combine_pvalues(pvalues, self.row_weights(labels))

    def decision_values(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Combined ``L = -log10 p`` per row (NaN for a class no member knows): what the cuts read."""
        return to_log_p(self.combine(self.member_evidence(X, labels)[1], labels))

    def suspicion(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The output's ``suspicion`` per row (:meth:`ranking`)."""
        scores, pvalues, ranking = self.member_evidence(X, labels)
        return self.ranking(scores, pvalues, ranking, self.row_weights(labels))

    def ranking(self, scores: list[np.ndarray], pvalues: list[np.ndarray], ranking: list[np.ndarray],
                weights: np.ndarray | None) -> np.ndarray:
        """The output's ``suspicion``: the members' ranking p-values (the label member's before calibration) combined
        as the decisions combine their p-values (``L`` of the weighted Bonferroni bound), but with a quiet member's
        share cut to :data:`~poisonguard.detectors.decision.RANKING_QUIET_SHARE`
        (:func:`~poisonguard.detectors.decision.ranking_weights`), and with ties broken by what the members still
        say (:func:`~poisonguard.detectors.decision.break_ties`): a member's own finer score where it has one (the
        label member's ``1 - pi_c``), else one minus its p-value."""
        weights = None if weights is None else ranking_weights(
            weights, np.array([getattr(m, "ranking_share", 1.0) for m in self.models]))
        tie_scores = [m.tie_scores(s, p) if null is None else 1.0 - p
                      for m, null, s, p in zip(self.models, self.nulls, scores, pvalues)]
        return break_ties(to_log_p(combine_pvalues(ranking, weights)), tie_scores, weights)

    def thresholds_for(self, labels: np.ndarray) -> np.ndarray:
        codes = label_codes(self.classes, labels)
        return np.where(codes >= 0, self.thresholds[np.maximum(codes, 0)], np.inf) if len(self.classes) else np.full(len(codes), np.inf)

    def margin(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Negative for flagged rows (:meth:`decide`)."""
        return self.decide(self.member_evidence(X, labels)[1], labels, self.row_weights(labels))[2]

    def with_threshold(self, threshold: float) -> EnsembleModel:
        return replace(self, thresholds=np.full(len(self.classes), float(threshold)), mode="reference")

    def summary(self) -> dict:
        return {name: model.summary() for name, model in zip(self.names, self.models)}

    def decision_summary(self) -> dict:
        """Per class, for the report: each member's null and the cut, and why the class was or was not cut."""
        out = {}
        for k, c in enumerate(self.classes):
            cut = float(self.thresholds[k])
            members = {}
            for j, (name, model, null) in enumerate(zip(self.names, self.models, self.nulls)):
                members[name] = ({"null": "own p-values"} if null is None else
                                 {"null": "generalised Pareto tail", "fitted_on": self.null_sources[j][k] if self.null_sources else "data",
                                  "median": float(null.location[k]), "tail_scale": float(null.scale[k]), "tail_shape": float(null.shape[k])})
                members[name]["weight"] = float(self.weights[k, j]) if self.weights is not None else 1.0 / len(self.names)
                if self.mode == "auto" and getattr(model, "tests_groups", False):  # its cells' own cut (decide)
                    members[name]["group_cut_p"] = self.alpha * members[name]["weight"]
            out[str(c)] = {
                "cut": cut if np.isfinite(cut) else None,
                "cut_p": float(10.0 ** -cut) if np.isfinite(cut) else None,
                "members": members,
            }
        return out


class EnsembleDetector(BaseDetector):
    """Run one or several detectors and decide with the shared decision layer.

    Parameters
    ----------
    detectors : list of BaseDetector, or None, default None
        The members, each configured as wanted; names must be distinct. None: one of each
        registered detector that needs no trusted rows, with default settings.
    contamination : "auto" or float in (0, 0.5], default "auto"
        "auto": Benjamini-Hochberg per class at false-discovery level ``alpha`` on the
        combined p-values; a float: flag that share of all rows by combined suspicion.
    alpha : float in (0, 0.5], default 0.01
        "auto" only: the false-discovery level. A clean class loses nothing with
        probability at least ``1 - alpha``.
    feature_names : sequence of str, or None, default None
        Names of the features, for the reasons of flagged rows (None: ``x[j]``).
    seed : int, default 0
        Unused by the ensemble itself (each member keeps its own seed); kept for the
        common interface.

    Attributes
    ----------
    model_ : EnsembleModel
    classes_ : ndarray of shape (K,)
    thresholds_ : dict
        Cut on the combined suspicion per class (``inf``: the class is not cut).
    """

    name = "ensemble"

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        "detectors": [list, tuple, None],
        "contamination": [StrOptions({"auto"}), Interval(Real, 0.0, 0.5, closed="right")],
        "alpha": [Interval(Real, 0.0, 0.5, closed="right")],
        "feature_names": [list, tuple, None],
    }

    def __init__(self, *, detectors=None, contamination="auto", alpha=DEFAULT_ALPHA, feature_names=None, seed=0):
        self.detectors = detectors
        self.contamination = contamination
        self.alpha = alpha
        self.feature_names = feature_names
        self.seed = seed

    # -- members and their schedule ------------------------------------------------------------
    def members(self) -> list[BaseDetector]:
        if self.detectors is None:
            from . import DETECTORS

            return [cls() for name, cls in DETECTORS.items() if cls is not EnsembleDetector and not cls.requires_reference]
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
        reference passes are shared too. The decision layer's passes come last: the null
        passes (only when a member has no p-values of its own: the trusted rows' scores,
        then the data's) and the cut pass.
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
        if not all(m.has_pvalues for m in members):
            passes.append(("reference", [(_REFERENCE_NULL, 0)]))
            passes.append(("data", [(_NULL, 0)]))
        passes.append(("data", [(_DECIDE, 0)]))
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

    @property
    def requires_reference(self) -> bool:
        return any(m.requires_reference for m in self.members())

    # -- the contract -----------------------------------------------------------------------------
    def initial_state(self, n_features: int):
        self._validate_params()
        members = self.members()
        return {"members": members, "schedule": self.schedule(), "states": [m.initial_state(n_features) for m in members]}

    def batch_statistics(self, stage, state, X, labels, row_ids, into=None):
        out = {} if into is None else into
        for i, member_stage in state["schedule"][stage][1]:
            if i in (_NULL, _DECIDE, _REFERENCE_NULL):
                model: EnsembleModel = state["partial"]
                codes = label_codes(model.classes, labels)
                if i in (_NULL, _REFERENCE_NULL):
                    for j, (name, m, null) in enumerate(zip(model.names, model.models, model.nulls)):
                        if null is None:
                            continue
                        scores = m.suspicion(X, labels)
                        # on the data, rows the member's own rule cuts as an outlying cluster do not shape the null;
                        # trusted rows all do
                        bulk = scores <= m.thresholds_for(labels) if i == _NULL else np.ones(len(scores), bool)
                        source = "null" if i == _NULL else "reference null"
                        for k, rows in group_rows(np.where(bulk, codes, -1)):
                            key = (self.name, (source, j, model.classes[k]))
                            out.setdefault(key, Histogram(SCORE_EDGES)).add_batch(scores[rows])
                else:
                    L = model.decision_values(X, labels)
                    for k, rows in group_rows(codes):
                        key = (self.name, ("cut", model.classes[k]))
                        out.setdefault(key, Histogram(LOGP_EDGES)).add_batch(L[rows])
                continue
            member = state["members"][i]
            part = None if into is None else {k: v for (owner, k), v in into.items() if owner == member.name}
            part = member.batch_statistics(member_stage, state["states"][i], X, labels, row_ids, into=part)
            out.update({(member.name, k): v for k, v in part.items()})
        return out

    def advance(self, stage, state, statistics):
        states = list(state["states"])
        for i, member_stage in state["schedule"][stage][1]:
            if i == _REFERENCE_NULL:
                return {**state, "reference_nulls": statistics}
            if i == _NULL:
                return {**state, "partial": self._fit_nulls(state["partial"], {**state.get("reference_nulls", {}), **statistics})}
            if i == _DECIDE:
                return self._fit_cuts(state["partial"], statistics)
            member = state["members"][i]
            states[i] = member.advance(member_stage, states[i], {k: v for (owner, k), v in statistics.items() if owner == member.name})
        state = {**state, "states": states}
        if state["schedule"][stage + 1][1][0][0] in (_NULL, _DECIDE, _REFERENCE_NULL):  # the members are fitted
            members = state["members"]
            K = len(states[0].classes)
            nulls = tuple(None if m.has_pvalues else TailNull(np.zeros(K), np.ones(K), np.zeros(K)) for m in members)
            partial = EnsembleModel(tuple(m.name for m in members), tuple(states), nulls, np.full(K, np.inf),
                                    mode="auto" if self.contamination == "auto" else "contamination", alpha=float(self.alpha))
            engaged = _engaged_by_evidence(partial)
            # with a null to fit, the null pass sets the weights; otherwise they are settled here
            state["partial"] = partial if engaged.all() or not all(m.has_pvalues for m in members) else \
                replace(partial, weights=member_weights(engaged))
        return state

    def _fit_nulls(self, model: EnsembleModel, statistics: dict) -> EnsembleModel:
        """Each member's null per class: on the class's trusted rows where there are enough, else on the data."""
        empty = Histogram(SCORE_EDGES)
        nulls, sources = [], []
        members = self.members()
        for j, null in enumerate(model.nulls):
            if null is None:
                nulls.append(None), sources.append(None)
                continue
            picked, source = [], []
            enough = MIN_REFERENCE_ROWS if members[j].requires_reference else MIN_REFERENCE_TAIL_ROWS
            for c in model.classes:
                trusted = statistics.get((self.name, ("reference null", j, c)), empty)
                use = trusted.total >= enough
                picked.append(trusted if use else statistics.get((self.name, ("null", j, c)), empty))
                source.append("reference" if use else "data")
            # dense counts one class at a time: thousands of classes never hold their grids all at once
            interpolate = members[j].null_quantiles == "interpolated"
            nulls.append(TailNull.fit((h.counts for h in picked), interpolate=interpolate)), sources.append(tuple(source))
        # engaged: own p-values; a detector made to compare the batch with trusted rows, where the class's batch
        # rows exceed the null (a class with no new rows leaves the budget to the others); a cluster cut by the
        # member's own rule
        engaged = _engaged_by_evidence(model)
        for j, (detector, member, null) in enumerate(zip(members, model.models, nulls)):
            if null is None:
                continue
            if detector.requires_reference:
                engaged[:, j] = [excess_over_null(statistics.get((self.name, ("null", j, c)), empty).counts, null, k)
                                 for k, c in enumerate(model.classes)]
            else:
                engaged[:, j] = np.isfinite(np.asarray(member.thresholds, float))
        return replace(model, nulls=tuple(nulls), null_sources=tuple(sources), weights=member_weights(engaged))

    def _fit_cuts(self, model: EnsembleModel, statistics: dict) -> EnsembleModel:
        empty = Histogram(LOGP_EDGES)
        hists = [statistics.get((self.name, ("cut", c)), empty) for c in model.classes]
        if self.contamination == "auto":
            cuts = np.array([bh_cut(h.counts, float(self.alpha)) for h in hists], dtype=float)
        else:
            total = Histogram(LOGP_EDGES)
            for h in hists:
                total.merge(h)
            cuts = np.full(len(model.classes), upper_quantile_threshold(LOGP_EDGES, total.counts, self.contamination))
        return replace(model, thresholds=cuts)

    def _set_model(self, model) -> None:
        self.model_ = model
        self.classes_ = np.asarray(model.classes, dtype=object)
        self.thresholds_ = dict(zip(model.classes, model.thresholds.tolist()))

    # -- scoring ----------------------------------------------------------------------------------
    def screen(self, model: EnsembleModel, X: np.ndarray, labels: np.ndarray) -> Screened:
        scores, pvalues, ranking = model.member_evidence(X, labels)
        weights = model.row_weights(labels)
        combined, cuts, margin = model.decide(pvalues, labels, weights)
        flagged = margin < 0
        reasons = np.full(len(X), None, dtype=object)
        rows = np.flatnonzero(flagged)
        if len(rows):
            M = len(model.models)
            w = np.full((len(rows), M), 1.0 / M) if weights is None else weights[rows]
            member_L = [to_log_p(np.minimum(1.0, p[rows] / w[:, j])) for j, p in enumerate(pvalues)]
            names = self.feature_names
            explain = [m.explain(X[rows], labels[rows], names) if hasattr(m, "explain") else None for m in model.models]
            rule = {"auto": "Benjamini-Hochberg", "contamination": "contamination", "reference": "reference"}[model.mode]
            for n, i in enumerate(rows):
                by_cut = combined[i] >= cuts[i]
                parts = []
                for j in np.argsort([-L[n] for L in member_L]):
                    if (member_L[j][n] >= cuts[i] if by_cut else member_L[j][n] >= -np.log10(model.alpha)) or not parts:
                        why = "" if explain[j] is None or explain[j][n] is None else f" ({explain[j][n]})"
                        parts.append(f"{model.names[j]}: p={pvalues[j][i]:.2g}{why}")
                cut = f"{rule} cut p <= {10.0 ** -cuts[i]:.2g}" if by_cut else \
                    f"family-wise cut of a group of rows p <= {model.alpha:.2g} x weight"
                reasons[i] = f"class {str(labels[i])!r}: " + "; ".join(parts) + f" [{cut}]"
        return Screened(dict(zip(model.names, scores)), model.ranking(scores, pvalues, ranking, weights), flagged, reasons)
