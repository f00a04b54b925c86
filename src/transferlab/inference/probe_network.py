"""A probe run as one torch module: normalised images -> class logits.

The backbone's pooled multi-layer features feed the probe's logistic regression, folded
into a linear layer. Export (ONNX, TorchScript) and class-activation maps use it.
"""

from __future__ import annotations

import torch
from torch import nn

from transferlab.classifiers.linear import fold_linear_head
from transferlab.data.tta import average_probabilities
from transferlab.features.extract import PooledFeatures
from transferlab.inference.probe_predictor import ProbeParts
from transferlab.options import tta_mode


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

    With test-time augmentation `tta` (a data.tta mode) it averages the probabilities of the
    views, exactly as the predictors do, so an exported file predicts what `predict` does.
    """

    def __init__(self, network: nn.Module, tta: str = "none"):
        super().__init__()
        self.network = network
        self.tta = tta_mode(tta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return average_probabilities(lambda view: torch.softmax(self.network(view), dim=1), x, self.tta)


def build_probe_network(parts: ProbeParts) -> ProbeNetwork:
    weight, bias = fold_linear_head(parts.classifier, len(parts.classes))
    features = PooledFeatures(parts.backbone, parts.settings.layers, parts.settings.pool)
    return ProbeNetwork(features, torch.from_numpy(weight), torch.from_numpy(bias)).eval()
