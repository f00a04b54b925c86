"""Contract tests: what every backbone knows about its own shape (block groups, cuttable
units, CAM layer), and that the fine-tuning network and CAM use it.

Registered architectures are built on the meta device (no weights, no network); numerical
checks use small real models with random weights at small resolution.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import timm
import torch
from timm.models.vgg import VGG
from torch import nn

from transferlab.backbones import REGISTRY, UncutBackboneWarning, block_groups, cam_layer, sequential_units, shape
from transferlab.errors import TransferlabError
from transferlab.explain.cam import target_layer
from transferlab.finetune.groups import backbone_groups, expand_group_spec
from transferlab.finetune.network import FinetuneNet
from transferlab.finetune.recipe import load_recipe, resolve_stages

REGISTERED = sorted(REGISTRY)
# HRNet's stages pass lists of branch tensors to each other: no cut into single-tensor units.
UNCUT = {"hrnet_w18"}
# The heritage recipes' architectures: their groups must stay exactly what they were.
HERITAGE = [name for name in REGISTERED if "efficientnet" in name or "resnet" in name]
RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


@pytest.fixture(autouse=True)
def fresh_warning_memory(monkeypatch):
    """Each test sees the 'warn once' memory empty."""
    monkeypatch.setattr(shape, "_warned", set())


def meta_model(name: str) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False)


def all_params(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_parameters()}


def units_quietly(model: nn.Module):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncutBackboneWarning)
        return sequential_units(model)


# --- block groups -------------------------------------------------------------------------


@pytest.mark.parametrize("name", REGISTERED)
def test_groups_cover_every_parameter_once(name):
    model = meta_model(name)
    groups = block_groups(model)
    assert len(groups) >= 3, f"{name}: {list(groups)}"
    assert all(groups.values()), "no empty group"
    flat = [param for params in groups.values() for param in params]
    assert len(flat) == len(set(flat)), "a parameter in two groups"
    classifier = {p for p in all_params(model) if p.startswith(shape.classifier_prefixes(model))}
    assert classifier, "the classifier exists and is left out"
    assert set(flat) == all_params(model) - classifier
    model.reset_classifier(0)  # what FinetuneNet holds: every parameter is in a group
    after = block_groups(model)
    assert list(after) == list(groups)
    assert {p for params in after.values() for p in params} == all_params(model)


_LEGACY_BLOCK = re.compile(r"^((?:blocks|stages|layers|features)\.\d+|layer\d+)\.")


def legacy_groups(model: nn.Module) -> dict[str, list[str]]:
    """The regex grouping finetune/groups.py used before timm's matcher (the oracle)."""
    classifier = shape.classifier_prefixes(model)[0]
    groups: dict[str, list[str]] = {}
    seen_block = False
    for name, _ in model.named_parameters():
        if name.startswith(classifier):
            continue
        match = _LEGACY_BLOCK.match(name)
        seen_block = seen_block or bool(match)
        groups.setdefault(match.group(1) if match else ("neck" if seen_block else "stem"), []).append(name)
    return groups


@pytest.mark.parametrize("name", HERITAGE)
def test_heritage_groups_are_unchanged(name):
    """Same names, same parameters, same order: existing recipes train exactly what they did."""
    model = meta_model(name)
    assert backbone_groups(model) == legacy_groups(model)
    model.reset_classifier(0)
    assert backbone_groups(model) == legacy_groups(model)


def test_regnet_has_one_group_per_stage():
    """The regex grouping put all of RegNet (s1..s4) into "stem"."""
    model = meta_model("regnety_016")
    groups = block_groups(model)
    assert list(groups) == ["stem", "s1", "s2", "s3", "s4"]
    assert [group for group, _ in units_quietly(model)] == list(groups)


def test_module_without_timm_matcher_groups_by_child():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 1))
    groups = block_groups(model)
    assert groups == {"stem": ["0.weight", "0.bias"], "1": ["1.weight", "1.bias"], "3": ["3.weight", "3.bias"]}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_resolve(recipe):
    loaded = load_recipe(recipe)
    groups = list(block_groups(meta_model(loaded.backbone)))
    for stage in resolve_stages(loaded, groups):
        assert set(expand_group_spec(stage.train, groups + ["head"])) <= set(groups) | {"head"}


# --- units --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(REGISTERED) - UNCUT))
def test_units_line_up_with_groups(name):
    model = meta_model(name)
    units = units_quietly(model)
    groups = block_groups(model)
    assert units is not None and [group for group, _ in units] == list(groups)
    owner = {id(p): group for group, names in groups.items() for n, p in model.named_parameters() if n in names}
    for group, unit in units:
        assert {owner[id(p)] for p in unit.parameters()} <= {group}, f"unit {group} runs another group"
    size = model.pretrained_cfg["input_size"][-1]
    x = torch.empty(2, 3, size, size, device="meta")
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
        for _, unit in units:
            x = unit(x)
    assert x.shape == expected.shape and x.ndim == 2


