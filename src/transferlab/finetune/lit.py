"""One unfreezing stage as a LightningModule: which groups train, at which rates.

Optimizers and learning-rate schedules are registries (`OPTIMIZERS`, `SCHEDULES`): a name
in a recipe -> a builder. Their keys must match `recipe.OPTIMIZERS` / `recipe.SCHEDULES`,
the torch-free lists a recipe is validated against (tests/test_finetune_parts.py checks it).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler
from torchmetrics.classification import MulticlassAccuracy

from transferlab.finetune.augment import mix_batch
from transferlab.finetune.network import FinetuneNet
from transferlab.finetune.recipe import Recipe, Stage


def epoch_seed(seed: int, stage_index: int, epoch: int) -> int:
    """Every epoch's randomness derives from (seed, stage, epoch), so a resumed run redraws
    exactly what the uninterrupted run drew."""
    return seed * 1_000_003 + stage_index * 10_007 + epoch


# --- optimizers: name -> builder(parameter groups, weight decay) --------------------------------


def _adamw(groups: list[dict], weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, weight_decay=weight_decay)


def _sgd(groups: list[dict], weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=weight_decay)


OPTIMIZERS: dict[str, Callable[[list[dict], float], torch.optim.Optimizer]] = {"adamw": _adamw, "sgd": _sgd}


# --- schedules: name -> builder(optimizer, total optimizer steps) -> Lightning's lr_scheduler
# config, or None (a constant rate) ------------------------------------------------------------


def _cosine(optimizer: torch.optim.Optimizer, total: int) -> dict:
    return {"scheduler": lr_scheduler.CosineAnnealingLR(optimizer, T_max=total), "interval": "step"}


def _onecycle(optimizer: torch.optim.Optimizer, total: int) -> dict:
    # Each group peaks at its own rate (head_lr, decayed block rates), read before OneCycleLR
    # rewrites them to its starting value.
    peaks = [group["lr"] for group in optimizer.param_groups]
    return {"scheduler": lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total), "interval": "step"}


def _plateau(optimizer: torch.optim.Optimizer, total: int) -> dict:
    return {"scheduler": lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.3, patience=1), "monitor": "val_loss"}


def _constant(optimizer: torch.optim.Optimizer, total: int) -> None:
    return None


SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, int], dict | None]] = {
    "cosine": _cosine,
    "onecycle": _onecycle,
    "plateau": _plateau,
    "constant": _constant,
}


class StageModule(L.LightningModule):
    def __init__(self, net: FinetuneNet, recipe: Recipe, stage: Stage, stage_index: int,
                 trainable: list[str], level: int, class_weights: torch.Tensor | None,
                 time_origin: float | None = None, augment=None):
        super().__init__()
        self.augment = augment  # batch augmentation, for stages that train from the images
        self.time_origin = time_origin if time_origin is not None else time.time()
        self.net = net
        self.recipe, self.stage, self.stage_index = recipe, stage, stage_index
        self.trainable, self.level = trainable, level
        self.class_weights = class_weights
        self.n_classes = net.head.classifier.out_features
        # Accuracy over every sample of the epoch (micro average), not a mean of batch means.
        # Validation syncs its counts across DDP processes when computed, so early stopping and
        # the best checkpoint see the whole validation set. train_acc steers nothing: it stays
        # each process's own shard (the logged figure is rank 0's), with no collective per epoch.
        self.train_accuracy = MulticlassAccuracy(self.n_classes, average="micro", sync_on_compute=False)
        self.val_accuracy = MulticlassAccuracy(self.n_classes, average="micro")
        self.loss_trace: list[float] | None = None  # a list: every step's raw loss is kept (LR range test)
        self._freeze()

    def _freeze(self) -> None:
        names = {name for group in self.trainable if group != "head" for name in self.net.group_params[group]}
        for name, parameter in self.net.backbone.named_parameters():
            parameter.requires_grad_(name in names)
        for parameter in self.net.head.parameters():
            parameter.requires_grad_("head" in self.trainable)

    def _set_modes(self) -> None:
        """Frozen parts, and with bn: frozen every backbone BatchNorm, run in eval mode."""
        self.net.train()
        trained = {p.rsplit(".", 1)[0] for g in self.trainable if g != "head" for p in self.net.group_params[g]}

        def is_trained(name: str) -> bool:
            return any(t == name or t.startswith(name + ".") or name.startswith(t + ".") for t in trained)

        for name, module in self.net.backbone.named_modules():
            if not name:
                continue
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                if self.stage.bn == "frozen" or not is_trained(name):
                    module.eval()
            elif not any(True for _ in module.children()):
                owner = name if any(True for _ in module.parameters(recurse=False)) else name.rpartition(".")[0]
                if not is_trained(owner):
                    module.eval()

    def on_train_epoch_start(self) -> None:
        torch.manual_seed(epoch_seed(self.recipe.seed, self.stage_index, self.current_epoch))
        dataset = self.trainer.train_dataloader.dataset
        if hasattr(dataset, "epoch"):
            dataset.epoch = self.current_epoch
        self._set_modes()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16:
            x = x.float()
        return self.net(x, self.level)

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = self.class_weights.to(logits.device) if self.class_weights is not None else None
        return F.cross_entropy(logits.float(), target, weight=weight, label_smoothing=self.recipe.label_smoothing)

    def training_step(self, batch, batch_index):
        x, y = batch
        hard = y
        if self.augment is not None:
            x = self.augment(x)
        if self.level == 0 and (self.recipe.mixup > 0 or self.recipe.cutmix > 0):
            x, y = mix_batch(self.net.normalise(x), y, self.n_classes, self.recipe.mixup, self.recipe.cutmix)
        logits = self(x)
        loss = self._loss(logits, y) + self.net.head.penalty()
        self.train_accuracy.update(logits.detach(), hard)
        if self.loss_trace is not None:
            self.loss_trace.append(float(loss.detach()))
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        self.log("train_acc", self.train_accuracy, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_index):
        x, y = batch
        logits = self(x)
        # sync_dist: under DDP each process sees a shard of the validation set; early stopping and
        # the best checkpoint must watch the mean over all of them (a no-op in one process).
        self.log("val_loss", F.cross_entropy(logits.float(), y), prog_bar=True, on_epoch=True, sync_dist=True)
        self.val_accuracy.update(logits, y)  # the metric syncs its own counts (see __init__)
        self.log("val_acc", self.val_accuracy, prog_bar=True, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        # Wall time since the run started: accuracy-over-time curves for benchmarks.
        self.log("elapsed_s", float(time.time() - self.time_origin))

    def configure_optimizers(self):
        optimizer = OPTIMIZERS[self.recipe.optimizer](self._parameter_groups(), self.recipe.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = SCHEDULES[self.stage.schedule](optimizer, total)
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}

    def _parameter_groups(self) -> list[dict]:
        """Head at head_lr; trained backbone groups at lr, decayed per group going down.

        Hand-written rather than timm's layer decay (`param_groups_layer_decay`, behind
        `create_optimizer_v2(layer_decay=...)`), which is not the same rule: timm counts depth
        over the fine-grained groups of the model's `group_matcher(coarse=False)` from the top
        of the whole model, trained or not (6 levels on test_efficientnet, against our 7 block
        groups), and knows nothing of our separate head and its head_lr; ours counts over the
        stage's *trained* block groups (the groups stages name), the top trained one at the
        full lr. timm also drops weight decay on 1-d tensors, and leaves the decay as an
        `lr_scale` that only timm's schedulers apply (torch's, used here, ignore it).
        """
        stage = self.stage
        groups = []
        if "head" in self.trainable:
            groups.append({"params": list(self.net.head.parameters()), "lr": stage.head_lr or stage.lr, "name": "head"})
        backbone_trained = [g for g in self.net.group_params if g in self.trainable]
        parameters = dict(self.net.backbone.named_parameters())
        for depth, group in enumerate(reversed(backbone_trained)):
            lr = stage.lr * (stage.layer_decay ** depth if stage.layer_decay else 1.0)
            groups.append({"params": [parameters[n] for n in self.net.group_params[group]], "lr": lr, "name": group})
        return groups
