"""The fine-tuned network: a timm backbone cut into sequential units, plus the head.

Cutting the backbone into units (one per block group, the last ending with the pooling;
see `transferlab.backbones.sequential_units`) lets a stage whose lower units are frozen
compute them once per image and augmentation draw, and train the upper units on the
cached activations. Units line up with `groups.backbone_groups`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from transferlab.backbones import sequential_units
from transferlab.backbones.shape import pooled_width, warn_uncut
from transferlab.data.transforms import normalise
from transferlab.data.tta import average_probabilities
from transferlab.finetune.groups import backbone_groups
from transferlab.finetune.head import Head
from transferlab.options import tta_mode


class FinetuneNet(nn.Module):
    """uint8 images -> logits. `level` k means: input is the activation after unit k-1."""

    def __init__(self, timm_model: nn.Module, n_classes: int, head_spec: list[dict], mean, std):
        super().__init__()
        timm_model.reset_classifier(0)
        self.backbone = timm_model
        self.head = Head(pooled_width(timm_model), n_classes, head_spec)
        self.mean, self.std = tuple(mean), tuple(std)
        # Only training asks for the cut (unit_groups), so only training warns about its absence.
        self.units = sequential_units(timm_model, warn=False)
        self.group_params = backbone_groups(timm_model)

    @property
    def n_units(self) -> int:
        """Cut points available: 0 (images) .. n_units (pooled features)."""
        return len(self.units) if self.units is not None else 1

    def unit_groups(self) -> list[list[str]]:
        """The groups each unit covers (the uncut case: one unit with every group)."""
        if self.units is None:
            warn_uncut(self.backbone)
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
            x = unit(x)  # the last unit ends with forward_head(pre_logits=True): pooled features
        return x

    def forward(self, x: torch.Tensor, level: int = 0) -> torch.Tensor:
        return self.head(self.forward_units(x, level, self.n_units))


# Images per inference pass when evaluating. The largest activation of a pass is what RSS pays
# for: at 128 px a batch of 128 put the fast recipe's evaluation 190 MB above its training peak
# (2049 against 1862 MiB on heritage). 32 is also faster on a 2-core CPU: lite0 at 128 px in
# bf16 ran 390-410 img/s against 290-320 at 128 (activations that stay in cache).
EVAL_BATCH = 32


@torch.inference_mode()
def predict_probabilities(net: FinetuneNet, images: torch.Tensor, precision: str, tta: str | bool,
                          batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Class probabilities of uint8 images (or normalised float images), batch by batch,
    averaged over the views of test-time augmentation `tta` (see `data.tta`)."""
    net.eval()
    mode = tta_mode(tta)
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if batch.dtype == torch.uint8:  # views are made of normalised floats, as in an exported graph
            batch = net.normalise(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            probabilities = average_probabilities(lambda x: torch.softmax(net(x).float(), dim=1), batch, mode)
        out.append(probabilities.float())
    return torch.cat(out).numpy() if out else np.zeros((0, net.head.classifier.out_features))


@torch.inference_mode()
def pooled_features(net: FinetuneNet, images: torch.Tensor, precision: str, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """The head's input (pooled backbone features) of uint8 images: what the report maps."""
    net.eval()
    out = []
    for start in range(0, len(images), batch_size):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out.append(net.forward_units(images[start:start + batch_size], 0, net.n_units).float().flatten(1))
    return torch.cat(out).numpy() if out else np.zeros((0, pooled_width(net.backbone)), np.float32)
