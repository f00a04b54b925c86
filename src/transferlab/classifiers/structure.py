"""What a loaded head must be, exactly: its steps, its estimator, every index it will follow.

The allow-set (archive.py) says which types a file may build; this says how they fit
together. scikit-learn's compiled code walks a tree's child indices and a kNN head's labels
without bounds checks, and parameters such as a Pipeline's `memory` or `n_jobs` act at
prediction time: all of it is checked here, before the head predicts anything.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.calibration import CalibratedClassifierCV, _CalibratedClassifier, _SigmoidCalibration
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics._scorer import _PassthroughScorer
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.neural_network._stochastic_optimizers import AdamOptimizer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelBinarizer, StandardScaler
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier
from sklearn.tree._tree import Tree

from transferlab.classifiers.archive import Refused
from transferlab.classifiers.small_data import AdaptiveFolds
from transferlab.classifiers.ternary import TernaryDiscretizer

# Objects whose attributes are walked; anything else (a function, a type, a ufunc...) is refused.
_OBJECTS = frozenset({
    Pipeline, StandardScaler, TernaryDiscretizer, LogisticRegression, CalibratedClassifierCV,
    _CalibratedClassifier, _SigmoidCalibration, LinearSVC, RandomForestClassifier, DecisionTreeClassifier,
    KNeighborsClassifier, MLPClassifier, AdamOptimizer, LabelBinarizer, GridSearchCV, _PassthroughScorer,
    AdaptiveFolds, StratifiedKFold,
})
_LEAVES = frozenset({type(None), bool, int, float, str, np.float64, np.float32, np.int64, np.int32, np.bool_,
                     np.random.RandomState, Tree})  # a Tree is checked with its forest


def _refuse(where: str, why: str) -> None:
    raise Refused(f"{where}: {why}")


def _array(value) -> None:
    """An ndarray of numbers; an object array only holds values walked in turn."""
    if value.dtype.fields is not None or value.dtype.kind not in "biufO":
        raise Refused(f"an array of dtype {str(value.dtype)!a}")


def _children(value) -> list:
    kind = type(value)
    if kind in (list, tuple):
        return list(value)
    if kind is dict:
        if not all(type(key) is str for key in value):
            raise Refused("a dict with non-string keys")
        return list(value.values())
    if kind in (np.ndarray, np.ma.MaskedArray):
        _array(value)
        if kind is np.ma.MaskedArray:
            return [np.asarray(value.data), np.ma.getmaskarray(value)]
        return list(value.ravel()) if value.dtype.kind == "O" else []
    if kind in _OBJECTS:
        n_jobs = getattr(value, "n_jobs", None)
        if n_jobs is not None and not (type(n_jobs) is int and n_jobs in (-1, 1)):
            raise Refused(f"{kind.__name__} with n_jobs={n_jobs!a}")  # joblib would start that many
        return list(vars(value).values())
    if kind in _LEAVES:
        return []
    raise Refused(f"holds a {kind.__module__ + '.' + kind.__qualname__!a}, which a head never holds")


def check_objects(head) -> None:
    """Every object reachable from `head` is a head's estimator, a number, a string or an array."""
    # `seen` holds the objects, not only their ids: a temporary (a masked array's data) freed
    # after its visit would hand its id to the next one, which would then go unchecked.
    stack, seen = [head], {}
    while stack:
        value = stack.pop()
        if id(value) not in seen:
            seen[id(value)] = value
            stack.extend(_children(value))


def _finite(where: str, *arrays) -> None:
    for array in arrays:
        if not isinstance(array, np.ndarray) or array.dtype.kind != "f" or not np.isfinite(array).all():
            _refuse(where, "fitted parameters that are not finite numbers")


def _shape(where: str, array, shape: tuple) -> None:
    if not isinstance(array, np.ndarray) or array.shape != shape:
        _refuse(where, f"an array of shape {getattr(array, 'shape', None)} where {shape} belongs")


def _classes(where: str, estimator) -> np.ndarray:
    classes = getattr(estimator, "classes_", None)
    if (not isinstance(classes, np.ndarray) or classes.ndim != 1 or classes.dtype.kind not in "iu"
            or len(classes) < 2 or np.any(np.diff(classes) <= 0)):
        _refuse(where, "classes_ is not a sorted array of two or more class indices")
    return classes


def _linear(where: str, model, n_features: int, classes: np.ndarray) -> None:
    rows = 1 if len(classes) == 2 else len(classes)
    _shape(where, model.coef_, (rows, n_features))
    _shape(where, model.intercept_, (rows,))
    _finite(where, model.coef_, model.intercept_)


