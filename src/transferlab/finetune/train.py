"""`run_finetune`: staged fine-tuning with Lightning, exact resume, and the shared report.

Each stage is one Lightning `Trainer.fit` with its own optimizer, schedule, early stopping
and checkpoints (`checkpoints/stageK/{best,last}.ckpt`). `finetune_state.json` records
finished stages; a killed run resumes from the last checkpoint of the stage it was in.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from safetensors.torch import save_file
from torch.utils.data import TensorDataset

from transferlab.atomic import atomic_path, write_json
from transferlab.backbones import create_backbone
from transferlab.backbones.registry import Backbone
from transferlab.data.folder import FolderScan
from transferlab.data.layout import PreparedData, prepare_data
from transferlab.data.split import Split, save_split
from transferlab.errors import TransferlabError
from transferlab.evaluation import CamSource, SplitPredictions, evaluate_run
from transferlab.explain.cam import target_layer
from transferlab.features.extract import default_workers
from transferlab.features.resolution import choose_resolution
from transferlab.finetune.augment import build_batch_augmentation
from transferlab.finetune.curves import keep_partial_log, plot_training_curves, stage_log_dir
from transferlab.finetune.data import (
    MAX_CACHE_BYTES,
    DrawDataset,
    ImageStore,
    activation_bytes,
    cached_activations,
    load_images,
    own_generator,
    tensor_loader,
    training_loader,
)
from transferlab.finetune.groups import expand_group_spec
from transferlab.finetune.lit import StageModule, epoch_seed
from transferlab.finetune.network import FinetuneNet
from transferlab.finetune.progress import progress_callbacks
from transferlab.finetune.recipe import Recipe, Stage, recipe_from_saved, recipe_to_dict, resolve_stages
from transferlab.finetune.resume import (
    check_resumable,
    checkpoint_in_run,
    load_checkpoint,
    outcome_from_checkpoint,
    read_state,
)
from transferlab.options import check_file, check_folder
from transferlab.precision import INFERENCE_PRECISION, resolve_precision
from transferlab.report.baseline import check_baseline_classes, load_baseline
from transferlab.report.html import render_report
from transferlab.runs import RunDir, check_out_folder

STATE_FILE = "finetune_state.json"


@dataclass
class FinetuneConfig:
    data: str
    out: str
    recipe: Recipe
    test: str | None = None
    baseline: str | None = None
    baseline_partial: bool = False  # compare the shared classes when the baseline names others too
    exclude: str | None = None  # an exclude list (doctor --write-exclude): files left out
    workers: int = dataclasses.field(default_factory=default_workers)
    error_grid: int = 12
    mlflow_uri: str | None = None
    progress: bool = True  # progress bars on stderr, and only where stderr is a terminal
    # Called with each stage's outcome as the stage ends (the dict that metrics["stages"] lists:
    # index, train, level, processes, epochs_run, best_val_acc, best_checkpoint, seconds), so a
    # caller can print it then; on resume, first for the stages finished before the restart.
    on_stage_end: Callable[[dict], None] | None = None


@dataclass
class FinetuneResult:
    run_dir: Path
    metrics: dict
    summary: dict
    warnings: list[str]
    baseline_table: str | None


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
                        exclude=config.exclude)
    scan, split = data.scan, data.split
    backbone = create_backbone(recipe.backbone, recipe.weights)
    resolution = recipe.resolution or choose_resolution([s.path for s in split.train], backbone.native_size)[0]
    precision = resolve_precision(recipe.precision)
    # The head's initial weights are drawn here, and torch's start-up seed differs in every
    # process: without this, two runs of one recipe would start from different heads.
    torch.manual_seed(recipe.seed)
    net = FinetuneNet(backbone.model, len(scan.classes), recipe.head, backbone.mean, backbone.std)
    stages = resolve_stages(recipe, list(net.group_params))
    all_groups = list(net.group_params) + ["head"]
    trainables = [expand_group_spec(stage.train, all_groups) for stage in stages]  # fails before training
    return TrainingSetup(data, scan, split, backbone, resolution, precision, net, stages, trainables)


def run_finetune(config: FinetuneConfig, resume: bool = False) -> FinetuneResult:
    started = time.perf_counter()
    wall_origin = time.time()
    check_folder(config.data)
    check_folder(config.test, "test folder")
    check_file(config.baseline, "baseline CSV")
    check_file(config.exclude, "exclude list")
    if not resume:
        check_out_folder(config.out)
    baseline = load_baseline(config.baseline) if config.baseline else None
    setup = prepare_training(config)
    if baseline is not None:
        check_baseline_classes(baseline, setup.scan.classes, config.baseline, config.baseline_partial)
    run = RunDir(config.out)
    state = _open_state(run, _fingerprint(config, setup.split, setup.scan.classes), resume)
    with run.recording("finetune"):
        return _train_and_report(config, setup, run, state, baseline, started, wall_origin)


def _train_and_report(config: FinetuneConfig, setup: TrainingSetup, run: RunDir, state: dict,
                      baseline: dict | None, started: float, wall_origin: float) -> FinetuneResult:
    recipe = config.recipe
    scan, split, backbone, net = setup.scan, setup.split, setup.backbone, setup.net
    resolution, precision, stages, trainables = setup.resolution, setup.precision, setup.stages, setup.trainables
    test_scan = setup.data.test_scan
    resolved = recipe_to_dict(recipe, stages)
    resolved["resolution"] = resolution
    run.write_config(resolved)
    save_split(split, run.path / "split.json", setup.data.root)

    torch.manual_seed(recipe.seed)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    train_store = load_images(split.train, resolution, backbone.interpolation, config.workers, config.progress,
                              "decoding train")
    val_store = load_images(split.val, resolution, backbone.interpolation, config.workers, config.progress,
                            "decoding val")
    timings["decode"] = round(time.perf_counter() - t0, 3)
    augmentation = build_batch_augmentation(recipe.augment, resolution)
    class_weights = class_weights_of(train_store, len(scan.classes)) if recipe.balance == "weights" else None

    input_levels = cache_levels([first_trained_unit(net, t) for t in trainables])
    activation_cache: dict = {}
    for index, (stage, trainable) in enumerate(zip(stages, trainables)):
        if index < len(state["stages"]):
            _stage_ended(config, state["stages"][index])  # finished before a restart
            continue
        if index > 0:
            _load_weights(net, state["stages"][index - 1]["best_checkpoint"], run)
        t_stage = time.perf_counter()
        result = _train_stage(run, net, recipe, stage, index, trainable, input_levels[index], activation_cache,
                              train_store, val_store, augmentation, class_weights, precision, config, wall_origin)
        state["stages"].append({"index": index + 1, "train": stage.train, **result,
                                "seconds": round(time.perf_counter() - t_stage, 3)})
        write_json(run.path / STATE_FILE, state)
        _stage_ended(config, state["stages"][-1])
    timings["train"] = round(sum(s["seconds"] for s in state["stages"]), 3)

    best = max(state["stages"], key=lambda s: s["best_val_acc"])
    _load_weights(net, best["best_checkpoint"], run)
    net.eval()
    t0 = time.perf_counter()
    splits = [SplitPredictions("val", val_store.paths, val_store.labels.numpy(),
                               predict_probabilities(net, val_store.images, precision, recipe.tta))]
    failures = train_store.failures + val_store.failures
    if test_scan is not None:
        test_store = load_images(test_scan.samples, resolution, backbone.interpolation, config.workers,
                                 config.progress, "decoding test")
        failures += test_store.failures
        splits.append(SplitPredictions("test", test_store.paths, test_store.labels.numpy(),
                                       predict_probabilities(net, test_store.images, precision, recipe.tta)))
    skipped = [[str(p), r] for p, r in failures]
    skipped += [[str(s.path), s.reason] for s in setup.data.skipped]
    run.write_csv("skipped.csv", ["path", "reason"], skipped)
    net_float = net.float()
    cam = CamSource(net_float, target_layer(net.backbone), net.normalise, resolution, backbone.interpolation)
    evaluation = evaluate_run(run, scan.classes, splits, title=f"{recipe.backbone} fine-tuned", baseline=baseline,
                              baseline_name=config.baseline or "", cam=cam, error_grid=config.error_grid)
    timings["evaluate"] = round(time.perf_counter() - t0, 3)
    plot_training_curves(run.path / "logs", len(stages), run.plots_dir / "training_curves.png")
    _save_model(run, net, recipe, backbone, scan.classes, resolution, precision)

    warnings_list = list(setup.data.notes) + evaluation.warnings  # notes hold the split's warnings
    if skipped:
        warnings_list.append(f"{len(skipped)} files skipped (listed in {run.path / 'skipped.csv'})")
    summary = {
        "data": str(scan.root),
        **({"test": str(test_scan.root)} if test_scan else {}),
        "backbone": f"{backbone.name} ({backbone.source} weights)",
        "method": "fine-tune: " + " -> ".join(s.train for s in stages),
        "best stage": f"{best['index']} (val acc {best['best_val_acc']:.4f})",
        "resolution": f"{resolution}px",
        "precision": precision,
        "images": {"train": len(train_store.labels), "val": len(val_store.labels)},
        "skipped": len(skipped),
        "epochs": sum(s["epochs_run"] for s in state["stages"]),
    }
    metrics = evaluation.metrics
    metrics["stages"] = state["stages"]
    metrics["timings"] = {**timings, "total": round(time.perf_counter() - started, 3)}
    metrics["summary"] = summary
    metrics["warnings"] = warnings_list
    write_json(run.path / "metrics.json", metrics)
    render_report(run.path, title=f"transferlab finetune: {scan.root.name}", summary=summary,
                  sections=evaluation.sections)
    run.finish("finetune")
    return FinetuneResult(run.path, metrics, summary, warnings_list, evaluation.baseline_table)


def _fingerprint(config: FinetuneConfig, split, classes: list[str]) -> dict:
    """What a resumed run must share with the original: backbone, data, split, recipe."""
    return json.loads(json.dumps({
        "data": str(Path(config.data).resolve()),
        "test": str(Path(config.test).resolve()) if config.test else None,
        "baseline": str(Path(config.baseline).resolve()) if config.baseline else None,
        "baseline_partial": config.baseline_partial,
        "exclude": str(Path(config.exclude).resolve()) if config.exclude else None,
        "classes": classes,
        "files": len(split.train) + len(split.val),
        "recipe": _recipe_fingerprint(config.recipe),
    }))


def _recipe_fingerprint(recipe: Recipe) -> dict:
    data = recipe_to_dict(recipe, []) | {"stages": recipe.stages}
    # The overrides (--epochs, --lr) when unset are left out: runs killed before they existed
    # recorded recipes without them, and still resume.
    return {k: v for k, v in data.items() if not (k in ("epochs", "lr") and v is None)}


def _open_state(run: RunDir, fingerprint: dict, resume: bool) -> dict:
    state_path = run.path / STATE_FILE
    if not resume:
        run.start("finetune")
        state = {"fingerprint": fingerprint, "stages": []}
        write_json(state_path, state)
        return state
    if not state_path.is_file():
        raise TransferlabError(f"{run.path}: nothing to resume (no {STATE_FILE})")
    state = read_state(state_path)
    old = state["fingerprint"]
    for key, what in (("data", "dataset"), ("classes", "class list"), ("files", "number of images")):
        if old.get(key) != fingerprint[key]:
            raise TransferlabError(f"{run.path}: resume points at a run of another {what} "
                                   f"({old.get(key)!r} there, {fingerprint[key]!r} now)")
    if old.get("recipe", {}).get("backbone") != fingerprint["recipe"]["backbone"]:
        raise TransferlabError(f"{run.path}: resume points at a run of backbone "
                               f"'{old.get('recipe', {}).get('backbone')}', not '{fingerprint['recipe']['backbone']}'")
    if old.get("recipe") != fingerprint["recipe"]:
        raise TransferlabError(f"{run.path}: the recipe differs from the run's; resume without changing it")
    check_resumable(state, run.path)
    run.resume("finetune")
    return state


def class_weights_of(store: ImageStore, n_classes: int) -> torch.Tensor:
    counts = torch.bincount(store.labels, minlength=n_classes).float().clamp(min=1)
    return counts.sum() / (n_classes * counts)


def first_trained_unit(net: FinetuneNet, trainable: list[str]) -> int:
    """The first unit that trains: everything below it is frozen and can be cached."""
    for index, groups in enumerate(net.unit_groups()):
        if any(g in trainable for g in groups):
            return index
    return net.n_units


def cache_levels(levels: list[int]) -> list[int]:
    """Where each stage's input is cut: the lowest trained unit of its run of cached stages.

    Consecutive stages that all keep a frozen prefix share one activation cache, taken at
    the lowest of their levels: none of them trains a unit below it, so the cache computed
    for the first stays exact for the rest (a head-only stage then runs the few frozen
    units above the cut itself, instead of paying for its own cache).
    """
    result = []
    for index, level in enumerate(levels):
        if level == 0:
            result.append(0)
            continue
        lowest = level
        for later in levels[index + 1:]:
            if later == 0:
                break
            lowest = min(lowest, later)
        earlier = result[-1] if result and levels[index - 1] > 0 else None
        result.append(earlier if earlier is not None else lowest)
    return result


def _train_stage(run: RunDir, net: FinetuneNet, recipe: Recipe, stage: Stage, index: int, trainable: list[str],
                 level: int, activation_cache: dict, train_store: ImageStore, val_store: ImageStore, augmentation,
                 class_weights, precision: str, config: FinetuneConfig, wall_origin: float) -> dict:
    draws = recipe.augment_draws
    if level > 0 and level not in activation_cache and activation_bytes(net, train_store, level, draws + 1) > MAX_CACHE_BYTES:
        level = 0  # too big to cache: run the frozen units every step instead
    if level not in activation_cache:
        activation_cache.clear()  # a new cut point: the old cache is stale or unused from here on
    train_loader, val_loader = _loaders(net, recipe, index, level, draws, activation_cache, train_store,
                                        val_store, augmentation, precision, config.progress)
    module = StageModule(net, recipe, stage, index, trainable, level, class_weights, wall_origin,
                         augment=augmentation if level == 0 else None)
    checkpoint_dir = run.path / "checkpoints" / f"stage{index + 1}"
    checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, filename="best", monitor="val_acc", mode="max",
                                 save_top_k=1)
    # Every epoch, not Lightning's save_last: that (2.6) rewrites last.ckpt only in epochs that
    # also improved the best, so a kill after a few epochs without progress lost them all.
    latest = ModelCheckpoint(dirpath=checkpoint_dir, filename="last", monitor=None, save_top_k=1,
                             enable_version_counter=False)
    last = checkpoint_dir / "last.ckpt"
    if last.exists():
        load_checkpoint(last)  # refuses anything but plain tensors and containers, in one line, before Lightning
        keep_partial_log(stage_log_dir(run.path / "logs", index + 1))
    loggers = [CSVLogger(run.path / "logs", name=f"stage{index + 1}", version=0)]
    if config.mlflow_uri:
        from lightning.pytorch.loggers import MLFlowLogger

        loggers.append(MLFlowLogger(experiment_name="transferlab", tracking_uri=config.mlflow_uri))
    quiet_lightning()
    bars, show_bar = progress_callbacks(config.progress, f"stage {index + 1}")
    trainer = L.Trainer(
        max_epochs=stage.epochs,
        accelerator="cpu",
        devices=recipe.processes,
        strategy="ddp_spawn" if recipe.processes > 1 else "auto",
        precision="bf16-mixed" if precision == "bf16" else "32-true",
        callbacks=[EarlyStopping(monitor="val_loss", mode="min", patience=stage.patience), checkpoint, latest, *bars],
        logger=loggers,
        enable_progress_bar=show_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        deterministic=False,
    )
    with warnings.catch_warnings():
        # Expected here: frozen units sit in eval mode, data is in memory (no workers needed).
        for message in (".*does not have many workers.*", ".*module\\(s\\) in eval mode.*",
                        ".*smaller than the logging interval.*", ".*LeafSpec.*", ".*ModelCheckpoint.*",
                        ".*Experiment logs directory.*"):  # a resumed stage's log was moved aside first
            warnings.filterwarnings("ignore", message)
        # weights_only=True, explicitly: Lightning's default (None) lets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD
        # turn the restore into a full unpickling of whatever last.ckpt holds.
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if last.exists() else None,
                    weights_only=True)
    best_path = checkpoint.best_model_path or str(last)
    epochs_run, best_score = trainer.current_epoch, checkpoint.best_model_score
    if recipe.processes > 1:
        epochs_run, best_score = outcome_from_checkpoint(last)
    return {
        "level": level,
        "processes": trainer.world_size,
        "epochs_run": epochs_run,
        "best_val_acc": float(best_score) if best_score is not None else 0.0,
        "best_checkpoint": str(Path(best_path).resolve()),
    }


def quiet_lightning() -> None:
    """Lightning's banners (GPU/TPU availability, tips) say nothing useful on a CPU run."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _loaders(net, recipe, index, level, draws, activation_cache, train_store, val_store, augmentation, precision,
             progress):
    if level == 0:
        train = TensorDataset(train_store.images, train_store.labels)  # augmented per batch in the module
        val = val_store.images
    else:
        if level not in activation_cache:
            # Draw seeds depend on the cut, not the stage, so a resumed run recomputes the same cache.
            cached = [
                cached_activations(net, train_store, level, augmentation, epoch_seed(recipe.seed, level, 10_000 + d),
                                   precision, progress=progress, desc=f"frozen units below {level}, draw {d + 1}")
                for d in range(draws)
            ]
            activation_cache[level] = (cached, cached_activations(net, val_store, level, None, None, precision))
        cached, val = activation_cache[level]
        train = DrawDataset(cached, train_store.labels)
    single = recipe.processes == 1  # see own_generator
    train_loader = training_loader(train, train_store.labels, recipe.batch_size, epoch_seed(recipe.seed, index, 0),
                                   recipe.balance == "sampler", own_generator(recipe.seed) if single else None)
    val_loader = tensor_loader(val, val_store.labels, max(recipe.batch_size, 128),
                               own_generator(recipe.seed) if single else None)
    return train_loader, val_loader


