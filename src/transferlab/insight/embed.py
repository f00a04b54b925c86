"""Feature-space maps: how the classes sit in a backbone's feature space.

`embed` takes features directly; `embed_run` reads a probe run (its split, model settings
and predictions; features from the cache) and `embed_data` a plain image folder. Each
writes one PNG per method (PCA, UMAP, t-SNE) coloured by true class, and where predictions
exist by predicted class and by error; per-class silhouettes; the images farthest from
their class centre with a thumbnail grid; a 3-D HTML view when plotly happens to be
installed.
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transferlab.atomic import write_json
from transferlab.backbones import create_backbone
from transferlab.backbones.registry import DEFAULT_BACKBONE
from transferlab.data.folder import Sample
from transferlab.data.layout import scan_data
from transferlab.errors import TransferlabError
from transferlab.features.extract import (
    ExtractionSettings,
    default_workers,
    extract_features,
)
from transferlab.features.layers import DEFAULT_LAYERS, parse_layers
from transferlab.features.resolution import choose_resolution
from transferlab.insight import embed_plots
from transferlab.insight.transferability import resolve_cache_root
from transferlab.precision import resolve_precision
from transferlab.runs import load_complete_run

METHODS = ("pca", "umap", "tsne")
METHOD_TITLES = {"pca": "PCA", "umap": "UMAP", "tsne": "t-SNE"}
# Neighbour-based maps need a handful of points before they mean anything.
MIN_POINTS_NEIGHBOURS = 5
TSNE_PCA_DIMS = 50  # t-SNE on the first 50 principal components: standard, and much faster
TSNE_EXACT_MAX_POINTS = 300


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


# --------------------------------------------------------------------------- maps


def _standardise(features: np.ndarray) -> np.ndarray:
    # Pooled CNN channels differ in scale by orders of magnitude; unscaled, a few loud
    # channels would decide every distance.
    from sklearn.preprocessing import StandardScaler

    return StandardScaler().fit_transform(np.asarray(features, dtype=np.float64))


def _pca(x: np.ndarray, seed: int, notes: list[str]) -> np.ndarray:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=seed)
    xy = pca.fit_transform(x)
    notes.append(f"PCA: the 2 components explain {pca.explained_variance_ratio_.sum():.1%} of the variance")
    return xy


def _tsne(x: np.ndarray, seed: int, notes: list[str]) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    dims = min(TSNE_PCA_DIMS, x.shape[0], x.shape[1])
    reduced = PCA(n_components=dims, random_state=seed).fit_transform(x) if x.shape[1] > dims else x
    # Perplexity must stay below the number of points; 30 is the usual value.
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
    # Small sets: the exact gradient is quicker than Barnes-Hut and needs no OpenMP at all.
    method = "exact" if len(x) <= TSNE_EXACT_MAX_POINTS else "barnes_hut"
    # Barnes-Hut's OpenMP threads spin-wait at every step; on 2 cores with anything else
    # running that made it 10x slower (600 points: 37 s with 2 threads, 3 s with 1).
    threads = 1 if (os.cpu_count() or 1) <= 2 else None
    with threadpool_limits(threads, user_api="openmp"):
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", method=method, random_state=seed)
        return tsne.fit_transform(reduced)


def _umap(x: np.ndarray, seed: int, notes: list[str]) -> np.ndarray:
    import warnings

    import umap  # imported here: numba compiles on first import, tens of seconds

    with warnings.catch_warnings():
        # A fixed random_state makes umap single-threaded and says so on every call.
        warnings.simplefilter("ignore", UserWarning)
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed)
        return reducer.fit_transform(x)


_REDUCERS = {"pca": _pca, "tsne": _tsne, "umap": _umap}


def _map(method: str, x: np.ndarray, seed: int, notes: list[str]) -> np.ndarray | None:
    title = METHOD_TITLES[method]
    if method == "pca" and (len(x) < 2 or x.shape[1] < 2):
        notes.append(f"{title} skipped: needs at least 2 points and 2 feature dimensions")
        return None
    if method != "pca" and len(x) < MIN_POINTS_NEIGHBOURS:
        notes.append(f"{title} skipped: needs at least {MIN_POINTS_NEIGHBOURS} points, have {len(x)}")
        return None
    try:
        return np.asarray(_REDUCERS[method](x, seed, notes), dtype=np.float64)
    except Exception as exc:  # an optional method must not cost the other maps
        if method != "umap":
            raise
        notes.append(f"UMAP skipped: {type(exc).__name__}: {exc}".rstrip(": "))
        return None


# --------------------------------------------------------------------------- silhouettes, outliers


def _silhouettes(x: np.ndarray, labels: np.ndarray, classes: list[str]) -> tuple[dict | None, float | None, str | None]:
    from sklearn.metrics import silhouette_samples

    present = np.unique(labels)
    if len(present) < 2:
        only = classes[present[0]] if len(present) else "none"
        return None, None, f"needs at least 2 classes, found 1 ('{only}')"
    if len(labels) <= len(present):
        return None, None, f"needs more images ({len(labels)}) than classes ({len(present)})"
    values = silhouette_samples(x, labels, metric="euclidean")
    per_class = {classes[c]: float(values[labels == c].mean()) for c in present}
    return per_class, float(values.mean()), None


def _outliers(x: np.ndarray, labels: np.ndarray, classes: list[str], count: int,
              predictions: np.ndarray | None, paths: list[Path] | None) -> list[dict]:
    """The `count` images farthest from their class centre, relative to their class's spread.

    Distances are divided by the class's median distance to its centre, so a broad class
    does not fill the list just by being broad: 3x means three times as far as a typical
    image of that class.
    """
    ratio = np.full(len(x), np.nan)
    distance = np.zeros(len(x))
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        if len(rows) < 3:  # no meaningful centre or spread
            continue
        d = np.linalg.norm(x[rows] - x[rows].mean(axis=0), axis=1)
        median = float(np.median(d))
        distance[rows] = d
        if median > 0:
            ratio[rows] = d / median
    candidates = np.flatnonzero(np.isfinite(ratio))
    chosen = candidates[np.argsort(-ratio[candidates], kind="stable")][:count]
    result = []
    for i in chosen:
        item = {"index": int(i), "class": classes[labels[i]], "distance": round(float(distance[i]), 3),
                "ratio": round(float(ratio[i]), 3)}
        if predictions is not None and predictions[i] >= 0:
            item["predicted"] = classes[predictions[i]]
        if paths is not None:
            item["path"] = str(paths[i])
        result.append(item)
    return result


# --------------------------------------------------------------------------- embed


def _validate(features, labels, classes, predictions, paths, methods) -> tuple[np.ndarray, ...]:
    x = np.asarray(features)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise TransferlabError(f"embed needs features (n, d) and n labels; got {x.shape} and {y.shape[0]} labels")
    if y.min() < 0 or y.max() >= len(classes):
        raise TransferlabError(f"labels must index the {len(classes)} classes")
    if not np.isfinite(x).all():
        raise TransferlabError("features contain NaN or infinite values")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise TransferlabError(f"unknown map method(s) {', '.join(unknown) or '(none given)'}: "
                               f"choose from {', '.join(METHODS)}")
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
    `{prefix}_{method}.png`, `{prefix}_outliers.png` (needs `paths`), `{prefix}_3d.html`
    (only where plotly is installed) and `{prefix}.json`.
    """
    methods = tuple(dict.fromkeys(methods))
    x, y, p = _validate(features, labels, classes, predictions, paths, methods)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    standardised = _standardise(x)

    indices = np.arange(len(y))
    if len(y) > max_points:
        indices = np.sort(np.random.default_rng(seed).choice(len(y), size=max_points, replace=False))
        notes.append(f"maps and silhouettes use a random {max_points} of the {len(y)} images (seed {seed}); "
                     "outliers use all of them")
    xs, ys = standardised[indices], y[indices]
    ps = p[indices] if p is not None else None
    if p is not None and not (p >= 0).any():
        ps = None  # nothing to show in the prediction panels

    coords: dict[str, np.ndarray] = {}
    plots: list[Path] = []
    for method in methods:
        xy = _map(method, xs, seed, notes)
        if xy is None:
            continue
        coords[method] = xy
        heading = f"{METHOD_TITLES[method]} of {len(xs)} images" + (f": {title}" if title else "")
        plots.append(embed_plots.plot_map(xy, ys, classes, out / f"{prefix}_{method}.png", title=heading,
                                          predictions=ps))

    silhouette, silhouette_mean, message = _silhouettes(xs, ys, classes)
    outliers = _outliers(standardised, y, classes, n_outliers, p, paths) if n_outliers > 0 else []
    outlier_plot = None
    if outliers and paths is not None:
        outlier_plot = embed_plots.plot_outlier_grid(outliers, out / f"{prefix}_outliers.png")
    elif outliers:
        notes.append("no outlier thumbnails: image paths were not given")

    html: list[Path] = []
    if not embed_plots.plotly_available():
        notes.append("no 3-D view: plotly is not installed")
    elif xs.shape[1] >= 3 and len(xs) >= 3:
        from sklearn.decomposition import PCA

        xyz = PCA(n_components=3, random_state=seed).fit_transform(xs)
        hover = [str(paths[i]) for i in indices] if paths is not None else None
        html.append(embed_plots.write_3d_html(xyz, ys, classes, out / f"{prefix}_3d.html",
                                              title=f"PCA 3-D{': ' + title if title else ''}", hover=hover))

    result = EmbedResult(coords, indices, plots, silhouette, silhouette_mean, message, outliers, outlier_plot,
                         html, notes)
    write_json(out / f"{prefix}.json", result.to_dict())
    return result


