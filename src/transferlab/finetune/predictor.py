"""Predictions from a fine-tuned run folder (model/network.safetensors + model.json)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import load_file

from transferlab.finetune.network import FinetuneNet
from transferlab.finetune.train import predict_probabilities
from transferlab.predict import Predictor, read_model_meta
from transferlab.runs import load_complete_run


def load_finetune_net(run_path: str | Path) -> tuple[FinetuneNet, dict]:
    meta = read_model_meta(run_path)
    model = timm.create_model(meta["backbone"], pretrained=False)
    net = FinetuneNet(model, len(meta["classes"]), meta["head"], meta["mean"], meta["std"])
    net.load_state_dict(load_file(str(load_complete_run(run_path).model_dir / "network.safetensors")))
    return net.eval(), meta


class FinetunePredictor(Predictor):
    def __init__(self, run_path: str | Path):
        self.net, self.meta = load_finetune_net(run_path)
        self.classes = self.meta["classes"]
        self.resolution = self.meta["resolution"]
        self.interpolation = self.meta["interpolation"]

    def predict_tensor(self, images_uint8: torch.Tensor) -> np.ndarray:
        return predict_probabilities(self.net, images_uint8, self.meta["precision"], self.meta.get("tta", False))
