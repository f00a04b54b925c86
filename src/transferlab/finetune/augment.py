"""Augmentation presets (torchvision v2), applied to uint8 image tensors at training resolution.

A recipe names a preset, or lists transforms with magnitudes:
    augment: [{name: rotation, degrees: 15}, {name: flip}, {name: zoom, scale: [0.8, 1.0]}]

The names a list may use are the registry `AUGMENTATIONS` (name -> builder and options);
the presets are plain data, `AUGMENT_PRESETS` (name -> such a list).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torchvision.transforms import v2

from transferlab.errors import TransferlabError
from transferlab.finetune.presets import AUGMENT_PRESETS

MAX_RANDAUGMENT_OPS = 16  # transforms in a row per image; the paper's settings use 1..3


class Augmentation(NamedTuple):
    build: Callable[[dict, int], v2.Transform]  # (options, training resolution) -> transform
    options: frozenset[str]  # the options it reads


def _flip(o: dict, r: int) -> v2.Transform:
    return v2.RandomHorizontalFlip(p=o.get("p", 0.5))


def _vflip(o: dict, r: int) -> v2.Transform:
    return v2.RandomVerticalFlip(p=o.get("p", 0.5))


def _crop(o: dict, r: int) -> v2.Transform:
    return v2.RandomResizedCrop(r, scale=tuple(o.get("scale", (0.7, 1.0))), antialias=True)


def _rotation(o: dict, r: int) -> v2.Transform:
    return v2.RandomRotation(o.get("degrees", 15))


def _shift(o: dict, r: int) -> v2.Transform:
    s = o.get("fraction", 0.1)
    return v2.RandomAffine(degrees=0, translate=(s, s))


def _zoom(o: dict, r: int) -> v2.Transform:
    return v2.RandomAffine(degrees=0, scale=tuple(o.get("scale", (0.85, 1.15))))


def _shear(o: dict, r: int) -> v2.Transform:
    return v2.RandomAffine(degrees=0, shear=o.get("degrees", 10))


def _colour(o: dict, r: int) -> v2.Transform:
    m = o.get("strength", 0.2)
    return v2.ColorJitter(brightness=m, contrast=m, saturation=m, hue=min(0.5, m / 4))


def _randaugment(o: dict, r: int) -> v2.Transform:
    ops = o.get("ops", 2)
    # RandAugment applies `ops` transforms one after the other to every image: a recipe (or a
    # run folder's saved one) asking for millions would hang the check and then the training.
    if isinstance(ops, bool) or not isinstance(ops, int) or not 0 <= ops <= MAX_RANDAUGMENT_OPS:
        raise TransferlabError(f"augmentation 'randaugment': ops must be a whole number in "
                               f"0..{MAX_RANDAUGMENT_OPS}, got {ops!r}"[:300])
    return v2.RandAugment(num_ops=ops, magnitude=o.get("magnitude", 9))


def _trivialaugment(o: dict, r: int) -> v2.Transform:
    return v2.TrivialAugmentWide()


# name -> builder and the options it takes: what an augment list may name.
AUGMENTATIONS: dict[str, Augmentation] = {
    "flip": Augmentation(_flip, frozenset({"p"})),
    "vflip": Augmentation(_vflip, frozenset({"p"})),
    "crop": Augmentation(_crop, frozenset({"scale"})),
    "rotation": Augmentation(_rotation, frozenset({"degrees"})),
    "shift": Augmentation(_shift, frozenset({"fraction"})),
    "zoom": Augmentation(_zoom, frozenset({"scale"})),
    "shear": Augmentation(_shear, frozenset({"degrees"})),
    "colour": Augmentation(_colour, frozenset({"strength"})),
    "randaugment": Augmentation(_randaugment, frozenset({"ops", "magnitude"})),
    "trivialaugment": Augmentation(_trivialaugment, frozenset()),
}
ALIASES = {"color": "colour"}  # accepted, not listed

def _one(name: str, options: dict, resolution: int) -> v2.Transform:
    augmentation = AUGMENTATIONS.get(ALIASES.get(name, name))
    if augmentation is None:
        raise TransferlabError(f"unknown augmentation '{name}': {', '.join(AUGMENTATIONS)}")
    known = augmentation.options
    unknown = sorted(set(map(str, options)) - known)
    if unknown:
        raise TransferlabError(f"augmentation '{name}': unknown option '{unknown[0]}'"
                               f"{'; it takes ' + ', '.join(sorted(known)) if known else '; it takes none'}")
    return augmentation.build(options, resolution)


def _preset(spec: str, where: str | None = None) -> list[dict]:
    if spec not in AUGMENT_PRESETS:
        prefix = f"{where}: " if where else ""
        raise TransferlabError(f"{prefix}unknown augmentation preset '{spec}': {', '.join(AUGMENT_PRESETS)}")
    return AUGMENT_PRESETS[spec]


def build_augmentation(spec: str | list[dict], resolution: int) -> v2.Transform:
    """uint8 (3, H, W) at `resolution` -> augmented uint8 (3, R, R)."""
    items = _preset(spec) if isinstance(spec, str) else spec
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
        _preset(spec, where)
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
        except Exception as exc:  # noqa: BLE001 (a value of the wrong type or range, as torchvision words it)
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
    items = _preset(spec) if isinstance(spec, str) else spec
    names = [dict(item).get("name") for item in items]
    if names and set(names) <= {"flip", "crop"} and names.count("crop") <= 1:
        crop = next((dict(i) for i in items if dict(i).get("name") == "crop"), None)
        scale = tuple(crop.get("scale", (0.7, 1.0))) if crop else (1.0, 1.0)
        ratio = (3 / 4, 4 / 3) if crop else (1.0, 1.0)
        return BatchCropFlip(scale=scale, ratio=ratio, flip="flip" in names)
    return PerImage(build_augmentation(spec, resolution))
