"""What a resumed fine-tune reads back from its run folder, checked before it is trusted.

A run folder may have been edited, truncated by a full disk, or planted: finetune_state.json
and the stage checkpoints are hostile until checked. Checkpoints are only ever read with
`torch.load(weights_only=True)`, given explicitly, so the TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD
environment variable (which overrides only an unspecified weights_only) cannot turn a load
into unpickling.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path, PurePath

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from transferlab.errors import TransferlabError, one_line
from transferlab.finetune.curves import METRICS_FILE, stage_log_dir
from transferlab.safe_yaml import short_repr

# A finished stage's record, as run_finetune writes it: field -> accepted types.
_STAGE_FIELDS = {
    "index": (int,), "train": (str,), "level": (int,), "processes": (int,), "epochs_run": (int,),
    "best_val_acc": (int, float), "best_checkpoint": (str,), "seconds": (int, float),
}
_FINGERPRINT_FIELDS = {"data": (str,), "classes": (list,), "files": (int,), "recipe": (dict,)}
# The files Lightning writes in a stage's checkpoint folder, and the checkpoint paths its
# ModelCheckpoint state holds (a resume restores them; Lightning later deletes the old one).
STAGE_FILES = ("best.ckpt", "last.ckpt")
_PATH_FIELDS = ("best_model_path", "kth_best_model_path", "last_model_path")


def _typed(record: dict, fields: dict, where: str) -> None:
    for name, types in fields.items():
        value = record.get(name)
        if isinstance(value, bool) or not isinstance(value, types):
            raise TransferlabError(f"{where}: field '{name}' is missing or of the wrong type ({short_repr(value)})")


def read_state(path: Path) -> dict:
    """finetune_state.json: valid JSON with a fingerprint of the right shape, or one line saying not."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TransferlabError(f"{path}: unreadable fine-tune state ({one_line(exc)})") from None
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
    resume_checkpoint(run_path, len(state["stages"]) + 1)


def _refuse_links(paths: list[Path], folders: int, where: str) -> None:
    """None of `paths` is a link, the first `folders` are folders and the rest regular files (where they exist).

    Lightning writes checkpoints and logs through whatever a link points at, and deletes
    inside the checkpoint folder: a planted link would aim both at any folder of the user's.
    """
    for position, path in enumerate(paths):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:  # a name too long, a NUL byte
            raise TransferlabError(f"{where}: cannot check {short_repr(str(path))} ({type(exc).__name__})") from None
        kind = "folder" if position < folders else "regular file"
        expected = stat.S_ISDIR(info.st_mode) if position < folders else stat.S_ISREG(info.st_mode)
        if stat.S_ISLNK(info.st_mode) or not expected:
            what = "a link" if stat.S_ISLNK(info.st_mode) else f"not a {kind}"
            raise TransferlabError(f"{path}: {what}; a run's checkpoints and logs are read and written only "
                                   "inside its own folders (refused)")


def stage_dir(run_path: Path, stage: int) -> Path:
    """`<run>/checkpoints/stage<stage>`, absolute and symlink-free above the run: as Lightning records it."""
    return Path(run_path).resolve() / "checkpoints" / f"stage{stage}"


def check_stage_folders(run_path: Path, stage: int) -> Path:
    """Refuse links (or files of the wrong kind) where stage `stage` writes; its checkpoint folder."""
    folder = stage_dir(run_path, stage)
    logs = stage_log_dir(Path(run_path).resolve() / "logs", stage)
    _refuse_links([folder.parent, folder, logs.parent.parent, logs.parent, logs,
                   *(folder / name for name in STAGE_FILES), logs / METRICS_FILE, logs / "hparams.yaml"],
                  folders=5, where=str(run_path))
    return folder


def resume_checkpoint(run_path: Path, stage: int) -> Path | None:
    """The last.ckpt stage `stage` resumes from (None: it starts afresh), checked before Lightning reads it:
    no link on the way, plain tensors only, and no callback state naming a file outside the stage."""
    folder = check_stage_folders(run_path, stage)
    last = folder / "last.ckpt"
    if not last.exists():
        return None
    checkpoint = load_checkpoint(last)
    states = checkpoint.get("callbacks", {})
    if not isinstance(states, dict) or not all(isinstance(v, dict) for v in states.values()):
        raise TransferlabError(f"{last}: not a checkpoint this run wrote (callback states are not mappings)")
    for key, callback_state in states.items():
        if str(key).startswith("ModelCheckpoint") or any(name in callback_state for name in _PATH_FIELDS):
            stage_callback_state(callback_state, folder, str(last))
    return last


