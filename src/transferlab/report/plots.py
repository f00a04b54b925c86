"""PNG plots for reports: confusion matrix and per-class F1 (ours vs a baseline)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

# Agg before pyplot: reports are drawn on servers and in CI, where no display exists.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from transferlab.atomic import atomic_path  # noqa: E402

DPI = 110
# Above this many classes, per-cell numbers no longer fit and only colour is drawn.
ANNOTATE_MAX_CLASSES = 15
# Long class names would squeeze the matrix to nothing; the full name is in the HTML tables.
LABEL_MAX_CHARS = 28


def _literal(text: str) -> str:
    """Text that matplotlib draws as written (a pair of '$' would otherwise start mathtext)."""
    return str(text).replace("$", r"\$")


def _label(name: str) -> str:
    text = str(name)
    if len(text) > LABEL_MAX_CHARS:
        text = text[: LABEL_MAX_CHARS - 1] + "…"
    return _literal(text)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    target = Path(path)
    with atomic_path(target) as tmp:
        # The temp name ends in .tmp, so the format must be given explicitly.
        fig.savefig(tmp, format="png", dpi=DPI)
    return target


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


def _annotate_counts(ax: Axes, counts: np.ndarray, shade: np.ndarray, fontsize: float) -> None:
    threshold = shade.max() / 2 if shade.max() > 0 else 1.0
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            # White text on dark cells, black on light ones.
            colour = "white" if shade[i, j] > threshold else "black"
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", color=colour, fontsize=fontsize)


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
    image = ax.imshow(shade, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("share of true class" if normalize else "count")

    fontsize = _tick_fontsize(n)
    labels = [_label(c) for c in classes]
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(labels, rotation=45 if n <= 15 else 90, ha="right" if n <= 15 else "center", fontsize=fontsize)
    ax.set_yticklabels(labels, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(_literal(title))
    if n <= ANNOTATE_MAX_CLASSES:
        _annotate_counts(ax, counts, shade, fontsize)
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
