"""`transferlab explain RUN IMAGES...`: CAM overlays for a finished run."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from transferlab.data.images import ImageDecodeError
from transferlab.data.transforms import normalise, preprocess
from transferlab.explain.cam import (
    CAM_METHODS,
    class_activation_maps,
    save_overlay,
    target_layer,
)
from transferlab.errors import TransferlabError
from transferlab.inference.run_network import load_run_network
from transferlab.runs import OpenModel, open_member, open_run


@dataclass
class ExplainedImage:
    path: Path
    predicted: str
    probability: float
    overlays: dict[str, Path]  # method -> PNG
    error: str | None = None


class RunExplainer:
    """Loads a run's network once and explains any number of images."""

    def __init__(self, run_dir: str | Path | OpenModel):
        loaded = load_run_network(run_dir)
        if loaded.timm_model is None:
            raise TransferlabError(f"{getattr(run_dir, 'path', run_dir)}: an ensemble has no one backbone to "
                                   "explain; `member_explainers` explains each member")
        card = loaded.card
        self.classes = list(card.classes)
        self.resolution = card.resolution
        self.interpolation = card.interpolation
        self.normalise = partial(normalise, mean=card.mean, std=card.std)
        self.network = loaded.network
        self.layer = target_layer(loaded.timm_model)

    def explain(self, images_uint8: torch.Tensor, method: str = "gradcam"):
        return class_activation_maps(self.network, self.layer, images_uint8, self.normalise, method)

    def explain_paths(self, paths: list[Path], out_dir: Path, methods=("gradcam", "gradcam++")) -> list[ExplainedImage]:
        if Path(out_dir).is_symlink():  # RUN/explain/m00 of a handed-over run may point at any folder of the user's
            raise TransferlabError(f"{out_dir}: is a link; explain writes only into a real folder (give --out)")
        results = []
        for index, path in enumerate(paths):
            path = Path(path)
            try:
                image = preprocess(path, self.resolution, self.interpolation).unsqueeze(0)
            except ImageDecodeError as exc:
                results.append(ExplainedImage(path, "", 0.0, {}, f"{path}: {exc}"))
                continue
            overlays = {}
            for method in methods:
                cam = self.explain(image, method)[0]
                overlays[method] = save_overlay(cam, out_dir / f"{index:03d}_{_slug(path.stem)}_{_slug(method)}.png")
            results.append(ExplainedImage(path, self.classes[cam.predicted], cam.probability, overlays))
        return results


def member_explainers(run_dir: str | Path) -> list[tuple[str, RunExplainer]]:
    """[("", explainer)] for a run; for an ensemble one explainer per member, named by its folder
    (m00, m01, ...): Grad-CAM needs one backbone, and each member looks at the image its own way."""
    run = open_run(run_dir)
    if run.card.kind != "ensemble":
        return [("", RunExplainer(run))]
    return [(name, RunExplainer(open_member(run, name))) for name in run.card.members]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.replace("+", "p")).strip("_") or "image"


__all__ = ["CAM_METHODS", "RunExplainer", "ExplainedImage", "member_explainers"]
