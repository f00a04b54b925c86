"""Tests for `transferlab.backbones`: the registry, random/packaged/file weights, offline errors."""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from transferlab.backbones import (
    REGISTRY,
    Backbone,
    create_backbone,
    describe_backbones,
)
from transferlab.backbones.registry import hub_weights_cached
from transferlab.backbones.weights import hub_offline, match_state_dict, read_state_dict
from transferlab.errors import TransferlabError

PACKAGED = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
NATIVE = {"tf_efficientnet_lite0": 224, "tf_efficientnet_lite1": 240, "tf_efficientnet_lite2": 260}
CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


class NotATensor:
    """Any non-tensor class: torch.load(weights_only=True) must refuse to unpickle it."""

    def __init__(self, value=1):
        self.value = value


@pytest.fixture(scope="module")
def test_resnet() -> Backbone:
    return create_backbone("test_resnet")


def _tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- random test models -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
def test_random_backbone_is_deterministic(name):
    first = create_backbone(name)
    torch.manual_seed(12345)  # global RNG state must not leak into the weights
    torch.rand(100)
    second = create_backbone(name)
    assert isinstance(first, Backbone)
    assert first.name == name and first.source == "random"
    assert not first.model.training  # eval mode
    assert first.weights_id == second.weights_id
    assert _tensors_equal(first.model.state_dict(), second.model.state_dict())
    assert len(first.weights_id) == 24
    assert first.parameter_count() > 0
    assert first.num_features > 0
    assert len(first.stages) >= 2 and all(s["num_chs"] > 0 for s in first.stages)
    assert len(first.mean) == 3 and len(first.std) == 3
    assert first.native_size > 0


def test_random_backbones_differ_between_architectures():
    assert create_backbone("test_resnet").weights_id != create_backbone("test_efficientnet").weights_id


def test_forward_gives_logits(test_resnet):
    with torch.inference_mode():
        out = test_resnet(torch.zeros(2, 3, 64, 64))
    assert out.shape[0] == 2 and out.ndim == 2


def test_weights_id_changes_with_any_weight():
    backbone = create_backbone("test_resnet")
    original = backbone.weights_id
    changed = create_backbone("test_resnet")
    with torch.no_grad():
        next(iter(changed.model.parameters())).view(-1)[0] += 1.0
    changed._weights_id = None  # the id is cached on first use
    assert changed.weights_id != original


# --- names --------------------------------------------------------------------------------


def test_unknown_name_lists_registered_names():
    with pytest.raises(TransferlabError) as info:
        create_backbone("definitely_not_a_backbone_xyz")
    message = str(info.value)
    assert "definitely_not_a_backbone_xyz" in message
    for name in REGISTRY:
        assert name in message


