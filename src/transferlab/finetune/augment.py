"""Augmentation presets (torchvision v2), applied to uint8 image tensors at training resolution.

A recipe names a preset, or lists transforms with magnitudes:
    augment: [{name: rotation, degrees: 15}, {name: flip}, {name: zoom, scale: [0.8, 1.0]}]
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from transferlab.errors import TransferlabError


def _one(name: str, options: dict, resolution: int) -> v2.Transform:
    if name == "flip":
        return v2.RandomHorizontalFlip(p=options.get("p", 0.5))
    if name == "vflip":
        return v2.RandomVerticalFlip(p=options.get("p", 0.5))
    if name == "crop":
        return v2.RandomResizedCrop(resolution, scale=tuple(options.get("scale", (0.7, 1.0))), antialias=True)
    if name == "rotation":
        return v2.RandomRotation(options.get("degrees", 15))
    if name == "shift":
        s = options.get("fraction", 0.1)
        return v2.RandomAffine(degrees=0, translate=(s, s))
    if name == "zoom":
        return v2.RandomAffine(degrees=0, scale=tuple(options.get("scale", (0.85, 1.15))))
    if name == "shear":
        return v2.RandomAffine(degrees=0, shear=options.get("degrees", 10))
    if name == "colour" or name == "color":
        m = options.get("strength", 0.2)
        return v2.ColorJitter(brightness=m, contrast=m, saturation=m, hue=min(0.5, m / 4))
    if name == "randaugment":
        return v2.RandAugment(num_ops=options.get("ops", 2), magnitude=options.get("magnitude", 9))
    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    raise TransferlabError(
        f"unknown augmentation '{name}': flip, vflip, crop, rotation, shift, zoom, shear, colour, "
        "randaugment, trivialaugment"
    )


PRESETS: dict[str, list[dict]] = {
    "none": [],
    "light": [{"name": "flip"}, {"name": "crop", "scale": (0.8, 1.0)}],
    # The classic Keras ImageDataGenerator set compared in the scene study.
    "classic": [
        {"name": "rotation", "degrees": 15},
        {"name": "shift", "fraction": 0.1},
        {"name": "zoom", "scale": (0.9, 1.1)},
        {"name": "shear", "degrees": 8},
        {"name": "flip"},
    ],
    "randaugment": [{"name": "flip"}, {"name": "randaugment"}],
    "trivialaugment": [{"name": "flip"}, {"name": "trivialaugment"}],
}


def build_augmentation(spec: str | list[dict], resolution: int) -> v2.Transform:
    """uint8 (3, H, W) at `resolution` -> augmented uint8 (3, R, R)."""
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise TransferlabError(f"unknown augmentation preset '{spec}': {', '.join(PRESETS)}")
        items = PRESETS[spec]
    else:
        items = spec
    transforms = []
    for item in items:
        options = dict(item)
        name = options.pop("name", None)
        transforms.append(_one(str(name), options, resolution))
    return v2.Compose(transforms) if transforms else v2.Identity()


def mix_batch(images: torch.Tensor, labels: torch.Tensor, n_classes: int, mixup: float, cutmix: float):
    """MixUp/CutMix on a float batch: returns images and soft labels (or hard labels if off)."""
    choices = []
    if mixup > 0:
        choices.append(v2.MixUp(alpha=mixup, num_classes=n_classes))
    if cutmix > 0:
        choices.append(v2.CutMix(alpha=cutmix, num_classes=n_classes))
    if not choices:
        return images, labels
    return v2.RandomChoice(choices)(images, labels)
