"""The classical heads: a factory of scikit-learn pipelines, and pickle-free persistence.

Every head is `StandardScaler -> [TernaryDiscretizer] -> estimator`, seeded, with
predict_proba (linear SVM is calibrated for it). `grid=True` wraps the estimator in a
small cross-validated search over its main regularisation parameter. Given the training
labels, a head adapts to classes of one to a few images (see `small_data`).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import skops.io
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from transferlab.atomic import atomic_path
from transferlab.classifiers.archive import Refused, check_archive, check_sizes
from transferlab.classifiers.names import CLASSIFIERS
from transferlab.classifiers.small_data import (
    AdaptiveFolds,
    TrainingSizes,
    check_grid,
    early_stopping,
    neighbours,
)
from transferlab.classifiers.structure import check_head
from transferlab.classifiers.ternary import TernaryDiscretizer
from transferlab.errors import TransferlabError, one_line

FOLDS = 3


def _logreg(seed: int, sizes: TrainingSizes | None):
    # C=0.1 on standardised multi-layer features: measured better than sklearn's C=1
    # on held-out data (benchmarks/probe_heritage.py), and converges faster.
    return LogisticRegression(C=0.1, max_iter=2000, random_state=seed)


def _linear_svm(seed: int, sizes: TrainingSizes | None):
    # Calibrated for predict_proba; with one image in a class, on the training images themselves.
    return CalibratedClassifierCV(LinearSVC(C=0.01, random_state=seed, max_iter=5000),
                                  cv=AdaptiveFolds(FOLDS, in_sample=True))


def _random_forest(seed: int, sizes: TrainingSizes | None):
    return RandomForestClassifier(n_estimators=300, n_jobs=-1, random_state=seed)


def _knn(seed: int, sizes: TrainingSizes | None):
    # Brute force: a saved KDTree/BallTree holds indices scikit-learn follows unchecked (and on
    # backbone features, hundreds of dimensions, "auto" picked brute force anyway).
    return KNeighborsClassifier(n_neighbors=neighbours(7, sizes), weights="distance", algorithm="brute")


def _mlp(seed: int, sizes: TrainingSizes | None):
    return MLPClassifier(hidden_layer_sizes=(512,), early_stopping=early_stopping(sizes), max_iter=300,
                         random_state=seed)


_ESTIMATORS: dict[str, Callable] = {
    "logreg": _logreg, "linear_svm": _linear_svm, "random_forest": _random_forest, "knn": _knn, "mlp": _mlp,
}

# Search spaces for grid=True: the one knob that matters most for each head.
_GRIDS = {
    "logreg": {"C": [0.01, 0.03, 0.1, 0.3, 1.0]},
    "linear_svm": {"estimator__C": [0.001, 0.01, 0.1, 1.0]},
    "random_forest": {"max_features": ["sqrt", 0.1]},
    "knn": {"n_neighbors": [3, 7, 15]},
    "mlp": {"alpha": [1e-4, 1e-2, 1.0]},
}


def _grid(name: str, inner: TrainingSizes | None) -> dict:
    grid = _GRIDS[name]
    if name == "knn" and inner is not None:  # no more neighbours than a training fold holds
        fitting = [k for k in grid["n_neighbors"] if k <= inner.n_samples]
        return {"n_neighbors": fitting or [max(1, inner.n_samples)]}
    return grid


def build_classifier(name: str = "logreg", seed: int = 0, ternary: bool = False, grid: bool = False,
                     labels=None) -> Pipeline:
    """The head `name`; `labels` (the training labels, optional) fit it to small classes.

    With labels, a grid search over classes of a single image is refused here (one line),
    so a caller can check with the split's labels before extracting any feature.
    """
    if name not in _ESTIMATORS:
        raise TransferlabError(f"unknown classifier '{name}': choose from {', '.join(CLASSIFIERS)}")
    sizes = TrainingSizes.of(labels) if labels is not None else None
    if grid:
        check_grid(sizes)
        # The searched estimator is fitted on a fold's training part, smaller than `labels`.
        inner = sizes.inner(sizes.folds(FOLDS)) if sizes is not None else None
        estimator = GridSearchCV(_ESTIMATORS[name](seed, inner), _grid(name, inner), n_jobs=1,
                                 cv=AdaptiveFolds(FOLDS, shuffle=True, random_state=seed))
    else:
        estimator = _ESTIMATORS[name](seed, sizes)
    steps = [("scale", StandardScaler())]
    if ternary:
        steps.append(("ternary", TernaryDiscretizer()))
    steps.append(("classifier", estimator))
    return Pipeline(steps)


def save_classifier(pipeline: Pipeline, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        skops.io.dump(pipeline, tmp)
        check_sizes(tmp, path)  # a head too large for load_classifier is refused now, not at predict time


def load_classifier(path: str | os.PathLike) -> Pipeline:
    """Load a head saved by `save_classifier`, refusing anything such a head would not be.

    Three gates: the archive (sizes, and every node of its schema in the exact allow-set)
    before skops runs; skops itself, trusting only those types; the loaded head's structure
    and every index it will follow, before anything predicts with it.
    """
    file = Path(path)
    if not file.is_file():
        raise TransferlabError(f"{file}: classifier file not found")
    if not zipfile.is_zipfile(file):
        raise TransferlabError(f"{file}: not a classifier file (not a skops zip archive)")
    checked = check_archive(file)
    try:
        loaded = skops.io.load(io.BytesIO(checked.data), trusted=checked.type_names)
    except Exception as exc:  # noqa: BLE001 - skops, numpy, scikit-learn raise many types on hostile data
        raise TransferlabError(f"{file}: cannot load classifier ({one_line(exc)})") from None
    try:
        check_head(loaded)
    except Refused as exc:
        raise TransferlabError(f"{file}: refusing the classifier: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a missing or mistyped fitted attribute
        raise TransferlabError(f"{file}: not a fitted transferlab head ({one_line(exc)})") from None
    return loaded
