"""`run_finetune`: a recipe and a data folder -> a finished, fine-tuned run folder.

Stages train one after another (`finetune.train.train_stage`); `finetune_state.json` records
finished stages, so a killed run resumes from the last checkpoint of the stage it was in.
The end of the run (evaluation, feature map, model card, report) is the shared `tail`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file

from transferlab.atomic import atomic_path, write_json
from transferlab.backbones import create_backbone, weights_source_path
from transferlab.backbones.cut import cut_backbone
from transferlab.backbones.registry import Backbone
from transferlab.card import ModelCard
from transferlab.data.folder import FolderScan
from transferlab.data.layout import PreparedData, prepare_data
from transferlab.data.split import Split, save_split
from transferlab.explain.cam import target_layer
from transferlab.features.resolution import resolve_resolution
from transferlab.finetune.augment import build_batch_augmentation
from transferlab.finetune.curves import plot_training_curves
from transferlab.finetune.data import load_images
from transferlab.finetune.groups import expand_group_spec
from transferlab.finetune.network import FinetuneNet, pooled_features, predict_probabilities
from transferlab.finetune.recipe import Stage, recipe_to_dict, resolve_stages
from transferlab.finetune.train import (
    StageContext,
    cache_levels,
    class_weights_of,
    first_trained_unit,
    load_stage_weights,
    train_stage,
)
from transferlab.options import check_file, check_folder, tta_mode
from transferlab.pipelines.evaluation import CamSource, SplitPredictions
from transferlab.pipelines.finetune_config import FinetuneConfig
from transferlab.pipelines.finetune_state import STATE_FILE, fingerprint, open_state, resume_config
from transferlab.pipelines.tail import RunEnd, RunResult, Timer, data_summary, finish_run
from transferlab.precision import INFERENCE_PRECISION, resolve_precision
from transferlab.report.baseline import check_baseline_classes, load_baseline
from transferlab.runs import RunDir, check_out_folder

__all__ = ["FinetuneConfig", "RunResult", "TrainingSetup", "prepare_training", "resume_config", "run_finetune"]


@dataclass
class TrainingSetup:
    """What every stage needs, built (and checked) before any image is decoded."""

    data: PreparedData  # layout, notes, skipped files, test folder
    scan: FolderScan
    split: Split
    backbone: Backbone
    resolution: int
    precision: str
    net: FinetuneNet
    stages: list[Stage]
    trainables: list[list[str]]  # the block groups each stage trains


def prepare_training(config: FinetuneConfig) -> TrainingSetup:
    recipe = config.recipe
    recipe.validate()  # a Recipe built in Python skipped load_recipe's checks
    data = prepare_data(config.data, config.test, recipe.val_fraction, recipe.seed, recipe.per_class,
                        exclude=config.exclude, train_per_class=recipe.train_per_class)
    backbone = create_backbone(recipe.backbone, recipe.weights)
    if config.cut_after is not None:
        cut_backbone(backbone.model, config.cut_after)
    resolution, _ = resolve_resolution(recipe.resolution, [s.path for s in data.split.train], backbone.native_size)
    precision = resolve_precision(recipe.precision)
    # The head's initial weights are drawn here, and torch's start-up seed differs in every
    # process: without this, two runs of one recipe would start from different heads.
    torch.manual_seed(recipe.seed)
    net = FinetuneNet(backbone.model, len(data.scan.classes), recipe.head, backbone.mean, backbone.std)
    stages = resolve_stages(recipe, list(net.group_params))
    all_groups = list(net.group_params) + ["head"]
    trainables = [expand_group_spec(stage.train, all_groups) for stage in stages]  # fails before training
    return TrainingSetup(data, data.scan, data.split, backbone, resolution, precision, net, stages, trainables)


def run_finetune(config: FinetuneConfig, resume: bool = False) -> RunResult:
    timer, wall_origin = Timer(), time.time()
    check_folder(config.data)
    check_folder(config.test, "test folder")
    check_file(config.baseline, "baseline CSV")
    check_file(config.exclude, "exclude list")
    if not resume:
        check_out_folder(config.out,
                         reads=(weights_source_path(config.recipe.weights), config.data, config.test))
    baseline = load_baseline(config.baseline) if config.baseline else None
    setup = prepare_training(config)
    if baseline is not None:
        check_baseline_classes(baseline, setup.scan.classes, config.baseline, config.baseline_partial)
    run = RunDir(config.out)
    state = open_state(run, fingerprint(config, setup.split, setup.scan.classes), resume)
    with run.recording("finetune"):
        resolved = recipe_to_dict(config.recipe, setup.stages) | {"resolution": setup.resolution}
        run.write_config(resolved)
        save_split(setup.split, run.path / "split.json", setup.data.root)
        ctx = _stage_context(config, setup, run, wall_origin, timer)
        _train_stages(config, setup, ctx, run, state)
        timer.lap("train")
        return _finish(config, setup, ctx, run, state, baseline, resolved, timer)


def _stage_context(config: FinetuneConfig, setup: TrainingSetup, run: RunDir, wall_origin: float,
                   timer: Timer) -> StageContext:
    recipe, split, interpolation = config.recipe, setup.split, setup.backbone.interpolation
    torch.manual_seed(recipe.seed)
    train_store = load_images(split.train, setup.resolution, interpolation, config.workers, config.progress,
                              "decoding train")
    val_store = load_images(split.val, setup.resolution, interpolation, config.workers, config.progress,
                            "decoding val")
    timer.lap("decode")
    n_classes = len(setup.scan.classes)
    return StageContext(
        net=setup.net, recipe=recipe, train_store=train_store, val_store=val_store,
        augmentation=build_batch_augmentation(recipe.augment, setup.resolution),
        class_weights=class_weights_of(train_store, n_classes) if recipe.balance == "weights" else None,
        precision=setup.precision, run_path=run.path, wall_origin=wall_origin, progress=config.progress,
        mlflow_uri=config.mlflow_uri, extra_callbacks=config.stage_callbacks,
    )


def _train_stages(config: FinetuneConfig, setup: TrainingSetup, ctx: StageContext, run: RunDir, state: dict) -> None:
    levels = cache_levels([first_trained_unit(setup.net, t) for t in setup.trainables])
    for index, (stage, trainable) in enumerate(zip(setup.stages, setup.trainables)):
        if index < len(state["stages"]):
            _stage_ended(config, state["stages"][index])  # finished before a restart
            continue
        if index > 0:
            load_stage_weights(setup.net, state["stages"][index - 1]["best_checkpoint"], run.path,
                               run.path / STATE_FILE)
        started = time.perf_counter()
        outcome = train_stage(ctx, stage, index, trainable, levels[index])
        state["stages"].append({"index": index + 1, "train": stage.train, **outcome,
                                "seconds": round(time.perf_counter() - started, 3)})
        write_json(run.path / STATE_FILE, state)
        _stage_ended(config, state["stages"][-1])


def _stage_ended(config: FinetuneConfig, outcome: dict) -> None:
    if config.on_stage_end is not None:
        config.on_stage_end(dict(outcome))


def _finish(config: FinetuneConfig, setup: TrainingSetup, ctx: StageContext, run: RunDir, state: dict,
            baseline: dict | None, resolved: dict, timer: Timer) -> RunResult:
    recipe, net, backbone = config.recipe, setup.net, setup.backbone
    best = max(state["stages"], key=lambda s: s["best_val_acc"])
    load_stage_weights(net, best["best_checkpoint"], run.path, run.path / STATE_FILE)
    net.eval()
    stores = {"val": ctx.val_store}
    if setup.data.test_scan is not None:
        stores["test"] = load_images(setup.data.test_scan.samples, setup.resolution, backbone.interpolation,
                                     config.workers, config.progress, "decoding test")
    # Scored as predict, serve and export run the model (fp32), not in the training precision:
    # the report states what the saved model does (the probe does the same, see _extract_groups).
    splits = [SplitPredictions(name, store.paths, store.labels.numpy(),
                               predict_probabilities(net, store.images, INFERENCE_PRECISION, recipe.tta))
              for name, store in stores.items()]
    evaluated = splits[-1].name
    features = {evaluated: pooled_features(net, stores[evaluated].images, setup.precision)} if config.embed else {}
    failures = ctx.train_store.failures + sum((s.failures for s in stores.values()), [])
    skipped = [[str(p), r] for p, r in failures] + [[str(s.path), s.reason] for s in setup.data.skipped]
    plot_training_curves(run.path / "logs", len(setup.stages), run.plots_dir / "training_curves.png")
    net_float = net.float()
    end = RunEnd(
        kind="finetune", title=f"{recipe.backbone} fine-tuned",
        report_title=f"transferlab finetune: {setup.scan.root.name}", classes=setup.scan.classes, splits=splits,
        skipped=skipped, notes=list(setup.data.notes), summary=_summary(setup, ctx, state, best, len(skipped)),
        config=resolved, card=_card(config, setup), save_weights=partial(_save_weights, net), seed=recipe.seed,
        cam=CamSource(net_float, target_layer(net.backbone), net.normalise, setup.resolution, backbone.interpolation),
        baseline=baseline, baseline_name=config.baseline or "", features=features,
        extra_metrics={"stages": state["stages"]}, error_grid=config.error_grid, embed=config.embed,
    )
    return finish_run(run, end, timer)


def _summary(setup: TrainingSetup, ctx: StageContext, state: dict, best: dict, n_skipped: int) -> dict:
    data, backbone = setup.data, setup.backbone
    return {
        **data_summary(data),
        "backbone": f"{backbone.name} ({backbone.source} weights)",
        "method": "fine-tune: " + " -> ".join(s.train for s in setup.stages),
        "best stage": f"{best['index']} (val acc {best['best_val_acc']:.4f})",
        "resolution": f"{setup.resolution}px",
        "precision": setup.precision,
        "images": {"train": len(ctx.train_store.labels), "val": len(ctx.val_store.labels)},
        "skipped": n_skipped,
        "epochs": sum(s["epochs_run"] for s in state["stages"]),
    }


def _card(config: FinetuneConfig, setup: TrainingSetup) -> ModelCard:
    recipe, backbone = config.recipe, setup.backbone
    return ModelCard(kind="finetune", classes=list(setup.scan.classes), backbone=recipe.backbone,
                     resolution=setup.resolution, mean=backbone.mean, std=backbone.std,
                     interpolation=backbone.interpolation, weights_source=backbone.source,
                     precision=setup.precision, inference_precision=INFERENCE_PRECISION, head=list(recipe.head),
                     tta=tta_mode(recipe.tta), cut_after=config.cut_after)


def _save_weights(net: FinetuneNet, model_dir: Path) -> None:
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    with atomic_path(model_dir / "network.safetensors") as tmp:  # atomic, with ordinary permissions
        save_file(state, str(tmp))
