"""An interactive 3-D view of a feature space (`embed --3d`): one self-contained HTML page.

The first three principal components of the standardised features, one trace per class
(the 2-D maps' colours), wrongly predicted images drawn as crosses, each point's file,
split, true and predicted class on hover. plotly.js is inlined, so the page opens from a
laptop with no network (and no page is served from anywhere). plotly is the optional extra
`3d` (`pip install 'transferlab[3d]'`); asking for the view without it is one line, given
before any feature is extracted.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from transferlab.atomic import write_text
from transferlab.errors import TransferlabError
from transferlab.insight.embed_plots import class_colours
from transferlab.insight.map_methods import standardise

EXTRA = "3d"
FILE_NAME = "embed_3d.html"


def require_plotly() -> None:
    """One line naming the extra when plotly is missing."""
    if importlib.util.find_spec("plotly") is None:
        raise TransferlabError(f"the 3-D view needs plotly, an optional extra: pip install 'transferlab[{EXTRA}]'")


def principal_3d(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """(n, 3) coordinates on the first principal components of the standardised features, and
    the share of variance each explains; zero columns where there are fewer than 3 (tiny inputs)."""
    from sklearn.decomposition import PCA

    x = standardise(features)
    n_components = min(3, x.shape[0], x.shape[1])
    xyz = np.zeros((x.shape[0], 3))
    shares = [0.0, 0.0, 0.0]
    if n_components >= 1:
        pca = PCA(n_components=n_components, random_state=seed)
        xyz[:, :n_components] = pca.fit_transform(x)
        shares[:n_components] = [float(v) for v in pca.explained_variance_ratio_]
    return xyz, shares


def _hover(i: int, classes: list[str], labels: np.ndarray, predictions: np.ndarray | None,
           paths: list | None, splits: list[str] | None) -> str:
    parts = [str(paths[i])] if paths is not None else [f"#{i}"]
    if splits is not None:
        parts.append(f"split: {splits[i]}")
    parts.append(f"class: {classes[labels[i]]}")
    if predictions is not None and predictions[i] >= 0:
        parts.append(f"predicted: {classes[predictions[i]]}")
    return "<br>".join(_escape(p) for p in parts)


def _escape(text: str) -> str:
    # Hover text is rendered as HTML by plotly.js: a file or class name is data, never markup.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_3d_view(features: np.ndarray, labels: np.ndarray, classes: list[str], path: str | os.PathLike, *,
                  predictions: np.ndarray | None = None, paths: list | None = None,
                  splits: list[str] | None = None, title: str = "", seed: int = 0) -> Path:
    """Write the 3-D view of `features` (n x d) with class indices `labels` to `path`.

    `predictions`: predicted class index per image, -1 where there is none.
    """
    require_plotly()
    import plotly.graph_objects as go

    labels = np.asarray(labels, dtype=np.int64)
    predictions = None if predictions is None else np.asarray(predictions, dtype=np.int64)
    xyz, shares = principal_3d(features, seed)
    colours = class_colours(len(classes))
    fig = go.Figure()
    for index, name in enumerate(classes):
        members = np.flatnonzero(labels == index)
        if not len(members):
            continue
        wrong = (predictions[members] >= 0) & (predictions[members] != index) if predictions is not None \
            else np.zeros(len(members), dtype=bool)
        r, g, b = (int(255 * c) for c in colours[index][:3])
        fig.add_trace(go.Scatter3d(
            x=xyz[members, 0], y=xyz[members, 1], z=xyz[members, 2], mode="markers", name=_escape(name),
            marker={"size": [5 if w else 3 for w in wrong], "color": f"rgb({r},{g},{b})",
                    "symbol": ["x" if w else "circle" for w in wrong]},
            text=[_hover(i, classes, labels, predictions, paths, splits) for i in members], hoverinfo="text",
        ))
    axes = {f"{axis}axis": {"title": {"text": f"PC{k + 1} ({shares[k]:.0%})"}}
            for k, axis in enumerate(("x", "y", "z"))}
    heading = f"PCA 3-D of {len(labels)} images" + (f": {_escape(title)}" if title else "")
    if predictions is not None and (predictions >= 0).any():
        heading += " (crosses: wrong predictions)"
    fig.update_layout(title={"text": heading}, scene=axes, legend={"itemsizing": "constant"},
                      margin={"l": 0, "r": 0, "t": 40, "b": 0})
    target = Path(path)
    # include_plotlyjs=True inlines plotly.js (no CDN); MathJax stays out (its default is a CDN link).
    write_text(target, fig.to_html(include_plotlyjs=True, include_mathjax=False, full_html=True))
    return target
