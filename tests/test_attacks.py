"""Attacks: one table of every attack, then behaviour, exact ground truth, determinism, validation, no mutation.

Behavioural figures (logistic regression on standardised features, 70/30 split, seeds
fixed) are asserted with floors below what was measured; the measured values are in the
comments next to each floor.
"""

import dataclasses
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from attack_data import (
    LABEL,
    PIXELS,
    SYNTH_FEATURES,
    apply_in_batches,
    digits_table,
    fit,
    make_table,
    prepare,
    profile_of,
    sort_by_id,
    split,
    synth_table,
)

from poisonguard.schemas import ATTACK, ORIGINAL_LABEL, POISONED, ConfigError
from poisonguard.simulators import (
    ATTACKS,
    Backdoor,
    CleanLabel,
    DataProfile,
    DuplicateFlip,
    FeatureNoise,
    Inject,
    LabelFlip,
    SmallestHashes,
    TabularBackdoor,
    apply_attacks,
    count_cutoff,
    make_attack,
)
from poisonguard.simulators.base import feature_matrix

PATCH = {"patch": {"pattern": "checkerboard", "size": 3, "position": "bottom_right", "value": 16}, "image_shape": [8, 8]}
PATCH_COLUMNS = {f"p{r * 8 + c}" for r in range(5, 8) for c in range(5, 8)}
BLEND = {"blend": {"pattern": "random", "alpha": 0.2}, "image_shape": [8, 8]}

# id -> (attack, data, columns an existing poisoned row may differ in, count for the count-mode variant)
CASES = {
    "label_flip_random": (LabelFlip(mode="random", rate=0.2), "synth", {LABEL}, 40),
    "label_flip_targeted": (LabelFlip(mode="targeted", source=0, target=2, rate=0.3), "synth", {LABEL}, 40),
    "label_flip_noise_matrix": (LabelFlip(mode="noise_matrix", matrix={0: {1: 0.2, 2: 0.1}, 1: {0: 0.3, 1: 0.7}}),
                                "synth", {LABEL}, None),
    "label_flip_boundary": (LabelFlip(mode="boundary", rate=0.1), "synth", {LABEL}, 40),
    "label_flip_boundary_nearest": (LabelFlip(mode="boundary", order="nearest", rate=0.1), "synth", {LABEL}, 40),
    "backdoor_features": (Backdoor(trigger={"features": {"x0": 9.0, "x1": -9.0}}, target=1, rate=0.05), "synth",
                          {LABEL, "x0", "x1"}, 40),
    "backdoor_quantiles": (Backdoor(trigger={"quantiles": {"x2": 0.99}}, target=1, source=0, rate=0.1), "synth",
                           {LABEL, "x2"}, 40),
    "backdoor_patch": (Backdoor(trigger=PATCH, target=0, rate=0.05), "digits", {LABEL} | PATCH_COLUMNS, 40),
    "backdoor_blend": (Backdoor(trigger=BLEND, target=0, rate=0.05), "digits", {LABEL, *PIXELS}, 40),
    "clean_label_patch": (CleanLabel(trigger=PATCH, target=0, rate=0.3), "digits", PATCH_COLUMNS, 40),
    "clean_label_quantiles": (CleanLabel(trigger={"quantiles": {"x3": 0.95, "x4": 0.05}}, target=2, rate=0.2), "synth",
                              {"x3", "x4"}, 40),
    "inject_far": (Inject(distance=8.0, label=0, rate=0.03), "synth", set(), 40),
    "inject_edge": (Inject(placement="edge", direction="per_row", rate=0.03), "synth", set(), 40),
    "duplicate_flip": (DuplicateFlip(rate=0.05), "synth", set(), 40),
    "duplicate_flip_target": (DuplicateFlip(target=1, source=2, rate=0.05), "synth", set(), 40),
    "feature_noise": (FeatureNoise(scale=2.0, columns=["x0", "x2"], rate=0.1), "synth", {"x0", "x2"}, 40),
}


