"""The fine-tuned network: a timm backbone cut into sequential units, plus the head.

Cutting forward_features into units (stem, each block group, neck) lets a stage whose
lower units are frozen compute them once per image and augmentation draw, and train the
upper units on the cached activations. Units line up with `groups.backbone_groups`.
"""

from __future__ import annotations

import torch
from torch import nn

from transferlab.features.extract import normalise
from transferlab.finetune.groups import backbone_groups
from transferlab.finetune.head import Head


def _efficientnet_units(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    if not all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
        return None
    units = [("stem", nn.Sequential(model.conv_stem, model.bn1))]
    units += [(f"blocks.{i}", block) for i, block in enumerate(model.blocks)]
    units.append(("neck", nn.Sequential(model.conv_head, model.bn2)))
    return units


def _resnet_units(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    if not all(hasattr(model, a) for a in ("conv1", "bn1", "act1", "maxpool", "layer1")):
        return None
    units = [("stem", nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool))]
    units += [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5) if hasattr(model, f"layer{i}")]
    return units


def sequential_units(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """(group name, module) in forward order, or None where the architecture is not cut."""
    return _efficientnet_units(model) or _resnet_units(model)


class FinetuneNet(nn.Module):
    """uint8 images -> logits. `level` k means: input is the activation after unit k-1."""

    def __init__(self, timm_model: nn.Module, n_classes: int, head_spec: list[dict], mean, std):
        super().__init__()
        timm_model.reset_classifier(0)
        self.backbone = timm_model
        self.head = Head(timm_model.num_features, n_classes, head_spec)
        self.mean, self.std = tuple(mean), tuple(std)
        self.units = sequential_units(timm_model)
        self.group_params = backbone_groups(timm_model)

    @property
    def n_units(self) -> int:
        """Cut points available: 0 (images) .. n_units (pooled features)."""
        return len(self.units) if self.units is not None else 1

    def unit_groups(self) -> list[list[str]]:
        """The groups each unit covers (the uncut case: one unit with every group)."""
        if self.units is None:
            return [list(self.group_params)]
        return [[name] for name, _ in self.units]

    def normalise(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return normalise(images_uint8, self.mean, self.std).contiguous(memory_format=torch.channels_last)

    def forward_units(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run units [start, stop); level 0 takes images (uint8, or float already normalised),
        level n_units is pooled features."""
        if start == 0 and x.dtype == torch.uint8:
            x = self.normalise(x)
        if self.units is None:
            return self.backbone(x) if stop >= 1 and start == 0 else x
        for _, unit in self.units[start:stop]:
            x = unit(x)
        if stop == len(self.units) and start < stop:
            x = self.backbone.forward_head(x, pre_logits=True)  # global pool (+ flatten)
        return x

    def forward(self, x: torch.Tensor, level: int = 0) -> torch.Tensor:
        return self.head(self.forward_units(x, level, self.n_units))
