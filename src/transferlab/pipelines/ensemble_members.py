"""The runs an ensemble combines: opened, checked against each other, copied into the ensemble.

Members must predict the same classes in the same order, and must have been validated on
the same images (same data, seed and validation fraction): the ensemble is scored on those
images, so no member may have trained on any of them. Everything is checked before the
ensemble's folder is touched, one line naming the run at fault.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from transferlab.atomic import atomic_path
from transferlab.card import KIND_FILES, MAX_MEMBERS
from transferlab.data.folder import Sample
from transferlab.data.split import load_split
from transferlab.errors import TransferlabError
from transferlab.runs import MEMBER_KINDS, OpenRun, open_run


@dataclass
class Members:
    runs: list[OpenRun]
    names: list[str]  # m00, m01, ...: their folders under the ensemble's model/members/
    classes: list[str]
    val: list[Sample]  # the validation images every member shares, in member 0's order
    root: Path  # the data folder the members split


def open_members(paths: list[str | Path]) -> Members:
    if len(paths) < 2:
        raise TransferlabError("an ensemble needs at least 2 runs")
    if len(paths) > MAX_MEMBERS:
        raise TransferlabError(f"an ensemble takes at most {MAX_MEMBERS} runs, got {len(paths)}")
    runs = [open_run(p) for p in paths]
    seen: dict[str, Path] = {}
    for run in runs:
        if run.card.kind not in MEMBER_KINDS:
            raise TransferlabError(f"{run.path}: a '{run.card.kind}' run cannot be a member: give its own "
                                   "probe and fine-tuned runs instead")
        real = os.path.realpath(run.path)
        if real in seen:
            raise TransferlabError(f"{run.path}: given twice (also as {seen[real]})")
        seen[real] = run.path
    first = runs[0]
    for run in runs[1:]:
        if run.card.classes != first.card.classes:
            raise TransferlabError(f"{run.path}: its classes differ from {first.path}'s "
                                   f"({_difference(run.card.classes, first.card.classes)}); an ensemble combines "
                                   "runs trained on the same classes")
    val, root = _shared_validation(runs)
    return Members(runs, [f"m{i:02d}" for i in range(len(runs))], list(first.card.classes), val, root)


def _difference(theirs: list[str], ours: list[str]) -> str:
    extra, missing = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
    parts = ([f"has {', '.join(extra[:3])}"] if extra else []) + ([f"lacks {', '.join(missing[:3])}"] if missing
                                                                    else [])
    return "; ".join(parts) or "same names in another order"


def _validation_of(run: OpenRun) -> tuple[Path, list[tuple[str, str]], set[str]]:
    """(data root, val [(absolute path, class)], training paths) from the run's split.json."""
    split = load_split(run.path / "split.json")
    root = Path(split["root"])
    if not root.is_absolute():
        raise TransferlabError(f"{run.path / 'split.json'}: data root {str(root)!r} is not absolute; "
                               "re-run the member with this transferlab")

    def absolute(name: str) -> str:
        return os.path.normpath(os.path.join(root, name))

    return root, [(absolute(n), c) for n, c in split["val"]], {absolute(n) for n, _ in split["train"]}


def _shared_validation(runs: list[OpenRun]) -> tuple[list[Sample], Path]:
    splits = [_validation_of(run) for run in runs]  # each split.json read once
    root, val, _ = splits[0]
    if not val:
        raise TransferlabError(f"{runs[0].path}: has no validation images to score an ensemble on")
    reference, val_paths = set(val), {p for p, _ in val}
    for run, (_, theirs, trained) in zip(runs, splits):
        leaked = len(val_paths & trained)
        if leaked:
            raise TransferlabError(f"{run.path}: trained on {leaked} of the ensemble's {len(val)} validation images; "
                                   "train every member with the same data, seed and val fraction")
        if set(theirs) != reference:
            shared = len(set(theirs) & reference)
            raise TransferlabError(f"{run.path}: validated on other images than {runs[0].path} ({shared} of "
                                   f"{len(val)} shared); train every member with the same data, seed and val "
                                   "fraction")
    index = {c: i for i, c in enumerate(runs[0].card.classes)}
    unknown = next((c for _, c in val if c not in index), None)
    if unknown is not None:  # split.json names its own classes: a hostile one need not match the card's
        raise TransferlabError(f"{runs[0].path / 'split.json'}: validation class {unknown[:60]!r} is not one of "
                               "the run's classes")
    missing = next((p for p, _ in val if not os.path.isfile(p)), None)
    if missing is not None:
        raise TransferlabError(f"{missing}: validation image not found (the ensemble scores the members' "
                               "validation images again)")
    return [Sample(Path(p), index[c]) for p, c in val], root


def copy_members(members: Members, model_dir: Path, tta: str | None = None) -> None:
    """Each member's model files into model/members/mNN/: the ensemble folder stands alone.

    Only the files a model loader reads, each a regular file (not a link), written
    atomically; the members' own folders are only read. `tta`: every member's copy
    predicts with this test-time augmentation instead of its own.
    """
    for run, name in zip(members.runs, members.names):
        target = model_dir / "members" / name
        target.mkdir(parents=True, exist_ok=True)
        for file in KIND_FILES[run.card.kind]:  # what its loader reads: no stray (or huge) file rides along
            source = run.model_dir / file
            if source.is_symlink():
                raise TransferlabError(f"{source}: is a link; an ensemble copies only regular model files")
            if source.is_file():
                with atomic_path(target / file) as tmp:
                    shutil.copyfile(source, tmp)
        if tta is not None:
            dataclasses.replace(run.card, tta=tta).write(target)


def drop_members(model_dir: Path, names: list[str]) -> None:
    """Remove the copies `copy_members` made of these members (from the ensemble's own, new folder;
    a member's own run is never touched)."""
    for name in names:
        target = model_dir / "members" / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
