"""Stratified, seeded train/validation splits and per-class subsets, saved as split.json."""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path

from transferlab.data.folder import FolderScan, Sample
from transferlab.data.names import write_json_names
from transferlab.errors import TransferlabError

# Refuse split files larger than this: one of a million images is about 100 MB.
MAX_SPLIT_BYTES = 512 * 1024 * 1024


@dataclass
class Split:
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    seed: int
    val_fraction: float
    per_class_limit: int | None
    warnings: list[str]
    # At most this many *training* images per class, the validation set left as it is: the
    # points of a learning curve are then scored on the same images (and nest: 25 of 50 of 100).
    train_limit: int | None = None


def _by_class(samples: list[Sample]) -> dict[int, list[Sample]]:
    groups: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.label].append(sample)
    return groups


def check_split_settings(val_fraction: float, per_class_limit: int | None, train_limit: int | None = None) -> None:
    """One-line errors for bad split settings, before anything slow runs."""
    if not 0.0 < val_fraction < 1.0:
        raise TransferlabError(f"val fraction must be between 0 and 1, got {val_fraction}")
    if per_class_limit is not None and per_class_limit < 2:
        raise TransferlabError(f"per-class limit must be at least 2, got {per_class_limit}")
    if train_limit is not None and (isinstance(train_limit, bool) or not isinstance(train_limit, int)
                                    or train_limit < 1):
        raise TransferlabError(f"training images per class must be a whole number of at least 1, got {train_limit}")


def require_two_classes(scan: FolderScan) -> None:
    present = sorted(_by_class(scan.samples))
    if len(present) < 2:
        only = scan.classes[present[0]] if present else "none"
        raise TransferlabError(
            f"{scan.root}: needs at least 2 classes with images to train a classifier, found 1 ('{only}')"
        )


def stratified_split(
    scan: FolderScan,
    val_fraction: float = 0.2,
    seed: int = 0,
    per_class_limit: int | None = None,
    group_of: Mapping[Path, Hashable] | None = None,
    train_limit: int | None = None,
) -> Split:
    """Split each class separately so both sides keep the class proportions.

    `per_class_limit` keeps at most that many images per class (the small-data regime),
    drawn with the same seed, before splitting. A class with a single image goes to
    training with a warning, since it cannot be validated.
    `group_of` gives files that must stay together (copies of one image) the same key: each
    group goes wholly to train or wholly to validation, across classes too. Without groups
    the split is exactly the one earlier versions made for the same seed.
    `train_limit` then keeps at most that many training images per class (the first in the
    seeded order, so a smaller limit keeps a subset of a larger one); validation is unchanged.
    """
    check_split_settings(val_fraction, per_class_limit, train_limit)
    require_two_classes(scan)
    rng = random.Random(seed)
    side_of_group: dict[Hashable, bool] = {}  # group key -> goes to validation
    train: list[Sample] = []
    val: list[Sample] = []
    warnings: list[str] = []
    for label, samples in sorted(_by_class(scan.samples).items()):
        units = _units(samples, group_of or {})
        rng.shuffle(units)
        if per_class_limit is not None:
            units = _limited(units, per_class_limit)
        count = sum(len(unit) for unit in units)
        target = 0 if count < 2 else min(max(1, round(count * val_fraction)), count - 1)
        class_val, class_train = _assign(units, target, count, side_of_group, group_of or {})
        if train_limit is not None:
            class_train = class_train[:train_limit]
        val.extend(class_val)
        train.extend(class_train)
        name = scan.classes[label]
        if count < 2:
            warnings.append(f"class '{name}' has only {count} image: kept for training, none for validation")
        elif not class_val:
            warnings.append(f"class '{name}': its {count} images are copies of one another: all kept for training,"
                            " none for validation")
    return Split(scan.classes, train, val, seed, val_fraction, per_class_limit, warnings, train_limit)


