"""Scan a folder of labelled images: one subfolder per class, images anywhere below it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from transferlab.data.images import is_image_path
from transferlab.errors import TransferlabError

# Files and folders that tools leave behind; never data.
HIDDEN_DIR_NAMES = frozenset({".ipynb_checkpoints", "__MACOSX", ".git", ".svn"})
HIDDEN_FILE_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def is_hidden_name(name: str) -> bool:
    return name.startswith(".") or name in HIDDEN_FILE_NAMES or name in HIDDEN_DIR_NAMES


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass
class FolderScan:
    """What a class-per-subfolder tree holds: images per class, plus what was left out and why."""

    root: Path
    classes: list[str]
    samples: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)
    hidden: list[Path] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = {name: 0 for name in self.classes}
        for sample in self.samples:
            counts[self.classes[sample.label]] += 1
        return counts


def _walk_files(directory: Path, hidden: list[Path]) -> list[Path]:
    files = []
    for current, dir_names, file_names in os.walk(directory):
        current_path = Path(current)
        for name in [d for d in dir_names if is_hidden_name(d)]:
            hidden.append(current_path / name)
            dir_names.remove(name)
        dir_names.sort()
        for name in sorted(file_names):
            if is_hidden_name(name):
                hidden.append(current_path / name)
            else:
                files.append(current_path / name)
    return files


def scan_folder(root: str | os.PathLike, classes: list[str] | None = None) -> FolderScan:
    """List the images of `root`, one class per subfolder (sorted by name).

    `classes` fixes the class list and order (used for a test folder, which must use the
    training classes); a subfolder not in it is skipped and listed.
    Raises TransferlabError if `root` is missing or holds no class folder with images.
    """
    # Absolute, so runs record where their data is whatever folder they are read from later.
    root_path = Path(root).expanduser().absolute()
    if not root_path.exists():
        raise TransferlabError(f"{root_path}: folder not found")
    if not root_path.is_dir():
        raise TransferlabError(f"{root_path}: not a folder (expected one subfolder per class)")

    hidden: list[Path] = []
    skipped: list[Skipped] = []
    class_dirs = []
    for entry in sorted(root_path.iterdir(), key=lambda p: p.name):
        if is_hidden_name(entry.name):
            hidden.append(entry)
        elif entry.is_dir():
            class_dirs.append(entry)
        else:
            skipped.append(Skipped(entry, "file at the top level, not inside a class folder"))

    found_names = [d.name for d in class_dirs]
    class_names = list(classes) if classes is not None else found_names
    index = {name: i for i, name in enumerate(class_names)}
    samples: list[Sample] = []
    for class_dir in class_dirs:
        label = index.get(class_dir.name)
        files = _walk_files(class_dir, hidden)
        if label is None:
            skipped.extend(Skipped(f, f"class '{class_dir.name}' is not a training class") for f in files)
            continue
        for path in files:
            if is_image_path(path):
                samples.append(Sample(path, label))
            else:
                skipped.append(Skipped(path, f"not an image file (suffix '{path.suffix or '(none)'}')"))

    if not samples:
        if not class_dirs:
            raise TransferlabError(f"{root_path}: no class subfolders found (expected one subfolder per class)")
        raise TransferlabError(f"{root_path}: no image files found in its class subfolders")
    return FolderScan(root=root_path, classes=class_names, samples=samples, skipped=skipped, hidden=hidden)
