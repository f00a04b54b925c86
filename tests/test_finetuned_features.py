"""Features from fine-tuned networks (`probe --from-run`, `--weights network.safetensors|best.ckpt`),
`embed` on fine-tuned runs, the 3-D view, and attacks on the fine-tuned weights loader."""

from __future__ import annotations

import importlib.util
import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import make_image_folder
from transferlab.backbones import create_backbone
from transferlab.backbones.finetuned import size_limit
from transferlab.backbones.from_run import finetuned_backbone
from transferlab.errors import TransferlabError
from transferlab.features.cache import FeatureCache
from transferlab.features.extract import ExtractionSettings, FeatureExtractor, extract_features
from transferlab.finetune.recipe import load_recipe
from transferlab.inference.predict import load_predictor
from transferlab.insight.embed import EmbedSettings, embed_run
from transferlab.pipelines.finetune import FinetuneConfig, run_finetune
from transferlab.pipelines.probe import ProbeConfig, run_probe

ARCH = "test_efficientnet"
# One short stage that trains every group, so the backbone's weights move away from the
# random start (a head-only stage would leave them, and the features, as they were).
RECIPE = {"backbone": ARCH, "resolution": 48, "precision": "fp32", "batch_size": 8,
          "stages": [{"train": "all", "epochs": 1, "lr": 0.05}]}
LAYERS = ["stage-2", "head"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("ftf") / "data", per_class=6, size=40)


@pytest.fixture(scope="module")
def ft_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ftf-run") / "run"
    run_finetune(FinetuneConfig(data=str(data), out=str(out), recipe=load_recipe(None, dict(RECIPE)), workers=0,
                                progress=False, embed="", error_grid=0))
    return out


def _probe(data: Path, out: Path, **overrides):
    config = {"data": str(data), "out": str(out), "layers": list(LAYERS), "workers": 0, "progress": False,
              "embed": "", "error_grid": 0, "precision": "fp32", **overrides}
    return run_probe(ProbeConfig(**config))


def _one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# --- probe --from-run ------------------------------------------------------------------------


@pytest.mark.parametrize("classifier", ["random_forest", "linear_svm"])
def test_probe_from_run_reads_the_finetuned_backbone(ft_run, data, tmp_path, classifier):
    result = _probe(data, tmp_path / "probe", from_run=str(ft_run), classifier=classifier)
    card = json.loads((result.run_dir / "model" / "model.json").read_text())
    finetuned = finetuned_backbone(ft_run).backbone
    pretrained = create_backbone(ARCH, "random")  # a registry entry with random weights: nothing downloaded
    assert card["weights_id"] == finetuned.weights_id != pretrained.weights_id
    assert card["weights_source"] == f"finetuned run {ft_run}"
    assert card["layers"] == LAYERS and card["resolution"] == 48  # the fine-tuned run's resolution
    assert str(ft_run) in result.summary["backbone"] and "fine-tuned" in result.summary["backbone"]
    assert "fine-tuned run's resolution" in result.summary["resolution"]
    assert str(ft_run) in (result.run_dir / "report.html").read_text(encoding="utf-8")
    assert f"from_run: {ft_run}" in (result.run_dir / "config.yaml").read_text()
    assert not any("optimistic" in w for w in result.warnings)  # same data, seed, val_fraction: same split
    assert 0.0 <= result.metrics["val"]["accuracy"] <= 1.0
    # The probe run predicts with the fine-tuned backbone it saved (classifier zeroed, state dict whole).
    image = next(data.glob("circle/*.png"))
    assert load_predictor(result.run_dir).predict_paths([image])[0].error is None


def test_finetuned_features_and_cache_key_differ_from_pretrained(ft_run, data):
    finetuned = finetuned_backbone(ft_run).backbone
    pretrained = create_backbone(ARCH, "random")  # a registry entry with random weights: nothing downloaded
    settings = ExtractionSettings(resolution=48, layers=tuple(LAYERS), workers=0)
    paths = sorted(data.glob("*/*"))[:6]
    ours = extract_features(finetuned, paths, settings, progress=False).features
    theirs = extract_features(pretrained, paths, settings, progress=False).features
    assert ours.shape == theirs.shape and not np.allclose(ours, theirs, atol=1e-4)
    key_ft = FeatureExtractor(finetuned, settings).cache_key()
    key_pre = FeatureExtractor(pretrained, settings).cache_key()
    assert key_ft["weights"] != key_pre["weights"]
    assert FeatureCache("/c", key_ft).directory != FeatureCache("/c", key_pre).directory


