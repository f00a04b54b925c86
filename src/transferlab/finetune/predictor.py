"""Predictions from a fine-tuned run folder (model/network.safetensors + model.json)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from transferlab.backbones import create_architecture
from transferlab.backbones.weights import load_safetensors_into
from transferlab.finetune.head import check_head
from transferlab.finetune.network import FinetuneNet
from transferlab.finetune.train import predict_probabilities
from transferlab.precision import inference_precision
from transferlab.predict import Predictor, read_model_meta
from transferlab.runs import load_complete_run


def load_finetune_net(run_path: str | Path) -> tuple[FinetuneNet, dict]:
    meta = read_model_meta(run_path)  # checked: kind, classes, resolution, mean/std
    card = load_complete_run(run_path).model_dir / "model.json"
    check_head(meta.get("head"), str(card))
    net = FinetuneNet(create_architecture(meta["backbone"]), len(meta["classes"]), meta["head"], meta["mean"],
                      meta["std"])
    load_safetensors_into(net, card.parent / "network.safetensors")
    return net.eval(), meta


class FinetunePredictor(Predictor):
    def __init__(self, run_path: str | Path):
        self.net, self.meta = load_finetune_net(run_path)
        self.classes = self.meta["classes"]
        self.resolution = self.meta["resolution"]
        self.interpolation = str(self.meta.get("interpolation", "bicubic"))

    def predict_tensor(self, images_uint8: torch.Tensor) -> np.ndarray:
        return predict_probabilities(self.net, images_uint8, inference_precision(self.meta),
                                     self.meta.get("tta") is True)
