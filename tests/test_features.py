"""Tests for `transferlab.features`: layer names, pooling, resolution choice, extraction and its cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import make_image_folder
from transferlab.backbones import create_backbone
from transferlab.data.transforms import preprocess
from transferlab.errors import TransferlabError
from transferlab.features.cache import FeatureCache, default_cache_root
from transferlab.features.extract import (
    ExtractionSettings,
    extract_features,
)
from transferlab.features.layers import parse_layers, pool, stage_indices
from transferlab.features.resolution import (
    choose_resolution,
    round_to_multiple,
    typical_short_side,
)

RES = 64


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("test_resnet")


@pytest.fixture
def paths(tmp_path) -> list[Path]:
    root = make_image_folder(tmp_path / "data", per_class=3)
    return sorted(root.rglob("*.*"))


def settings(**kwargs) -> ExtractionSettings:
    base = {"resolution": RES, "workers": 0, "batch_size": 4}
    base.update(kwargs)
    return ExtractionSettings(**base)


def truncated_jpeg(path: Path) -> Path:
    rng = np.random.default_rng(1)
    full = path.with_name("full-" + path.name)
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(full, quality=95)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# --- layers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("head", ("head",)),
        ("stage-2,head", ("stage-2", "head")),
        (" stage3 , stage-1 ,, head ", ("stage3", "stage-1", "head")),
        (["stage0", "head"], ("stage0", "head")),
        (("stage1", "stage1", "head"), ("stage1", "head")),  # duplicates dropped, order kept
    ],
)
def test_parse_layers_good(spec, expected):
    assert parse_layers(spec) == expected


@pytest.mark.parametrize("spec", ["", " , ", "layer3", "stage", "stagex", "stage1.5", "Head", "head,conv1", []])
def test_parse_layers_bad(spec):
    with pytest.raises(TransferlabError):
        parse_layers(spec)


def test_stage_indices_resolves_negative():
    assert stage_indices(("stage-1", "head", "stage0", "stage-2"), 5) == [4, 0, 3]
    assert stage_indices(("head",), 5) == []


@pytest.mark.parametrize("name", ["stage5", "stage-6", "stage99"])
def test_stage_indices_out_of_range(name):
    with pytest.raises(TransferlabError) as info:
        stage_indices((name,), 5)
    assert name in str(info.value) and "0..4" in str(info.value)


def test_pool_methods_on_known_tensor():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    x = torch.cat([x, 2 * x], dim=1)  # (1, 2, 2, 2)
    avg, mx, gem = pool(x, "avg"), pool(x, "max"), pool(x, "gem")
    assert avg.shape == mx.shape == gem.shape == (1, 2)
    assert torch.allclose(avg, torch.tensor([[2.5, 5.0]]))
    assert torch.allclose(mx, torch.tensor([[4.0, 8.0]]))
    expected_gem = (torch.tensor([1.0, 8.0, 27.0, 64.0]).mean() ** (1 / 3)).item()
    assert gem[0, 0].item() == pytest.approx(expected_gem, rel=1e-5)
    assert torch.all(avg < gem) and torch.all(gem < mx)


def test_pool_returns_float32_from_bf16():
    x = torch.rand(2, 3, 4, 4).to(torch.bfloat16)
    for method in ("avg", "max", "gem"):
        assert pool(x, method).dtype == torch.float32


def test_pool_unknown_method():
    with pytest.raises(TransferlabError):
        pool(torch.zeros(1, 1, 2, 2), "median")


# --- resolution ---------------------------------------------------------------------------


def _images(root: Path, size: int, n: int = 3) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = root / f"im{i}.png"
        Image.new("RGB", (size + 10 * i, size), (i, 0, 0)).save(path)
        out.append(path)
    return out


def test_choose_resolution_small_images(tmp_path):
    resolution, reason = choose_resolution(_images(tmp_path / "small", 64), 224)
    assert resolution == 128
    assert "64" in reason


def test_choose_resolution_large_images(tmp_path):
    resolution, reason = choose_resolution(_images(tmp_path / "large", 500), 224)
    assert resolution == 224
    assert "native" in reason


def test_choose_resolution_tiny_images_have_a_floor(tmp_path):
    resolution, _ = choose_resolution(_images(tmp_path / "tiny", 12), 224)
    assert resolution == 64


def test_choose_resolution_unreadable(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    assert choose_resolution([bad], 240)[0] == 240
    assert typical_short_side([bad]) is None


def test_round_to_multiple():
    assert round_to_multiple(128) == 128
    assert round_to_multiple(100) == 96
    assert round_to_multiple(5) == 32


# --- settings and preprocessing -----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"pool": "median"}, {"precision": "fp16"}, {"resolution": 8}, {"batch_size": 0}],
)
def test_settings_validation(kwargs):
    with pytest.raises(TransferlabError):
        settings(**kwargs)


def test_preprocess_shape_and_centre_crop(tmp_path):
    path = tmp_path / "wide.png"
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    image.paste((0, 255, 0), (0, 0, 40, 100))  # left band, cropped away
    image.save(path)
    tensor = preprocess(path, 64)
    assert tensor.shape == (3, 64, 64) and tensor.dtype == torch.uint8
    assert tensor[0].float().mean() > 250 and tensor[1].float().mean() < 5


# --- extraction ---------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [("stage-2", "head"), ("head",), ("stage0", "stage2", "head"), ("stage1",)])
def test_feature_width_is_sum_of_layer_channels(backbone, paths, layers):
    result = extract_features(backbone, paths, settings(layers=layers), progress=False)
    n_stages = len(backbone.stages)
    expected = 0
    for name in layers:
        if name == "head":
            expected += backbone.num_features
        else:
            k = int(name[5:])
            expected += backbone.stages[k + n_stages if k < 0 else k]["num_chs"]
    assert result.features.shape == (len(paths), expected)
    assert result.features.dtype == np.float32
    assert np.all(np.isfinite(result.features))
    assert result.ok_indices == list(range(len(paths)))
    assert result.failures == []
    assert result.n_extracted == len(paths)
    assert result.cache_dir is None


def test_feature_columns_follow_requested_layer_order(backbone, paths):
    """Columns follow the requested layer order, not timm's forward order (a regression test)."""
    both = extract_features(backbone, paths, settings(layers=("stage3", "stage1")), progress=False).features
    s3 = extract_features(backbone, paths, settings(layers=("stage3",)), progress=False).features
    s1 = extract_features(backbone, paths, settings(layers=("stage1",)), progress=False).features
    assert both.shape[1] == s3.shape[1] + s1.shape[1]
    np.testing.assert_allclose(both, np.concatenate([s3, s1], axis=1), rtol=1e-5, atol=1e-6)


