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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from transferlab.errors import TransferlabError
from transferlab.finetune.values import finite_number
from transferlab.options import (
    MAX_BATCH_SIZE,
    MAX_RESOLUTION,
    MAX_SEED,
    MIN_RESOLUTION,
    PRECISION_CHOICES,
    tta_mode,
)
from transferlab.safe_yaml import read_yaml_file, short_repr

SCHEDULES = ("cosine", "onecycle", "plateau", "constant")
OPTIMIZERS = ("adamw", "sgd")
BN_MODES = ("frozen", "train")
BALANCE = ("none", "weights", "sampler")
MAX_PROCESSES = 64


# --- typed checks: one line naming the field, before any image is decoded --------------------


def _int(where: str, name: str, value, low: int, high: int | None = None, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TransferlabError(f"{where}: {name} must be a whole number, got {short_repr(value)}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else "0 or more" if low == 0 else f"at least {low}"
        raise TransferlabError(f"{where}: {name} must be {bound}, got {value}")
    return value


def _choice(where: str, name: str, value, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise TransferlabError(f"{where}: {name} must be one of {', '.join(choices)}, got {short_repr(value)}")
    return value


def _mappings(where: str, name: str, value) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise TransferlabError(f"{where}: {name} must be a list of mappings ({{key: value}}), got {short_repr(value)}")
    return [dict(item) for item in value]


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
        """Check every field's type and range; numbers given as text (YAML `1e-3`) become floats."""
        if not isinstance(self.train, str) or not self.train.strip():
            raise TransferlabError(f"{where}: train must name groups (e.g. head, all, blocks.5-6,head), "
                                   f"got {short_repr(self.train)}")
        _int(where, "epochs", self.epochs, 1)
        self.lr = finite_number(where, "lr", self.lr)
        self.head_lr = finite_number(where, "head_lr", self.head_lr, optional=True)
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise TransferlabError(f"{where}: {name} must be positive, got {value}")
        self.layer_decay = finite_number(where, "layer_decay", self.layer_decay, optional=True)
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise TransferlabError(f"{where}: layer_decay must be in (0, 1], got {self.layer_decay}")
        _int(where, "patience", self.patience, 0)
        _choice(where, "bn", self.bn, BN_MODES)
        _choice(where, "schedule", self.schedule, SCHEDULES)


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
    train_per_class: int | None = None  # at most N training images per class; validation unchanged
    head: list[dict] = field(default_factory=lambda: [{"type": "dropout", "p": 0.2}])
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    balance: str = "none"
    augment: str | list[dict] = "light"
    mixup: float = 0.0
    cutmix: float = 0.0
    augment_draws: int = 4  # cached augmentation draws per image for frozen-prefix stages
    tta: bool | str = False  # test-time augmentation of the evaluation: a data.tta mode (true: flip)
    stages: str | list[dict] = "fine_tune"
    processes: int = 1  # >1: Lightning DDP on CPU (gloo)
    # Overrides of every stage (the CLI's --epochs / --lr), applied by `resolve_stages`:
    epochs: int | None = None  # sets every stage's epochs
    lr: float | None = None  # sets the first stage's rate; the others keep their ratio to it

    def validate(self, where: str = "recipe") -> None:
        """Check every field's type and range (one line naming the field); normalises numbers."""
        if not isinstance(self.backbone, str) or not self.backbone.strip():
            raise TransferlabError(f"{where}: backbone must be a backbone name, got {short_repr(self.backbone)}")
        if self.weights is not None and not isinstance(self.weights, str):
            raise TransferlabError(f"{where}: weights must be a file path or 'random', got {short_repr(self.weights)}")
        _int(where, "resolution", self.resolution, MIN_RESOLUTION, MAX_RESOLUTION, optional=True)
        _choice(where, "precision", self.precision, PRECISION_CHOICES)
        _int(where, "batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        _int(where, "seed", self.seed, 0, MAX_SEED)
        self.val_fraction = finite_number(where, "val_fraction", self.val_fraction)
        if not 0 < self.val_fraction < 1:
            raise TransferlabError(f"{where}: val_fraction must be between 0 and 1 (exclusive), "
                                   f"got {self.val_fraction}")
        _int(where, "per_class", self.per_class, 2, optional=True)
        _int(where, "train_per_class", self.train_per_class, 1, optional=True)
        self._validate_training(where)
        self._validate_parts(where)
        _int(where, "epochs", self.epochs, 1, optional=True)
        self.lr = finite_number(where, "lr", self.lr, optional=True)
        if self.lr is not None and not self.lr > 0:
            raise TransferlabError(f"{where}: lr must be positive, got {self.lr}")

    def _validate_training(self, where: str) -> None:
        _choice(where, "optimizer", self.optimizer, OPTIMIZERS)
        _choice(where, "balance", self.balance, BALANCE)
        self.label_smoothing = finite_number(where, "label_smoothing", self.label_smoothing)
        if not 0 <= self.label_smoothing < 1:
            raise TransferlabError(f"{where}: label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for name in ("weight_decay", "mixup", "cutmix"):
            value = finite_number(where, name, getattr(self, name))
            if value < 0:
                raise TransferlabError(f"{where}: {name} must be 0 or more, got {value}")
            setattr(self, name, value)
        _int(where, "augment_draws", self.augment_draws, 1)
        _int(where, "processes", self.processes, 1, MAX_PROCESSES)
        tta_mode(self.tta, f"{where}: tta")

    def _validate_parts(self, where: str) -> None:
        """Head, augmentation and stage list: their structure, and every name they use."""
        # Imported here: the recipe module stays light (no torch) for callers that only read YAML.
        from transferlab.finetune.augment import check_augment
        from transferlab.finetune.head import check_head

        self.head = _mappings(where, "head", self.head)
        check_head(self.head, where)
        if not isinstance(self.augment, str):
            self.augment = _mappings(where, "augment", self.augment)
        check_augment(self.augment, where)
        if isinstance(self.stages, str):
            return
        self.stages = _mappings(where, "stages", self.stages)
        if not self.stages:
            raise TransferlabError(f"{where}: stages must be a preset name or a non-empty list of stages")


def _from_dict(cls, data: dict, where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        raise TransferlabError(f"{where}: unknown key {short_repr(unknown[0])}; known keys: {', '.join(sorted(known))}")
    return cls(**data)


def load_recipe(path: str | os.PathLike | None = None, overrides: dict | None = None) -> Recipe:
    """Read a YAML recipe (or the defaults) and apply command-line overrides.

    Overrides are recipe keys; None means "not given". Besides every recipe field they take
    `epochs` (sets every stage's epochs), `lr` (sets the first stage's learning rate and
    scales the other stages' rates by the same factor, see `apply_overrides`) and
    `per_class` (at most N images per class, the small-data regime).
    """
    data: dict = {}
    if path is not None:
        file = Path(path)
        # No anchors or aliases (a few hundred bytes of them expand to gigabytes in a message),
        # no special files, no number int() refuses: one line naming the file.
        data = read_yaml_file(file, "recipe") or {}
        if not isinstance(data, dict):
            raise TransferlabError(f"{file}: a recipe is a mapping of keys to values")
    where = str(path or "recipe")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    _from_dict(Recipe, given, "overrides")  # an unknown override key is a programming error, said as such
    data.update(given)
    recipe = _from_dict(Recipe, data, where)
    recipe.validate(where)
    return recipe


def recipe_from_saved(data, where: str) -> Recipe:
    """The recipe a run recorded (finetune_state.json), checked like a recipe file."""
    if not isinstance(data, Mapping):
        raise TransferlabError(f"{where}: the saved recipe is not a mapping")
    recipe = _from_dict(Recipe, dict(data), where)
    recipe.validate(where)
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
    apply_overrides(stages, recipe, groups)
    return stages


def apply_overrides(stages: list[Stage], recipe: Recipe, groups: list[str]) -> None:
    """`epochs` sets every stage's epochs. `lr` sets the first stage's rate, the one
    `--find-lr` suggests (its head_lr when it trains only the head and sets one, else its
    lr), and multiplies every other rate (lr, head_lr, every stage) by the same factor, so
    the recipe's ratios between stages and the head stay. Both are idempotent: the resolved
    recipe saved in config.yaml (stages and overrides) re-runs to the same stages.
    """
    if recipe.epochs is not None:
        for stage in stages:
            stage.epochs = recipe.epochs
    if recipe.lr is not None and stages:
        from transferlab.finetune.groups import expand_group_spec  # torch: not needed to read a recipe

        first = stages[0]
        head_only = expand_group_spec(first.train, groups + ["head"]) == ["head"]
        reference = first.head_lr if head_only and first.head_lr else first.lr
        factor = recipe.lr / reference
        for stage in stages:
            stage.lr *= factor
            if stage.head_lr is not None:
                stage.head_lr *= factor


def _head_only(name: str, groups: list[str]) -> list[Stage]:
    return [Stage("head", epochs=8, lr=3e-3, patience=3)]


def _fine_tune(name: str, groups: list[str]) -> list[Stage]:
    return [Stage("head", epochs=3, lr=3e-3), Stage("all", epochs=6, lr=3e-4, head_lr=1e-3, layer_decay=0.8)]


def _three_step(name: str, groups: list[str]) -> list[Stage]:
    """Head -> upper blocks -> all, as in the VGG16 museum study."""
    upper = ",".join(groups[-3:] + ["head"])
    return [
        Stage("head", epochs=3, lr=3e-3),
        Stage(upper, epochs=4, lr=1e-3, head_lr=1e-3),
        Stage("all", epochs=3, lr=2e-4, head_lr=5e-4, layer_decay=0.8),
    ]


def _from_block(name: str, groups: list[str]) -> list[Stage]:
    k = _int_suffix(name)
    if not 0 <= k < len(groups):
        raise TransferlabError(f"preset '{name}': block index must be 0..{len(groups) - 1}")
    return [Stage("head", epochs=3, lr=3e-3), Stage(",".join(groups[k:] + ["head"]), epochs=6, lr=5e-4, head_lr=1e-3)]


def _gradual(name: str, groups: list[str]) -> list[Stage]:
    n = _int_suffix(name) if ":" in name else 3
    if not 1 <= n <= len(groups):
        raise TransferlabError(f"preset '{name}': number of unfrozen groups must be 1..{len(groups)}")
    stages = [Stage("head", epochs=2, lr=3e-3)]
    for i in range(1, n + 1):
        stages.append(Stage(",".join(groups[-i:] + ["head"]), epochs=2, lr=1e-3 / i, head_lr=1e-3))
    return stages


# Stage presets: the name as a user writes it (":K" / ":N" take a number) -> the stages it makes
# from the backbone's groups (input side first, without "head").
STAGE_PRESETS = {
    "head-only": _head_only,
    "fine_tune": _fine_tune,
    "three-step": _three_step,
    "from-block:K": _from_block,
    "gradual:N": _gradual,
}


def preset_stages(name: str, groups: list[str]) -> list[Stage]:
    """The stages of preset `name` for a backbone with these groups."""
    for pattern, build in STAGE_PRESETS.items():
        stem = pattern.split(":")[0]
        if name == stem or (":" in pattern and name.startswith(stem + ":")):
            return build(name, groups)
    raise TransferlabError(f"unknown stage preset '{name}': {', '.join(STAGE_PRESETS)}")


def _int_suffix(name: str) -> int:
    try:
        return int(name.split(":", 1)[1])
    except (IndexError, ValueError):
        raise TransferlabError(f"preset '{name}' needs a number after ':'") from None


def recipe_to_dict(recipe: Recipe, stages: list[Stage]) -> dict:
    data = dataclasses.asdict(recipe)
    data["stages"] = [dataclasses.asdict(s) for s in stages]
    return data