def _own_file(value, folder: Path, where: str):
    """A checkpoint path from a restored ModelCheckpoint state, as this stage's own file; else refused.

    Lightning removes (fs.rm, recursively) the file a restored path names once it saves a
    newer one, and checks only plain local paths against its folder: `local:///home/me` or
    `<stage>/../../x` pass. Kept: '' / None and this stage's best.ckpt or last.ckpt; an
    absolute plain path to the same file of a run folder since moved or copied
    (`.../stage2/best.ckpt`) is taken as this folder's file.
    """
    if value is None or value == "":
        return value
    if isinstance(value, str) and "://" not in value and "\0" not in value and os.path.isabs(value) \
            and os.path.normpath(value) == value:
        file = PurePath(value)
        if file.name in STAGE_FILES and file.parent.name == folder.name:
            return str(folder / file.name)
    raise TransferlabError(f"{where}: its checkpoint callback state names {short_repr(value)}, not this stage's "
                           f"{' or '.join(STAGE_FILES)} in {folder} (refused: Lightning would delete it)")


def stage_callback_state(state: dict, folder: Path, where: str) -> dict:
    """A ModelCheckpoint state whose every path is '' / None or one of `folder`'s STAGE_FILES; else one line."""
    if "best_model_path" not in state or "best_model_score" not in state:
        raise TransferlabError(f"{where}: not a checkpoint this run wrote (incomplete checkpoint callback state)")
    cleaned = dict(state)
    for name in _PATH_FIELDS:
        if name in state:
            cleaned[name] = _own_file(state[name], folder, where)
    if "best_k_models" in state:
        if not isinstance(state["best_k_models"], dict):
            raise TransferlabError(f"{where}: not a checkpoint this run wrote (best_k_models is not a mapping)")
        cleaned["best_k_models"] = {_own_file(k, folder, where): v for k, v in state["best_k_models"].items()}
    return cleaned


class StageCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that restores only paths of its own stage folder (`stage_callback_state`).

    `resume_checkpoint` refused a hostile state before `fit`; this applies the same rule where
    Lightning reads it back, and maps a moved run folder's paths onto this one.
    """

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key: checkpoints written before this class existed still restore
        # their state, and outcome_from_checkpoint finds it by that name.
        return "ModelCheckpoint" + super().state_key.removeprefix(type(self).__qualname__)

    def load_state_dict(self, state_dict: dict) -> None:
        folder = Path(self.dirpath or "")
        super().load_state_dict(stage_callback_state(state_dict, folder, f"{folder}: resumed checkpoint"))


def checkpoint_in_run(path: str, run_path: Path, where: str) -> Path:
    """A checkpoint path read from the state file, as the file in the run's checkpoints folder it names.

    A relative path is taken from the run folder (not the current directory), `..` is
    resolved by name, and no part from checkpoints/ down may be a link: a `checkpoints -> /`
    link would otherwise admit any file on the machine. Use the path returned.
    """
    checkpoints = Path(run_path).resolve() / "checkpoints"
    file = Path(os.path.normpath(checkpoints.parent / path)) if "\0" not in path else None
    if file is None or file == checkpoints or not file.is_relative_to(checkpoints):
        raise TransferlabError(f"{where}: checkpoint {short_repr(path)} lies outside {checkpoints}")
    inside = [p for p in (file, *file.parents) if p.is_relative_to(checkpoints)]
    _refuse_links(inside[::-1], folders=len(inside) - 1, where=where)
    return file


def load_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint as plain tensors and containers; anything else is refused in one line."""
    file = Path(path)
    try:
        regular = stat.S_ISREG(os.stat(file).st_mode)  # a FIFO would block torch.load forever
    except (OSError, ValueError) as exc:
        raise TransferlabError(f"{file}: not a checkpoint this run wrote ({one_line(exc)})") from None
    if not regular:
        raise TransferlabError(f"{file}: not a checkpoint this run wrote (not a regular file)")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unpickling refusal, a truncated zip, not a torch file at all
        raise TransferlabError(f"{file}: not a checkpoint this run wrote ({one_line(exc)})") from None
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
