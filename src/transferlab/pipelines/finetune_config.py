"""What a fine-tune run is given: the data, the recipe, and where the run goes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from transferlab.features.extract import default_workers
from transferlab.finetune.recipe import Recipe


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
    error_grid: int = 12  # most confidently wrong images shown per split (with CAM); 0 skips
    embed: str = "pca,tsne"  # feature maps of the evaluated split in the report; "" skips
    mlflow_uri: str | None = None
    progress: bool = True  # progress bars on stderr, and only where stderr is a terminal
    # Called with each stage's outcome as the stage ends (the dict that metrics["stages"] lists:
    # index, train, level, processes, epochs_run, best_val_acc, best_checkpoint, seconds), so a
    # caller can print it then; on resume, first for the stages finished before the restart.
    on_stage_end: Callable[[dict], None] | None = None
    # Extra Lightning callbacks for stage `index` (0-based), made as the stage starts: a search's
    # pruning callback reports each epoch's val_acc to Optuna and stops a hopeless trial.
    stage_callbacks: Callable[[int], list] | None = None
    # Cut the backbone after this block group before the head goes on (`transferlab prune`);
    # None keeps the whole backbone. The model card records it, so the run reloads the same cut.
    cut_after: str | None = None