def test_features_in_network_order_match_single_layers(backbone, paths):
    both = extract_features(backbone, paths, settings(layers=("stage1", "stage3", "head")), progress=False).features
    parts = [
        extract_features(backbone, paths, settings(layers=(layer,)), progress=False).features
        for layer in ("stage1", "stage3", "head")
    ]
    np.testing.assert_allclose(both, np.concatenate(parts, axis=1), rtol=1e-5, atol=1e-6)


def test_features_separate_the_generated_classes(backbone, paths):
    result = extract_features(backbone, paths, settings(), progress=False)
    labels = [p.parent.name for p in paths]
    features = result.features
    # Images of one class are closer to each other than to other classes, on average.
    same, other = [], []
    for i in range(len(paths)):
        for j in range(i + 1, len(paths)):
            distance = np.linalg.norm(features[i] - features[j])
            (same if labels[i] == labels[j] else other).append(distance)
    assert np.mean(same) < np.mean(other)


def test_truncated_jpeg_is_listed_and_its_row_absent(backbone, paths, tmp_path):
    bad = truncated_jpeg(tmp_path / "data" / "circle" / "broken (9).jpg")
    all_paths = paths[:4] + [bad] + paths[4:]
    result = extract_features(backbone, all_paths, settings(), progress=False)
    assert len(result.failures) == 1
    failed_path, reason = result.failures[0]
    assert failed_path == bad
    assert reason.strip()
    assert 4 not in result.ok_indices
    assert result.ok_indices == [i for i in range(len(all_paths)) if i != 4]
    assert result.features.shape[0] == len(all_paths) - 1
    clean = extract_features(backbone, paths, settings(), progress=False)
    np.testing.assert_allclose(result.features, clean.features, rtol=1e-5, atol=1e-6)