def data(name):
    return (synth_table(), SYNTH_FEATURES) if name == "synth" else (digits_table(), PIXELS)


def run(attack, name, seed=0):
    table, columns = data(name)
    return apply_attacks(table, [attack], seed=seed, label_column=LABEL, feature_columns=columns)


def count_variant(attack, count):
    return dataclasses.replace(attack, rate=None, count=count)


def test_every_kind_is_registered_and_described():
    assert set(ATTACKS) == {"label_flip", "backdoor", "clean_label", "inject", "duplicate_flip", "feature_noise"}
    assert {type(a).kind for a, *_ in CASES.values()} == set(ATTACKS)
    for kind, cls in ATTACKS.items():
        assert cls.summary() and not cls.summary().startswith("Base")
        rows = cls.describe()
        assert [r[0] for r in rows] == [f.name for f in dataclasses.fields(cls)]
        assert all(meaning for *_, meaning in rows), kind
    assert dict((r[0], r[2]) for r in Backdoor.describe())["trigger"] == "required"
    assert make_attack({"kind": "label_flip", "mode": "targeted", "source": 0, "target": 1, "count": 3}) == \
        LabelFlip(mode="targeted", source=0, target=1, count=3)


# --------------------------------------------------------------------------- 1. behaviour


def _triggered(attack, X, train, columns):
    """X with the attack's trigger, as resolved on the training data, stamped on every row."""
    prepared = prepare(attack, train, columns)
    out = X.copy()
    for r in prepared.resolved:
        idx = [columns.index(c) for c in r.columns]
        out[:, idx] = r.apply(out[:, idx])
    return out


def _attack_success(attack, dataset):
    """(attack success rate, same for a clean model, poisoned-model clean accuracy, clean accuracy)."""
    Xtr, Xte, ytr, yte, columns = split(dataset)
    train = make_table(Xtr, ytr, columns)
    poisoned = apply_attacks(train, [attack], seed=0, label_column=LABEL, feature_columns=columns).table
    clean_model, bad_model = fit(train, columns), fit(poisoned, columns)
    others = yte != attack.target
    Xt = _triggered(attack, Xte[others], train, columns)
    return ((bad_model.predict(Xt) == attack.target).mean(), (clean_model.predict(Xt) == attack.target).mean(),
            bad_model.score(Xte, yte), clean_model.score(Xte, yte))


CANCER_TRIGGER = ["mean texture", "worst symmetry", "mean fractal dimension"]


@pytest.mark.parametrize("attack, dataset", [
    # measured: ASR 0.86 (clean model 0.03), accuracy 0.959 -> 0.953
    (Backdoor(trigger={"quantiles": {c: 0.99 for c in CANCER_TRIGGER}}, target=1, rate=0.1), "cancer"),
    # measured: ASR 0.99 (clean model 0.00), accuracy 0.972 -> 0.969
    (Backdoor(trigger=PATCH, target=0, rate=0.05), "digits"),
    # measured: ASR 1.00 (clean model 0.00), accuracy 0.972 -> 0.967
    (Backdoor(trigger=BLEND, target=0, rate=0.05), "digits"),
], ids=["cancer-quantiles", "digits-patch", "digits-blend"])
def test_dirty_label_backdoor_is_learned(attack, dataset):
    asr, asr_clean, acc, acc_clean = _attack_success(attack, dataset)
    assert asr >= 0.8 and asr_clean <= 0.1
    assert acc >= acc_clean - 0.05  # stealthy: clean accuracy barely moves


@pytest.mark.parametrize("attack, dataset, floor", [
    # Naive clean-label (no adversarial perturbation of the target rows) is weak, as in
    # Turner et al. 2019. measured: trigger at the data's max on half the benign rows ->
    # ASR 0.19 vs 0.00 for a clean model (a 3x3 patch on 30% of the '0' digits: 0.008).
    (CleanLabel(trigger={"features": {"mean texture": 39.28, "worst symmetry": 0.6638, "mean fractal dimension": 0.09744}},
                target=1, rate=0.5), "cancer", 0.10),
    # measured: a blended random pattern on every '0' digit -> ASR 0.88 vs 0.00, accuracy 0.972 -> 0.872.
    (CleanLabel(trigger=BLEND, target=0, rate=1.0), "digits", 0.6),
], ids=["cancer-features", "digits-blend-all"])
def test_clean_label_backdoor_shifts_triggered_predictions(attack, dataset, floor):
    asr, asr_clean, _, _ = _attack_success(attack, dataset)
    assert asr >= floor and asr_clean <= 0.05


