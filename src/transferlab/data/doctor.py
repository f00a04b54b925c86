"""`transferlab doctor`: check an image folder (and optionally its test folder) before training.

Reports per-class counts, files that are not images or do not decode, hidden files that
tools leave behind, byte-identical duplicates (and copies filed under different classes),
train/test leaks, tiny images and class imbalance. A bad file is listed with its reason,
never raised: the point of the doctor is to find the bad files.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from transferlab.data.folder import FolderScan, scan_folder
from transferlab.data.images import ImageDecodeError, file_digest, load_rgb

# How many files each section of the human report lists before "... and N more".
MAX_LISTED = 10


@dataclass
class DoctorReport:
    """Findings of `run_doctor`; paths are absolute (as scanned), `to_dict` makes them relative."""

    root: Path
    test_root: Path | None
    classes: list[str]
    counts: dict[str, int]  # decodable images per class (train folder)
    test_counts: dict[str, int] | None  # decodable images per class found in the test folder
    unreadable: list[tuple[Path, str]]  # (path, reason), both folders
    hidden: list[Path]  # hidden files and folders, both folders; never counted
    duplicate_groups: list[list[Path]]  # byte-identical groups (>=2 files) within the train folder
    label_conflicts: list[list[Path]]  # the duplicate groups that span more than one class
    test_leaks: list[tuple[Path, Path]]  # (train file, test file), byte-identical
    tiny: list[tuple[Path, int, int]]  # (path, width, height) with a side below min_side
    imbalance_ratio: float  # largest / smallest nonzero class count; 0.0 if no class has images
    warnings: list[str]

    def relative(self, path: Path) -> str:
        """`path` relative to the train root where possible, else absolute (test files usually)."""
        return _relative_to(path, self.root) or str(path)

    def display(self, path: Path) -> str:
        """Short form for the human report: train files relative to root, test files marked."""
        inside_root = _relative_to(path, self.root)
        if inside_root is not None:
            return inside_root
        if self.test_root is not None:
            inside_test = _relative_to(path, self.test_root)
            if inside_test is not None:
                return f"test:{inside_test}"
        return str(path)

    def to_dict(self) -> dict:
        """Plain JSON-serialisable data (for `--json`)."""
        rel = self.relative
        return {
            "root": str(self.root),
            "test_root": None if self.test_root is None else str(self.test_root),
            "classes": list(self.classes),
            "counts": dict(self.counts),
            "test_counts": None if self.test_counts is None else dict(self.test_counts),
            "unreadable": [{"path": rel(path), "reason": reason} for path, reason in self.unreadable],
            "hidden": [rel(path) for path in self.hidden],
            "duplicate_groups": [[rel(path) for path in group] for group in self.duplicate_groups],
            "label_conflicts": [[rel(path) for path in group] for group in self.label_conflicts],
            "test_leaks": [{"train": rel(train), "test": rel(test)} for train, test in self.test_leaks],
            "tiny": [{"path": rel(path), "width": w, "height": h} for path, w, h in self.tiny],
            "imbalance_ratio": self.imbalance_ratio,
            "warnings": list(self.warnings),
        }

    def summary_lines(self) -> list[str]:
        """The human report, one short line each; long lists are cut after MAX_LISTED entries."""
        show = self.display
        lines = [f"train: {self.root} ({len(self.classes)} classes, {sum(self.counts.values())} images)"]
        if self.test_root is not None and self.test_counts is not None:
            lines.append(
                f"test: {self.test_root} ({len(self.test_counts)} classes, {sum(self.test_counts.values())} images)"
            )
        for name in self.classes:
            test_part = "" if self.test_counts is None else f" (test {self.test_counts.get(name, 0)})"
            lines.append(f"  {name}: {self.counts[name]}{test_part}")
        lines.append(f"imbalance ratio: {self.imbalance_ratio:.1f} (largest / smallest class)")

        lines.append(_count_phrase(len(self.unreadable), "unreadable or non-image file", "unreadable or non-image files"))
        lines += _listed(f"{show(path)}: {reason}" for path, reason in self.unreadable)
        lines.append(_count_phrase(len(self.hidden), "hidden file or folder", "hidden files or folders") + " (ignored)")
        lines += _listed(show(path) for path in self.hidden)
        lines.append(_duplicates_phrase(self.duplicate_groups))
        lines += _listed(" == ".join(show(path) for path in group) for group in self.duplicate_groups)
        lines.append(_count_phrase(len(self.label_conflicts), "label conflict") + " (same file in different classes)")
        lines += _listed(" == ".join(show(path) for path in group) for group in self.label_conflicts)
        if self.test_root is not None:
            lines.append(_count_phrase(len(self.test_leaks), "train/test leak") + " (same file in both)")
            lines += _listed(f"{show(train)} == {show(test)}" for train, test in self.test_leaks)
        lines.append(_count_phrase(len(self.tiny), "tiny image"))
        lines += _listed(f"{show(path)}: {w}x{h}" for path, w, h in self.tiny)
        lines += [f"warning: {warning}" for warning in self.warnings]
        return lines


def run_doctor(
    root: str | os.PathLike,
    test_root: str | os.PathLike | None = None,
    *,
    min_side: int = 32,
    imbalance_threshold: float = 3.0,
    progress: bool = False,
) -> DoctorReport:
    """Check `root` (one subfolder per class) and optionally `test_root`; never raises for a bad file.

    Raises TransferlabError (from `scan_folder`) if a folder is missing, has no class
    subfolders or no image files at all.
    """
    train_scan = scan_folder(root)
    # The test folder is scanned on its own class list, so classes it has and train lacks show up.
    test_scan = scan_folder(test_root) if test_root is not None else None
    scans = [train_scan] if test_scan is None else [train_scan, test_scan]

    unreadable = [(skipped.path, skipped.reason) for scan in scans for skipped in scan.skipped]
    hidden = [path for scan in scans for path in scan.hidden]
    samples = [(sample.path, scan.classes[sample.label]) for scan in scans for sample in scan.samples]

    decoded, failed, tiny = _decode_all([path for path, _ in samples], min_side, progress)
    unreadable += failed
    class_of = dict(samples)
    train_images = _decoded_of(train_scan, decoded)
    test_images = [] if test_scan is None else _decoded_of(test_scan, decoded)

    digests, hash_failed = _digests_of_possible_duplicates(train_images + test_images)
    unreadable += hash_failed
    duplicate_groups = _duplicate_groups(train_images, digests)
    label_conflicts = [group for group in duplicate_groups if len({class_of[p] for p in group}) > 1]
    test_leaks = _test_leaks(train_images, test_images, digests)

    counts = _counts(train_scan.classes, train_images, class_of)
    test_counts = None if test_scan is None else _counts(test_scan.classes, test_images, class_of)
    ratio = _imbalance_ratio(counts)
    warnings = _class_warnings(counts, ratio, imbalance_threshold)
    if test_counts is not None:
        warnings += _test_class_warnings(counts, test_counts)

    return DoctorReport(
        root=train_scan.root,
        test_root=None if test_scan is None else test_scan.root,
        classes=list(train_scan.classes),
        counts=counts,
        test_counts=test_counts,
        unreadable=unreadable,
        hidden=hidden,
        duplicate_groups=duplicate_groups,
        label_conflicts=label_conflicts,
        test_leaks=test_leaks,
        tiny=tiny,
        imbalance_ratio=ratio,
        warnings=warnings,
    )


def _decode_all(
    paths: list[Path], min_side: int, progress: bool
) -> tuple[set[Path], list[tuple[Path, str]], list[tuple[Path, int, int]]]:
    """Fully decode every image: a header read would miss truncated files.

    Returns the paths that decoded, the failures with reasons, and the tiny ones
    (size after EXIF rotation, which is what training sees).
    """
    decoded: set[Path] = set()
    failed: list[tuple[Path, str]] = []
    tiny: list[tuple[Path, int, int]] = []
    for path in tqdm(paths, desc="decoding", unit="img", disable=not progress):
        try:
            image = load_rgb(path)
        except ImageDecodeError as exc:
            failed.append((path, _decode_failure_reason(path, exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - some PIL plugins raise odd types on corrupt data
            failed.append((path, f"cannot decode: {type(exc).__name__}: {exc}"))
            continue
        decoded.add(path)
        width, height = image.size
        if width < min_side or height < min_side:
            tiny.append((path, width, height))
    return decoded, failed, tiny


def _decode_failure_reason(path: Path, exc: ImageDecodeError) -> str:
    """PIL calls an empty file 'not an image'; say 'empty' instead, it is the likelier fix (re-copy)."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
    except OSError:
        pass
    return str(exc)


