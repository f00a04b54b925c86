"""A study's plot per factor: accuracy and macro-F1 against the varied value, sd over seeds as error bars."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.axes import Axes

from transferlab.plotting import label as _label
from transferlab.plotting import literal as _literal
from transferlab.plotting import plt, save_figure

METRICS = (("accuracy", "accuracy"), ("macro_f1", "macro F1"))
COLOUR, REFERENCE_COLOUR = "#2b6cb0", "#dd6b20"


def _stat(point: dict, metric: str, key: str) -> float:
    stats = point.get(metric) or {}
    value = stats.get(key)
    return float(value) if value is not None else (0.0 if key == "sd" else float("nan"))


def _draw_panel(ax: Axes, plot: dict, metric: str, name: str) -> None:
    points = plot["points"]
    xs = [p["x"] for p in points]
    means = [_stat(p, metric, "mean") for p in points]
    sds = [_stat(p, metric, "sd") for p in points]
    # A line joins the points of a numeric axis only: between categories it would suggest a trend.
    ax.errorbar(xs, means, yerr=sds, color=COLOUR, marker="o", capsize=4, linewidth=1.5,
                linestyle="-" if plot["numeric"] else "none")
    reference = [i for i, p in enumerate(points) if p["reference"]]
    if reference:
        ax.scatter([xs[i] for i in reference], [means[i] for i in reference], s=160, marker="*",
                   color=REFERENCE_COLOUR, zorder=3, label="reference")
        ax.legend(loc="best", fontsize=8, frameon=False)
    if plot["log_x"]:
        ax.set_xscale("log")
    if plot["numeric"]:
        # Numeric axis: each point says which value it stands for ("all" sits at the real count).
        for x, y, point in zip(xs, means, points):
            ax.annotate(_label(point["label"]), (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
    else:
        ax.set_xticks(xs)
        ax.set_xticklabels([_label(p["label"]) for p in points], rotation=30 if len(points) > 4 else 0,
                           ha="right" if len(points) > 4 else "center", fontsize=8)
        ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, 0.0), min(high, 1.02))  # an sd bar does not make a score above 1 possible
    ax.set_xlabel(_literal(plot["x_label"]))
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)


def plot_factor(plot: dict, path: str | os.PathLike) -> Path:
    """Two panels (accuracy, macro-F1) of one factor's points, as the summary laid them out."""
    if not plot["points"]:
        raise ValueError(f"factor {plot['factor']!r} has no points to plot")
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.2))
    try:
        for ax, (metric, name) in zip(axes, METRICS):
            _draw_panel(ax, plot, metric, name)
        title = plot["title"] + (" (other factors averaged)" if plot["averaged"] else "")
        if plot["learning_curve"]:
            title += ": scores against training images per class"
        spread = "sd over the runs pooled in a point" if plot["averaged"] else "sd over seeds"
        fig.suptitle(f"{_literal(title)}; bars: {spread}")
        fig.tight_layout()
        return save_figure(fig, path)
    finally:
        plt.close(fig)
