"""Feature-space maps of a feature matrix: `embed` and what it returns.

One PNG per method (PCA, UMAP, t-SNE) coloured by true class, and where predictions exist
by predicted class and by error; per-class silhouettes; the images farthest from their
class centre with a thumbnail grid; a 3-D HTML view when plotly happens to be installed.
Reading features from a run or a folder is `insight.embed`'s job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transferlab.atomic import write_json
from transferlab.errors import TransferlabError
from transferlab.insight import embed_plots
from transferlab.insight.map_methods import (
    METHOD_TITLES,
    METHODS,
    check_methods,
    outliers,
    project,
    silhouettes,
    standardise,
)


@dataclass
class EmbedResult:
    coords: dict[str, np.ndarray]  # method -> (n_points, 2), rows as in `indices`
    indices: np.ndarray  # rows of the input drawn (all of them unless subsampled)
    plots: list[Path]
    silhouette: dict[str, float] | None  # class -> mean silhouette of its images
    silhouette_mean: float | None
    silhouette_message: str | None  # why there are no silhouettes, when there are none
    outliers: list[dict]  # farthest from their class centre first
    outlier_plot: Path | None
    html: list[Path]
    notes: list[str] = field(default_factory=list)

    def summary_text(self) -> str:
        lines = [f"{len(self.indices)} points; maps: {', '.join(METHOD_TITLES[m] for m in self.coords) or 'none'}"]
        if self.silhouette is not None:
            lines.append(f"silhouette (standardised features): mean {self.silhouette_mean:+.3f}")
            width = max(len(c) for c in self.silhouette)
            lines += [f"  {name:<{width}}  {value:+.3f}"
                      for name, value in sorted(self.silhouette.items(), key=lambda kv: kv[1])]
        else:
            lines.append(f"silhouette: {self.silhouette_message}")
        if self.outliers:
            lines.append(f"outliers ({len(self.outliers)}, distance to class centre / class median distance):")
            lines += [f"  {o['ratio']:.2f}x  {o['class']}  {o.get('path') or '#' + str(o['index'])}"
                      for o in self.outliers]
        lines += [f"written: {p}" for p in [*self.plots, *([self.outlier_plot] if self.outlier_plot else []),
                                             *self.html]]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "points": len(self.indices),
            "methods": list(self.coords),
            "plots": [str(p) for p in self.plots],
            "silhouette": self.silhouette,
            "silhouette_mean": self.silhouette_mean,
            "silhouette_message": self.silhouette_message,
            "outliers": self.outliers,
            "outlier_plot": str(self.outlier_plot) if self.outlier_plot else None,
            "html": [str(p) for p in self.html],
            "notes": list(self.notes),
        }


def _validate(features, labels, classes, predictions, paths, methods) -> tuple[np.ndarray, ...]:
    x = np.asarray(features)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise TransferlabError(f"embed needs features (n, d) and n labels; got {x.shape} and {y.shape[0]} labels")
    if y.min() < 0 or y.max() >= len(classes):
        raise TransferlabError(f"labels must index the {len(classes)} classes")
    if not np.isfinite(x).all():
        raise TransferlabError("features contain NaN or infinite values")
    check_methods(methods)
    p = None
    if predictions is not None:
        p = np.asarray(predictions, dtype=np.int64).reshape(-1)
        if p.shape != y.shape or p.max() >= len(classes):
            raise TransferlabError("predictions must be one class index per image (-1: no prediction)")
    if paths is not None and len(paths) != len(y):
        raise TransferlabError(f"{len(paths)} paths for {len(y)} images")
    return x, y, p


def embed(
    features: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    predictions: np.ndarray | None = None,
    methods: tuple[str, ...] | list[str] = METHODS,
    seed: int = 0,
    max_points: int = 5000,
    *,
    out_dir: str | os.PathLike,
    paths: list[Path] | None = None,
    n_outliers: int = 16,
    title: str = "",
    prefix: str = "embed",
) -> EmbedResult:
    """Maps, silhouettes and outliers of `features` (n x d) with class indices `labels`.

    `predictions`: predicted class index per image, -1 where there is none (e.g. training
    images). Above `max_points` images a seeded random subset is drawn for maps and
    silhouettes (outliers always use every image). Files go to `out_dir` as
    `{prefix}_{method}.png`, `{prefix}_outliers.png` (needs `paths`) and `{prefix}.json`
    (the interactive 3-D view is `embed --3d`'s, insight.embed3d: only when asked for).
    """
    methods = check_methods(methods)
    x, y, p = _validate(features, labels, classes, predictions, paths, methods)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    standardised = standardise(x)
    indices = _subsample(len(y), max_points, seed, notes)
    drawn = _Drawn(standardised[indices], y[indices], _shown_predictions(p, indices), classes, seed, title)
    coords, plots = _draw_maps(drawn, methods, out, prefix, notes)
    silhouette, silhouette_mean, message = silhouettes(drawn.x, drawn.y, classes)
    found = outliers(standardised, y, classes, n_outliers, p, paths) if n_outliers > 0 else []
    outlier_plot = None
    if found and paths is not None:
        outlier_plot = embed_plots.plot_outlier_grid(found, out / f"{prefix}_outliers.png")
    elif found:
        notes.append("no outlier thumbnails: image paths were not given")
    result = EmbedResult(coords, indices, plots, silhouette, silhouette_mean, message, found, outlier_plot,
                         [], notes)
    write_json(out / f"{prefix}.json", result.to_dict())
    return result


@dataclass(frozen=True)
class _Drawn:
    """The (possibly subsampled) points the maps and silhouettes are drawn from."""

    x: np.ndarray  # standardised features
    y: np.ndarray
    predictions: np.ndarray | None
    classes: list[str]
    seed: int
    title: str


def _subsample(n: int, max_points: int, seed: int, notes: list[str]) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    notes.append(f"maps and silhouettes use a random {max_points} of the {n} images (seed {seed}); "
                 "outliers use all of them")
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def _shown_predictions(p: np.ndarray | None, indices: np.ndarray) -> np.ndarray | None:
    if p is None or not (p >= 0).any():
        return None  # nothing to show in the prediction panels
    return p[indices]


def _draw_maps(drawn: _Drawn, methods: tuple[str, ...], out: Path, prefix: str,
               notes: list[str]) -> tuple[dict[str, np.ndarray], list[Path]]:
    coords: dict[str, np.ndarray] = {}
    plots: list[Path] = []
    for method in methods:
        xy = project(method, drawn.x, drawn.seed, notes)
        if xy is None:
            continue
        coords[method] = xy
        heading = f"{METHOD_TITLES[method]} of {len(drawn.x)} images" + (f": {drawn.title}" if drawn.title else "")
        plots.append(embed_plots.plot_map(xy, drawn.y, drawn.classes, out / f"{prefix}_{method}.png",
                                          title=heading, predictions=drawn.predictions))
    return coords, plots