def _decoded_of(scan: FolderScan, decoded: set[Path]) -> list[Path]:
    """The scan's images that decoded, in scan order (duplicates are only sought among images)."""
    return [sample.path for sample in scan.samples if sample.path in decoded]


def _digests_of_possible_duplicates(paths: list[Path]) -> tuple[dict[Path, str], list[tuple[Path, str]]]:
    """Hash only files whose byte size another file shares: a unique size cannot have a twin."""
    by_size: dict[int, list[Path]] = defaultdict(list)
    failed: list[tuple[Path, str]] = []
    for path in paths:
        try:
            by_size[path.stat().st_size].append(path)
        except OSError as exc:
            failed.append((path, f"cannot read: {exc.strerror or exc}"))
    digests: dict[Path, str] = {}
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        for path in same_size:
            try:
                digests[path] = file_digest(path)
            except OSError as exc:
                failed.append((path, f"cannot read: {exc.strerror or exc}"))
    return digests, failed


def _duplicate_groups(paths: list[Path], digests: dict[Path, str]) -> list[list[Path]]:
    """Groups of >=2 byte-identical files among `paths`, each sorted, ordered by first path."""
    by_digest: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        if path in digests:
            by_digest[digests[path]].append(path)
    groups = [sorted(group) for group in by_digest.values() if len(group) > 1]
    return sorted(groups)


