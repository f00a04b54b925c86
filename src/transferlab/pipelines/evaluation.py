"""Evaluate predictions into a run folder: metrics, plots, baseline, error analysis.

Shared by every kind of run (probe, fine-tune): they differ in how they produce class
probabilities, not in how those are judged and reported.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from transferlab.atomic import write_text
from transferlab.data.transforms import preprocess
from transferlab.errors import TransferlabError
from transferlab.explain.cam import class_activation_maps
from transferlab.report.baseline import compare_to_baseline
from transferlab.report.errors import (
    ErrorTile,
    cluster_order,
    most_confused_pairs,
    plot_error_grid,
    reorder,
    top_loss_indices,
)
from transferlab.report.metrics import (
    classification_metrics,
    classification_report_text,
)
from transferlab.report.plots import plot_confusion_matrix, plot_per_class_f1
from transferlab.runs import RunDir


@dataclass
class SplitPredictions:
    name: str  # "val" or "test"
    paths: list[Path]
    labels: np.ndarray
    probabilities: np.ndarray  # (n, n_classes)


@dataclass
class CamSource:
    """What a CAM of the run's model needs; None where the model is not one torch network."""

    network: nn.Module  # normalised images -> logits
    layer: nn.Module
    normalise: Callable[[torch.Tensor], torch.Tensor]
    resolution: int
    interpolation: str


@dataclass
class Evaluation:
    metrics: dict
    warnings: list[str]
    baseline_table: str | None
    sections: list[tuple[str, str]]
    evaluated: str


def evaluate_run(
    run: RunDir,
    classes: list[str],
    splits: list[SplitPredictions],
    *,
    title: str,
    baseline: dict[str, float] | None = None,
    baseline_name: str = "",
    cam: CamSource | None = None,
    cam_unavailable: str = "",
    error_grid: int = 12,
) -> Evaluation:
    splits = [s for s in splits if len(s.labels)]
    if not splits:
        raise TransferlabError("no validation images (every class has a single image)")
    metrics: dict = {}
    rows = []
    warnings: list[str] = []
    for split in splits:
        predicted = split.probabilities.argmax(axis=1)
        metrics[split.name] = classification_metrics(split.labels, predicted, classes)
        absent = metrics[split.name]["absent_classes"]
        if absent:
            warnings.append(f"{split.name}: no images of class(es) {', '.join(absent)}; "
                            "they are left out of the macro averages")
        write_text(run.path / f"classification_report_{split.name}.txt",
                   classification_report_text(split.labels, predicted, classes))
        _plot_confusion(metrics[split.name]["confusion"], classes, run.plots_dir / f"confusion_{split.name}.png",
                        f"{title} ({split.name})")
        for path, true, pred, probs in zip(split.paths, split.labels, predicted, split.probabilities):
            rows.append([str(path), split.name, classes[true], classes[pred]] + [f"{p:.5f}" for p in probs])
    run.write_csv("predictions.csv", ["path", "split", "true", "predicted"] + [f"p_{c}" for c in classes], rows)

    evaluated = splits[-1]  # test when there is one
    baseline_table = None
    if baseline is not None:
        comparison = compare_to_baseline(metrics[evaluated.name]["per_class"], baseline)
        metrics[evaluated.name]["baseline"] = comparison.to_dict()
        metrics["baseline"] = {"split": evaluated.name, **comparison.to_dict()}
        baseline_table = comparison.table_text()
        write_text(run.path / "baseline.txt", baseline_table + "\n")
        if comparison.missing_in_ours:
            warnings.append(f"classes in the baseline but not in the data: {', '.join(comparison.missing_in_ours)}")
        if comparison.missing_in_baseline:
            warnings.append(f"classes in the data but not in {baseline_name or 'the baseline'}: "
                            f"{', '.join(comparison.missing_in_baseline)}")
        plot_per_class_f1(metrics[evaluated.name]["per_class"],
                          run.plots_dir / f"per_class_f1_{evaluated.name}.png", baseline)

    pairs = most_confused_pairs(metrics[evaluated.name]["confusion"], classes)
    metrics[evaluated.name]["confused_pairs"] = pairs
    sections = [(f"Most confused class pairs ({evaluated.name})", _pairs_html(pairs))]
    if error_grid > 0:
        # Every split: with a test folder, validation errors are still the ones to learn from.
        for split in splits:
            note = write_error_grid(split, classes, run.plots_dir / f"errors_{split.name}.png", error_grid,
                                    cam, cam_unavailable)
            sections.append((f"Error analysis ({split.name})", f"<p>{html.escape(note)}</p>"))
    return Evaluation(metrics, warnings, baseline_table, sections, evaluated.name)


def _plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    """Above 15 classes, order them so that mutually confused classes sit together."""
    if len(classes) > 15:
        confusion, classes = reorder(confusion, classes, cluster_order(confusion))
        title += ", clustered order"
    plot_confusion_matrix(confusion, classes, path, title=title)


def write_error_grid(split: SplitPredictions, classes: list[str], out_png: Path, k: int,
                     cam: CamSource | None, cam_unavailable: str = "") -> str:
    """Plot the k most confidently wrong images (with CAM where possible); returns a note."""
    chosen = top_loss_indices(split.labels, split.probabilities, k)
    if not chosen:
        return "No misclassified images."
    resolution = cam.resolution if cam else 128
    interpolation = cam.interpolation if cam else "bicubic"
    images = torch.stack([preprocess(split.paths[i], resolution, interpolation) for i in chosen])
    overlays: list[np.ndarray | None] = [None] * len(chosen)
    if cam is not None:
        maps = class_activation_maps(cam.network, cam.layer, images, cam.normalise)
        overlays = [m.overlay for m in maps]
        note = f"The {len(chosen)} most confidently wrong images, with Grad-CAM for the predicted class"
    else:
        note = f"The {len(chosen)} most confidently wrong images (no CAM: {cam_unavailable or 'not available'})"
    tiles = []
    for index, image, overlay in zip(chosen, images, overlays):
        predicted = int(split.probabilities[index].argmax())
        name = Path(split.paths[index]).name.encode("utf-8", "backslashreplace").decode("utf-8")
        tiles.append(ErrorTile(image.permute(1, 2, 0).numpy(), classes[int(split.labels[index])],
                               classes[predicted], float(split.probabilities[index, predicted]), overlay, name))
    plot_error_grid(tiles, out_png, title="most confidently wrong")
    return f"{note}: plots/{out_png.name}."


def _pairs_html(pairs: list[dict]) -> str:
    if not pairs:
        return "<p>No confusions.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(p['true'])}</td><td>{html.escape(p['predicted'])}</td>"
        f"<td class='num'>{p['count']}</td><td class='num'>{p['share']:.1%}</td></tr>"
        for p in pairs
    )
    return ("<table><thead><tr><th>true</th><th>predicted as</th><th>images</th>"
            f"<th>share of true class</th></tr></thead><tbody>{rows}</tbody></table>")
