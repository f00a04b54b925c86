"""Reliability of runs and their folders: what is refused, what a failed run says, what a
hostile run folder gets, and the checks that come before any heavy import."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_cli_probe import FAST, invoke, probe
from transferlab.data.images import MAX_ASPECT_RATIO, ImageDecodeError
from transferlab.data.transforms import preprocess
from transferlab.errors import TransferlabError
from transferlab.inference.predict import load_predictor
from transferlab.inference.probe_predictor import ProbePredictor
from transferlab.pipelines.probe import ProbeConfig, run_probe


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory) -> Path:
    """One finished probe run; tests that damage a run work on a copy."""
    from tests.conftest import make_image_folder

    root = tmp_path_factory.mktemp("safety")
    data = make_image_folder(root / "data", per_class=6)
    out = root / "run"
    old = os.umask(0o022)
    try:
        code, output = probe(data, out)
    finally:
        os.umask(old)
    assert code == 0, output
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run, target)
    return target


# ----------------------------------------------------------------- permissions (item 4)


def test_model_files_are_readable_by_others_under_umask_022(probe_run):
    for name in ("backbone.safetensors", "classifier.skops", "model.json"):
        mode = stat.S_IMODE((probe_run / "model" / name).stat().st_mode)
        assert mode == 0o644, f"{name}: {oct(mode)}"


# ------------------------------------------------------------- user folders (item 6)


def test_out_folder_that_is_not_a_run_is_refused_and_left_intact(image_folder, tmp_path):
    mine = tmp_path / "my-project"
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "weights.bin").write_bytes(b"precious")
    (mine / "report.html").write_text("my report")
    (mine / "config.yaml").write_text("mine: true")
    code, message = probe(image_folder, mine)
    assert code == 2 and "not a transferlab run" in message and "\n" not in message.strip()
    assert (mine / "model" / "weights.bin").read_bytes() == b"precious"
    assert (mine / "report.html").read_text() == "my report"
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "model", "report.html"]


def test_empty_out_folder_and_earlier_run_are_accepted(image_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert probe(image_folder, empty)[0] == 0
    assert probe(image_folder, empty)[0] == 0  # now a run folder: re-running into it is fine
    assert json.loads((empty / "run.json").read_text())["status"] == "complete"


def test_out_that_is_a_file_is_refused(image_folder, tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    code, message = probe(image_folder, target)
    assert code == 2 and "not a folder" in message
    assert target.read_text() == "keep me"


# ------------------------------------------------------------------ statuses (item 7)


def test_a_failing_run_says_failed_with_the_error(image_folder, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise MemoryError("cannot allocate 12 GB")

    monkeypatch.setattr("transferlab.pipelines.probe.extract_features", boom)
    out = tmp_path / "run"
    with pytest.raises(MemoryError):
        run_probe(ProbeConfig(data=str(image_folder), out=str(out), backbone="test_resnet", resolution=64,
                              workers=0, progress=False))
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "failed"
    assert status["error"] == "MemoryError: cannot allocate 12 GB"
    with pytest.raises(TransferlabError, match="not complete"):
        ProbePredictor(out)


def test_ctrl_c_exits_130_with_one_line(image_folder, tmp_path):
    script = (
        "import sys, transferlab.pipelines.probe as p\n"
        "def stop(*a, **k): raise KeyboardInterrupt\n"
        "p.extract_features = stop\n"
        "from transferlab.cli import main\n"
        f"sys.argv = ['transferlab', 'probe', {str(image_folder)!r}, '--out', {str(tmp_path / 'run')!r}, "
        + ", ".join(repr(a) for a in FAST) + "]\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == "interrupted"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "interrupted"


# ----------------------------------------------- one line, before heavy imports (10, 14)


@pytest.mark.parametrize("args, expected", [
    (["--seed", "-1"], "--seed must be between 0"),
    (["--seed", str(2**40)], "--seed must be between 0"),
    (["--workers", "-1"], "--workers must be between 0"),
    (["--resolution", "100000"], "--resolution must be between 16 and 1024"),
    (["--batch-size", "0"], "--batch-size must be between 1"),
    (["--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
])
def test_bad_numbers_fail_in_one_line_before_torch_is_imported(image_folder, tmp_path, args, expected):
    script = (
        "import sys\n"
        "from transferlab.cli import main\n"
        f"sys.argv = ['transferlab', 'probe', {str(image_folder)!r}, '--out', {str(tmp_path / 'run')!r}] + {args!r}\n"
        "try:\n"
        "    main()\n"
        "finally:\n"
        "    print('torch imported' if 'torch' in sys.modules else 'torch not imported')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr
    assert "torch not imported" in done.stdout
    assert not (tmp_path / "run").exists()


def test_cache_dir_under_a_file_and_bad_port_fail_in_one_line(image_folder, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, message = probe(image_folder, tmp_path / "run", "--cache-dir", str(blocker / "cache"))
    assert code == 2 and "feature cache folder" in message
    code, message = invoke("serve", tmp_path, "--port", "70000")
    assert code == 2 and "--port must be between 1 and 65535" in message


def _break_model_json(run: Path, change) -> None:
    card = run / "model" / "model.json"
    meta = json.loads(card.read_text())
    change(meta)
    card.write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, expected", [
    (lambda run: (run / "model" / "model.json").unlink(), "model card not found"),
    (lambda run: (run / "run.json").write_text("{not json"), "not valid JSON"),
    (lambda run: (run / "run.json").write_text("[1, 2]"), "not a JSON object"),
    (lambda run: (run / "model" / "backbone.safetensors").write_bytes(
        (run / "model" / "backbone.safetensors").read_bytes()[:1000]), "cannot read weights"),
    (lambda run: _break_model_json(run, lambda m: m.update(backbone="no_such_net_v9")), "unknown backbone"),
    (lambda run: _break_model_json(run, lambda m: m.update(backbone="resnet18")), "do not fit the architecture"),
    (lambda run: _break_model_json(run, lambda m: m.update(classes=m["classes"][:2])), "do not cover"),
    (lambda run: _break_model_json(run, lambda m: m.update(resolution="big")), "field 'resolution'"),
    (lambda run: _break_model_json(run, lambda m: m.update(kind="pickle")), "field 'kind' must be one of"),
    (lambda run: _break_model_json(run, lambda m: m.update(std=[0, 0, 0])), "field 'std' must be 3 numbers above 0"),
])
def test_damaged_run_folders_get_one_line(probe_run, tmp_path, image_folder, damage, expected):
    run = _copy(probe_run, tmp_path)
    damage(run)
    image = next((image_folder / "circle").iterdir())
    code, message = invoke("predict", run, image)
    assert code == 2, message
    assert expected in message and "\n" not in message.strip()


def test_unknown_architecture_in_a_run_never_tries_the_network(probe_run, tmp_path, monkeypatch):
    import timm

    def no_pretrained(*args, pretrained=False, **kwargs):
        assert not pretrained, "a run folder must never make timm download weights"
        return real(*args, pretrained=pretrained, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", no_pretrained)
    run = _copy(probe_run, tmp_path)
    _break_model_json(run, lambda m: m.update(backbone="resnet18"))
    with pytest.raises(TransferlabError, match="do not fit"):
        load_predictor(run)


# ------------------------------------------------------------- offline hub (item 13)


def test_hub_backbone_offline_fails_at_once_without_calling_the_hub(monkeypatch):
    import timm

    from transferlab.backbones import create_backbone

    def no_download(*args, pretrained=False, **kwargs):
        if pretrained:
            raise AssertionError("the hub was called although it cannot be reached")
        return real(*args, pretrained=pretrained, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", no_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFERLAB_OFFLINE", raising=False)
    monkeypatch.setattr("transferlab.backbones.registry.hub_weights_cached", lambda name: False)
    monkeypatch.setattr("transferlab.backbones.registry.hub_reachable", lambda: False)
    with pytest.raises(TransferlabError, match="cannot be reached") as error:
        create_backbone("resnet50")
    assert "\n" not in str(error.value) and "tf_efficientnet_lite0" in str(error.value)


# --------------------------------------------------------- aspect-ratio bomb (item 3)


@pytest.mark.parametrize("size", [(1, 20000), (20000, 1), (1, 400000)])
def test_extreme_aspect_ratio_is_refused_before_decoding(tmp_path, size):
    path = tmp_path / "strip.png"
    Image.new("L", size, 128).save(path, optimize=True)
    assert path.stat().st_size < 2000  # a few hundred bytes that would have become gigabytes
    with pytest.raises(ImageDecodeError, match="aspect ratio"):
        preprocess(path, 224)


def test_wide_panorama_within_the_limit_is_cropped_to_a_square(tmp_path):
    path = tmp_path / "panorama.png"
    Image.new("RGB", (int(64 * MAX_ASPECT_RATIO), 64), (10, 200, 30)).save(path)
    out = preprocess(path, 32)
    assert tuple(out.shape) == (3, 32, 32)
    assert out[:, 16, 16].tolist() == [10, 200, 30]


def test_probe_lists_a_strip_image_as_skipped(image_folder, tmp_path):
    Image.new("RGB", (1, 20000), (200, 0, 0)).save(image_folder / "circle" / "strip.png")
    out = tmp_path / "run"
    code, output = probe(image_folder, out)
    assert code == 0, output
    with open(out / "skipped.csv", newline="") as handle:
        reasons = {Path(row["path"]).name: row["reason"] for row in csv.DictReader(handle)}
    assert "aspect ratio" in reasons["strip.png"]


# ------------------------------------------------------ predict: folders, CSV (item 18)


def test_predict_walks_folders_and_writes_a_csv(probe_run, image_folder, tmp_path):
    nested = tmp_path / "in" / "deeper"
    nested.mkdir(parents=True)
    for i, source in enumerate(sorted((image_folder / "square").iterdir())[:3]):
        shutil.copy(source, nested / f"{i}{source.suffix}")
    (nested / ".hidden.png").write_bytes(b"junk")
    (nested / "notes.txt").write_text("not an image")
    target = tmp_path / "out.csv"
    code, output = invoke("predict", probe_run, tmp_path / "in", "--csv", target)
    assert code == 0, output
    with open(target, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(p.name for p in nested.iterdir()
                                                               if p.suffix in (".jpg", ".png") and p.name[0] != ".")
    classes = json.loads((probe_run / "model" / "model.json").read_text())["classes"]
    assert all(r["predicted"] in classes and 0.0 <= float(r["probability"]) <= 1.0 for r in rows)


def test_predict_on_a_missing_file_exits_2(probe_run, tmp_path):
    code, message = invoke("predict", probe_run, tmp_path / "nope.jpg")
    assert code == 2 and "nope.jpg: file not found" in message


# ------------------------------------------------------ one precision policy (item 19)


def test_predict_and_explain_give_the_same_probability(probe_run, image_folder, tmp_path):
    from transferlab.explain.run import RunExplainer

    image = sorted((image_folder / "circle").iterdir())[0]
    meta = json.loads((probe_run / "model" / "model.json").read_text())
    assert meta["inference_precision"] == "fp32"
    predicted = load_predictor(probe_run).predict_paths([image], top_k=1)[0].top[0]
    explained = RunExplainer(probe_run).explain_paths([image], tmp_path, ("gradcam",))[0]
    assert explained.predicted == predicted[0]
    assert abs(explained.probability - predicted[1]) < 1e-4


# ------------------------------------------------------------- version (item 16)


def test_version():
    code, output = invoke("--version")
    assert code == 0 and output.startswith("transferlab ")


def test_classes_without_validation_images_are_left_out_of_the_average(image_folder, tmp_path):
    """An empty class folder keeps its name but cannot pull the macro average down."""
    (image_folder / "empty-class").mkdir()
    out = tmp_path / "run"
    code, output = probe(image_folder, out)
    assert code == 0, output
    metrics = json.loads((out / "metrics.json").read_text())
    val = metrics["val"]
    assert val["absent_classes"] == ["empty-class"]
    present = [row["f1"] for name, row in val["per_class"].items() if name != "empty-class"]
    assert val["macro_f1"] == pytest.approx(float(np.mean(present)), abs=1e-3)
    assert any("empty-class" in w for w in metrics["warnings"])


# ------------------------------------------------- pre-split layout, exclude (items 12, 21)


def test_probe_uses_a_pre_split_layout_as_given(tmp_path):
    from tests.conftest import make_image_folder

    root = tmp_path / "data"
    make_image_folder(root / "train", per_class=6)
    make_image_folder(root / "val", per_class=2)
    make_image_folder(root / "test", per_class=2)
    out = tmp_path / "run"
    code, output = probe(root, out)
    assert code == 0, output
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["val"]["per_class"]) == ["circle", "dome(inner)", "square"]
    assert metrics["val"]["n"] == 6 and metrics["test"]["n"] == 6  # val/ and test/ exactly as given
    assert any("pre-split layout" in w for w in metrics["warnings"])
    split = json.loads((out / "split.json").read_text())
    assert all(name.startswith("val/") for name, _ in split["val"])


def test_doctor_exclude_list_round_trip_through_probe(image_folder, tmp_path):
    copy = image_folder / "square" / "copy of circle.jpg"
    shutil.copy(image_folder / "circle" / "img (0).jpg", copy)  # a label conflict
    listing = tmp_path / "exclude.txt"
    code, output = invoke("doctor", image_folder, "--write-exclude", listing, "--strict")
    assert code == 1 and "label conflict" in output
    code, output = invoke("doctor", image_folder, "--exclude", listing, "--strict")
    assert code == 0, output
    out = tmp_path / "run"
    code, output = probe(image_folder, out, "--exclude", listing)
    assert code == 0, output
    with open(out / "skipped.csv", newline="") as handle:
        reasons = {Path(row["path"]).name: row["reason"] for row in csv.DictReader(handle)}
    assert "copy of circle.jpg" in reasons and "excluded by" in reasons["copy of circle.jpg"]


# --------------------------------------------- finetune in a pipe, new flags (items 16, 17)


def test_finetune_in_a_pipe_prints_each_stage_and_no_bars(image_folder, tmp_path):
    out = tmp_path / "ft"
    command = [sys.executable, "-m", "transferlab", "finetune", str(image_folder), "--backbone", "test_efficientnet",
               "--resolution", "48", "--precision", "fp32", "--batch-size", "8", "--stages",
               "three-step", "--epochs", "1", "--lr", "0.01", "--per-class", "6", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    stage_lines = [line for line in done.stdout.splitlines() if line.startswith("stage ")]
    assert len(stage_lines) == 3 and all(": 1 epochs," in line for line in stage_lines), done.stdout
    assert "\r" not in done.stderr and "it/s" not in done.stderr  # no progress bars when stderr is a pipe
    assert "Epoch 0" not in done.stdout + done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["summary"]["images"]["train"] + metrics["summary"]["images"]["val"] == 3 * 6
    assert json.loads((out / "model" / "model.json").read_text())["inference_precision"] == "fp32"


# --------------------------------------------------- the layers, seen from a predictor (issue 9)


def test_predicting_with_a_fine_tuned_run_imports_neither_lightning_nor_matplotlib(image_folder, tmp_path):
    out = tmp_path / "ft"
    code, output = invoke("finetune", image_folder, "--backbone", "test_efficientnet", "--resolution", "48",
                          "--precision", "fp32", "--batch-size", "8", "--stages", "head-only", "--epochs", "1",
                          "--out", out, "--quiet")
    assert code == 0, output
    image = sorted((image_folder / "circle").iterdir())[0]
    script = (
        "import sys\n"
        "from transferlab.inference.predict import load_predictor\n"
        f"top = load_predictor({str(out)!r}).predict_paths([{str(image)!r}])[0].top\n"
        "assert top, 'no prediction'\n"
        "print(sorted(m for m in ('lightning', 'matplotlib', 'transferlab.report', 'transferlab.pipelines')"
        " if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_file_named_run_json_does_not_make_a_user_folder_a_run(image_folder, tmp_path):
    mine = tmp_path / "mine"
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "weights_v7.bin").write_bytes(b"precious")
    (mine / "run.json").write_text('{"my": "notes"}')
    code, message = probe(image_folder, mine)
    assert code == 2 and "not a transferlab run" in message
    assert (mine / "model" / "weights_v7.bin").read_bytes() == b"precious"


def test_a_linked_out_folder_is_refused(probe_run, image_folder, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(probe_run, target_is_directory=True)
    code, message = probe(image_folder, link)
    assert code == 2 and "is a link" in message
    assert (probe_run / "model" / "backbone.safetensors").is_file()


@pytest.mark.parametrize("where", ["same", "inside", "above"])
def test_an_ensemble_never_writes_over_one_of_its_members(probe_run, tmp_path, where):
    """`ensemble A B --out B` emptied run B and then failed for want of it (an outside review)."""
    from transferlab.pipelines.ensemble import EnsembleConfig, run_ensemble

    first, second = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    shutil.copytree(probe_run, first)
    shutil.copytree(probe_run, second)
    out = {"same": second, "inside": second / "ens", "above": tmp_path / "runs"}[where]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(TransferlabError, match="which this command reads") as info:
        run_ensemble(EnsembleConfig(runs=[str(first), str(second)], out=str(out), workers=0, progress=False))
    assert "\n" not in str(info.value)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert json.loads((second / "run.json").read_text())["status"] == "complete"


def test_a_probe_or_fine_tune_never_clears_the_weights_it_loads(probe_run, image_folder, tmp_path):
    from transferlab.finetune.recipe import load_recipe
    from transferlab.pipelines.finetune import FinetuneConfig, run_finetune

    run = _copy(probe_run, tmp_path)
    weights = run / "model" / "backbone.safetensors"
    kept = weights.read_bytes()
    code, message = probe(image_folder, run, "--weights", weights)
    assert code == 2 and "which this command reads" in message
    recipe = load_recipe(None, {"backbone": "test_resnet", "weights": str(weights), "resolution": 64})
    with pytest.raises(TransferlabError, match="which this command reads"):
        run_finetune(FinetuneConfig(data=str(image_folder), out=str(run), recipe=recipe, workers=0, progress=False))
    assert weights.read_bytes() == kept and json.loads((run / "run.json").read_text())["status"] == "complete"


def test_export_never_writes_through_a_linked_model_folder(probe_run, tmp_path):
    """A review found `export` writing model.onnx into the run a linked model/ pointed at."""
    from transferlab.inference.export import export_run

    elsewhere = _copy(probe_run, tmp_path / "other")
    run = _copy(probe_run, tmp_path)
    shutil.rmtree(run / "model")
    (run / "model").symlink_to(elsewhere / "model")
    before = sorted(p.name for p in (elsewhere / "model").iterdir())
    with pytest.raises(TransferlabError, match="is a link"):
        export_run(run, "onnx")
    assert sorted(p.name for p in (elsewhere / "model").iterdir()) == before


def test_a_run_whose_model_files_are_links_still_predicts(probe_run, image_folder, tmp_path):
    """DVC's and git-annex's caches keep a run's files as links: reading through them is allowed."""
    store = _copy(probe_run, tmp_path / "store")
    run = _copy(probe_run, tmp_path)
    for file in (run / "model").iterdir():
        file.unlink()
        file.symlink_to(store / "model" / file.name)
    prediction = load_predictor(run).predict_paths([next(image_folder.rglob("*.jpg"))])[0]
    assert prediction.error is None


