"""Block groups of a backbone, and the group names a recipe's stages may use.

The groups themselves come from the backbone (`transferlab.backbones.block_groups`, built
on timm's own group matcher): "stem", then e.g. "blocks.0".."blocks.6" and "neck"
(conv_head + bn2) for EfficientNet, "layer1".."layer4" for ResNet; the new classifier is
"head". Stages name groups with these names, ranges ("blocks.5-6"), "head", "topN" or "all".
"""

from __future__ import annotations

import re

from torch import nn

from transferlab.backbones import block_groups
from transferlab.errors import TransferlabError


def backbone_groups(timm_model: nn.Module) -> dict[str, list[str]]:
    """Ordered mapping group name -> parameter names, input side first (classifier excluded)."""
    return block_groups(timm_model)


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