def _test_leaks(train: list[Path], test: list[Path], digests: dict[Path, str]) -> list[tuple[Path, Path]]:
    """Every (train file, test file) pair with the same content."""
    train_by_digest: dict[str, list[Path]] = defaultdict(list)
    for path in train:
        if path in digests:
            train_by_digest[digests[path]].append(path)
    leaks = [
        (train_path, test_path)
        for test_path in test
        if test_path in digests
        for train_path in train_by_digest.get(digests[test_path], [])
    ]
    return sorted(leaks)


def _counts(classes: list[str], images: list[Path], class_of: dict[Path, str]) -> dict[str, int]:
    """Decodable images per class; a class whose files all fail to decode counts 0."""
    counts = {name: 0 for name in classes}
    for path in images:
        counts[class_of[path]] += 1
    return counts


def _imbalance_ratio(counts: dict[str, int]) -> float:
    nonzero = [count for count in counts.values() if count > 0]
    return max(nonzero) / min(nonzero) if nonzero else 0.0


def _class_warnings(counts: dict[str, int], ratio: float, threshold: float) -> list[str]:
    """Findings about the class list: too few classes or images, imbalance."""
    warnings = []
    if len(counts) == 1:
        warnings.append(f"only one class ('{next(iter(counts))}'): a classifier needs at least two")
    for name, count in counts.items():
        if count == 0:
            warnings.append(f"class '{name}' has no readable images")
        elif count == 1:
            warnings.append(f"class '{name}' has 1 image")
    if ratio > threshold:
        largest = max(counts, key=lambda name: counts[name])
        smallest = min((name for name in counts if counts[name] > 0), key=lambda name: counts[name])
        warnings.append(
            f"classes are imbalanced: '{largest}' has {counts[largest]} images, '{smallest}' has"
            f" {counts[smallest]} (ratio {ratio:.1f} > {threshold:g})"
        )
    return warnings


def _test_class_warnings(counts: dict[str, int], test_counts: dict[str, int]) -> list[str]:
    """Test classes must be training classes; a training class absent from test goes unmeasured."""
    warnings = [f"class '{name}' is in test but not in train" for name in test_counts if name not in counts]
    warnings += [
        f"class '{name}' has no test images" for name in counts if test_counts.get(name, 0) == 0
    ]
    return warnings


def _relative_to(path: Path, base: Path) -> str | None:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return None


def _count_phrase(count: int, noun: str, plural: str | None = None) -> str:
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def _duplicates_phrase(groups: list[list[Path]]) -> str:
    """'N pairs of byte-identical files', or groups when some hold three or more copies."""
    if all(len(group) == 2 for group in groups):
        return f"{len(groups)} pair{'' if len(groups) == 1 else 's'} of byte-identical files"
    files = sum(len(group) for group in groups)
    return f"{_count_phrase(len(groups), 'group')} of byte-identical files ({files} files)"


def _listed(items: Iterable[str]) -> list[str]:
    """Indented lines, the first MAX_LISTED, then how many were left out."""
    items = list(items)
    lines = [f"  {item}" for item in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f"  ... and {len(items) - MAX_LISTED} more")
    return lines