def test_a_huge_sparse_model_card_is_refused_without_reading_it(probe_run, tmp_path, image_folder):
    run = _copy(probe_run, tmp_path)
    with open(run / "model" / "model.json", "r+b") as handle:
        handle.truncate(8 * 2**30)  # sparse: no disk used, but read_text would try to hold 8 GiB
    code, message = invoke("predict", run, next((image_folder / "circle").iterdir()))
    assert code == 2 and "larger than 64 MiB" in message


def test_embed_command_maps_a_run_and_a_folder(probe_run, image_folder, tmp_path):
    code, output = invoke("embed", probe_run, "--methods", "pca", "--quiet")
    assert code == 0 and "silhouette" in output.lower(), output
    code, output = invoke("embed", image_folder, "--out", tmp_path / "maps", "--methods", "pca",
                          "--backbone", "test_resnet", "--quiet")
    assert code == 0, output
    assert any(p.suffix == ".png" for p in (tmp_path / "maps").iterdir())


# ------------------------------------------- what each writer may write over (a second review)


def _md5s(folder: Path) -> dict:
    import hashlib

    return {p: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_predict_csv_and_compare_page_never_write_over_a_users_file(probe_run, image_folder, tmp_path,
                                                                    monkeypatch):
    image = next(image_folder.rglob("*.jpg"))
    before = _md5s(image_folder) | _md5s(probe_run)
    for target in (image, probe_run / "model" / "model.json", tmp_path / "notes.txt"):
        if not target.exists():
            target.write_text("my notes")
        before[target] = _md5s(target.parent)[target]
        code, message = invoke("predict", probe_run, image, "--csv", target)
        assert code == 2 and "is not an earlier predictions CSV" in message, message
        code, message = invoke("compare", probe_run, "--html", target)
        assert code == 2 and "is not an earlier compare page" in message, message
    assert all(_md5s(p.parent)[p] == digest for p, digest in before.items())
    quoting = tmp_path / "quoting.txt"  # notes that quote the header are still notes
    quoting.write_text("my notes\npath,predicted,probability,error,top\n")
    assert invoke("predict", probe_run, image, "--csv", quoting)[0] == 2
    old_page = tmp_path / "old-compare.html"  # a page written before the generator tag
    old_page.write_text("<!DOCTYPE html>\n<html><head><title>transferlab compare: 2 runs</title>")
    assert invoke("compare", probe_run, "--html", old_page)[0] == 0
    # Their own earlier files are written over, as a re-run expects.
    csv_file, page = tmp_path / "new" / "predictions.csv", tmp_path / "new" / "compare.html"  # folder made
    for _ in range(2):
        assert invoke("predict", probe_run, image, "--csv", csv_file)[0] == 0
        assert invoke("compare", probe_run, "--html", page)[0] == 0
    monkeypatch.chdir(tmp_path)  # the default ./compare.html too
    (tmp_path / "compare.html").write_text("<html>my own page</html>")
    assert invoke("compare", probe_run)[0] == 2 and "my own" in (tmp_path / "compare.html").read_text()


def test_demo_never_lays_links_over_a_users_folder(tmp_path):
    from transferlab.data.demo import prepare_elpv_folder

    mine = tmp_path / "mine"
    (mine / "defective").mkdir(parents=True)
    (mine / "defective" / "cell0001.png").write_bytes(b"my real image")
    with pytest.raises(TransferlabError, match="which the demo did not lay out"):
        prepare_elpv_folder(mine)
    assert (mine / "defective" / "cell0001.png").read_bytes() == b"my real image"
    assert [p.name for p in mine.iterdir()] == ["defective"]


def test_runs_and_maps_are_never_written_inside_the_image_folder(probe_run, image_folder, tmp_path):
    """Their PNGs would be scanned as images next time (a run inside a class folder), or a class."""
    before = _md5s(image_folder)
    code, message = probe(image_folder, image_folder / "circle" / "run")
    assert code == 2 and "lies inside" in message
    code, message = invoke("embed", image_folder, "--out", image_folder / "square", "--backbone", "test_resnet")
    assert code == 2 and "lies inside" in message
    image = next((image_folder / "circle").iterdir())
    code, message = invoke("explain", probe_run, image, "--out", image_folder / "circle")
    assert code == 2 and "which explain did not write" in message
    code, message = invoke("embed", probe_run, "--out", tmp_path / "maps")
    assert code == 2 and "--out is for an image folder" in message
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "embed.json").write_text("{}")
    (mine / "notes.txt").write_text("mine")
    code, message = invoke("explain", probe_run, image, "--out", mine)
    assert code == 2 and "which explain did not write" in message
    assert _md5s(image_folder) == before and sorted(p.name for p in mine.iterdir()) == ["embed.json", "notes.txt"]


