"""A fine-tune run's resume state: finetune_state.json, what a resumed run must share with the
original (the fingerprint), and the configuration a `--resume` continues with."""

from __future__ import annotations

import json
from pathlib import Path

from transferlab.atomic import write_json
from transferlab.errors import TransferlabError
from transferlab.finetune.recipe import Recipe, recipe_from_saved, recipe_to_dict
from transferlab.finetune.resume import check_resumable, read_state
from transferlab.pipelines.finetune_config import FinetuneConfig
from transferlab.runs import RunDir

STATE_FILE = "finetune_state.json"


def fingerprint(config: FinetuneConfig, split, classes: list[str]) -> dict:
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
        **({"cut_after": config.cut_after} if config.cut_after else {}),  # absent: runs from before cuts resume
    }))


def _recipe_fingerprint(recipe: Recipe) -> dict:
    data = recipe_to_dict(recipe, []) | {"stages": recipe.stages}
    # The overrides (--epochs, --lr) when unset are left out: runs killed before they existed
    # recorded recipes without them, and still resume.
    return {k: v for k, v in data.items() if not (k in ("epochs", "lr") and v is None)}


def open_state(run: RunDir, fingerprint: dict, resume: bool) -> dict:
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
    if old.get("cut_after") != fingerprint.get("cut_after"):
        raise TransferlabError(f"{run.path}: resume points at a run cut after {old.get('cut_after')!r}, "
                               f"not {fingerprint.get('cut_after')!r}")
    if old.get("recipe") != fingerprint["recipe"]:
        raise TransferlabError(f"{run.path}: the recipe differs from the run's; resume without changing it")
    check_resumable(state, run.path)
    run.resume("finetune")
    return state


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
                          exclude=path_or_none("exclude"), progress=progress, cut_after=path_or_none("cut_after"))
