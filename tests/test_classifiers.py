"""Tests for `transferlab.classifiers`: every head on separable features, pickle-free persistence."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import skops.io
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from transferlab.classifiers.heads import (
    CLASSIFIERS,
    build_classifier,
    load_classifier,
    save_classifier,
)
from transferlab.classifiers.linear import fold_linear_head
from transferlab.classifiers.ternary import TernaryDiscretizer
from transferlab.errors import TransferlabError


class Doubler(TransformerMixin, BaseEstimator):
    """A harmless custom transformer: its type is outside sklearn/numpy/transferlab."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return np.asarray(X) * 2


def blobs(n_per_class: int, n_classes: int = 3, dim: int = 16, seed: int = 0, spread: float = 1.0):
    """Gaussian clusters far apart along their own axes, plus an offset and scale per feature."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((n_classes, dim))
    for c in range(n_classes):
        centres[c, c] = 6.0
    X = np.concatenate([centres[c] + spread * rng.normal(size=(n_per_class, dim)) for c in range(n_classes)])
    y = np.repeat(np.arange(n_classes), n_per_class)
    order = rng.permutation(len(y))
    X = X[order] * np.linspace(0.5, 20, dim) + 100.0  # unscaled features: the scaler matters
    return X.astype(np.float32), y[order]


@pytest.fixture(scope="module")
def data():
    X_train, y_train = blobs(40, seed=0)
    X_test, y_test = blobs(30, seed=1)
    return X_train, y_train, X_test, y_test


@pytest.fixture(scope="module")
def fitted(data):
    X_train, y_train, _, _ = data
    return {name: build_classifier(name, seed=0).fit(X_train, y_train) for name in CLASSIFIERS}


def accuracy(model, X, y) -> float:
    return float((model.predict(X) == y).mean())


# --- building and fitting -----------------------------------------------------------------


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_head_fits_separable_features(fitted, data, name):
    _, _, X_test, y_test = data
    model = fitted[name]
    assert isinstance(model, Pipeline)
    assert [step for step, _ in model.steps] == ["scale", "classifier"]
    assert accuracy(model, X_test, y_test) > 0.9
    proba = model.predict_proba(X_test)
    assert proba.shape == (len(y_test), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert np.array_equal(model.classes_[np.argmax(proba, axis=1)], model.predict(X_test))


@pytest.mark.parametrize("name", ["random_forest", "mlp"])
def test_heads_are_seeded(fitted, data, name):
    X_train, y_train, X_test, _ = data
    again = build_classifier(name, seed=0).fit(X_train, y_train)  # `fitted` used seed 0 too
    assert np.array_equal(again.predict_proba(X_test), fitted[name].predict_proba(X_test))


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_save_load_round_trip(fitted, data, tmp_path, name):
    _, _, X_test, _ = data
    path = tmp_path / f"{name} head (1).skops"
    save_classifier(fitted[name], path)
    assert path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    loaded = load_classifier(path)
    assert isinstance(loaded, Pipeline)
    assert np.array_equal(loaded.predict_proba(X_test), fitted[name].predict_proba(X_test))
    assert np.array_equal(loaded.predict(X_test), fitted[name].predict(X_test))


def test_ternary_pipeline(data, tmp_path):
    X_train, y_train, X_test, y_test = data
    model = build_classifier("logreg", ternary=True).fit(X_train, y_train)
    assert [step for step, _ in model.steps] == ["scale", "ternary", "classifier"]
    assert isinstance(model.named_steps["ternary"], TernaryDiscretizer)
    discretised = model[:-1].transform(X_test)
    assert discretised.shape == X_test.shape
    values = set(np.unique(discretised).tolist())
    assert values <= {-1.0, 0.0, 1.0}
    assert len(values) == 3  # all three levels are used on these features
    assert accuracy(model, X_test, y_test) > 0.9
    # Our own transformer is trusted when loading.
    path = tmp_path / "ternary.skops"
    save_classifier(model, path)
    loaded = load_classifier(path)
    assert np.array_equal(loaded.predict_proba(X_test), model.predict_proba(X_test))


def test_ternary_discretizer_thresholds():
    X = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]], dtype=np.float32)  # z = -1.41 .. 1.41
    t = TernaryDiscretizer(low=-0.5, high=0.5).fit(X)
    assert t.transform(X).ravel().tolist() == [-1.0, -1.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        t.transform(np.zeros((2, 3), dtype=np.float32))  # wrong number of features


@pytest.fixture(scope="module")
def grid_logreg(data):
    X_train, y_train, _, _ = data
    return build_classifier("logreg", grid=True).fit(X_train, y_train)


@pytest.mark.parametrize("name", ["logreg", "knn"])
def test_grid_search(data, grid_logreg, name):
    X_train, y_train, X_test, y_test = data
    model = grid_logreg if name == "logreg" else build_classifier(name, grid=True).fit(X_train, y_train)
    search = model.named_steps["classifier"]
    assert isinstance(search, GridSearchCV)
    assert hasattr(search, "best_params_") and search.best_params_
    assert accuracy(model, X_test, y_test) > 0.9
    assert model.predict_proba(X_test).shape == (len(y_test), 3)


def test_grid_logreg_searches_c(grid_logreg):
    search = grid_logreg.named_steps["classifier"]
    assert search.best_params_["C"] in (0.01, 0.03, 0.1, 0.3, 1.0)
    assert len(search.cv_results_["params"]) == 5


def test_unknown_classifier():
    with pytest.raises(TransferlabError) as info:
        build_classifier("xgboost")
    assert "xgboost" in str(info.value)
    for name in CLASSIFIERS:
        assert name in str(info.value)


# --- loading safety -----------------------------------------------------------------------


def test_load_refuses_custom_type(data, tmp_path):
    X_train, y_train, _, _ = data
    pipeline = Pipeline([("double", Doubler()), ("scale", StandardScaler()), ("classifier", build_classifier())])
    pipeline.fit(X_train, y_train)
    path = tmp_path / "custom.skops"
    skops.io.dump(pipeline, path)
    with pytest.raises(TransferlabError) as info:
        load_classifier(path)
    assert "Doubler" in str(info.value)
    assert str(path) in str(info.value)


def test_load_refuses_builtin_functions(data, tmp_path):
    X_train, y_train, _, _ = data
    pipeline = Pipeline([("f", FunctionTransformer(func=builtins.eval)), ("classifier", build_classifier())])
    path = tmp_path / "eval.skops"
    skops.io.dump(pipeline, path)
    assert "builtins.eval" in skops.io.get_untrusted_types(file=path)
    with pytest.raises(TransferlabError):
        load_classifier(path)


def test_own_heads_need_no_builtins_trust(fitted, data, tmp_path):
    """Evidence for the bug above: the heads transferlab saves hold no 'builtins.' type."""
    X_train, y_train, _, _ = data
    models = dict(fitted)
    models["ternary"] = build_classifier("logreg", ternary=True).fit(X_train, y_train)
    for name, model in models.items():
        path = tmp_path / f"{name}.skops"
        save_classifier(model, path)
        untrusted = skops.io.get_untrusted_types(file=path)
        assert not [t for t in untrusted if t.startswith("builtins.")], name


def test_load_missing_file(tmp_path):
    path = tmp_path / "missing.skops"
    with pytest.raises(TransferlabError) as info:
        load_classifier(path)
    assert str(path) in str(info.value)


def test_load_folder_instead_of_file(tmp_path):
    with pytest.raises(TransferlabError):
        load_classifier(tmp_path)


def test_load_corrupt_file(fitted, tmp_path):
    path = tmp_path / "truncated.skops"
    save_classifier(fitted["logreg"], path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TransferlabError) as info:
        load_classifier(path)
    assert str(path) in str(info.value)


# --- folding a linear head ----------------------------------------------------------------


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_fold_multiclass_matches_predict_proba(fitted, data):
    _, _, X_test, _ = data
    weight, bias = fold_linear_head(fitted["logreg"], 3)
    assert weight.shape == (3, X_test.shape[1]) and bias.shape == (3,)
    folded = _softmax(X_test.astype(np.float64) @ weight.T.astype(np.float64) + bias)
    np.testing.assert_allclose(folded, fitted["logreg"].predict_proba(X_test), atol=1e-4)


def test_fold_binary_and_unseen_class(data):
    X_train, y_train, X_test, _ = data
    keep = y_train != 1
    labels = np.where(y_train[keep] == 2, 3, 0)  # classes 0 and 3 of 4; 1 and 2 never seen
    model = build_classifier("logreg").fit(X_train[keep], labels)
    weight, bias = fold_linear_head(model, 4)
    folded = _softmax(X_test.astype(np.float64) @ weight.T.astype(np.float64) + bias)
    expected = np.zeros((len(X_test), 4))
    expected[:, [0, 3]] = model.predict_proba(X_test)
    np.testing.assert_allclose(folded, expected, atol=1e-4)


def test_fold_grid_logreg(data, grid_logreg):
    _, _, X_test, _ = data
    model = grid_logreg
    weight, bias = fold_linear_head(model, 3)
    folded = _softmax(X_test.astype(np.float64) @ weight.T.astype(np.float64) + bias)
    np.testing.assert_allclose(folded, model.predict_proba(X_test), atol=1e-4)


@pytest.mark.parametrize("name", ["knn", "random_forest", "linear_svm"])
def test_fold_refuses_non_linear_heads(fitted, name):
    with pytest.raises(TransferlabError, match="logistic"):
        fold_linear_head(fitted[name], 3)


def test_fold_refuses_ternary(data):
    X_train, y_train, _, _ = data
    model = build_classifier("logreg", ternary=True).fit(X_train, y_train)
    with pytest.raises(TransferlabError):
        fold_linear_head(model, 3)


# --- the small-data regime ------------------------------------------------------------------


def _small(n_per_class: int, seed: int = 3):
    """What `--per-class N` leaves for training: N - 1 images per class (one goes to validation).

    Three features, all informative: standardising on a handful of images would blow pure
    noise features up to the size of the signal, and the test is about fitting, not that."""
    return blobs(n_per_class, dim=3, seed=seed)


@pytest.mark.parametrize("name, per_class, grid", [
    ("mlp", 2, False),  # --per-class 3: early stopping's 10% split cannot hold every class
    ("linear_svm", 1, False),  # --per-class 2: no fold for the calibration
    ("knn", 2, False),  # --per-class 3: 6 images, 7 neighbours asked
    ("logreg", 2, True),  # --per-class 3 --grid: 2-fold search
    ("knn", 2, True),
    ("mlp", 2, True),
    ("linear_svm", 2, True),  # a 2-fold search whose folds hold one image per class for the calibration
    ("random_forest", 1, False),
    ("logreg", 1, False),
    ("knn", 1, False),
    ("mlp", 1, False),
])
def test_heads_fit_and_predict_on_a_few_images_per_class(name, per_class, grid):
    X_train, y_train = _small(per_class)
    X_test, y_test = _small(30, seed=4)
    model = build_classifier(name, seed=0, grid=grid, labels=y_train).fit(X_train, y_train)
    proba = model.predict_proba(X_test)
    assert proba.shape == (len(X_test), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert accuracy(model, X_test, y_test) > 0.6  # chance is 1/3; far-apart clusters, found from 1-2 images


def test_small_data_adaptations_are_the_documented_ones():
    _, y = _small(2)
    assert build_classifier("knn", labels=y).named_steps["classifier"].n_neighbors == 6
    assert build_classifier("knn", labels=np.repeat([0, 1], 40)).named_steps["classifier"].n_neighbors == 7
    assert build_classifier("mlp", labels=y).named_steps["classifier"].early_stopping is False
    assert build_classifier("mlp", labels=np.repeat([0, 1], 10)).named_steps["classifier"].early_stopping is True
    knn_grid = build_classifier("knn", grid=True, labels=y).named_steps["classifier"]
    assert knn_grid.param_grid == {"n_neighbors": [3]}  # a 2-fold training part holds 3 images


def test_calibration_and_search_folds_follow_the_smallest_class():
    from transferlab.classifiers.small_data import AdaptiveFolds

    X = np.zeros((7, 2))
    y = np.array([0, 0, 0, 0, 1, 1, 2])
    with pytest.raises(TransferlabError, match="smallest class has 1"):
        AdaptiveFolds(3).get_n_splits(X, y)  # a search cannot validate on a class of one
    assert AdaptiveFolds(3, in_sample=True).get_n_splits(X, y) == 1
    assert [len(test) for _, test in AdaptiveFolds(3, in_sample=True).split(X, y)] == [7]
    y = np.array([0, 0, 0, 0, 0, 1, 1])  # smallest class: 2 images -> 2 folds
    assert len(list(AdaptiveFolds(3).split(X, y))) == AdaptiveFolds(3).get_n_splits(X, y) == 2
    y = np.repeat([0, 1], 6)
    assert len(list(AdaptiveFolds(3).split(np.zeros((12, 2)), y))) == 3


def test_grid_on_one_image_per_class_is_refused_up_front():
    _, y = _small(1)
    with pytest.raises(TransferlabError, match="--grid cross-validates") as info:
        build_classifier("logreg", grid=True, labels=y)
    assert "\n" not in str(info.value) and "has 1" in str(info.value)


def test_grid_without_labels_still_refuses_one_image_per_class_at_fit():
    X, y = _small(1)
    with pytest.raises(TransferlabError, match="at least 2 training images in every class"):
        build_classifier("logreg", grid=True).fit(X, y)


def test_small_data_heads_round_trip(tmp_path):
    X, y = _small(1)
    model = build_classifier("linear_svm", labels=y).fit(X, y)
    path = tmp_path / "svm.skops"
    save_classifier(model, path)
    assert np.array_equal(load_classifier(path).predict_proba(X), model.predict_proba(X))


# --- scikit-learn's own estimator checks ----------------------------------------------------

from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402


@parametrize_with_checks([TernaryDiscretizer()])
def test_ternary_discretizer_passes_sklearn_estimator_checks(estimator, check):
    # All pass; the one skip is sklearn's own (array-API input, only checked when
    # SCIPY_ARRAY_API is set), not a failure of the estimator.
    check(estimator)
