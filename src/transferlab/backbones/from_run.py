"""A fine-tuned run's backbone, for features (`probe --from-run`): card checked, safetensors only.

The run folder is hostile until checked: `open_run` checks it is complete and its card is
well-formed; here the card must be a fine-tune's and name a timm architecture, its
preprocessing must be the architecture's own (a probe run saved from these features is
rebuilt with that), and `model/network.safetensors` must hold exactly that backbone
(`backbones.finetuned`). Never a pickle: a run's checkpoints are not read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from transferlab.backbones.finetuned import load_finetuned_safetensors
from transferlab.backbones.registry import FINETUNED, Backbone, create_architecture
from transferlab.card import ModelCard
from transferlab.errors import TransferlabError
from transferlab.runs import open_run

NETWORK_FILE = "network.safetensors"


@dataclass(frozen=True)
class FinetunedSource:
    """A fine-tuned run's backbone with its weights, the run's card and the run folder."""

    backbone: Backbone
    card: ModelCard
    run: Path


def finetuned_backbone(run_path: str | os.PathLike) -> FinetunedSource:
    """The backbone of fine-tuned run `run_path`, or one line naming what is wrong with the run."""
    run = open_run(run_path)
    card, where = run.card, run.model_dir / "model.json"
    if card.kind != "finetune":
        raise TransferlabError(f"{run.path}: a '{card.kind}' run, not a fine-tuned one "
                               "(features come from a `transferlab finetune` run)")
    model = create_architecture(card.backbone)  # an unknown name is one line
    load_finetuned_safetensors(model, card.backbone, run.model_dir / NETWORK_FILE)
    backbone = Backbone(model.eval(), card.backbone, FINETUNED, str(run.path))
    _check_preprocessing(backbone, card, where)
    return FinetunedSource(backbone, card, run.path)


def _check_preprocessing(backbone: Backbone, card: ModelCard, where: Path) -> None:
    """The card's normalisation must be the architecture's: a probe run records and rebuilds the
    backbone with the architecture's, so any other would make its predictions differ."""
    for name in ("mean", "std"):
        theirs, ours = getattr(card, name), getattr(backbone, name)
        if any(abs(a - b) > 1e-6 for a, b in zip(theirs, ours)):
            raise TransferlabError(f"{where}: {name} {list(theirs)} is not {card.backbone}'s own {list(ours)}")
    if card.interpolation != backbone.interpolation:
        raise TransferlabError(f"{where}: interpolation '{card.interpolation}' is not {card.backbone}'s own "
                               f"'{backbone.interpolation}'")
