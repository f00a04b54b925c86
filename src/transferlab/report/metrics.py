"""Classification metrics as plain JSON-ready dicts, in a fixed class order."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
)

from transferlab.errors import TransferlabError

DECIMALS = 4


def _r(value: float) -> float:
    return round(float(value), DECIMALS)


def _check_labels(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Return both arrays as 1-D int arrays; raise if they cannot be indices into `classes`."""
    true = np.asarray(y_true).reshape(-1)
    pred = np.asarray(y_pred).reshape(-1)
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} labels but y_pred has {pred.size}")
    if not classes:
        raise ValueError("classes is empty")
    if true.size == 0:
        # An empty split reaches here from user data (e.g. a tiny validation fraction).
        raise TransferlabError("no samples to score: the split is empty")
    for name, arr in (("y_true", true), ("y_pred", pred)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or high >= len(classes):
            # Usually a model and a class list that do not belong together.
            raise TransferlabError(
                f"{name} holds class index {high if high >= len(classes) else low}, "
                f"outside the {len(classes)} known classes"
            )
    return true.astype(np.int64), pred.astype(np.int64)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro/weighted F1, per-class scores and the confusion matrix.

    Labels are indices into `classes`. Every class appears in `per_class` and in the
    confusion matrix, even with zero support, so reports of different splits line up.
    Macro averages run over the classes present in the split: a class with no image in it
    (an empty class folder, or too few images to hold one out) has no F1 to average, and
    counting it as 0 would report 0.56 where every real class scores 1.0. Such classes are
    listed under "absent_classes" so reports can say what was left out.
    """
    true, pred = _check_labels(y_true, y_pred, classes)
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        true, pred, labels=labels, average=None, zero_division=0
    )
    per_class = {
        name: {
            "precision": _r(precision[i]),
            "recall": _r(recall[i]),
            "f1": _r(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    total = int(support.sum())
    # Weighted by support; computed from the unrounded arrays so rounding does not accumulate.
    weighted_f1 = float((f1 * support).sum() / total) if total else 0.0
    confusion = confusion_matrix(true, pred, labels=labels)
    present = support > 0
    return {
        "accuracy": _r(np.mean(true == pred)),
        "macro_f1": _r(np.mean(f1[present])),
        "absent_classes": [name for i, name in enumerate(classes) if not present[i]],
        "weighted_f1": _r(weighted_f1),
        "n": int(true.size),
        "per_class": per_class,
        "confusion": [[int(v) for v in row] for row in confusion],
    }


def classification_report_text(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> str:
    """sklearn's text report with class names, covering every class (zero support included)."""
    true, pred = _check_labels(y_true, y_pred, classes)
    return classification_report(
        true,
        pred,
        labels=list(range(len(classes))),
        target_names=[str(c) for c in classes],
        digits=DECIMALS,
        zero_division=0,
    )
