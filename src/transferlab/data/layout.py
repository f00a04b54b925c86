"""From a data folder to train / validation / test: the one entry point the pipelines call.

Two layouts are recognised:
- class folders: data/<class>/... is split into train and validation here (stratified, seeded,
  copies of one image kept on one side);
- pre-split: data/train/<class>/..., data/val/<class>/... (or validation/), and optionally
  data/test/<class>/..., used as given. Without this check such a folder would silently train
  a two-class "train vs val" model.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from transferlab.data.duplicates import duplicate_keys
from transferlab.data.exclude import ExcludeList, read_exclude
from transferlab.data.folder import FolderScan, Sample, Skipped, is_hidden_name, scan_folder
from transferlab.data.split import Split, check_split_settings, require_two_classes, stratified_split
from transferlab.errors import TransferlabError

TRAIN_NAMES = ("train",)
VAL_NAMES = ("val", "validation")
TEST_NAMES = ("test",)


@dataclass
class Layout:
    """Where the sides of a data folder are; `train` is None for the class-folders layout."""

    root: Path
    train: Path | None = None
    val: Path | None = None
    test: Path | None = None
    loose: list[Path] = field(default_factory=list)  # top-level files of a pre-split folder

    @property
    def pre_split(self) -> bool:
        return self.train is not None

    def describe(self) -> str:
        parts = [f"{self.train.name}/ -> train", f"{self.val.name}/ -> validation"]
        if self.test is not None:
            parts.append(f"{self.test.name}/ -> test")
        return "pre-split layout: " + ", ".join(parts)


def detect_layout(root: str | os.PathLike) -> Layout:
    """Recognise data/train + data/val|validation (+ data/test); anything else is class folders.

    Raises TransferlabError for an ambiguous pre-split folder (both val/ and validation/, or
    other folders beside train/ and val/), naming what to fix.
    """
    root_path = Path(root).expanduser().absolute()
    if not root_path.is_dir():
        return Layout(root_path)  # scan_folder says what is wrong with it
    folders: dict[str, Path] = {}
    all_folders: list[Path] = []
    loose: list[Path] = []
    for entry in sorted(root_path.iterdir(), key=lambda p: p.name):
        if is_hidden_name(entry.name):
            continue
        if entry.is_dir():
            folders.setdefault(entry.name.lower(), entry)
            all_folders.append(entry)
        else:
            loose.append(entry)
    train = [folders[n] for n in TRAIN_NAMES if n in folders]
    val = [folders[n] for n in VAL_NAMES if n in folders]
    if not train or not val:
        return Layout(root_path)
    if len(val) > 1:
        raise TransferlabError(f"{root_path}: has both val/ and validation/ folders: keep one")
    test = [folders[n] for n in TEST_NAMES if n in folders]
    known = {p.name for p in train + val + test}
    others = [p.name for p in all_folders if p.name not in known]
    if others:
        raise TransferlabError(
            f"{root_path}: pre-split layout (train/, {val[0].name}/) but also holds '{others[0]}/': "
            "move it out, or into train/ as a class"
        )
    return Layout(root_path, train[0], val[0], test[0] if test else None, loose)


@dataclass
class ScannedData:
    """The scanned sides of a data folder, before any split."""

    layout: Layout
    train: FolderScan  # the class folders' scan; pre-split: train/
    val: FolderScan | None  # pre-split only
    test: FolderScan | None
    notes: list[str]

    @property
    def data(self) -> FolderScan:
        """Train and val together, rooted at the data folder: what the training side is drawn from."""
        if self.val is None:
            return self.train
        loose = [Skipped(p, "file at the top level, not inside train/ or val/") for p in self.layout.loose]
        return FolderScan(
            root=self.layout.root,
            classes=list(self.train.classes),
            samples=self.train.samples + self.val.samples,
            skipped=loose + self.train.skipped + self.val.skipped,
            hidden=self.train.hidden + self.val.hidden,
            warnings=_side_warnings(self.train, "train") + _side_warnings(self.val, "val"),
        )


def _side_warnings(scan: FolderScan, side: str) -> list[str]:
    return [f"{side}/: {warning}" for warning in scan.warnings]


def scan_data(
    data: str | os.PathLike,
    test: str | os.PathLike | None = None,
    exclude: str | os.PathLike | ExcludeList | None = None,
    *,
    lenient: bool = False,
) -> ScannedData:
    """Scan a data folder in either layout, and its test folder (--test, or pre-split test/).

    Pre-split val/ and test/ must hold the same class folders as train/ (one-line error naming
    the folder otherwise). `lenient` (the doctor's view) turns that error into a note and scans
    a test folder on its own class list, so its extra classes show up.
    """
    layout = detect_layout(data)
    if exclude is not None and not isinstance(exclude, ExcludeList):
        exclude = read_exclude(exclude, layout.root)  # read before anything slow, and relative to data
    if layout.test is not None and test is not None:
        raise TransferlabError(f"{layout.root}: has its own {layout.test.name}/ folder and --test {test} was "
                               "also given: use one of them")
    notes = [layout.describe()] if layout.pre_split else []
    train = scan_folder(layout.train or layout.root, exclude=exclude)
    val = None
    if layout.val is not None:
        notes += _class_check(train, layout.val, lenient)
        val = scan_folder(layout.val, classes=train.classes, exclude=exclude)
    test_dir = layout.test if layout.test is not None else test
    test_scan = None
    if test_dir is not None:
        if layout.test is not None:
            notes += _class_check(train, layout.test, lenient)
        test_scan = scan_folder(test_dir, classes=None if lenient else train.classes, exclude=exclude)
    if exclude is not None and exclude.unmatched():
        missing = exclude.unmatched()
        notes.append(f"{exclude.source}: {len(missing)} listed path(s) match no file (e.g. {missing[0]})")
    return ScannedData(layout, train, val, test_scan, notes)


def _class_check(train: FolderScan, folder: Path, lenient: bool) -> list[str]:
    """Pre-split sides must hold the same class folders as train/."""
    found = {p.name for p in folder.iterdir() if p.is_dir() and not is_hidden_name(p.name)}
    missing = [name for name in train.classes if name not in found]
    extra = sorted(found - set(train.classes))
    if not missing and not extra:
        return []
    parts = ([f"missing {', '.join(repr(n) for n in missing)}"] if missing else []) + (
        [f"extra {', '.join(repr(n) for n in extra)}"] if extra else [])
    message = f"{folder}: class folders differ from {train.root.name}/: {'; '.join(parts)}"
    if not lenient:
        raise TransferlabError(message)
    return [message]


@dataclass
class PreparedData:
    """What a pipeline trains and evaluates on."""

    root: Path  # the data folder: save split.json relative to it
    scan: FolderScan  # everything train and val were drawn from (pre-split: train/ and val/), rooted at `root`
    split: Split
    test_scan: FolderScan | None
    notes: list[str]  # layout, empty classes, duplicates kept together, split warnings: show them all
    layout: str  # "class folders" or "pre-split"

    @property
    def skipped(self) -> list[Skipped]:
        """Every file left out, with its reason (train, val and test sides)."""
        return self.scan.skipped + (self.test_scan.skipped if self.test_scan is not None else [])


def prepare_data(
    data: str | os.PathLike,
    test: str | os.PathLike | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    per_class: int | None = None,
    exclude: str | os.PathLike | None = None,
    train_per_class: int | None = None,
) -> PreparedData:
    """Scan `data` (either layout) and `test`, apply the exclude list, and split train/validation.

    Class folders: a stratified, seeded split that keeps byte-identical copies on one side.
    Pre-split: train/ and val/ as given; `per_class` then subsamples train/ only (seeded), so
    the validation set stays the one the folder defines, and `val_fraction` is not used.
    `train_per_class` limits the training images per class and leaves validation as it is.
    """
    check_split_settings(val_fraction, per_class, train_per_class)
    scanned = scan_data(data, test, exclude)
    data_scan = scanned.data
    notes = scanned.notes + data_scan.warnings
    if scanned.test is not None:
        notes += [f"test: {warning}" for warning in scanned.test.warnings]
    if scanned.val is None:
        keys = duplicate_keys(s.path for s in data_scan.samples)
        split = stratified_split(data_scan, val_fraction, seed, per_class, group_of=keys, train_limit=train_per_class)
        notes += _duplicate_notes(keys, data_scan)
    else:
        split = _given_split(scanned, seed, min((n for n in (per_class, train_per_class) if n is not None),
                                                default=None))
        notes += _leak_notes(scanned)
    if scanned.test is not None:
        notes += _test_leak_notes(split, scanned.test)
    return PreparedData(scanned.layout.root, data_scan, split, scanned.test, notes + split.warnings,
                        "pre-split" if scanned.layout.pre_split else "class folders")


def _given_split(scanned: ScannedData, seed: int, per_class: int | None) -> Split:
    require_two_classes(scanned.train)
    train = scanned.train.samples
    if per_class is not None:
        train = _subsample(train, per_class, seed)
    val = scanned.val.samples
    fraction = round(len(val) / (len(train) + len(val)), 4)
    return Split(list(scanned.train.classes), train, val, seed, fraction, per_class, [])


def _subsample(samples: list[Sample], limit: int, seed: int) -> list[Sample]:
    """At most `limit` files per class, drawn with `seed` (sorted first: independent of listing order)."""
    rng = random.Random(seed)
    kept: list[Sample] = []
    for label in sorted({s.label for s in samples}):
        group = sorted((s for s in samples if s.label == label), key=lambda s: str(s.path))
        rng.shuffle(group)
        kept += group[:limit]
    return kept


def _duplicate_notes(keys: dict, scan: FolderScan) -> list[str]:
    groups: dict = {}
    for sample in scan.samples:
        if sample.path in keys:
            groups.setdefault(keys[sample.path], set()).add(sample.label)
    if not groups:
        return []
    files = sum(1 for s in scan.samples if s.path in keys)
    notes = [(f"{len(groups)} group(s) of byte-identical files ({files} files) kept on one side of the "
              "train/validation split")]
    conflicts = sum(1 for labels in groups.values() if len(labels) > 1)
    if conflicts:
        notes.append(f"{conflicts} of them span classes (label conflicts): run `transferlab doctor` to list them")
    return notes


def _test_leak_notes(split: Split, test: FolderScan) -> list[str]:
    """Test images that are also training or validation images (the same file, or a byte-identical
    copy, as with --test given the data folder itself): the test figures are then not held out."""
    seen = [s.path for s in split.train + split.val]
    keys = duplicate_keys(seen + [s.path for s in test.samples])
    seen_keys = {keys[p] for p in seen if p in keys}
    resolved = {p.resolve() for p in seen}
    leaked = [s.path for s in test.samples if s.path.resolve() in resolved or keys.get(s.path) in seen_keys]
    if not leaked:
        return []
    return [(f"{len(leaked)} of {len(test.samples)} test file(s) are also training or validation images (the "
             "same file or a byte-identical copy): the test figures are not held out; run `transferlab doctor`")]


def _leak_notes(scanned: ScannedData) -> list[str]:
    """A pre-split folder's split is the user's: copies across train/ and val/ are reported, not moved."""
    train_paths = {s.path for s in scanned.train.samples}
    keys = duplicate_keys([s.path for s in scanned.train.samples + scanned.val.samples])
    train_keys = {keys[p] for p in train_paths if p in keys}
    leaked = [s.path for s in scanned.val.samples if keys.get(s.path) in train_keys]
    if not leaked:
        return []
    return [(f"{len(leaked)} file(s) in {scanned.layout.val.name}/ are byte-identical to files in "
             f"{scanned.layout.train.name}/ (validation leak): run `transferlab doctor` to list them")]
