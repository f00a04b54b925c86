"""What OpenVINO does to an exported model, measured at export time for `serve --engine openvino*`.

The graphs measured are the ones serving compiles: uint8 images in, normalised inside the
graph (openvino_rt.ImageInput). fp32: the largest probability difference from PyTorch on the
export's parity samples as uint8 images (random ones, then the run's own); it must pass the same
tolerance as ONNX Runtime. bf16: accuracy
on the run's own validation images (predictions.csv) in bf16 against fp32, and how often the
two agree; serving in bf16 is allowed only when bf16 loses at most MAX_BF16_ACCURACY_DROP. The
demo run (elpv, 525 validation images) measured 0.7467 fp32 against 0.7657 bf16, agreement 0.952.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from transferlab.card import ModelCard
from transferlab.data.images import ImageDecodeError
from transferlab.data.transforms import normalise, preprocess
from transferlab.errors import TransferlabError
from transferlab.openvino_rt import CompiledGraph, ImageInput, available, compile_onnx, read_onnx_file
from transferlab.runs import RunDir, image_on_disk, iter_predictions

# bf16 may cost at most this much validation accuracy against fp32: one point, about half the
# binomial standard error of a 500-image validation set.
MAX_BF16_ACCURACY_DROP = 0.01
MAX_IMAGES = 1000  # enough for a figure to a point; bounded so export stays quick
BATCH = 32


def _validation_images(run: RunDir, card: ModelCard) -> tuple[list[Path], list[int]]:
    """Paths and class indices of the run's validation rows that are still on disk."""
    paths, labels = [], []
    for row in iter_predictions(run.path, "val", missing_ok=True):  # stops at MAX_IMAGES
        if len(paths) == MAX_IMAGES:
            break
        path = image_on_disk(run, row.path) if row.true in card.classes else None
        if path is not None:
            paths.append(path)
            labels.append(card.classes.index(row.true))
    return paths, labels


def _predict(graph: CompiledGraph, paths: list[Path], card: ModelCard) -> tuple[np.ndarray, list[int]]:
    """Predicted class per readable image (a graph that takes uint8), and which images were readable."""
    predicted, kept = [], []
    for start in range(0, len(paths), BATCH):
        batch, indices = [], []
        for i, path in enumerate(paths[start:start + BATCH], start):
            try:
                batch.append(preprocess(path, card.resolution, card.interpolation))
                indices.append(i)
            except ImageDecodeError:
                continue
        if batch:
            predicted.extend(graph.run(torch.stack(batch).numpy()).argmax(1).tolist())
            kept.extend(indices)
    return np.asarray(predicted, dtype=np.int64), kept


def _bf16_check(data: bytes, run: RunDir, card: ModelCard, fp32, threads: int) -> dict:
    paths, labels = _validation_images(run, card)
    if not paths:
        return {"passed": False, "reason": "no validation images on disk (predictions.csv)"}
    bf16 = compile_onnx(data, "bf16", threads, where=str(run.model_dir / "model.onnx"),
                        image_input=ImageInput.of(card.mean, card.std))
    if bf16.precision != "bf16":
        return {"passed": False, "reason": "this CPU has no bf16: OpenVINO runs fp32"}
    reference, kept = _predict(fp32, paths, card)
    candidate, _ = _predict(bf16, [paths[i] for i in kept], card)
    truth = np.asarray([labels[i] for i in kept])
    accuracy_fp32 = float((reference == truth).mean())
    accuracy_bf16 = float((candidate == truth).mean())
    return {
        "images": len(kept),
        "accuracy_fp32": round(accuracy_fp32, 4),
        "accuracy_bf16": round(accuracy_bf16, 4),
        "agreement": round(float((candidate == reference).mean()), 4),
        "max_accuracy_drop": MAX_BF16_ACCURACY_DROP,
        "passed": bool(accuracy_fp32 - accuracy_bf16 <= MAX_BF16_ACCURACY_DROP),
    }


def _largest_difference(graph: CompiledGraph, network: torch.nn.Module, images: torch.Tensor,
                        card: ModelCard) -> float:
    """Max abs difference between the graph on uint8 `images` and PyTorch on them normalised."""
    with torch.no_grad():
        expected = network(normalise(images, card.mean, card.std)).numpy()
    return float(np.abs(graph.run(images.numpy()).astype(np.float64) - expected).max())


def openvino_check(onnx_file: Path, run: RunDir, card: ModelCard, network: torch.nn.Module,
                   images: list[torch.Tensor], tolerance: float) -> dict | None:
    """The record export.json keeps under "openvino", or None where OpenVINO is not installed.
    `images`: uint8 batches, compared with `network` on them normalised."""
    if not available():
        return None
    threads = torch.get_num_threads()
    data = read_onnx_file(onnx_file)
    try:
        served = compile_onnx(data, "fp32", threads, where=str(onnx_file),
                              image_input=ImageInput.of(card.mean, card.std))
    except TransferlabError as exc:  # an op OpenVINO lacks: the ONNX export itself still stands
        reason = str(exc)[:300]
        return {"fp32": {"passed": False, "reason": reason}, "bf16": {"passed": False, "reason": reason}}
    worst = max(_largest_difference(served, network, x, card) for x in images)
    return {
        "fp32": {"max_abs_diff": worst, "tolerance": tolerance, "passed": bool(worst <= tolerance)},
        "bf16": _bf16_check(data, run, card, served, threads),
    }
