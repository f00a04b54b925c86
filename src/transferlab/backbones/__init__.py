"""Pretrained networks: one registry, one factory (`create_backbone`)."""

from transferlab.backbones.registry import (
    REGISTRY,
    Backbone,
    BackboneEntry,
    create_architecture,
    create_backbone,
    describe_backbones,
)

__all__ = ["REGISTRY", "Backbone", "BackboneEntry", "create_architecture", "create_backbone", "describe_backbones"]
