"""The numbers behind feature-space maps: 2-D projections (PCA, UMAP, t-SNE), per-class
silhouettes and the images farthest from their class centre.

All functions take standardised features (see `standardise`) and know nothing about files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from transferlab.errors import TransferlabError

METHODS = ("pca", "umap", "tsne")
METHOD_TITLES = {"pca": "PCA", "umap": "UMAP", "tsne": "t-SNE"}
# Neighbour-based maps need a handful of points before they mean anything.
MIN_POINTS_NEIGHBOURS = 5
TSNE_PCA_DIMS = 50  # t-SNE on the first 50 principal components: standard, and much faster
TSNE_EXACT_MAX_POINTS = 300


def check_methods(methods: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The methods, once each in the given order; one line naming any unknown one."""
    chosen = tuple(dict.fromkeys(methods))
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        raise TransferlabError(f"unknown map method(s) {', '.join(unknown) or '(none given)'}: "
                               f"choose from {', '.join(METHODS)}")
    return chosen


def standardise(features: np.ndarray) -> np.ndarray:
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


def project(method: str, x: np.ndarray, seed: int, notes: list[str]) -> np.ndarray | None:
    """2-D coordinates of `x` by `method`, or None with a note in `notes` saying why not."""
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


def silhouettes(x: np.ndarray, labels: np.ndarray, classes: list[str]) -> tuple[dict | None, float | None, str | None]:
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


def outliers(x: np.ndarray, labels: np.ndarray, classes: list[str], count: int,
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
