"""PNG plots for reports: confusion matrix and per-class F1 (ours vs a baseline)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from transferlab.plotting import DPI, LABEL_MAX_CHARS, plt  # noqa: F401  (DPI: the report's plot resolution)
from transferlab.plotting import label as _label
from transferlab.plotting import literal as _literal
from transferlab.plotting import save_figure as _save

# Above this many classes, per-cell numbers no longer fit and only colour is drawn.
ANNOTATE_MAX_CLASSES = 15


def _row_normalised(matrix: np.ndarray) -> np.ndarray:
    totals = matrix.sum(axis=1, keepdims=True)
    # A class with no true samples has an all-zero row; keep it zero instead of dividing by 0.
    return np.divide(matrix, totals, out=np.zeros_like(matrix, dtype=float), where=totals > 0)


def _matrix_side_inches(n_classes: int) -> float:
    # Grows with the class count so 40 names still get their own tick; capped to stay printable.
    return float(min(22.0, max(4.5, 2.5 + 0.42 * n_classes)))


def _tick_fontsize(n_classes: int) -> float:
    # Cells stay ~0.4 inch tall as the figure grows, so 8 pt names still fit at 40 classes.
    return 9.0 if n_classes <= 15 else 8.0


def plot_confusion_matrix(
    confusion: list[list[int]],
    classes: list[str],
    path: str | os.PathLike,
    *,
    normalize: bool = True,
    title: str = "",
) -> Path:
    """Draw the confusion matrix (rows true, columns predicted) to a PNG at `path`.

    With `normalize`, colour shows each true class's share (so small classes stay visible);
    cells carry raw counts when there are at most 15 classes.
    """
    counts = np.asarray(confusion, dtype=np.int64)
    n = len(classes)
    if n == 0 or counts.shape != (n, n):
        raise ValueError(f"confusion matrix shape {counts.shape} does not match {n} classes")
    shade = _row_normalised(counts) if normalize else counts.astype(float)

    side = _matrix_side_inches(n)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    try:
        _draw_confusion(fig, ax, counts, shade, classes, normalize=normalize, title=title)
        return _save(fig, path)
    finally:
        plt.close(fig)  # pyplot keeps every open figure alive otherwise


def _draw_confusion(
    fig: Figure, ax: Axes, counts: np.ndarray, shade: np.ndarray, classes: list[str], *, normalize: bool, title: str
) -> None:
    n = len(classes)
    fontsize = _tick_fontsize(n)
    annotate = n <= ANNOTATE_MAX_CLASSES
    # The display draws the shading (so its text colours follow the cell colour); the cells
    # then read the raw counts, which say how many images a share stands for.
    display = ConfusionMatrixDisplay(shade, display_labels=[_label(c) for c in classes])
    display.plot(include_values=annotate, cmap="Blues", ax=ax, colorbar=False,
                 xticks_rotation=45 if n <= 15 else 90,
                 im_kw={"vmin": 0.0, "vmax": 1.0 if normalize else None}, text_kw={"fontsize": fontsize})
    if annotate:
        for (i, j), text in np.ndenumerate(display.text_):
            text.set_text(str(int(counts[i, j])))
    # Drawn here rather than by the display: a narrow bar leaves the matrix its width.
    colorbar = fig.colorbar(display.im_, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("share of true class" if normalize else "count")
    plt.setp(ax.get_xticklabels(), ha="right" if n <= 15 else "center", fontsize=fontsize)
    plt.setp(ax.get_yticklabels(), fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(_literal(title))
    fig.tight_layout()


def plot_per_class_f1(
    per_class: dict,
    path: str | os.PathLike,
    baseline: dict[str, float] | None = None,
) -> Path:
    """Horizontal bars of per-class F1, with the baseline's bar beside ours where it has the class."""
    names = list(per_class)
    if not names:
        raise ValueError("per_class is empty: nothing to plot")
    ours = np.array([float(per_class[c]["f1"]) for c in names])
    n = len(names)
    fig, ax = plt.subplots(figsize=(8.0, max(2.5, 1.0 + 0.32 * n * (1.6 if baseline else 1.0))))
    try:
        _draw_f1_bars(ax, names, ours, baseline)
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def _draw_f1_bars(ax: Axes, names: list[str], ours: np.ndarray, baseline: dict[str, float] | None) -> None:
    n = len(names)
    positions = np.arange(n)
    height = 0.4 if baseline else 0.7
    if baseline:
        base = np.array([baseline.get(c, np.nan) for c in names], dtype=float)
        ax.barh(positions - height / 2, ours, height=height, color="#2b6cb0", label="ours")
        # NaN bars (class absent from the baseline) are simply not drawn.
        ax.barh(positions + height / 2, base, height=height, color="#a0aec0", label="baseline")
        # Above the axes: inside, it would cover the bars of the last classes.
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    else:
        ax.barh(positions, ours, height=height, color="#2b6cb0")
    if n <= 40:
        offset = -height / 2 if baseline else 0.0
        for y, value in zip(positions, ours):
            ax.text(min(value + 0.01, 0.93), y + offset, f"{value:.2f}", va="center", fontsize=7)
    ax.set_yticks(positions)
    ax.set_yticklabels([_label(c) for c in names], fontsize=_tick_fontsize(n))
    ax.invert_yaxis()  # first class at the top, like the tables
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("F1")
    ax.grid(axis="x", alpha=0.3)
