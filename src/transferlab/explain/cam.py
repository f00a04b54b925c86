"""Class-activation maps (pytorch-grad-cam) for any run that is one torch network.

A probe with a logistic-regression head is a linear layer on pooled backbone features,
so gradient-based CAM applies to it exactly as to a fine-tuned network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from transferlab.backbones import cam_layer
from transferlab.errors import TransferlabError

CAM_METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM}
# Overlays of small inputs are upscaled to at least this many pixels, so people can see them.
MIN_DISPLAY_SIZE = 224
# Images per backward pass. Autograd keeps every activation of the pass, about 37 MB per image
# for lite0 at 128 px and 3x that at 224 px: 12 images in one pass added 450 MB to a probe's
# peak RSS (its error grid). CAMs are normalised per image, so the chunking changes no map.
CAM_BATCH = 2


def target_layer(timm_model: nn.Module) -> nn.Module:
    """The module whose output is the backbone's final feature map (the backbone knows it)."""
    return cam_layer(timm_model)


@dataclass
class CamResult:
    cam: np.ndarray  # (R, R) float32 in [0, 1], R = network input size
    predicted: int
    probability: float
    overlay: np.ndarray  # (S, S, 3) uint8, S = max(R, MIN_DISPLAY_SIZE)


def class_activation_maps(
    network: nn.Module,
    layer: nn.Module,
    images_uint8: torch.Tensor,
    normalise,
    method: str = "gradcam",
    targets: list[int] | None = None,
) -> list[CamResult]:
    """CAM for each image of a (B, 3, R, R) uint8 batch, for the predicted class unless `targets` is given."""
    if method not in CAM_METHODS:
        raise TransferlabError(f"unknown CAM method '{method}': choose from {', '.join(CAM_METHODS)}")
    network = network.eval().float()
    # A network whose parameters were frozen for training still needs gradients to flow
    # back to the target layer's activations.
    network.requires_grad_(True)
    x = normalise(images_uint8).float()
    with torch.no_grad():
        probabilities = torch.cat([torch.softmax(network(part), dim=1) for part in x.split(CAM_BATCH)])
    predicted = probabilities.argmax(dim=1).tolist()
    chosen = targets if targets is not None else predicted
    with CAM_METHODS[method](model=network, target_layers=[layer]) as cam:
        maps = np.concatenate([
            cam(input_tensor=x[i:i + CAM_BATCH],
                targets=[ClassifierOutputTarget(int(t)) for t in chosen[i:i + CAM_BATCH]])
            for i in range(0, len(x), CAM_BATCH)])
    results = []
    for image, grey, target, pred in zip(images_uint8, maps, chosen, predicted):
        grey = np.nan_to_num(grey.astype(np.float32)).clip(0.0, 1.0)
        results.append(CamResult(grey, int(pred), float(probabilities[len(results), pred]), _overlay(image, grey)))
    return results


def _overlay(image_uint8: torch.Tensor, grey: np.ndarray) -> np.ndarray:
    rgb = image_uint8.permute(1, 2, 0).numpy()
    size = max(rgb.shape[0], MIN_DISPLAY_SIZE)
    if size != rgb.shape[0]:
        rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC))
        grey = np.asarray(Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR))
    return show_cam_on_image(rgb.astype(np.float32) / 255.0, grey.clip(0, 1), use_rgb=True)


def save_overlay(result: CamResult, path: Path) -> Path:
    from transferlab.atomic import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(result.overlay).save(tmp, format="PNG")
    return path
