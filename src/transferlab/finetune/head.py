"""The classification head, built from a short spec (a list of layer dicts).

    [{type: batchnorm}, {type: dense, units: 256, l2: 1e-4}, {type: dropout, p: 0.4},
     {type: dense, units: 256, activation: gelu, l1: 1e-5}]

The class layer (units = number of classes) is appended. L1/L2 on a dense layer are
added to the loss by `penalty()`, Keras-style, rather than folded into weight decay.
"""

from __future__ import annotations

import torch
from torch import nn

from transferlab.errors import TransferlabError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "none": nn.Identity}
_KEYS = {
    "batchnorm": set(),
    "dropout": {"p"},
    "dense": {"units", "activation", "l1", "l2"},
    "activation": {"name"},
}


class Head(nn.Module):
    def __init__(self, in_features: int, n_classes: int, spec: list[dict]):
        super().__init__()
        layers: list[nn.Module] = []
        self._penalties: list[tuple[nn.Linear, float, float]] = []
        width = in_features
        for index, layer in enumerate(spec):
            width = self._add(layers, dict(layer), width, f"head layer {index + 1}")
        layers.append(nn.Linear(width, n_classes))
        self.layers = nn.Sequential(*layers)

    def _add(self, layers: list[nn.Module], layer: dict, width: int, where: str) -> int:
        kind = layer.pop("type", None)
        if kind not in _KEYS:
            raise TransferlabError(f"{where}: unknown type '{kind}'; use one of {', '.join(_KEYS)}")
        unknown = set(layer) - _KEYS[kind]
        if unknown:
            raise TransferlabError(f"{where}: unknown key '{sorted(unknown)[0]}' for {kind}")
        if kind == "batchnorm":
            layers.append(nn.BatchNorm1d(width))
        elif kind == "dropout":
            p = float(layer.get("p", 0.5))
            if not 0 <= p < 1:
                raise TransferlabError(f"{where}: dropout p must be in [0, 1), got {p}")
            layers.append(nn.Dropout(p))
        elif kind == "activation":
            layers.append(_activation(layer.get("name", "relu"), where))
        else:
            units = int(layer.get("units", 0))
            if units < 1:
                raise TransferlabError(f"{where}: dense needs units >= 1, got {units}")
            l1, l2 = float(layer.get("l1", 0.0)), float(layer.get("l2", 0.0))
            if l1 < 0 or l2 < 0:
                raise TransferlabError(f"{where}: l1/l2 must be 0 or more")
            dense = nn.Linear(width, units)
            layers += [dense, _activation(layer.get("activation", "relu"), where)]
            if l1 or l2:
                self._penalties.append((dense, l1, l2))
            width = units
        return width

    @property
    def classifier(self) -> nn.Linear:
        """The class layer (last), kept inside `layers` so each tensor is stored once."""
        return self.layers[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def penalty(self) -> torch.Tensor:
        total = torch.zeros(())
        for dense, l1, l2 in self._penalties:
            if l1:
                total = total + l1 * dense.weight.abs().sum()
            if l2:
                total = total + l2 * dense.weight.pow(2).sum()
        return total


def _activation(name: str, where: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise TransferlabError(f"{where}: unknown activation '{name}'; use one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()
