"""A fine-tuned run's model: one network (safetensors), for inference. No Lightning here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from transferlab.backbones import create_architecture
from transferlab.backbones.cut import cut_backbone
from transferlab.backbones.weights import load_safetensors_into
from transferlab.card import ModelCard
from transferlab.errors import TransferlabError
from transferlab.finetune.head import check_head
from transferlab.finetune.network import FinetuneNet, predict_probabilities
from transferlab.inference.predictor import Predictor
from transferlab.options import tta_mode
from transferlab.runs import OpenModel, OpenRun, open_model


def load_finetune_net(run_path: str | Path | OpenRun | OpenModel) -> tuple[FinetuneNet, ModelCard]:
    run = open_model(run_path)  # a run folder, or an ensemble's member
    card, where = run.card, str(run.model_dir / "model.json")
    if card.kind != "finetune":
        raise TransferlabError(f"{run.path}: model kind '{card.kind}' is not a fine-tuned network")
    check_head(card.head, where)
    model = create_architecture(card.backbone)
    if card.cut_after is not None:  # a pruned run: the same cut before its weights load
        cut_backbone(model, card.cut_after, f"{where}: field 'cut_after'")
    net = FinetuneNet(model, len(card.classes), card.head, card.mean, card.std)
    load_safetensors_into(net, run.model_dir / "network.safetensors")
    return net.eval(), card


class FinetunePredictor(Predictor):
    def __init__(self, run_path: str | Path | OpenRun | OpenModel, tta: str | None = None):
        self.net, self.card = load_finetune_net(run_path)
        self.classes = list(self.card.classes)
        self.resolution = self.card.resolution
        self.interpolation = self.card.interpolation
        self.tta = self.card.tta if tta is None else tta_mode(tta)

    def predict_tensor(self, images_uint8: torch.Tensor) -> np.ndarray:
        return predict_probabilities(self.net, images_uint8, self.card.inference_precision, self.tta)
