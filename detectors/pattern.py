"""Trigger-pattern mining: per class, pairs of feature values that carry a label their own values do not.

Notation: S sample rows, d features, K classes. For a pair of features (a, b), a *cell* is a
range of a's codes by a range of b's codes; ``k`` is the cell's rows of class c, ``O`` all
its rows, ``E`` the rows it would hold by chance (step 2).

A tabular backdoor stamps two features with fixed values and gives the stamped rows the
target label: ``amount = 950 and n_items = 12``, all of class "fraud". Spectral methods see
this only as a direction in feature space; here it is mined as a rule an analyst can read:

1. **Codes.** Each feature is coded on a bounded, hash-selected sample: every value held by
   at least 0.2% of the sample rows is a point of its own (a censoring value, an integer
   code); a narrow bump, as many rows within a tenth of the inter-quartile range and four
   times as many as either flank as wide holds, is an interval of its own (a stamp jittered
   around its value: quantile edges would cut it in pieces); the rest is cut at 64 quantiles
   (edges closer than 5% of the inter-quartile range merged). Code ``2i`` is the open interval below breakpoint ``i``, code ``2i + 1``
   the breakpoint itself; a missing value has no code. A *unit* is one code, or two
   adjacent intervals with the point between them, so a trigger jittered across an edge
   still falls in one unit. A bump that holds point masses also has a *hollow* unit: its
   intervals without them. A stamp jittered around a value the feature often holds (an
   integer code) lies on both sides of a point that thousands of clean rows hold, and a wider
   jitter (flights' air time, in whole minutes) over several of them. (Hollow units around
   every point mass also let natural tails through, such as diamonds' ``depth < 58.4 and
   depth != 58.2``, all of cut Fair.)
2. **Candidates.** For every pair of features, every unit cell and class c with
   ``k >= max(10, 0.1% of S)``: purity ``k / O >= min_purity`` (0.8 by default, at its 90% lower
   confidence bound: a natural cell at the bar would pass or fail with the sample; a stamp on
   values that clean rows of other classes also hold is diluted by them), lift ``O / E >= min_lift``
   against two nulls (``E = n_a n_b / S`` from the units' row counts if a and b were independent,
   and the cell's mass under a Gaussian copula of a and b fitted on the other classes' rows: a
   flight's distance nearly fixes its air time, so every cell along their curve is over-represented
   against independence alone; a cell that holds 90% of its smaller unit's rows needs a lift of
   only 1.5, for its larger unit may hold too many rows for ``min_lift``: credit's ``Time = 60``,
   46% of the rows, caps any cell's lift at 2.2), and a spike: ``O`` at least
   ``min_spike`` times the rows of other classes in any cell within two codes of it on both
   features. Real interactions are smooth over neighbouring values; a stamp is a point (and
   a jittered stamp's neighbouring cells hold its own class).
3. **The label test.** A value that merely predicts the label (a censoring code, a rare
   category) must not count. The cell's class-c count is compared with the share of c among
   the rows that hold the cell's value of a but not of b, and of b but not of a (the unit's
   rows outside the cell, widened to adjacent codes until there are 20), each shrunk towards
   the class's share by 10 rows: ``p0 = max(class share, both context shares)``, and the
   cell's p-value is the binomial tail of ``k`` of ``O`` at ``p0``. A candidate goes on at
   ``p <= significance``, and is kept at ``p <= significance / T`` (after step 4), Bonferroni
   over the ``T`` cells tested (those with at least the minimum count).
4. **The rest of the row.** A dirty-label backdoor relabels rows of another class. Per
   candidate, each row of its class gets a naive-Bayes margin over its *other* features (their
   codes' class frequencies in the sample): its log-likelihood under c less the largest under
   another class. The pattern stays only if its rows' margins are significantly lower than the
   class's other rows' (one-sided Mann-Whitney, ``p <= 1e-2``; a sign count, as this step first
   was, loses the relabelled rows of a class that the features only partly tell apart from c,
   and at ``1e-3`` loans' grades, which the features barely tell apart, kept a stamp on 1% of
   the rows out at p = 0.007). In a cell at least twice ``min_lift`` over what chance
   predicts, this p-value also joins step 3's (Fisher's combination, where it is the smaller;
   :func:`with_rest_of_row`): a stamp on a value that already predicts its target class (cells'
   jdoor3: 60 rows at a context share of 0.88, p = 4e-4 against a Bonferroni level of 2e-8), or
   on only 20 rows (cells' door1: p = 4e-5), shows little in the label, but its rows' other
   features point to their true class at p = 1e-7 to 1e-25. The natural cells that the rest of
   the row also sets apart sit at the lift bar (loans' payments by interest, lift 3.0-3.1),
   where the two stay apart. An *exclusive* cell, one that holds every sample row with either of
   its two values, passes this step at ``p <= 5e-2``: a stamp on values that no clean row holds.
   In a 70% sample of loans, 53 grade-B rows stamped and relabelled C reach only p = 0.019 (the
   features barely tell B from C; flights' natural cells reach 0.010-0.050 too, but none is
   exclusive). The only natural exclusive cells of the field test's batches are loans'
   amortisation schedules (11 grade-A loans of one amount at the same payment: 0.006-0.95 here),
   and their label test stays 50 times short of its Bonferroni level.
5. **Natural subgroups.** A flight number and a distance name a route, and a route leaves
   from one airport: such a pair is as pure, as over-represented and as much of a spike as a
   trigger. But its rows are a few recurring entities (the same flights every day), while a
   stamp lands on ordinary rows. Two agreements on the other features tell them apart: the
   mean, over the features, of the share of the rows on the feature's most common code; and
   the mean, over at most 200 of the rows (seeded), of the share of the features on which
   the row's nearest neighbour among them has its codes (a flight's row finds the same flight
   on another day). The pattern is dropped as a natural subgroup when either agreement
   exceeds that of random sets of as many rows of any one class, by at least 0.015 (0.05 for
   neighbours) and three standard deviations of those sets (20 seeded draws per class). The
   first alone let ``4115 < flight < 4490 and minute = 3`` through (69 sample rows, all
   EWR, of 26 flights seen on many days: 0.109 against 0.088), which the second puts at
   0.572 against 0.280; planted triggers lie at or below their random sets on the second
   (field test, seed 0). The second alone lets through cells beside a stamp that the first
   drops (a window around flights door1's stamp: 0.30% of the clean rows), hence both.
   Last, a pattern whose cell overlaps the cells of stronger patterns of its class is judged again on the rows
   beyond them (:func:`beyond_stronger`): a wider cell around a stamp holds the stamp's rows and passes step 3 on
   them alone (flights door1 in the 70% batch: three such cells, 37 clean rows).
6. **Reference.** With trusted rows, a pattern whose cell the trusted rows hold at its
   purity is not new: the upper 99% confidence bound of the class's share among the
   trusted rows in the cell joins ``p0`` and the label test is made again, alone (trusted
   rows of the class in the cell say that such rows' other features are the class's too).
   A pattern the trusted rows of its class hold significantly less often than the batch's
   rows of its class do (binomial, ``p <= 1e-3``) is new whatever that share, and keeps its
   p-value: one trusted row in a cell bounds the share only at 0.99.

   A kept pattern's cell also **grows** against the trusted rows. A stamp jittered across a
   quantile edge leaves part of its rows beyond the cell, where the class also has natural
   rows: flights' jdoor3 stamps ``flight`` near its 1st percentile (3) with a spread of 60,
   and the cell mined is ``flight < 3 and 358 < air_time``; next to it lie 171 stamped rows and
   20 clean JFK rows (long flights with low numbers), too few over chance for the lift bar
   (1.6 against 3). Along each of its two features, each way, the cell grows by steps of two
   codes (the point past its edge and the interval beyond), the other feature's range kept, at
   most :data:`MAX_GROWTH_STEPS` steps; a step is kept, as a pattern of its own, where the test
   of step 7 passes (the batch sample's rows of the class in it against the trusted rows',
   Bonferroni over ``T`` and the steps tested; the rows beyond the trusted share at least
   ``min_purity`` of its rows) and every step before it on the same way was kept. With 30%
   of each table held out as trusted rows, only the jittered stamps grow: flights jdoor3 by
   ``3 <= flight < 15`` (140 of 141 sample rows JFK, 8 of 10,209 trusted JFK rows there),
   which takes the default screen from recall 0.897 to 0.911 at 20 more clean rows, and
   diamonds' and loans' by cells already flagged; no other batch of the field test's six
   tables grows a cell (benchmarks/README.md, "A stamp's cell grows against the trusted rows").

7. **New values.** With trusted rows, one feature's value can be new in a class without a second
   feature to pair it with: an attack that stamps a value other rows of the class also hold
   (caravan's customer subtype 41 with ``MGODRK = 0``, a value 60% of the rows hold: the pair
   is too common for any lift, and the subtype alone is a value that merely predicts the
   label). Per class and unit of one feature (a code, or a window of three), the batch sample's
   rows of the class in the unit are compared with the trusted rows' (one-sided Fisher exact
   test), both counted outside the cells of the class's patterns (the rows those already
   explain). A unit is kept where its adjusted p-value (``T + U`` times its own, ``U`` the units
   tested) is at most ``significance`` and the rows beyond what the trusted share predicts are
   at least ``min_purity`` of its rows, with the trusted share at its 90% upper confidence bound:
   flagging them all then loses few clean rows. Such a unit is a pattern whose two features are
   the same. Without trusted rows nothing says what a value's share should be, and no unit is
   tested. Measured on the field test's 70% batches with their 30% trusted: caravan door10
   (409 rows relabelled No -> Yes at subtype 41, which 0 of 105 trusted Yes rows hold) is found
   with 5 clean rows; flights' flips, targeted flips and copies find rows whose distance or
   flight number their new class never has, with at most 3 clean rows; no other batch of the
   six tables keeps a unit.

A row's p-value is the smallest Bonferroni-adjusted p-value (``T`` times the cell's) among
the patterns of its class that it carries, 1 when it carries none: for a clean class, the
chance that any of its rows gets ``p <= t`` is at most ``t`` under the binomial null (``T``
counts the cells tested per class, and the decision layer decides per class). Its suspicion
is ``-log10`` of that p-value. The decision layer (:mod:`~poisonguard.detectors.decision`)
takes these p-values as they are; in an ensemble, the pattern member takes a full share of
the false-discovery budget only in the classes where it mined a pattern.

Measured in memory on the field test's tables (``benchmarks/README.md``, Trigger
patterns; clean, door1, door3, door10 and jdoor3, seeds 0-2): with steps 1-3 alone (a
prototype, lift 4), 4.4% of the clean flights rows and 1.5% of the clean loans rows were
flagged (natural interactions); with step 4, 3.0% and 0%; with step 5, 0% on every clean
table. A lift of 4 found 49 of the 72 planted backdoors at recall and precision 0.95, 3 found
52 with no clean row lost, 2 let loans' natural patterns in (1.2% of the clean rows of the
poisoned batches). Step 5's random sets first included other patterns' rows, and a trigger on
10% of flights made its class's rows agree enough to hide natural routes beside it (1.8% of
clean rows flagged); leaving them out, 55 of 72 are found and no batch loses more than 0.13%
of its clean rows. Bumps raised that to 57 (jittered stamps in credit and caravan), with no
clean row lost. Windows three intervals wide would catch more jittered triggers but let
flights' natural route cells (a distance by a range of air times) through step 5.

Memory: the sample (S rows) and, one pair of features at a time, a table of its unit cells
by at most 8 classes; the features' code counts for at most 100 classes (the largest with
enough sample rows; in the others nothing is mined). The model is the breakpoints, at most
``max_patterns`` patterns, and step 7's units: those with at least the minimum count of a
class, at most ``3 S / max(10, S / 1000)`` per feature; and step 6's growth steps, at most
``4 MAX_GROWTH_STEPS`` a pattern. Passes: 1 (the sample), and one over the trusted rows when
given. Scoring is a numba kernel over the row's codes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from numbers import Integral, Real

import numpy as np
from scipy.stats import beta, binom, hypergeom, mannwhitneyu, multivariate_normal, norm

from ._config import njit
from ._sklearn import Interval
from .base import SAMPLE_POOL, BaseDetector, OwnPValueModel, add_stratified_sample, class_floors, label_codes
from .label import class_groups

#: Share of the sample rows a value must hold to be a point of its own (step 1).
MASS_SHARE = 0.002
#: Quantile edges closer than this share of the inter-quartile range are merged (step 1).
MERGE_IQR = 0.05
#: A bump (step 1): at least as many values as a point mass within this share of the inter-quartile range ...
BUMP_WIDTH = 0.1
#: ... this many times as many as in either flank as wide ...
BUMP_RATIO = 4.0
#: ... and at most this many per feature.
MAX_BUMPS = 4
#: Codes a window unit spans: two intervals and the point between them (step 1; see the module docstring on wider ones).
WINDOW_SPANS = (3,)
#: Codes on each side of a cell that its spike is compared with (step 2).
NEIGHBOURHOOD = 2
#: Rows outside a cell that a context share needs before it stops widening (step 3).
MIN_CONTEXT_ROWS = 20
#: Rows of the class's share that a context share is shrunk towards it by (step 3).
SHRINK_ROWS = 10.0
#: Most classes mined (the largest; the rest share one group in which nothing is mined; one more where that
#: group would be empty, as in :func:`~.label.class_groups`) ...
MAX_MINED_CLASSES = 100
#: ... and how many of them one pair's class table holds at a time.
CLASS_CHUNK = 8
#: A cell's purity must hold at this one-sided confidence: its Clopper-Pearson lower bound at this error is compared
#: with ``min_purity`` (step 2; a natural cell at the bar passes or fails with the sample).
PURITY_ERROR = 0.1
#: Step 2: a cell that holds at least this share of the rows of its smaller unit needs only ...
SATURATED_SHARE = 0.9
#: ... this lift, for its larger unit may be too common for ``min_lift`` (credit's ``Time = 60``: 46% of the rows).
SATURATED_LIFT = 1.5
#: Significance of the rest-of-the-row test (step 4) ...
REST_SIGNIFICANCE = 1e-2
#: ... and for an exclusive cell, one that holds every sample row with either of its two values (a stamp on values no
#: clean row holds; step 4).
EXCLUSIVE_REST_SIGNIFICANCE = 5e-2
#: Step 4's p-value joins step 3's (Fisher) only in cells this many times over ``min_lift``: natural interactions that
#: the rest of the row also sets apart sit at the lift bar (loans' payments, 3.0-3.1), planted stamps far above it.
REST_LIFT = 2.0
#: Confidence of the upper bound on a pattern's class share among the trusted rows (step 6).
TRUSTED_CONFIDENCE = 0.99
#: Step 6: a pattern is new where its class's trusted rows hold it less often than the batch's, at this significance.
TRUSTED_RATE_SIGNIFICANCE = 1e-3
#: Step 6: steps of two codes (a point and the interval beyond it) a kept pattern's cell may grow by along each feature,
#: each way, against the trusted rows.
MAX_GROWTH_STEPS = 4
#: Step 5: how much more a natural subgroup's rows agree than random rows do, on their features' most common codes
#: and with their nearest neighbours ...
SUBGROUP_AGREEMENT = np.array([0.015, 0.05])
#: ... measured against this many random draws ...
SUBGROUP_DRAWS = 20
#: ... of at most this many rows (a cell's rows too: a seeded choice of them).
SUBGROUP_ROWS = 200


def breakpoints(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted breakpoints of one feature from its sample values (step 1): point masses, the edges of narrow bumps,
    and merged quantiles; and the hollow units' code ranges ``(H, 2)``: the intervals of each bump that holds
    point masses, without them (step 1)."""
    v = values[~np.isnan(values)]
    if len(v) == 0:
        return np.empty(0), np.empty((0, 2), dtype=np.int64)
    u, counts = np.unique(v, return_counts=True)
    floor = max(5.0, MASS_SHARE * len(v))
    masses = u[counts >= floor]
    q1, q3 = np.quantile(v, [0.25, 0.75])
    scale = (q3 - q1) if q3 > q1 else (v.max() - v.min()) / 4.0 or 1.0
    rest = np.sort(v[~np.isin(v, masses)])
    edges = _bump_edges(rest, BUMP_WIDTH * scale, max(10.0, floor))
    kept: list[float] = []
    for edge in np.unique(np.quantile(v, np.linspace(0.0, 1.0, bins + 1)[1:-1])):
        inside = any(lo - MERGE_IQR * scale < edge < hi + MERGE_IQR * scale for lo, hi in edges)
        if not inside and (not kept or edge - kept[-1] >= MERGE_IQR * scale):
            kept.append(float(edge))
    points = np.unique(np.r_[np.asarray(kept, float), masses, np.asarray(edges, float).ravel()])
    # code 2i is the interval below point i: a bump from point i to point j holds intervals 2i + 2 .. 2j
    hollow = [(2 * i + 2, 2 * j) for i, j in np.searchsorted(points, np.asarray(edges, float).reshape(-1, 2)) if j - i > 1]
    return points, np.asarray(hollow, dtype=np.int64).reshape(-1, 2)


