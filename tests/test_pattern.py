"""The trigger-pattern detector: planted triggers found and named in real tables, clean tables untouched.

The real tables live in ``../shared/data`` beside the project (CI has them); tests that
need them skip with a message where they are absent.
"""

import html
import json

import numpy as np
import pandas as pd
import pytest

from conftest import (field_test_batch, fit_in_parts, plant_field_backdoor, real_frame, real_table, recall_precision, run_cli,
                      write_frame)
from poisonguard.detectors import ConfidentLabelDetector, EnsembleDetector, SpectralSignatureDetector, TriggerPatternDetector
from poisonguard.detectors import pattern
from poisonguard.detectors.decision import QUIET_MEMBER_SHARE
from poisonguard.detectors.pattern import (PatternModel, _PairDependence, _bump_edges, _nearest_agreement, _unit_sums, breakpoints,
                                           in_unit, unit_ranges, value_codes, with_rest_of_row)
from poisonguard.detectors.persist import decode, encode


def screen_with_patterns(X, y, ids, feature_names=None, reference=None, **params):
    """``(fitted ensemble, flagged)``: the pattern detector alone through the decision layer, as ``--detectors pattern``."""
    det = EnsembleDetector(detectors=[TriggerPatternDetector(**params)], feature_names=feature_names)
    ref = {} if reference is None else {"X_reference": reference[0], "y_reference": reference[1]}
    det.fit(X, y, row_ids=ids, **ref)
    return det, det.screen(det.model_, X, y).flagged


