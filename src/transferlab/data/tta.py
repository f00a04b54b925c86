"""Test-time augmentation: the views of an image whose class probabilities are averaged.

Views are made from normalised float batches (B, 3, R, R) with plain tensor operations
(flip, slice, bilinear upsampling), so the same code runs in the PyTorch predictors, in
the training's own evaluation and inside an exported ONNX graph, where the parity check
compares them. Every view keeps the input's size: a network sees what it was trained on.

- none: the image.
- flip: the image and its mirror image.
- crops: the image and its four corner crops of 7/8 of the side, enlarged back to R
  (the few-crop evaluation of the ImageNet papers, on the already centre-cropped image).
- flip-crops: those five and their mirror images (ten-crop).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from transferlab.options import TTA_MODES

CROP_SIDE = 7 / 8  # corner crops keep this share of the side: a small shift, as in ten-crop evaluation


def _image(x: torch.Tensor) -> list[torch.Tensor]:
    return [x]


def _flip(x: torch.Tensor) -> list[torch.Tensor]:
    return [x, x.flip(-1)]


def _crops(x: torch.Tensor) -> list[torch.Tensor]:
    size = int(x.shape[-1])  # a constant in a traced graph: exported inputs have a fixed size
    side = max(1, round(size * CROP_SIDE))
    far = size - side
    corners = [(0, 0), (0, far), (far, 0), (far, far)]
    views = [x]
    for top, left in corners:
        crop = x[..., top:top + side, left:left + side]
        # Upsampling needs no antialias, so this exports to ONNX as a plain Resize.
        views.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False))
    return views


def _flip_crops(x: torch.Tensor) -> list[torch.Tensor]:
    return _crops(x) + _crops(x.flip(-1))


TTA_VIEWS: dict[str, Callable[[torch.Tensor], list[torch.Tensor]]] = {
    "none": _image, "flip": _flip, "crops": _crops, "flip-crops": _flip_crops,
}
assert tuple(TTA_VIEWS) == TTA_MODES  # the names options.py checks without importing torch


def tta_views(mode: str, x: torch.Tensor) -> list[torch.Tensor]:
    return TTA_VIEWS[mode](x)


def average_probabilities(probabilities: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                          mode: str) -> torch.Tensor:
    """Mean over the views of `probabilities(view)` (each (B, n_classes))."""
    views = tta_views(mode, x)
    total = probabilities(views[0])
    for view in views[1:]:
        total = total + probabilities(view)
    return total / len(views)