def test_hub_offline_reads_both_variables(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFERLAB_OFFLINE", raising=False)
    assert not hub_offline()
    monkeypatch.setenv("TRANSFERLAB_OFFLINE", "1")
    assert hub_offline()
    monkeypatch.setenv("TRANSFERLAB_OFFLINE", "0")
    assert not hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_offline()


def test_conftest_sets_offline():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert hub_offline()


@pytest.fixture
def dns_calls(monkeypatch) -> list:
    """Record (and refuse at once) every DNS lookup; make retry back-off sleeps instant."""
    calls: list = []

    def refuse(host, *args, **kwargs):
        calls.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "lookup refused by test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    return calls


def test_hub_only_name_offline_raises_quickly_with_advice(monkeypatch, dns_calls):
    """With the hub library in offline mode (HF_HUB_OFFLINE=1 before start-up), no request is made."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(TransferlabError) as info:
        create_backbone("resnet18")
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert "resnet18" in message
    for name in PACKAGED:
        assert name in message
    assert "--weights" in message
    assert elapsed < 10
    assert dns_calls == []


def test_hub_only_name_offline_env_set_after_import_makes_no_request(dns_calls):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest
    with pytest.raises(TransferlabError) as info:
        create_backbone("resnet18")
    assert "--weights" in str(info.value)
    assert dns_calls == [], f"DNS lookups attempted while offline: {sorted(set(dns_calls))}"


def test_unregistered_timm_name_with_random_weights():
    backbone = create_backbone("test_vit", weights="random")
    assert backbone.source == "random"
    assert backbone.weights_id == create_backbone("test_vit", weights="random").weights_id


# --- local weights files ------------------------------------------------------------------


def test_safetensors_weights_file(tmp_path, test_resnet):
    path = tmp_path / "my weights (1).safetensors"
    save_file({k: v.contiguous() for k, v in test_resnet.model.state_dict().items()}, str(path))
    loaded = create_backbone("test_resnet", weights=path)
    assert loaded.source == "file"
    assert loaded.weights_label == path.name
    assert loaded.weights_id == test_resnet.weights_id
    assert not loaded.model.training


def test_pt_weights_file(tmp_path, test_resnet):
    path = tmp_path / "weights.pt"
    torch.save(test_resnet.model.state_dict(), path)
    loaded = create_backbone("test_resnet", weights=str(path))
    assert loaded.source == "file"
    assert loaded.weights_id == test_resnet.weights_id


def test_weights_file_values_are_used(tmp_path, test_resnet):
    """Changed weights in the file come back changed: the file is really loaded."""
    state = {k: v.clone() for k, v in test_resnet.model.state_dict().items()}
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 10)
    state[key] += 0.5
    path = tmp_path / "changed.pt"
    torch.save(state, path)
    loaded = create_backbone("test_resnet", weights=path)
    assert torch.equal(loaded.model.state_dict()[key], state[key])
    assert loaded.weights_id != test_resnet.weights_id


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_state_dict(tmp_path, test_resnet, wrapper):
    path = tmp_path / "ckpt.pth"
    torch.save({wrapper: test_resnet.model.state_dict(), "epoch": 3}, path)
    assert create_backbone("test_resnet", weights=path).weights_id == test_resnet.weights_id


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"conv.weight": torch.zeros(3), "payload": NotATensor(5)}, path)
    with pytest.raises(TransferlabError) as info:
        create_backbone("test_resnet", weights=path)
    assert str(path) in str(info.value)
    assert "cannot read weights" in str(info.value)


def test_non_tensor_values_are_refused(tmp_path):
    path = tmp_path / "numbers.pt"
    torch.save({"a": 1, "b": [1, 2]}, path)
    with pytest.raises(TransferlabError, match="not a state dict of tensors"):
        read_state_dict(path)


def test_wrong_architecture_names_the_file(tmp_path):
    other = create_backbone("test_efficientnet")
    path = tmp_path / "efficientnet weights.safetensors"
    save_file({k: v.contiguous() for k, v in other.model.state_dict().items()}, str(path))
    with pytest.raises(TransferlabError) as info:
        create_backbone("test_resnet", weights=path)
    assert str(path) in str(info.value)


def test_wrong_shapes_same_names_are_refused(tmp_path, test_resnet):
    state = {k: v.clone() for k, v in test_resnet.model.state_dict().items()}
    key = next(k for k, v in state.items() if v.ndim == 4)
    state[key] = torch.zeros(tuple(state[key].shape[:-1]) + (state[key].shape[-1] + 1,))
    path = tmp_path / "bad shapes.pt"
    torch.save(state, path)
    with pytest.raises(TransferlabError) as info:
        create_backbone("test_resnet", weights=path)
    assert str(path) in str(info.value) and key in str(info.value)


def test_missing_weights_file(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(TransferlabError) as info:
        create_backbone("test_resnet", weights=path)
    assert str(path) in str(info.value) and "not found" in str(info.value)


def test_corrupt_safetensors_file(tmp_path):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(TransferlabError) as info:
        create_backbone("test_resnet", weights=path)
    assert str(path) in str(info.value)


def test_match_state_dict_by_position():
    target = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    source = {"_x.weight": torch.ones(2, 3), "_x.bias": torch.ones(2)}
    mapped = match_state_dict(source, target, "origin-file")
    assert list(mapped) == ["a.weight", "a.bias"]
    assert torch.equal(mapped["a.weight"], torch.ones(2, 3))
    with pytest.raises(TransferlabError, match="origin-file"):
        match_state_dict({"x": torch.ones(3)}, target, "origin-file")
    with pytest.raises(TransferlabError, match="origin-file"):
        match_state_dict({"x": torch.ones(2), "y": torch.ones(2, 3)}, target, "origin-file")


# --- describe_backbones -------------------------------------------------------------------


@pytest.fixture
def empty_hf_cache(monkeypatch, tmp_path):
    """Point the hub library at an empty cache, so 'offline' depends on nothing outside the test."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_describe_backbones_rows(empty_hf_cache):
    rows = describe_backbones()
    assert [row["name"] for row in rows] == list(REGISTRY)
    for row in rows:
        entry = REGISTRY[row["name"]]
        assert row["source"] == entry.source
        assert row["offline"] is (entry.source in ("packaged", "random"))
        assert row["params_m"] > 0
        assert isinstance(row["feature_dim"], int) and row["feature_dim"] > 0
        assert row["stage_dims"] and all(isinstance(d, int) and d > 0 for d in row["stage_dims"])
        assert row["native_size"] >= 32
        assert row["summary"]
    by_name = {row["name"]: row for row in rows}
    assert by_name["resnet18"]["offline"] is False
    assert by_name["tf_efficientnet_lite0"]["offline"] is True
    assert by_name["resnet50"]["feature_dim"] == 2048
    assert 11 < by_name["resnet18"]["params_m"] < 12.5
    for name in PACKAGED:
        assert by_name[name]["native_size"] == NATIVE[name]


def test_hub_backbone_with_cached_weights_counts_as_offline(empty_hf_cache):
    from timm.models import get_pretrained_cfg

    assert not hub_weights_cached("resnet18")
    repo = get_pretrained_cfg("resnet18").hf_hub_id  # e.g. timm/resnet18.a1_in1k
    folder = empty_hf_cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    (folder / "snapshots" / "0123abcd").mkdir(parents=True)
    (folder / "snapshots" / "0123abcd" / "model.safetensors").write_bytes(b"fake")
    assert hub_weights_cached("resnet18")
    assert not hub_weights_cached("resnet50")
    offline = {row["name"]: row["offline"] for row in describe_backbones()}
    assert offline["resnet18"] is True
    assert offline["resnet50"] is False


def test_describe_matches_built_model(test_resnet):
    row = {r["name"]: r for r in describe_backbones()}["test_resnet"]
    assert row["feature_dim"] == test_resnet.num_features
    assert row["stage_dims"] == [s["num_chs"] for s in test_resnet.stages]
    assert row["params_m"] == round(test_resnet.parameter_count() / 1e6, 2)
    assert row["native_size"] == test_resnet.native_size


# --- packaged ImageNet weights ------------------------------------------------------------


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_backbone_loads(name):
    backbone = create_backbone(name)
    assert backbone.source == "packaged"
    assert backbone.has_imagenet_head
    assert backbone.native_size == NATIVE[name]
    assert backbone.mean == (0.5, 0.5, 0.5) and backbone.std == (0.5, 0.5, 0.5)
    assert not backbone.model.training
    # Real weights, not an initialisation: BN running stats moved away from their defaults.
    state = backbone.model.state_dict()
    running_vars = [v for k, v in state.items() if k.endswith("running_var")]
    assert running_vars and not all(torch.allclose(v, torch.ones_like(v)) for v in running_vars)


def test_packaged_lite0_recognises_a_cat():
    from skimage import data

    backbone = create_backbone("tf_efficientnet_lite0")
    size = backbone.native_size
    image = Image.fromarray(data.chelsea()).convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    image = image.resize((round(width * scale), round(height * scale)), Image.Resampling.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    image = image.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    x = (x - 0.5) / 0.5
    with torch.inference_mode():
        logits = backbone(x)
    assert logits.shape == (1, 1000)
    top5 = set(logits[0].topk(5).indices.tolist())
    assert top5 & CAT_CLASSES, f"top-5 {sorted(top5)} has no cat class"
    assert int(logits[0].argmax()) in CAT_CLASSES


# --- shape: groups, units, CAM layer on the Backbone surface -------------------------------


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
def test_backbone_knows_its_shape(name):
    from transferlab.backbones import block_groups, cam_layer

    backbone = create_backbone(name)
    groups = backbone.block_groups()
    assert groups == block_groups(backbone.model) and next(iter(groups)) == "stem"
    units = backbone.sequential_units()
    assert [group for group, _ in units] == list(groups)
    assert backbone.cam_layer() is cam_layer(backbone.model)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        pooled = backbone.model.forward_head(backbone.model.forward_features(x), pre_logits=True)
        for _, unit in units:
            x = unit(x)
    assert torch.equal(x, pooled) and x.shape == (1, backbone.num_features)


def test_uncut_backbone_surface_says_so(monkeypatch):
    from transferlab.backbones import UncutBackboneWarning, shape

    monkeypatch.setattr(shape, "_warned", set())
    backbone = create_backbone("test_vit", weights="random")  # token sequences: no conv units
    with pytest.warns(UncutBackboneWarning, match="test_vit"):
        assert backbone.sequential_units() is None
    assert len(backbone.block_groups()) >= 3
