"""Ternary discretisation of features: the "full-network embedding" trick.

Garcia-Gasulla et al. (2018) standardise each feature over the training images and map
it to -1 / 0 / 1 with two thresholds; the sparse, discretised vectors are more robust
for linear classifiers on small data sets.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data


class TernaryDiscretizer(TransformerMixin, BaseEstimator):
    """Standardise per feature, then below `low` -> -1, above `high` -> 1, else 0."""

    def __init__(self, low: float = -0.25, high: float = 0.15):
        self.low = low
        self.high = high

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # The output is always float32 (three levels need no more), whatever the input dtype.
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=np.float32)
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0) + 1e-6
        return self

    def transform(self, X):
        check_is_fitted(self, ["mean_", "scale_"])
        X = validate_data(self, X, dtype=np.float32, reset=False)
        z = (X - self.mean_) / self.scale_
        return np.where(z > self.high, 1.0, np.where(z < self.low, -1.0, 0.0)).astype(np.float32)
