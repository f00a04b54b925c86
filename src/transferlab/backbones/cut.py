"""Cutting a backbone after one of its block groups: the smaller networks of `transferlab prune`.

timm does the cutting: `prune_intermediate_layers` drops the blocks after the cut, the
neck and the classifier, and sets `num_features` to the width at the cut. Which index
timm wants for "after group k" differs between architectures (EfficientNet counts every
block group only with `extra_blocks=True`, ResNet counts the stem and its four layers, a
ViT its blocks without the stem and keeps its final norm only with `prune_norm`), so the
cut is looked for on a meta-device copy (no weights, no memory) and accepted only when
the cut model's block groups are exactly the groups up to k, parameter for parameter, and
its pooled output has the cut's width. The card of a pruned run then names groups that
training used, and the cut network splits into the same units for the cached-prefix path.

Cutting after the last group keeps the whole backbone. Group names come from the backbone
(`block_groups`: "stem", "blocks.0".."blocks.6", "neck" for EfficientNet; "stem",
"layer1".."layer4" for ResNet).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from functools import lru_cache

import timm
import torch
from timm.layers import SelectAdaptivePool2d
from torch import nn

from transferlab.backbones.shape import architecture, block_groups, pooled_width
from transferlab.errors import TransferlabError


@dataclass(frozen=True)
class CutSpec:
    """The arguments of timm's prune_intermediate_layers that cut after one group."""

    index: int  # an absolute feature index (timm reads a bare int as "the last n")
    extra_blocks: bool
    prune_norm: bool


def cut_backbone(model: nn.Module, group: str, where: str = "--keep") -> nn.Module:
    """Cut `model` (a timm model, in place) after block group `group`; returns it.

    The groups after `group`, the neck and the classifier are removed; global pooling stays,
    so the model still ends in pooled features (of the width at the cut). `where` names the
    source of `group` (an option, a model card) in the one-line error for a bad name.
    """
    groups = list(block_groups(model))
    spec = find_cut(model, group, where)
    if spec is None:
        return model  # after the last group: the whole backbone
    _apply(model, spec)
    kept = groups[:groups.index(group) + 1]
    if list(block_groups(model)) != kept:  # the meta copy was another variant of the architecture
        raise TransferlabError(f"{where}: cutting '{architecture(model)}' after '{group}' did not leave the "
                               f"groups {', '.join(kept)}")
    return model


def find_cut(model: nn.Module, group: str, where: str = "--keep") -> CutSpec | None:
    """How timm cuts `model` after `group` (None: the last group, nothing to cut).

    One line naming `where` and the groups one may cut after, for a name that is not a
    group of this backbone or a group timm cannot cut after.
    """
    groups = list(block_groups(model))
    if not isinstance(group, str) or group not in groups:
        raise TransferlabError(f"{where}: '{str(group)[:80]}' is not a block group of {architecture(model)}; "
                               f"groups: {', '.join(groups)}")
    if group == groups[-1]:
        return None
    spec = _find_on_meta(architecture(model), group)
    if spec is None:
        raise TransferlabError(f"{where}: timm cannot cut {architecture(model)} after '{group}'; "
                               f"cut after one of: {', '.join(cut_points(model))}")
    return spec


def cut_points(model: nn.Module) -> list[str]:
    """The groups `model` can be cut after (input side first; the last one keeps everything)."""
    groups = list(block_groups(model))
    name = architecture(model)
    return [g for g in groups[:-1] if _find_on_meta(name, g) is not None] + groups[-1:]


def kept_groups(groups: list[str], group: str) -> list[str]:
    """The groups left after cutting after `group` (which must be one of `groups`)."""
    return groups[:groups.index(group) + 1]


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def cut_parameter_counts(name: str) -> dict[str, int]:
    """Backbone parameters (classifier excluded) left by each possible cut of timm model `name`,
    counted on the meta device: nothing is downloaded or allocated."""
    counts = {}
    full = meta_model(name)
    groups = list(block_groups(full))
    for group in cut_points(full):
        spec = _find_on_meta(name, group)
        model = copy.deepcopy(full)
        if spec is not None:
            _apply(model, spec)
        else:
            model.reset_classifier(0)
        counts[group] = parameter_count(model)
    return {g: counts[g] for g in groups if g in counts}


# --- finding timm's arguments ----------------------------------------------------------------


@lru_cache(maxsize=32)
def meta_model(name: str) -> nn.Module:
    """Timm architecture `name` on the meta device (shapes only), shared: copy it before changing it."""
    if not isinstance(name, str) or not timm.is_model(name):
        raise TransferlabError(f"unknown backbone '{str(name)[:80]}': not a timm architecture, so it cannot be cut")
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False).eval()


@lru_cache(maxsize=256)
def _find_on_meta(name: str, group: str) -> CutSpec | None:
    """The first of timm's argument sets that leaves exactly the groups up to `group` and
    pooled features of the cut's width; None when no set does."""
    full = meta_model(name)
    if not hasattr(full, "prune_intermediate_layers"):
        return None
    groups = block_groups(full)
    names = list(groups)
    position = names.index(group)
    wanted = {g: groups[g] for g in names[:position + 1]}
    takes_extra = "extra_blocks" in inspect.signature(full.prune_intermediate_layers).parameters
    # The index timm wants is usually the group's own position: try it first.
    indices = [position] + [i for i in range(len(names)) if i != position]
    for extra in ((True, False) if takes_extra else (False,)):
        for index in indices:
            for prune_norm in (False, True):
                spec = CutSpec(index, extra, prune_norm)
                if _fits(full, spec, wanted):
                    return spec
    return None


def _fits(full: nn.Module, spec: CutSpec, wanted: dict[str, list[str]]) -> bool:
    model = copy.deepcopy(full)
    try:
        _apply(model, spec)
        if block_groups(model) != wanted:
            return False
        size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
        with torch.no_grad():
            out = model(torch.empty((1, *size), device="meta"))
    except Exception:  # noqa: BLE001 - timm refuses this index (assertion) or the shapes clash: not this one
        return False
    return tuple(out.shape) == (1, pooled_width(model))


def _apply(model: nn.Module, spec: CutSpec) -> None:
    pool = _pool_type(model)
    extra = {"extra_blocks": True} if spec.extra_blocks else {}
    model.prune_intermediate_layers([spec.index], prune_norm=spec.prune_norm, prune_head=True, **extra)
    # timm drops the pooling with the classifier (reset_classifier(0, '')); put the model's own back,
    # so the cut model still ends in pooled features.
    model.reset_classifier(0, pool)


def _pool_type(model: nn.Module) -> str:
    """The model's global pooling ('avg', 'token', ...), as reset_classifier takes it."""
    pool = getattr(model, "global_pool", None)
    if isinstance(pool, str):
        return pool or "avg"
    for module in model.modules():
        if isinstance(module, SelectAdaptivePool2d):
            return module.pool_type or "avg"
    return "avg"
