"""Error analysis: most confused class pairs, a clustered class order, the top-loss grid."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.spatial.distance import squareform

from transferlab.plotting import label as _label
from transferlab.plotting import plt
from transferlab.plotting import save_figure as _save


def most_confused_pairs(confusion: list[list[int]], classes: list[str], k: int = 10) -> list[dict]:
    """The k largest off-diagonal cells: true class, predicted class, count, share of the true class."""
    counts = np.asarray(confusion, dtype=np.int64)
    totals = counts.sum(axis=1)
    pairs = [
        (int(counts[i, j]), i, j)
        for i in range(len(classes))
        for j in range(len(classes))
        if i != j and counts[i, j] > 0
    ]
    pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [
        {"true": classes[i], "predicted": classes[j], "count": n, "share": round(n / max(1, totals[i]), 4)}
        for n, i, j in pairs[:k]
    ]


def cluster_order(confusion: list[list[int]]) -> list[int]:
    """Class order that puts mutually confused classes next to each other.

    Distance between two classes is 1 - their symmetric confusion rate; average-linkage
    clustering's leaf order keeps a 29-class matrix readable as blocks.
    """
    counts = np.asarray(confusion, dtype=np.float64)
    n = len(counts)
    if n < 3:
        return list(range(n))
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    similarity = (rates + rates.T) / 2.0
    np.fill_diagonal(similarity, 0.0)
    distance = 1.0 - similarity / max(similarity.max(), 1e-12)
    np.fill_diagonal(distance, 0.0)
    return [int(i) for i in leaves_list(linkage(squareform(distance, checks=False), method="average"))]


def reorder(confusion: list[list[int]], classes: list[str], order: list[int]) -> tuple[list[list[int]], list[str]]:
    counts = np.asarray(confusion)[np.ix_(order, order)]
    return counts.tolist(), [classes[i] for i in order]


def top_loss_indices(labels: np.ndarray, probabilities: np.ndarray, k: int) -> list[int]:
    """Indices of the k wrong predictions with the highest loss (lowest probability of the truth)."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    p_true = probabilities[wrong, labels[wrong]]
    return [int(i) for i in wrong[np.argsort(p_true, kind="stable")][:k]]


@dataclass
class ErrorTile:
    image: np.ndarray  # (H, W, 3) uint8
    true: str
    predicted: str
    probability: float  # of the predicted class
    overlay: np.ndarray | None = None  # CAM overlay, same role as image
    name: str = ""  # the file's name, so a reader can find the image


def _short(name: str, width: int = 22) -> str:
    """A file name that fits under a tile: the start and the end (suffixes and numbers matter)."""
    return name if len(name) <= width else f"{name[:width // 2 - 1]}…{name[-(width // 2):]}"


def plot_error_grid(tiles: list[ErrorTile], path: str | os.PathLike, title: str = "") -> Path:
    """Grid of misclassified images (with their CAM overlay beside each, when given)."""
    per_tile = 2 if any(t.overlay is not None for t in tiles) else 1
    columns = max(1, min(len(tiles), 8 // per_tile)) * per_tile
    rows = max(1, -(-len(tiles) * per_tile // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.2 * rows + 0.4), squeeze=False)
    try:
        for ax in axes.flat:
            ax.axis("off")
        for index, tile in enumerate(tiles):
            ax = axes.flat[index * per_tile]
            ax.imshow(tile.image)
            caption = f"true {_label(tile.true)}\npred {_label(tile.predicted)} {tile.probability:.2f}"
            if tile.name:
                caption = f"{_label(_short(tile.name))}\n{caption}"
            ax.set_title(caption, fontsize=7, color="#b00020")
            if per_tile == 2 and tile.overlay is not None:
                axes.flat[index * per_tile + 1].imshow(tile.overlay)
                axes.flat[index * per_tile + 1].set_title("Grad-CAM", fontsize=7)
        if title:
            fig.suptitle(_label(title), fontsize=10)
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)
