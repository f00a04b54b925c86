"""Scan a folder of labelled images: one subfolder per class, images anywhere below it."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from transferlab.data.exclude import ExcludeList, read_exclude
from transferlab.data.images import is_image_path, special_file_reason
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
    excluded: bool = False  # left out on request (an exclude list), not because the file is bad


@dataclass
class FolderScan:
    """What a class-per-subfolder tree holds: images per class, plus what was left out and why."""

    root: Path
    classes: list[str]
    samples: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)
    hidden: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. a class folder without images

    def counts(self) -> dict[str, int]:
        counts = {name: 0 for name in self.classes}
        for sample in self.samples:
            counts[self.classes[sample.label]] += 1
        return counts


def _walk_files(directory: Path, hidden: list[Path], skipped: list[Skipped] | None = None) -> list[Path]:
    """Files below `directory`; folder links are not followed (one back to a parent would loop)
    and are listed in `skipped` instead."""
    files = []
    for current, dir_names, file_names in os.walk(directory):
        current_path = Path(current)
        for name in list(dir_names):
            if is_hidden_name(name):
                hidden.append(current_path / name)
                dir_names.remove(name)
            elif (current_path / name).is_symlink():
                if skipped is not None:
                    skipped.append(Skipped(current_path / name, "link to a folder: not followed"))
                dir_names.remove(name)
        dir_names.sort()
        for name in sorted(file_names):
            if is_hidden_name(name):
                hidden.append(current_path / name)
            else:
                files.append(current_path / name)
    return files


def scan_folder(
    root: str | os.PathLike,
    classes: list[str] | None = None,
    exclude: str | os.PathLike | ExcludeList | None = None,
) -> FolderScan:
    """List the images of `root`, one class per subfolder (sorted by name).

    `classes` fixes the class list and order (used for a test folder, which must use the
    training classes); a subfolder not in it is skipped and listed.
    `exclude` is an exclude list file (paths relative to `root`) or a loaded ExcludeList:
    the files it names are skipped with reason "excluded by FILE".
    A class folder without images stays in the class list, with a warning naming it.
    Raises TransferlabError if `root` is missing or holds no class folder with images.
    """
    # Absolute, so runs record where their data is whatever folder they are read from later.
    root_path = Path(root).expanduser().absolute()
    if not root_path.exists():
        raise TransferlabError(f"{root_path}: folder not found")
    if not root_path.is_dir():
        raise TransferlabError(f"{root_path}: not a folder (expected one subfolder per class)")
    if exclude is not None and not isinstance(exclude, ExcludeList):
        exclude = read_exclude(exclude, root_path)

    scan = FolderScan(root=root_path, classes=[], samples=[])
    class_dirs = _top_level(root_path, scan)
    scan.classes = list(classes) if classes is not None else [d.name for d in class_dirs]
    index = {name: i for i, name in enumerate(scan.classes)}
    for class_dir in class_dirs:
        _scan_class(class_dir, index.get(class_dir.name), scan, exclude)

    if not scan.samples:
        if not class_dirs:
            raise TransferlabError(f"{root_path}: no class subfolders found (expected one subfolder per class)")
        if any(skipped.excluded for skipped in scan.skipped):
            raise TransferlabError(f"{root_path}: no image files left after excluding those in {exclude.source}")
        raise TransferlabError(f"{root_path}: no image files found in its class subfolders")
    return scan


def _top_level(root: Path, scan: FolderScan) -> list[Path]:
    """The class folders of `root`; hidden entries and loose files are recorded on `scan`."""
    class_dirs = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if is_hidden_name(entry.name):
            scan.hidden.append(entry)
        elif entry.is_dir() and entry.is_symlink() and _links_into(entry, root):
            # A link to the data folder (or into it) would file every image again under a new class.
            scan.skipped.append(Skipped(entry, "link back into the data folder: not a class"))
        elif entry.is_dir():
            class_dirs.append(entry)
        else:
            scan.skipped.append(Skipped(entry, "file at the top level, not inside a class folder"))
    return class_dirs


def _links_into(link: Path, root: Path) -> bool:
    """True if folder link `link` resolves to `root`, a folder above it, or a folder inside it."""
    target, real_root = link.resolve(), root.resolve()
    return target == real_root or target in real_root.parents or real_root in target.parents


def _scan_class(class_dir: Path, label: int | None, scan: FolderScan, exclude: ExcludeList | None) -> None:
    files = _walk_files(class_dir, scan.hidden, scan.skipped)
    if label is None:
        scan.skipped.extend(Skipped(f, f"class '{class_dir.name}' is not a training class") for f in files)
        return
    found = 0
    for path in files:
        if exclude is not None and exclude.excludes(path):
            scan.skipped.append(Skipped(path, f"excluded by {exclude.source}", excluded=True))
        elif (reason := _not_a_file(path)) is not None:
            scan.skipped.append(Skipped(path, reason))
        elif is_image_path(path):
            scan.samples.append(Sample(path, label))
            found += 1
        else:
            scan.skipped.append(Skipped(path, f"not an image file (suffix '{path.suffix or '(none)'}')"))
    if not found:
        # Kept as a class (the label list must not shift), but a class the model never sees is worth a word.
        what = "its folder is empty" if not files else f"{len(files)} file(s) in its folder skipped"
        scan.warnings.append(f"class '{class_dir.name}' has no images ({what})")


def _not_a_file(path: Path) -> str | None:
    """Why `path` cannot be read as data (a broken link, a FIFO, a device...), or None if it is a regular file.

    Links are followed: `x.jpg -> /dev/zero` would be hashed forever and a FIFO named
    `x.png` would block its reader, so both are skipped here, before anything opens them.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "broken link: its target does not exist" if path.is_symlink() else "file vanished during the scan"
    except OSError as exc:
        return f"cannot read: {exc.strerror or type(exc).__name__}"
    return None if stat.S_ISREG(mode) else special_file_reason(mode)