def _check_logreg(where: str, model, n_features: int, classes: np.ndarray) -> None:
    _linear(where, model, n_features, classes)


def _check_calibrated(where: str, model, n_features: int, classes: np.ndarray) -> None:
    folds = model.calibrated_classifiers_
    if model.method != "sigmoid" or type(model.estimator) is not LinearSVC or type(folds) is not list or not folds:
        _refuse(where, "not a sigmoid-calibrated linear SVM")
    for fold in folds:
        if type(fold) is not _CalibratedClassifier or type(fold.estimator) is not LinearSVC:
            _refuse(where, "a calibrated fold that is not a linear SVM")
        if fold.method != "sigmoid" or not np.array_equal(fold.classes, classes):
            _refuse(where, "a calibrated fold over other classes")
        if not np.array_equal(_classes(where, fold.estimator), classes):
            _refuse(where, "a calibrated fold over other classes")
        _linear(where, fold.estimator, n_features, classes)
        calibrators = fold.calibrators
        if type(calibrators) is not list or len(calibrators) != (1 if len(classes) == 2 else len(classes)):
            _refuse(where, "a calibrated fold with the wrong number of calibrators")
        for sigmoid in calibrators:
            if type(sigmoid) is not _SigmoidCalibration or not all(
                    type(v) in (float, np.float64) and np.isfinite(v) for v in (sigmoid.a_, sigmoid.b_)):
                _refuse(where, "a calibrator that is not a fitted sigmoid")


def check_tree(where: str, tree, n_features: int, n_classes: int) -> None:
    """Indices a prediction follows, in range, each child after its parent: no loop, no stray read."""
    if type(tree) is not Tree or tree.n_outputs != 1 or tree.n_features != n_features:
        _refuse(where, "not a single-output tree over the head's features")
    if tree.max_n_classes != n_classes or not 0 < tree.node_count <= tree.capacity:
        _refuse(where, "a tree whose node or class counts do not match")
    count = tree.node_count  # read only once node_count <= capacity: the arrays are views of that memory
    left, right, feature = tree.children_left, tree.children_right, tree.feature
    node = np.arange(count)
    leaf = left == -1
    inner = ~leaf
    if np.any(right[leaf] != -1):
        _refuse(where, "a tree leaf with a child")
    for child in (left[inner], right[inner]):
        if np.any(child <= node[inner]) or np.any(child >= count):
            _refuse(where, "a tree node whose child is out of range or not after it")
    if np.any(feature[inner] < 0) or np.any(feature[inner] >= n_features):
        _refuse(where, "a tree node testing a feature out of range")
    _finite(where, tree.threshold[inner])
    _shape(where, tree.value, (count, 1, n_classes))


def _check_forest(where: str, model, n_features: int, classes: np.ndarray) -> None:
    trees = model.estimators_
    if type(trees) is not list or not trees or model.n_outputs_ != 1 or model.n_classes_ != len(classes):
        _refuse(where, "not a fitted single-output forest")
    for index, tree in enumerate(trees):
        here = f"{where}.estimators_[{index}]"
        if type(tree) is not DecisionTreeClassifier or tree.n_outputs_ != 1 or tree.n_classes_ != len(classes):
            _refuse(here, "not a fitted decision tree over the forest's classes")
        if tree.n_features_in_ != n_features:
            _refuse(here, "a tree over other features")
        check_tree(here + ".tree_", tree.tree_, n_features, len(classes))


def _check_knn(where: str, model, n_features: int, classes: np.ndarray) -> None:
    # Brute force only: a KDTree/BallTree's index arrays are never bounds-checked.
    if model._fit_method != "brute" or getattr(model, "_tree", None) is not None:
        _refuse(where, "a kNN head with a search tree (transferlab heads search by brute force)")
    if (model.metric, model.p, model.metric_params, model.effective_metric_) != ("minkowski", 2, None, "euclidean") \
            or model.effective_metric_params_ != {} or model.weights not in ("uniform", "distance"):
        _refuse(where, "a kNN head with another metric or weighting")
    n_samples = model.n_samples_fit_
    if model.outputs_2d_ or type(n_samples) is not int or type(model.n_neighbors) is not int \
            or not 1 <= model.n_neighbors <= n_samples:
        _refuse(where, "a kNN head with an impossible number of neighbours")
    _shape(where, model._fit_X, (n_samples, n_features))
    _finite(where, model._fit_X)
    labels = model._y
    _shape(where, labels, (n_samples,))
    if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= len(classes):
        _refuse(where, "a kNN head whose labels are not class indices")