# -- the building blocks ------------------------------------------------------------------------------
def test_codes_give_point_masses_their_own_code_and_missing_values_none():
    rng = np.random.default_rng(0)
    values = np.r_[np.zeros(300), rng.normal(5, 1, 9700)]  # a censoring value at 0 for 3% of rows
    points, _ = breakpoints(values, 64)
    assert 0.0 in points
    codes = value_codes(np.array([0.0, -1.0, np.nan, 5.0]), points)
    assert codes[0] % 2 == 1 and codes[1] == 0 and codes[2] == -1  # on a point; below every point; missing
    assert codes[3] % 2 == 0 or points[codes[3] // 2] == 5.0


def test_a_jittered_stamp_is_one_interval_and_a_smooth_feature_has_no_bump():
    rng = np.random.default_rng(0)
    clean = rng.normal(0, 1, 20000)
    stamp = 2.3 + rng.normal(0, 0.02 * 1.35, 600)  # 3% of rows, jittered by 2% of the inter-quartile range
    points, _ = breakpoints(np.r_[clean, stamp], 64)
    assert len(np.unique(value_codes(stamp, points))) == 1
    for smooth in (clean, rng.exponential(1, 20000), rng.lognormal(0, 2, 20000)):
        assert len(_bump_edges(np.sort(smooth), 0.1 * np.subtract(*np.quantile(smooth, [0.75, 0.25])), 40)) == 0


def test_unit_sums_add_the_codes_each_unit_spans():
    T = np.arange(9 * 7 * 2, dtype=float).reshape(9, 7, 2)
    hollow_a, hollow_b = np.array([[0, 2], [2, 6]]), np.array([[2, 4]])  # hollow units: the even codes of the range
    cells = _unit_sums(_unit_sums(T, 0, hollow_a), 1, hollow_b)
    (la, ha, wa), (lb, hb, wb) = unit_ranges(9, hollow_a), unit_ranges(7, hollow_b)
    assert cells.shape == (len(la), len(lb), 2) and wa.sum() == 2 and wb.sum() == 1
    for i in range(len(la)):
        for j in range(len(lb)):
            ra, rb = np.arange(9), np.arange(7)
            ina, inb = in_unit(ra, la[i], ha[i], wa[i]), in_unit(rb, lb[j], hb[j], wb[j])
            assert np.array_equal(cells[i, j], T[np.ix_(ina, inb)].sum(axis=(0, 1)))
            assert ina.sum() == ((ha[i] - la[i]) // 2 + 1 if wa[i] else ha[i] - la[i] + 1)


def test_nearest_agreement_counts_the_features_a_rows_closest_twin_shares():
    twins = np.array([[1, 2, 3, 4], [1, 2, 3, 5], [7, 8, 9, 9], [7, 8, 0, 0]])  # two pairs: 3 and 2 of 4 features
    assert _nearest_agreement(twins) == pytest.approx((3 + 3 + 2 + 2) / 16)
    assert _nearest_agreement(np.array([[-1, 2], [-1, 3]])) == 0.0  # a missing code agrees with nothing
    rng = np.random.default_rng(0)
    ordinary = rng.integers(0, 30, (69, 11))
    recurring = np.repeat(rng.integers(0, 30, (26, 11)), 3, axis=0)[:69]  # 26 entities, each seen about 3 times
    recurring[:, :4] = rng.integers(0, 30, (69, 4))  # the day, the delays: differ every time
    assert _nearest_agreement(recurring) > _nearest_agreement(ordinary) + 0.3


# -- on real tables -------------------------------------------------------------------------------
@pytest.mark.parametrize("table", ["credit", "diamonds", "caravan"])
def test_clean_real_tables_lose_no_row(table):
    X, y, ids = real_table(table)
    det, flagged = screen_with_patterns(X, y, ids)
    assert flagged.sum() == 0, det.model_.models[0].summary()


@pytest.mark.parametrize("seed,text_ids", [(0, False), (2, True), (2, False)])
def test_natural_rules_of_the_flights_table_are_not_taken_for_triggers(seed, text_ids):
    """Flights: a flight number and a distance name a route, and a route leaves from one airport. Such pairs are as
    pure as a trigger, but their rows are a few recurring entities (the same flights every day), and a distance
    nearly fixes the air time. Seed 2 with text ids once mined LaGuardia's Denver route (``213 < air_time < 223.188
    and 1608 < distance < 1626``, 130 of 134 sample rows against 9.6 expected if independent) and lost 263 clean
    rows: its rows agreed just under step 5's bar, and only the copula's expected count (about the cell's own rows)
    rejects it. Seed 2 with integer ids mined ``4115 < flight < 4490 and minute = 3`` (69 of 69 sample rows EWR: 26
    flights out of Newark) and lost 129: their features' most common codes agreed under the bar (0.109 against 0.088),
    and only their nearest neighbours (the same flight on another day) give them away."""
    df, feats = real_frame("flights")
    df = df.sample(100_000, random_state=0)  # as the field test samples it
    ids = df["id"].to_numpy()
    det, flagged = screen_with_patterns(df[feats].to_numpy(float), df["label"].astype(str).to_numpy(object),
                                        ids.astype(str).astype(object) if text_ids else ids, seed=seed)
    assert flagged.mean() <= 0.001, det.model_.models[0].summary(feats)


def test_a_natural_cell_at_the_purity_bar_is_not_taken_for_a_trigger_whatever_the_sample():
    """The field test's flights jdoor3 batch, detector seed 3 with text ids: ``10 < month < 12 and 2625 < flight <
    3202`` (November's flight numbers from JFK: 193 of 227 sample rows, purity 0.850, lift 3.02) was mined, and 364
    clean rows joined the 3,000 planted ones in one run of ten. Purity is now held to its 90% lower bound."""
    frame, feats, truth = field_test_batch("flights", "jdoor3")
    det, flagged = screen_with_patterns(frame[feats].to_numpy(float), frame["label"].to_numpy(object),
                                        frame["id"].to_numpy().astype(str).astype(object), feature_names=tuple(feats), seed=3)
    recall, _ = recall_precision(truth, flagged)
    assert recall >= 0.95 and (flagged & ~truth).sum() <= 10, det.model_.models[0].summary(feats)


def test_a_window_around_a_stamp_is_judged_on_the_rows_beyond_it():
    """The field test's flights door1 batch of ``run.py --reference-share 0.3`` (its 70%, no trusted rows): the stamp
    ``sched_arr_time = 2353 and arr_delay = -44`` (514 sample rows, all JFK) lies inside three wider cells, and
    ``2300 < sched_arr_time < 2359 and arr_delay < -41`` holds 540 JFK rows of 555 on the stamp's rows alone. Kept
    beside the stamp, the wider cells flagged 37 clean rows. Judged on the rows beyond the stamp, they are dropped,
    and the stamp alone is kept."""
    frame, feats, truth, _ = field_test_batch("flights", "door1", reference_share=0.3)
    det, flagged = screen_with_patterns(frame[feats].to_numpy(float), frame["label"].to_numpy(object), frame["id"].to_numpy(),
                                        feature_names=tuple(feats))
    recall, _ = recall_precision(truth, flagged)
    rules = det.model_.models[0].summary(feats)["JFK"]["patterns"]
    assert recall == 1.0 and (flagged & ~truth).sum() <= 3, rules
    assert [r["rule"] for r in rules] == ["sched_arr_time = 2353 and arr_delay = -44"], rules


def test_the_copula_expects_a_routes_rows_and_not_a_trigger_against_the_correlation():
    """Air time and distance (rank correlation 0.98): the cells along their curve hold about the rows the Gaussian
    copula expects, many times what independence does; a cell against the correlation (a 99th percentile by a
    1st) stays near independence's count, so a trigger there still stands out."""
    df, feats = real_frame("flights")
    X = df[feats].to_numpy(float)[:50_000]
    a, b = feats.index("air_time"), feats.index("distance")
    codes = np.stack([value_codes(X[:, j], breakpoints(X[:, j], 64)[0]) for j in (a, b)], axis=1)
    na, nb = codes.max(axis=0) + 1
    total = np.bincount(codes[:, 0] * nb + codes[:, 1], minlength=na * nb).reshape(na, nb).astype(float)
    pair = _PairDependence(codes, np.zeros(len(codes), np.int64), 0, 1, np.ones(len(codes), bool), total)
    assert pair.rho(1) > 0.95  # class 1 has no row: every row is another class's
    ma, mb = total.sum(axis=1), total.sum(axis=0)
    busy = np.nonzero(total >= 50)  # 110 cells, all along the curve
    assert len(busy[0]) >= 50
    independent = ma[busy[0]] * mb[busy[1]] / total.sum()
    copula = np.array([pair.expected(1, (i, i, False), (j, j, False)) for i, j in zip(*busy)])
    # over the detector's lift of 3: every one of them against independence, 16% against the copula
    assert np.mean(total[busy] >= 3 * independent) >= 0.9
    assert np.mean(total[busy] >= 3 * copula) <= 0.25
    top, bottom = na - 2, 0  # the last interval of air time by the first of distance
    independent = ma[top] * mb[bottom] / total.sum()
    assert pair.expected(1, (top, top, False), (bottom, bottom, False)) <= independent


@pytest.mark.parametrize("table,columns,rate,jitter", [
    ("credit", (2, 4), 0.03, 0.0), ("diamonds", (0, 3), 0.01, 0.0), ("diamonds", (0, 3), 0.10, 0.0), ("loans", (1, 8), 0.03, 0.0),
    # jittered by 2% of the inter-quartile range, as the field test's jdoor3 (before bumps: recall 0.40 and 0.00)
    ("credit", (0, 3), 0.03, 0.02), ("loans", (1, 8), 0.03, 0.02),
    # integer codes jittered: the stamp straddles a value the feature often holds (recall 0 before hollow units)
    ("caravan", (4, 5), 0.03, 0.02),
    # air time (whole minutes) high by distance low, against their correlation of 0.98: the jitter spreads the stamp
    # over many common values of both (recall 0.94 before hollow units)
    ("flights", (9, 10), 0.03, 0.02),
    # credit's Time (months) is 60 in 46% of the rows, so no cell of Time = 60 reaches a lift of 3: the stamp's cell
    # holds nearly all the rows of its other value (recall 0 before the bar for saturated cells)
    ("credit", (1, 8), 0.10, 0.0), ("credit", (1, 4), 0.03, 0.0)])
def test_a_planted_trigger_is_found_and_named(table, columns, rate, jitter):
    df, feats = real_frame(table)
    X, y, truth = plant_field_backdoor(df[feats].to_numpy(float), df["label"].astype(str).to_numpy(object), rate, 0, columns,
                                       jitter)
    det, flagged = screen_with_patterns(X, y, df["id"].to_numpy(), feature_names=tuple(feats))
    recall, precision = recall_precision(truth, flagged)
    assert recall >= 0.95 and precision >= 0.95, (recall, precision)
    model = det.model_.models[0]
    rules = [p["rule"] for facts in model.summary(feats).values() for p in facts["patterns"]]
    assert rules and all(feats[columns[0]] in r and feats[columns[1]] in r for r in rules[:1]), rules
    reasons = det.screen(det.model_, X[truth][:3], y[truth][:3]).reasons
    assert all(feats[columns[0]] in r and "pattern" in r for r in reasons), reasons


def test_a_trigger_on_values_that_clean_rows_also_hold_is_found_in_a_table_whose_labels_the_features_barely_tell():
    """The field test's loans door1 batch: 77 rows of grade B stamped with ``current_installment_accounts = 0 and
    months_since_last_credit_inquiry = 23`` and relabelled C. 15 clean rows hold the same two values (4 of them C), so
    the cell is 81 of 92 C: its purity's 90% lower bound is 0.825. And grades are barely told apart by the other
    features, so the stamped rows' naive-Bayes margins sit below the other C rows' only at p = 0.007. At purity 0.85
    and step 4 at 1e-3 it was not mined; at 0.8 and 1e-2 it is, and no clean batch of the six tables loses a row
    (the pattern-alone sweep in benchmarks/README.md)."""
    frame, feats, truth = field_test_batch("loans", "door1")
    det, flagged = screen_with_patterns(frame[feats].to_numpy(float), frame["label"].to_numpy(object), frame["id"].to_numpy(),
                                        feature_names=tuple(feats))
    recall, precision = recall_precision(truth, flagged)
    assert recall == 1.0 and precision >= 0.9, (recall, precision)
    rule = next(p["rule"] for facts in det.model_.models[0].summary(feats).values() for p in facts["patterns"])
    assert "current_installment_accounts" in rule and "months_since_last_credit_inquiry" in rule, rule


@pytest.mark.parametrize("trusted", [False, True])
def test_a_stamp_on_values_no_clean_row_holds_is_found_where_the_rest_of_the_row_barely_tells(trusted):
    """The field test's loans door1 batch of ``--reference-share 0.3`` (5,398 rows): 53 grade-B rows stamped with
    ``total_credit_utilized = 269,704.38 and paid_principal = 131.36`` and relabelled C. The cell is 53 of 53 C at
    p = 1.6e-30, but the stamped rows' other features point away from C only at p = 0.019 (step 4's bar is 0.01):
    grades B and C are barely told apart. No clean row holds either value, and such an exclusive cell passes step 4
    at 0.05. The natural exclusive cells of the clean 70% batch (amortisation schedules of grade-A loans, one of
    them at p = 0.012) still flag nothing; with the trusted 30%, the stamp is new and stays."""
    frame, feats, truth, reference = field_test_batch("loans", "door1", reference_share=0.3)
    ref = (reference[feats].to_numpy(float), reference["label"].to_numpy(object)) if trusted else None
    det, flagged = screen_with_patterns(frame[feats].to_numpy(float), frame["label"].to_numpy(object), frame["id"].to_numpy(),
                                        feature_names=tuple(feats), reference=ref)
    recall, precision = recall_precision(truth, flagged)
    assert recall == 1.0 and precision >= 0.9, (recall, precision)
    rule = det.model_.models[0].summary(feats)["C"]["patterns"][0]["rule"]
    assert "total_credit_utilized" in rule and "paid_principal" in rule, rule
    clean, feats, _, reference = field_test_batch("loans", "clean", reference_share=0.3)
    ref = (reference[feats].to_numpy(float), reference["label"].to_numpy(object)) if trusted else None
    _, flagged = screen_with_patterns(clean[feats].to_numpy(float), clean["label"].to_numpy(object), clean["id"].to_numpy(),
                                      reference=ref)
    assert not flagged.any(), int(flagged.sum())


def stamped_features(X: np.ndarray, truth: np.ndarray) -> set:
    """The two features a planted trigger stamps: the least spread over the planted rows, in IQRs of the feature."""
    iqr = np.subtract(*np.quantile(X, [0.75, 0.25], axis=0))
    return set(np.argsort(X[truth].std(axis=0) / np.where(iqr > 0, iqr, 1.0))[:2].tolist())


@pytest.mark.parametrize("case", ["door1", "jdoor3"])
def test_a_stamp_that_the_label_test_barely_sees_is_found_by_its_rows_other_features(case):
    """The field test's cells batches. door1 stamps 20 rows, all of class WS, where WS holds 60% of the rows with
    either value: p = 4e-5, against a Bonferroni level of 2e-8 over 454,839 cells. jdoor3's stamp lies where WS
    holds 88% of the rows already: 60 of 60 at p = 4e-4. Neither was mined by the label test alone. But their rows'
    other features point to PS (step 4, p = 7e-7 and 4e-25), and their cells hold 10 to 100 times the rows chance
    predicts: with the two p-values combined, both are found."""
    frame, feats, truth = field_test_batch("cells", case)
    X = frame[feats].to_numpy(float)
    det, flagged = screen_with_patterns(X, frame["label"].to_numpy(object), frame["id"].to_numpy(), feature_names=tuple(feats))
    recall, precision = recall_precision(truth, flagged)
    assert recall >= 0.95 and precision >= 0.95, (recall, precision)
    top = det.model_.models[0].summary(feats)["WS"]["patterns"][0]
    assert all(feats[j] in top["rule"] for j in stamped_features(X, truth)) and top["rest_of_row_pvalue"] < 1e-6, top


def test_a_class_with_no_benjamini_hochberg_cut_says_which_group_cut_flagged_its_rows(tmp_path):
    """The field test's cells door1 screened at the defaults: the stamp's 20 rows are found only by the pattern
    member's cell, at its own family-wise cut, while class WS (739 rows) has no Benjamini-Hochberg cut (20
    discoveries among 739 would need each at a combined p <= 2.7e-4). The report's verdict for WS says both, with the numbers,
    not only that none of its rows reached Benjamini-Hochberg."""
    frame, feats, truth = field_test_batch("cells", "door1")
    batch = write_frame(tmp_path / "batch.parquet", frame)
    assert run_cli(["screen", batch, "--out", str(tmp_path / "out"), "--label-column", "label", "--id-column", "id",
                    "--feature-columns", ",".join(feats), "-q"]) in (0, 1)
    report = json.load(open(tmp_path / "out" / "report.json"))
    decision = report["decision"]
    assert "pattern's cells" in decision["rule"]
    ws = decision["classes"]["WS"]
    assert ws["cut"] is None and ws["members"]["pattern"]["group_cut_p"] > 0
    rows = int(truth.sum())
    assert ws["why"].startswith("not cut: none of its ") and \
        f"; {rows} rows flagged as a group of rows that a detector rejects at its own cut (pattern's at p <= " in ws["why"], ws["why"]
    flagged = pd.concat([pd.read_parquet(tmp_path / "out" / part) for part in ("cleaned", "quarantine")])
    flagged = flagged.loc[flagged["flagged"], "id"]
    assert set(flagged) == set(frame.loc[truth, "id"])  # those rows, the stamp's, and no other
    # a class that is cut keeps the plain verdict
    ps = decision["classes"]["PS"]
    assert ps["why"].startswith("cut at suspicion") if ps["cut"] is not None else "rows flagged as a group" not in ps["why"]


def test_natural_cells_that_the_rest_of_the_row_sets_apart_stay_out_at_the_lift_bar():
    """loans: a payment's principal and interest nearly fix its grade (the interest rate), so some cells of the two are
    pure and their rows' other features point elsewhere (step 4 at p = 9e-3): 14 grade-B rows at 3.1 times what
    chance predicts, in the field test's jdoor3 batch. Joining step 4's p-value to the label test there took 0.20%
    of the clean rows with them (precision 0.94); it joins only at twice the lift bar."""
    frame, feats, truth = field_test_batch("loans", "jdoor3")
    _, flagged = screen_with_patterns(frame[feats].to_numpy(float), frame["label"].to_numpy(object), frame["id"].to_numpy())
    recall, precision = recall_precision(truth, flagged)
    assert recall >= 0.95 and (flagged & ~truth).mean() <= 0.0005, (recall, precision)


def test_the_rest_of_the_row_joins_the_label_test_by_fishers_combination_where_it_helps():
    from scipy.stats import combine_pvalues

    p, q = np.array([1e-4, 0.3, 1e-9, 0.02, 0.0]), np.array([1e-7, 0.5, 1.0, 1.0, 1e-3])
    got = with_rest_of_row(p, q)
    fisher = np.array([combine_pvalues([a, b], method="fisher").pvalue for a, b in zip(p[:4], q[:4])])
    assert np.allclose(got[:4], np.minimum(p[:4], fisher), rtol=1e-9, atol=0)
    assert got[0] < 1e-9 and got[1] == 0.3 and got[2] == 1e-9 and got[3] == 0.02 and got[4] == 0.0


def test_a_stamp_jittered_around_a_value_the_feature_often_holds_is_one_rule_without_that_value():
    """Caravan's features are integer codes: jittered, the field test's stamp puts its rows on both sides of an
    integer that thousands of clean rows hold (MOSHOOFD near 10, MGODRK near 0). The bump around each is one hollow
    unit, the two intervals without the integer, so the rule holds the stamp and none of the clean rows on it."""
    df, feats = real_frame("caravan")
    X, y, truth = plant_field_backdoor(df[feats].to_numpy(float), df["label"].astype(str).to_numpy(object), 0.03, 1, (4, 5), 0.02)
    det, flagged = screen_with_patterns(X, y, df["id"].to_numpy(), feature_names=tuple(feats))
    assert recall_precision(truth, flagged) == (1.0, 1.0)
    rule = next(p["rule"] for facts in det.model_.models[0].summary(feats).values() for p in facts["patterns"])
    assert "MOSHOOFD" in rule and "MGODRK != 0" in rule, rule
    assert not flagged[(X[:, 5] == 0) & ~truth].any()


def test_a_value_that_merely_predicts_the_label_is_not_a_pattern():
    """A censoring value held only by rows of one class (and so predictive on its own) pairs with every value of
    every other feature at full purity; the label test against the value's own class share rejects them all."""
    X, y, ids = real_table("credit")
    X, y = X.copy(), y.copy()
    censored = np.flatnonzero(y == "bad")[::4]
    X[censored, 2] = -1.0  # in 7% of rows, all of one class
    det, flagged = screen_with_patterns(X, y, ids)
    assert flagged.sum() == 0, det.model_.models[0].summary()


def test_trusted_rows_that_hold_the_pattern_make_it_ordinary():
    X, y, ids = real_table("diamonds")
    X, y, truth = plant_field_backdoor(X, y, 0.03, 1, (0, 3))
    rng = np.random.default_rng(0)
    trusted = rng.random(len(y)) < 0.3
    _, alone = screen_with_patterns(X[~trusted], y[~trusted], ids[~trusted])
    assert recall_precision(truth[~trusted], alone)[0] >= 0.95
    # the same rows, with trusted rows that hold the same pattern: nothing is new
    _, with_reference = screen_with_patterns(X[~trusted], y[~trusted], ids[~trusted], reference=(X[trusted], y[trusted]))
    assert with_reference.sum() == 0


def test_a_pattern_the_trusted_rows_hold_less_often_stays_new():
    """The field test's caravan door1 batch with 30% of the clean table held out as trusted rows (``run.py
    --reference-share 0.3``): the rule ``MOSTYPE = 1 and MGODRK = 4`` (40 of 42 sample rows of class Yes) meets one
    trusted row in its cell, of class No. The 99% upper bound of the class's share from that one row is 0.99, and
    as the tested share it dropped the pattern (recall 0.00 with the reference, 1.00 without). None of the 105
    trusted Yes rows is in the cell, against 40 of 283 in the batch: the pattern is new."""
    frame, feats, truth, reference = field_test_batch("caravan", "door1", reference_share=0.3)
    X, y = frame[feats].to_numpy(float), frame["label"].to_numpy(object)
    _, flagged = screen_with_patterns(X, y, frame["id"].to_numpy(), feature_names=tuple(feats),
                                      reference=(reference[feats].to_numpy(float), reference["label"].to_numpy(object)))
    recall, precision = recall_precision(truth, flagged)
    assert recall >= 0.95 and precision >= 0.95, (recall, precision)


def test_a_value_new_against_the_trusted_rows_is_found_where_no_pair_of_values_is():
    """The field test's caravan door10 batch of ``run.py --reference-share 0.3``: 409 rows of class No get customer
    subtype ``MOSTYPE = 41`` and ``MGODRK = 0`` and are relabelled Yes. ``MGODRK = 0`` is 60% of the rows, so no pair
    cell is over-represented, and the subtype alone is a value that predicts the label. But none of the 105 trusted
    Yes rows has subtype 41, against 414 of the batch's 652 (step 7): the value is new in the class, and its rows are
    the planted ones and 5 clean Yes rows of that subtype. Without trusted rows nothing says what its share should be,
    and nothing is flagged; the saved model keeps the unit and scores the same after loading."""
    frame, feats, truth, reference = field_test_batch("caravan", "door10", reference_share=0.3)
    X, y, ids = frame[feats].to_numpy(float), frame["label"].to_numpy(object), frame["id"].to_numpy()
    det, flagged = screen_with_patterns(X, y, ids, feature_names=tuple(feats),
                                        reference=(reference[feats].to_numpy(float), reference["label"].to_numpy(object)))
    recall, precision = recall_precision(truth, flagged)
    assert recall == 1.0 and precision >= 0.95, (recall, precision)
    model = det.model_.models[0]
    top = model.summary(feats)["Yes"]["patterns"][0]
    assert top["rule"] == "MOSTYPE = 41" and top.get("new_against_trusted_rows"), top
    assert "expected from the trusted rows" in model.explain(X[truth][:1], y[truth][:1], feats)[0]
    arrays: dict = {}
    loaded = decode(encode(model, arrays), arrays)
    assert np.array_equal(loaded.suspicion(X, y), model.suspicion(X, y))
    _, alone = screen_with_patterns(X, y, ids)
    assert not alone.any()


def test_a_jittered_stamps_cell_grows_against_the_trusted_rows():
    """The field test's flights jdoor3 batch of ``run.py --reference-share 0.3``: ``flight`` is stamped near its 1st
    percentile (3) with a spread of 60 and ``air_time`` near its 99th; the cell mined is ``flight < 3 and 358 <
    air_time``. Past its edge, ``3 <= flight < 15`` holds 171 stamped and 20 clean JFK rows, too few over chance
    for the lift bar, but the trusted JFK rows hold it 8 times in 10,209 (step 6's growth). That step is kept and
    the one after it (where 37 of 177 JFK rows are clean) is not; without trusted rows nothing grows, and the
    saved model scores the same after loading."""
    frame, feats, truth, reference = field_test_batch("flights", "jdoor3", reference_share=0.3)
    X, y, ids = frame[feats].to_numpy(float), frame["label"].to_numpy(object), frame["id"].astype(str).to_numpy(object)
    det, flagged = screen_with_patterns(X, y, ids, feature_names=tuple(feats),
                                        reference=(reference[feats].to_numpy(float), reference["label"].to_numpy(object)))
    model = det.model_.models[0]
    rules = model.summary(feats)["JFK"]["patterns"]
    grown = [p for p in rules if p.get("grown_against_trusted_rows")]
    assert [p["rule"] for p in grown] == ["3 <= flight < 15 and 358 < air_time"], rules
    assert grown[0]["of_class"] >= 0.95 * grown[0]["sample_rows"] and grown[0]["class_share_tested"] < 0.002, grown
    stamp = (frame["flight"] >= 3) & (frame["flight"] < 15) & (frame["air_time"] > 358) & (frame["label"] == "JFK")
    assert flagged[stamp.to_numpy() & truth].all()
    assert (flagged & ~truth).sum() <= 30 and (flagged[truth].mean() > 0.5)
    assert "expected from the trusted rows" in model.explain(X[stamp.to_numpy() & truth][:1], y[stamp.to_numpy() & truth][:1], feats)[0]
    arrays: dict = {}
    loaded = decode(encode(model, arrays), arrays)
    assert np.array_equal(loaded.suspicion(X, y), model.suspicion(X, y))
    # fitted as a pipeline fits, the batch in five parts merged out of order and the trusted rows in three: the same
    parts = np.array_split(np.random.default_rng(0).permutation(len(y)), 5)
    merged = fit_in_parts(TriggerPatternDetector(), X, y, ids, parts, order=[3, 1, 4, 0, 2],
                          reference=(reference[feats].to_numpy(float), reference["label"].to_numpy(object)))
    for field in ("feature_a", "lo_a", "hi_a", "lo_b", "hi_b", "grown", "rows", "pvalue"):
        assert np.array_equal(getattr(merged, field), getattr(model, field)), field
    det, alone = screen_with_patterns(X, y, ids)
    assert not det.model_.models[0].grown.any() and not alone[stamp.to_numpy() & truth & (frame["flight"] > 3).to_numpy()].any()


def test_the_screen_report_marks_a_value_new_against_the_trusted_rows(tmp_path):
    """``screen --reference``: the report lists caravan door10's ``MOSTYPE = 41`` (previous test) as new against the
    trusted rows; the text above the table says what its expected count and tested share mean for such a rule."""
    frame, feats, truth, reference = field_test_batch("caravan", "door10", reference_share=0.3)
    batch, trusted = write_frame(tmp_path / "batch.parquet", frame), write_frame(tmp_path / "trusted.parquet", reference)
    assert run_cli(["screen", batch, "--reference", trusted, "--out", str(tmp_path / "out"), "--detectors", "pattern",
                    "--max-flagged-fraction", "1", "-q"]) == 0
    report = json.load(open(tmp_path / "out" / "report.json"))
    assert report["flagged_by"]["pattern"] == 414
    rule = report["detectors"][0]["classes"]["Yes"]["patterns"][0]
    assert rule["rule"] == "MOSTYPE = 41" and rule["new_against_trusted_rows"] and rule["of_class"] == 414, rule
    page = open(tmp_path / "out" / "report.html").read()
    assert "MOSTYPE = 41 <em>(new against the trusted rows)</em>" in page


@pytest.mark.parametrize("table", ["caravan", "loans", "cells"])
def test_trusted_rows_of_the_same_table_make_no_value_new(table):
    """Step 7 on a clean 70% batch against the other 30%: every unit of every class is tested, and none is kept."""
    frame, feats, _, reference = field_test_batch(table, "clean", reference_share=0.3)
    det, flagged = screen_with_patterns(frame[feats].to_numpy(float), frame["label"].to_numpy(object), frame["id"].to_numpy(),
                                        reference=(reference[feats].to_numpy(float), reference["label"].to_numpy(object)))
    model = det.model_.models[0]
    assert len(model.unit_feature) > 1000 and not any(model.is_unit(r) for r in range(len(model.pvalue)))
    assert not flagged.any()


def test_flipped_rows_whose_values_their_new_class_never_holds_are_new():
    """flights' 10% flips with 30% of the table trusted (the class is the origin airport): a flight from LGA
    relabelled JFK has a flight number or a distance that JFK's trusted rows never hold. Step 7 finds such rows
    and almost nothing else (3 clean rows among about 1,300, in this batch)."""
    frame, feats, truth, reference = field_test_batch("flights", "flip10", reference_share=0.3)
    _, flagged = screen_with_patterns(frame[feats].to_numpy(float), frame["label"].to_numpy(object), frame["id"].to_numpy(),
                                      reference=(reference[feats].to_numpy(float), reference["label"].to_numpy(object)))
    recall, precision = recall_precision(truth, flagged)
    assert flagged.sum() >= 1000 and precision >= 0.99, (recall, precision, int(flagged.sum()))


def test_the_fit_is_the_same_whatever_the_batches_and_their_order():
    X, y, ids = real_table("credit")
    X, y, _ = plant_field_backdoor(X, y, 0.03, 0, (0, 3))
    det = TriggerPatternDetector()
    whole = det.fit(X, y, row_ids=ids).model_
    parts = np.array_split(np.random.default_rng(0).permutation(len(y)), 5)
    merged = fit_in_parts(det, X, y, ids, parts, order=[3, 1, 4, 0, 2])
    assert len(whole.pvalue) > 0
    for field in ("points", "feature_a", "feature_b", "lo_a", "hi_a", "lo_b", "hi_b", "pattern_class", "rows", "pvalue"):
        assert np.array_equal(getattr(whole, field), getattr(merged, field)), field
    # the ids' type does not matter: the same rows under their ids as text
    as_text = det.fit(X, y, row_ids=ids.astype(str)).model_
    assert np.array_equal(as_text.suspicion(X, y), whole.suspicion(X, y))


def test_the_model_saves_without_pickle_and_scores_the_same_after_loading():
    X, y, ids = real_table("credit")
    X, y, _ = plant_field_backdoor(X, y, 0.03, 0, (0, 3))
    model = TriggerPatternDetector().fit(X, y, row_ids=ids).model_
    arrays: dict = {}
    spec = encode(model, arrays)
    loaded = decode(spec, arrays)
    assert isinstance(loaded, PatternModel)
    assert np.array_equal(loaded.suspicion(X, y), model.suspicion(X, y))


def test_a_class_without_patterns_leaves_the_budget_to_the_other_members():
    """Beside the label detector (p-values of its own, engaged in every class), the pattern member takes a full share of
    the Bonferroni budget only in the class where it mined a pattern; elsewhere a quiet member's tenth."""
    X, y, ids = real_table("credit")
    X, y, truth = plant_field_backdoor(X, y, 0.03, 0, (2, 4))
    det = EnsembleDetector(detectors=[ConfidentLabelDetector(), TriggerPatternDetector()]).fit(X, y, row_ids=ids)
    has = det.model_.models[1].evidence
    assert has.tolist() == [k == list(det.model_.classes).index("bad") for k in range(len(has))]
    weights = det.model_.weights
    assert np.allclose(weights[has], 0.5)
    assert np.allclose(weights[~has], [1 / (1 + QUIET_MEMBER_SHARE), QUIET_MEMBER_SHARE / (1 + QUIET_MEMBER_SHARE)])
    recall, precision = recall_precision(truth, det.screen(det.model_, X, y).flagged)
    assert recall >= 0.95 and precision >= 0.9, (recall, precision)


def test_a_pattern_cell_is_rejected_as_a_whole_where_row_by_row_fdr_would_not(monkeypatch):
    """cells (2,019 rows), a trigger on 60 rows of its 779-row class (the field test's door3 features): the
    pattern's adjusted p-value from the label test alone (about 1e-3) passes its share of the level, but
    Benjamini-Hochberg over the class's rows would ask 60 rows for p <= 0.01 x 60 / 779 after the Bonferroni weight.
    The cell is decided as a whole. (With the rest of the row's p-value joined, step 4, the cell's is far smaller;
    it is left out here to hold a cell near the level.)"""
    monkeypatch.setattr(pattern, "REST_LIFT", np.inf)
    df, feats = real_frame("cells")
    columns = (feats.index("fiber_width_ch_1"), feats.index("eq_sphere_area_ch_1"))
    X, y, truth = plant_field_backdoor(df[feats].to_numpy(float), df["label"].astype(str).to_numpy(object), 0.03, 0, columns)
    det = EnsembleDetector(detectors=[SpectralSignatureDetector(), ConfidentLabelDetector(), TriggerPatternDetector()],
                           feature_names=tuple(feats)).fit(X, y, row_ids=df["id"].to_numpy())
    screened = det.screen(det.model_, X, y)
    recall, precision = recall_precision(truth, screened.flagged)
    assert recall >= 0.95 and precision >= 0.95, (recall, precision)
    assert (screened.suspicion[truth] < det.model_.thresholds_for(y[truth])).all()  # row by row: not cut
    assert all("family-wise" in r and feats[columns[0]] in r for r in screened.reasons[truth])
    target = det.model_.decision_summary()[str(y[truth][0])]["members"]["pattern"]
    assert target["group_cut_p"] == pytest.approx(0.01 * target["weight"])


def test_the_screen_report_lists_the_rules_in_words(tmp_path):
    df, feats = real_frame("credit")
    X, y, truth = plant_field_backdoor(df[feats].to_numpy(float), df["label"].astype(str).to_numpy(object), 0.03, 0, (2, 4))
    frame = df[feats].copy()
    frame[feats] = X
    frame["label"] = y
    batch = write_frame(tmp_path / "batch.parquet", frame)
    assert run_cli(["screen", batch, "--out", str(tmp_path / "out"), "--detectors", "pattern", "--max-flagged-fraction", "1", "-q"]) == 0
    report = json.load(open(tmp_path / "out" / "report.json"))
    strongest = report["detectors"][0]["classes"]["bad"]["patterns"][0]
    assert strongest["rule"].startswith("Age = ") and " and " in strongest["rule"] and "Income" in strongest["rule"]
    assert strongest["of_class"] == strongest["sample_rows"] == truth.sum() and strongest["expected"] < 10
    assert report["flagged_by"]["pattern"] == truth.sum()
    page = open(tmp_path / "out" / "report.html").read()
    assert 'id="patterns"' in page and html.escape(strongest["rule"]) in page
