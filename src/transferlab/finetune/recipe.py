"""A fine-tuning recipe: plain data (YAML), validated before any training starts.

Example (the three-step VGG-style schedule of the museum-media study):

    backbone: tf_efficientnet_lite0
    head: [{type: batchnorm}, {type: dense, units: 256, l2: 0.0001}, {type: dropout, p: 0.4}]
    augment: classic
    stages: three-step          # or a list of {train, epochs, lr, ...}

Stage presets: head-only, fine_tune, from-block:K, gradual:N, three-step.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from transferlab.errors import TransferlabError

SCHEDULES = ("cosine", "onecycle", "plateau", "constant")
OPTIMIZERS = ("adamw", "sgd")
BN_MODES = ("frozen", "train")
BALANCE = ("none", "weights", "sampler")


@dataclass
class Stage:
    train: str = "head"  # group spec: "head", "blocks.5-6,neck,head", "top3", "all"
    epochs: int = 3
    lr: float = 1e-3
    head_lr: float | None = None  # defaults to lr
    layer_decay: float | None = None  # lr multiplier per group going down the network
    patience: int = 3  # early stopping on validation loss
    bn: str = "frozen"  # frozen: BN statistics of frozen *and* trained backbone groups stay fixed
    schedule: str = "cosine"

    def validate(self, where: str) -> None:
        if self.epochs < 1:
            raise TransferlabError(f"{where}: epochs must be at least 1, got {self.epochs}")
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise TransferlabError(f"{where}: {name} must be positive, got {value}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise TransferlabError(f"{where}: layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.patience < 0:
            raise TransferlabError(f"{where}: patience must be 0 or more, got {self.patience}")
        if self.bn not in BN_MODES:
            raise TransferlabError(f"{where}: bn must be one of {', '.join(BN_MODES)}, got '{self.bn}'")
        if self.schedule not in SCHEDULES:
            raise TransferlabError(f"{where}: schedule must be one of {', '.join(SCHEDULES)}, got '{self.schedule}'")


@dataclass
class Recipe:
    backbone: str = "tf_efficientnet_lite0"
    weights: str | None = None
    resolution: int | None = None  # None: chosen from the images
    precision: str = "auto"
    batch_size: int = 64
    seed: int = 0
    val_fraction: float = 0.2
    per_class: int | None = None
    head: list[dict] = field(default_factory=lambda: [{"type": "dropout", "p": 0.2}])
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    balance: str = "none"
    augment: str | list[dict] = "light"
    mixup: float = 0.0
    cutmix: float = 0.0
    augment_draws: int = 4  # cached augmentation draws per image for frozen-prefix stages
    tta: bool = False
    stages: str | list[dict] = "fine_tune"
    processes: int = 1  # >1: Lightning DDP on CPU (gloo)

    def validate(self) -> None:
        if self.batch_size < 1:
            raise TransferlabError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise TransferlabError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got '{self.optimizer}'")
        if self.balance not in BALANCE:
            raise TransferlabError(f"balance must be one of {', '.join(BALANCE)}, got '{self.balance}'")
        if not 0 <= self.label_smoothing < 1:
            raise TransferlabError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0:
            raise TransferlabError(f"weight_decay must be 0 or more, got {self.weight_decay}")
        if self.augment_draws < 1:
            raise TransferlabError(f"augment_draws must be at least 1, got {self.augment_draws}")
        if self.processes < 1:
            raise TransferlabError(f"processes must be at least 1, got {self.processes}")


def _from_dict(cls, data: dict, where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TransferlabError(f"{where}: unknown key '{unknown[0]}'; known keys: {', '.join(sorted(known))}")
    return cls(**data)


def load_recipe(path: str | os.PathLike | None = None, overrides: dict | None = None) -> Recipe:
    """Read a YAML recipe (or the defaults) and apply command-line overrides."""
    data: dict = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise TransferlabError(f"{file}: recipe not found")
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise TransferlabError(f"{file}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise TransferlabError(f"{file}: a recipe is a mapping of keys to values")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    recipe = _from_dict(Recipe, data, str(path or "recipe"))
    recipe.validate()
    return recipe


def resolve_stages(recipe: Recipe, groups: list[str]) -> list[Stage]:
    """Turn a preset name or a list of dicts into validated stages over these backbone groups."""
    spec = recipe.stages
    if isinstance(spec, str):
        stages = preset_stages(spec, groups)
    elif isinstance(spec, list) and spec:
        stages = [_from_dict(Stage, dict(s), f"stage {i + 1}") for i, s in enumerate(spec)]
    else:
        raise TransferlabError("stages must be a preset name or a non-empty list of stages")
    for index, stage in enumerate(stages):
        stage.validate(f"stage {index + 1}")
    return stages


def preset_stages(name: str, groups: list[str]) -> list[Stage]:
    """Presets; `groups` are the backbone's groups, input side first (without "head")."""
    if name == "head-only":
        return [Stage("head", epochs=8, lr=3e-3, patience=3)]
    if name == "fine_tune":
        return [Stage("head", epochs=3, lr=3e-3), Stage("all", epochs=6, lr=3e-4, head_lr=1e-3, layer_decay=0.8)]
    if name == "three-step":  # head -> upper blocks -> all, as in the VGG16 museum study
        upper = ",".join(groups[-3:] + ["head"])
        return [
            Stage("head", epochs=3, lr=3e-3),
            Stage(upper, epochs=4, lr=1e-3, head_lr=1e-3),
            Stage("all", epochs=3, lr=2e-4, head_lr=5e-4, layer_decay=0.8),
        ]
    if name.startswith("from-block:"):
        k = _int_suffix(name)
        if not 0 <= k < len(groups):
            raise TransferlabError(f"preset '{name}': block index must be 0..{len(groups) - 1}")
        return [Stage("head", epochs=3, lr=3e-3), Stage(",".join(groups[k:] + ["head"]), epochs=6, lr=5e-4, head_lr=1e-3)]
    if name.startswith("gradual"):
        n = _int_suffix(name) if ":" in name else 3
        if not 1 <= n <= len(groups):
            raise TransferlabError(f"preset '{name}': number of unfrozen groups must be 1..{len(groups)}")
        stages = [Stage("head", epochs=2, lr=3e-3)]
        for i in range(1, n + 1):
            stages.append(Stage(",".join(groups[-i:] + ["head"]), epochs=2, lr=1e-3 / i, head_lr=1e-3))
        return stages
    raise TransferlabError(
        f"unknown stage preset '{name}': head-only, fine_tune, three-step, from-block:K, gradual:N"
    )


def _int_suffix(name: str) -> int:
    try:
        return int(name.split(":", 1)[1])
    except (IndexError, ValueError):
        raise TransferlabError(f"preset '{name}' needs a number after ':'") from None


def recipe_to_dict(recipe: Recipe, stages: list[Stage]) -> dict:
    data = dataclasses.asdict(recipe)
    data["stages"] = [dataclasses.asdict(s) for s in stages]
    return data
