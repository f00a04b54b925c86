"""Any finished run as one torch network: normalised float images -> class logits.

Probe runs fold their logistic regression into a linear layer on the pooled backbone
features; fine-tuned runs are a network already. Export and CAM use this one surface.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from transferlab.errors import TransferlabError
from transferlab.network import build_probe_network
from transferlab.predict import load_probe_parts, read_model_meta


@dataclass
class RunNetwork:
    network: nn.Module  # normalised float (B, 3, R, R) -> logits
    timm_model: nn.Module  # the backbone inside it (CAM picks its target layer here)
    meta: dict  # model/model.json: classes, resolution, mean, std, interpolation, ...


def load_run_network(run_path: str | Path) -> RunNetwork:
    meta = read_model_meta(run_path)
    if meta.get("kind") == "probe":
        parts = load_probe_parts(run_path)
        return RunNetwork(build_probe_network(parts).eval(), parts.backbone.model, meta)
    if meta.get("kind") == "finetune":
        from transferlab.finetune.predictor import load_finetune_net

        net, _ = load_finetune_net(run_path)
        return RunNetwork(net.float().eval(), net.backbone, meta)
    raise TransferlabError(f"{run_path}: unknown model kind '{meta.get('kind')}' in model/model.json")
