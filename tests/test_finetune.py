"""Fine-tuning: recipes, presets, freezing, end-to-end training and exact resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from tests.conftest import make_image_folder
from transferlab.backbones import REGISTRY
from transferlab.errors import TransferlabError
from transferlab.finetune.curves import keep_partial_log, read_epoch_metrics, stage_log_dir
from transferlab.finetune.groups import backbone_groups, expand_group_spec
from transferlab.finetune.head import Head
from transferlab.finetune.lit import StageModule
from transferlab.finetune.network import FinetuneNet
from transferlab.finetune.recipe import Recipe, Stage, load_recipe, resolve_stages
from transferlab.inference.predict import load_predictor
from transferlab.pipelines.finetune import FinetuneConfig, resume_config, run_finetune

TINY = {"backbone": "test_efficientnet", "resolution": 48, "precision": "fp32", "batch_size": 8}
PRESETS = ("head-only", "fine_tune", "three-step", "from-block:1", "gradual:2")


def tiny_recipe(**overrides) -> Recipe:
    return load_recipe(None, {**TINY, **overrides})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("ft") / "data", per_class=8, size=40)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_preset_builds_for_every_registered_backbone(name):
    with torch.device("meta"):  # structure only: no weights, no download
        model = timm.create_model(name, pretrained=False)
    groups = list(backbone_groups(model))
    assert len(groups) >= 3 and groups[-1] == "neck" or groups[0] == "stem"
    for preset in PRESETS:
        stages = resolve_stages(Recipe(stages=preset), groups)
        for stage in stages:
            trained = expand_group_spec(stage.train, groups + ["head"])
            assert "head" in trained and set(trained) <= set(groups) | {"head"}


def test_recipe_errors_come_before_training(tmp_path, data):
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("backbone: test_resnet\nlearning_rate: 0.1\n")
    with pytest.raises(TransferlabError, match="unknown key 'learning_rate'"):
        load_recipe(recipe_file)
    with pytest.raises(TransferlabError, match="lr must be positive"):
        resolve_stages(Recipe(stages=[{"train": "head", "lr": 0}]), ["stem", "layer1"])
    with pytest.raises(TransferlabError, match="lr must be positive"):
        resolve_stages(Recipe(stages=[{"train": "head", "lr": -1e-3}]), ["stem", "layer1"])
    with pytest.raises(TransferlabError, match="patience must be 0 or more"):
        resolve_stages(Recipe(stages=[{"train": "head", "patience": -1}]), ["stem", "layer1"])
    with pytest.raises(TransferlabError, match="unknown key 'lrr'"):
        resolve_stages(Recipe(stages=[{"train": "head", "lrr": 1}]), ["stem"])
    out = tmp_path / "run"
    recipe = tiny_recipe(stages=[{"train": "head"}, {"train": "blocks.9,head"}])
    with pytest.raises(TransferlabError, match="group 'blocks.9', which this backbone lacks"):
        run_finetune(FinetuneConfig(data=str(data), out=str(out), recipe=recipe, workers=0, progress=False))
    assert not out.exists()


def test_head_spec_builds_and_penalises():
    head = Head(16, 3, [{"type": "batchnorm"}, {"type": "dense", "units": 8, "l2": 0.1, "l1": 0.01},
                        {"type": "dropout", "p": 0.4}, {"type": "dense", "units": 4, "activation": "gelu"}])
    assert head(torch.randn(5, 16)).shape == (5, 3)
    dense = head.layers[1]
    expected = 0.1 * dense.weight.pow(2).sum() + 0.01 * dense.weight.abs().sum()
    assert torch.allclose(head.penalty(), expected)
    with pytest.raises(TransferlabError, match="unknown type 'conv'"):
        Head(16, 3, [{"type": "conv"}])
    with pytest.raises(TransferlabError, match="dropout p"):
        Head(16, 3, [{"type": "dropout", "p": 1.5}])


def test_consecutive_frozen_stages_share_one_cut():
    from transferlab.finetune.train import cache_levels

    assert cache_levels([9, 7, 0]) == [7, 7, 0]
    assert cache_levels([9, 6, 7, 0, 9, 5]) == [6, 6, 6, 0, 5, 5]
    assert cache_levels([0, 9]) == [0, 9]


def test_batch_crop_flip_is_exact_at_identity_and_varies_per_image():
    from transferlab.finetune.augment import BatchCropFlip, PerImage, build_batch_augmentation

    images = torch.randint(0, 255, (6, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(BatchCropFlip(scale=(1, 1), ratio=(1, 1), flip=False)(images), images)
    torch.manual_seed(0)
    flipped = BatchCropFlip(scale=(1, 1), ratio=(1, 1), flip=True)(images)
    same = [torch.equal(flipped[i], images[i]) for i in range(6)]
    mirrored = [torch.equal(flipped[i], images[i].flip(-1)) for i in range(6)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(mirrored) and any(same)
    assert isinstance(build_batch_augmentation("light", 32), BatchCropFlip)
    assert isinstance(build_batch_augmentation("classic", 32), PerImage)
    assert build_batch_augmentation("classic", 32)(images).shape == images.shape


def test_stage_freezing_freezes():
    model = timm.create_model("test_efficientnet", pretrained=False)
    net = FinetuneNet(model, 3, [], (0.5,) * 3, (0.5,) * 3)
    stage = Stage("blocks.4,neck,head", epochs=1, lr=0.1)
    module = StageModule(net, Recipe(), stage, 0, ["blocks.4", "neck", "head"], 0, None)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    optimizer = module.configure_optimizers.__func__  # noqa: F841 (built below with a trainer-free path)
    groups = module._parameter_groups()
    opt = torch.optim.SGD(groups, lr=0.1)
    module._set_modes()
    x = torch.randint(0, 255, (4, 3, 48, 48), dtype=torch.uint8)
    loss = torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    opt.step()
    for name, parameter in net.named_parameters():
        trained = name.startswith(("head.", "backbone.blocks.4.", "backbone.conv_head", "backbone.bn2"))
        assert parameter.requires_grad == trained, name
        if not trained:
            assert parameter.grad is None, name
            assert torch.equal(parameter, before[name]), name
    assert not torch.equal(net.head.classifier.weight, before["head.layers.0.weight"])
    # bn: frozen keeps even the trained groups' BatchNorm statistics fixed.
    assert not net.backbone.bn2.training and not net.backbone.blocks[0][0].bn1.training


def test_three_step_runs_end_to_end(tmp_path, data):
    test_dir = make_image_folder(tmp_path / "test", per_class=2, size=40)
    out = tmp_path / "run"
    recipe = tiny_recipe(stages="three-step", head=[{"type": "dense", "units": 16, "l2": 1e-4}, {"type": "dropout", "p": 0.2}],
                         tta=True)
    result = run_finetune(FinetuneConfig(data=str(data), out=str(out), recipe=recipe, test=str(test_dir), workers=0,
                                         progress=False))
    stages = result.metrics["stages"]
    assert [s["train"] for s in stages][0] == "head" and stages[-1]["train"] == "all"
    # Stages 1 and 2 share one cache of the frozen lower units; stage 3 trains everything.
    assert stages[0]["level"] == stages[1]["level"] > 0 and stages[2]["level"] == 0
    assert set(result.metrics) >= {"val", "test", "timings"}
    for name in ("report.html", "model/network.safetensors", "model/model.json", "plots/training_curves.png",
                 "config.yaml", "predictions.csv"):
        assert (out / name).is_file(), name
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    predictor = load_predictor(out)
    prediction = predictor.predict_paths([next((data / "circle").glob("*.png"))], top_k=2)[0]
    assert len(prediction.top) == 2 and prediction.top[0][1] >= prediction.top[1][1]
    # The saved recipe re-runs as it is.
    rerun = load_recipe(out / "config.yaml")
    assert rerun.head == recipe.head and isinstance(rerun.stages, list) and len(rerun.stages) == 3
    # A fine-tuned run exports to ONNX with its parity check, and both engines serve it alike.
    from transferlab.inference.export import export_run
    from transferlab.serve.engines import OnnxEngine, TorchEngine

    assert export_run(out, "onnx").is_file()
    assert json.loads((out / "model" / "export.json").read_text())["onnx"]["max_abs_diff"] <= 1e-4
    batch = torch.randint(0, 255, (3, 3, 48, 48), dtype=torch.uint8).numpy()
    torch_probabilities = TorchEngine(out).predict_uint8(batch)
    onnx_probabilities = OnnxEngine(out).predict_uint8(batch)
    assert abs(torch_probabilities - onnx_probabilities).max() < 1e-4  # TTA (flip) exported too


def test_resume_checks_backbone_and_data(tmp_path, data):
    out = tmp_path / "run"
    run_finetune(FinetuneConfig(data=str(data), out=str(out), recipe=tiny_recipe(stages="head-only"), workers=0,
                                progress=False))
    with pytest.raises(TransferlabError, match="backbone 'test_efficientnet', not 'test_resnet'"):
        resume_config(out, backbone="test_resnet")
    other = make_image_folder(tmp_path / "other", per_class=3, size=40)
    with pytest.raises(TransferlabError, match="another dataset"):
        resume_config(out, data=str(other))
    with pytest.raises(TransferlabError, match="nothing to resume"):
        resume_config(tmp_path / "nowhere")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "transferlab", "finetune", *map(str, args)]


def _has_train_row(metrics_csv: Path) -> bool:
    try:
        rows = list(csv.DictReader(metrics_csv.read_text().splitlines()))
    except (OSError, csv.Error):
        return False
    return any(row.get("train_acc") for row in rows)


def test_kill_9_in_second_stage_then_resume_matches(tmp_path, data):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "backbone: test_efficientnet\nresolution: 48\nprecision: fp32\nbatch_size: 8\naugment: light\n"
        "stages:\n"
        "  - {train: head, epochs: 2, lr: 0.01}\n"
        "  - {train: all, epochs: 6, lr: 0.001, patience: 10}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_cli(data, "--recipe", recipe, "--out", straight, "--quiet"), check=True, env=env,
                   capture_output=True, timeout=300)

    process = subprocess.Popen(_cli(data, "--recipe", recipe, "--out", killed, "--quiet"), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "logs" / "stage2" / "version_0" / "metrics.csv"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        # Kill once stage 2 has a checkpoint and its first epoch is fully logged: last.ckpt is
        # written at validation end, before the epoch's training metrics reach the CSV, and a
        # kill in that window (seen under a load of 10) loses them for good.
        if (killed / "checkpoints" / "stage2" / "last.ckpt").exists() and _has_train_row(marker):
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert json.loads((killed / "run.json").read_text())["status"] == "running"
    assert not (killed / "metrics.json").exists()

    subprocess.run(_cli("--resume", killed, "--quiet"), check=True, env=env, capture_output=True, timeout=300)
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert abs(a["val"]["accuracy"] - b["val"]["accuracy"]) <= 0.005
    assert [s["best_val_acc"] for s in a["stages"]] == pytest.approx([s["best_val_acc"] for s in b["stages"]], abs=0.005)
    assert a["stages"][-1]["epochs_run"] == b["stages"][-1]["epochs_run"]
    # Exact, not only close: every epoch's randomness derives from (seed, stage, epoch) and
    # nothing else (the dropout masks included), so the resumed run computes the same numbers.
    assert (killed / "predictions.csv").read_text() == (straight / "predictions.csv").read_text()
    # And the epochs logged before the kill are still in the training log.
    untimed = lambda rows: [{k: v for k, v in row.items() if k != "elapsed_s"} for row in rows]  # noqa: E731
    assert untimed(read_epoch_metrics(killed / "logs", 2)) == untimed(read_epoch_metrics(straight / "logs", 2))


def test_lr_finder_sweeps_the_first_stage_and_leaves_the_network_as_it_was(tmp_path, data, monkeypatch):
    from transferlab.pipelines import lr_find

    prepared = {}
    original_prepare = lr_find.prepare_training

    def remember(config):
        prepared["setup"] = original_prepare(config)
        prepared["before"] = {k: v.clone() for k, v in prepared["setup"].net.state_dict().items()}
        return prepared["setup"]

    monkeypatch.setattr(lr_find, "prepare_training", remember)
    recipe = tiny_recipe(stages=[{"train": "head", "epochs": 1, "lr": 0.01}])
    config = FinetuneConfig(data=str(data), out=str(tmp_path / "lr"), recipe=recipe, progress=False)
    result = lr_find.find_learning_rate(config, min_lr=1e-5, max_lr=1.0, steps=30)

    assert result.stage == "head" and result.recipe_lr == 0.01 and result.lr_field == "lr"
    assert 20 <= len(result.lrs) <= 30 and len(result.losses) == len(result.lrs)
    assert result.lrs == sorted(result.lrs) and result.lrs[0] < 1e-4 < result.lrs[-1]
    assert result.suggestion is not None and 1e-5 <= result.suggestion <= 1.0
    record = json.loads(result.record.read_text())
    assert record["suggestion"] == result.suggestion and record["cached_below_unit"] > 0  # head-only: cached input
    assert result.plot.stat().st_size > 1000
    after = prepared["setup"].net.state_dict()
    assert all(torch.equal(prepared["before"][k], after[k]) for k in after), "the range test changed the weights"


def test_lr_finder_cli_rejects_a_bad_step_count(tmp_path, data):
    completed = subprocess.run(_cli(data, "--backbone", "test_resnet", "--find-lr", "--lr-find-steps", "5",
                                    "--out", tmp_path / "lr", "--quiet"), capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    assert "--lr-find-steps must be at least 20" in completed.stderr


def test_two_cpu_processes_train_with_ddp_gloo(tmp_path, data):
    """`--processes 2`: Lightning's ddp_spawn on gloo; each process trains on half of every epoch."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = tmp_path / "ddp"
    completed = subprocess.run(_cli(data, "--backbone", "test_efficientnet", "--resolution", "48", "--precision",
                                    "fp32", "--batch-size", "4", "--stages", "head-only", "--processes", "2",
                                    "--out", out, "--quiet"), env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    stage = metrics["stages"][0]
    assert stage["processes"] == 2
    assert stage["best_val_acc"] > 0  # the children train; the main process must still report what they did
    n_train = metrics["summary"]["images"]["train"]
    logged = [row for row in csv.DictReader(open(out / "logs" / "stage1" / "version_0" / "metrics.csv"))
              if row.get("val_acc")]
    assert len(logged) >= 2 and stage["epochs_run"] == len(logged)  # every epoch, as the children logged it
    # Each epoch every process gets ceil(n/2) samples (DistributedSampler), so an epoch is
    # half the optimizer steps one process would take: proof that the data was sharded.
    steps_one_process = n_train // 4
    steps_per_epoch = int(float(logged[0]["step"])) + 1
    assert steps_per_epoch == -(-n_train // 2) // 4 < steps_one_process
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_lr_suggestion_is_the_steepest_fall_per_decade_before_the_minimum():
    from transferlab.pipelines.lr_find import suggest_learning_rate

    lrs = list(np.logspace(-6, 0, 100))
    # Flat, barely sloping down at the low end (where a slope against the linear rate is
    # largest), a fall centred on 1e-2, then divergence past 1e-1.
    losses = [2.3 - 1e-3 * np.log10(lr / 1e-6) - 1.0 / (1 + np.exp(-4 * (np.log10(lr) + 2)))
              + (50 * (lr - 0.1) if lr > 0.1 else 0.0) for lr in lrs]
    suggestion = suggest_learning_rate(lrs, losses)
    assert 10 ** -2.2 < suggestion < 10 ** -1.8
    assert suggest_learning_rate(lrs, [1.0 + 0.1 * i for i in range(100)]) is None  # never falls
    assert suggest_learning_rate(lrs[:12], losses[:12]) is None  # too few steps after the warm-up


def test_same_seed_builds_the_same_network_in_every_process(tmp_path, data):
    """torch seeds itself differently in each process: the head must come from the recipe's seed."""
    code = ("import sys, hashlib, torch\n"
            "from transferlab.finetune.recipe import load_recipe\n"
            "from transferlab.pipelines.finetune import FinetuneConfig, prepare_training\n"
            "recipe = load_recipe(None, {'backbone': 'test_efficientnet', 'resolution': 48, 'seed': int(sys.argv[2])})\n"
            "net = prepare_training(FinetuneConfig(data=sys.argv[1], out='unused', recipe=recipe)).net\n"
            "print(hashlib.sha256(b''.join(t.numpy().tobytes() for t in net.state_dict().values())).hexdigest())\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}

    def weights_hash(seed: int) -> str:
        return subprocess.run([sys.executable, "-c", code, str(data), str(seed)], env=env, check=True,
                              capture_output=True, text=True, timeout=120).stdout.strip()

    first, second, other_seed = weights_hash(0), weights_hash(0), weights_hash(1)
    assert first == second
    assert first != other_seed


def test_a_resumed_stage_keeps_the_epochs_logged_before_the_kill(tmp_path):
    log_dir = stage_log_dir(tmp_path / "logs", 1)
    log_dir.mkdir(parents=True)
    header = "epoch,step,train_acc,val_acc,val_loss\n"
    # Killed during epoch 2, after its validation was logged but before its checkpoint.
    (log_dir / "metrics.csv").write_text(header + "0,9,0.5,0.6,1.0\n1,19,0.7,0.65,0.9\n2,29,0.71,0.66,0.88\n")
    assert keep_partial_log(log_dir) == log_dir / "metrics.part1.csv"
    assert keep_partial_log(log_dir) is None  # nothing left to move
    # The resumed process redoes epoch 2 (different numbers here, to see which one wins).
    (log_dir / "metrics.csv").write_text(header + "2,29,0.8,0.7,0.8\n")
    rows = read_epoch_metrics(tmp_path / "logs", 1)
    assert [(r["epoch"], r["val_acc"]) for r in rows] == [(1, 0.6), (2, 0.65), (3, 0.7)]


def test_partial_logs_are_read_in_numeric_order(tmp_path):
    log_dir = stage_log_dir(tmp_path / "logs", 1)
    log_dir.mkdir(parents=True)
    header = "epoch,step,val_acc\n"
    (log_dir / "metrics.part2.csv").write_text(header + "0,9,0.2\n")
    (log_dir / "metrics.part10.csv").write_text(header + "0,9,0.10\n")  # written later than part2
    assert keep_partial_log(log_dir) is None
    (log_dir / "metrics.csv").write_text(header + "1,19,0.5\n")
    assert keep_partial_log(log_dir) == log_dir / "metrics.part11.csv"
    rows = read_epoch_metrics(tmp_path / "logs", 1)
    assert [(r["epoch"], r["val_acc"]) for r in rows] == [(1, 0.10), (2, 0.5)]


def test_lr_sweep_is_cut_at_divergence_and_at_a_non_finite_loss():
    from transferlab.pipelines.lr_find import cut_at_divergence

    lrs = [10 ** (-6 + i * 0.1) for i in range(60)]
    raw = [2.0] * 30 + [1.0] * 10 + [1.0 * 3 ** k for k in range(1, 21)]
    cut_lrs, cut_raw, smooth = cut_at_divergence(lrs, raw)
    assert len(cut_lrs) == len(cut_raw) == len(smooth) < 60
    assert smooth[-1] > 4 * min(smooth) and all(s <= 4 * min(smooth[:i + 1]) for i, s in enumerate(smooth[:-1]))
    _, with_nan, _ = cut_at_divergence(lrs, [2.0] * 20 + [float("nan")] + [1.0] * 39)
    assert with_nan == [2.0] * 20


def test_find_lr_refuses_resume_and_stray_steps(tmp_path, data):
    for args, message in (((data, "--find-lr", "--resume", tmp_path / "run"), "cannot be combined with --resume"),
                          ((data, "--lr-find-steps", "50"), "--lr-find-steps goes with --find-lr")):
        completed = subprocess.run(_cli(*args), capture_output=True, text=True, timeout=120)
        assert completed.returncode == 2 and message in completed.stderr


# --- recipe overrides (--epochs, --lr, --per-class) and typed validation -------------------

GROUPS = ["stem", "blocks.0", "blocks.1", "neck"]


def test_epochs_override_sets_every_stage():
    recipe = load_recipe(None, {"stages": "three-step", "epochs": 2})
    stages = resolve_stages(recipe, GROUPS)
    assert len(stages) == 3 and [s.epochs for s in stages] == [2, 2, 2]


def test_lr_override_sets_the_first_stage_and_keeps_the_ratios():
    plain = resolve_stages(load_recipe(None, {"stages": "fine_tune"}), GROUPS)
    scaled = resolve_stages(load_recipe(None, {"stages": "fine_tune", "lr": 0.03}), GROUPS)
    factor = 0.03 / plain[0].lr
    assert scaled[0].lr == pytest.approx(0.03)
    for before, after in zip(plain, scaled):
        assert after.lr == pytest.approx(before.lr * factor)
        assert (after.head_lr is None) == (before.head_lr is None)
        if before.head_lr is not None:
            assert after.head_lr == pytest.approx(before.head_lr * factor)


def test_lr_override_targets_head_lr_of_a_head_only_first_stage_that_sets_it():
    """The rate --find-lr suggests for such a stage is its head_lr: --lr sets that one."""
    stages = [{"train": "head", "lr": 1e-3, "head_lr": 4e-3}, {"train": "all", "lr": 1e-4, "head_lr": 2e-4}]
    resolved = resolve_stages(load_recipe(None, {"stages": stages, "lr": 8e-3}), GROUPS)
    assert resolved[0].head_lr == pytest.approx(8e-3) and resolved[0].lr == pytest.approx(2e-3)
    assert resolved[1].lr == pytest.approx(2e-4) and resolved[1].head_lr == pytest.approx(4e-4)


def test_overrides_survive_a_rerun_of_the_saved_recipe(tmp_path):
    """config.yaml holds the resolved stages and the overrides: re-running it changes nothing."""
    import yaml

    from transferlab.finetune.recipe import recipe_to_dict

    recipe = load_recipe(None, {"stages": "fine_tune", "lr": 0.02, "epochs": 4, "per_class": 5})
    stages = resolve_stages(recipe, GROUPS)
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(recipe_to_dict(recipe, stages)))
    again = load_recipe(saved)
    assert again.per_class == 5
    assert resolve_stages(again, GROUPS) == stages


@pytest.mark.parametrize("overrides, message", [
    ({"epochs": 0}, "epochs must be at least 1"),
    ({"epochs": "many"}, "epochs must be a whole number"),
    ({"lr": 0}, "lr must be positive"),
    ({"lr": -1e-3}, "lr must be positive"),
    ({"lr": "fast"}, "lr must be a number"),
    ({"per_class": 1}, "per_class must be at least 2"),
])
def test_override_values_are_checked_in_one_line(overrides, message):
    with pytest.raises(TransferlabError, match=message) as info:
        load_recipe(None, overrides)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("line, named", [
    ("batch_size: lots", "batch_size must be a whole number, got 'lots'"),
    ("batch_size: true", "batch_size must be a whole number"),
    ("batch_size: 0", "batch_size must be between 1 and"),
    ("precision: fp16", "precision must be one of auto, fp32, bf16"),
    ("resolution: 8", "resolution must be between 16 and 1024"),
    ("resolution: 4096", "resolution must be between 16 and 1024"),
    ("resolution: big", "resolution must be a whole number"),
    ("seed: -1", "seed must be between"),
    ("val_fraction: 1.5", "val_fraction must be between 0 and 1"),
    ("weight_decay: heavy", "weight_decay must be a number"),
    ("mixup: -0.2", "mixup must be 0 or more"),
    ("tta: maybe", "tta must be true, false or one of"),
    ("processes: 0", "processes must be between 1 and"),
    ("augment: sparkle", "unknown augmentation preset 'sparkle'"),
    ("augment: [{name: teleport}]", "augment item 1: unknown augmentation 'teleport'"),
    ("augment: [{name: flip, prob: 0.5}]", "augmentation 'flip': unknown option 'prob'"),
    ("augment: [{name: rotation, degrees: lots}]", "augment item 1 (rotation): bad option value"),
    ("augment: [{name: crop, scale: 0.5}]", "augment item 1 (crop): bad option value"),
    ("augment: [flip]", "augment must be a list of mappings"),
    ("head: dense", "head must be a list of mappings"),
    ("head: [{type: dense, units: lots}]", "head layer 1: dense needs whole-number units"),
    ("head: [{type: dropout, p: half}]", "head layer 1: p must be a number"),
    ("head: [{type: dense, units: 8, activation: sparkle}]", "unknown activation 'sparkle'"),
    ("stages: []", "stages must be a preset name or a non-empty list"),
    ("stages: [head]", "stages must be a list of mappings"),
])
def test_recipe_fields_are_type_checked_in_one_line_naming_the_field(tmp_path, line, named):
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(f"backbone: test_resnet\n{line}\n")
    with pytest.raises(TransferlabError) as info:
        load_recipe(recipe_file)
    message = str(info.value)
    assert "\n" not in message and named in message and str(recipe_file) in message


@pytest.mark.parametrize("stage, named", [
    ({"train": "head", "lr": "fast"}, "stage 1: lr must be a number"),
    ({"train": "head", "epochs": 2.5}, "stage 1: epochs must be a whole number"),
    ({"train": "head", "patience": "never"}, "stage 1: patience must be a whole number"),
    ({"train": "head", "bn": "melt"}, "stage 1: bn must be one of"),
    ({"train": 3}, "stage 1: train must name groups"),
    ({"train": "head", "layer_decay": 2}, "stage 1: layer_decay must be in (0, 1]"),
])
def test_stage_fields_are_type_checked(stage, named):
    with pytest.raises(TransferlabError) as info:
        resolve_stages(load_recipe(None, {"stages": [stage]}), GROUPS)
    assert named in str(info.value) and "\n" not in str(info.value)


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads 1e-3 as text; a recipe means the number."""
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("weight_decay: 1e-4\nstages:\n  - {train: head, lr: 3e-3, head_lr: 1e-2}\n"
                           "head: [{type: dense, units: 8, l2: 1e-4}]\n")
    recipe = load_recipe(recipe_file)
    assert recipe.weight_decay == 1e-4
    stage = resolve_stages(recipe, GROUPS)[0]
    assert stage.lr == 3e-3 and stage.head_lr == 1e-2
    assert Head(8, 2, recipe.head).penalty() >= 0


def test_a_bad_recipe_built_in_python_is_refused_before_any_image_is_read(tmp_path, data, monkeypatch):
    from transferlab.pipelines import finetune

    monkeypatch.setattr(finetune, "load_images", lambda *a, **k: pytest.fail("an image was decoded"))
    recipe = tiny_recipe()
    recipe.batch_size = "lots"
    with pytest.raises(TransferlabError, match="batch_size must be a whole number"):
        run_finetune(FinetuneConfig(data=str(data), out=str(tmp_path / "run"), recipe=recipe, workers=0,
                                    progress=False))
    assert not (tmp_path / "run").exists()


def test_top0_names_no_group():
    with pytest.raises(TransferlabError, match="top0"):
        expand_group_spec("top0,head", GROUPS + ["head"])


def test_a_bf16_fine_tune_reports_what_predict_gives(tmp_path, data):
    # Trained under bf16 autocast, scored in fp32 as predict runs it: predictions.csv is the saved model's.
    from transferlab.data.transforms import preprocess

    out = tmp_path / "run"
    run_finetune(FinetuneConfig(data=str(data), out=str(out), recipe=tiny_recipe(stages="head-only", precision="bf16"),
                                workers=0, progress=False))
    assert json.loads((out / "model" / "model.json").read_text())["precision"] == "bf16"
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    predictor = load_predictor(out)
    images = torch.stack([preprocess(r["path"], predictor.resolution, predictor.interpolation) for r in rows])
    saved = np.array([[float(v) for k, v in r.items() if k.startswith("p_")] for r in rows])
    fp32 = predictor.predict_tensor(images)
    tolerance = 6e-6  # predictions.csv keeps 5 decimals
    np.testing.assert_allclose(saved, fp32, atol=tolerance)
    # Not vacuous: scored under bf16 autocast, this tiny network's probabilities move by more (3e-5 here).
    from transferlab.finetune.network import predict_probabilities

    assert np.abs(predict_probabilities(predictor.net, images, "bf16", False) - fp32).max() > tolerance