# --------------------------------------------------------------------------- from a run or a folder


def _read_predictions(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _run_samples(run_dir: Path, classes: list[str]) -> tuple[list[Path], list[int], list[int], list[str]]:
    """Every image of the run (train, val, test) with its true and predicted class index (-1: none)."""
    split = json.loads((run_dir / "split.json").read_text(encoding="utf-8"))
    root = Path(split["root"])
    index = {name: i for i, name in enumerate(classes)}
    rows = _read_predictions(run_dir / "predictions.csv")
    # predictions.csv holds str(root / relative path), so rebuilt paths compare equal.
    predicted = {Path(row["path"]): index[row["predicted"]] for row in rows}
    paths: list[Path] = []
    labels: list[int] = []
    predictions: list[int] = []
    splits: list[str] = []
    for name in ("train", "val"):
        for rel, class_name in split.get(name, []):
            path = root / rel
            paths.append(path)
            labels.append(index[class_name])
            predictions.append(predicted.get(path, -1))
            splits.append(name)
    for row in rows:
        if row["split"] == "test":  # test images are not in split.json
            paths.append(Path(row["path"]))
            labels.append(index[row["true"]])
            predictions.append(index[row["predicted"]])
            splits.append("test")
    missing = [p for p in paths[:50] if not p.exists()]
    if missing:
        raise TransferlabError(f"{run_dir}: the run's images are not where it recorded them (e.g. {missing[0]}); "
                               "run embed from the folder the probe ran in")
    return paths, labels, predictions, splits


def _run_backbone(run_dir: Path, model: dict, notes: list[str]):
    # The run's own saved weights reproduce the exact network offline, whatever its source was,
    # and hash to the same weights id, so the features come from the probe's cache.
    saved = run_dir / "model" / "backbone.safetensors"
    backbone = create_backbone(model["backbone"], saved if saved.is_file() else None)
    if model.get("weights_id") and backbone.weights_id != model["weights_id"]:
        notes.append("the backbone's weights differ from the run's: features were extracted anew")
    return backbone


def embed_run(
    run_dir: str | os.PathLike,
    methods: tuple[str, ...] | list[str] = METHODS,
    seed: int = 0,
    max_points: int = 5000,
    *,
    splits: tuple[str, ...] | None = None,
    n_outliers: int = 16,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    progress: bool = True,
) -> EmbedResult:
    """Maps of a finished probe run's images, written to `run_dir/plots/embed_*`.

    Features come from the cache with the run's own backbone weights, layers, pooling,
    resolution and precision (model/model.json); predictions from predictions.csv (the
    training images have none). `splits` limits the images, e.g. ("val",).
    """
    run = load_complete_run(run_dir)
    model_file = run.model_dir / "model.json"
    if not model_file.is_file():
        raise TransferlabError(f"{model_file}: not found (embed needs a probe run)")
    model = json.loads(model_file.read_text(encoding="utf-8"))
    if model.get("kind", "probe") != "probe":
        raise TransferlabError(f"{run.path}: a '{model.get('kind')}' run; embed reads probe runs")
    classes = list(model["classes"])
    paths, labels, predictions, split_names = _run_samples(run.path, classes)
    if splits is not None:
        keep = [i for i, s in enumerate(split_names) if s in splits]
        if not keep:
            raise TransferlabError(f"{run.path}: no images in split(s) {', '.join(splits)}")
        paths, labels, predictions = [paths[i] for i in keep], [labels[i] for i in keep], [predictions[i] for i in keep]
    notes: list[str] = []
    backbone = _run_backbone(run.path, model, notes)
    settings = ExtractionSettings(resolution=int(model["resolution"]), layers=tuple(model["layers"]),
                                  pool=model["pool"], precision=model["precision"], batch_size=batch_size,
                                  workers=default_workers() if workers is None else workers)
    result = _embed_extracted(backbone, paths, labels, predictions, classes, settings, cache_dir, progress,
                              notes, out_dir=run.plots_dir, methods=methods, seed=seed, max_points=max_points,
                              n_outliers=n_outliers, title=f"{run.path.name} ({model['backbone']})")
    return result


def _embed_extracted(backbone, paths, labels, predictions, classes, settings, cache_dir, progress, notes,
                     **embed_args) -> EmbedResult:
    extraction = extract_features(backbone, paths, settings, resolve_cache_root(cache_dir), progress)
    if extraction.failures:
        notes.append(f"{len(extraction.failures)} unreadable images left out")
    if not extraction.ok_indices:
        raise TransferlabError("no readable images to embed")
    ok = extraction.ok_indices
    if extraction.n_extracted:
        notes.append(f"features: {extraction.n_extracted} extracted, {extraction.n_cached} from cache")
    result = embed(extraction.features, np.asarray([labels[i] for i in ok]), classes,
                   predictions=np.asarray([predictions[i] for i in ok]) if predictions is not None else None,
                   paths=[paths[i] for i in ok], **embed_args)
    result.notes[:0] = notes
    write_json(Path(embed_args["out_dir"]) / f"{embed_args.get('prefix', 'embed')}.json", result.to_dict())
    return result


def _limit_per_class(samples: list[Sample], per_class: int | None, seed: int) -> list[Sample]:
    if per_class is None:
        return samples
    rng = random.Random(seed)
    kept: list[Sample] = []
    for label in sorted({s.label for s in samples}):
        group = sorted((s for s in samples if s.label == label), key=lambda s: str(s.path))
        rng.shuffle(group)
        kept.extend(group[:per_class])
    return kept


def embed_data(
    data_dir: str | os.PathLike,
    backbone: str = DEFAULT_BACKBONE,
    *,
    out_dir: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    resolution: int | None = None,
    layers: tuple[str, ...] | list[str] | str = DEFAULT_LAYERS,
    pool: str = "avg",
    precision: str = "auto",
    per_class: int | None = None,
    methods: tuple[str, ...] | list[str] = METHODS,
    seed: int = 0,
    max_points: int = 5000,
    n_outliers: int = 16,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    progress: bool = True,
) -> EmbedResult:
    """Maps of an image folder (one subfolder per class) without a run: no predictions.

    Defaults match the probe's (layers, pooling, resolution rule, precision), so features a
    probe already extracted come from the cache and vice versa.
    """
    scan = scan_data(data_dir).data  # a pre-split folder's train/ and val/ are not classes
    samples = _limit_per_class(scan.samples, per_class, seed)
    model = create_backbone(backbone, weights)
    paths = [s.path for s in samples]
    if resolution is None:
        resolution, _ = choose_resolution(paths, model.native_size)
    settings = ExtractionSettings(resolution=resolution, layers=parse_layers(layers), pool=pool,
                                  precision=resolve_precision(precision), batch_size=batch_size,
                                  workers=default_workers() if workers is None else workers)
    notes = [f"{backbone} at {resolution}px, layers {', '.join(settings.layers)} ({pool} pooled)"]
    return _embed_extracted(model, paths, [s.label for s in samples], None, scan.classes, settings, cache_dir,
                            progress, notes, out_dir=out_dir, methods=methods, seed=seed, max_points=max_points,
                            n_outliers=n_outliers, title=f"{scan.root.name} ({backbone})")