@pytest.fixture(scope="module")
def flip_accuracies():
    """Test accuracy of a model trained on digits with 30% of labels flipped, per mode."""
    Xtr, Xte, ytr, yte, columns = split("digits")
    train = make_table(Xtr, ytr, columns)
    acc = {"clean": fit(train, columns).score(Xte, yte)}
    for mode, order in [("random", None), ("boundary", "farthest"), ("boundary", "nearest")]:
        attack = LabelFlip(mode=mode, order=order, rate=0.3)
        poisoned = apply_attacks(train, [attack], seed=0, label_column=LABEL, feature_columns=columns).table
        acc[f"{mode}-{order}" if order else mode] = fit(poisoned, columns).score(Xte, yte)
    return acc


def test_random_flips_lower_accuracy(flip_accuracies):
    # measured: 0.972 clean -> 0.880 with 30% random flips
    assert flip_accuracies["clean"] - flip_accuracies["random"] >= 0.04


def test_boundary_flips_hurt_more_than_random(flip_accuracies):
    # measured: farthest-first 0.744 vs random 0.880; nearest-first 0.869 (about random's drop, stated in the docs)
    drop = {k: flip_accuracies["clean"] - v for k, v in flip_accuracies.items()}
    assert drop["boundary-farthest"] >= 2 * drop["random"]
    assert drop["boundary-nearest"] > 0


def test_duplicate_flips_lower_accuracy():
    # measured on digits: 0.972 clean -> 0.922 with 30% flipped duplicates
    Xtr, Xte, ytr, yte, columns = split("digits")
    train = make_table(Xtr, ytr, columns)
    poisoned = apply_attacks(train, [DuplicateFlip(rate=0.3)], seed=0, label_column=LABEL, feature_columns=columns).table
    assert poisoned.num_rows > train.num_rows
    assert fit(train, columns).score(Xte, yte) - fit(poisoned, columns).score(Xte, yte) >= 0.03


def test_injected_rows_sit_where_configured():
    table, columns = synth_table(), SYNTH_FEATURES
    profile = profile_of(table, columns)
    sd = np.array([profile.robust_scale(c) for c in columns])
    far = run(Inject(distance=8.0, rate=0.05), "synth").table
    n = table.num_rows
    src = feature_matrix(table, columns)[[int(r.split(":r")[1]) for r in far.column("row_id").to_pylist()[n:]]]
    moved = (feature_matrix(far, columns)[n:] - src) / sd
    np.testing.assert_allclose(np.linalg.norm(moved, axis=1), 8.0)
    assert np.allclose(moved, moved[0])  # one shared direction: a cluster
    edge = run(Inject(placement="edge", direction="per_row", rate=0.05), "synth").table
    X = feature_matrix(edge, columns)[n:]
    lo, hi = feature_matrix(table, columns).min(axis=0), feature_matrix(table, columns).max(axis=0)
    assert np.all((X == lo) | (X == hi)) and len({tuple(r) for r in X}) > 4


