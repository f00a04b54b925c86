"""Fold a scaler + linear classifier pipeline into one linear layer (weight, bias).

A probe's logistic regression on standardised features is an affine map of the raw
features; folding it lets the whole probe run as one torch/ONNX graph (export, CAM).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from transferlab.errors import TransferlabError


def fold_linear_head(pipeline: Pipeline, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) with softmax(features @ W.T + b) == pipeline.predict_proba(features) over all classes.

    Classes never seen in training get a bias of -inf-like (-1e4) so their probability is 0.
    Raises TransferlabError for heads that are not linear (forest, kNN, MLP, ternary, SVM).
    """
    steps = dict(pipeline.steps)
    estimator = steps.get("classifier")
    if isinstance(estimator, GridSearchCV):
        estimator = estimator.best_estimator_
    if set(steps) != {"scale", "classifier"} or not isinstance(estimator, LogisticRegression):
        kinds = " -> ".join(type(s).__name__ for s in pipeline.named_steps.values())
        raise TransferlabError(f"only a logistic-regression head folds into a network; this run has {kinds}")
    scaler: StandardScaler = steps["scale"]
    scale = scaler.scale_ if scaler.scale_ is not None else np.ones(scaler.n_features_in_)
    mean = scaler.mean_ if scaler.mean_ is not None else np.zeros(scaler.n_features_in_)
    coef, intercept = estimator.coef_, estimator.intercept_
    if coef.shape[0] == 1:  # binary: p(class 1) = sigmoid(z) = softmax([0, z])
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    weight = coef / scale
    bias = intercept - weight @ mean
    full_weight = np.zeros((n_classes, weight.shape[1]))
    full_bias = np.full(n_classes, -1e4)
    full_weight[estimator.classes_] = weight
    full_bias[estimator.classes_] = bias
    return full_weight.astype(np.float32), full_bias.astype(np.float32)
