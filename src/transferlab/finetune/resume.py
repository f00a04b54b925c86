"""What a resumed fine-tune reads back from its run folder, checked before it is trusted.

A run folder may have been edited, truncated by a full disk, or planted: finetune_state.json
and the stage checkpoints are hostile until checked. Checkpoints are only ever read with
`torch.load(weights_only=True)`, given explicitly, so the TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD
environment variable (which overrides only an unspecified weights_only) cannot turn a load
into unpickling.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from transferlab.errors import TransferlabError

# A finished stage's record, as run_finetune writes it: field -> accepted types.
_STAGE_FIELDS = {
    "index": (int,), "train": (str,), "level": (int,), "processes": (int,), "epochs_run": (int,),
    "best_val_acc": (int, float), "best_checkpoint": (str,), "seconds": (int, float),
}
_FINGERPRINT_FIELDS = {"data": (str,), "classes": (list,), "files": (int,), "recipe": (dict,)}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _typed(record: dict, fields: dict, where: str) -> None:
    for name, types in fields.items():
        value = record.get(name)
        if isinstance(value, bool) or not isinstance(value, types):
            raise TransferlabError(f"{where}: field '{name}' is missing or of the wrong type ({value!r:.60})")


def read_state(path: Path) -> dict:
    """finetune_state.json: valid JSON with a fingerprint of the right shape, or one line saying not."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TransferlabError(f"{path}: unreadable fine-tune state ({_first_line(exc)})") from None
    if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), dict):
        raise TransferlabError(f"{path}: not a fine-tune state (no fingerprint)")
    _typed(state["fingerprint"], _FINGERPRINT_FIELDS, str(path))
    if not isinstance(state.get("stages"), list):
        raise TransferlabError(f"{path}: not a fine-tune state (no list of stages)")
    return state


def check_resumable(state: dict, run_path: Path) -> None:
    """Every finished stage's record has its fields, in order (they steer what is loaded next)."""
    where = f"{run_path / 'finetune_state.json'}"
    for position, stage in enumerate(state["stages"], start=1):
        if not isinstance(stage, dict):
            raise TransferlabError(f"{where}: stage record {position} is not a mapping")
        _typed(stage, _STAGE_FIELDS, f"{where}: stage {position}")
        if stage["index"] != position:
            raise TransferlabError(f"{where}: stage record {position} says it is stage {stage['index']}")
        checkpoint_in_run(stage["best_checkpoint"], run_path, where)
    # The stage that was interrupted restarts from its last.ckpt: check it now, before any image is decoded.
    last = run_path / "checkpoints" / f"stage{len(state['stages']) + 1}" / "last.ckpt"
    if last.exists():
        load_checkpoint(last)


def checkpoint_in_run(path: str, run_path: Path, where: str) -> Path:
    """A checkpoint path read from the state file must point into the run's checkpoints folder."""
    file = Path(path)
    checkpoints = (run_path / "checkpoints").resolve()
    if not file.resolve().is_relative_to(checkpoints):
        raise TransferlabError(f"{where}: checkpoint {path!r:.200} lies outside {checkpoints}")
    return file


def load_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint as plain tensors and containers; anything else is refused in one line."""
    file = Path(path)
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # an unpickling refusal, a truncated zip, not a torch file at all
        raise TransferlabError(f"{file}: not a checkpoint this run wrote ({_first_line(exc)})") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TransferlabError(f"{file}: not a checkpoint this run wrote (no state_dict of tensors)")
    return checkpoint


def outcome_from_checkpoint(last: Path) -> tuple[int, float | None]:
    """Epochs run and best val acc, read from the stage's last checkpoint.

    Under ddp_spawn the training happens in child processes and Lightning (2.6) sends only
    the best checkpoint's path back: in this process the trainer's epoch count is 0 and the
    checkpoint callback's best score None.
    """
    saved = load_checkpoint(last)
    score = next((state.get("best_model_score") for name, state in saved.get("callbacks", {}).items()
                  if str(name).startswith("ModelCheckpoint{'monitor': 'val_acc'")), None)
    return int(saved["epoch"]) + 1, (float(score) if score is not None else None)