def _bump_edges(s: np.ndarray, width: float, min_rows: float) -> list:
    """``(lo, hi)`` around each narrow bump of the sorted values ``s``: at least ``min_rows`` values within ``width``,
    :data:`BUMP_RATIO` times as many as in either flank as wide. A jittered stamp is such a bump; quantile edges
    would cut it in pieces, so it becomes one interval, as a point mass is one point."""
    out: list = []
    if len(s) < min_rows or width <= 0:
        return out
    end = np.searchsorted(s, s + width, side="right")
    n = end - np.arange(len(s))
    left = np.arange(len(s)) - np.searchsorted(s, s - width, side="left")
    right = np.searchsorted(s, s + 2 * width, side="right") - end
    ok = (n >= min_rows) & (n >= BUMP_RATIO * np.maximum(np.maximum(left, right), 1))
    for i in np.flatnonzero(ok)[np.argsort(-n[ok], kind="stable")]:
        # a quarter of the width beyond the window's first and last value, for the stamp's jitter tails
        lo, hi = s[i] - width / 4, s[end[i] - 1] + width / 4
        if all(hi < a or lo > b for a, b in out):
            out.append((float(lo), float(hi)))
            if len(out) == MAX_BUMPS:
                break
    return out


def value_codes(x: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Code of each value: ``2i`` below breakpoint ``i`` (above ``i - 1``), ``2i + 1`` on it; -1 for a missing value."""
    i = np.searchsorted(points, x, side="left")
    hit = (i < len(points)) & (points[np.minimum(i, max(len(points) - 1, 0))] == x) if len(points) else np.zeros(len(x), bool)
    return np.where(np.isnan(x), -1, 2 * i + hit).astype(np.int64)


def unit_ranges(n_codes: int, hollow: np.ndarray = np.empty((0, 2), dtype=np.int64)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lo, hi, hollow)`` code ranges of the units: each code alone, then a window of :data:`WINDOW_SPANS` codes
    (two intervals and the point between them) starting at each interval, then the hollow units of
    :func:`breakpoints` (a hollow unit holds only the intervals, the even codes, of its range)."""
    lo, hi = [np.arange(n_codes)], [np.arange(n_codes)]
    for span in WINDOW_SPANS:
        starts = np.arange(0, n_codes - span + 1, 2)
        lo.append(starts), hi.append(starts + span - 1)
    lo.append(hollow[:, 0]), hi.append(hollow[:, 1])
    is_hollow = np.zeros(sum(len(x) for x in lo), bool)
    is_hollow[len(is_hollow) - len(hollow):] = True
    return np.concatenate(lo), np.concatenate(hi), is_hollow


def _unit_sums(T: np.ndarray, axis: int, hollow: np.ndarray = np.empty((0, 2), dtype=np.int64)) -> np.ndarray:
    """``T`` summed over each unit along ``axis`` (:func:`unit_ranges` order)."""
    T = np.moveaxis(T, axis, 0)
    cumulative = np.concatenate([np.zeros((1, *T.shape[1:])), np.cumsum(T, axis=0)])
    parts = [T]
    for span in WINDOW_SPANS:
        starts = np.arange(0, len(T) - span + 1, 2)
        parts.append(cumulative[starts + span] - cumulative[starts])
    even = (np.arange(len(T)) % 2 == 0).reshape(-1, *[1] * (T.ndim - 1))
    intervals = np.concatenate([np.zeros((1, *T.shape[1:])), np.cumsum(T * even, axis=0)])
    parts.append(intervals[hollow[:, 1] + 1] - intervals[hollow[:, 0]])
    return np.moveaxis(np.concatenate(parts), 0, axis)


def in_unit(code: np.ndarray, lo, hi, hollow) -> np.ndarray:
    """Whether each code lies in the unit ``lo..hi`` (only its intervals, the even codes, where ``hollow``)."""
    return (code >= lo) & (code <= hi) & ~(hollow & (code % 2 == 1))


def _context(marginal: np.ndarray, lo: int, hi: int, O: float, k: float, c: int) -> tuple[float, float]:
    """Class-c rows and all rows of a unit outside the cell, widened by two codes at a time until there are enough."""
    for w in (0, 2, 4):
        total = marginal[max(0, lo - w): hi + w + 1].sum(axis=0)
        outside = total.sum() - O
        if outside >= MIN_CONTEXT_ROWS:
            break
    return total[c] - k, max(outside, 0.0)


def shrunk_share(k: float, n: float, prior: float) -> float:
    return (k + SHRINK_ROWS * prior) / (n + SHRINK_ROWS)


def mine_patterns(codes: np.ndarray, y: np.ndarray, K: int, n_codes: list, hollow: list, params) -> tuple[list, int]:
    """Steps 2-5 on the coded sample ``codes`` (S, d) with class indices ``y``: the patterns kept, and ``T``.

    ``n_codes`` and ``hollow`` are per feature: its number of codes, and its hollow units (:func:`breakpoints`).
    ``params`` has ``min_purity``, ``min_lift``, ``min_spike``, ``significance`` and ``seed``. Each
    pattern is a dict: features ``a`` < ``b``, code ranges ``lo_a``..``hi_a`` and ``lo_b``..``hi_b``,
    class ``c`` (an index into the K classes), whether each range is hollow (``hollow_a``, ``hollow_b``),
    counts ``k`` and ``O``, ``E``, the tested share ``p0`` and the unadjusted ``pvalue``. The statistics are per
    mining group (:func:`~.label.class_groups`), and a pair's class table holds :data:`CLASS_CHUNK` groups at a
    time, so memory does not grow with K.
    """
    S, d = codes.shape
    if K < 2 or S == 0:
        return [], 0
    min_rows = max(10.0, 0.001 * S)
    # at most MAX_MINED_CLASSES classes with enough sample rows get a group of their own; the rest share one in
    # which nothing is mined (a class with fewer sample rows than a pattern needs cannot hold one)
    group, mined = class_groups(np.bincount(y, minlength=K), MAX_MINED_CLASSES + 1, min_rows)
    g = group[y]
    G = int(g.max()) + 1
    prior = np.bincount(g, minlength=G) / S
    marginals = []
    for j in range(d):
        ok = codes[:, j] >= 0
        marginals.append(np.bincount(codes[ok, j] * G + g[ok], minlength=n_codes[j] * G).reshape(n_codes[j], G).astype(float))
    units = [unit_ranges(n, h) for n, h in zip(n_codes, hollow)]
    found, n_tests = [], 0
    for a in range(d):
        for b in range(a + 1, d):
            ok = (codes[:, a] >= 0) & (codes[:, b] >= 0)
            if not ok.any():
                continue
            na, nb = n_codes[a], n_codes[b]
            cell_of, g_ok = codes[ok, a] * nb + codes[ok, b], g[ok]
            total = np.bincount(cell_of, minlength=na * nb).reshape(na, nb).astype(float)
            ia, ib = hollow[a], hollow[b]
            O = _unit_sums(_unit_sums(total, 0, ia), 1, ib)
            tested = O >= min_rows
            n_tests += int(np.count_nonzero(tested))
            ua, ub = _unit_sums(total.sum(axis=1), 0, ia), _unit_sums(total.sum(axis=0), 0, ib)
            E = np.outer(ua, ub) / total.sum()
            # each cell's lift bar: lower where it holds nearly all of its smaller unit (the larger may be too common)
            bar = np.where(O >= SATURATED_SHARE * np.minimum.outer(ua, ub), min(SATURATED_LIFT, params.min_lift), params.min_lift)
            over = tested & (O >= bar * E)
            pair = _PairDependence(codes, g, a, b, ok, total) if over.any() else None
            for c0 in range(0, len(mined) if over.any() else 0, CLASS_CHUNK):
                width = min(CLASS_CHUNK, len(mined) - c0)
                chunk = (g_ok >= c0) & (g_ok < c0 + width)
                T = np.bincount(cell_of[chunk] * width + (g_ok[chunk] - c0), minlength=na * nb * width).reshape(na, nb, width)
                cells = _unit_sums(_unit_sums(T.astype(float), 0, ia), 1, ib)
                candidate = (cells >= min_rows) & (cells >= params.min_purity * O[..., None]) & over[..., None]
                for x, z, w in zip(*np.nonzero(candidate)):
                    c = c0 + int(w)
                    (la, ha, wa), (lb, hb, wb) = (u[x] for u in units[a]), (u[z] for u in units[b])
                    ra, rb = max(0, la - NEIGHBOURHOOD), max(0, lb - NEIGHBOURHOOD)
                    near = (slice(ra, ha + NEIGHBOURHOOD + 1), slice(rb, hb + NEIGHBOURHOOD + 1))
                    around = total[near] - T[near][..., w]
                    around[la - ra: ha - ra + 1, lb - rb: hb - rb + 1] = 0.0  # a hollow unit's points too
                    if O[x, z] < params.min_spike * max(1.0, around.max()):
                        continue
                    k, o = cells[x, z, w], O[x, z]
                    if beta.ppf(PURITY_ERROR, k, o - k + 1) < params.min_purity:
                        continue
                    expected = max(E[x, z], pair.expected(c, (la, ha, wa), (lb, hb, wb)))
                    if o < bar[x, z] * expected:
                        continue
                    shares = [shrunk_share(*_context(marginals[j], lo, hi, o, k, c), prior[c]) for j, lo, hi in ((a, la, ha), (b, lb, hb))]
                    p0 = min(max(prior[c], *shares), 1.0 - 1e-12)
                    found.append({"a": a, "b": b, "lo_a": la, "hi_a": ha, "lo_b": lb, "hi_b": hb, "hollow_a": wa, "hollow_b": wb,
                                  "c": c, "k": k, "O": o, "E": expected, "p0": p0, "pvalue": float(binom.sf(k - 1, o, p0)),
                                  "exclusive": bool(o >= ua[x] and o >= ub[z])})
    level = params.significance / max(n_tests, 1)
    rest = _RestOfRow(codes, g, marginals)
    kept = []
    for f in found:  # steps 3 and 4 (in pair order: _RestOfRow keeps the last pair's margins)
        if f["pvalue"] > params.significance:
            continue
        q = rest.pvalue(f)
        if q > (EXCLUSIVE_REST_SIGNIFICANCE if f["exclusive"] else REST_SIGNIFICANCE):
            continue
        f["rest"] = q if f["O"] >= REST_LIFT * params.min_lift * f["E"] else 1.0
        f["pvalue"] = float(with_rest_of_row(f["pvalue"], f["rest"]))
        if f["pvalue"] <= level:
            kept.append(f)
    found = kept
    # the random sets of step 5 leave out every remaining pattern's rows: a large trigger's stamped values would
    # make its class's rows look as agreeing as a natural subgroup's
    cells = [in_cell(codes, f) for f in found]
    patterned = np.logical_or.reduce(cells) if cells else np.zeros(len(y), bool)
    rng = np.random.default_rng(params.seed)
    natural = [natural_subgroup(codes, g, f, cell, patterned, rng) for f, cell in zip(found, cells)]
    found, cells = ([x for x, drop in zip(xs, natural) if not drop] for xs in (found, cells))
    return [{**f, "c": int(mined[f["c"]])} for f in beyond_stronger(g, found, cells, level)], n_tests


def beyond_stronger(g: np.ndarray, found: list, cells: list, level: float) -> list:
    """Step 5, last: a pattern whose cell overlaps the cells of stronger patterns of its class (smaller p-value) is
    tested again on the rows beyond them, step 3's label test at its own ``p0`` and the Bonferroni ``level``; it is
    kept only if that passes, with the larger of the two p-values. The stronger cells already explain their rows,
    and a wider cell around a stamp otherwise passes on the stamp's rows alone: flights door1's stamp in the 70%
    batch, ``sched_arr_time = 2353 and arr_delay = -44`` (514 sample rows, all JFK), lies inside
    ``2300 < sched_arr_time < 2359 and arr_delay < -41``, 540 JFK rows of 555 but 26 of the 41 beyond the stamp;
    with two more such cells it flagged 37 clean rows. A jittered stamp's spill beyond its mined cell is its
    class's still, and passes. ``cells``: each pattern's sample rows (:func:`in_cell`). Patterns keep their order."""
    found, keep, explained = list(found), [], {}
    for i in sorted(range(len(found)), key=lambda i: found[i]["pvalue"]):  # stable: ties keep their order
        f, cell = found[i], cells[i]
        stronger = explained.get(f["c"])
        if stronger is not None and (cell & stronger).any():
            rest = cell & ~stronger
            o, k = int(rest.sum()), int((rest & (g == f["c"])).sum())
            p = float(binom.sf(k - 1, o, f["p0"])) if o else 1.0
            if p > level:
                continue
            found[i] = {**f, "pvalue": max(f["pvalue"], p)}
        keep.append(i)
        explained[f["c"]] = cell if stronger is None else cell | stronger
    return [found[i] for i in sorted(keep)]


class _PairDependence:
    """Step 2's dependence-aware expected count of a pair's cells: a Gaussian copula of the two features.

    Independence is the wrong null for two features one of which nearly determines the other (a flight's distance
    and its air time): every cell along their curve is over-represented against it. The copula's correlation is
    the Pearson correlation of the codes' normal scores (mid-rank, so ties stay ties), estimated on the sample rows
    of the *other* classes, which a dirty-label trigger leaves alone; a cell's expected count is the bivariate
    normal mass of its two units' quantile ranges. The candidate must be over-represented against both nulls.
    """

    def __init__(self, codes: np.ndarray, g: np.ndarray, a: int, b: int, ok: np.ndarray, total: np.ndarray):
        self.n = total.sum()
        cum_a = np.r_[0.0, np.cumsum(total.sum(axis=1))] / self.n
        cum_b = np.r_[0.0, np.cumsum(total.sum(axis=0))] / self.n
        # each code's lower edge in normal scores (code i spans edges i..i + 1), once for every cell of the pair
        self.edges_a = np.clip(norm.ppf(np.clip(cum_a, 0.0, 1.0)), -9.0, 9.0)
        self.edges_b = np.clip(norm.ppf(np.clip(cum_b, 0.0, 1.0)), -9.0, 9.0)
        self.za = norm.ppf((cum_a[:-1] + cum_a[1:]) / 2)[codes[ok, a]]
        self.zb = norm.ppf((cum_b[:-1] + cum_b[1:]) / 2)[codes[ok, b]]
        self.g = g[ok]
        self._copulas: dict = {}

    def rho(self, c: int) -> float:
        """The copula's correlation for class ``c``'s cells: the normal scores' on the other classes' rows."""
        other = self.g != c
        za, zb = self.za[other], self.zb[other]
        r = 0.0
        if len(za) >= MIN_CONTEXT_ROWS and za.std() > 0 and zb.std() > 0:
            r = float(np.corrcoef(za, zb)[0, 1])
        return float(np.clip(r, -0.999, 0.999))

    def expected(self, c: int, unit_a: tuple, unit_b: tuple) -> float:
        """Rows expected in the cell of units ``(lo, hi, hollow)`` of a and of b for class ``c``."""
        if c not in self._copulas:
            r = self.rho(c)
            # seeded: scipy's integration may draw points, and must not touch the global random state
            self._copulas[c] = multivariate_normal(mean=[0.0, 0.0], cov=[[1.0, r], [r, 1.0]], abseps=1e-8, seed=0)
        copula = self._copulas[c]
        mass = 0.0
        for la, ha in _pieces(*unit_a):
            for lb, hb in _pieces(*unit_b):
                upper, lower = [self.edges_a[ha + 1], self.edges_b[hb + 1]], [self.edges_a[la], self.edges_b[lb]]
                mass += float(copula.cdf(upper, lower_limit=lower))
        return mass * self.n


def _pieces(lo: int, hi: int, hollow: bool) -> tuple:
    """The contiguous code ranges of a unit: a hollow one is its intervals, one by one."""
    return tuple((c, c) for c in range(lo, hi + 1, 2)) if hollow else ((lo, hi),)


def unit_table(codes: np.ndarray, y: np.ndarray, K: int, n_codes: list, patterns: list) -> dict:
    """Step 7's batch side: per feature, unit (a code or a window, :func:`unit_ranges` without hollow units) and class
    with at least the minimum count of sample rows, its rows of the class (``rows``), the class's rows with a value of
    the feature (``class_rows``) and its rows of any class (``cell_rows``); rows in a cell of their class's patterns
    left out. Classes as in :func:`mine_patterns`: at most :data:`MAX_MINED_CLASSES`, the largest with enough rows."""
    S = len(y)
    keys = ("feature", "lo", "hi", "class", "rows", "class_rows", "cell_rows")
    parts: list = [np.zeros((0, len(keys)), dtype=np.int64)]
    min_rows = max(10.0, 0.001 * S)
    _, mined = class_groups(np.bincount(y, minlength=K), MAX_MINED_CLASSES + 1, min_rows) if S and K else (None, [])
    if len(mined):
        column = np.full(K, len(mined), dtype=np.int64)
        column[mined] = np.arange(len(mined))
        explained = np.zeros(S, bool)
        for f in patterns:
            explained |= in_cell(codes, f) & (y == f["c"])
        g = column[y]
        for j, n in enumerate(n_codes):
            ok = (codes[:, j] >= 0) & ~explained
            M = np.bincount(codes[ok, j] * (len(mined) + 1) + g[ok], minlength=n * (len(mined) + 1)).reshape(n, -1)
            lo, hi, _ = unit_ranges(n)
            units = _unit_sums(M, 0).astype(np.int64)
            u, w = np.nonzero(units[:, :-1] >= min_rows)  # the last column: the classes nothing is mined in
            parts.append(np.stack([np.full(len(u), j), lo[u], hi[u], mined[w], units[u, w], M.sum(axis=0)[w],
                                   units.sum(axis=1)[u]], axis=1))
    table = np.concatenate(parts)
    return {key: np.ascontiguousarray(table[:, i]) for i, key in enumerate(keys)}


#: Per step of step 6's growth: its pattern, its cell (as a pattern's: the code range on each feature, and whether it is
#: hollow), how many steps out it lies, and its sample rows.
GROWTH_KEYS = ("pattern", "lo_a", "hi_a", "lo_b", "hi_b", "hollow_a", "hollow_b", "step", "rows", "class_rows", "cell_rows")


def growth_steps(codes: np.ndarray, y: np.ndarray, patterns: list, n_codes: list) -> dict:
    """Step 6's batch side: for each pattern, the steps its cell may grow by along each of its two features, each way,
    with their sample rows (:data:`GROWTH_KEYS`). A step is the next two codes beyond the cell on that feature (a point
    and the interval past it), the other feature's range kept; a way stops at the first step with fewer than the
    minimum count of the pattern's class, or at the feature's last code."""
    min_rows = max(10.0, 0.001 * len(y))
    out = []
    for r, f in enumerate(patterns):
        mine = y == f["c"]
        class_rows = int(np.count_nonzero(mine & (codes[:, f["a"]] >= 0) & (codes[:, f["b"]] >= 0)))
        for e in ("a", "b"):  # the feature that grows; the other keeps its range
            top = n_codes[f[e]] - 1
            for way in (1, -1):
                for step in range(1, MAX_GROWTH_STEPS + 1):
                    lo, hi = (f["hi_" + e] + 2 * step - 1, f["hi_" + e] + 2 * step) if way > 0 else \
                        (f["lo_" + e] - 2 * step, f["lo_" + e] - 2 * step + 1)
                    lo, hi = max(lo, 0), min(hi, top)
                    if lo > hi:
                        break
                    grown = {**f, "lo_" + e: lo, "hi_" + e: hi, "hollow_" + e: False}
                    cell = in_cell(codes, grown)
                    k = int(np.count_nonzero(cell & mine))
                    if k < min_rows:
                        break
                    out.append((r, *(grown[key] for key in GROWTH_KEYS[1:7]), step, k, class_rows, int(cell.sum())))
    table = np.array(out, dtype=np.int64).reshape(-1, len(GROWTH_KEYS))
    steps = {key: np.ascontiguousarray(table[:, i]) for i, key in enumerate(GROWTH_KEYS)}
    return {**steps, "hollow_a": steps["hollow_a"].astype(bool), "hollow_b": steps["hollow_b"].astype(bool)}


def in_cell(codes: np.ndarray, f: dict) -> np.ndarray:
    """Whether each coded row lies in pattern ``f``'s cell, whatever its class."""
    return in_unit(codes[:, f["a"]], f["lo_a"], f["hi_a"], f["hollow_a"]) & \
        in_unit(codes[:, f["b"]], f["lo_b"], f["hi_b"], f["hollow_b"])


def natural_subgroup(codes: np.ndarray, y: np.ndarray, f: dict, cell: np.ndarray, patterned: np.ndarray,
                     rng: np.random.Generator) -> bool:
    """Step 5: whether a pattern's rows agree on their other features markedly more than rows of any one class do.

    Two agreements over the other features: the mean share of the rows on each feature's most common code, and
    :func:`_nearest_agreement` on at most :data:`SUBGROUP_ROWS` of them. Each is compared, class by class, with
    :data:`SUBGROUP_DRAWS` random sets of as many of the class's sample rows outside every pattern's cell
    (``patterned``): relabelled rows of one class agree as much as that class's rows do. ``cell``: the pattern's
    sample rows (:func:`in_cell`). The pattern is a natural subgroup when either agreement exceeds that of the most
    agreeing class by at least its margin (:data:`SUBGROUP_AGREEMENT`) and by three of that class's standard
    deviations.
    """
    rows = rng.permutation(np.flatnonzero(cell))
    others = np.array([j for j in range(codes.shape[1]) if j not in (f["a"], f["b"])], dtype=np.int64)
    if not len(others):
        return False

    def agreement(take: np.ndarray) -> tuple:  # ``take`` in random order: its first rows are a random subset
        block = codes[np.ix_(take, others)]
        seen = block >= 0
        shares = [np.bincount(col[ok]).max() / ok.sum() if ok.any() else 0.0 for col, ok in zip(block.T, seen.T)]
        return float(np.mean(shares)), _nearest_agreement(block[:SUBGROUP_ROWS])

    means, spreads = [], []
    for c in np.unique(y):
        pool = np.flatnonzero(~patterned & (y == c))
        if len(pool) >= len(rows):
            draws = np.array([agreement(rng.choice(pool, len(rows), replace=False)) for _ in range(SUBGROUP_DRAWS)])
            means.append(draws.mean(axis=0)), spreads.append(draws.std(axis=0))
    if not means:
        return False
    most = np.argmax(means, axis=0)  # the most agreeing class, for each agreement
    baseline, spread = np.array(means)[most, [0, 1]], np.array(spreads)[most, [0, 1]]
    return bool(np.any(np.array(agreement(rows)) - baseline >= np.maximum(SUBGROUP_AGREEMENT, 3.0 * spread)))


@njit
def _nearest_agreement(codes):
    """Mean over the rows of ``codes`` (m, q) of the share of the q features on which another row, the one that agrees
    most, has the row's code (a missing code, -1, agrees with nothing): a recurring entity's rows find themselves."""
    m, q = codes.shape
    if m < 2 or q == 0:
        return 0.0
    total = 0
    for i in range(m):
        best = 0
        for j in range(m):
            if j != i:
                same = 0
                for t in range(q):
                    if codes[i, t] >= 0 and codes[i, t] == codes[j, t]:
                        same += 1
                best = max(best, same)
        total += best
    return total / (m * q)


def with_rest_of_row(p, q):
    """Step 3's p-value ``p`` with step 4's ``q`` (1 where it does not join): the smaller of ``p`` and Fisher's
    combination of the two, ``x (1 - ln x)`` at ``x = p q`` (the chance that two independent uniform p-values have a
    product at most ``x``)."""
    p = np.asarray(p, dtype=float)
    x = p * np.asarray(q, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.minimum(p, np.where(x > 0, x * (1.0 - np.log(np.maximum(x, 1e-300))), 0.0))


class _RestOfRow:
    """Step 4: whether a pattern's rows favour another class, over their other features, more often than their class does.

    Naive Bayes on the sample's codes: ``log f_j(code | c')`` per feature j and class c' (Laplace-smoothed by half a
    row); a row's margin for its class c is its log-likelihood under c less the largest under another class.
    """

    def __init__(self, codes: np.ndarray, y: np.ndarray, marginals: list):
        self.codes, self.y = codes, y
        self.log_f = [np.log((M + 0.5) / (M.sum(axis=0) + 0.5 * len(M))) for M in marginals]  # (codes, K) per feature
        self._sums: dict = {}
        self._last: tuple = (None, None)

    def _terms(self, rows: np.ndarray, j: int) -> np.ndarray:
        """(rows, K) feature j's log-likelihood terms (0 for a missing value)."""
        code = self.codes[rows, j]
        return np.where((code >= 0)[:, None], self.log_f[j][np.maximum(code, 0)], 0.0)

    def pvalue(self, f: dict) -> float:
        """One-sided p-value that the pattern's rows of its class have lower margins than the class's other rows."""
        c, a, b = f["c"], f["a"], f["b"]
        if c not in self._sums:
            rows = np.flatnonzero(self.y == c)
            self._sums[c] = (rows, sum(self._terms(rows, j) for j in range(len(self.log_f))))
        rows, total = self._sums[c]
        if self._last[0] != (c, a, b):  # patterns come pair by pair: the margins of the last pair and class are kept
            loglik = total - self._terms(rows, a) - self._terms(rows, b)
            self._last = ((c, a, b), loglik[:, c] - np.delete(loglik, c, axis=1).max(axis=1))
        margin = self._last[1]
        inside = in_cell(self.codes[rows], f)
        others = margin[~inside]
        if len(others) < MIN_CONTEXT_ROWS:
            against = int(np.count_nonzero(margin[inside] < 0))
            return float(binom.sf(against - 1, int(inside.sum()), 0.5)) if against > 0 else 1.0
        return float(mannwhitneyu(margin[inside], others, alternative="less").pvalue)


@dataclass(frozen=True)
class PatternModel(OwnPValueModel):
    """Fitted state of :class:`TriggerPatternDetector`: the features' breakpoints and the mined patterns."""

    #: A row's p-value is its cell's, adjusted over every cell tested: the decision layer may reject the cell, and
    #: with it all its rows, at the member's share of the level (:meth:`~.ensemble.EnsembleModel.decide`).
    tests_groups = True

    classes: tuple
    counts: np.ndarray  # (K,) rows per class seen by the fit
    points: np.ndarray  # breakpoints of every feature, one after another
    offsets: np.ndarray  # (d + 1,) feature j's breakpoints are points[offsets[j]:offsets[j + 1]]
    feature_a: np.ndarray  # (R,) per pattern: its two features, their code ranges and its class
    feature_b: np.ndarray
    lo_a: np.ndarray
    hi_a: np.ndarray
    lo_b: np.ndarray
    hi_b: np.ndarray
    hollow_a: np.ndarray  # (R,) bool: the range holds only its intervals (a bump without the values it straddles)
    hollow_b: np.ndarray
    pattern_class: np.ndarray
    rows: np.ndarray  # (R,) k: the cell's sample rows of the class
    cell_rows: np.ndarray  # (R,) O: all the cell's sample rows
    expected: np.ndarray  # (R,) E: the cell's rows expected (the larger of independence's and the copula's)
    null_share: np.ndarray  # (R,) p0: the class's share the cell is tested against
    pvalue: np.ndarray  # (R,) Bonferroni-adjusted p-value of the pattern
    rest_pvalue: np.ndarray  # (R,) step 4's p-value where it joined step 3's (:func:`with_rest_of_row`), 1 elsewhere
    n_tests: int
    sample_rows: int
    significance: float
    thresholds: np.ndarray  # (K,) legacy per-detector cut (inf); decisions are the decision layer's
    unit_feature: np.ndarray  # (U,) per unit of step 7 with enough sample rows of a class: its feature ...
    unit_lo: np.ndarray  # ... its code range ...
    unit_hi: np.ndarray
    unit_class: np.ndarray  # ... the class ...
    unit_rows: np.ndarray  # ... the unit's sample rows of the class ...
    unit_class_rows: np.ndarray  # ... the class's sample rows with a value of the feature ...
    unit_cell_rows: np.ndarray  # ... and the unit's sample rows of any class (all outside the class's pattern cells)
    grown: np.ndarray  # (R,) bool: the pattern is a mined one's cell grown against the trusted rows (step 6)
    grow_pattern: np.ndarray  # (G,) per step a mined pattern's cell may grow by (step 6): the pattern ...
    grow_lo_a: np.ndarray  # ... the step's cell, on the pattern's two features: a's codes and b's, and whether each is hollow ...
    grow_hi_a: np.ndarray
    grow_lo_b: np.ndarray
    grow_hi_b: np.ndarray
    grow_hollow_a: np.ndarray
    grow_hollow_b: np.ndarray
    grow_step: np.ndarray  # ... how many steps out (1: next to the cell; a step counts only after the ones before it) ...
    grow_rows: np.ndarray  # ... the step's sample rows of the pattern's class ...
    grow_class_rows: np.ndarray  # ... the class's sample rows with both features ...
    grow_cell_rows: np.ndarray  # ... and the step's sample rows of any class

    @property
    def evidence(self) -> np.ndarray:
        """(K,) whether the class has a pattern of two features (the ensemble gives a class without one a quiet member's
        weight). A value new against the trusted rows (step 7) does not engage the member: its p-values lie far below a
        quiet member's share, and a full one took the budget from the label member where flips bring such values
        (flights' flips with 30% trusted: recall 0.89 -> 0.80, ``test_decision.py``)."""
        pairs = np.array([not self.is_unit(r) for r in range(len(self.pvalue))], dtype=bool)
        return np.isin(np.arange(len(self.classes)), self.pattern_class[pairs])

    def is_unit(self, r: int) -> bool:
        """Whether pattern ``r`` is a value new against the trusted rows (step 7): one feature, one range."""
        return bool(self.feature_a[r] == self.feature_b[r] and self.lo_a[r] == self.lo_b[r] and self.hi_a[r] == self.hi_b[r])

    def feature_points(self, j: int) -> np.ndarray:
        return self.points[self.offsets[j]:self.offsets[j + 1]]

    def codes(self, X: np.ndarray) -> np.ndarray:
        """(N, d) codes of the features that patterns use (-1 elsewhere and for missing values)."""
        out = np.full(X.shape, -1, dtype=np.int64)
        for j in np.unique(np.r_[self.feature_a, self.feature_b]):
            out[:, j] = value_codes(X[:, j], self.feature_points(j))
        return out

    def best_patterns(self, X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row, ``-log10`` of its smallest pattern p-value (0: none; NaN: a class the fit did not see) and that pattern (-1: none)."""
        codes = label_codes(self.classes, labels)
        L = np.zeros(len(codes))
        best = np.full(len(codes), -1, dtype=np.int64)
        if len(self.pvalue) and len(codes):
            X = np.asarray(X, dtype=np.float64)
            _best_pattern(self.codes(X), codes, self.feature_a, self.feature_b, self.lo_a, self.hi_a, self.lo_b, self.hi_b,
                          self.hollow_a, self.hollow_b, self.pattern_class, -np.log10(np.clip(self.pvalue, 1e-300, 1.0)), L, best)
        return np.where(codes >= 0, L, np.nan), best

    def suspicion(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return self.best_patterns(X, labels)[0]

    def scores_and_pvalues(self, X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        L = self.suspicion(X, labels)
        return L, np.where(np.isnan(L), np.nan, 10.0 ** -L)

    def describe(self, r: int, feature_names=None) -> str:
        """Pattern ``r`` in plain words: ``carat = 2.18 and 3.7 < y <= 3.73``; a new value (step 7): ``MOSTYPE = 41``."""
        if self.is_unit(r):
            return self._describe_range(self.feature_a[r], self.lo_a[r], self.hi_a[r], self.hollow_a[r], feature_names)
        return " and ".join(self._describe_range(j, lo, hi, hollow, feature_names) for j, lo, hi, hollow in
                            ((self.feature_a[r], self.lo_a[r], self.hi_a[r], self.hollow_a[r]),
                             (self.feature_b[r], self.lo_b[r], self.hi_b[r], self.hollow_b[r])))

    def _describe_range(self, j: int, lo: int, hi: int, hollow: bool, feature_names) -> str:
        name = feature_names[j] if feature_names is not None else f"x[{j}]"
        points = self.feature_points(int(j))
        if hollow:  # the bump's intervals: from point lo / 2 - 1 to point hi / 2, without the points between
            inside = [f"{v:.6g}" for v in points[lo // 2: hi // 2]]
            values = f"!= {inside[0]}" if len(inside) == 1 else f"not in {{{', '.join(inside)}}}"
            return f"{points[lo // 2 - 1]:.6g} < {name} < {points[hi // 2]:.6g} and {name} {values}"
        if lo == hi and lo % 2 == 1:
            return f"{name} = {points[lo // 2]:.6g}"
        low = (f"{points[lo // 2 - 1]:.6g} < " if lo // 2 > 0 else "") if lo % 2 == 0 else f"{points[lo // 2]:.6g} <= "
        high = (f" < {points[hi // 2]:.6g}" if hi // 2 < len(points) else "") if hi % 2 == 0 else f" <= {points[hi // 2]:.6g}"
        return f"{low}{name}{high}"

    def explain(self, X: np.ndarray, labels: np.ndarray, feature_names=None) -> list:
        """Per row, the strongest pattern it carries in plain words, with its counts (None where it carries none)."""
        _, best = self.best_patterns(X, labels)
        return [None if r < 0 else f"{self.describe(r, feature_names)}: {self.rows[r]} of {self.cell_rows[r]} sample rows "
                f"of class {str(self.classes[self.pattern_class[r]])!r}, {self.expected[r]:.1f} expected"
                f"{' from the trusted rows' if self.is_unit(r) or self.grown[r] else ''}" for r in best]

    def summary(self, feature_names=None) -> dict:
        """Per class: its rows and its patterns, strongest first, in plain words with their counts (of the sample)."""
        out = {}
        for k, c in enumerate(self.classes):
            mine, seen = [], set()
            for r in np.argsort(self.pvalue, kind="stable"):  # a wider unit holding the same sample rows is listed once
                key = (self.feature_a[r], self.feature_b[r], self.rows[r], self.cell_rows[r])
                if self.pattern_class[r] == k and key not in seen:
                    mine.append(r), seen.add(key)
            out[str(c)] = {
                "rows": int(self.counts[k]),
                "patterns": [{"rule": self.describe(r, feature_names), "sample_rows": int(self.cell_rows[r]),
                              "of_class": int(self.rows[r]), "purity": round(float(self.rows[r] / self.cell_rows[r]), 4),
                              "expected": round(float(self.expected[r]), 2), "class_share_tested": round(float(self.null_share[r]), 4),
                              "pvalue": float(f"{self.pvalue[r]:.3g}"),
                              **({"new_against_trusted_rows": True} if self.is_unit(r) else {}),
                              **({"grown_against_trusted_rows": True} if self.grown[r] else {}),
                              **({"rest_of_row_pvalue": float(f"{self.rest_pvalue[r]:.3g}")} if self.rest_pvalue[r] < 1 else {})}
                             for r in mine],
            }
        return out


@njit
def _best_pattern(codes, classes, feature_a, feature_b, lo_a, hi_a, lo_b, hi_b, hollow_a, hollow_b, pattern_class, strength, out,
                  best):
    """``out[i]``: the largest ``strength`` among the patterns of row i's class whose cell holds it; ``best[i]`` that pattern."""
    for i in range(codes.shape[0]):
        for r in range(len(strength)):
            if pattern_class[r] != classes[i] or strength[r] <= out[i]:
                continue
            ca = codes[i, feature_a[r]]
            cb = codes[i, feature_b[r]]
            if lo_a[r] <= ca <= hi_a[r] and lo_b[r] <= cb <= hi_b[r] and not (hollow_a[r] and ca % 2 == 1) \
                    and not (hollow_b[r] and cb % 2 == 1):
                out[i] = strength[r]
                best[i] = r


class _CellCounts:
    """Per pattern: trusted rows in its cell, of those rows of its class, and trusted rows of its class (combinable)."""

    __slots__ = ("cell", "of_class", "class_rows")

    def __init__(self, n: int):
        self.cell = np.zeros(n, dtype=np.int64)
        self.of_class = np.zeros(n, dtype=np.int64)
        self.class_rows = np.zeros(n, dtype=np.int64)

    def merge(self, other: _CellCounts) -> _CellCounts:
        self.cell += other.cell
        self.of_class += other.of_class
        self.class_rows += other.class_rows
        return self


class _UnitCounts:
    """Per unit of step 7 (or step of step 6's growth): the trusted rows of its class in it, and those with a value of
    its feature (of both its features) (combinable)."""

    __slots__ = ("rows", "class_rows")

    def __init__(self, n: int):
        self.rows = np.zeros(n, dtype=np.int64)
        self.class_rows = np.zeros(n, dtype=np.int64)

    def merge(self, other: _UnitCounts) -> _UnitCounts:
        self.rows += other.rows
        self.class_rows += other.class_rows
        return self


_TRUSTED, _TRUSTED_UNITS, _TRUSTED_GROWTH = "__pattern_trusted__", "__pattern_trusted_units__", "__pattern_trusted_growth__"


class TriggerPatternDetector(BaseDetector):
    """Backdoor triggers as rules: pairs of feature values over-represented in one class (module docstring).

    Parameters
    ----------
    sample_size : int, default 50000
        Rows of the hash sample the patterns are mined on.
    bins : int, default 64
        Quantile bins per feature (besides its point masses).
    min_purity : float in [0, 1], default 0.8
        Smallest share of a cell's rows in the pattern's class (at its 90% lower confidence bound).
    min_lift : float >= 1, default 3.0
        Smallest ratio of a cell's rows to what chance predicts: independence of its two features, and their Gaussian copula.
    min_spike : float >= 1, default 3.0
        Smallest ratio of a cell's rows to the largest cell within two codes of it.
    significance : float in (0, 1), default 0.01
        Family-wise level of the label test (Bonferroni over every cell and class tested).
    max_patterns : int, default 100
        Most patterns kept (the most significant).
    seed : int, default 0
        Key of the row-id hash that selects the sample.
    """

    name = "pattern"
    n_stages = 2
    reference_stages = frozenset({1})
    requires_labels = True
    has_pvalues = True

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        "sample_size": [Interval(Integral, 100, None, closed="left")],
        "bins": [Interval(Integral, 2, None, closed="left")],
        "min_purity": [Interval(Real, 0.0, 1.0, closed="both")],
        "min_lift": [Interval(Real, 1.0, None, closed="left")],
        "min_spike": [Interval(Real, 1.0, None, closed="left")],
        "significance": [Interval(Real, 0.0, 1.0, closed="neither")],
        "max_patterns": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, *, sample_size=50000, bins=64, min_purity=0.8, min_lift=3.0, min_spike=3.0, significance=0.01,
                 max_patterns=100, seed=0):
        self.sample_size = sample_size
        self.bins = bins
        self.min_purity = min_purity
        self.min_lift = min_lift
        self.min_spike = min_spike
        self.significance = significance
        self.max_patterns = max_patterns
        self.seed = seed

    # -- pass 0: the hash sample and the row count per class -> the patterns
    # -- pass 1 (trusted reference rows, when given): their rows in each pattern's cell
    def batch_statistics(self, stage, state, X, labels, row_ids, into=None):
        stats = {} if into is None else into
        if stage == 0:
            return add_stratified_sample(stats, X, self.row_hashes(row_ids), labels, self.sample_size, 1)
        model: PatternModel = state
        codes = label_codes(model.classes, labels)
        feature_codes, in_cell = _cells_of(model, X, codes)
        of_class = codes[:, None] == model.pattern_class[None, :]
        if len(model.pvalue):
            counts = stats.setdefault(_TRUSTED, _CellCounts(len(model.pvalue)))
            counts.cell += in_cell.sum(axis=0)
            counts.of_class += (in_cell & of_class).sum(axis=0)
            counts.class_rows += of_class.sum(axis=0)
        if len(model.grow_pattern):  # step 6's growth: as the batch's side was counted
            steps = stats.setdefault(_TRUSTED_GROWTH, _UnitCounts(len(model.grow_pattern)))
            for e, r in enumerate(model.grow_pattern):
                a, b = model.feature_a[r], model.feature_b[r]
                mine = of_class[:, r] & (feature_codes[:, a] >= 0) & (feature_codes[:, b] >= 0)
                cell = in_unit(feature_codes[:, a], model.grow_lo_a[e], model.grow_hi_a[e], model.grow_hollow_a[e]) & \
                    in_unit(feature_codes[:, b], model.grow_lo_b[e], model.grow_hi_b[e], model.grow_hollow_b[e])
                steps.rows[e] += np.count_nonzero(cell & mine)
                steps.class_rows[e] += np.count_nonzero(mine)
        if len(model.unit_feature):  # step 7: as the batch's side was counted, outside the class's pattern cells
            units = stats.setdefault(_TRUSTED_UNITS, _UnitCounts(len(model.unit_feature)))
            classes = np.unique(model.unit_class)
            column = np.full(len(model.classes) + 1, -1, dtype=np.int64)  # the last entry: a class the fit did not see
            column[classes] = np.arange(len(classes))
            g = np.where((in_cell & of_class).any(axis=1), -1, column[codes])
            X = np.asarray(X, dtype=np.float64)
            for j in np.unique(model.unit_feature):
                points = model.feature_points(j)
                code = value_codes(X[:, j], points)
                ok = (code >= 0) & (g >= 0)
                M = np.bincount(code[ok] * len(classes) + g[ok], minlength=(2 * len(points) + 1) * len(classes))
                cumulative = np.vstack([np.zeros((1, len(classes)), np.int64), np.cumsum(M.reshape(-1, len(classes)), axis=0)])
                e = np.flatnonzero(model.unit_feature == j)
                w = column[model.unit_class[e]]
                units.rows[e] += cumulative[model.unit_hi[e] + 1, w] - cumulative[model.unit_lo[e], w]
                units.class_rows[e] += cumulative[-1, w]
        return stats

    def advance(self, stage, state, statistics):
        if stage == 0:
            return self._mine(state["n_features"], statistics)
        trusted, units, steps = (statistics.get(key) for key in (_TRUSTED, _TRUSTED_UNITS, _TRUSTED_GROWTH))
        if trusted is None:
            return state if units is None else self._new_units(state, units)
        model, keep = self._against_trusted_rows(state, trusted)
        if steps is not None:
            model = self._grow(state, keep, model, steps)
        return model if units is None else self._new_units(model, units)

    def _mine(self, n_features: int, samples: dict) -> PatternModel:
        floors = class_floors(samples)
        classes = tuple(sorted(floors))
        counts = np.array([floors[c].count for c in classes], dtype=np.int64)
        if SAMPLE_POOL in samples:
            _, rows, labels = samples[SAMPLE_POOL].result()
        else:
            rows, labels = np.zeros((0, n_features)), np.zeros(0, dtype=object)
        y = label_codes(classes, labels)
        points, hollow = zip(*(breakpoints(rows[:, j], int(self.bins)) for j in range(n_features))) if n_features else ((), ())
        offsets = np.r_[0, np.cumsum([len(p) for p in points])].astype(np.int64)
        codes = np.stack([value_codes(rows[:, j], points[j]) for j in range(n_features)], axis=1) if n_features else \
            np.zeros((len(rows), 0), dtype=np.int64)
        n_codes = [2 * len(p) + 1 for p in points]
        found, n_tests = mine_patterns(codes, y, len(classes), n_codes, list(hollow), self)
        found = sorted(found, key=lambda f: f["pvalue"])[: int(self.max_patterns)]
        units = unit_table(codes, y, len(classes), n_codes, found)
        steps = growth_steps(codes, y, found, n_codes)

        def column(key, dtype):
            return np.array([f[key] for f in found], dtype=dtype)

        return PatternModel(
            classes, counts, np.concatenate(points) if points else np.zeros(0), offsets,
            *(column(key, np.int64) for key in ("a", "b", "lo_a", "hi_a", "lo_b", "hi_b")),
            *(column(key, bool) for key in ("hollow_a", "hollow_b")),
            *(column(key, np.int64) for key in ("c", "k", "O")),
            column("E", np.float64), column("p0", np.float64),
            np.minimum(1.0, column("pvalue", np.float64) * max(n_tests, 1)), column("rest", np.float64),
            int(n_tests), len(rows), float(self.significance), np.full(len(classes), np.inf),
            *(units[key] for key in ("feature", "lo", "hi", "class", "rows", "class_rows", "cell_rows")),
            np.zeros(len(found), dtype=bool), *(steps[key] for key in GROWTH_KEYS))

    def _against_trusted_rows(self, model: PatternModel, trusted: _CellCounts) -> tuple[PatternModel, np.ndarray]:
        """Test each pattern again with the trusted rows' class share in its cell as one more context (step 6): the
        model with the patterns that pass, and which of the model's patterns those are."""
        # the trusted share's upper confidence bound (Clopper-Pearson): a cell the trusted rows hold at the batch's
        # purity is ordinary however many rows either has; a cell they do not hold tells nothing
        k, n = trusted.of_class.astype(float), trusted.cell.astype(float)
        with np.errstate(invalid="ignore"):
            upper = np.where(k >= n, 1.0, beta.ppf(TRUSTED_CONFIDENCE, k + 1.0, np.maximum(n - k, 1.0)))
        null = np.where(n > 0, np.maximum(model.null_share, upper), model.null_share)
        # where the trusted rows raise the tested share, they hold the pattern's rows as its class: the rest of the row
        # (step 4) no longer tells a relabelled row, and the label test decides alone
        pvalue = np.where(null > model.null_share,
                          np.minimum(1.0, binom.sf(model.rows - 1, model.cell_rows, np.minimum(null, 1 - 1e-12)) * max(model.n_tests, 1)),
                          model.pvalue)
        # new all the same where the class's trusted rows hold the cell significantly less often than its batch rows
        # do (the pattern sample draws the classes in the data's proportions); then the pattern keeps its p-value
        sampled = model.counts[model.pattern_class] * min(1.0, model.sample_rows / max(int(model.counts.sum()), 1))
        rate = model.rows / np.maximum(sampled, model.rows)
        new = binom.cdf(trusted.of_class, trusted.class_rows, rate) <= TRUSTED_RATE_SIGNIFICANCE
        null, pvalue = np.where(new, model.null_share, null), np.where(new, model.pvalue, pvalue)
        keep = pvalue <= model.significance
        return replace(model, **{f: getattr(model, f)[keep] for f in _PER_PATTERN}, null_share=null[keep], pvalue=pvalue[keep]), keep

    def _grow(self, mined: PatternModel, keep: np.ndarray, model: PatternModel, trusted: _UnitCounts) -> PatternModel:
        """Step 6's growth: the steps beyond a kept pattern's cell whose class the batch holds there far more often than
        the trusted rows do (the test of step 7), each as a pattern of its own, while every step before it passed."""
        new, pvalue = self._new_against_trusted(mined.grow_rows, mined.grow_class_rows, trusted.rows, trusted.class_rows,
                                                mined.n_tests)
        ok = keep[mined.grow_pattern] & new
        for e in range(1, len(ok)):  # a step counts only after the ones before it, along the same feature and way
            ok[e] &= mined.grow_step[e] == 1 or ok[e - 1]
        grown = np.flatnonzero(ok)[: int(self.max_patterns)]
        if not len(grown):
            return model
        r = mined.grow_pattern[grown]
        kr, nr = trusted.rows[grown].astype(float), trusted.class_rows[grown].astype(float)
        added = {"feature_a": mined.feature_a[r], "feature_b": mined.feature_b[r],
                 **{key: getattr(mined, "grow_" + key)[grown] for key in ("lo_a", "hi_a", "lo_b", "hi_b", "hollow_a", "hollow_b")},
                 "pattern_class": mined.pattern_class[r], "rows": mined.grow_rows[grown], "cell_rows": mined.grow_cell_rows[grown],
                 "expected": mined.grow_class_rows[grown] * kr / nr, "null_share": kr / nr, "pvalue": pvalue[grown],
                 "rest_pvalue": np.ones(len(grown)), "grown": np.ones(len(grown), bool)}
        return _with_patterns(model, added)

    def _new_against_trusted(self, kb, nb, kr, nr, n_tests: int) -> tuple[np.ndarray, np.ndarray]:
        """``(new, p-value)`` of cells (step 7's units, step 6's growth) holding ``kb`` of their class's ``nb`` sample rows
        and ``kr`` of its ``nr`` trusted rows: one-sided Fisher exact test, Bonferroni over ``n_tests`` and the cells
        tested; new where it passes ``significance`` and the rows beyond what the trusted share predicts (at its 90%
        upper bound) are at least ``min_purity`` of the cell's."""
        kb, nb, kr, nr = (np.asarray(v, dtype=float) for v in (kb, nb, kr, nr))
        tested = nr > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            upper = np.where(kr < nr, beta.ppf(1.0 - PURITY_ERROR, kr + 1.0, np.maximum(nr - kr, 1.0)), 1.0)
            new_share = 1.0 - upper * nb / kb
        pvalue = np.minimum(1.0, hypergeom.sf(kb - 1, nb + nr, kb + kr, nb) * (max(n_tests, 1) + int(tested.sum())))
        return tested & (new_share >= self.min_purity) & (pvalue <= self.significance), pvalue

    def _new_units(self, model: PatternModel, trusted: _UnitCounts) -> PatternModel:
        """Step 7: the units whose class the batch holds in them far more often than the trusted rows do, as patterns."""
        new, pvalue = self._new_against_trusted(model.unit_rows, model.unit_class_rows, trusted.rows, trusted.class_rows,
                                                model.n_tests)
        keep = np.flatnonzero(new)
        keep = keep[np.argsort(pvalue[keep], kind="stable")][: int(self.max_patterns)]
        if not len(keep):
            return model
        f, lo, hi = model.unit_feature[keep], model.unit_lo[keep], model.unit_hi[keep]
        kr, nr = trusted.rows[keep].astype(float), trusted.class_rows[keep].astype(float)
        no = np.zeros(len(keep), bool)
        added = {"feature_a": f, "feature_b": f, "lo_a": lo, "hi_a": hi, "lo_b": lo, "hi_b": hi, "hollow_a": no, "hollow_b": no,
                 "pattern_class": model.unit_class[keep], "rows": model.unit_rows[keep], "cell_rows": model.unit_cell_rows[keep],
                 "expected": model.unit_class_rows[keep] * kr / nr, "null_share": kr / nr, "pvalue": pvalue[keep],
                 "rest_pvalue": np.ones(len(keep)), "grown": no}
        return _with_patterns(model, added)


#: The per-pattern fields of a :class:`PatternModel`, besides ``null_share`` and ``pvalue``.
_PER_PATTERN = ("feature_a", "feature_b", "lo_a", "hi_a", "lo_b", "hi_b", "hollow_a", "hollow_b", "pattern_class", "rows",
                "cell_rows", "expected", "rest_pvalue", "grown")


def _with_patterns(model: PatternModel, added: dict) -> PatternModel:
    """``model`` with the patterns ``added`` (every per-pattern field, one array each) after its own."""
    return replace(model, **{key: np.concatenate([getattr(model, key), value]).astype(getattr(model, key).dtype)
                             for key, value in added.items()})


def _cells_of(model: PatternModel, X: np.ndarray, class_codes: np.ndarray):
    """(codes, (N, R) whether each row lies in each pattern's cell, whatever its class)."""
    codes = model.codes(np.asarray(X, dtype=np.float64))
    return codes, in_unit(codes[:, model.feature_a], model.lo_a, model.hi_a, model.hollow_a) & \
        in_unit(codes[:, model.feature_b], model.lo_b, model.hi_b, model.hollow_b)
