"""Block groups of a backbone, from its own module structure.

Groups are named after the modules they hold: "stem", then e.g. "blocks.0".."blocks.6"
and "neck" (conv_head + bn2) for EfficientNet, "layer1".."layer4" for ResNet; the new
classifier is "head". Stages name groups with these names, ranges ("blocks.5-6"), "head" or "all".
"""

from __future__ import annotations

import re

from torch import nn

from transferlab.errors import TransferlabError

_BLOCK = re.compile(r"^((?:blocks|stages|layers|features)\.\d+|layer\d+)\.")


def backbone_groups(timm_model: nn.Module) -> dict[str, list[str]]:
    """Ordered mapping group name -> parameter names, input side first (classifier excluded).

    Parameters before the first block form "stem", each block (timm's blocks.N, stages.N,
    layerN) its own group, and whatever sits between the last block and the classifier
    (EfficientNet's conv_head + bn2, a final norm) forms "neck".
    """
    classifier_prefix = _classifier_prefix(timm_model)
    groups: dict[str, list[str]] = {}
    seen_block = False
    for name, _ in timm_model.named_parameters():
        if name.startswith(classifier_prefix):
            continue
        match = _BLOCK.match(name)
        if match:
            seen_block = True
            group = match.group(1)
        else:
            group = "neck" if seen_block else "stem"
        groups.setdefault(group, []).append(name)
    return groups


def _classifier_prefix(timm_model: nn.Module) -> str:
    name = timm_model.pretrained_cfg.get("classifier", "classifier")
    return (name[0] if isinstance(name, (list, tuple)) else name) + "."


def expand_group_spec(spec: str | list[str], available: list[str]) -> list[str]:
    """Resolve names like "head", "all", "blocks.5-6", "layer3-4", "top3" to group names."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    resolved: list[str] = []
    for item in items:
        if item == "all":
            return list(available)
        if item in available:
            resolved.append(item)
            continue
        top = re.fullmatch(r"top([1-9]\d*)", item)  # not top0: available[-0:] would be every group
        if top:  # the last N groups, head included: backbone-agnostic
            resolved.extend(available[-int(top.group(1)):])
            continue
        ranged = re.fullmatch(r"(.*?)(\d+)-(\d+)", item)
        if ranged:
            prefix, low, high = ranged.group(1), int(ranged.group(2)), int(ranged.group(3))
            names = [f"{prefix}{i}" for i in range(low, high + 1)]
            missing = [n for n in names if n not in available]
            if not missing:
                resolved.extend(names)
                continue
        raise TransferlabError(
            f"stage names group '{item}', which this backbone lacks; groups: {', '.join(available)}, all, topN"
        )
    return list(dict.fromkeys(resolved))
