"""What a backbone's structure allows: block groups, cuttable units and the CAM layer.

Everything here reads timm's own description of the architecture: `group_matcher`
(the regexes timm uses for layer-wise learning-rate decay) names the block groups, and
`feature_info` names the last feature stage. Groups are named after the modules timm's
matcher picks out: "stem", then e.g. "blocks.0".."blocks.6" (EfficientNet), "layer1"..
"layer4" (ResNet), "stages.0".."stages.3" (ConvNeXt), "s1".."s4" (RegNet); whatever sits
between the last block and the classifier (EfficientNet's conv_head + bn2, ConvNeXt's
head norm, VGG's pre-logits MLP) is "neck". The classifier is never in a group.

Units cut the network into modules run one after another, one unit per group, so that
training can cache the activations of a frozen prefix. Only architectures whose
`forward_features` is a plain chain of their children can be cut; the chains are listed
in `_CHAINS`, checked against timm's source.
"""

from __future__ import annotations

import re
import warnings

import torch
from timm.models import group_parameters
from timm.models.convnext import ConvNeXt
from timm.models.efficientnet import EfficientNet
from timm.models.hrnet import HighResolutionNet
from timm.models.regnet import RegNet
from timm.models.resnet import ResNet
from timm.models.vgg import VGG
from torch import nn

from transferlab.errors import TransferlabError

STEM, NECK = "stem", "neck"
_MATCH_PREV_GROUP = 99999.0  # timm's suffix for "belongs with the group before" (timm.models._manipulate)
_MIN_GROUPS = 3  # fewer coarse groups than this: use timm's fine grouping instead

# forward_features of these classes applies exactly these children in this order;
# "name*" applies the items of a Sequential one by one (each item may be its own unit).
_CHAINS: dict[type, tuple[str, ...]] = {
    EfficientNet: ("conv_stem", "bn1", "blocks*", "conv_head", "bn2"),
    ResNet: ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4"),
    ConvNeXt: ("stem", "stages*", "norm_pre"),
    VGG: ("features*",),
    RegNet: ("stem", "s1", "s2", "s3", "s4", "final_conv"),
}

# The module whose output is the final feature map, where the last stage timm's
# feature_info names is not it (layers with parameters follow it inside forward_features).
_CAM_LAYERS: dict[type, str] = {
    EfficientNet: "bn2",  # conv_head + bn2 (bn2 includes the activation)
    HighResolutionNet: "final_layer",  # feature_info's last stage is a list of branches
}

_warned: set[str] = set()


class UncutBackboneWarning(UserWarning):
    """A backbone that cannot be cut into units: frozen blocks are recomputed every step."""


def architecture(model: nn.Module) -> str:
    """The timm architecture name of `model` (its class name where timm does not say)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


# --- block groups -------------------------------------------------------------------------


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Parameter-name prefixes of the classifier(s) timm's config names (e.g. "fc.", "head.fc.")."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier", "classifier")
    names = names if isinstance(names, (list, tuple)) else (names,)
    return tuple(f"{name}." for name in names)


def block_groups(model: nn.Module) -> dict[str, list[str]]:
    """Ordered mapping group name -> parameter names, input side first, classifier excluded.

    Every other parameter is in exactly one group.
    """
    skip = classifier_prefixes(model)
    names = [name for name, _ in model.named_parameters() if not name.startswith(skip)]
    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        return _groups_by_child(names)
    groups = _groups_from_matcher(model, names, matcher(coarse=True))
    if len(groups) < _MIN_GROUPS:
        fine = _groups_from_matcher(model, names, matcher(coarse=False))
        groups = fine if len(fine) > len(groups) else groups
    return groups


def _groups_from_matcher(model: nn.Module, names: list[str], spec) -> dict[str, list[str]]:
    if not isinstance(spec, dict):  # a callable matcher: timm's ordering, numbered names
        numbered = group_parameters(model, spec)
        wanted = set(names)
        groups = {f"group{i}": [n for n in numbered[k] if n in wanted] for i, k in enumerate(sorted(numbered))}
        return {name: params for name, params in groups.items() if params}
    keyed: dict[tuple, tuple[str, list[str]]] = {}
    for param in names:
        key, label = _match(param, spec)
        keyed.setdefault(key, (label, []))[1].append(param)
    return _name_groups(keyed)


def _match(param: str, spec: dict) -> tuple[tuple, str | None]:
    """timm's ordinal key of `param` (as timm.models.group_with_matcher computes it) and a label:
    the matcher's key for a pattern without index, the matched module path otherwise."""
    for ordinal, (key, patterns) in enumerate(spec.items()):
        if patterns is None:
            continue
        pairs = patterns if isinstance(patterns, (list, tuple)) else [(patterns, None)]
        for pattern, suffix in pairs:
            found = re.match(pattern, param)
            if found:
                indices = tuple(float(i) for i in found.groups() if i is not None)
                label = found.group(0).rstrip("._") if indices else key
                return (float(ordinal), *indices, *(float(s) for s in suffix or ())), label
    return (float("inf"),), None


