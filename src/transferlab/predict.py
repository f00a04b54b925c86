"""Predictions from a finished run folder: the model is rebuilt from `model/` alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transferlab.backbones import Backbone, create_architecture
from transferlab.backbones.weights import load_safetensors_into
from transferlab.classifiers.heads import load_classifier
from transferlab.data.images import ImageDecodeError
from transferlab.errors import TransferlabError
from transferlab.features.extract import (
    ExtractionSettings,
    FeatureExtractor,
    preprocess,
)
from transferlab.precision import inference_precision
from transferlab.runs import load_complete_run, read_model_card


@dataclass
class Prediction:
    path: Path
    top: list[tuple[str, float]]  # (class, probability), best first
    error: str | None = None


@dataclass
class ProbeParts:
    """What a probe run's model/ folder holds, loaded: backbone, settings, head, classes."""

    meta: dict
    backbone: Backbone
    settings: ExtractionSettings
    classifier: object
    classes: list[str]


def load_probe_parts(run_path: str | Path) -> ProbeParts:
    run = load_complete_run(run_path)
    meta = read_model_card(run.path)
    if meta["kind"] != "probe":
        raise TransferlabError(f"{run.path}: model kind '{meta['kind']}' is not supported here")
    model = create_architecture(meta["backbone"])
    load_safetensors_into(model, run.model_dir / "backbone.safetensors")
    backbone = Backbone(model.eval(), meta["backbone"], str(meta.get("weights_source", "run")), "run")
    try:
        settings = ExtractionSettings(
            resolution=meta["resolution"],
            layers=tuple(meta["layers"]),
            pool=meta["pool"],
            precision=inference_precision(meta),
            workers=0,
        )
    except (KeyError, TypeError) as exc:
        raise TransferlabError(f"{run.model_dir / 'model.json'}: probe settings missing or invalid ({exc})") from None
    classifier = load_classifier(run.model_dir / "classifier.skops")
    known = np.asarray(getattr(classifier, "classes_", []))
    if known.size == 0 or not np.issubdtype(known.dtype, np.integer) or known.min() < 0 or known.max() >= len(meta["classes"]):
        raise TransferlabError(f"{run.model_dir}: the classifier predicts {known.size} classes that model.json's "
                               f"{len(meta['classes'])} class names do not cover")
    return ProbeParts(meta, backbone, settings, classifier, meta["classes"])


class Predictor:
    """A finished run's model, loaded once: uint8 image batches -> class probabilities.

    Subclasses set `meta`, `classes`, `resolution`, `interpolation` and implement `predict_tensor`.
    """

    meta: dict
    classes: list[str]
    resolution: int
    interpolation: str

    def predict_tensor(self, images_uint8: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def predict_paths(self, paths: list[str | Path], top_k: int = 3, batch_size: int = 32) -> list[Prediction]:
        results: list[Prediction] = []
        for start in range(0, len(paths), batch_size):
            chunk = [Path(p) for p in paths[start : start + batch_size]]
            images, ok_paths = [], []
            for path in chunk:
                try:
                    images.append(preprocess(path, self.resolution, self.interpolation))
                    ok_paths.append(path)
                except ImageDecodeError as exc:
                    results.append(Prediction(path, [], f"{path}: {exc}"))
            if images:
                probabilities = self.predict_tensor(torch.stack(images))
                results.extend(self._top(path, row, top_k) for path, row in zip(ok_paths, probabilities))
        order = {str(Path(p)): i for i, p in enumerate(paths)}
        return sorted(results, key=lambda r: order.get(str(r.path), 0))

    def _top(self, path: Path, row: np.ndarray, top_k: int) -> Prediction:
        best = np.argsort(-row)[:top_k]
        return Prediction(path, [(self.classes[i], float(row[i])) for i in best])


class ProbePredictor(Predictor):
    """Backbone + classifier of a probe run."""

    def __init__(self, run_path: str | Path):
        parts = load_probe_parts(run_path)
        self.meta = parts.meta
        self.classes = parts.classes
        self.settings = parts.settings
        self.resolution = parts.settings.resolution
        self.interpolation = parts.backbone.interpolation
        self.extractor = FeatureExtractor(parts.backbone, parts.settings)
        self.classifier = parts.classifier

    def predict_tensor(self, images_uint8: torch.Tensor) -> np.ndarray:
        """(B, 3, R, R) uint8 -> (B, n_classes) probabilities."""
        features = self.extractor(images_uint8)
        try:
            known = self.classifier.predict_proba(features)
        except ValueError as exc:  # a head trained on other features (a tampered or mixed-up run)
            raise TransferlabError(f"classifier does not fit the backbone's features ({exc})") from None
        full = np.zeros((len(features), len(self.classes)))
        full[:, self.classifier.classes_] = known
        return full


def predictions_csv(results: list[Prediction]) -> list[list]:
    """Rows for a CSV: path, predicted class, its probability, error, then top-k as class:p."""
    rows = []
    for r in results:
        best = r.top[0] if r.top else ("", float("nan"))
        rows.append([str(r.path), best[0], "" if r.error else f"{best[1]:.5f}", r.error or "",
                     " ".join(f"{c}:{p:.5f}" for c, p in r.top)])
    return rows


def read_model_meta(run_path: str | Path) -> dict:
    return read_model_card(run_path)


def load_predictor(run_path: str | Path) -> Predictor:
    """The right predictor for a run folder, whatever kind of run made it."""
    kind = read_model_card(run_path)["kind"]
    if kind == "finetune":
        from transferlab.finetune.predictor import FinetunePredictor

        return FinetunePredictor(run_path)
    return ProbePredictor(run_path)
