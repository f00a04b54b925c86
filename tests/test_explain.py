"""Class-activation maps and error analysis on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.backbones import create_backbone
from transferlab.errors import TransferlabError
from transferlab.explain.cam import CAM_BATCH, CAM_METHODS, MIN_DISPLAY_SIZE, target_layer
from transferlab.explain.run import RunExplainer
from transferlab.pipelines.probe import ProbeConfig, run_probe
from transferlab.report.errors import (
    cluster_order,
    most_confused_pairs,
    reorder,
    top_loss_indices,
)


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    from tests.conftest import make_image_folder

    root = tmp_path_factory.mktemp("explain")
    data = make_image_folder(root / "data", per_class=6)
    run_probe(ProbeConfig(data=str(data), out=str(root / "run"), backbone="test_efficientnet", resolution=64,
                          workers=0, progress=False, precision="fp32", cache_dir=""))
    return root / "run", data


@pytest.mark.parametrize("method", sorted(CAM_METHODS))
def test_cam_has_the_input_size_and_values_in_range(probe_run, method):
    run, data = probe_run
    explainer = RunExplainer(run)
    images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    results = explainer.explain(images, method)
    assert len(results) == 2
    for result in results:
        assert result.cam.shape == (64, 64)
        assert result.cam.min() >= 0.0 and result.cam.max() <= 1.0
        assert result.overlay.shape == (MIN_DISPLAY_SIZE, MIN_DISPLAY_SIZE, 3)
        assert 0 <= result.predicted < 3 and 0.0 < result.probability <= 1.0


def test_cams_of_a_batch_are_those_of_each_image_alone(probe_run):
    # CAMs run CAM_BATCH images per backward pass (memory); an odd batch larger than that must
    # give every image the map, prediction and probability it gets on its own.
    explainer = RunExplainer(probe_run[0])
    images = torch.randint(0, 255, (2 * CAM_BATCH + 1, 3, 64, 64), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    together = explainer.explain(images)
    alone = [explainer.explain(image.unsqueeze(0))[0] for image in images]
    assert len(together) == len(images)
    for batched, single in zip(together, alone):
        assert batched.predicted == single.predicted
        assert batched.probability == pytest.approx(single.probability, abs=1e-5)
        np.testing.assert_allclose(batched.cam, single.cam, atol=1e-4)


def test_explain_paths_writes_one_overlay_per_method(probe_run, tmp_path):
    run, data = probe_run
    image = next((data / "square").glob("*.png"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    results = RunExplainer(run).explain_paths([image, broken], tmp_path / "out")
    assert results[0].error is None and results[0].predicted in {"circle", "square", "dome(inner)"}
    assert set(results[0].overlays) == {"gradcam", "gradcam++"}
    assert len({p.name for p in results[0].overlays.values()}) == 2
    for png in results[0].overlays.values():
        assert Image.open(png).size == (MIN_DISPLAY_SIZE, MIN_DISPLAY_SIZE)
    assert results[1].error and "broken.jpg" in results[1].error


def test_probe_report_has_error_grid_and_confused_pairs(probe_run):
    run, _ = probe_run
    report = (run / "report.html").read_text()
    assert "Most confused class pairs" in report
    val = json.loads((run / "metrics.json").read_text())["val"]
    assert isinstance(val["confused_pairs"], list)
    wrong = sum(p["count"] for p in val["confused_pairs"])
    off_diagonal = sum(v for i, row in enumerate(val["confusion"]) for j, v in enumerate(row) if i != j)
    assert wrong == off_diagonal  # 3 classes: at most 6 pairs, all listed
    assert (run / "plots" / "errors_val.png").exists() == (off_diagonal > 0)


def test_target_layer_found_for_test_models():
    for name in ("test_resnet", "test_efficientnet"):
        model = create_backbone(name).model
        layer = target_layer(model)
        assert isinstance(layer, torch.nn.Module)
        assert any(layer is m for m in model.modules())


def test_non_linear_head_has_no_network(tmp_path):
    from tests.conftest import make_image_folder

    data = make_image_folder(tmp_path / "data", per_class=5)
    run_probe(ProbeConfig(data=str(data), out=str(tmp_path / "run"), backbone="test_resnet", resolution=64,
                          workers=0, progress=False, classifier="knn"))
    with pytest.raises(TransferlabError, match="logistic-regression"):
        RunExplainer(tmp_path / "run")
    confusion = json.loads((tmp_path / "run" / "metrics.json").read_text())["val"]["confusion"]
    wrong = sum(v for i, row in enumerate(confusion) for j, v in enumerate(row) if i != j)
    report = (tmp_path / "run" / "report.html").read_text()
    assert ("no CAM" in report) == (wrong > 0)


def test_most_confused_pairs_and_top_loss():
    confusion = [[5, 3, 0], [1, 4, 0], [0, 2, 6]]
    pairs = most_confused_pairs(confusion, ["a", "b", "c"], k=2)
    assert pairs[0] == {"true": "a", "predicted": "b", "count": 3, "share": 0.375}
    assert pairs[1]["true"] == "c" and pairs[1]["count"] == 2
    labels = np.array([0, 1, 2, 0])
    probabilities = np.array([[0.9, 0.1, 0], [0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.2, 0.8, 0.0]])
    assert top_loss_indices(labels, probabilities, 5) == [1, 3, 2]  # wrong ones, lowest p(true) first


def test_cluster_order_groups_confused_classes():
    # Classes 0 and 3 confuse each other, as do 1 and 2: the order must keep each pair adjacent.
    confusion = np.eye(4, dtype=int) * 10
    confusion[0, 3] = confusion[3, 0] = 5
    confusion[1, 2] = confusion[2, 1] = 5
    order = cluster_order(confusion.tolist())
    assert sorted(order) == [0, 1, 2, 3]
    assert abs(order.index(0) - order.index(3)) == 1 and abs(order.index(1) - order.index(2)) == 1
    counts, names = reorder(confusion.tolist(), list("abcd"), order)
    assert np.trace(np.asarray(counts)) == 40 and sorted(names) == list("abcd")
