"""Test-time augmentation for every run kind: the views, the predictors (probe and fine-tuned),
export with the views in its graph, serving's check that an export holds what it is asked for,
and cards of before modes (tta: true/false)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import make_image_folder
from transferlab.card import ModelCard
from transferlab.data.transforms import preprocess
from transferlab.data.tta import TTA_VIEWS, tta_views
from transferlab.errors import TransferlabError
from transferlab.finetune.recipe import load_recipe
from transferlab.inference.export import export_run
from transferlab.inference.predict import load_predictor
from transferlab.options import TTA_MODES, tta_mode
from transferlab.pipelines.finetune import FinetuneConfig, run_finetune
from transferlab.pipelines.probe import ProbeConfig, run_probe
from transferlab.serve.engines import load_engine

N_VIEWS = {"none": 1, "flip": 2, "crops": 5, "flip-crops": 10}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("tta") / "data", per_class=6, size=40)


@pytest.fixture(scope="module")
def probe_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tta-probe") / "run"
    run_probe(ProbeConfig(data=str(data), out=str(out), backbone="test_resnet", weights="random",
                          layers=["stage-2", "head"], workers=0, progress=False, embed="", error_grid=0,
                          precision="fp32", resolution=48))
    return out


@pytest.fixture(scope="module")
def ft_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tta-ft") / "run"
    recipe = load_recipe(None, {"backbone": "test_efficientnet", "resolution": 48, "precision": "fp32",
                                "batch_size": 8, "tta": "crops", "stages": [{"train": "all", "epochs": 1}]})
    run_finetune(FinetuneConfig(data=str(data), out=str(out), recipe=recipe, workers=0, progress=False, embed="",
                                error_grid=0))
    return out


def _images(data: Path, n: int = 4) -> torch.Tensor:
    paths = sorted(data.rglob("*.jpg"))[:n]
    return torch.stack([preprocess(p, 48, "bicubic") for p in paths])


def test_the_views_keep_the_size_and_are_what_they_say():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    assert tuple(TTA_VIEWS) == TTA_MODES
    for mode, count in N_VIEWS.items():
        views = tta_views(mode, x)
        assert len(views) == count and all(v.shape == x.shape for v in views)
    assert torch.equal(tta_views("flip", x)[1], x.flip(-1)) and torch.equal(tta_views("crops", x)[0], x)
    corner = tta_views("crops", x)[1]  # the top-left crop of 14 px, enlarged: its corner pixel is x's
    assert corner[0, 0, 0, 0] == x[0, 0, 0, 0] and not torch.equal(corner, x)


@pytest.mark.parametrize("value, mode", [(True, "flip"), (False, "none"), (None, "none"), ("crops", "crops")])
def test_modes_accept_the_older_booleans(value, mode):
    assert tta_mode(value) == mode


@pytest.mark.parametrize("value", ["yes", "five-crop", 3, ["flip"]])
def test_unknown_modes_are_one_line(value):
    with pytest.raises(TransferlabError, match="must be true, false or one of none, flip, crops, flip-crops"):
        tta_mode(value, "--tta")


def test_a_probe_averages_its_classifier_over_the_views(probe_run, data):
    images = _images(data)
    plain, flipped = load_predictor(probe_run), load_predictor(probe_run, tta="flip")
    assert plain.tta == "none" and flipped.tta == "flip"
    expected = (plain.predict_tensor(images) + plain.predict_tensor(images.flip(-1))) / 2
    got = flipped.predict_tensor(images)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, plain.predict_tensor(images), atol=1e-6)  # the views changed something
    ten = load_predictor(probe_run, tta="flip-crops").predict_tensor(images)
    np.testing.assert_allclose(ten.sum(axis=1), 1.0, atol=1e-5)


def test_a_finetuned_run_keeps_its_recipe_mode_and_can_be_asked_for_another(ft_run, data):
    card = json.loads((ft_run / "model" / "model.json").read_text())
    assert card["tta"] == "crops" and card["version"] == 3
    images = _images(data)
    own, plain = load_predictor(ft_run), load_predictor(ft_run, tta="none")
    assert own.tta == "crops" and plain.tta == "none"
    assert not np.allclose(own.predict_tensor(images), plain.predict_tensor(images), atol=1e-6)


@pytest.mark.parametrize("mode", ["flip", "crops"])
def test_export_holds_the_views_and_serving_checks_it(probe_run, data, mode):
    export_run(probe_run, "onnx", tta=mode)
    record = json.loads((probe_run / "model" / "export.json").read_text())["onnx"]
    assert record["tta"] == mode and record["max_abs_diff"] <= 1e-4
    batch = _images(data).numpy()
    onnx = load_engine(probe_run, "onnx", tta=mode)
    reference = load_predictor(probe_run, tta=mode).predict_tensor(torch.from_numpy(batch))
    np.testing.assert_allclose(onnx.predict_uint8(batch), reference, atol=1e-4)
    other = "none" if mode != "none" else "flip"
    with pytest.raises(TransferlabError, match=f"exported with test-time augmentation '{mode}', not '{other}'"):
        load_engine(probe_run, "onnx", tta=other)


def test_a_version_2_card_with_a_boolean_tta_still_loads():
    card = ModelCard.from_dict({"kind": "finetune", "classes": ["a", "b"], "backbone": "test_resnet",
                                "resolution": 64, "mean": [0.5] * 3, "std": [0.5] * 3, "tta": True,
                                "version": 2}, "model.json")
    assert card.tta == "flip"
    with pytest.raises(TransferlabError, match="'tta'"):
        ModelCard.from_dict({"kind": "probe", "classes": ["a", "b"], "backbone": "x", "resolution": 64,
                             "mean": [0.5] * 3, "std": [0.5] * 3, "layers": ["head"], "tta": "maybe"}, "m.json")
