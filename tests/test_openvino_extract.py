"""The OpenVINO extraction engine: the same features as torch, its own cache entries, a quiet fallback."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from tests.conftest import make_image_folder
from transferlab import openvino_rt
from transferlab.backbones import create_backbone
from transferlab.errors import TransferlabError
from transferlab.features.extract import (
    ExtractionSettings,
    FeatureExtractor,
    default_engine,
    extract_features,
    make_extractor,
)
from transferlab.features.openvino_extract import OpenVINOExtractor, export_onnx_bytes
from transferlab.insight.transferability import rank_backbones
from transferlab.pipelines.probe import ProbeConfig, run_probe
from transferlab.safe_yaml import read_yaml_file

needs_openvino = pytest.mark.skipif(not openvino_rt.available(), reason="OpenVINO is not installed")
RES = 64


def settings(engine: str, precision: str = "fp32") -> ExtractionSettings:
    return ExtractionSettings(resolution=RES, precision=precision, engine=engine, workers=0)


def uint8_batch(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, RES, RES), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@needs_openvino
@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet"])
def test_openvino_fp32_features_equal_torch_fp32(name):
    backbone = create_backbone(name, "random")
    torch_extractor = make_extractor(backbone, settings("torch"))
    ov = make_extractor(backbone, settings("openvino"))
    assert isinstance(ov, OpenVINOExtractor) and ov.settings.engine == "openvino"
    # Batch sizes other than the exporter's example: the batch axis is dynamic.
    for n in (3, 1):
        images = uint8_batch(n, seed=n)
        expected, got = torch_extractor(images), ov(images)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    # Normalised views (test-time augmentation's path) in channels-last, as FeatureExtractor makes them.
    views = torch_extractor.normalise(uint8_batch(2, seed=7))
    np.testing.assert_allclose(ov.from_normalised(views), torch_extractor.from_normalised(views),
                               rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    assert (ov.name, ov.interpolation) == (torch_extractor.name, torch_extractor.interpolation)


@needs_openvino
def test_cache_keys_differ_by_engine_and_torch_keys_are_unchanged(tmp_path):
    backbone = create_backbone("test_resnet", "random")
    torch_key = make_extractor(backbone, settings("torch")).cache_key()
    # Caches written before engines existed keep their key: no engine entry for torch.
    assert "engine" not in torch_key
    assert torch_key == FeatureExtractor(backbone, settings("openvino")).cache_key()
    ov_key = make_extractor(backbone, settings("openvino")).cache_key()
    assert ov_key["engine"] == "openvino" and ov_key["precision"] == "fp32"
    assert {k: v for k, v in ov_key.items() if k != "engine"} == torch_key

    data = make_image_folder(tmp_path / "data", per_class=2)
    paths = sorted(data.rglob("*.*"))
    cache = tmp_path / "cache"
    first = extract_features(backbone, paths, settings("torch"), cache, progress=False)
    second = extract_features(backbone, paths, settings("openvino"), cache, progress=False)
    again = extract_features(backbone, paths, settings("openvino"), cache, progress=False)
    # OpenVINO's features are its own: nothing read from torch's entry, everything from its own next time.
    assert (first.n_extracted, second.n_extracted, again.n_cached) == (len(paths), len(paths), len(paths))
    assert second.cache_dir != first.cache_dir and again.cache_dir == second.cache_dir
    np.testing.assert_allclose(second.features, first.features, rtol=1e-4, atol=1e-5 * np.abs(first.features).max())


@needs_openvino
def test_bf16_key_names_the_precision_openvino_ran():
    ov = make_extractor(create_backbone("test_resnet", "random"), settings("openvino", "bf16"))
    # bf16 where the CPU has it, else OpenVINO runs f32 and says so: the key follows what ran.
    assert ov.cache_key()["precision"] == ov.settings.precision
    assert ov.settings.precision in ("bf16", "fp32")


@needs_openvino
def test_the_precision_told_without_compiling_is_the_one_compiled():
    network = FeatureExtractor(create_backbone("test_resnet", "random"), settings("torch")).network
    data = export_onnx_bytes(network, RES, "test_resnet")
    for precision in ("fp32", "bf16"):
        assert openvino_rt.precision_on_this_cpu(precision) == openvino_rt.compile_onnx(data, precision).precision


@needs_openvino
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_fully_cached_extraction_compiles_no_graph(tmp_path, monkeypatch, precision):
    backbone = create_backbone("test_resnet", "random")
    paths = sorted(make_image_folder(tmp_path / "data", per_class=2).rglob("*.*"))
    cache = tmp_path / "cache"
    cold = extract_features(backbone, paths[:-1], settings("openvino", precision), cache, progress=False)
    compiled = []
    real = openvino_rt.compile_onnx
    monkeypatch.setattr(openvino_rt, "compile_onnx", lambda *a, **k: compiled.append(1) or real(*a, **k))
    warm = extract_features(backbone, paths[:-1], settings("auto", precision), cache, progress=False)
    assert compiled == [] and (warm.n_cached, warm.n_extracted) == (len(paths) - 1, 0)
    assert warm.settings == cold.settings and warm.cache_dir == cold.cache_dir
    np.testing.assert_array_equal(warm.features, cold.features)
    # One image missing: the graph is built and only that image extracted, into the same entry.
    more = extract_features(backbone, paths, settings("openvino", precision), cache, progress=False)
    assert compiled == [1] and (more.n_cached, more.n_extracted) == (len(paths) - 1, 1)
    assert more.cache_dir == cold.cache_dir and more.settings == cold.settings


@needs_openvino
def test_a_failed_compile_still_extracts_in_torch_under_torch_s_name(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported operation")

    monkeypatch.setattr(openvino_rt, "compile_onnx", refuse)
    backbone = create_backbone("test_resnet", "random")
    paths = sorted(make_image_folder(tmp_path / "data", per_class=2).rglob("*.*"))
    got = extract_features(backbone, paths, settings("auto"), tmp_path / "cache", progress=False)
    expected = extract_features(backbone, paths, settings("torch"), tmp_path / "cache", progress=False)
    assert got.settings.engine == "torch" and got.n_extracted == len(paths)
    assert expected.n_cached == len(paths) and expected.cache_dir == got.cache_dir


def test_auto_falls_back_to_torch_with_one_log_line(monkeypatch, caplog):
    monkeypatch.setattr(openvino_rt, "available", lambda: False)
    backbone = create_backbone("test_resnet", "random")
    with caplog.at_level(logging.WARNING, logger="transferlab.features"):
        extractor = make_extractor(backbone, settings("auto"))
    assert type(extractor) is FeatureExtractor and extractor.settings.engine == "torch"
    assert "engine" not in extractor.cache_key()
    messages = [r.getMessage() for r in caplog.records if r.name == "transferlab.features"]
    assert len(messages) == 1 and "torch" in messages[0] and "not installed" in messages[0]
    assert "\n" not in messages[0]
    # Asked for by name, a missing OpenVINO is an error, not a silent change of engine.
    with pytest.raises(TransferlabError, match="OpenVINO is not installed"):
        make_extractor(backbone, settings("openvino"))


def test_auto_falls_back_when_the_compile_fails(monkeypatch, caplog):
    monkeypatch.setattr(openvino_rt, "available", lambda: True)

    def refuse(*args, **kwargs):
        raise RuntimeError("Exception from src/inference/src/core.cpp:\nunsupported operation")

    monkeypatch.setattr(openvino_rt, "compile_onnx", refuse)
    with caplog.at_level(logging.WARNING, logger="transferlab.features"):
        extractor = make_extractor(create_backbone("test_resnet", "random"), settings("auto"))
    assert extractor.settings.engine == "torch"
    assert [r.getMessage() for r in caplog.records] == [
        "feature extraction runs in torch, not OpenVINO: Exception from src/inference/src/core.cpp:"]


def test_default_engine_is_auto_unless_the_environment_names_one(monkeypatch):
    monkeypatch.delenv("TRANSFERLAB_ENGINE", raising=False)
    assert default_engine() == "auto"
    monkeypatch.setenv("TRANSFERLAB_ENGINE", " torch ")
    assert default_engine() == "torch"
    monkeypatch.setenv("TRANSFERLAB_ENGINE", "cuda\nrm -rf")
    with pytest.raises(TransferlabError, match=r"^TRANSFERLAB_ENGINE='cuda\\nrm -rf' is not an engine: choose from"):
        default_engine()


def test_unknown_engine_is_one_line_before_any_work(tmp_path, image_folder):
    with pytest.raises(TransferlabError, match="unknown engine 'tensorrt': choose from torch, openvino, auto"):
        ExtractionSettings(resolution=RES, engine="tensorrt")
    with pytest.raises(TransferlabError, match="--engine must be one of torch, openvino, auto, got 'gpu'"):
        run_probe(ProbeConfig(data=str(image_folder), out=str(tmp_path / "run"), engine="gpu"))
    assert not (tmp_path / "run").exists()
    with pytest.raises(TransferlabError, match="engine must be one of"):
        rank_backbones(image_folder, ["test_resnet"], engine="onnx", cache_dir="", progress=False)


@needs_openvino
def test_probe_end_to_end_with_openvino_records_the_engine(tmp_path, image_folder):
    result = run_probe(ProbeConfig(data=str(image_folder), out=str(tmp_path / "run"), backbone="test_efficientnet",
                                   weights="random", resolution=RES, workers=0, progress=False, precision="fp32",
                                   engine="openvino", cache_dir="", error_grid=0, embed=""))
    assert result.summary["engine"] == "openvino" and "openvino" in result.summary["features"]
    config = read_yaml_file(tmp_path / "run" / "config.yaml")
    assert (config["engine"], config["precision"]) == ("openvino", "fp32")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["summary"]["engine"] == "openvino"
    assert 0.0 <= metrics["val"]["accuracy"] <= 1.0


def test_probe_records_torch_when_auto_falls_back(tmp_path, image_folder, monkeypatch):
    monkeypatch.setattr(openvino_rt, "available", lambda: False)
    monkeypatch.delenv("TRANSFERLAB_ENGINE", raising=False)  # the default, "auto"
    result = run_probe(ProbeConfig(data=str(image_folder), out=str(tmp_path / "run"), backbone="test_resnet",
                                   weights="random", resolution=RES, workers=0, progress=False, precision="fp32",
                                   cache_dir="", error_grid=0, embed=""))
    assert result.summary["engine"] == "torch"
    assert read_yaml_file(tmp_path / "run" / "config.yaml")["engine"] == "torch"


@needs_openvino
def test_rank_records_the_engine(image_folder):
    result = rank_backbones(image_folder, ["test_resnet"], resolution=RES, cache_dir="", progress=False,
                            precision="fp32", engine="openvino", workers=0, runs_root=image_folder / "none")
    assert [row.engine for row in result.rows] == ["openvino"]
    assert result.to_dict()["rows"][0]["engine"] == "openvino"


@needs_openvino
def test_openvino_engine_sends_no_telemetry(tmp_path):
    """The converter (openvino.tools.ovc) is what sends usage events and writes ~/intel: never loaded."""
    script = textwrap.dedent(f"""
        import sys, torch
        from transferlab.backbones import create_backbone
        from transferlab.features.extract import ExtractionSettings, make_extractor
        extractor = make_extractor(create_backbone("test_resnet", "random"),
                                   ExtractionSettings(resolution={RES}, engine="openvino", workers=0))
        assert extractor.settings.engine == "openvino", extractor.settings
        extractor(torch.zeros(1, 3, {RES}, {RES}, dtype=torch.uint8))
        loaded = sorted(m for m in sys.modules if m.startswith("openvino.tools"))
        print("LOADED", loaded)
        assert "openvino.tools.ovc" not in sys.modules, loaded
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "OPENVINO"))}
    env.update(HOME=str(tmp_path), HF_HUB_OFFLINE="1", TRANSFERLAB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LOADED" in proc.stdout
    assert not (tmp_path / "intel").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_study_and_search_specs_may_set_the_engine(tmp_path, image_folder):
    from transferlab.pipelines.settings import apply_to_probe, check_key

    check_key("probe", "engine")
    kwargs = apply_to_probe({"data": str(image_folder), "out": str(tmp_path / "run")}, {"engine": ["torch"]})
    # A spec's value is checked by the probe itself, in one line, before any image is read.
    with pytest.raises(TransferlabError, match=r"--engine must be one of torch, openvino, auto, got \['torch'\]"):
        run_probe(ProbeConfig(**kwargs))
    assert not (tmp_path / "run").exists()