def test_missing_file_is_listed(backbone, paths, tmp_path):
    missing = tmp_path / "gone.jpg"
    result = extract_features(backbone, [missing] + paths, settings(), progress=False)
    assert [p for p, _ in result.failures] == [missing]
    assert result.failures[0][1]
    assert result.ok_indices == list(range(1, len(paths) + 1))


def test_byte_identical_files_are_extracted_once(backbone, paths, tmp_path):
    copies = []
    for i, source in enumerate(paths[:3]):
        copy = tmp_path / "copies" / f"copy ({i}){source.suffix}"
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(source, copy)
        copies.append(copy)
    all_paths = paths + copies
    result = extract_features(backbone, all_paths, settings(), cache_root=tmp_path / "cache", progress=False)
    assert result.n_extracted == len(paths)
    assert result.features.shape[0] == len(all_paths)
    for i in range(3):
        assert np.array_equal(result.features[i], result.features[len(paths) + i])


def test_cache_second_call_extracts_nothing(backbone, paths, tmp_path):
    bad = truncated_jpeg(tmp_path / "data" / "square" / "broken.jpg")
    all_paths = paths + [bad]
    cache_root = tmp_path / "cache"
    first = extract_features(backbone, all_paths, settings(), cache_root=cache_root, progress=False)
    assert first.n_extracted == len(all_paths)
    assert first.cache_dir is not None and first.cache_dir.is_dir()
    assert list(first.cache_dir.glob("shard-*.npz"))

    second = extract_features(backbone, all_paths, settings(), cache_root=cache_root, progress=False)
    assert second.n_extracted == 0
    assert second.n_cached == len(all_paths)
    assert second.cache_dir == first.cache_dir
    assert np.array_equal(second.features, first.features)
    assert second.ok_indices == first.ok_indices
    assert second.failures == first.failures  # the failure is cached too
    assert second.images_per_second == 0.0


def test_cache_hits_for_renamed_files(backbone, paths, tmp_path):
    cache_root = tmp_path / "cache"
    first = extract_features(backbone, paths, settings(), cache_root=cache_root, progress=False)
    renamed = []
    for i, source in enumerate(paths):
        target = tmp_path / "renamed" / f"r{i}{source.suffix}"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(source, target)
        renamed.append(target)
    second = extract_features(backbone, renamed[::-1], settings(), cache_root=cache_root, progress=False)
    assert second.n_extracted == 0
    assert np.array_equal(second.features, first.features[::-1])


def test_cache_only_extracts_new_images(backbone, paths, tmp_path):
    cache_root = tmp_path / "cache"
    extract_features(backbone, paths[:5], settings(), cache_root=cache_root, progress=False)
    result = extract_features(backbone, paths, settings(), cache_root=cache_root, progress=False)
    assert result.n_extracted == len(paths) - 5
    assert result.n_cached == 5
    assert result.features.shape[0] == len(paths)


@pytest.mark.parametrize(
    "change", [{"resolution": 80}, {"layers": ("head",)}, {"pool": "max"}, {"precision": "bf16"}]
)
def test_changed_settings_miss_the_cache(backbone, paths, tmp_path, change):
    cache_root = tmp_path / "cache"
    first = extract_features(backbone, paths, settings(), cache_root=cache_root, progress=False)
    other = extract_features(backbone, paths, settings(**change), cache_root=cache_root, progress=False)
    assert other.n_extracted == len(paths)
    assert other.cache_dir != first.cache_dir


