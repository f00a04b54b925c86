"""Learning-rate range test for a recipe's first stage, on Lightning's `Tuner.lr_find`.

The learning rate grows exponentially from `min_lr` to `max_lr` over `steps` batches while
the training loss is recorded; the suggestion is the rate where the loss falls fastest
per decade (see `suggest_learning_rate`).
The test trains what the first stage trains, on the same inputs (and sampler): when the lower
units are frozen it runs on their cached activations (one augmentation draw), so on a CPU
it costs one caching pass plus `steps` cheap batches. Nothing of the run is kept: the
network is restored afterwards, and only `lr_find.json` and `plots/lr_find.png` are written.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.tuner import Tuner
from torch.utils.data import TensorDataset

from transferlab.atomic import write_json
from transferlab.errors import TransferlabError
from transferlab.finetune.augment import build_batch_augmentation
from transferlab.finetune.data import (
    MAX_CACHE_BYTES,
    DrawDataset,
    activation_bytes,
    cached_activations,
    load_images,
    own_generator,
    training_loader,
)
from transferlab.finetune.lit import StageModule, epoch_seed
from transferlab.finetune.progress import progress_callbacks
from transferlab.finetune.train import class_weights_of, first_trained_unit, quiet_lightning
from transferlab.pipelines.finetune import TrainingSetup, prepare_training
from transferlab.pipelines.finetune_config import FinetuneConfig
from transferlab.plotting import plt
from transferlab.plotting import save_figure as _save
from transferlab.runs import check_apart, check_out_folder


LR_FIND_FILES = {"lr_find.json": None, "plots": {"lr_find.png"}}  # what the range test writes


def check_lr_find_folder(out: str | Path, reads: tuple) -> None:
    """The range test writes lr_find.json and plots/lr_find.png: into a new or empty folder, a run
    folder, or over its own earlier ones; never into a user's folder or the image folder."""
    folder = Path(out)
    check_apart(folder, reads)
    if folder.is_dir() and not folder.is_symlink() and all(_own_lr_file(p) for p in folder.iterdir()):
        return
    check_out_folder(folder)


def _own_lr_file(path: Path) -> bool:
    if path.is_symlink() or path.name not in LR_FIND_FILES:
        return False
    inside = LR_FIND_FILES[path.name]
    if inside is None:
        return path.is_file()
    return path.is_dir() and all(p.name in inside and p.is_file() and not p.is_symlink() for p in path.iterdir())


@dataclass
class LrFindResult:
    suggestion: float | None  # None when the loss never fell steadily (too few steps, or diverged at once)
    lrs: list[float]
    losses: list[float]
    stage: str  # what the first stage trains, e.g. "head"
    recipe_lr: float  # the first stage's rate as the recipe has it, in field `lr_field`
    lr_field: str  # "head_lr" for a head-only stage that sets it, else "lr"
    record: Path
    plot: Path


def find_learning_rate(config: FinetuneConfig, min_lr: float = 1e-6, max_lr: float = 1.0,
                       steps: int = 100) -> LrFindResult:
    if not 0 < min_lr < max_lr:
        raise TransferlabError(f"the learning-rate range must satisfy 0 < min < max, got {min_lr} .. {max_lr}")
    if steps < 20:
        raise TransferlabError(f"--lr-find-steps must be at least 20 (the suggestion skips the first 10), got {steps}")
    check_lr_find_folder(config.out, (config.data, config.test))
    setup = prepare_training(config)
    stage, trainable = setup.stages[0], setup.trainables[0]
    module, loader, level = _first_stage(config, setup)
    finder = _sweep(module, loader, setup.precision, config.progress, min_lr, max_lr, steps)
    # Lightning's own smoothed losses are biased low over the first few dozen steps (its bias
    # correction counts from global_step + 1, already 1 at the first point: the first value
    # is half the true loss); smooth the raw per-step losses instead.
    raw = module.loss_trace[:len(finder.results.get("lr", []))]
    lrs = [float(v) for v in finder.results.get("lr", [])][:len(raw)]
    lrs, raw, losses = cut_at_divergence(lrs, raw)
    suggestion = suggest_learning_rate(lrs, losses)

    # The sweep gives every parameter group the same rate. A head-only stage trains with
    # head_lr when it sets one; otherwise the suggestion is for lr (head_lr and layer_decay
    # then stay relative choices of the recipe).
    lr_field = "head_lr" if trainable == ["head"] and stage.head_lr else "lr"
    recipe_lr = float(getattr(stage, lr_field))
    out = Path(config.out)
    record = out / "lr_find.json"
    write_json(record, {"stage": stage.train, "lr_field": lr_field, "recipe_lr": recipe_lr, "suggestion": suggestion,
                        "min_lr": min_lr, "max_lr": max_lr, "steps": len(lrs), "lr": lrs, "loss": losses, "raw_loss": raw,
                        "resolution": setup.resolution, "precision": setup.precision,
                        "cached_below_unit": level})
    plot = plot_lr_find(lrs, losses, suggestion, recipe_lr, out / "plots" / "lr_find.png")
    return LrFindResult(suggestion, lrs, losses, stage.train, recipe_lr, lr_field, record, plot)