def test_far_injection_changes_the_model():
    # On cancer, 10% rows moved 5 robust sd along one direction and labelled malignant:
    # measured: the clean model calls 53% of them malignant, the poisoned one 100%, and the
    # (unstandardised) coefficient vector turns (cosine 0.88). Test accuracy does not move
    # (0.959 -> 0.959): against logistic regression this is a model-shaping, not an
    # availability, attack at this rate.
    Xtr, Xte, ytr, yte, columns = split("cancer")
    train = make_table(Xtr, ytr, columns)
    poisoned = apply_attacks(train, [Inject(distance=5.0, label=0, rate=0.1)], seed=0, label_column=LABEL,
                             feature_columns=columns).table
    clean, bad = fit(train, columns), fit(poisoned, columns)
    X_injected = feature_matrix(poisoned, columns)[train.num_rows:]
    assert (bad.predict(X_injected) == 0).mean() >= 0.95 and (clean.predict(X_injected) == 0).mean() <= 0.7
    w_clean, w_bad = (m[-1].coef_.ravel() / m[0].scale_ for m in (clean, bad))
    assert w_clean @ w_bad / np.linalg.norm(w_clean) / np.linalg.norm(w_bad) < 0.95


def test_feature_noise_has_the_configured_scale():
    table, columns = synth_table(), SYNTH_FEATURES
    result = run(FeatureNoise(scale=2.0, columns=["x0", "x2"], rate=0.5), "synth")
    profile = profile_of(table, columns)
    diff = feature_matrix(result.table, columns) - feature_matrix(table, columns)
    z = diff[result.mask][:, [0, 2]] / [profile.robust_scale("x0"), profile.robust_scale("x2")]
    assert np.all(diff[:, [1, 3, 4]] == 0) and np.all(diff[~result.mask] == 0)
    assert abs(z.mean()) < 0.15 and 1.85 < z.std() < 2.15  # measured mean -0.04, sd 1.93 over 1514 rows x 2 columns


# --------------------------------------------------------------------------- 2. exact ground truth


@pytest.mark.parametrize("case", CASES)
def test_exactly_the_ground_truth_changes(case):
    attack, name, touched_columns, _ = CASES[case]
    table, _ = data(name)
    result = run(attack, name)
    out, n = result.table, table.num_rows
    assert out.column_names == table.column_names + [POISONED, ATTACK, ORIGINAL_LABEL]
    assert out.schema.field(ORIGINAL_LABEL).type == table.schema.field(LABEL).type
    assert all(out.schema.field(c).type == table.schema.field(c).type for c in table.column_names)
    np.testing.assert_array_equal(result.mask, out.column(POISONED).to_numpy())
    head = out.slice(0, n)
    mask = head.column(POISONED).to_numpy()
    assert head.column(ORIGINAL_LABEL).equals(table.column(LABEL))
    assert head.filter(~mask).select(table.column_names).equals(table.filter(~mask))
    assert set(head.column(ATTACK).to_pylist()) <= {"", attack.name}
    assert (np.array(head.column(ATTACK).to_pylist()) == attack.name).tolist() == mask.tolist()
    changed = {c for c in table.column_names if not head.column(c).equals(table.column(c))}
    assert changed <= touched_columns
    assert result.touched == mask.sum() and result.injected == out.num_rows - n
    if touched_columns:
        assert result.touched > 0 and result.injected == 0
        if LABEL in touched_columns and attack.kind != "label_flip":
            assert pc.all(pc.equal(head.filter(mask).column(LABEL), attack.target)).as_py()
        if attack.kind == "label_flip":
            poisoned_rows = head.filter(mask)
            assert not pc.any(pc.equal(poisoned_rows.column(LABEL), poisoned_rows.column(ORIGINAL_LABEL))).as_py()
    else:
        assert result.touched == 0 and result.injected > 0 and not mask.any()
        tail = out.slice(n)
        ids = tail.column("row_id").to_pylist()
        assert len(set(ids)) == len(ids) and not set(ids) & set(table.column("row_id").to_pylist())
        assert all(i.startswith(f"{attack.name}:") for i in ids)
        assert tail.column(POISONED).to_numpy().all() and set(tail.column(ATTACK).to_pylist()) == {attack.name}
        sources = table.take([int(i.split(":r")[1]) for i in ids])
        assert tail.column(ORIGINAL_LABEL).equals(sources.column(LABEL))
        assert tail.column("note").equals(sources.column("note"))
        if attack.kind == "duplicate_flip":
            assert tail.select(SYNTH_FEATURES).equals(sources.select(SYNTH_FEATURES))
            assert not pc.any(pc.equal(tail.column(LABEL), sources.column(LABEL))).as_py()


