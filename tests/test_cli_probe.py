"""End-to-end: the `transferlab` commands on generated folders with a tiny random-weight model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import make_image_folder
from transferlab.cli import app
from transferlab.errors import TransferlabError
from transferlab.inference.probe_predictor import ProbePredictor
from transferlab.pipelines.probe import ProbeConfig, run_probe

FAST = ["--backbone", "test_resnet", "--resolution", "64", "--quiet", "--workers", "0", "--precision", "fp32"]


def invoke(*args: str):
    """Run the CLI as `main()` does: TransferlabError becomes a one-line error and exit 2."""
    runner = CliRunner()
    result = runner.invoke(app, [str(a) for a in args])
    if isinstance(result.exception, TransferlabError):
        return 2, str(result.exception)
    return result.exit_code, result.output


def probe(data: Path, out: Path, *extra: str):
    return invoke("probe", data, "--out", out, *FAST, *extra)


def test_probe_writes_a_complete_run(image_folder, tmp_path):
    out = tmp_path / "run"
    code, output = probe(image_folder, out)
    assert code == 0, output
    for name in ("run.json", "config.yaml", "split.json", "metrics.json", "predictions.csv", "skipped.csv",
                 "report.html", "model/backbone.safetensors", "model/classifier.skops", "model/model.json",
                 "plots/confusion_val.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    metrics = json.loads((out / "metrics.json").read_text())
    val = metrics["val"]
    assert set(val) >= {"accuracy", "macro_f1", "weighted_f1", "per_class"}
    assert set(val["per_class"]) == {"circle", "square", "dome(inner)"}
    assert set(val["per_class"]["circle"]) >= {"precision", "recall", "f1", "support"}
    assert sum(r["support"] for r in val["per_class"].values()) == 6  # 20% of 8 per class, rounded
    assert val["accuracy"] >= 0.5  # colours and shapes separate even with random weights
    assert {"extract", "fit", "total"} <= set(metrics["timings"])
    assert "test" not in metrics
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and {r["split"] for r in rows} == {"val"}
    assert "report:" in output
    # The report carries the feature maps, outliers and the error analysis.
    assert (out / "plots" / "embed_pca.png").is_file() and (out / "plots" / "embed_tsne.png").is_file()
    report = (out / "report.html").read_text()
    assert "Feature map and outliers" in report and "Most confused class pairs" in report
    assert set(metrics["embedding"]["silhouette"]) == {"circle", "square", "dome(inner)"}


def test_probe_with_test_folder_and_baseline(image_folder, tmp_path):
    test_dir = make_image_folder(tmp_path / "test", per_class=3)
    baseline = tmp_path / "paper.csv"
    baseline.write_text("class,f1\ncircle,0.1\nsquare,0.2\ndome(inner),1.0\n")
    out = tmp_path / "run"
    code, output = probe(image_folder, out, "--test", test_dir, "--baseline", baseline)
    assert code == 0, output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["per_class"]["square"]["support"] == 3
    assert metrics["baseline"]["split"] == "test"
    assert metrics["baseline"]["of"] == 3
    ours = {c: v["f1"] for c, v in metrics["test"]["per_class"].items()}
    expected = sum(ours[c] > f for c, f in {"circle": 0.1, "square": 0.2, "dome(inner)": 1.0}.items())
    assert metrics["baseline"]["beats"] == expected
    assert f"beats {expected} of 3 classes" in output
    assert (out / "baseline.txt").is_file()


def test_second_run_uses_the_cache(image_folder, tmp_path):
    first = run_probe(ProbeConfig(data=str(image_folder), out=str(tmp_path / "a"), backbone="test_resnet",
                                  resolution=64, workers=0, progress=False, precision="fp32"))
    second = run_probe(ProbeConfig(data=str(image_folder), out=str(tmp_path / "b"), backbone="test_resnet",
                                   resolution=64, workers=0, progress=False, precision="fp32"))
    assert first.summary["features"].startswith("24 extracted")
    assert second.summary["features"].startswith("0 extracted, 24 from cache")
    assert first.metrics["val"] == second.metrics["val"]


def test_predict_prints_top_k_class_names(image_folder, tmp_path):
    out = tmp_path / "run"
    assert probe(image_folder, out)[0] == 0
    image = next((image_folder / "square").glob("*.jpg"))
    code, output = invoke("predict", out, image, "--top-k", "2", "--json")
    assert code == 0, output
    line = json.loads(output.strip().splitlines()[-1])
    assert len(line["top"]) == 2
    assert line["top"][0]["class"] in {"circle", "square", "dome(inner)"}
    assert line["top"][0]["p"] >= line["top"][1]["p"]
    # The same run classifies in-process too, with probabilities that sum to one.
    result = ProbePredictor(out).predict_paths([image], top_k=3)[0]
    assert abs(sum(p for _, p in result.top) - 1.0) < 1e-6


def test_explain_writes_overlays(image_folder, tmp_path):
    out = tmp_path / "run"
    assert probe(image_folder, out)[0] == 0
    image = next((image_folder / "circle").glob("*.png"))
    code, output = invoke("explain", out, image, "--method", "gradcam", "--out", tmp_path / "cams")
    assert code == 0, output
    assert len(list((tmp_path / "cams").glob("*_gradcam.png"))) == 1
    code, output = invoke("explain", out, image, "--method", "nope")
    assert code == 2 and "unknown CAM method 'nope'" in output


def test_bad_files_are_skipped_and_listed(image_folder, tmp_path):
    good = next((image_folder / "circle").glob("*.jpg"))
    truncated = image_folder / "circle" / "broken (1).jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (image_folder / "square" / "notes.txt").write_text("not an image")
    (image_folder / "square" / ".DS_Store").write_bytes(b"\0\1")
    out = tmp_path / "run"
    code, output = probe(image_folder, out)
    assert code == 0, output
    with open(out / "skipped.csv", newline="") as handle:
        skipped = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(handle)}
    assert "broken (1).jpg" in skipped and "notes.txt" in skipped
    assert ".DS_Store" not in skipped
    assert "not an image file" in skipped["notes.txt"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: root.mkdir(), "no class subfolders"),
        (lambda root: make_image_folder(root, classes={"only": ((1, 2, 3), "ellipse")}), "at least 2 classes"),
        (lambda root: None, "folder not found"),
    ],
    ids=["empty", "one-class", "missing"],
)
def test_unusable_folders_fail_with_one_line(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    code, output = probe(root, tmp_path / "run")
    assert code == 2
    assert message in output and str(root) in output
    assert "\n" not in output.strip()
    assert not (tmp_path / "run").exists()  # nothing written before the input was checked


def test_class_with_one_image_warns_and_trains(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=6)
    for extra in list((root / "circle").iterdir())[1:]:
        extra.unlink()
    result = run_probe(ProbeConfig(data=str(root), out=str(tmp_path / "run"), backbone="test_resnet",
                                   resolution=64, workers=0, progress=False))
    assert any("'circle' has only 1 image" in w for w in result.warnings)
    assert result.metrics["val"]["per_class"]["circle"]["support"] == 0


def test_unknown_backbone_fails_before_writing(image_folder, tmp_path):
    code, output = invoke("probe", image_folder, "--out", tmp_path / "run", "--backbone", "no_such_net", "--quiet")
    assert code == 2
    assert "unknown backbone 'no_such_net'" in output and "tf_efficientnet_lite0" in output
    assert not (tmp_path / "run").exists()


def test_baseline_with_other_classes_fails(image_folder, tmp_path):
    baseline = tmp_path / "paper.csv"
    baseline.write_text("class,f1\naltar,0.9\napse,0.8\n")
    code, output = probe(image_folder, tmp_path / "run", "--baseline", baseline)
    assert code == 2
    assert "altar" in output and "circle" in output


def test_baseline_with_some_classes_is_refused_before_work(image_folder, tmp_path):
    baseline = tmp_path / "paper.csv"
    baseline.write_text("class,f1\ncircle,0.5\naltar,0.9\n")
    with pytest.raises(TransferlabError, match="baseline-partial"):
        run_probe(ProbeConfig(data=str(image_folder), out=str(tmp_path / "run"), backbone="test_resnet",
                              resolution=64, workers=0, progress=False, baseline=str(baseline)))
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


def test_baseline_with_some_classes_warns_when_partial_is_asked(image_folder, tmp_path):
    baseline = tmp_path / "paper.csv"
    baseline.write_text("class,f1\ncircle,0.5\naltar,0.9\n")
    result = run_probe(ProbeConfig(data=str(image_folder), out=str(tmp_path / "run"), backbone="test_resnet",
                                   resolution=64, workers=0, progress=False, baseline=str(baseline),
                                   baseline_partial=True))
    assert result.metrics["baseline"]["of"] == 1
    assert any("altar" in w for w in result.warnings)


def test_interrupted_run_is_not_complete(image_folder, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert probe(image_folder, out)[0] == 0

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    # A second run into the same folder dies while fitting: nothing of the first run may
    # remain looking complete, and predict must refuse the folder.
    monkeypatch.setattr("transferlab.pipelines.probe.build_classifier", lambda *a, **k: type("F", (), {"fit": fail})())
    with pytest.raises(KeyboardInterrupt):
        run_probe(ProbeConfig(data=str(image_folder), out=str(out), backbone="test_resnet", resolution=64,
                              workers=0, progress=False))
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert not (out / "metrics.json").exists() and not (out / "report.html").exists()
    with pytest.raises(TransferlabError, match="not complete"):
        ProbePredictor(out)


def test_killed_extraction_resumes_from_cache(image_folder, tmp_path, monkeypatch):
    import transferlab.features.extract as extract

    monkeypatch.setattr(extract, "SHARD_ROWS", 4)
    calls = {"n": 0}
    real_call = extract.FeatureExtractor.__call__

    def dies_on_third_batch(self, images):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_call(self, images)

    monkeypatch.setattr(extract.FeatureExtractor, "__call__", dies_on_third_batch)
    config = dict(data=str(image_folder), out=str(tmp_path / "run"), backbone="test_resnet", resolution=64,
                  workers=0, progress=False, batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        run_probe(ProbeConfig(**config))
    monkeypatch.setattr(extract.FeatureExtractor, "__call__", real_call)
    resumed = run_probe(ProbeConfig(**config))
    assert resumed.summary["features"].startswith("16 extracted, 8 from cache")


def test_backbones_command_lists_packaged_offline(tmp_path):
    code, output = invoke("backbones", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(output)}
    assert rows["tf_efficientnet_lite0"]["offline"] is True
    assert rows["tf_efficientnet_lite0"]["feature_dim"] == 1280
    assert rows["resnet50"]["offline"] is False


def test_doctor_command_reports_label_conflict(image_folder):
    source = next((image_folder / "circle").glob("*.png"))
    (image_folder / "square" / "copy.png").write_bytes(source.read_bytes())
    code, output = invoke("doctor", image_folder)
    assert code == 0, output
    assert "label conflict" in output


def test_every_command_has_help():
    for command in ("backbones", "doctor", "probe", "finetune", "predict", "explain", "rank", "embed", "compare",
                    "serve", "export", "demo"):
        code, output = invoke(command, "--help")
        assert code == 0 and "Usage" in output


def test_a_bf16_probe_reports_what_predict_gives(image_folder, tmp_path):
    # The head is fit on bf16 features, but predict runs in fp32: the validation images are scored
    # on fp32 features, so predictions.csv (and every figure from it) is what the saved model predicts.
    import numpy as np
    import torch

    from transferlab.data.transforms import preprocess

    out = tmp_path / "run"
    fast_bf16 = [a if a != "fp32" else "bf16" for a in FAST]
    code, output = invoke("probe", image_folder, "--out", out, *fast_bf16)
    assert code == 0, output
    card = json.loads((out / "model" / "model.json").read_text())
    assert card["precision"] == "bf16" and card["inference_precision"] == "fp32"
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    predictor = ProbePredictor(out)
    images = torch.stack([preprocess(r["path"], predictor.resolution, predictor.interpolation) for r in rows])
    saved = np.array([[float(v) for k, v in r.items() if k.startswith("p_")] for r in rows])
    np.testing.assert_allclose(saved, predictor.predict_tensor(images), atol=1e-4)
    summary = json.loads((out / "run.json").read_text()).get("summary") or {}
    assert "scored on fp32 features" in json.dumps(summary) + (out / "report.html").read_text()