def test_the_checks_see_through_a_tilde_and_an_ensemble_stays_out_of_its_images(probe_run, tmp_path,
                                                                                 monkeypatch):
    """A review: '~/data' (quoted: not expanded by the shell) slipped past; an ensemble wrote into
    the image folder its members split."""
    from transferlab.pipelines.ensemble import EnsembleConfig, run_ensemble

    monkeypatch.setenv("HOME", str(tmp_path))
    data = tmp_path / "data"
    shutil.copytree(probe_run.parent / "data", data)
    code, message = probe("~/data", data / "runz")
    assert code == 2 and "lies inside" in message
    first, second = _copy(probe_run, tmp_path / "a"), _copy(probe_run, tmp_path / "b")
    root = Path(json.loads((probe_run / "split.json").read_text())["root"])
    with pytest.raises(TransferlabError, match="lies inside"):
        run_ensemble(EnsembleConfig(runs=[str(first), str(second)], out=str(root / "ens"), workers=0,
                                    progress=False))
    assert not (root / "ens").exists()


def test_lr_find_writes_only_into_its_own_or_a_new_folder(image_folder, tmp_path):
    from transferlab.finetune.recipe import load_recipe
    from transferlab.pipelines.finetune_config import FinetuneConfig
    from transferlab.pipelines.lr_find import check_lr_find_folder, find_learning_rate

    mine = tmp_path / "mine"
    (mine / "plots").mkdir(parents=True)
    (mine / "lr_find.json").write_text('{"mine": 1}')
    (mine / "plots" / "holiday.png").write_bytes(b"photo")
    recipe = load_recipe(None, {"backbone": "test_resnet", "resolution": 32, "precision": "fp32"})
    with pytest.raises(TransferlabError, match="not a transferlab run"):
        find_learning_rate(FinetuneConfig(data=str(image_folder), out=str(mine), recipe=recipe, workers=0,
                                          progress=False))
    assert (mine / "lr_find.json").read_text() == '{"mine": 1}'
    with pytest.raises(TransferlabError, match="lies inside"):
        check_lr_find_folder(image_folder / "circle", (str(image_folder),))
    (mine / "plots" / "holiday.png").unlink()
    (mine / "plots" / "lr_find.png").write_bytes(b"an earlier curve")
    check_lr_find_folder(mine, (str(image_folder),))  # its own earlier files: written over


def test_a_feature_cache_inside_the_image_folder_is_refused(image_folder):
    """Its features/ folder became a fourth class, of no images, on the next scan."""
    code, message = probe(image_folder, image_folder.parent / "run", "--cache-dir", image_folder)
    assert code == 2 and "feature cache would lie inside the image folder" in message
    assert sorted(p.name for p in image_folder.iterdir()) == ["circle", "dome(inner)", "square"]