def _load_weights(net: FinetuneNet, checkpoint_path: str, run: RunDir) -> None:
    """A stage's best weights; the path comes from finetune_state.json, so it must lie in the run."""
    file = checkpoint_in_run(checkpoint_path, run.path, str(run.path / STATE_FILE))
    checkpoint = load_checkpoint(file)
    state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or ["mismatch"])[0]
        raise TransferlabError(f"{file}: weights do not fit this network ({first})") from None


def _stage_ended(config: FinetuneConfig, outcome: dict) -> None:
    if config.on_stage_end is not None:
        config.on_stage_end(dict(outcome))


@torch.inference_mode()
def predict_probabilities(net: FinetuneNet, images: torch.Tensor, precision: str, tta: bool,
                          batch_size: int = 128) -> np.ndarray:
    net.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            probabilities = torch.softmax(net(batch).float(), dim=1)
            if tta:  # horizontal-flip test-time augmentation
                probabilities = (probabilities + torch.softmax(net(batch.flip(-1)).float(), dim=1)) / 2
        out.append(probabilities.float())
    return torch.cat(out).numpy() if out else np.zeros((0, net.head.classifier.out_features))


def _save_model(run: RunDir, net: FinetuneNet, recipe: Recipe, backbone, classes, resolution, precision) -> None:
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    with atomic_path(run.model_dir / "network.safetensors") as tmp:  # atomic, with ordinary permissions
        save_file(state, str(tmp))
    write_json(run.model_dir / "model.json", {
        "kind": "finetune",
        "classes": classes,
        "backbone": recipe.backbone,
        "weights_source": backbone.source,
        "head": recipe.head,
        "resolution": resolution,
        "precision": precision,
        "inference_precision": INFERENCE_PRECISION,
        "tta": recipe.tta,
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "interpolation": backbone.interpolation,
    })