def test_from_run_caches_its_features_under_its_own_key(ft_run, data, tmp_path):
    cache = tmp_path / "cache"
    _probe(data, tmp_path / "pre", cache_dir=str(cache), resolution=48)
    first = _probe(data, tmp_path / "ft1", cache_dir=str(cache), from_run=str(ft_run))
    second = _probe(data, tmp_path / "ft2", cache_dir=str(cache), from_run=str(ft_run))
    keys = [json.loads(p.read_text())["weights"] for p in (cache / "features").glob("*/key.json")]
    assert len(keys) == 2 and len(set(keys)) == 2  # the pretrained and the fine-tuned weights
    n_images = len(list(data.glob("*/*")))
    assert first.summary["features"].startswith(f"{n_images} extracted")  # nothing from the pretrained key
    assert second.summary["features"].startswith("0 extracted")


def test_probe_from_run_notes_a_split_that_leaks(ft_run, data, tmp_path):
    result = _probe(data, tmp_path / "probe", from_run=str(ft_run), seed=3)
    assert any("training set" in w and "optimistic" in w for w in result.warnings)


def test_from_run_option_conflicts_are_refused_before_work(ft_run, data, tmp_path):
    with pytest.raises(TransferlabError, match="--from-run or --weights"):
        _probe(data, tmp_path / "a", from_run=str(ft_run), weights=str(ft_run / "model" / "network.safetensors"))
    with pytest.raises(TransferlabError, match="not --backbone test_resnet"):
        _probe(data, tmp_path / "b", from_run=str(ft_run), backbone="test_resnet")
    with pytest.raises(TransferlabError, match="fine-tuned run not found"):
        _probe(data, tmp_path / "c", from_run=str(tmp_path / "nowhere"))
    assert not any((tmp_path / name).exists() for name in "abc")


@pytest.mark.parametrize("file", ["model/network.safetensors", "checkpoints/stage1/best.ckpt"])
def test_weights_option_accepts_a_finetuned_network(ft_run, file):
    loaded = create_backbone(ARCH, weights=ft_run / file)
    assert loaded.source == "finetuned" and not loaded.has_imagenet_head
    assert loaded.weights_id == finetuned_backbone(ft_run).backbone.weights_id


def test_weights_option_points_a_run_folder_to_from_run(ft_run):
    with pytest.raises(TransferlabError, match="use --from-run") as info:
        create_backbone(ARCH, weights=ft_run)
    _one_line(info)


# --- embed -----------------------------------------------------------------------------------


def test_embed_finetuned_run_with_3d_view(ft_run, data):
    settings = EmbedSettings(methods=("pca",), n_outliers=0, workers=0, progress=False, three_d=True)
    result = embed_run(ft_run, settings)
    assert any("penultimate" in n for n in result.notes)
    assert len(result.indices) == len(list(data.glob("*/*"))) and (ft_run / "plots" / "embed_pca.png").is_file()
    page = ft_run / "plots" / "embed_3d.html"
    assert result.html == [page] and str(page) in json.loads((ft_run / "plots" / "embed.json").read_text())["html"]
    html = page.read_text(encoding="utf-8")
    assert "Plotly.newPlot" in html and "scatter3d" in html
    assert len(html) > 1_000_000  # plotly.js inlined, so the page works with no network
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.IGNORECASE)  # nothing fetched from anywhere
    assert "dome(inner)" in html  # the class names label the traces
    again = embed_run(ft_run, EmbedSettings(methods=("pca",), n_outliers=0, workers=0, progress=False))
    assert not any(n.startswith("features:") for n in again.notes)  # penultimate features came from the cache


def test_3d_without_plotly_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "plotly" else real(name, *a))
    with pytest.raises(TransferlabError, match=r"transferlab\[3d\]") as info:
        EmbedSettings(three_d=True)
    _one_line(info)
    assert EmbedSettings(three_d=False).three_d is False


# --- attacks on the loader -------------------------------------------------------------------


