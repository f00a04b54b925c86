"""Any finished run as one torch network: normalised float images -> class logits.

Probe runs fold their logistic regression into a linear layer on the pooled backbone
features; fine-tuned runs are a network already; an ensemble is its members' branches and
their combination (`ensemble_network`). Export and CAM use this one surface.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from transferlab.card import ModelCard
from transferlab.inference.ensemble_network import load_ensemble
from transferlab.inference.finetune_predictor import load_finetune_net
from transferlab.inference.probe_network import build_probe_network
from transferlab.inference.probe_predictor import load_probe_parts
from transferlab.runs import OpenModel, OpenRun, open_model


@dataclass
class RunNetwork:
    network: nn.Module  # normalised float (B, 3, R, R) -> logits
    timm_model: nn.Module | None  # the backbone inside it (CAM picks its target layer here); None: an ensemble
    card: ModelCard  # model/model.json: classes, resolution, mean, std, interpolation, ...


def _probe_network(run_path: str | Path | OpenRun | OpenModel) -> RunNetwork:
    parts = load_probe_parts(run_path)
    return RunNetwork(build_probe_network(parts).eval(), parts.backbone.model, parts.card)


def _finetune_network(run_path: str | Path | OpenRun | OpenModel) -> RunNetwork:
    net, card = load_finetune_net(run_path)
    return RunNetwork(net.float().eval(), net.backbone, card)


def _ensemble_network(run_path: str | Path | OpenRun | OpenModel) -> RunNetwork:
    loaded = load_ensemble(run_path)
    return RunNetwork(loaded.network, None, loaded.card)  # no one backbone: explain works per member


NETWORKS = {"probe": _probe_network, "finetune": _finetune_network, "ensemble": _ensemble_network}


def load_run_network(run_path: str | Path | OpenRun | OpenModel) -> RunNetwork:
    """A run folder (or an ensemble's member, opened) as one network."""
    source = open_model(run_path)
    return NETWORKS[source.card.kind](source)