def resume_config(run_path: str | Path, data: str | None = None, backbone: str | None = None,
                  progress: bool = True) -> FinetuneConfig:
    """The configuration of a killed run, checked against what the user passes now."""
    state_path = Path(run_path) / STATE_FILE
    if not state_path.is_file():
        raise TransferlabError(f"{run_path}: nothing to resume (no {STATE_FILE}); is it a fine-tune run?")
    saved = read_state(state_path)["fingerprint"]
    if data is not None and str(Path(data).resolve()) != saved["data"]:
        raise TransferlabError(f"{run_path}: resume points at a run of another dataset ({saved['data']}, not {data})")
    if backbone is not None and backbone != saved["recipe"]["backbone"]:
        raise TransferlabError(f"{run_path}: resume points at a run of backbone '{saved['recipe']['backbone']}', "
                               f"not '{backbone}'")
    recipe = recipe_from_saved(saved["recipe"], f"{state_path} (recipe)")
    def path_or_none(key: str) -> str | None:  # the state file is hostile: a path must be a string
        return saved.get(key) if isinstance(saved.get(key), str) else None

    return FinetuneConfig(data=saved["data"], out=str(run_path), recipe=recipe, test=path_or_none("test"),
                          baseline=path_or_none("baseline"), baseline_partial=saved.get("baseline_partial") is True,
                          exclude=path_or_none("exclude"), progress=progress)
