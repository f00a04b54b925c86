"""An ensemble run as one torch network: images in [0, 1] -> the combined class log-probabilities.

An ensemble run folder holds its members' models (model/members/m00, m01, ...: each a probe
or fine-tuned model as its own run saved it) and, in model.json, how their probabilities
combine (`classifiers.ensemble_fit.Combination`: a mean, fitted weights, or a stacked
logistic regression). Members may differ in resolution and normalisation, so the ensemble
takes one image at the largest member resolution, scaled to [0, 1] (the card's mean 0 and
std 1), and each member branch resamples it to its own size with a fixed linear map (the
antialiased resize as a matrix: two MatMuls in ONNX), normalises it its own way, and
averages over its own test-time augmentation. The whole thing is one graph: predict, serve
and export run exactly it, and the ensemble's validation figures are measured with it.

The network returns log-probabilities (softmax of them gives the probabilities back), so
`WithSoftmax` and everything built on "a network that returns logits" take it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferlab.card import ModelCard
from transferlab.classifiers.ensemble_fit import NLL_CLIP, STACK_FLOOR, Combination
from transferlab.data.transforms import normalise
from transferlab.data.tta import average_probabilities
from transferlab.errors import TransferlabError
from transferlab.features.extract import PooledFeatures
from transferlab.inference.finetune_predictor import load_finetune_net
from transferlab.inference.predictor import Predictor
from transferlab.inference.probe_network import WithSoftmax, build_probe_network
from transferlab.inference.probe_predictor import load_probe_parts
from transferlab.options import tta_mode
from transferlab.runs import OpenModel, OpenRun, open_member, open_model

RESIZE_MODES = {"bicubic": "bicubic", "bilinear": "bilinear"}  # others resample bilinearly


def resize_matrix(source: int, target: int, interpolation: str) -> torch.Tensor:
    """(target, source) matrix A with A @ row == the row resized to `target` (antialiased when shrinking).

    Resizing is linear, so resizing the identity's rows gives its matrix exactly.
    """
    mode = RESIZE_MODES.get(interpolation, "bilinear")
    rows = torch.eye(source).reshape(source, 1, 1, source)
    resized = F.interpolate(rows, size=(1, target), mode=mode, antialias=target < source, align_corners=False)
    return resized.reshape(source, target).T.contiguous()


class SklearnProbabilities(nn.Module):
    """A probe member whose head does not fold into a linear layer (forest, SVM, ...): works in
    predict and serve, not in an exported graph (export says so)."""

    exportable = False

    def __init__(self, features: PooledFeatures, classifier, n_classes: int):
        super().__init__()
        self.features = features
        self.classifier = classifier
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x).detach().float().numpy()
        known = self.classifier.predict_proba(features)
        full = np.zeros((len(features), self.n_classes), dtype=np.float32)
        full[:, self.classifier.classes_] = known
        return torch.from_numpy(full)


class NetworkProbabilities(nn.Module):
    exportable = True

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(x), dim=1)


class MemberBranch(nn.Module):
    """[0, 1] images at the ensemble's size -> this member's class probabilities."""

    def __init__(self, probabilities: nn.Module, card: ModelCard, input_resolution: int):
        super().__init__()
        self.probabilities = probabilities
        self.tta = card.tta
        self.resolution = card.resolution
        resize = card.resolution != input_resolution
        self.register_buffer("resize", resize_matrix(input_resolution, card.resolution, card.interpolation)
                             if resize else torch.zeros(0), persistent=False)
        # (x - mean) / std as a depthwise 1x1 convolution. As Sub and Div after the resize's
        # MatMul, OpenVINO's CPU plugin fused them into the MatMul as post-ops along the wrong
        # axis and refused to compile any resizing ensemble (2026.4: "any_of(scale.size(), OC, 1U)").
        mean = torch.tensor(card.mean, dtype=torch.float32)
        std = torch.tensor(card.std, dtype=torch.float32)
        self.register_buffer("scale", (1.0 / std).view(3, 1, 1, 1), persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize.numel():
            # Clamped as a uint8 image would be: bicubic overshoots at edges.
            x = torch.matmul(torch.matmul(self.resize, x), self.resize.T).clamp(0.0, 1.0)
        x = F.conv2d(x, self.scale, self.shift, groups=3)
        return average_probabilities(self.probabilities, x, self.tta)


class EnsembleNetwork(nn.Module):
    """[0, 1] images -> log of the combined probabilities (or the stacker's logits)."""

    def __init__(self, branches: list[MemberBranch], combination: Combination):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.method = combination.method
        # Members whose weight is 0 (select never picked them) add nothing to the mean: forward
        # skips them. `transferlab ensemble` no longer keeps such members; an older folder may hold some.
        self.used = combination.used()
        self.register_buffer("weights", torch.tensor(combination.weights, dtype=torch.float32), persistent=False)
        self.register_buffer("temperatures", torch.tensor(combination.temperatures, dtype=torch.float32),
                             persistent=False)
        if combination.method == "stack":
            coef, intercept = combination.coef, combination.intercept
            self.stack = nn.Linear(coef.shape[1], coef.shape[0])
            with torch.no_grad():
                self.stack.weight.copy_(torch.from_numpy(np.asarray(coef, dtype=np.float32)))
                self.stack.bias.copy_(torch.from_numpy(np.asarray(intercept, dtype=np.float32)))

    @property
    def exportable(self) -> bool:
        return all(getattr(b.probabilities, "exportable", True) for b in self.branches)

    def drop_member_tta(self) -> None:
        """An explicit --tta is the ensemble's whole: each member's own mode goes, or the passes
        multiply (flip-crops inside flip-crops: 100 per member per image) and --tta none is not none."""
        for branch in self.branches:
            branch.tta = "none"

    def combine(self, probabilities: list[torch.Tensor]) -> torch.Tensor:
        """The members in `self.used`'s probabilities, in that order -> the ensemble's output."""
        if self.method == "stack":
            inputs = torch.cat([torch.log(p.clamp_min(STACK_FLOOR)) for p in probabilities], dim=1)
            return self.stack(inputs)
        # ensemble_fit.combine's arithmetic: each member tempered, softmax(t * log p), then weighted.
        tempered = [torch.softmax(self.temperatures[i] * torch.log(p.clamp_min(NLL_CLIP)), dim=1)
                    for i, p in zip(self.used, probabilities, strict=True)]
        combined = sum(self.weights[i] * p for i, p in zip(self.used, tempered))
        return torch.log(combined.clamp_min(NLL_CLIP))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine([self.branches[i](x) for i in self.used])


@dataclass
class LoadedEnsemble:
    network: EnsembleNetwork
    card: ModelCard
    members: list[OpenModel]


def _check_head_width(member: OpenRun | OpenModel, parts, features: PooledFeatures) -> None:
    """A head fitted on other features (another run's classifier.skops) would fail at the first
    prediction, as a torch or scikit-learn traceback: one line now, from one pass of a blank image."""
    size = parts.settings.resolution
    with torch.no_grad():
        width = features(torch.zeros(1, 3, size, size)).shape[1]
    wanted = getattr(parts.classifier, "n_features_in_", None)
    if wanted != width:
        raise TransferlabError(f"{member.model_dir / 'classifier.skops'}: the classifier takes {wanted} features, "
                               f"the member's backbone layers give {width}")


def member_branch(member: OpenRun | OpenModel, input_resolution: int) -> MemberBranch:
    """The member's own model (as its predictor would load it), as a branch of the ensemble."""
    card = member.card
    if card.kind == "finetune":
        net, _ = load_finetune_net(member)
        return MemberBranch(NetworkProbabilities(net.float().eval()), card, input_resolution)
    parts = load_probe_parts(member)
    _check_head_width(member, parts, PooledFeatures(parts.backbone, parts.settings.layers, parts.settings.pool))
    try:
        probabilities: nn.Module = NetworkProbabilities(build_probe_network(parts))
    except TransferlabError:  # a head that does not fold: scikit-learn inside the branch
        features = PooledFeatures(parts.backbone, parts.settings.layers, parts.settings.pool)
        probabilities = SklearnProbabilities(features, parts.classifier, len(card.classes))
    return MemberBranch(probabilities.eval(), card, input_resolution)


def check_ensemble(run_path) -> tuple[OpenRun | OpenModel, list[OpenModel], Combination]:
    """An ensemble's card, combination and member cards, checked without reading a weight: what
    serve checks before start-up. The combination (which bounds members and classes) comes first,
    so no member card is read for a card that asks for too much."""
    run = open_model(run_path)
    card, where = run.card, str(run.model_dir / "model.json")
    if card.kind != "ensemble":
        raise TransferlabError(f"{run.path}: model kind '{card.kind}' is not an ensemble")
    if card.tta != "none":  # transferlab never writes one: the members hold theirs, and both would multiply
        raise TransferlabError(f"{where}: field 'tta' of an ensemble must be none (each member holds its own)")
    combination = Combination.from_dict(card.combination, len(card.members), len(card.classes),
                                        f"{where}: combination")
    return run, [open_member(run, name) for name in card.members], combination


def load_ensemble(run_path) -> LoadedEnsemble:
    """An ensemble run's network, every member loaded through its kind's checked loader."""
    run, members, combination = check_ensemble(run_path)
    branches = [member_branch(m, run.card.resolution) for m in members]
    return LoadedEnsemble(EnsembleNetwork(branches, combination).eval(), run.card, members)


class EnsemblePredictor(Predictor):
    """An ensemble run: its one network, in fp32, with optional test-time augmentation of the whole."""

    def __init__(self, run_path, tta: str | None = None):
        loaded = load_ensemble(run_path)
        self.card = loaded.card
        self.classes = list(self.card.classes)
        self.resolution = self.card.resolution
        self.interpolation = self.card.interpolation
        self.tta = self.card.tta if tta is None else tta_mode(tta)
        if tta is not None:
            loaded.network.drop_member_tta()
        self.network = WithSoftmax(loaded.network, self.tta).eval()

    @torch.inference_mode()
    def predict_tensor(self, images_uint8: torch.Tensor) -> np.ndarray:
        x = normalise(images_uint8, self.card.mean, self.card.std)
        return self.network(x).numpy()
