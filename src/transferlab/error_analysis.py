"""Error analysis for a run's evaluated split: confused pairs, top-loss grid with CAM overlays."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import torch

from transferlab.errors import TransferlabError
from transferlab.explain.cam import class_activation_maps, target_layer
from transferlab.features.extract import FeatureExtractor, preprocess
from transferlab.network import build_probe_network
from transferlab.predict import ProbeParts
from transferlab.report.errors import ErrorTile, most_confused_pairs, plot_error_grid, top_loss_indices


def write_error_grid(
    parts: ProbeParts,
    paths: list[Path],
    labels: np.ndarray,
    probabilities: np.ndarray,
    out_png: Path,
    k: int = 12,
) -> tuple[Path | None, str]:
    """Plot the k most confidently wrong images; returns (png or None, note for the report)."""
    chosen = top_loss_indices(labels, probabilities, k)
    if not chosen:
        return None, "no misclassified images"
    extractor = FeatureExtractor(parts.backbone, parts.settings)
    images = torch.stack([preprocess(paths[i], parts.settings.resolution, parts.backbone.interpolation) for i in chosen])
    overlays: list[np.ndarray | None] = [None] * len(chosen)
    note = f"the {len(chosen)} most confidently wrong images, with Grad-CAM for the predicted class"
    try:
        network = build_probe_network(parts)
        cams = class_activation_maps(network, target_layer(parts.backbone.model), images, extractor.normalise)
        overlays = [c.overlay for c in cams]
    except TransferlabError as exc:  # a head that is not one linear layer has no CAM
        note = f"the {len(chosen)} most confidently wrong images (no CAM: {exc})"
    tiles = []
    for index, image, overlay in zip(chosen, images, overlays):
        predicted = int(probabilities[index].argmax())
        tiles.append(ErrorTile(image.permute(1, 2, 0).numpy(), parts.classes[int(labels[index])],
                               parts.classes[predicted], float(probabilities[index, predicted]), overlay))
    return plot_error_grid(tiles, out_png, title="most confidently wrong"), note


def confused_pairs_html(confusion: list[list[int]], classes: list[str], k: int = 10) -> tuple[list[dict], str]:
    pairs = most_confused_pairs(confusion, classes, k)
    if not pairs:
        return pairs, "<p>No confusions.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(p['true'])}</td><td>{html.escape(p['predicted'])}</td>"
        f"<td class='num'>{p['count']}</td><td class='num'>{p['share']:.1%}</td></tr>"
        for p in pairs
    )
    table = ("<table><thead><tr><th>true</th><th>predicted as</th><th>images</th>"
             f"<th>share of true class</th></tr></thead><tbody>{rows}</tbody></table>")
    return pairs, table