def test_chained_attacks_keep_the_earliest_truth():
    table = synth_table()
    first, second = LabelFlip(mode="random", rate=0.3), Backdoor(trigger={"features": {"x0": 9.0}}, target=1, rate=0.5)
    result = apply_attacks(table, [first, second], seed=0, label_column=LABEL, feature_columns=SYNTH_FEATURES)
    alone = run(first, "synth").table
    attack = np.array(result.table.column(ATTACK).to_pylist())
    assert result.table.column(ORIGINAL_LABEL).equals(table.column(LABEL))
    assert (attack == first.name).tolist() == alone.column(POISONED).to_numpy().tolist()  # never re-selected
    assert (attack == second.name).sum() == result.touched - (attack == first.name).sum() > 0
    with pytest.raises(ConfigError, match="attacks.name"):
        apply_attacks(table, [first, first], seed=0, label_column=LABEL, feature_columns=SYNTH_FEATURES)


def test_tabular_backdoor_alias_keeps_working():
    table = synth_table()
    old = TabularBackdoor(trigger={"x0": 9.0}, target=1, source=0, count=12, seed=7)
    new = apply_attacks(table, [Backdoor(trigger={"features": {"x0": 9.0}}, target=1, source=0, count=12)], seed=7,
                        label_column=LABEL, feature_columns=SYNTH_FEATURES)
    result = old(table)
    assert result.table.equals(new.table) and result.mask.sum() == 12 and list(old.trigger) == ["x0"]
    pickle.loads(pickle.dumps(old))


def test_string_labels():
    table = synth_table()
    names = np.array(["cat", "dog", "eel"])[table.column(LABEL).to_numpy()]
    table = table.set_column(1, LABEL, pa.array(names))
    for attack in (LabelFlip(mode="random", rate=0.2), DuplicateFlip(count=9), LabelFlip(mode="boundary", count=9)):
        out = apply_attacks(table, [attack], seed=0, label_column=LABEL, feature_columns=SYNTH_FEATURES).table
        assert out.schema.field(LABEL).type == pa.string() and set(out.column(LABEL).to_pylist()) == {"cat", "dog", "eel"}


# --------------------------------------------------------------------------- 3. determinism


@pytest.mark.parametrize("mode", ["rate", "count"])
@pytest.mark.parametrize("case", CASES)
def test_batches_equal_the_whole_table(case, mode):
    attack, name, _, count = CASES[case]
    if mode == "count":
        if count is None:
            pytest.skip("noise_matrix takes its rates from the matrix")
        attack = count_variant(attack, count)
    table, columns = data(name)
    prepared = prepare(attack, table, columns)
    prepared = pickle.loads(pickle.dumps(prepared))  # what a Beam worker gets
    whole = prepared.apply(table)
    if mode == "count":
        assert whole.touched + whole.injected == count
    expected = sort_by_id(whole.table)
    for i, size in enumerate((1000, 257, 64)):
        assert sort_by_id(apply_in_batches(prepared, table, size, shuffle_seed=i)).equals(expected), size


def test_profile_is_order_and_batch_independent():
    table = synth_table()
    whole = profile_of(table, SYNTH_FEATURES, sample_size=500)
    parts = [DataProfile.empty(label_column=LABEL, feature_columns=SYNTH_FEATURES, seed=0, sample_size=500)
             .add_table(table.slice(i, 333)) for i in range(0, table.num_rows, 333)]
    for order in ([*range(len(parts))], [*reversed(range(len(parts)))], np.random.default_rng(1).permutation(len(parts))):
        merged = DataProfile.empty(label_column=LABEL, feature_columns=SYNTH_FEATURES, seed=0, sample_size=500)
        for i in order:
            merged.merge(pickle.loads(pickle.dumps(parts[i])))
        for a, b in zip(merged.sample(), whole.sample()):
            np.testing.assert_array_equal(a, b)
        assert (merged.classes, merged.class_counts, merged.n_rows) == (whole.classes, whole.class_counts, whole.n_rows)
        assert merged.feature_min == whole.feature_min and merged.feature_max == whole.feature_max
        assert merged.quantile("x1", 0.9) == whole.quantile("x1", 0.9)
    assert whole.n_rows == 3000 and len(whole.sample()[0]) == 500


