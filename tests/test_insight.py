"""Insight: transferability estimates, backbone ranking, feature-space maps, run comparison.

Tiny random-weight models on generated folders; synthetic features where the maths is
checked. UMAP compiles with numba for ~20 s on first use, so the real UMAP map only runs
with TRANSFERLAB_TEST_UMAP=1; its failure path is always tested.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import make_image_folder
from transferlab.backbones import create_backbone
from transferlab.errors import TransferlabError
from transferlab.features.extract import PooledFeatures
from transferlab.insight import embed as embed_module
from transferlab.insight import map_methods
from transferlab.insight.compare import CompareRow, Comparison, compare_runs
from transferlab.insight.embed import EmbedSettings, FolderEmbedSettings, embed, embed_data, embed_run
from transferlab.insight.transferability import (
    RankRow,
    _exact_p_value,
    correlate_with_accuracy,
    imagenet_probabilities,
    leep,
    logme,
    rank_backbones,
    task_similarity,
)
from transferlab.pipelines.probe import ProbeConfig, run_probe

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = {"resolution": 64, "workers": 0, "progress": False, "precision": "fp32"}


def clusters(n_per_class: int = 20, n_classes: int = 3, dims: int = 16, spread: float = 6.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    centres = rng.normal(size=(n_classes, dims)) * spread
    return centres[labels] + rng.normal(size=(len(labels), dims)), labels


# --------------------------------------------------------------------------- estimates


def test_logme_scores_separable_labels_above_shuffled_ones():
    features, labels = clusters(n_per_class=50, n_classes=4, dims=64, spread=3.0)
    shuffled = np.random.default_rng(1).permutation(labels)
    assert logme(features, labels) > logme(features, shuffled) + 1.0


def test_logme_matches_the_reference_implementation():
    # Value computed with the authors' LogME._fit_fixed_point (github.com/thuml/LogME) on the
    # same seeded data: both the Gram-matrix path (n > d) and the direct SVD path (n <= d).
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    features = rng.normal(size=(4, 64))[labels] * 3 + rng.normal(size=(200, 64))
    assert logme(features, labels) == pytest.approx(1.4679999631967, abs=1e-9)
    # 40 images, 64 dims: the SVD of the features themselves.
    assert logme(features[::5], labels[::5]) == pytest.approx(3.8267517066285, abs=1e-9)


def test_logme_rejects_mismatched_input():
    with pytest.raises(TransferlabError, match="LogME"):
        logme(np.zeros((5, 3)), np.zeros(4))


def test_leep_is_higher_for_informative_source_probabilities():
    labels = np.repeat(np.arange(3), 30)
    uniform = np.full((90, 10), 0.1)
    informative = np.full((90, 10), 0.02)
    informative[np.arange(90), labels * 3] = 0.82  # each target class has its own source label
    assert leep(informative, labels) > leep(uniform, labels)
    # Uniform source probabilities carry no information: LEEP is the log of the class prior.
    assert leep(uniform, labels) == pytest.approx(np.log(1 / 3))
    assert leep(informative, labels) <= 0.0


def test_task_similarity_on_a_hand_example():
    top1 = {"a": [409, 409, 409, 1], "b": [1, 1], "c": [409, 409, 2]}
    classes = list(top1)
    labels = np.array([i for i, c in enumerate(classes) for _ in top1[c]])
    probs = np.full((len(labels), 1000), 1e-4)
    probs[np.arange(len(labels)), [z for c in classes for z in top1[c]]] = 0.9
    result = task_similarity(probs, labels, classes)
    per = result["per_class"]
    assert per["a"]["imagenet_index"] == 409 and per["a"]["share"] == pytest.approx(0.75)
    assert "analog clock" in per["a"]["imagenet_label"]  # timm's bundled ImageNet names
    assert per["b"]["imagenet_index"] == 1 and per["b"]["share"] == 1.0
    assert per["c"]["share"] == pytest.approx(2 / 3)
    assert result["mean_share"] == pytest.approx((0.75 + 1.0 + 2 / 3) / 3)
    assert result["overall_share"] == pytest.approx(8 / 9)  # only the image predicted as 2 misses
    assert result["distinct_labels"] == 2
    assert sorted(next(iter(result["shared_labels"].values()))) == ["a", "c"]


def test_imagenet_probabilities_equal_the_models_own_softmax():
    backbone = create_backbone("test_efficientnet")
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        pooled = PooledFeatures(backbone, ("head",), "avg")(x).numpy()
        expected = torch.softmax(backbone.model(x), dim=1).double().numpy()
    probs = imagenet_probabilities(backbone, pooled)
    assert probs.shape == (3, 1000)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    backbone.model.reset_classifier(5)
    with pytest.raises(TransferlabError, match="no 1000-class ImageNet classifier"):
        imagenet_probabilities(backbone, pooled)


# --------------------------------------------------------------------------- probe runs shared by the tests below


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """Two folders (one class differs) and probe runs on them, all on one feature cache."""
    base = tmp_path_factory.mktemp("insight")
    cache = base / "cache"
    data_a = make_image_folder(base / "a", per_class=6)
    other = {"circle": ((220, 40, 40), "ellipse"), "square": ((40, 200, 60), "rectangle"),
             "ring": ((200, 200, 30), "ellipse")}
    data_b = make_image_folder(base / "b", per_class=6, classes=other)
    runs = {}
    for name, data, backbone in (("resnet_a", data_a, "test_resnet"), ("effnet_a", data_a, "test_efficientnet"),
                                 ("resnet_b", data_b, "test_resnet")):
        runs[name] = run_probe(ProbeConfig(data=str(data), out=str(base / "runs" / name), backbone=backbone,
                                           cache_dir=str(cache), **FAST)).run_dir
    return {"a": data_a, "b": data_b, "cache": cache, "runs": runs, "base": base}


def test_rank_backbones_two_rows_and_no_correlation_below_three(probed):
    result = rank_backbones(probed["a"], ["test_resnet", "test_efficientnet"], cache_dir=probed["cache"],
                            probe_runs=[probed["runs"]["resnet_a"], probed["runs"]["effnet_a"]], **FAST)
    assert [r.backbone for r in result.rows] == ["test_resnet", "test_efficientnet"]
    for row in result.rows:
        assert np.isfinite(row.logme) and row.leep is not None and row.leep <= 0
        assert row.images == 15  # 6 per class, 1 of them to validation
        assert row.features == "0 extracted, 15 from cache"  # the probe extracted the same features
        assert row.probe_accuracy is not None and row.probe_run is not None
    assert result.correlations["logme"]["spearman"] is None
    assert "needs probe accuracy for >= 3 backbones, have 2" in result.correlations["logme"]["reason"]
    assert "needs probe accuracy for >= 3 backbones" in result.table_text()


def test_ranking_fills_the_cache_the_probe_reads(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=5)
    cache = tmp_path / "cache"
    result = rank_backbones(data, ["test_resnet"], cache_dir=cache, runs_root=tmp_path / "no-runs", **FAST)
    assert result.rows[0].features == "12 extracted, 0 from cache"
    assert any("no probe runs" in n for n in result.notes)
    probe = run_probe(ProbeConfig(data=str(data), out=str(tmp_path / "run"), backbone="test_resnet",
                                  cache_dir=str(cache), **FAST))
    assert probe.summary["features"].startswith("3 extracted, 12 from cache")


def test_rank_finds_runs_on_the_same_folder_under_runs_root(probed):
    result = rank_backbones(probed["a"], ["test_resnet"], cache_dir=probed["cache"],
                            runs_root=probed["base"] / "runs", **FAST)
    # resnet_b is on another folder and must not be picked up.
    assert result.rows[0].probe_run == str(probed["runs"]["resnet_a"])


def test_correlation_with_three_backbones_uses_the_exact_p_value():
    def row(name: str, estimate: float, accuracy: float) -> RankRow:
        return RankRow(name, 64, "", 10, 8, logme=estimate, leep=-estimate, similarity=None, seconds=0.0,
                       extract_seconds=0.0, features="", probe_accuracy=accuracy)

    notes: list[str] = []
    result = correlate_with_accuracy([row("a", 0.1, 0.80), row("b", 0.3, 0.95), row("c", 0.2, 0.90)], notes)
    assert result["logme"]["spearman"] == pytest.approx(1.0)
    assert result["logme"]["p_value"] == pytest.approx(1 / 3)  # 2 of the 6 orderings are as extreme
    assert result["leep"]["spearman"] == pytest.approx(-1.0)
    assert result["task_similarity"]["spearman"] is None  # no ImageNet similarity in these rows
    assert any("sanity check" in n for n in notes)


def _p_value_by_hand(x, y) -> float:
    """The former hand-written test: every ordering of y, |rho| at least the observed one."""
    from scipy.stats import spearmanr

    rho = spearmanr(x, y).statistic
    orderings = [spearmanr(x, [y[i] for i in order]).statistic for order in itertools.permutations(range(len(y)))]
    return sum(abs(r) >= abs(rho) - 1e-12 for r in orderings) / len(orderings)


@pytest.mark.parametrize(
    ("x", "y"),
    [
        ([0.1, 0.3, 0.2], [0.80, 0.95, 0.90]),  # a perfect ranking of 3: 2 of 6 orderings
        ([0.1, 0.4, 0.2, 0.3], [0.7, 0.9, 0.8, 0.6]),
        ([3.0, 1.0, 4.0, 1.5, 5.0], [0.2, 0.1, 0.5, 0.3, 0.4]),
        ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.5, 0.5, 0.7, 0.6, 0.9, 0.6]),  # ties: an asymmetric null
    ],
)
def test_exact_p_value_from_scipy_equals_the_hand_written_enumeration(x, y):
    assert _exact_p_value(x, y) == pytest.approx(_p_value_by_hand(x, y), abs=1e-12)


def test_rank_unknown_backbone_fails_before_extracting(image_folder):
    with pytest.raises(TransferlabError, match="unknown backbone 'no_such_net'"):
        rank_backbones(image_folder, ["test_resnet", "no_such_net"], **FAST)


# --------------------------------------------------------------------------- compare


def test_compare_runs_with_different_class_sets(probed, tmp_path):
    runs = probed["runs"]
    comparison = compare_runs([runs["resnet_a"], runs["resnet_b"]])
    assert [r.run for r in comparison.rows] == ["resnet_a", "resnet_b"]
    assert set(comparison.classes) == {"circle", "square", "dome(inner)", "ring"}
    assert any("class sets differ" in w and "resnet_b" in w and "dome(inner)" in w for w in comparison.warnings)
    assert any("different data folders" in w for w in comparison.warnings)
    row_a = comparison.rows[0]
    assert row_a.split == "val" and row_a.method == "logreg" and row_a.resolution == 64
    assert row_a.accuracy == json.loads((runs["resnet_a"] / "metrics.json").read_text())["val"]["accuracy"]
    text = comparison.table_text()
    assert "ring" in text and "warning: class sets differ" in text
    ring_line = next(line for line in text.splitlines() if line.startswith("ring"))
    assert ring_line.split()[1] == "-"  # resnet_a has no 'ring'

    # Two tiny probes can tie on every scored column (accuracy 1.0, the same rounded seconds),
    # and a tie marks nothing: distinct times make the page's 'best' mark certain to appear.
    comparison.rows[0].seconds, comparison.rows[1].seconds = 1.0, 2.0
    page = comparison.write_html(tmp_path / "compare.html").read_text()
    assert '<table class="sortable">' in page and "<script>" in page and "addEventListener" in page
    assert "http://" not in page and "https://" not in page  # self-contained: no CDN
    assert "F1 ring" in page and "class sets differ" in page
    assert 'class="num best"' in page and "<b>" in page


def test_compare_marks_the_best_value_per_column(probed, tmp_path):
    runs = probed["runs"]
    comparison = compare_runs([runs["resnet_a"], runs["effnet_a"]])
    assert comparison.warnings == []  # same data, same classes
    comparison.rows[0].macro_f1, comparison.rows[1].macro_f1 = 0.5, 0.9
    page = comparison.write_html(tmp_path / "c.html").read_text()
    assert '<td class="num best" data-v="0.9"><b>0.9000</b></td>' in page
    assert '<td class="num" data-v="0.5">0.5000</td>' in page


def test_compare_text_keeps_names_as_written_and_columns_parsable(tmp_path):
    def row(name: str, f1: dict, accuracy: float | None) -> CompareRow:
        return CompareRow(name, tmp_path / name, "/data", "test_resnet", "logreg", 64, 1.5, "val", accuracy, 0.5,
                          f1, None, None)

    names = ["[bold]c[/bold]", ":smile: x"]
    comparison = Comparison([row("run [red]a[/red]", {names[0]: 0.25}, 0.75),
                             row("b", {names[0]: 0.5, names[1]: 1.0}, None)], names, ["one warning"])
    text = comparison.table_text()
    lines = text.splitlines()
    assert lines[0].split() == ["run", "backbone", "method", "px", "time", "s", "split", "accuracy", "macro", "F1",
                                "beats"]
    assert lines[1].startswith("run [red]a[/red]") and lines[1].split()[-3:] == ["0.7500", "0.5000", "-"]
    assert lines[2].split()[-3:] == ["-", "0.5000", "-"]
    smile = next(line for line in lines if line.startswith(":smile: x"))
    assert smile.split()[-2:] == ["-", "1.0000"]
    assert lines[-1] == "warning: one warning"
    assert "\x1b" not in text


def test_compare_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(TransferlabError, match="not a transferlab run"):
        compare_runs([tmp_path])


# --------------------------------------------------------------------------- embed


def test_embed_writes_maps_silhouettes_and_outliers(tmp_path):
    features, labels = clusters()
    features[0] += 40.0  # an obvious outlier of class 0
    predictions = labels.copy()
    predictions[:5] = 1  # a few errors
    predictions[-3:] = -1  # and a few images without a prediction
    result = embed(features, labels, ["a", "b", "c"], predictions=predictions, methods=("pca", "tsne"),
                   out_dir=tmp_path / "out")
    for method in ("pca", "tsne"):
        png = tmp_path / "out" / f"embed_{method}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert result.coords[method].shape == (60, 2)
    assert set(result.silhouette) == {"a", "b", "c"}
    assert all(v > 0.3 for v in result.silhouette.values())  # well separated clusters
    assert result.outliers[0]["index"] == 0 and result.outliers[0]["class"] == "a"
    assert result.outliers[0]["predicted"] == "b"
    assert result.outlier_plot is None and any("paths were not given" in n for n in result.notes)
    saved = json.loads((tmp_path / "out" / "embed.json").read_text())
    assert saved["silhouette"] == result.silhouette


def test_embed_subsamples_above_max_points_and_says_so(tmp_path):
    features, labels = clusters(n_per_class=30)
    result = embed(features, labels, ["a", "b", "c"], methods=("pca",), max_points=40, seed=3, out_dir=tmp_path)
    assert len(result.indices) == 40 and result.coords["pca"].shape == (40, 2)
    assert any("random 40 of the 90 images (seed 3)" in n for n in result.notes)
    again = embed(features, labels, ["a", "b", "c"], methods=("pca",), max_points=40, seed=3, out_dir=tmp_path)
    np.testing.assert_array_equal(result.indices, again.indices)  # the seed fixes the subset


def test_embed_with_one_class_explains_instead_of_crashing(tmp_path):
    features, labels = clusters(n_classes=1)
    result = embed(features, labels, ["only"], methods=("pca",), out_dir=tmp_path)
    assert result.silhouette is None
    assert "needs at least 2 classes" in result.silhouette_message and "only" in result.silhouette_message
    assert (tmp_path / "embed_pca.png").is_file()
    assert "silhouette: needs at least 2 classes" in result.summary_text()


def test_embed_skips_umap_with_a_note_when_it_fails(tmp_path, monkeypatch):
    def broken(*args):
        raise ImportError("numba is broken here")

    monkeypatch.setitem(map_methods._REDUCERS, "umap", broken)
    features, labels = clusters()
    result = embed(features, labels, ["a", "b", "c"], methods=("umap", "pca"), out_dir=tmp_path)
    assert "umap" not in result.coords and "pca" in result.coords
    assert any("UMAP skipped" in n and "numba is broken here" in n for n in result.notes)


def test_embed_rejects_an_unknown_method(tmp_path):
    features, labels = clusters()
    with pytest.raises(TransferlabError, match="unknown map method"):
        embed(features, labels, ["a", "b", "c"], methods=("isomap",), out_dir=tmp_path)


@pytest.mark.skipif(os.environ.get("TRANSFERLAB_TEST_UMAP") != "1", reason="UMAP compiles ~20 s: set TRANSFERLAB_TEST_UMAP=1")
def test_embed_umap_map(tmp_path):
    features, labels = clusters()
    result = embed(features, labels, ["a", "b", "c"], methods=("umap",), out_dir=tmp_path)
    assert result.coords["umap"].shape == (60, 2)
    assert (tmp_path / "embed_umap.png").read_bytes()[:8] == PNG_MAGIC


def test_embed_run_reads_the_run_and_its_cache(probed):
    run = probed["runs"]["resnet_a"]
    result = embed_run(run, EmbedSettings(methods=("pca",), cache_dir=probed["cache"], progress=False, workers=0))
    assert len(result.indices) == 18  # train and val
    assert not any("extracted" in n for n in result.notes)  # every feature came from the probe's cache
    assert (run / "plots" / "embed_pca.png").read_bytes()[:8] == PNG_MAGIC
    assert (run / "plots" / "embed_outliers.png").read_bytes()[:8] == PNG_MAGIC
    assert all(Path(o["path"]).is_file() for o in result.outliers)
    # Validation images carry the run's predictions, training images none.
    classes = json.loads((run / "model" / "model.json").read_text())["classes"]
    images = embed_module._run_images(run, classes)
    assert sorted(set(zip(images.splits, [p >= 0 for p in images.predictions]))) == [("train", False), ("val", True)]
    assert images.splits.count("val") == 3


def test_embed_settings_refuse_bad_values_before_any_work():
    with pytest.raises(TransferlabError, match="unknown map method.*isomap"):
        EmbedSettings(methods=("pca", "isomap"))
    with pytest.raises(TransferlabError, match="max_points"):
        EmbedSettings(max_points=0)
    with pytest.raises(TransferlabError, match="unknown layer 'neck'"):
        FolderEmbedSettings(layers="neck")
    with pytest.raises(TransferlabError, match="per_class"):
        FolderEmbedSettings(per_class=0)
    settings = FolderEmbedSettings(methods=["pca", "pca"], layers="stage-1, head")
    assert settings.methods == ("pca",) and settings.layers == ("stage-1", "head")


def test_embed_data_maps_a_folder_without_predictions(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=4)
    settings = FolderEmbedSettings(backbone="test_resnet", resolution=64, precision="fp32", methods=("pca",),
                                   per_class=3, cache_dir="", workers=0, progress=False)
    result = embed_data(data, tmp_path / "out", settings)
    assert len(result.indices) == 9  # 3 classes, 3 images each
    assert (tmp_path / "out" / "embed_pca.png").read_bytes()[:8] == PNG_MAGIC
    assert all("predicted" not in o for o in result.outliers)
    assert "test_resnet at 64px" in result.notes[0]
    assert json.loads((tmp_path / "out" / "embed.json").read_text())["points"] == 9


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("predictions.csv", "path,split,true\n", "lacks the column(s) predicted"),
        ("predictions.csv", "path,split,true,predicted\nx.png,val,circle,unicorn\n",
         "line 2: class 'unicorn' is not one of the run's classes"),
        ("predictions.csv", "path,split,true,predicted\n,test,circle,circle\n", "line 2: empty path"),
        ("split.json", "{broken", "not a valid split file"),
        ("split.json", '{"root": 3}', "'root' must be a string"),
    ],
)
def test_embed_run_refuses_an_edited_run_in_one_line(probed, tmp_path, name, content, message):
    run = shutil.copytree(probed["runs"]["resnet_a"], tmp_path / "run")
    (run / name).write_text(content, encoding="utf-8")
    with pytest.raises(TransferlabError, match=re.escape(message)) as info:
        embed_run(run, EmbedSettings(methods=("pca",), cache_dir=probed["cache"], progress=False, workers=0))
    assert str(run / name) in str(info.value) and "\n" not in str(info.value)


def test_embed_run_refuses_predictions_that_are_not_utf8(probed, tmp_path):
    run = shutil.copytree(probed["runs"]["resnet_a"], tmp_path / "run")
    (run / "predictions.csv").write_bytes(b"path,split,true,predicted\n\xff\xfe,val,circle,circle\n")
    with pytest.raises(TransferlabError, match="not readable CSV"):
        embed_run(run, EmbedSettings(methods=("pca",), cache_dir=probed["cache"], progress=False, workers=0))