@pytest.mark.parametrize("name", sorted(UNCUT))
def test_uncut_backbone_warns_once_naming_it(name):
    model = meta_model(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert sequential_units(model) is None
        assert sequential_units(model) is None
    uncut = [w for w in caught if issubclass(w.category, UncutBackboneWarning)]
    assert len(uncut) == 1 and name in str(uncut[0].message)


def test_finetune_net_warns_when_training_asks_for_units():
    """Loading an uncut backbone for inference says nothing; planning the cache says so."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = FinetuneNet(meta_model("hrnet_w18"), 3, [], (0.5,) * 3, (0.5,) * 3)
        assert not [w for w in caught if issubclass(w.category, UncutBackboneWarning)]
        assert net.n_units == 1 and net.unit_groups() == [list(net.group_params)]
    assert [w for w in caught if issubclass(w.category, UncutBackboneWarning)]


def tiny_vgg() -> nn.Module:
    """timm's VGG class with few channels (vgg16 itself has 138M parameters)."""
    return VGG([8, "M", 16, 16, "M", 16, "M"], num_classes=5, mlp_ratio=0.01)


SMALL = {
    "test_resnet": lambda: timm.create_model("test_resnet"),
    "test_efficientnet": lambda: timm.create_model("test_efficientnet"),
    "resnet18": lambda: timm.create_model("resnet18"),
    "test_convnext": lambda: timm.create_model("test_convnext"),
    "tiny_vgg": tiny_vgg,
}


TINY = ["test_convnext", "test_efficientnet", "test_resnet", "tiny_vgg"]


@pytest.fixture(params=sorted(SMALL))
def small_model(request) -> nn.Module:
    torch.manual_seed(0)
    return SMALL[request.param]().eval()


@pytest.fixture(params=TINY)
def tiny_model(request) -> nn.Module:
    torch.manual_seed(0)
    return SMALL[request.param]().eval()


def test_units_chain_to_forward_features_and_pooling(small_model):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = small_model.forward_head(small_model.forward_features(x), pre_logits=True)
        units = units_quietly(small_model)
        assert units is not None
        for _, unit in units:
            x = unit(x)
    torch.testing.assert_close(x, expected, rtol=0, atol=0)


def test_finetune_net_cut_anywhere_gives_the_same_logits(tiny_model):
    torch.manual_seed(1)
    net = FinetuneNet(tiny_model, 3, [{"type": "dense", "units": 8}], (0.5,) * 3, (0.5,) * 3).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert net.n_units == len(net.group_params) and net.unit_groups() == [[g] for g in net.group_params]
    with torch.no_grad():
        whole = net(images)
        assert whole.shape == (2, 3)
        for level in range(net.n_units + 1):
            cut = net(net.forward_units(images, 0, level), level)
            torch.testing.assert_close(cut, whole, rtol=0, atol=0)


def test_frozen_prefix_depends_on_its_own_groups_only():
    """The cache's promise: the output of units [0, k) moves with their groups, not later ones."""
    model = SMALL["test_convnext"]().eval()
    prefix = [unit for _, unit in units_quietly(model)[:2]]  # stem, stages.0
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = prefix[1](prefix[0](x))
        for group in ("stages.1", "neck"):
            for name in block_groups(model)[group]:
                model.get_parameter(name).add_(1.0)
        torch.testing.assert_close(prefix[1](prefix[0](x)), before, rtol=0, atol=0)
        for name in block_groups(model)["stages.0"]:
            model.get_parameter(name).add_(1.0)
        assert not torch.equal(prefix[1](prefix[0](x)), before)


# --- CAM layer ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", REGISTERED)
def test_cam_layer_outputs_the_final_feature_map(name):
    model = meta_model(name)
    layer = cam_layer(model)
    assert target_layer(model) is layer
    assert any(layer is module for module in model.modules())
    classifier = shape.classifier_prefixes(model)
    assert not any(n.startswith(classifier) for n, p in model.named_parameters() if any(p is q for q in layer.parameters()))
    seen: list = []
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(output))
    size = model.pretrained_cfg["input_size"][-1]
    with torch.no_grad():
        features = model.forward_features(torch.empty(1, 3, size, size, device="meta"))
    handle.remove()
    assert seen and isinstance(seen[-1], torch.Tensor) and seen[-1].ndim == 4, "a (B, C, H, W) feature map"
    assert seen[-1].shape[1] == features.shape[1]


def test_cam_layer_without_feature_stages_is_one_line():
    with pytest.raises(TransferlabError, match="names no feature stages"):
        cam_layer(nn.Sequential(nn.Conv2d(3, 4, 3)))