@pytest.fixture
def run_copy(ft_run, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(ft_run, copy, ignore=shutil.ignore_patterns("logs", "plots"))
    return copy


def _tamper_network(run: Path, change) -> Path:
    file = run / "model" / "network.safetensors"
    state = load_file(str(file))
    change(state)
    save_file(state, str(file))
    return file


def _first_conv(state: dict) -> str:
    return next(k for k, v in state.items() if k.startswith("backbone.") and v.ndim == 4)


def _edit_card(run: Path, **fields) -> None:
    file = run / "model" / "model.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **fields}))


ATTACKS = {
    "wrong shape": (lambda s: s.__setitem__(_first_conv(s), torch.zeros(3, 3, 3, 3)), "expects"),
    "extra key": (lambda s: s.__setitem__("evil.weight", torch.zeros(1)), "neither the backbone's nor the head's"),
    "foreign backbone key": (lambda s: s.__setitem__("backbone.blocks.99.weight", torch.zeros(1)), "not part of"),
    "missing key": (lambda s: s.pop(_first_conv(s)), "no tensor for"),
    "integer weights": (lambda s: s.__setitem__(_first_conv(s), s[_first_conv(s)].to(torch.int32)), "is int"),
    "head flood": (lambda s: s.update({f"head.x{i}": torch.zeros(1) for i in range(600)}), "head tensors"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_tampered_network_is_one_line_naming_the_file(run_copy, attack):
    change, expected = ATTACKS[attack]
    file = _tamper_network(run_copy, change)
    with pytest.raises(TransferlabError, match=expected) as info:
        finetuned_backbone(run_copy)
    assert str(file) in _one_line(info)


@pytest.mark.parametrize(("fields", "expected"), [
    ({"backbone": "test_resnet"}, "not part of test_resnet"),
    ({"backbone": "no_such_net"}, "unknown backbone 'no_such_net'"),
    ({"kind": "probe", "layers": ["head"]}, "a 'probe' run, not a fine-tuned one"),
    ({"mean": [0.5, 0.5, 0.5]}, "is not test_efficientnet's own"),
    ({"backbone": ["not", "a", "name"]}, "field 'backbone' must be a string"),
])
def test_tampered_card_is_one_line(run_copy, fields, expected):
    _edit_card(run_copy, **fields)
    with pytest.raises(TransferlabError, match=expected) as info:
        finetuned_backbone(run_copy)
    _one_line(info)


def test_unfinished_or_foreign_runs_are_refused(run_copy, tmp_path, data):
    status = run_copy / "run.json"
    status.write_text(json.dumps({**json.loads(status.read_text()), "status": "running"}))
    with pytest.raises(TransferlabError, match="not complete"):
        finetuned_backbone(run_copy)
    probe = _probe(data, tmp_path / "probe", classifier="logreg", resolution=48).run_dir
    with pytest.raises(TransferlabError, match="not a fine-tuned one"):
        finetuned_backbone(probe)
    with pytest.raises(TransferlabError, match="no run.json"):
        finetuned_backbone(data)


def test_garbage_and_oversized_network_files(run_copy):
    file = run_copy / "model" / "network.safetensors"
    file.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(TransferlabError, match="cannot read weights") as info:
        finetuned_backbone(run_copy)
    assert str(file) in _one_line(info)
    limit = size_limit(create_backbone(ARCH, "random").model)
    with open(file, "wb") as handle:  # sparse: no disk is used for the hole
        handle.truncate(limit + 1)
    with pytest.raises(TransferlabError, match="MiB at most") as info:
        finetuned_backbone(run_copy)
    assert str(file) in _one_line(info)


def _mark(path: str) -> None:
    Path(path).write_text("code from a pickle ran")


class Payload:
    """Unpickling this calls `_mark`: what a hostile best.ckpt would do with a full unpickler."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_mark, (self.marker,))


def test_pickle_checkpoint_executes_nothing(run_copy, tmp_path):
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(Payload(proof)))  # the payload is live: a plain unpickler runs it
    assert proof.exists()
    marker = tmp_path / "marker"
    checkpoint = run_copy / "checkpoints" / "stage1" / "best.ckpt"
    state = {"net." + k: v for k, v in load_file(str(run_copy / "model" / "network.safetensors")).items()}
    torch.save({"state_dict": state, "hyper_parameters": Payload(marker)}, checkpoint)
    with pytest.raises(TransferlabError, match="cannot read weights") as info:
        create_backbone(ARCH, weights=checkpoint)
    assert str(checkpoint) in _one_line(info)
    # --from-run reads network.safetensors only: the hostile checkpoint is never opened.
    assert finetuned_backbone(run_copy).backbone.source == "finetuned"
    assert not marker.exists()


def test_checkpoint_with_foreign_tensor_names_is_refused(run_copy):
    checkpoint = run_copy / "checkpoints" / "stage1" / "best.ckpt"
    state = load_file(str(run_copy / "model" / "network.safetensors"))
    torch.save({"state_dict": {"net." + k: v for k, v in state.items()} | {"net.optimizer_hack": torch.zeros(1)}},
               checkpoint)
    with pytest.raises(TransferlabError, match="neither the backbone's nor the head's") as info:
        create_backbone(ARCH, weights=checkpoint)
    assert str(checkpoint) in _one_line(info)
