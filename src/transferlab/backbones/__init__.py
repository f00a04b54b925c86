"""Pretrained networks: one registry, one factory (`create_backbone`), and what each
architecture's structure allows (`block_groups`, `sequential_units`, `cam_layer`)."""

from transferlab.backbones.registry import (
    REGISTRY,
    Backbone,
    BackboneEntry,
    create_architecture,
    create_backbone,
    describe_backbones,
    native_size,
    weights_source_path,
)
from transferlab.backbones.shape import UncutBackboneWarning, block_groups, cam_layer, sequential_units

__all__ = [
    "REGISTRY",
    "Backbone",
    "BackboneEntry",
    "UncutBackboneWarning",
    "block_groups",
    "cam_layer",
    "create_architecture",
    "create_backbone",
    "describe_backbones",
    "native_size",
    "sequential_units",
    "weights_source_path",
]
