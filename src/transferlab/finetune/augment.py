"""Augmentation presets (torchvision v2), applied to uint8 image tensors at training resolution.

A recipe names a preset, or lists transforms with magnitudes:
    augment: [{name: rotation, degrees: 15}, {name: flip}, {name: zoom, scale: [0.8, 1.0]}]
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms import v2

from transferlab.errors import TransferlabError


def _colour(options: dict, resolution: int) -> v2.Transform:
    m = options.get("strength", 0.2)
    return v2.ColorJitter(brightness=m, contrast=m, saturation=m, hue=min(0.5, m / 4))


def _shift(options: dict, resolution: int) -> v2.Transform:
    s = options.get("fraction", 0.1)
    return v2.RandomAffine(degrees=0, translate=(s, s))


# name -> (builder(options, resolution), the options it reads)
_TRANSFORMS: dict[str, tuple] = {
    "flip": (lambda o, r: v2.RandomHorizontalFlip(p=o.get("p", 0.5)), {"p"}),
    "vflip": (lambda o, r: v2.RandomVerticalFlip(p=o.get("p", 0.5)), {"p"}),
    "crop": (lambda o, r: v2.RandomResizedCrop(r, scale=tuple(o.get("scale", (0.7, 1.0))), antialias=True), {"scale"}),
    "rotation": (lambda o, r: v2.RandomRotation(o.get("degrees", 15)), {"degrees"}),
    "shift": (_shift, {"fraction"}),
    "zoom": (lambda o, r: v2.RandomAffine(degrees=0, scale=tuple(o.get("scale", (0.85, 1.15)))), {"scale"}),
    "shear": (lambda o, r: v2.RandomAffine(degrees=0, shear=o.get("degrees", 10)), {"degrees"}),
    "colour": (_colour, {"strength"}),
    "color": (_colour, {"strength"}),
    "randaugment": (lambda o, r: v2.RandAugment(num_ops=o.get("ops", 2), magnitude=o.get("magnitude", 9)),
                    {"ops", "magnitude"}),
    "trivialaugment": (lambda o, r: v2.TrivialAugmentWide(), set()),
}


def _one(name: str, options: dict, resolution: int) -> v2.Transform:
    if name not in _TRANSFORMS:
        raise TransferlabError(
            f"unknown augmentation '{name}': {', '.join(n for n in _TRANSFORMS if n != 'color')}"
        )
    builder, known = _TRANSFORMS[name]
    unknown = sorted(set(map(str, options)) - known)
    if unknown:
        raise TransferlabError(f"augmentation '{name}': unknown option '{unknown[0]}'"
                               f"{'; it takes ' + ', '.join(sorted(known)) if known else '; it takes none'}")
    return builder(options, resolution)


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


def check_augment(spec, where: str = "recipe") -> None:
    """Names, options and values of an augmentation spec, checked on a blank image (one line
    naming the culprit) before any real image is decoded."""
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise TransferlabError(f"{where}: unknown augmentation preset '{spec}': {', '.join(PRESETS)}")
        return
    for index, item in enumerate(spec):
        options = dict(item)
        name = options.pop("name", None)
        try:
            transform = _one(str(name), options, 32)
            with torch.random.fork_rng(devices=[]):  # a check must not move the seeded random stream
                transform(torch.zeros((3, 32, 32), dtype=torch.uint8))
        except TransferlabError as exc:
            raise TransferlabError(f"{where}: augment item {index + 1}: {exc}") from None
        except Exception as exc:  # a value of the wrong type or range, as torchvision words it
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise TransferlabError(f"{where}: augment item {index + 1} ({name}): bad option value ({detail})") from None


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


class BatchCropFlip:
    """Random resized crop + horizontal flip for a whole uint8 batch in one call.

    Per-image torchvision transforms cost as much as the network's forward pass when the
    frozen units are cached (measured with py-spy); roi_align crops and resizes every
    image of the batch with its own box at once.
    """

    def __init__(self, scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = True):
        self.scale, self.ratio, self.flip = tuple(scale), tuple(ratio), flip

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import roi_align

        n, _, height, width = images.shape
        area = height * width * torch.empty(n).uniform_(*self.scale)
        log_ratio = torch.empty(n).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        aspect = torch.exp(log_ratio)
        box_w = torch.sqrt(area * aspect).clamp(max=width)
        box_h = torch.sqrt(area / aspect).clamp(max=height)
        x0 = torch.rand(n) * (width - box_w)
        y0 = torch.rand(n) * (height - box_h)
        boxes = torch.stack([torch.arange(n, dtype=torch.float32), x0, y0, x0 + box_w, y0 + box_h], dim=1)
        out = roi_align(images.float(), boxes, output_size=(height, width), sampling_ratio=1, aligned=True)
        if self.flip:
            flipped = torch.rand(n) < 0.5
            out = torch.where(flipped.view(n, 1, 1, 1), out.flip(-1), out)
        return out.round().clamp(0, 255).to(torch.uint8)


class PerImage:
    """Any per-image transform applied over a batch (the general, slower path)."""

    def __init__(self, transform: v2.Transform):
        self.transform = transform

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in images])


def build_batch_augmentation(spec: str | list[dict], resolution: int):
    """A batch -> batch augmentation: the fast crop+flip path when the spec is only that."""
    items = PRESETS.get(spec, []) if isinstance(spec, str) else spec
    names = [dict(item).get("name") for item in items]
    if isinstance(spec, str) and spec not in PRESETS:
        build_augmentation(spec, resolution)  # raises the helpful error
    if names and set(names) <= {"flip", "crop"} and names.count("crop") <= 1:
        crop = next((dict(i) for i in items if dict(i).get("name") == "crop"), None)
        scale = tuple(crop.get("scale", (0.7, 1.0))) if crop else (1.0, 1.0)
        ratio = (3 / 4, 4 / 3) if crop else (1.0, 1.0)
        return BatchCropFlip(scale=scale, ratio=ratio, flip="flip" in names)
    return PerImage(build_augmentation(spec, resolution))
