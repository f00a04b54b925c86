"""The classification head, built from a short spec (a list of layer dicts).

    [{type: batchnorm}, {type: dense, units: 256, l2: 1e-4}, {type: dropout, p: 0.4},
     {type: dense, units: 256, activation: gelu, l1: 1e-5}]

The class layer (units = number of classes) is appended. L1/L2 on a dense layer are
added to the loss by `penalty()`, Keras-style, rather than folded into weight decay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from transferlab.errors import TransferlabError
from transferlab.finetune.values import finite_number

# All dense layers together: 256 MiB of float32, far beyond a head worth training; without it a
# card listing 64 layers of MAX_UNITS asks for 64 GiB before a weight is read.
MAX_HEAD_WEIGHTS = 1 << 26
MAX_UNITS = 16384  # a wider dense layer is a typo (or a hostile model.json asking for gigabytes)
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "none": nn.Identity}

Penalty = tuple[nn.Linear, float, float]  # a dense layer and its L1, L2 factors
# What a layer builder returns: its modules, the width after them, and its penalty (or None).
Built = tuple[list[nn.Module], int, Penalty | None]


class LayerType(NamedTuple):
    build: Callable[[dict, int, str], Built]  # (layer options, input width, where) -> Built
    keys: frozenset[str]  # the options it takes besides `type`


def _batchnorm(layer: dict, width: int, where: str) -> Built:
    return [nn.BatchNorm1d(width)], width, None


def _dropout(layer: dict, width: int, where: str) -> Built:
    p = finite_number(where, "p", layer.get("p", 0.5))
    if not 0 <= p < 1:
        raise TransferlabError(f"{where}: dropout p must be in [0, 1), got {p}")
    return [nn.Dropout(p)], width, None


def _activation_layer(layer: dict, width: int, where: str) -> Built:
    return [_activation(layer.get("name", "relu"), where)], width, None


def _dense(layer: dict, width: int, where: str) -> Built:
    units = layer.get("units", 0)
    if isinstance(units, bool) or not isinstance(units, int) or not 1 <= units <= MAX_UNITS:
        raise TransferlabError(f"{where}: dense needs whole-number units in 1..{MAX_UNITS}, got {units!r}")
    l1, l2 = finite_number(where, "l1", layer.get("l1", 0.0)), finite_number(where, "l2", layer.get("l2", 0.0))
    if l1 < 0 or l2 < 0:
        raise TransferlabError(f"{where}: l1/l2 must be 0 or more")
    dense = nn.Linear(width, units)  # drawn before the activation: the seeded weights stay as they were
    modules = [dense, _activation(layer.get("activation", "relu"), where)]
    return modules, units, (dense, l1, l2) if l1 or l2 else None


# type name -> builder and options: what a head spec may list (the order is the one errors print).
HEAD_LAYERS: dict[str, LayerType] = {
    "batchnorm": LayerType(_batchnorm, frozenset()),
    "dropout": LayerType(_dropout, frozenset({"p"})),
    "dense": LayerType(_dense, frozenset({"units", "activation", "l1", "l2"})),
    "activation": LayerType(_activation_layer, frozenset({"name"})),
}


def _check_size(in_features: int, spec: list[dict]) -> None:
    """The dense layers' weights, counted before any is built (a bad layer is _build_layer's to name)."""
    total, width = 0, in_features
    for layer in spec:
        units = layer.get("units")
        if layer.get("type") == "dense" and isinstance(units, int) and not isinstance(units, bool) and units > 0:
            total, width = total + width * units, units
            if total > MAX_HEAD_WEIGHTS:
                raise TransferlabError(f"head: its dense layers would hold over {MAX_HEAD_WEIGHTS:,} weights; "
                                       "use fewer or narrower layers")


class Head(nn.Module):
    def __init__(self, in_features: int, n_classes: int, spec: list[dict]):
        super().__init__()
        layers: list[nn.Module] = []
        self._penalties: list[Penalty] = []
        if not isinstance(spec, list) or not all(isinstance(layer, dict) for layer in spec):
            raise TransferlabError(f"head must be a list of layers ({{type: ...}}), got {spec!r}"[:300])
        _check_size(in_features, spec)
        width = in_features
        for index, layer in enumerate(spec):
            modules, width, penalty = _build_layer(dict(layer), width, f"head layer {index + 1}")
            layers += modules
            if penalty is not None:
                self._penalties.append(penalty)
        layers.append(nn.Linear(width, n_classes))
        self.layers = nn.Sequential(*layers)

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


def check_head(spec: list[dict], where: str = "recipe") -> None:
    """A head spec builds (on a small width): every error is one line, before any image is read."""
    if not isinstance(spec, list) or not all(isinstance(layer, dict) for layer in spec):
        raise TransferlabError(f"{where}: head must be a list of layers ({{type: ...}}), got {spec!r}")
    try:
        Head(8, 2, spec)
    except TransferlabError as exc:
        raise TransferlabError(f"{where}: {exc}") from None


def _build_layer(layer: dict, width: int, where: str) -> Built:
    kind = layer.pop("type", None)
    if not isinstance(kind, str):
        raise TransferlabError(f"{where}: type must be one of {', '.join(HEAD_LAYERS)}, got {kind!r}")
    if kind not in HEAD_LAYERS:
        raise TransferlabError(f"{where}: unknown type {kind!r}; use one of {', '.join(HEAD_LAYERS)}")
    layer_type = HEAD_LAYERS[kind]
    unknown = set(layer) - layer_type.keys
    if unknown:
        raise TransferlabError(f"{where}: unknown key '{min(map(str, unknown))}' for {kind}")
    return layer_type.build(layer, width, where)


def _activation(name: str, where: str) -> nn.Module:
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise TransferlabError(f"{where}: unknown activation '{name}'; use one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()