@pytest.mark.parametrize("case", [c for c in CASES if "boundary" not in c])
def test_seeds_change_the_rows(case):
    # boundary mode ranks by the surrogate's margin: the seed only breaks ties.
    attack, name, *_ = CASES[case]
    a, b = run(attack, name, seed=0).table, run(attack, name, seed=1).table
    assert not a.column("row_id").equals(b.column("row_id")) or not a.column(POISONED).equals(b.column(POISONED))


@pytest.mark.parametrize("case", [c for c in CASES if c != "label_flip_noise_matrix"])
def test_rates_are_honoured(case):
    attack, name, *_ = CASES[case]
    table, columns = data(name)
    prepared = prepare(attack, table, columns)
    n_eligible = prepared.eligible(table).sum()
    result = prepared.apply(table)
    hit = result.touched + result.injected
    sd = np.sqrt(n_eligible * attack.rate * (1 - attack.rate))
    assert abs(hit - n_eligible * attack.rate) <= 4 * sd + 1, (hit, n_eligible, attack.rate)


def test_noise_matrix_rates_are_honoured():
    table = synth_table(n=20000, seed=1)
    out = run_table = apply_attacks(table, [CASES["label_flip_noise_matrix"][0]], seed=0, label_column=LABEL,
                                    feature_columns=SYNTH_FEATURES).table
    old, new = run_table.column(ORIGINAL_LABEL).to_numpy(), out.column(LABEL).to_numpy()
    for src, row in {0: {1: 0.2, 2: 0.1}, 1: {0: 0.3}, 2: {}}.items():
        n = (old == src).sum()
        for dst in {0, 1, 2} - {src}:
            p = row.get(dst, 0.0)
            got = ((old == src) & (new == dst)).sum()
            assert abs(got - n * p) <= 4 * np.sqrt(n * p * (1 - p)) + 1, (src, dst, got, n * p)


def test_count_cutoff_and_smallest_hashes():
    h = np.random.default_rng(0).integers(0, 2**63, 1000, dtype=np.uint64)
    assert count_cutoff(h, 10) == np.sort(h)[9]
    acc = SmallestHashes(10)
    for part in np.array_split(h, 7):
        acc.merge(SmallestHashes(10).add(part))
    assert acc.cutoff() == np.sort(h)[9] and acc.seen == 1000
    with pytest.raises(ConfigError, match="flip.count: 1001 rows asked but only 1000"):
        count_cutoff(h, 1001, name="flip")
    with pytest.raises(ConfigError, match="flip.count"):
        SmallestHashes(5, name="flip").add(h[:3]).cutoff()


# --------------------------------------------------------------------------- 4. validation


