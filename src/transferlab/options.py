"""Checks of plain option values: ranges, folders, files.

This module imports nothing heavy (no torch, timm or scikit-learn), so the CLI runs these
checks before it imports a pipeline: a typo costs a fraction of a second, not the 7-15 s
of import time. The pipelines run the same checks for callers of the Python API.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from transferlab.errors import TransferlabError

# numpy and scikit-learn seeds are unsigned 32-bit.
MAX_SEED = 2**32 - 1
MIN_RESOLUTION = 16
# Above this a CPU run is hopeless and the activations of one batch need gigabytes.
MAX_RESOLUTION = 1024
MAX_WORKERS = 64
MAX_BATCH_SIZE = 4096
PRECISION_CHOICES = ("auto", "fp32", "bf16")
# Test-time augmentation modes; their views are made in data.tta (which needs torch).
TTA_MODES = ("none", "flip", "crops", "flip-crops")
TTA_HELP = ("Test-time augmentation: none, flip (the image and its mirror), crops (the image and 4 corner crops) "
            "or flip-crops (all 10); predictions average the views' probabilities. Costs 1, 2, 5 or 10 passes.")


def tta_mode(value, where: str = "--tta") -> str:
    """A TTA mode from a card, recipe or option: a mode name, or the older true/false (flip / none)."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "flip"
    if isinstance(value, str) and value in TTA_MODES:
        return value
    raise TransferlabError(f"{where} must be true, false or one of {', '.join(TTA_MODES)} "
                           f"(test-time augmentation), got {repr(value)[:60]}")


def check_int(flag: str, value: int | None, low: int, high: int | None = None) -> None:
    """`value` (when given) is an int in [low, high]; the message names the flag."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TransferlabError(f"{flag} must be a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise TransferlabError(f"{flag} must be {bound}, got {value}")


def check_fraction(flag: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise TransferlabError(f"{flag} must be between 0 and 1 (exclusive), got {value!r}")


def check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise TransferlabError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")


def check_folder(path: str | os.PathLike | None, what: str = "image folder") -> None:
    """An input folder exists and is a folder (its contents are checked by the scan)."""
    if path is None:
        return
    folder = Path(path).expanduser()
    if not folder.exists():
        raise TransferlabError(f"{folder}: {what} not found")
    if not folder.is_dir():
        raise TransferlabError(f"{folder}: {what} is not a folder")


def check_file(path: str | os.PathLike | None, what: str) -> None:
    if path is None:
        return
    file = Path(path).expanduser()
    if not file.exists():
        raise TransferlabError(f"{file}: {what} not found")
    if not file.is_file():
        raise TransferlabError(f"{file}: {what} is not a file")


def check_output_file(path: str | os.PathLike, what: str, ours: Callable[[Path], bool]) -> Path:
    """An output file (a CSV, a page, an export) goes to a new name, or over an earlier one of the
    same kind (`ours`, e.g. `holds_marker`). Any other file is a user's (an image, notes, a run's
    model card) and is never written over; a link or a folder is refused too."""
    file = Path(path).expanduser()
    if file.is_symlink():
        raise TransferlabError(f"{file}: is a link; give the real file for the {what}")
    if file.is_dir():
        raise TransferlabError(f"{file}: is a folder; give a file name for the {what}")
    ancestor = file.parent  # missing folders are made (atomic_path), but not under a file
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise TransferlabError(f"{ancestor}: is not a folder, so the {what} {file} cannot go under it")
    if file.exists() and not ours(file):
        raise TransferlabError(f"{file}: exists and is not an earlier {what}; transferlab writes over no "
                               "other file: choose a new name")
    return file


def starts_with_line(line: bytes) -> Callable[[Path], bool]:
    """Whether a file's first line is exactly `line` (a CSV's header)."""
    def ours(file: Path) -> bool:
        with open(file, "rb") as handle:
            return handle.readline(len(line) + 3).rstrip(b"\r\n") == line

    return ours


def holds_marker(*markers: bytes) -> Callable[[Path], bool]:
    """Whether a file's first 4 KiB hold one of `markers` (a page's generator tag)."""
    def ours(file: Path) -> bool:
        with open(file, "rb") as handle:
            head = handle.read(4096)
        return any(marker in head for marker in markers)

    return ours


def check_cache_dir(path: str | os.PathLike | None, data: str | os.PathLike | None = None) -> None:
    """The feature cache folder can be created (a path under a file cannot), and lies outside the
    image folder `data` (its features/ subfolder would be scanned as a class of no images)."""
    if not path:  # None: the default user cache, checked when opened; "": caching off
        return
    folder = Path(path).expanduser()
    if data is not None:
        inside, images = Path(os.path.realpath(folder)), Path(os.path.realpath(Path(data).expanduser()))
        if inside == images or images in inside.parents:
            raise TransferlabError(f"{folder}: the feature cache would lie inside the image folder {data}; "
                                   "give a --cache-dir outside it")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TransferlabError(f"{folder}: cannot use as the feature cache folder ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK):
        raise TransferlabError(f"{folder}: feature cache folder is not writable")


def check_training_options(*, seed: int | None = None, resolution: int | None = None, batch_size: int | None = None,
                           workers: int | None = None, val_fraction: float | None = None,
                           per_class: int | None = None, precision: str | None = None) -> None:
    """The numeric options probe and finetune share."""
    check_int("--seed", seed, 0, MAX_SEED)
    check_int("--resolution", resolution, MIN_RESOLUTION, MAX_RESOLUTION)
    check_int("--batch-size", batch_size, 1, MAX_BATCH_SIZE)
    check_int("--workers", workers, 0, MAX_WORKERS)
    check_int("--per-class", per_class, 2)
    if val_fraction is not None:
        check_fraction("--val-fraction", val_fraction)
    if precision is not None:
        check_choice("--precision", precision, PRECISION_CHOICES)
