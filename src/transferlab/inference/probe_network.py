"""A probe run as one torch module: normalised images -> class logits.

The backbone's pooled multi-layer features feed the probe's logistic regression, folded
into a linear layer. Export (ONNX, TorchScript) and class-activation maps use it.
"""

from __future__ import annotations

import torch
from torch import nn

from transferlab.classifiers.linear import fold_linear_head
from transferlab.features.extract import PooledFeatures
from transferlab.inference.probe_predictor import ProbeParts


class ProbeNetwork(nn.Module):
    def __init__(self, features: PooledFeatures, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.features = features
        self.head = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class WithSoftmax(nn.Module):
    """Wraps a logits network so its output is probabilities (what export ships).

    With `flip_tta` it averages the probabilities of the image and its mirror image, as the
    run's own predictions do when it was trained with test-time augmentation.
    """

    def __init__(self, network: nn.Module, flip_tta: bool = False):
        super().__init__()
        self.network = network
        self.flip_tta = flip_tta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(self.network(x), dim=1)
        if self.flip_tta:
            probabilities = (probabilities + torch.softmax(self.network(torch.flip(x, dims=[3])), dim=1)) / 2
        return probabilities


def build_probe_network(parts: ProbeParts) -> ProbeNetwork:
    weight, bias = fold_linear_head(parts.classifier, len(parts.classes))
    features = PooledFeatures(parts.backbone, parts.settings.layers, parts.settings.pool)
    return ProbeNetwork(features, torch.from_numpy(weight), torch.from_numpy(bias)).eval()
