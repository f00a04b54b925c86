"""The ensemble math: mean / weighted / stack combinations, out-of-fold scoring, hostile cards."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from transferlab.errors import TransferlabError
from transferlab.classifiers import ensemble_fit as ef


def informative(rng: np.random.Generator, labels: np.ndarray, n_classes: int, boost: float) -> np.ndarray:
    """(n, C) Dirichlet probabilities leaning towards the true class by `boost`."""
    alpha = np.ones((labels.size, n_classes))
    alpha[np.arange(labels.size), labels] += boost
    return np.stack([rng.dirichlet(row) for row in alpha])


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return -float(np.mean(np.log(np.maximum(probs[np.arange(labels.size), labels], 1e-12))))


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probs.argmax(axis=1) == labels))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def test_mean_is_the_plain_average(rng):
    labels = rng.integers(0, 3, 20)
    probs = rng.dirichlet(np.ones(3), size=(3, 20))
    combination = ef.fit_combination("mean", probs, labels)
    np.testing.assert_allclose(combination.weights, [1 / 3] * 3)
    np.testing.assert_allclose(ef.combine(combination, probs), (probs[0] + probs[1] + probs[2]) / 3)
    oof, folds = ef.cross_validated("mean", probs, labels)
    assert folds == 0
    np.testing.assert_allclose(oof, probs.mean(axis=0))


def test_weighted_drops_a_noise_member_and_beats_the_mean(rng):
    labels = rng.integers(0, 4, 200)
    probs = np.stack([informative(rng, labels, 4, 6.0), rng.dirichlet(np.ones(4), size=200)])
    combination = ef.fit_combination("weighted", probs, labels)
    assert combination.weights[0] > 0.99
    assert np.all(combination.weights >= 0) and combination.weights.sum() == pytest.approx(1.0)
    mean = ef.fit_combination("mean", probs, labels)
    assert nll(ef.combine(combination, probs), labels) <= nll(ef.combine(mean, probs), labels)
    again = ef.fit_combination("weighted", probs, labels)
    np.testing.assert_array_equal(again.weights, combination.weights)  # deterministic


def test_stack_undoes_a_member_with_permuted_classes(rng):
    labels = rng.integers(0, 3, 300)
    # member 1 is the sharp one but names every class one column off: averaging follows its mistakes
    probs = np.stack([informative(rng, labels, 3, 2.0), np.roll(informative(rng, labels, 3, 20.0), 1, axis=1)])
    stacked, folds = ef.cross_validated("stack", probs, labels)
    averaged, _ = ef.cross_validated("mean", probs, labels)
    assert folds == 5
    assert accuracy(stacked, labels) > 0.9
    assert accuracy(averaged, labels) < accuracy(stacked, labels) - 0.5


def test_stack_inputs_layout_and_combine_match_a_hand_softmax(rng):
    n_members, n, n_classes = 3, 7, 4
    probs = rng.dirichlet(np.ones(n_classes), size=(n_members, n))
    probs[1, 2] = [1.0, 0.0, 0.0, 0.0]  # a hard zero: must hit the floor, not -inf
    features = ef.stack_inputs(probs)
    for image in range(n):
        for member in range(n_members):
            for cls in range(n_classes):
                expected = np.log(max(probs[member, image, cls], ef.STACK_FLOOR))
                assert features[image, member * n_classes + cls] == pytest.approx(expected)
    coef = rng.normal(size=(n_classes, n_members * n_classes))
    intercept = rng.normal(size=n_classes)
    combination = ef.Combination("stack", np.full(n_members, 1 / n_members), coef, intercept)
    logits = features @ coef.T + intercept
    hand = np.exp(logits - logits.max(axis=1, keepdims=True))
    hand /= hand.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ef.combine(combination, probs), hand, rtol=1e-12)


@pytest.mark.parametrize("present", [[0, 1, 2], [0, 2]])
def test_stack_matches_scikit_learn_on_the_present_classes(rng, present):
    labels = rng.choice(present, 60)
    probs = np.stack([informative(rng, labels, 3, 2.0), informative(rng, labels, 3, 1.0)])
    combination = ef.fit_combination("stack", probs, labels)
    model = LogisticRegression(C=1.0, max_iter=2000).fit(ef.stack_inputs(probs), labels)
    combined = ef.combine(combination, probs)
    np.testing.assert_allclose(combined[:, present], model.predict_proba(ef.stack_inputs(probs)), atol=1e-9)


@pytest.mark.parametrize("present", [[0, 1, 2], [1, 3], [2]])
def test_an_absent_class_keeps_its_column(rng, present):
    labels = rng.choice(present, 40)
    probs = np.stack([informative(rng, labels, 4, 3.0), informative(rng, labels, 4, 3.0)])
    combination = ef.fit_combination("stack", probs, labels)
    assert combination.coef.shape == (4, 8) and combination.intercept.shape == (4,)
    combined = ef.combine(combination, probs)
    assert combined.shape == (40, 4)
    np.testing.assert_allclose(combined.sum(axis=1), 1.0)
    absent = [cls for cls in range(4) if cls not in present]
    assert np.all(combined[:, absent] < 1e-100)


def test_cross_validation_never_scores_an_image_it_was_fitted_on(rng, monkeypatch):
    labels = rng.integers(0, 3, 45)
    probs = rng.dirichlet(np.ones(3), size=(2, 45))  # every row distinct: it names its image
    row_of = {probs[0, row].tobytes(): row for row in range(45)}
    fitted, scored = [], []
    real_fit, real_combine = ef.fit_combination, ef.combine

    def recording_fit(method, member_probs, fit_labels, seed=0):
        fitted.append({row_of[row.tobytes()] for row in member_probs[0]})
        return real_fit(method, member_probs, fit_labels, seed)

    def recording_combine(combination, member_probs):
        scored.append([row_of[row.tobytes()] for row in member_probs[0]])
        return real_combine(combination, member_probs)

    monkeypatch.setattr(ef, "fit_combination", recording_fit)
    monkeypatch.setattr(ef, "combine", recording_combine)
    _, folds = ef.cross_validated("weighted", probs, labels, folds=4)
    assert folds == 4 and len(fitted) == len(scored) == 4
    for fit_rows, score_rows in zip(fitted, scored):
        assert fit_rows.isdisjoint(score_rows)
    assert sorted(row for rows in scored for row in rows) == list(range(45))


def test_out_of_fold_is_honest_where_in_sample_flatters(rng):
    labels = rng.integers(0, 2, 40)
    probs = rng.dirichlet(np.full(2, 0.3), size=(10, 40))  # ten members of pure noise
    # Greedy selection picks the luckiest noise; scored on the images it picked on, that flatters.
    in_sample = accuracy(ef.combine(ef.fit_combination("select", probs, labels), probs), labels)
    out_of_fold = accuracy(ef.cross_validated("select", probs, labels)[0], labels)
    assert in_sample - out_of_fold > 0.1


def test_folds_shrink_to_the_rarest_class_and_refuse_below_two(rng):
    labels = np.array([0] * 10 + [1] * 3 + [2] * 10)
    probs = rng.dirichlet(np.ones(3), size=(2, labels.size))
    assert ef.cross_validated("stack", probs, labels)[1] == 3
    labels[10:13] = [1, 0, 0]  # class 1 now has a single image
    with pytest.raises(TransferlabError, match="use --method mean") as caught:
        ef.cross_validated("weighted", probs, labels)
    assert "\n" not in str(caught.value)
    with pytest.raises(TransferlabError, match="unknown ensemble method"):
        ef.fit_combination("median", probs, labels)


@pytest.mark.parametrize("method", ef.METHODS)
def test_combination_round_trips_through_json(rng, method):
    labels = rng.integers(0, 3, 30)
    probs = np.stack([informative(rng, labels, 3, 2.0), rng.dirichlet(np.ones(3), size=30)])
    combination = ef.fit_combination(method, probs, labels)
    back = ef.Combination.from_dict(json.loads(json.dumps(combination.to_dict())), 2, 3, "run/metrics.json")
    assert back.method == method
    np.testing.assert_array_equal(ef.combine(back, probs), ef.combine(combination, probs))


def _stack_card() -> dict:
    return {"method": "stack", "weights": [0.5, 0.5], "coef": [[0.0] * 4, [0.0] * 4], "intercept": [0.0, 0.0]}


def _with(**fields) -> dict:
    return {**_stack_card(), **fields}


@pytest.mark.parametrize(("data", "field"), [
    (_with(method="median"), "method"),
    (_with(method=5), "method"),
    ({"weights": [0.5, 0.5]}, "method"),
    (_with(weights=[1.0]), "weights"),
    (_with(weights=[float("nan"), 0.5]), "weights"),
    (_with(weights=[-0.5, 1.5]), "weights"),
    (_with(weights=[0.3, 0.3]), "weights"),
    (_with(weights=["0.5", "0.5"]), "weights"),
    (_with(weights=[True, False]), "weights"),
    (_with(weights=[10**400, 0]), "weights"),
    (_with(weights=None), "weights"),
    (_with(coef=[[0.0] * 3, [0.0] * 3]), "coef"),
    (_with(coef=[[0.0] * 4, [0.0] * 3]), "coef"),
    (_with(coef=[[0.0] * 4]), "coef"),
    (_with(coef=[[0.0] * 4, [0.0, float("inf"), 0.0, 0.0]]), "coef"),
    (_with(coef=[[[0.0]] * 4, [0.0] * 4]), "coef"),
    (_with(coef=None), "coef"),
    (_with(intercept=[0.0]), "intercept"),
    (_with(intercept=[0.0, float("-inf")]), "intercept"),
    (_with(intercept={"a": 1}), "intercept"),
    (_with(method="mean"), "coef"),
])
def test_from_dict_refuses_a_hostile_combination(data, field):
    with pytest.raises(TransferlabError) as caught:
        ef.Combination.from_dict(data, 2, 2, "runs/ens/metrics.json")
    message = str(caught.value)
    assert "\n" not in message and "runs/ens/metrics.json" in message and field in message


@pytest.mark.parametrize(("data", "members", "classes"), [
    ([1, 2], 2, 2),
    (_stack_card(), 10**6, 2),
    (_stack_card(), 2, 10**6),
    (_stack_card(), 256, 1000),  # within each bound, but the coefficients would not be
])
def test_from_dict_refuses_a_non_mapping_and_huge_sizes(data, members, classes):
    with pytest.raises(TransferlabError, match="runs/ens/card.json"):
        ef.Combination.from_dict(data, members, classes, "runs/ens/card.json")


def _probs_with(rng: np.random.Generator, change) -> tuple[object, np.ndarray]:
    probs = rng.dirichlet(np.ones(3), size=(2, 6))
    labels = np.array([0, 1, 2, 0, 1, 2])
    return change(probs, labels)


@pytest.mark.parametrize(("change", "match"), [
    (lambda p, y: ([p[0], p[1][:, :2] / p[1][:, :2].sum(1, keepdims=True)], y), "member 1"),
    (lambda p, y: (np.where(np.arange(3) == 1, np.nan, p), y), "finite"),
    (lambda p, y: (p[:1], y), "at least 2 members"),
    (lambda p, y: (p[0], y), "members, images, classes"),
    (lambda p, y: (p * 1.5, y), r"\[0, 1\]"),
    (lambda p, y: (p * 0.5, y), "sum to 1"),
    (lambda p, y: (p[..., :1] / p[..., :1], y), "classes >= 2"),
    (lambda p, y: (p, y.astype(float)), "integers"),
    (lambda p, y: (p, y[:5]), "integers"),
    (lambda p, y: (p, y + 1), r"\[0, 3\)"),
    (lambda p, y: (p, y - 1), r"\[0, 3\)"),
])
def test_check_member_probs_refuses_bad_input(rng, change, match):
    probs, labels = _probs_with(rng, change)
    with pytest.raises(TransferlabError, match=match) as caught:
        ef.check_member_probs(probs, labels)
    assert "\n" not in str(caught.value)


def test_members_may_come_as_a_list_of_arrays(rng):
    probs, labels = _probs_with(rng, lambda p, y: (p, y))
    ef.check_member_probs(list(probs), labels)
    from_list = ef.fit_combination("weighted", list(probs), labels)
    np.testing.assert_array_equal(from_list.weights, ef.fit_combination("weighted", probs, labels).weights)


def test_weighted_sharpens_an_underconfident_member(rng):
    """A label-smoothed network is right but unsure; the fit sharpens it (temperature > 1) rather
    than trading it for a confident, less accurate member, as plain likelihood weights did."""
    labels = rng.integers(0, 4, 400)
    accurate = informative(rng, labels, 4, 6.0)
    unsure = ef.tempered(accurate[None], np.array([0.25]))[0]  # same ranking, flattened
    confident = informative(rng, labels, 4, 2.0)
    combination = ef.fit_combination("weighted", np.stack([unsure, confident]), labels)
    assert combination.temperatures[0] > 1.5
    assert accuracy(ef.combine(combination, np.stack([unsure, confident])), labels) >= accuracy(confident, labels)


def test_select_leans_on_the_informative_member_and_weighs_in_twentieths(rng):
    labels = rng.integers(0, 3, 300)
    good, noise = informative(rng, labels, 3, 3.0), rng.dirichlet(np.ones(3), size=300)
    combination = ef.fit_combination("select", np.stack([noise, good]), labels)
    # It starts from the best member; noise is added only where it happens to fix a fitted image.
    assert combination.weights[1] >= 0.75
    weights = ef.fit_combination("select", np.stack([good, informative(rng, labels, 3, 3.0)]), labels).weights
    np.testing.assert_allclose(weights * ef.SELECT_ROUNDS, np.round(weights * ef.SELECT_ROUNDS))


@pytest.mark.parametrize("temperatures", [[0.0, 1.0], [1.0, 1e6], [1.0], ["1", 1.0], [float("nan"), 1.0]])
def test_from_dict_refuses_bad_temperatures(temperatures):
    with pytest.raises(TransferlabError, match="temperatures"):
        ef.Combination.from_dict({"method": "weighted", "weights": [0.5, 0.5], "temperatures": temperatures},
                                 2, 3, "card")


def test_the_cli_offers_exactly_the_methods_there_are():
    """The CLI keeps its own copy (it checks --method before importing scipy and scikit-learn)."""
    from transferlab.cli.ensemble_commands import METHODS

    assert METHODS == ef.METHODS


def test_the_cli_offers_exactly_the_scoring_engines_there_are():
    from transferlab.cli.ensemble_commands import ENGINES
    from transferlab.features.extract import ENGINES as EXTRACTION_ENGINES

    assert ENGINES == tuple(EXTRACTION_ENGINES)
