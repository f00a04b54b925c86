"""Stratified, seeded train/validation splits and per-class subsets, saved as split.json."""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from transferlab.atomic import write_json
from transferlab.data.folder import FolderScan, Sample
from transferlab.errors import TransferlabError


@dataclass
class Split:
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    seed: int
    val_fraction: float
    per_class_limit: int | None
    warnings: list[str]


def _by_class(samples: list[Sample]) -> dict[int, list[Sample]]:
    groups: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.label].append(sample)
    return groups


def stratified_split(
    scan: FolderScan, val_fraction: float = 0.2, seed: int = 0, per_class_limit: int | None = None
) -> Split:
    """Split each class separately so both sides keep the class proportions.

    `per_class_limit` keeps at most that many images per class (the small-data regime),
    drawn with the same seed, before splitting. A class with a single image goes to
    training with a warning, since it cannot be validated.
    """
    if not 0.0 < val_fraction < 1.0:
        raise TransferlabError(f"val fraction must be between 0 and 1, got {val_fraction}")
    if per_class_limit is not None and per_class_limit < 2:
        raise TransferlabError(f"per-class limit must be at least 2, got {per_class_limit}")
    present = sorted(_by_class(scan.samples))
    if len(present) < 2:
        only = scan.classes[present[0]] if present else "none"
        raise TransferlabError(
            f"{scan.root}: needs at least 2 classes with images to train a classifier, found 1 ('{only}')"
        )
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    warnings: list[str] = []
    for label, group in sorted(_by_class(scan.samples).items()):
        group = sorted(group, key=lambda s: str(s.path))
        rng.shuffle(group)
        if per_class_limit is not None:
            group = group[:per_class_limit]
        if len(group) < 2:
            warnings.append(
                f"class '{scan.classes[label]}' has only {len(group)} image: kept for training, none for validation"
            )
            train.extend(group)
            continue
        n_val = min(max(1, round(len(group) * val_fraction)), len(group) - 1)
        val.extend(group[:n_val])
        train.extend(group[n_val:])
    return Split(scan.classes, train, val, seed, val_fraction, per_class_limit, warnings)


def save_split(split: Split, path: str | os.PathLike, root: Path) -> None:
    def rel(sample: Sample) -> list:
        try:
            name = str(sample.path.relative_to(root))
        except ValueError:
            name = str(sample.path)
        return [name, split.classes[sample.label]]

    write_json(
        path,
        {
            "root": str(root),
            "seed": split.seed,
            "val_fraction": split.val_fraction,
            "per_class_limit": split.per_class_limit,
            "classes": split.classes,
            "train": [rel(s) for s in split.train],
            "val": [rel(s) for s in split.val],
        },
    )


def load_split(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
