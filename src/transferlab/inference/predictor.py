"""The predictor surface every run kind shares: uint8 image batches -> class probabilities."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transferlab.card import ModelCard
from transferlab.data.images import ImageDecodeError
from transferlab.data.transforms import fit_square, preprocess
from transferlab.errors import TransferlabError


@dataclass
class Prediction:
    path: Path
    top: list[tuple[str, float]]  # (class, probability), best first
    error: str | None = None


class Predictor:
    """A finished run's model, loaded once: uint8 image batches -> class probabilities.

    Subclasses set `card`, `classes`, `resolution`, `interpolation`, `tta` (the test-time
    augmentation mode they apply) and implement `predict_tensor`.
    Inputs may be paths (`predict_paths`), or PIL images and NumPy arrays (`predict_images`).
    """

    card: ModelCard
    classes: list[str]
    resolution: int
    interpolation: str
    tta: str = "none"

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

    def predict_images(self, images: list, top_k: int = 3) -> list[Prediction]:
        """PIL images or (H, W, 3) uint8 arrays, prepared exactly as files are; `path` is the index."""
        batch = []
        for image in images:
            if isinstance(image, np.ndarray):
                if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                    raise TransferlabError(f"expected an (H, W, 3) uint8 array, got {image.shape} {image.dtype}")
                image = Image.fromarray(image)
            batch.append(fit_square(image.convert("RGB"), self.resolution, self.interpolation))
        probabilities = self.predict_tensor(torch.stack(batch)) if batch else []
        return [self._top(Path(str(i)), row, top_k) for i, row in enumerate(probabilities)]

    def _top(self, path: Path, row: np.ndarray, top_k: int) -> Prediction:
        best = np.argsort(-row)[:top_k]
        return Prediction(path, [(self.classes[i], float(row[i])) for i in best])
