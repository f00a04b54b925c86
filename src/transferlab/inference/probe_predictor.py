"""A probe run's model: backbone (safetensors) + scikit-learn head (skops), for inference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transferlab.backbones import Backbone, create_architecture
from transferlab.backbones.weights import load_safetensors_into
from transferlab.card import ModelCard
from transferlab.classifiers.heads import load_classifier
from transferlab.errors import TransferlabError
from transferlab.features.extract import ExtractionSettings, FeatureExtractor
from transferlab.data.tta import tta_views
from transferlab.inference.predictor import Predictor
from transferlab.options import tta_mode
from transferlab.runs import OpenModel, OpenRun, open_model


@dataclass
class ProbeParts:
    """What a probe run's model/ folder holds, loaded: backbone, settings, head, classes."""

    card: ModelCard
    backbone: Backbone
    settings: ExtractionSettings
    classifier: object
    classes: list[str]


def load_probe_parts(run_path: str | Path | OpenRun | OpenModel) -> ProbeParts:
    run = open_model(run_path)  # a run folder, or an ensemble's member
    card = run.card
    if card.kind != "probe":
        raise TransferlabError(f"{run.path}: model kind '{card.kind}' is not supported here")
    model = create_architecture(card.backbone)
    load_safetensors_into(model, run.model_dir / "backbone.safetensors")
    backbone = Backbone(model.eval(), card.backbone, card.weights_source, "run")
    settings = ExtractionSettings(resolution=card.resolution, layers=tuple(card.layers), pool=card.pool,
                                  precision=card.inference_precision, workers=0)
    classifier = load_classifier(run.model_dir / "classifier.skops")
    known = np.asarray(getattr(classifier, "classes_", []))
    if known.size == 0 or not np.issubdtype(known.dtype, np.integer) or known.min() < 0 or known.max() >= len(card.classes):
        raise TransferlabError(f"{run.model_dir}: the classifier predicts {known.size} classes that model.json's "
                               f"{len(card.classes)} class names do not cover")
    return ProbeParts(card, backbone, settings, classifier, card.classes)


class ProbePredictor(Predictor):
    """Backbone + classifier of a probe run; with test-time augmentation `tta` (default: the
    card's), the classifier's probabilities are averaged over the views' features."""

    def __init__(self, run_path: str | Path | OpenRun | OpenModel, tta: str | None = None):
        parts = load_probe_parts(run_path)
        self.card = parts.card
        self.classes = parts.classes
        self.settings = parts.settings
        self.resolution = parts.settings.resolution
        self.interpolation = parts.backbone.interpolation
        self.extractor = FeatureExtractor(parts.backbone, parts.settings)
        self.classifier = parts.classifier
        self.tta = self.card.tta if tta is None else tta_mode(tta)

    def predict_tensor(self, images_uint8: torch.Tensor) -> np.ndarray:
        """(B, 3, R, R) uint8 -> (B, n_classes) probabilities."""
        if self.tta == "none":
            return self._probabilities(self.extractor(images_uint8))
        views = tta_views(self.tta, self.extractor.normalise(images_uint8))
        return sum(self._probabilities(self.extractor.from_normalised(view)) for view in views) / len(views)

    def _probabilities(self, features: np.ndarray) -> np.ndarray:
        try:
            known = self.classifier.predict_proba(features)
        except ValueError as exc:  # a head trained on other features (a tampered or mixed-up run)
            raise TransferlabError(f"classifier does not fit the backbone's features ({exc})") from None
        full = np.zeros((len(features), len(self.classes)))
        full[:, self.classifier.classes_] = known
        return full