@pytest.mark.parametrize("build, key", [
    (lambda: LabelFlip(rate=1.5), "label_flip.rate: expected a fraction in (0, 1], got 1.5"),
    (lambda: LabelFlip(rate=0), "label_flip.rate"),
    (lambda: LabelFlip(rate=True), "label_flip.rate"),
    (lambda: LabelFlip(), "label_flip.rate: give exactly one"),
    (lambda: LabelFlip(rate=0.1, count=3), "label_flip.rate: give exactly one"),
    (lambda: LabelFlip(count=0), "label_flip.count"),
    (lambda: LabelFlip(count=2.5), "label_flip.count"),
    (lambda: LabelFlip(rate=0.1, name=3), "label_flip.name"),
    (lambda: LabelFlip(mode="sideways", rate=0.1), "label_flip.mode"),
    (lambda: LabelFlip(mode="targeted", source=0, rate=0.1), "label_flip.target"),
    (lambda: LabelFlip(mode="targeted", source=1, target=1, rate=0.1), "label_flip.target"),
    (lambda: LabelFlip(mode="random", target=1, rate=0.1), "label_flip.target"),
    (lambda: LabelFlip(mode="noise_matrix", matrix={0: {1: 1.2}}), "label_flip.matrix"),
    (lambda: LabelFlip(mode="noise_matrix", matrix={0: {1: 0.6, 2: 0.6}}), "label_flip.matrix"),
    (lambda: LabelFlip(mode="noise_matrix", matrix={0: {0: 0.5, 1: 0.2}}), "label_flip.matrix"),
    (lambda: LabelFlip(mode="noise_matrix", matrix=[0.1]), "label_flip.matrix"),
    (lambda: LabelFlip(mode="noise_matrix", matrix={0: {1: 0.1}}, rate=0.1), "label_flip.rate"),
    (lambda: LabelFlip(mode="random", matrix={0: {1: 0.1}}, rate=0.1), "label_flip.matrix"),
    (lambda: LabelFlip(mode="random", order="nearest", rate=0.1), "label_flip.order"),
    (lambda: LabelFlip(mode="boundary", order="middle", rate=0.1), "label_flip.order"),
    (lambda: Backdoor(target=1, rate=0.1), "backdoor.trigger"),
    (lambda: Backdoor(trigger={"features": {"x0": 1}}, rate=0.1), "backdoor.target"),
    (lambda: Backdoor(trigger={"features": {"x0": 1}}, source=1, target=1, rate=0.1), "backdoor.source"),
    (lambda: Backdoor(trigger={"features": {}}, target=1, rate=0.1), "backdoor.trigger.features"),
    (lambda: Backdoor(trigger={"features": {"x0": "high"}}, target=1, rate=0.1), "backdoor.trigger.features['x0']"),
    (lambda: Backdoor(trigger={"quantiles": {"x0": 1.5}}, target=1, rate=0.1), "backdoor.trigger.quantiles['x0']"),
    (lambda: Backdoor(trigger={"features": {"x0": 1}, "quantiles": {"x1": 0.5}}, target=1, rate=0.1),
     "backdoor.trigger: expected exactly one"),
    (lambda: Backdoor(trigger="x0", target=1, rate=0.1), "backdoor.trigger"),
    (lambda: Backdoor(trigger={"patch": {}}, target=1, rate=0.1), "backdoor.trigger.image_shape"),
    (lambda: Backdoor(trigger={"patch": {}, "image_shape": [8]}, target=1, rate=0.1), "backdoor.trigger.image_shape"),
    (lambda: Backdoor(trigger={"patch": {"size": 9}, "image_shape": [8, 8]}, target=1, rate=0.1),
     "backdoor.trigger.patch.size"),
    (lambda: Backdoor(trigger={"patch": {"position": "middle"}, "image_shape": [8, 8]}, target=1, rate=0.1),
     "backdoor.trigger.patch.position"),
    (lambda: Backdoor(trigger={"patch": {"position": [7, 7]}, "image_shape": [8, 8]}, target=1, rate=0.1),
     "backdoor.trigger.patch.position"),
    (lambda: Backdoor(trigger={"patch": {"pattern": "stripes"}, "image_shape": [8, 8]}, target=1, rate=0.1),
     "backdoor.trigger.patch.pattern"),
    (lambda: Backdoor(trigger={"patch": {"alpha": 0.5}, "image_shape": [8, 8]}, target=1, rate=0.1),
     "backdoor.trigger.patch: unknown options ['alpha']"),
    (lambda: Backdoor(trigger={"blend": {"alpha": 1.5}, "image_shape": [8, 8]}, target=1, rate=0.1),
     "backdoor.trigger.blend.alpha"),
    (lambda: Backdoor(trigger={"blend": {}, "image_shape": [8, 8], "colour": 1}, target=1, rate=0.1),
     "backdoor.trigger: unknown keys ['colour']"),
    (lambda: CleanLabel(trigger={"features": {"x0": 1}}, rate=0.1), "clean_label.target"),
    (lambda: Inject(placement="middle", rate=0.1), "inject.placement"),
    (lambda: Inject(distance=-1, rate=0.1), "inject.distance"),
    (lambda: Inject(direction="up", rate=0.1), "inject.direction"),
    (lambda: DuplicateFlip(source=1, target=1, rate=0.1), "duplicate_flip.target"),
    (lambda: FeatureNoise(scale=0, rate=0.1), "feature_noise.scale"),
    (lambda: FeatureNoise(columns="x0", rate=0.1), "feature_noise.columns"),
    (lambda: make_attack({"kind": "nope"}), "attack.kind"),
    (lambda: make_attack({"kind": "label_flip", "rte": 0.1}), "label_flip.rte: unknown field"),
])
def test_bad_fields_name_themselves(build, key):
    with pytest.raises(ConfigError) as err:
        build()
    assert str(err.value).startswith(key), str(err.value)


