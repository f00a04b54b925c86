"""Which layers to read and how to pool them into one vector per image.

Layer names: "head" is the backbone's final feature map (what its classifier sees);
"stageK" is timm's feature stage K (0 = earliest), negative K counts from the last stage.
"""

from __future__ import annotations

import torch

from transferlab.errors import TransferlabError

POOLS = ("avg", "max", "gem")
DEFAULT_LAYERS = ("stage-2", "head")


def parse_layers(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    names = [n for n in names if n]
    if not names:
        raise TransferlabError("no layers given: use e.g. 'head' or 'stage-2,head'")
    for name in names:
        if name != "head" and not _is_stage(name):
            raise TransferlabError(f"unknown layer '{name}': use 'head' or 'stageK' (e.g. stage3, stage-1)")
    return tuple(dict.fromkeys(names))


def _is_stage(name: str) -> bool:
    if not name.startswith("stage"):
        return False
    try:
        int(name[5:])
    except ValueError:
        return False
    return True


def stage_indices(layers: tuple[str, ...], n_stages: int) -> list[int]:
    """Resolve 'stageK' names to non-negative stage indices, checking their range."""
    indices = []
    for name in layers:
        if name == "head":
            continue
        k = int(name[5:])
        resolved = k + n_stages if k < 0 else k
        if not 0 <= resolved < n_stages:
            raise TransferlabError(f"layer '{name}' out of range: this backbone has stages 0..{n_stages - 1}")
        indices.append(resolved)
    return indices


def pool(feature_map: torch.Tensor, method: str, gem_p: float = 3.0) -> torch.Tensor:
    """(B, C, H, W) -> (B, C) in float32."""
    x = feature_map.float()
    if method == "avg":
        return x.mean(dim=(2, 3))
    if method == "max":
        return x.amax(dim=(2, 3))
    if method == "gem":
        # Generalised mean (Radenovic et al.): between avg (p=1) and max (p=inf).
        return x.clamp(min=1e-6).pow(gem_p).mean(dim=(2, 3)).pow(1.0 / gem_p)
    raise TransferlabError(f"unknown pooling '{method}': choose from {', '.join(POOLS)}")