def _first_stage(config: FinetuneConfig, setup: TrainingSetup):
    """The first stage's module and training loader (on cached activations when its lower units are frozen)."""
    recipe, net, stage, trainable = config.recipe, setup.net, setup.stages[0], setup.trainables[0]
    store = load_images(setup.split.train, setup.resolution, setup.backbone.interpolation, config.workers,
                        config.progress, "decoding train")
    augmentation = build_batch_augmentation(recipe.augment, setup.resolution)
    level = first_trained_unit(net, trainable)
    if level > 0 and activation_bytes(net, store, level, 1) > MAX_CACHE_BYTES:
        level = 0
    if level > 0:
        activations = cached_activations(net, store, level, augmentation, epoch_seed(recipe.seed, level, 10_000),
                                         setup.precision, progress=config.progress,
                                         desc=f"frozen units below {level}")
        dataset = DrawDataset([activations], store.labels)
    else:
        dataset = TensorDataset(store.images, store.labels)
    loader = training_loader(dataset, store.labels, recipe.batch_size, epoch_seed(recipe.seed, 0, 0),
                             recipe.balance == "sampler", own_generator(recipe.seed))
    class_weights = class_weights_of(store, len(setup.scan.classes)) if recipe.balance == "weights" else None
    module = StageModule(net, recipe, stage, 0, trainable, level, class_weights,
                         augment=augmentation if level == 0 else None)
    module.loss_trace = []
    return module, loader, level


def _sweep(module, loader, precision: str, progress: bool, min_lr: float, max_lr: float, steps: int):
    """Lightning's range test over `steps` batches, its bars and warnings kept quiet."""
    quiet_lightning()
    bars, show_bar = progress_callbacks(progress, "lr range test")
    with tempfile.TemporaryDirectory(prefix="transferlab-lr-find-") as scratch:
        trainer = L.Trainer(
            max_epochs=math.ceil(steps / max(1, len(loader))) + 1,  # small folders: the test spans epochs
            accelerator="cpu", devices=1, precision="bf16-mixed" if precision == "bf16" else "32-true",
            logger=False, enable_checkpointing=False, enable_progress_bar=show_bar, callbacks=bars,
            enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=scratch,
        )
        with warnings.catch_warnings():
            for message in (".*does not have many workers.*", ".*module\\(s\\) in eval mode.*",
                            ".*no `val_dataloader`.*", ".*LeafSpec.*"):
                warnings.filterwarnings("ignore", message)
            # The range test draws its own progress bar (on stderr) whatever the Trainer says:
            # hidden wherever the Trainer's bars are.
            with contextlib.nullcontext() if show_bar else contextlib.redirect_stderr(io.StringIO()):
                # early_stop_threshold=None: Lightning's divergence check runs on its own
                # mis-smoothed losses; the sweep is cut below, on ours.
                return Tuner(trainer).lr_find(module, train_dataloaders=loader, min_lr=min_lr, max_lr=max_lr,
                                              num_training=steps, update_attr=False, early_stop_threshold=None)


# The first steps say little: the running mean has seen only a few batches.
SKIP_BEGIN = 10


def smoothed(losses: list[float], beta: float = 0.98) -> list[float]:
    """Exponential moving average with bias correction (exact from the first step)."""
    out, average = [], 0.0
    for step, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta ** step))
    return out


def cut_at_divergence(lrs: list[float], raw: list[float], factor: float = 4.0
                      ) -> tuple[list[float], list[float], list[float]]:
    """The sweep up to its first non-finite loss, or until the smoothed loss passes `factor`
    times its best so far (past there it only diverges): (lrs, raw losses, smoothed losses)."""
    finite = next((i for i, v in enumerate(raw) if not math.isfinite(v)), len(raw))
    lrs, raw = lrs[:finite], raw[:finite]
    losses = smoothed(raw)
    best = math.inf
    for index, value in enumerate(losses):
        if index > SKIP_BEGIN and value > factor * best:
            return lrs[:index + 1], raw[:index + 1], losses[:index + 1]
        best = min(best, value)
    return lrs, raw, losses


def suggest_learning_rate(lrs: list[float], losses: list[float], skip_begin: int = SKIP_BEGIN,
                          skip_end: int = 1) -> float | None:
    """The rate where the loss falls fastest per decade, before its minimum (None if it never falls).

    Not Lightning's `_LRFinder.suggestion()`: that differentiates against the linear rate,
    and on an exponential sweep the tiny spacing at the low end inflates the slope there,
    so it picks a rate in the flat region (measured on Architectural Heritage: 6.3e-05 where
    the loss had not started to fall; the steepest fall per decade was at 3.0e-03). The slope
    per decade, as in fastai's `steep` rule, matches what the curve shows.
    """
    if len(lrs) != len(losses):
        raise ValueError(f"{len(lrs)} learning rates but {len(losses)} losses")
    lr = np.asarray(lrs[skip_begin:len(lrs) - skip_end], dtype=float)
    loss = np.asarray(losses[skip_begin:len(losses) - skip_end], dtype=float)
    finite = np.isfinite(loss) & (lr > 0)
    lr, loss = lr[finite], loss[finite]
    if len(loss) < 3:
        return None
    stop = int(np.argmin(loss)) + 1  # past the minimum the loss only diverges
    if stop < 3:
        return None
    slope = np.gradient(loss[:stop], np.log10(lr[:stop]))
    steepest = int(np.argmin(slope))
    return float(lr[steepest]) if slope[steepest] < 0 else None


def plot_lr_find(lrs: list[float], losses: list[float], suggestion: float | None, recipe_lr: float,
                 out_png: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    try:
        ax.plot(lrs[SKIP_BEGIN:], losses[SKIP_BEGIN:], color="tab:blue")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss (smoothed)")
        ax.set_title(f"learning-rate range test (first stage; first {SKIP_BEGIN} steps left out)", fontsize=10)
        ax.axvline(recipe_lr, color="grey", linestyle="--", linewidth=1, label=f"recipe lr {recipe_lr:g}")
        if suggestion is not None:
            ax.axvline(suggestion, color="tab:red", linewidth=1.5, label=f"suggested {suggestion:.2g}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return _save(fig, out_png)
    finally:
        plt.close(fig)