def _name_groups(keyed: dict[tuple, tuple[str, list[str]]]) -> dict[str, list[str]]:
    """Groups in timm's order. Unmatched parameters, and those timm attaches to the group
    before but that come after every block (EfficientNet's conv_head + bn2, ViT's final norm),
    form "neck": they are a stage of their own for fine-tuning, as they were before timm."""
    order = sorted(keyed)
    blocks = [k for k in order if k[-1] not in (_MATCH_PREV_GROUP, float("inf"))]
    last_block = blocks[-1] if blocks else None
    groups: dict[str, list[str]] = {}
    previous = None
    for key in order:
        label, params = keyed[key]
        if key[-1] == float("inf") or (key[-1] == _MATCH_PREV_GROUP and (last_block is None or key > last_block)):
            label = NECK
        elif key[-1] == _MATCH_PREV_GROUP and previous is not None:
            label = previous
        groups.setdefault(label, []).extend(params)
        previous = label
    return groups


def _groups_by_child(names: list[str]) -> dict[str, list[str]]:
    """No timm matcher: one group per top-level child, the first one called "stem"."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.split(".", 1)[0], []).append(name)
    first = next(iter(groups), None)
    return {STEM if child == first else child: params for child, params in groups.items()}


# --- units --------------------------------------------------------------------------------


class PooledHead(nn.Module):
    """forward_head(pre_logits=True) of a timm model (global pool, head norm or MLP, flatten).

    Holds the model without registering it, so the unit's own parameters stay empty and
    walking the unit never walks the whole model.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self._forward_head = model.forward_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_head(x, pre_logits=True)


def pooled_width(model: nn.Module) -> int:
    """Width of forward_head(pre_logits=True): num_features, except where a pre-logits layer
    follows the pooling (VGG's 4096-wide MLP), which timm reports as head_hidden_size."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def sequential_units(model: nn.Module, warn: bool = True) -> list[tuple[str, nn.Module]] | None:
    """(group name, module) in forward order, one unit per block group, or None where the
    architecture cannot be cut (then, with `warn`, an UncutBackboneWarning naming it, once).

    Chained, the units compute forward_features then forward_head(pre_logits=True): the
    last unit ends with the pooling, so its output is the pooled feature vector.
    """
    units = _cut(model)
    if units is None and warn:
        warn_uncut(model)
    return units


def warn_uncut(model: nn.Module) -> None:
    name = architecture(model)
    if name in _warned:
        return
    _warned.add(name)
    warnings.warn(
        f"backbone '{name}' ({type(model).__name__}) cannot be cut into units: frozen lower blocks are "
        "recomputed at every step instead of cached",
        UncutBackboneWarning,
        stacklevel=3,
    )


def _cut(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    chain = _CHAINS.get(type(model))
    if chain is None or not all(hasattr(model, child.rstrip("*")) for child in chain):
        return None
    groups = block_groups(model)
    owner = {param: group for group, params in groups.items() for param in params}
    modules = _chain_modules(model, chain)
    covered = {f"{prefix}.{n}" for prefix, module in modules for n, _ in module.named_parameters()}
    head_groups = {owner[p] for p in owner if p not in covered}
    if len(head_groups) > 1:  # parameters outside the chain must all run in forward_head
        return None
    runs: list[tuple[str | None, list[nn.Module]]] = []
    for prefix, module in modules:
        found = {owner.get(f"{prefix}.{n}") for n, _ in module.named_parameters()}
        if len(found) > 1:
            return None  # one module spans two groups: no cut between them
        group = found.pop() if found else None
        if runs and (group is None or group == runs[-1][0]):
            runs[-1][1].append(module)
        elif runs and runs[-1][0] is None:
            runs[-1] = (group, runs[-1][1] + [module])
        else:
            runs.append((group, [module]))
    head = PooledHead(model)
    if head_groups and head_groups != {runs[-1][0]}:
        runs.append((head_groups.pop(), [head]))
    else:
        runs[-1][1].append(head)
    units = [(group, _sequence(parts)) for group, parts in runs]
    return units if [g for g, _ in units] == list(groups) else None


def _chain_modules(model: nn.Module, chain: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    modules = []
    for child in chain:
        name = child.rstrip("*")
        module = getattr(model, name)
        if child.endswith("*"):
            modules += [(f"{name}.{i}", item) for i, item in enumerate(module)]
        else:
            modules.append((name, module))
    return modules


def _sequence(parts: list[nn.Module]) -> nn.Module:
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)


# --- CAM ----------------------------------------------------------------------------------


def cam_layer(model: nn.Module) -> nn.Module:
    """The module whose output is the backbone's final feature map (what CAM weighs)."""
    name = _CAM_LAYERS.get(type(model))
    if name is None:
        info = getattr(model, "feature_info", None)
        if not info:
            raise TransferlabError(f"backbone '{architecture(model)}' names no feature stages: no CAM layer")
        name = info[-1]["module"]
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise TransferlabError(f"cannot find CAM layer '{name}' in {type(model).__name__}") from None
