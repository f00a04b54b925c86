"""Where `transferlab prune --from-run RUN` starts: a finished fine-tune run's data, recipe and weights.

Every cut then starts from the run's fine-tuned backbone (cut after its group) instead of the
ImageNet weights, gets a new head and is fine-tuned again with the run's recipe (or another
one). The run folder is hostile input: it must be a complete fine-tune run with a valid card,
and its recipe is read through the checks of `resume_config`.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from transferlab.atomic import atomic_path
from transferlab.backbones import create_architecture
from transferlab.backbones.shape import classifier_prefixes
from transferlab.errors import TransferlabError
from transferlab.inference.export import model_fingerprint
from transferlab.inference.finetune_predictor import load_finetune_net
from transferlab.pipelines.finetune_config import FinetuneConfig
from transferlab.pipelines.finetune_state import resume_config
from transferlab.runs import open_run

SOURCE_WEIGHTS = "source-backbone.safetensors"


def config_from_run(run_path: str | Path, data: str | None = None, backbone: str | None = None,
                    progress: bool = True) -> FinetuneConfig:
    """The run's data, recipe, test folder, baseline and exclude list (data/backbone checked if given)."""
    run = open_run(run_path)  # complete, with a valid model card
    if run.card.kind != "finetune":
        raise TransferlabError(f"{run.path}: is a {run.card.kind} run; --from-run needs a fine-tuned run")
    return resume_config(run.path, data, backbone, progress)


def fingerprint_source(run_path: str | Path) -> dict:
    """The run and the exact model it holds: a prune folder continues only from the same weights."""
    return {"path": str(Path(run_path).resolve()), "model": model_fingerprint(run_path)}


def source_state(run_path: str | Path) -> dict:
    """The run's fine-tuned backbone as a full timm state dict, which a recipe's `weights` loads
    like any weights file. The classifier, which the run replaced by its own head, keeps the
    architecture's initial values: every cut drops it. A pruned run is refused (one line)."""
    net, card = load_finetune_net(run_path)
    tuned = net.backbone.state_dict()
    full_model = create_architecture(card.backbone)
    full = full_model.state_dict()
    skip = classifier_prefixes(full_model)
    missing = [k for k in full if k not in tuned and not k.startswith(skip)]
    if missing or set(tuned) - set(full):
        cut = f" (cut after {card.cut_after})" if card.cut_after else ""
        raise TransferlabError(f"{Path(run_path)}: its backbone is not the whole {card.backbone}{cut}; "
                               "prune the run it came from")
    full.update(tuned)
    return {k: v.contiguous() for k, v in full.items()}


def save_source_weights(state: dict, out: Path) -> Path:
    """`out/source-backbone.safetensors`: what every cut's recipe names as its weights."""
    target = out / SOURCE_WEIGHTS
    with atomic_path(target) as tmp:
        save_file(state, str(tmp))
    return target