@pytest.mark.parametrize("attack, key", [
    (Backdoor(trigger={"features": {"x0": 1}}, target=7, rate=0.1), "backdoor.target: 7 is not a class"),
    (Backdoor(trigger={"features": {"nope": 1}}, target=1, rate=0.1), "backdoor.trigger.features: ['nope']"),
    (Backdoor(trigger={"patch": {}, "image_shape": [8, 8]}, target=1, rate=0.1), "backdoor.trigger.image_shape"),
    (LabelFlip(mode="targeted", source=0, target=1, count=100000), "label_flip_targeted.count: 100000 rows asked"),
    (LabelFlip(mode="noise_matrix", matrix={0: {5: 0.1}}), "label_flip.matrix: 5 is not a class"),
    (FeatureNoise(columns=["nope"], rate=0.1), "feature_noise.columns"),
    (DuplicateFlip(target="zebra", rate=0.1), "duplicate_flip.target"),
])
def test_bad_fields_against_the_data(attack, key):
    with pytest.raises(ConfigError) as err:
        run(attack, "synth")
    assert str(err.value).startswith(key), str(err.value)


def test_data_problems_are_config_errors():
    table = synth_table()
    with pytest.raises(ConfigError, match="inject: injected rows get string row ids"):
        int_ids = table.set_column(0, "row_id", pa.array(np.arange(table.num_rows)))
        apply_attacks(int_ids, [Inject(rate=0.1)], seed=0, label_column=LABEL, feature_columns=SYNTH_FEATURES)
    one_class = table.filter(pc.equal(table.column(LABEL), 0))
    with pytest.raises(ConfigError, match="label_flip.mode: label flipping needs at least 2 classes"):
        apply_attacks(one_class, [LabelFlip(rate=0.1)], seed=0, label_column=LABEL, feature_columns=SYNTH_FEATURES)
    with pytest.raises(ConfigError, match="profile: the data has no column 'x9'"):
        apply_attacks(table, [LabelFlip(rate=0.1)], seed=0, label_column=LABEL, feature_columns=("x9",))


# --------------------------------------------------------------------------- 5. no mutation


@pytest.mark.parametrize("case", CASES)
def test_inputs_are_never_mutated(case):
    attack, name, *_ = CASES[case]
    source, columns = data(name)
    arrays = {c: source.column(c).to_numpy().copy() for c in (LABEL, *columns)}
    table = pa.table({"row_id": source.column("row_id"), **{c: pa.array(a) for c, a in arrays.items()}})
    assert np.shares_memory(table.column("x0" if name == "synth" else "p0").chunk(0).to_numpy(), arrays[columns[0]])
    copies = {c: a.copy() for c, a in arrays.items()}
    snapshot = pa.table({"row_id": source.column("row_id"), **{c: pa.array(a) for c, a in copies.items()}})
    result = apply_attacks(table, [attack], seed=0, label_column=LABEL, feature_columns=columns)
    apply_attacks(result.table, [LabelFlip(mode="random", rate=0.5, name="again")], seed=0, label_column=LABEL,
                  feature_columns=columns)
    for c, a in arrays.items():
        np.testing.assert_array_equal(a, copies[c])
    assert table.equals(snapshot)
