"""Pictures for `embed`: 2-D scatter maps, an outlier thumbnail grid, an optional 3-D HTML view."""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

# Agg before pyplot, as in report.plots: maps are drawn on servers without a display.
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from transferlab.data.images import ImageDecodeError, load_rgb
from transferlab.plotting import label as _label
from transferlab.plotting import literal as _literal
from transferlab.plotting import save_figure as _save

# Legends stop being readable above this many classes; colours alone are drawn then.
LEGEND_MAX_CLASSES = 20
NO_PREDICTION = "#d9d9d9"
CORRECT, WRONG = "#38a169", "#e53e3e"
THUMB_PX = 96


def class_colours(n_classes: int) -> np.ndarray:
    """(n, 4) RGBA: qualitative palettes while they last, then evenly spaced hues."""
    if n_classes <= 10:
        return plt.get_cmap("tab10")(np.arange(n_classes))
    if n_classes <= 20:
        return plt.get_cmap("tab20")(np.arange(n_classes))
    return plt.get_cmap("hsv")(np.linspace(0.0, 1.0, n_classes, endpoint=False))


def _marker_size(n_points: int) -> float:
    # Big dots for a few dozen points, fine ones for thousands so the clusters stay visible.
    return float(np.clip(2000.0 / max(n_points, 1), 2.0, 40.0))


def _class_legend(ax, classes: list[str], colours: np.ndarray, present: set[int]) -> None:
    if len(classes) > LEGEND_MAX_CLASSES:
        return
    handles = [Line2D([], [], marker="o", linestyle="", color=colours[i], label=_label(name))
               for i, name in enumerate(classes) if i in present]
    ax.legend(handles=handles, fontsize=7, loc="best", frameon=True, framealpha=0.8, markerscale=1.2)


def _panel_by_class(ax, xy: np.ndarray, labels: np.ndarray, classes: list[str], colours: np.ndarray,
                    size: float, title: str) -> None:
    known = labels >= 0
    if (~known).any():  # points without a value (e.g. training images have no prediction)
        ax.scatter(xy[~known, 0], xy[~known, 1], s=size, c=NO_PREDICTION, linewidths=0, label="none")
    ax.scatter(xy[known, 0], xy[known, 1], s=size, c=colours[labels[known]], linewidths=0)
    _class_legend(ax, classes, colours, set(labels[known].tolist()))
    ax.set_title(title, fontsize=10)


def _panel_errors(ax, xy: np.ndarray, labels: np.ndarray, predictions: np.ndarray, size: float) -> None:
    has = predictions >= 0
    right = has & (predictions == labels)
    wrong = has & (predictions != labels)
    ax.scatter(xy[~has, 0], xy[~has, 1], s=size, c=NO_PREDICTION, linewidths=0,
               label=f"no prediction ({int((~has).sum())})")
    ax.scatter(xy[right, 0], xy[right, 1], s=size, c=CORRECT, linewidths=0, label=f"correct ({int(right.sum())})")
    # Wrong ones last and larger, so they are not hidden under the correct ones.
    ax.scatter(xy[wrong, 0], xy[wrong, 1], s=size * 2, c=WRONG, linewidths=0, label=f"wrong ({int(wrong.sum())})")
    ax.legend(fontsize=7, loc="best", framealpha=0.8)
    ax.set_title("errors", fontsize=10)


def plot_map(xy: np.ndarray, labels: np.ndarray, classes: list[str], path: str | os.PathLike, *, title: str,
             predictions: np.ndarray | None = None) -> Path:
    """One PNG: coloured by true class; with predictions, two more panels (predicted class, errors)."""
    colours = class_colours(len(classes))
    size = _marker_size(len(xy))
    panels = 1 if predictions is None else 3
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 5.0), squeeze=False)
    try:
        _panel_by_class(axes[0, 0], xy, labels, classes, colours, size, "true class")
        if predictions is not None:
            _panel_by_class(axes[0, 1], xy, predictions, classes, colours, size, "predicted class")
            _panel_errors(axes[0, 2], xy, labels, predictions, size)
        for ax in axes[0]:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(_literal(title), fontsize=11)
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def _thumbnail(path: Path) -> np.ndarray | None:
    try:
        image = load_rgb(path, draft_size=THUMB_PX)
    except ImageDecodeError:
        return None
    image.thumbnail((THUMB_PX, THUMB_PX))
    return np.asarray(image)


def plot_outlier_grid(outliers: list[dict], path: str | os.PathLike, *, columns: int = 6) -> Path:
    """Thumbnails of the outliers, each captioned with its class, prediction and distance ratio."""
    n = len(outliers)
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.25 * rows), squeeze=False)
    try:
        for ax in axes.ravel():
            ax.axis("off")
        for ax, item in zip(axes.ravel(), outliers):
            thumb = _thumbnail(Path(item["path"]))
            if thumb is None:
                ax.text(0.5, 0.5, "unreadable", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            else:
                ax.imshow(thumb)
            caption = _label(item["class"])
            if item.get("predicted") not in (None, item["class"]):
                caption += f"\n→ {_label(item['predicted'])}"
            caption += f"\n{item['ratio']:.1f}x class median"
            ax.set_title(caption, fontsize=7, color=WRONG if "→" in caption else "black")
        fig.suptitle("farthest from their class centre (standardised features)", fontsize=10)
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)
