"""Heads that still fit when a class has only one to a few training images.

The defaults of the heads assume tens of images per class: 3-fold cross-validation (grid
search, the linear SVM's probability calibration), 7 neighbours, and a 10% early-stopping
split for the MLP. `--per-class 2` leaves one training image per class (the other goes to
validation), `--per-class 3` two. `TrainingSizes` says what the training labels allow;
`AdaptiveFolds` picks the number of folds from the labels it is asked to split.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

import numpy as np
from sklearn.model_selection import StratifiedKFold

from transferlab.errors import TransferlabError

# The MLP's early stopping holds out 10% stratified: every class needs an image on each side,
# and a class this size is the smallest for which ceil(10% of the set) >= the number of classes.
EARLY_STOPPING_MIN_PER_CLASS = 10


@dataclass(frozen=True)
class TrainingSizes:
    """Class counts of the labels a head will be fitted on."""

    counts: tuple[int, ...]

    @classmethod
    def of(cls, labels) -> TrainingSizes:
        _, counts = np.unique(np.asarray(labels), return_counts=True)
        return cls(tuple(int(c) for c in counts))

    @property
    def n_samples(self) -> int:
        return sum(self.counts)

    @property
    def smallest(self) -> int:
        return min(self.counts) if self.counts else 0

    def folds(self, wanted: int) -> int:
        """Stratified folds these labels allow (each fold needs one image of every class)."""
        return min(wanted, self.smallest)

    def inner(self, folds: int) -> TrainingSizes:
        """Class counts of the smallest training part of a stratified `folds`-fold split."""
        return TrainingSizes(tuple(c - ceil(c / folds) for c in self.counts))


class AdaptiveFolds:
    """Stratified k-fold with k = min(max_splits, smallest class count).

    Used inside the linear SVM's calibration and the grid search, whose labels (a fold of a
    fold under grid search) are only known at fit time. Where a class has a single image,
    `in_sample` calibrates on the training images themselves (one split: all, all: the
    probabilities are over-confident, but there is nothing to hold out); otherwise it is an
    error. No `n_splits` attribute on purpose: CalibratedClassifierCV would check it against
    the class counts before asking for the split.
    """

    def __init__(self, max_splits: int = 3, shuffle: bool = False, random_state: int | None = None,
                 in_sample: bool = False):
        self.max_splits = max_splits
        self.shuffle = shuffle
        self.random_state = random_state
        self.in_sample = in_sample

    def _folds(self, y) -> int:
        if y is None:
            raise ValueError("AdaptiveFolds needs the labels to choose its folds")
        folds = TrainingSizes.of(y).folds(self.max_splits)
        if folds < 2 and not self.in_sample:
            raise TransferlabError("cross-validation needs at least 2 training images in every class; "
                                   "the smallest class has 1 (use more images per class, or drop --grid)")
        return folds

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        folds = self._folds(y)
        return folds if folds >= 2 else 1

    def split(self, X, y=None, groups=None):
        folds = self._folds(y)
        if folds < 2:
            everything = np.arange(len(y))
            yield everything, everything
            return
        seed = self.random_state if self.shuffle else None
        yield from StratifiedKFold(folds, shuffle=self.shuffle, random_state=seed).split(X, y)

    def __repr__(self) -> str:
        return (f"AdaptiveFolds(max_splits={self.max_splits}, shuffle={self.shuffle}, "
                f"random_state={self.random_state}, in_sample={self.in_sample})")


def neighbours(wanted: int, sizes: TrainingSizes | None) -> int:
    """kNN cannot ask for more neighbours than there are training images."""
    return wanted if sizes is None else max(1, min(wanted, sizes.n_samples))


def early_stopping(sizes: TrainingSizes | None) -> bool:
    return sizes is None or sizes.smallest >= EARLY_STOPPING_MIN_PER_CLASS


def check_grid(sizes: TrainingSizes | None) -> None:
    """A grid search cross-validates: refuse up front where a class cannot be split."""
    if sizes is not None and sizes.smallest < 2:
        raise TransferlabError(f"--grid cross-validates and needs at least 2 training images in every class; "
                               f"the smallest class has {sizes.smallest} (use more images per class, or drop --grid)")
