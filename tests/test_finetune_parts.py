"""The fine-tune parts kept in registries (head layers, augmentations, optimizers, schedules)
and the accuracy the Lightning module logs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

from transferlab.errors import TransferlabError
from transferlab.finetune import recipe as recipe_module
from transferlab.finetune.augment import (
    ALIASES,
    AUGMENT_PRESETS,
    AUGMENTATIONS,
    MAX_RANDAUGMENT_OPS,
    build_augmentation,
    build_batch_augmentation,
    check_augment,
)
from transferlab.finetune.head import HEAD_LAYERS, MAX_UNITS, Head, check_head
from transferlab.finetune.lit import OPTIMIZERS, SCHEDULES, StageModule
from transferlab.finetune.network import FinetuneNet
from transferlab.finetune.recipe import Recipe, Stage
from transferlab.finetune.train import quiet_lightning

# A valid value for every option a head layer or an augmentation takes.
HEAD_OPTION_VALUES = {"p": 0.1, "units": 4, "activation": "gelu", "l1": 1e-5, "l2": 1e-4, "name": "tanh"}
AUGMENT_OPTION_VALUES = {"p": 0.3, "scale": (0.8, 1.0), "degrees": 5, "fraction": 0.05, "strength": 0.1,
                         "ops": 1, "magnitude": 5}


def _net(n_classes: int = 3, head: list[dict] | None = None) -> FinetuneNet:
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False)
    return FinetuneNet(model, n_classes, head or [], (0.5,) * 3, (0.5,) * 3)


def _module(stage: Stage, trainable: list[str], recipe: Recipe | None = None, head: list[dict] | None = None):
    return StageModule(_net(head=head), recipe or Recipe(), stage, 0, trainable, 0, None)


# --- registries against the names a recipe is validated with ---------------------------------


def test_optimizer_and_schedule_registries_cover_exactly_the_recipe_names():
    # recipe.py validates against its own torch-free name lists; a name on one side only is
    # either refused in a good recipe or accepted and then a KeyError mid-run.
    assert set(OPTIMIZERS) == set(recipe_module.OPTIMIZERS)
    assert set(SCHEDULES) == set(recipe_module.SCHEDULES)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_keeps_each_groups_rate_and_the_recipes_weight_decay(name):
    module = _module(Stage("blocks.4,neck,head", lr=0.02, head_lr=0.05, layer_decay=0.5), ["blocks.4", "neck", "head"])
    groups = module._parameter_groups()
    optimizer = OPTIMIZERS[name](groups, 0.125)
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in groups]
    assert all(g["weight_decay"] == 0.125 for g in optimizer.param_groups)
    assert type(optimizer) is {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
    if name == "sgd":
        assert all(g["momentum"] == 0.9 and g["nesterov"] for g in optimizer.param_groups)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_configure_optimizers_follows_the_stage_schedule(schedule):
    recipe = Recipe(optimizer="sgd", weight_decay=0.0)
    stage = Stage("neck,head", lr=0.02, head_lr=0.05, schedule=schedule)
    module = _module(stage, ["neck", "head"], recipe)
    module.trainer = SimpleNamespace(estimated_stepping_batches=7)
    configured = module.configure_optimizers()
    if schedule == "constant":
        assert isinstance(configured, torch.optim.SGD)
        assert [g["lr"] for g in configured.param_groups] == [0.05, 0.02]
        return
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]
    assert isinstance(optimizer, torch.optim.SGD)
    expected = {"cosine": torch.optim.lr_scheduler.CosineAnnealingLR, "onecycle": torch.optim.lr_scheduler.OneCycleLR,
                "plateau": torch.optim.lr_scheduler.ReduceLROnPlateau}[schedule]
    assert isinstance(scheduler["scheduler"], expected) and scheduler["scheduler"].optimizer is optimizer
    if schedule == "plateau":
        assert scheduler["monitor"] == "val_loss"
    else:
        assert scheduler["interval"] == "step"
    if schedule == "onecycle":  # each group peaks at its own rate: head_lr, lr
        assert [g["max_lr"] for g in optimizer.param_groups] == [0.05, 0.02]
        assert scheduler["scheduler"].total_steps == 7
    if schedule == "cosine":
        assert scheduler["scheduler"].T_max == 7


def test_layer_decay_counts_down_from_the_top_trained_group():
    net = _net()
    groups = list(net.group_params)
    trained = groups[-3:] + ["head"]
    stage = Stage(",".join(trained), lr=0.02, head_lr=0.05, layer_decay=0.5)
    module = StageModule(net, Recipe(), stage, 0, trained, 0, None)
    parameter_groups = module._parameter_groups()
    assert [g["name"] for g in parameter_groups] == ["head", *reversed(groups[-3:])]
    assert [g["lr"] for g in parameter_groups] == [0.05, 0.02, 0.02 * 0.5, 0.02 * 0.5 ** 2]
    # Every trainable parameter in exactly one group, nothing frozen in any.
    listed = [id(p) for g in parameter_groups for p in g["params"]]
    assert len(listed) == len(set(listed))
    assert set(listed) == {id(p) for p in net.parameters() if p.requires_grad}
    no_decay = StageModule(net, Recipe(), Stage(",".join(trained), lr=0.02), 0, trained, 0, None)._parameter_groups()
    assert [g["lr"] for g in no_decay] == [0.02] * 4  # head_lr defaults to lr; no layer_decay: one rate


# --- accuracy through torchmetrics ---------------------------------------------------------------


def _fit_or_validate(module: StageModule, loader: DataLoader, tmp_path, fit: bool):
    import lightning as L

    quiet_lightning()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)
    if fit:
        trainer.fit(module, loader)
    else:
        trainer.validate(module, loader, verbose=False)
    return trainer.callback_metrics


def test_val_acc_is_the_accuracy_over_the_whole_validation_set(tmp_path):
    module = _module(Stage("head", lr=0.01), ["head"])
    images = torch.randint(0, 255, (11, 3, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1])
    # Batches of 4, 4 and 3: a plain mean of batch accuracies would weigh the last batch too much.
    metrics = _fit_or_validate(module, DataLoader(TensorDataset(images, labels), batch_size=4), tmp_path, fit=False)
    module.eval()
    with torch.no_grad():
        logits = module(images)
    correct = int((logits.argmax(dim=1) == labels).sum())
    assert metrics["val_acc"].item() == (torch.tensor(correct, dtype=torch.float32) / 11).item()
    losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert metrics["val_loss"].item() == pytest.approx(losses.mean().item(), rel=1e-5)
    # The metrics are fresh for the next epoch, and hold no state a checkpoint would carry:
    # the stage's best weights still load into the bare network.
    assert all(key.startswith("net.") for key in module.state_dict())
    assert int(module.val_accuracy.tp.sum()) == 0


def test_train_acc_is_the_accuracy_over_every_training_sample_against_the_hard_labels(tmp_path, monkeypatch):
    from transferlab.finetune import lit

    recipe = Recipe(mixup=1.0, seed=0)  # soft labels for the loss, but accuracy is against the true class
    module = _module(Stage("head", lr=0.01, schedule="constant"), ["head"], recipe)
    images = torch.randint(0, 255, (24, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(24) % 3
    seen, mixed = [], []
    forward, mix_batch = module.forward, lit.mix_batch

    def spy_forward(x):
        out = forward(x)
        seen.append(out.detach().clone())
        return out

    def spy_mix(*args):
        out = mix_batch(*args)
        mixed.append(out[1])
        return out

    module.forward = spy_forward
    monkeypatch.setattr(lit, "mix_batch", spy_mix)
    metrics = _fit_or_validate(module, DataLoader(TensorDataset(images, labels), batch_size=4), tmp_path, fit=True)
    predictions = torch.cat(seen).argmax(dim=1)
    correct = int((predictions == labels).sum())
    # The draws mixed in more than half of another class here and there (the seed is picked for
    # it), so scoring against the soft labels' top class would give another figure.
    assert int((predictions == torch.cat(mixed).argmax(dim=1)).sum()) != correct
    assert metrics["train_acc"].item() == (torch.tensor(correct, dtype=torch.float32) / 24).item()


# --- head layers -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(HEAD_LAYERS))
def test_every_head_layer_type_builds_with_every_option_it_lists(kind):
    layer = {"type": kind, **{key: HEAD_OPTION_VALUES[key] for key in HEAD_LAYERS[kind].keys}}
    head = Head(12, 3, [layer])
    assert head(torch.randn(5, 12)).shape == (5, 3)
    check_head([layer])
    with pytest.raises(TransferlabError, match=f"head layer 1: unknown key 'bogus' for {kind}"):
        Head(12, 3, [{**layer, "bogus": 1}])


def test_a_head_spec_keeps_its_layer_layout_and_penalties():
    # The state-dict names are what network.safetensors of earlier runs hold.
    spec = [{"type": "batchnorm"}, {"type": "dense", "units": 8, "l1": 1e-3}, {"type": "dropout", "p": 0.2},
            {"type": "activation", "name": "silu"}, {"type": "dense", "units": 6, "activation": "none"}]
    head = Head(12, 3, spec)
    kinds = [type(m) for m in head.layers]
    assert kinds == [torch.nn.BatchNorm1d, torch.nn.Linear, torch.nn.ReLU, torch.nn.Dropout, torch.nn.SiLU,
                     torch.nn.Linear, torch.nn.Identity, torch.nn.Linear]
    assert head.classifier is head.layers[-1] and head.classifier.in_features == 6
    expected = 1e-3 * head.layers[1].weight.abs().sum()
    assert torch.allclose(head.penalty(), expected)  # only the dense layer that asked for one


@pytest.mark.parametrize("spec, message", [
    ([{"type": "conv"}], "unknown type 'conv'; use one of " + ", ".join(HEAD_LAYERS)),
    ([{"type": "__class__"}], "unknown type '__class__'"),
    ([{"units": 4}], "type must be one of"),
    ([{"type": ["dense"]}], "type must be one of"),
    ([{"type": "dense", "units": MAX_UNITS + 1}], f"units in 1..{MAX_UNITS}"),
    ([{"type": "dense", "units": True}], "whole-number units"),
    ([{"type": "dense", "units": 4.0}], "whole-number units"),
    ([{"type": "dense", "units": 4, "l2": -1}], "l1/l2 must be 0 or more"),
    ([{"type": "dense", "units": 4, "l1": "abc"}], "l1 must be a number"),
    ([{"type": "dense", "units": 4, "activation": "softmax"}], "unknown activation 'softmax'"),
    ([{"type": "dropout", "p": 1.0}], r"dropout p must be in \[0, 1\)"),
    ([{"type": "dropout", "p": float("nan")}], "p must be a number"),
    ([{"type": "batchnorm", 7: 1}], "unknown key '7' for batchnorm"),
    ("dense", "head must be a list of layers"),
    ([["dense"]], "head must be a list of layers"),
])
def test_a_hostile_head_spec_is_one_line_naming_the_problem(spec, message):
    # model.json of a run folder or an upload carries the spec: checked before anything is built.
    with pytest.raises(TransferlabError, match=message) as caught:
        check_head(spec, "model.json")
    assert str(caught.value).startswith("model.json: ") and "\n" not in str(caught.value)


# --- augmentations ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_every_augmentation_builds_with_every_option_it_lists(name):
    options = {key: AUGMENT_OPTION_VALUES[key] for key in AUGMENTATIONS[name].options}
    image = torch.randint(0, 255, (3, 24, 24), dtype=torch.uint8)
    out = build_augmentation([{"name": name, **options}], 24)(image)
    assert out.shape == image.shape and out.dtype == torch.uint8
    check_augment([{"name": name, **options}])
    with pytest.raises(TransferlabError, match=f"augmentation '{name}': unknown option 'bogus'"):
        check_augment([{"name": name, "bogus": 1}])


def test_every_preset_is_data_the_registry_builds():
    for preset, items in AUGMENT_PRESETS.items():
        assert all(item["name"] in AUGMENTATIONS for item in items), preset
        check_augment(preset)
        check_augment([dict(item) for item in items])  # the same list written out in a recipe
        images = torch.randint(0, 255, (2, 3, 24, 24), dtype=torch.uint8)
        assert build_batch_augmentation(preset, 24)(images).shape == images.shape
    with pytest.raises(TransferlabError, match="run.json: unknown augmentation preset 'heavy': " +
                       ", ".join(AUGMENT_PRESETS)):
        check_augment("heavy", "run.json")


def test_aliases_work_but_are_not_listed():
    assert set(ALIASES.values()) <= set(AUGMENTATIONS) and not set(ALIASES) & set(AUGMENTATIONS)
    check_augment([{"name": "color", "strength": 0.1}])
    with pytest.raises(TransferlabError) as caught:
        check_augment([{"name": "blur"}])
    assert "unknown augmentation 'blur': " + ", ".join(AUGMENTATIONS) in str(caught.value)
    assert "color" not in str(caught.value).split(": ", 3)[-1].split(", ")


@pytest.mark.parametrize("item, message", [
    ({"name": "randaugment", "ops": 10 ** 9}, f"ops must be a whole number in 0..{MAX_RANDAUGMENT_OPS}"),
    ({"name": "randaugment", "ops": 2.5}, "ops must be a whole number"),
    ({"name": "randaugment", "ops": True}, "ops must be a whole number"),
    ({"name": "randaugment", "magnitude": 10 ** 6}, r"\(randaugment\): bad option value"),
    ({"name": "crop", "scale": "ab"}, r"\(crop\): bad option value"),
    ({"name": "flip", "p": 5}, r"\(flip\): bad option value"),
    ({"name": "colour", "strength": -1}, r"\(colour\): bad option value"),
    ({"name": "shift", "fraction": 3}, r"\(shift\): bad option value"),
    ({"name": None}, "unknown augmentation 'None'"),
    ({"name": "__class__"}, "unknown augmentation '__class__'"),
])
def test_a_hostile_augmentation_is_one_line_naming_the_item(item, message):
    # The recipe saved in a run folder is checked with this on --resume: refused, never run.
    before = torch.random.get_rng_state()
    with pytest.raises(TransferlabError, match=message) as caught:
        check_augment([{"name": "flip"}, item], "finetune_state.json")
    assert str(caught.value).startswith("finetune_state.json: augment item 2") and "\n" not in str(caught.value)
    assert torch.equal(torch.random.get_rng_state(), before)  # a check never moves the seeded stream
