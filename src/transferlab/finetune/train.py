"""Training one unfreezing stage with Lightning: loaders, checkpoints, early stopping.

Each stage is one Lightning `Trainer.fit` with its own optimizer, schedule, early stopping
and checkpoints (`checkpoints/stageK/{best,last}.ckpt`). What every stage shares (network,
recipe, decoded images, the activation cache) travels in one `StageContext`; turning a
recipe into a finished run folder is the job of `pipelines.finetune`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import TensorDataset

from transferlab.errors import TransferlabError
from transferlab.finetune.curves import keep_partial_log, stage_log_dir
from transferlab.finetune.data import (
    MAX_CACHE_BYTES,
    DrawDataset,
    ImageStore,
    activation_bytes,
    cached_activations,
    own_generator,
    tensor_loader,
    training_loader,
)
from transferlab.finetune.lit import StageModule, epoch_seed
from transferlab.finetune.network import FinetuneNet
from transferlab.finetune.progress import progress_callbacks
from transferlab.finetune.recipe import Recipe, Stage
from transferlab.finetune.resume import (
    StageCheckpoint,
    checkpoint_in_run,
    load_checkpoint,
    outcome_from_checkpoint,
    resume_checkpoint,
    stage_dir,
)


@dataclass
class StageContext:
    """What every stage of one run shares, built once."""

    net: FinetuneNet
    recipe: Recipe
    train_store: ImageStore
    val_store: ImageStore
    augmentation: object  # batch augmentation (or None)
    class_weights: torch.Tensor | None
    precision: str  # "fp32" or "bf16"
    run_path: Path  # checkpoints/ and logs/ live here
    wall_origin: float  # time.time() at the start of the run: logged per epoch
    progress: bool = True
    mlflow_uri: str | None = None
    activation_cache: dict = field(default_factory=dict)  # level -> (train draws, val activations)
    extra_callbacks: Callable[[int], list] | None = None  # stage index -> more Lightning callbacks


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


def train_stage(ctx: StageContext, stage: Stage, index: int, trainable: list[str], level: int) -> dict:
    """Train stage `index` (0-based) from its last checkpoint if one exists; its outcome as a dict."""
    recipe, net = ctx.recipe, ctx.net
    # Refuses, in one line and before any work or Lightning reads or writes anything: links where
    # the stage writes, a last.ckpt of anything but plain tensors, a callback state naming files
    # outside the stage folder (Lightning would delete them). None: the stage starts afresh.
    resume_from = resume_checkpoint(ctx.run_path, index + 1)
    if level > 0 and level not in ctx.activation_cache and \
            activation_bytes(net, ctx.train_store, level, recipe.augment_draws + 1) > MAX_CACHE_BYTES:
        level = 0  # too big to cache: run the frozen units every step instead
    if level not in ctx.activation_cache:
        ctx.activation_cache.clear()  # a new cut point: the old cache is stale or unused from here on
    train_loader, val_loader = _loaders(ctx, index, level)
    module = StageModule(net, recipe, stage, index, trainable, level, ctx.class_weights, ctx.wall_origin,
                         augment=ctx.augmentation if level == 0 else None)
    checkpoint_dir = stage_dir(ctx.run_path, index + 1)
    checkpoint = StageCheckpoint(dirpath=checkpoint_dir, filename="best", monitor="val_acc", mode="max",
                                 save_top_k=1)
    # Every epoch, not Lightning's save_last: that (2.6) rewrites last.ckpt only in epochs that
    # also improved the best, so a kill after a few epochs without progress lost them all.
    latest = StageCheckpoint(dirpath=checkpoint_dir, filename="last", monitor=None, save_top_k=1,
                             enable_version_counter=False)
    last = checkpoint_dir / "last.ckpt"
    if resume_from is not None:
        keep_partial_log(stage_log_dir(ctx.run_path / "logs", index + 1))
    extra = ctx.extra_callbacks(index) if ctx.extra_callbacks is not None else []
    trainer = _trainer(ctx, stage, index, [EarlyStopping(monitor="val_loss", mode="min", patience=stage.patience),
                                           checkpoint, latest, *extra])
    with warnings.catch_warnings():
        # Expected here: frozen units sit in eval mode, data is in memory (no workers needed).
        for message in (".*does not have many workers.*", ".*module\\(s\\) in eval mode.*",
                        ".*smaller than the logging interval.*", ".*LeafSpec.*", ".*ModelCheckpoint.*",
                        ".*Experiment logs directory.*"):  # a resumed stage's log was moved aside first
            warnings.filterwarnings("ignore", message)
        # weights_only=True, explicitly: Lightning's default (None) lets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD
        # turn the restore into a full unpickling of whatever last.ckpt holds.
        resume_path = str(resume_from) if resume_from else None
        trainer.fit(module, train_loader, val_loader, weights_only=True, ckpt_path=resume_path)
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


def _trainer(ctx: StageContext, stage: Stage, index: int, callbacks: list) -> L.Trainer:
    loggers = [CSVLogger(ctx.run_path / "logs", name=f"stage{index + 1}", version=0)]
    if ctx.mlflow_uri:
        from lightning.pytorch.loggers import MLFlowLogger

        loggers.append(MLFlowLogger(experiment_name="transferlab", tracking_uri=ctx.mlflow_uri))
    quiet_lightning()
    bars, show_bar = progress_callbacks(ctx.progress, f"stage {index + 1}")
    processes = ctx.recipe.processes
    return L.Trainer(
        max_epochs=stage.epochs,
        accelerator="cpu",
        devices=processes,
        strategy="ddp_spawn" if processes > 1 else "auto",
        precision="bf16-mixed" if ctx.precision == "bf16" else "32-true",
        callbacks=[*callbacks, *bars],
        logger=loggers,
        enable_progress_bar=show_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        deterministic=False,
    )


def quiet_lightning() -> None:
    """Lightning's banners (GPU/TPU availability, tips) say nothing useful on a CPU run."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _loaders(ctx: StageContext, index: int, level: int):
    recipe, train_store, val_store = ctx.recipe, ctx.train_store, ctx.val_store
    if level == 0:
        train = TensorDataset(train_store.images, train_store.labels)  # augmented per batch in the module
        val = val_store.images
    else:
        if level not in ctx.activation_cache:
            # Draw seeds depend on the cut, not the stage, so a resumed run recomputes the same cache.
            cached = [
                cached_activations(ctx.net, train_store, level, ctx.augmentation,
                                   epoch_seed(recipe.seed, level, 10_000 + d), ctx.precision,
                                   progress=ctx.progress, desc=f"frozen units below {level}, draw {d + 1}")
                for d in range(recipe.augment_draws)
            ]
            ctx.activation_cache[level] = (cached, cached_activations(ctx.net, val_store, level, None, None,
                                                                      ctx.precision))
        cached, val = ctx.activation_cache[level]
        train = DrawDataset(cached, train_store.labels)
    single = recipe.processes == 1  # see own_generator
    train_loader = training_loader(train, train_store.labels, recipe.batch_size, epoch_seed(recipe.seed, index, 0),
                                   recipe.balance == "sampler", own_generator(recipe.seed) if single else None)
    val_loader = tensor_loader(val, val_store.labels, max(recipe.batch_size, 128),
                               own_generator(recipe.seed) if single else None)
    return train_loader, val_loader


def load_stage_weights(net: FinetuneNet, checkpoint_path: str, run_path: Path, state_file: Path) -> None:
    """A stage's best weights; the path comes from the state file, so it must lie in the run."""
    file = checkpoint_in_run(checkpoint_path, run_path, str(state_file))
    checkpoint = load_checkpoint(file)
    state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or ["mismatch"])[0]
        raise TransferlabError(f"{file}: weights do not fit this network ({first})") from None