def _check_mlp(where: str, model, n_features: int, classes: np.ndarray) -> None:
    if model.activation not in ("identity", "logistic", "tanh", "relu"):
        _refuse(where, f"an MLP with activation {model.activation!a}")
    outputs = 1 if len(classes) == 2 else len(classes)
    if model.out_activation_ != ("logistic" if outputs == 1 else "softmax") or model.n_outputs_ != outputs:
        _refuse(where, "an MLP whose output layer does not match its classes")
    weights, biases = model.coefs_, model.intercepts_
    if type(weights) is not list or type(biases) is not list or not weights or len(weights) != len(biases) \
            or model.n_layers_ != len(weights) + 1:
        _refuse(where, "an MLP whose layers do not match")
    width = n_features  # each layer's input is the previous layer's output
    for weight, bias in zip(weights, biases):
        if not isinstance(weight, np.ndarray) or weight.ndim != 2 or weight.shape[0] != width:
            _refuse(where, "an MLP whose layers do not chain")
        width = weight.shape[1]
        _shape(where, bias, (width,))
        _finite(where, weight, bias)
    if width != outputs or type(model._label_binarizer) is not LabelBinarizer \
            or not np.array_equal(model._label_binarizer.classes_, classes):
        _refuse(where, "an MLP whose output layer does not match its classes")


def _check_search(where: str, model, n_features: int, classes: np.ndarray) -> None:
    best = model.best_estimator_
    if model.refit is not True or type(best) is not type(model.estimator) or type(best) is GridSearchCV:
        _refuse(where, "a grid search without a refitted head of its estimator's type")
    check_estimator(f"{where}.best_estimator_", best, n_features)


_CHECKS: dict[type, Callable] = {
    LogisticRegression: _check_logreg, CalibratedClassifierCV: _check_calibrated,
    RandomForestClassifier: _check_forest, KNeighborsClassifier: _check_knn, MLPClassifier: _check_mlp,
    GridSearchCV: _check_search,
}


def check_estimator(where: str, model, n_features: int) -> None:
    check = _CHECKS.get(type(model))
    if check is None:
        _refuse(where, f"a {type(model).__name__!a} is not a transferlab head's estimator")
    if getattr(model, "n_features_in_", None) != n_features:
        _refuse(where, "fitted on another number of features than the scaler")
    check(where, model, n_features, _classes(where, model))


def _check_scaling(step: str, model, n_features: int) -> None:
    if type(model) is StandardScaler and not (model.with_mean is True and model.with_std is True):
        _refuse(step, "a scaler that does not centre and scale")
    if type(model) is TernaryDiscretizer:
        _finite(step, np.array([model.low, model.high], dtype=float))
    _shape(step, model.mean_, (n_features,))
    _shape(step, model.scale_, (n_features,))
    _finite(step, model.mean_, model.scale_)
    if np.any(model.scale_ <= 0):
        _refuse(step, "a zero or negative scale")


def _is_head_layout(steps) -> bool:
    if type(steps) is not list or len(steps) < 2 or not all(type(s) is tuple and len(s) == 2 for s in steps):
        return False
    kinds = [(name, type(step)) for name, step in steps]
    return (kinds[0] == ("scale", StandardScaler) and kinds[1:-1] in ([], [("ternary", TernaryDiscretizer)])
            and kinds[-1][0] == "classifier")


def check_head(head) -> None:
    """`head` is scale -> [ternary] -> classifier as `build_classifier` makes it, or raises Refused."""
    if type(head) is not Pipeline:
        raise Refused(f"holds a {type(head).__name__!a}, not a classifier pipeline")
    check_objects(head)
    steps = head.steps
    if not _is_head_layout(steps):
        raise Refused("not a transferlab head (scale -> [ternary] -> classifier)")
    if head.memory is not None or getattr(head, "transform_input", None) is not None or head.verbose is not False:
        raise Refused("a pipeline with a cache, input routing or logging (memory, transform_input, verbose)")
    n_features = steps[0][1].n_features_in_
    if type(n_features) is not int or n_features < 1:
        raise Refused("scale: no fitted number of features")
    for name, step in steps[:-1]:
        if getattr(step, "n_features_in_", None) != n_features:
            _refuse(name, "fitted on another number of features than the scaler")
        _check_scaling(name, step, n_features)
    check_estimator("classifier", steps[-1][1], n_features)