def _units(samples: list[Sample], group_of: Mapping[Path, Hashable]) -> list[list[Sample]]:
    """The class's files as indivisible units (a group of copies, or one file), sorted by path.

    Sorting by path first makes the shuffle independent of the order files were listed in;
    with no groups this is the one-file-per-unit list earlier versions shuffled.
    """
    units: dict[Hashable, list[Sample]] = {}
    for sample in sorted(samples, key=lambda s: str(s.path)):
        key = group_of.get(sample.path, ("file", str(sample.path)))
        units.setdefault(key, []).append(sample)
    return sorted(units.values(), key=lambda unit: str(unit[0].path))


def _limited(units: list[list[Sample]], limit: int) -> list[list[Sample]]:
    """The first units, in shuffled order, that fit within `limit` files (all units of one file: the first `limit`)."""
    kept, total = [], 0
    for unit in units:
        if total + len(unit) <= limit:
            kept.append(unit)
            total += len(unit)
    return kept


def _assign(
    units: list[list[Sample]],
    target: int,
    count: int,
    side_of_group: dict[Hashable, bool],
    group_of: Mapping[Path, Hashable],
) -> tuple[list[Sample], list[Sample]]:
    """Fill validation with units in order until it holds `target` files, leaving training at least one.

    A group already placed from another class (a copy filed under two classes) goes to the same side.
    """
    val: list[Sample] = []
    train: list[Sample] = []
    for unit in units:
        key = group_of.get(unit[0].path)
        to_val = side_of_group.get(key) if key is not None else None
        if to_val is None:
            to_val = len(val) < target and len(val) + len(unit) <= count - 1
            if key is not None:
                side_of_group[key] = to_val
        (val if to_val else train).extend(unit)
    return val, train


def save_split(split: Split, path: str | os.PathLike, root: Path) -> None:
    """Write split.json: which file went where, relative to `root` where possible.

    Names that are not valid UTF-8 are stored as JSON escapes and come back intact from `load_split`.
    """
    def rel(sample: Sample) -> list:
        try:
            name = sample.path.relative_to(root).as_posix()
        except ValueError:
            name = str(sample.path)
        return [name, split.classes[sample.label]]

    write_json_names(
        path,
        {
            "root": str(root),
            "seed": split.seed,
            "val_fraction": split.val_fraction,
            "per_class_limit": split.per_class_limit,
            "train_limit": split.train_limit,
            "classes": split.classes,
            "train": [rel(s) for s in split.train],
            "val": [rel(s) for s in split.val],
        },
    )


def load_split(path: str | os.PathLike) -> dict:
    """Read and check a split.json (a run folder is hostile until checked): one-line error if malformed."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_SPLIT_BYTES:
            raise TransferlabError(f"{path}: split file is larger than {MAX_SPLIT_BYTES >> 20} MiB")
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise TransferlabError(f"{path}: split file not found") from None
    except OSError as exc:
        raise TransferlabError(f"{path}: cannot read split file: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:  # ValueError: also an integer of over 4300 digits
        raise TransferlabError(f"{path}: not a valid split file: {str(exc).splitlines()[0]}") from None
    problem = _split_problem(data)
    if problem:
        raise TransferlabError(f"{path}: not a valid split file: {problem}")
    return data


def _split_problem(data) -> str | None:
    """What is wrong with loaded split data, or None."""
    if not isinstance(data, dict):
        return "expected a JSON object"
    if not isinstance(data.get("root"), str):
        return "'root' must be a string"
    if not isinstance(data.get("seed"), int) or isinstance(data.get("seed"), bool):
        return "'seed' must be an integer"
    fraction = data.get("val_fraction")
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool):
        return "'val_fraction' must be a number"
    limit = data.get("per_class_limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
        return "'per_class_limit' must be an integer or null"
    classes = data.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "'classes' must be a non-empty list of names"
    known = set(classes)
    for side in ("train", "val"):
        rows = data.get(side)
        if not isinstance(rows, list):
            return f"'{side}' must be a list"
        for row in rows:
            if not (isinstance(row, list) and len(row) == 2 and all(isinstance(x, str) for x in row)):
                return f"each '{side}' entry must be [path, class]"
            if not row[0] or "\x00" in row[0]:
                return f"empty path or NUL byte in a '{side}' path"
            if row[1] not in known:
                return f"'{side}' entry has class '{row[1]}', which is not in 'classes'"
    return None
