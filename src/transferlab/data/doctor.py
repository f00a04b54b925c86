"""`transferlab doctor`: check an image folder (and optionally its test folder) before training.

Reports per-class counts, files that are not images or do not decode, hidden files that
tools leave behind, byte-identical duplicates and near-duplicates (resized or re-encoded
copies, by perceptual hash), copies filed under different classes, train/test and (for a
pre-split folder) train/val leaks, tiny images and class imbalance. A bad file is listed
with its reason, never raised: the point of the doctor is to find the bad files.
The findings are a `DoctorReport` (see `doctor_report`), which can also write an exclude list.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from transferlab.data.doctor_report import DoctorReport, NearPair
from transferlab.data.duplicates import (
    NEAR_DISTANCE,
    digests_of_possible_duplicates,
    exact_groups,
    near_pairs,
    perceptual_hash,
)
from transferlab.data.exclude import ExcludeList
from transferlab.data.folder import FolderScan
from transferlab.data.images import ImageDecodeError, load_rgb
from transferlab.data.layout import ScannedData, scan_data
from transferlab.errors import TransferlabError

__all__ = ["DoctorReport", "run_doctor"]


def run_doctor(
    root: str | os.PathLike,
    test_root: str | os.PathLike | None = None,
    *,
    min_side: int = 32,
    imbalance_threshold: float = 3.0,
    progress: bool = False,
    exclude: str | os.PathLike | ExcludeList | None = None,
    near_distance: int | None = NEAR_DISTANCE,
) -> DoctorReport:
    """Check `root` (class folders, or pre-split train/ val/ [test/]) and optionally `test_root`.

    Never raises for a bad file. `exclude` is an exclude list (paths relative to `root`) whose
    files are left out and listed; `near_distance` is the largest perceptual-hash distance
    (of 64 bits) of a near-duplicate, None to skip the search.
    Raises TransferlabError (from the scan) if a folder is missing, has no class subfolders
    or no image files at all, or the exclude list cannot be read.
    """
    if near_distance is not None and not 0 <= near_distance <= 64:
        raise TransferlabError(f"near-duplicate distance must be between 0 and 64 bits, got {near_distance}")
    # lenient: the test folder is scanned on its own class list, so classes it has and train lacks show up.
    scanned = scan_data(root, test_root, exclude, lenient=True)
    data_scan, test_scan = scanned.data, scanned.test
    scans = [data_scan] if test_scan is None else [data_scan, test_scan]
    skipped = [skipped for scan in scans for skipped in scan.skipped]
    unreadable = [(s.path, s.reason) for s in skipped if not s.excluded]
    samples = [(sample.path, scan.classes[sample.label]) for scan in scans for sample in scan.samples]

    decoded, failed, tiny, hashes = _decode_all([path for path, _ in samples], min_side, progress,
                                                near_distance is not None)
    class_of = dict(samples)
    train_images = _decoded_of(data_scan, decoded)
    test_images = [] if test_scan is None else _decoded_of(test_scan, decoded)

    digests, hash_failed = digests_of_possible_duplicates(train_images + test_images)
    unreadable += failed + hash_failed
    duplicate_groups = exact_groups(train_images, digests)
    near = _near_findings(train_images, test_images, hashes, digests, near_distance)

    counts = _counts(data_scan.classes, train_images, class_of)
    test_counts = None if test_scan is None else _counts(test_scan.classes, test_images, class_of)
    ratio = _imbalance_ratio(counts)
    warnings = _class_warnings(counts, ratio, imbalance_threshold) + _test_class_warnings(counts, test_counts)
    return DoctorReport(
        root=data_scan.root,
        test_root=None if test_scan is None else test_scan.root,
        classes=list(data_scan.classes),
        counts=counts,
        test_counts=test_counts,
        unreadable=unreadable,
        hidden=[path for scan in scans for path in scan.hidden],
        duplicate_groups=duplicate_groups,
        label_conflicts=[group for group in duplicate_groups if len({class_of[p] for p in group}) > 1],
        test_leaks=_test_leaks(train_images, test_images, digests),
        tiny=tiny,
        imbalance_ratio=ratio,
        warnings=warnings,
        near_duplicates=near["within"],
        near_conflicts=[(a, b, d) for a, b, d in near["within"] if class_of[a] != class_of[b]],
        near_leaks=near["across"],
        val_leaks=_val_leaks(scanned, duplicate_groups, near["within"]),
        excluded=[(s.path, s.reason) for s in skipped if s.excluded],
        undecodable=sorted({path for path, _ in failed + hash_failed}),
        near_distance=near_distance,
        layout="pre-split" if scanned.layout.pre_split else "class folders",
        notes=scanned.notes + (data_scan.warnings if scanned.val is not None else []),
    )


def _decode_all(
    paths: list[Path], min_side: int, progress: bool, want_hashes: bool
) -> tuple[set[Path], list[tuple[Path, str]], list[tuple[Path, int, int]], dict[Path, np.ndarray]]:
    """Fully decode every image: a header read would miss truncated files.

    Returns the paths that decoded, the failures with reasons, the tiny ones (size after
    EXIF rotation, which is what training sees), and, if wanted, each image's perceptual
    hashes (computed here, while the image is decoded anyway).
    """
    decoded: set[Path] = set()
    failed: list[tuple[Path, str]] = []
    tiny: list[tuple[Path, int, int]] = []
    hashes: dict[Path, np.ndarray] = {}
    for path in tqdm(paths, desc="decoding", unit="img", disable=not progress):
        try:
            image = load_rgb(path)
            if want_hashes:
                hashes[path] = perceptual_hash(image)
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
    return decoded, failed, tiny, hashes


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


def _near_findings(
    train: list[Path], test: list[Path], hashes: dict[Path, np.ndarray], digests: dict[Path, str],
    max_distance: int | None,
) -> dict[str, list[NearPair]]:
    """Near-duplicate pairs within the data ('within') and data-to-test ('across'), byte-identical ones left out."""
    if max_distance is None:
        return {"within": [], "across": []}
    train = [p for p in train if p in hashes]
    test = [p for p in test if p in hashes]
    stack = lambda paths: np.stack([hashes[p] for p in paths]) if paths else np.zeros((0, 2), np.uint64)

    def identical(a: Path, b: Path) -> bool:
        return a in digests and digests[a] == digests.get(b)

    within = [(min(train[i], train[j]), max(train[i], train[j]), d)
              for i, j, d in near_pairs(stack(train), None, max_distance) if not identical(train[i], train[j])]
    across = [(train[i], test[j], d)
              for i, j, d in near_pairs(stack(train), stack(test), max_distance) if not identical(train[i], test[j])]
    return {"within": sorted(within), "across": sorted(across)}


def _val_leaks(scanned: ScannedData, groups: list[list[Path]], near: list[NearPair]) -> list[NearPair]:
    """Pre-split only: (train/ file, val/ file, distance) copies, exact (distance 0) or near."""
    if scanned.val is None:
        return []
    in_val = {sample.path for sample in scanned.val.samples}
    leaks = [(a, b, 0) for group in groups for a in group if a not in in_val for b in group if b in in_val]
    for a, b, distance in near:
        if (a in in_val) != (b in in_val):
            leaks.append((b, a, distance) if a in in_val else (a, b, distance))
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


def _test_class_warnings(counts: dict[str, int], test_counts: dict[str, int] | None) -> list[str]:
    """Test classes must be training classes; a training class absent from test goes unmeasured."""
    if test_counts is None:
        return []
    warnings = [f"class '{name}' is in test but not in train" for name in test_counts if name not in counts]
    warnings += [
        f"class '{name}' has no test images" for name in counts if test_counts.get(name, 0) == 0
    ]
    return warnings