def test_other_weights_miss_the_cache(backbone, paths, tmp_path):
    cache_root = tmp_path / "cache"
    first = extract_features(backbone, paths, settings(), cache_root=cache_root, progress=False)
    changed = create_backbone("test_resnet")
    with torch.no_grad():
        next(iter(changed.model.parameters())).mul_(1.01)
    second = extract_features(changed, paths, settings(), cache_root=cache_root, progress=False)
    assert second.n_extracted == len(paths)
    assert second.cache_dir != first.cache_dir


def test_batch_size_does_not_change_features(backbone, paths):
    one = extract_features(backbone, paths, settings(batch_size=1), progress=False).features
    many = extract_features(backbone, paths, settings(batch_size=64), progress=False).features
    np.testing.assert_allclose(one, many, rtol=1e-4, atol=1e-5)


def test_worker_process_gives_same_features(backbone, paths):
    inline = extract_features(backbone, paths, settings(workers=0), progress=False).features
    worker = extract_features(backbone, paths, settings(workers=1), progress=False).features
    np.testing.assert_allclose(inline, worker, rtol=1e-5, atol=1e-6)


def test_partially_written_shard_is_tolerated(backbone, paths, tmp_path):
    cache_root = tmp_path / "cache"
    first = extract_features(backbone, paths, settings(), cache_root=cache_root, progress=False)
    shards = list(first.cache_dir.glob("shard-*.npz"))
    assert shards
    for shard in shards:
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 2])
    second = extract_features(backbone, paths, settings(), cache_root=cache_root, progress=False)
    assert second.n_extracted == len(paths)
    np.testing.assert_allclose(second.features, first.features, rtol=1e-5, atol=1e-6)


def test_shard_with_missing_arrays_is_tolerated(backbone, paths, tmp_path):
    """A shard that is a valid .npz but lacks the expected arrays only costs re-extraction."""
    cache_root = tmp_path / "cache"
    first = extract_features(backbone, paths, settings(), cache_root=cache_root, progress=False)
    for shard in first.cache_dir.glob("shard-*.npz"):
        np.savez(shard, something=np.zeros(3))
    second = extract_features(backbone, paths, settings(), cache_root=cache_root, progress=False)
    assert second.n_extracted == len(paths)
    np.testing.assert_allclose(second.features, first.features, rtol=1e-5, atol=1e-6)


def test_leftover_temporary_file_is_ignored(backbone, paths, tmp_path):
    cache_root = tmp_path / "cache"
    first = extract_features(backbone, paths, settings(), cache_root=cache_root, progress=False)
    (first.cache_dir / ".shard-123-abc.npz.x1y2.tmp").write_bytes(b"PK\x03\x04 half a zip")
    second = extract_features(backbone, paths, settings(), cache_root=cache_root, progress=False)
    assert second.n_extracted == 0
    assert np.array_equal(second.features, first.features)


def test_bf16_close_to_fp32(backbone, paths):
    fp32 = extract_features(backbone, paths, settings(precision="fp32"), progress=False).features
    bf16 = extract_features(backbone, paths, settings(precision="bf16"), progress=False).features
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    assert not np.array_equal(bf16, fp32)  # really ran in reduced precision
    assert cosine_rows(fp32, bf16).min() > 0.99


def test_default_cache_root_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "here"))
    assert default_cache_root() == tmp_path / "here"
    monkeypatch.delenv("TRANSFERLAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "transferlab"


def test_cache_key_depends_on_every_field(tmp_path):
    base = {"backbone": "b", "weights": "w", "resolution": 64}
    key = FeatureCache(tmp_path, base).key
    assert FeatureCache(tmp_path, dict(base)).key == key
    for field, value in [("backbone", "c"), ("weights", "x"), ("resolution", 65)]:
        assert FeatureCache(tmp_path, {**base, field: value}).key != key
