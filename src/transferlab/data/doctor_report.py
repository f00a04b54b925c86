"""The doctor's findings (`DoctorReport`): human lines, JSON data, problems for --strict, an exclude list.

Every string it hands out is printable on a strict UTF-8 stream: a file name with bytes that
are not UTF-8 shows them as `\\xNN` escapes (see `transferlab.data.names`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from transferlab.data.duplicates import NEAR_DISTANCE, connected_groups
from transferlab.data.exclude import write_exclude_file
from transferlab.data.names import printable

# How many files each section of the human report lists before "... and N more".
MAX_LISTED = 10

NearPair = tuple[Path, Path, int]  # (file, file, Hamming distance); 0 with a byte-identical pair


@dataclass
class DoctorReport:
    """Findings of `run_doctor`; paths are absolute (as scanned), `to_dict` makes them relative."""

    root: Path
    test_root: Path | None
    classes: list[str]
    counts: dict[str, int]  # decodable images per class (the data folder; pre-split: train/ and val/)
    test_counts: dict[str, int] | None  # decodable images per class found in the test folder
    unreadable: list[tuple[Path, str]]  # (path, reason), both folders
    hidden: list[Path]  # hidden files and folders, both folders; never counted
    duplicate_groups: list[list[Path]]  # byte-identical groups (>=2 files) within the data folder
    label_conflicts: list[list[Path]]  # the duplicate groups that span more than one class
    test_leaks: list[tuple[Path, Path]]  # (data file, test file), byte-identical
    tiny: list[tuple[Path, int, int]]  # (path, width, height) with a side below min_side
    imbalance_ratio: float  # largest / smallest nonzero class count; 0.0 if no class has images
    warnings: list[str]
    near_duplicates: list[NearPair] = field(default_factory=list)  # within the data, not byte-identical
    near_conflicts: list[NearPair] = field(default_factory=list)  # near_duplicates filed under different classes
    near_leaks: list[NearPair] = field(default_factory=list)  # (data file, test file, distance), not byte-identical
    val_leaks: list[NearPair] = field(default_factory=list)  # pre-split: (train/ file, val/ file, distance)
    excluded: list[tuple[Path, str]] = field(default_factory=list)  # left out by the exclude list
    undecodable: list[Path] = field(default_factory=list)  # image files that failed to decode or read
    near_distance: int | None = NEAR_DISTANCE  # None: near-duplicates were not sought
    layout: str = "class folders"
    notes: list[str] = field(default_factory=list)  # layout, class-list mismatches, unmatched exclude entries

    def relative(self, path: Path) -> str:
        """`path` relative to the data root where possible, else absolute (test files usually)."""
        return _relative_to(path, self.root) or str(path)

    def display(self, path: Path) -> str:
        """Short form for the human report: data files relative to root, test files marked."""
        inside_root = _relative_to(path, self.root)
        if inside_root is not None:
            return printable(inside_root)
        if self.test_root is not None:
            inside_test = _relative_to(path, self.test_root)
            if inside_test is not None:
                return printable(f"test:{inside_test}")
        return printable(str(path))

    def problems(self, near: bool = False) -> list[str]:
        """Findings that make training or evaluation results wrong (label conflicts, leaks), one line each.

        Empty when there are none; the CLI's --strict exits non-zero otherwise. Near-duplicate
        findings count only with `near`: look-alike images that are not copies (2,624 elpv solar
        cells give 295 pairs within distance 4) would otherwise fail every strict check.
        """
        found = [
            (len(self.label_conflicts), "label conflict", "same file in different classes"),
            (len(self.test_leaks), "train/test leak", "same file in both"),
            (len(self.val_leaks), "train/val leak", "same or similar image in train/ and val/"),
        ]
        if near:
            found += [
                (len(self.near_conflicts), "near-duplicate label conflict", "similar image in different classes"),
                (len(self.near_leaks), "near-duplicate train/test leak", "similar image in both"),
            ]
        return [f"{_count_phrase(count, noun)} ({why})" for count, noun, why in found if count]

    def to_dict(self) -> dict:
        """Plain JSON-serialisable data (for `--json`); every string printable."""
        rel = lambda path: printable(self.relative(path))
        near = lambda pairs, a, b: [{a: rel(x), b: rel(y), "distance": d} for x, y, d in pairs]
        return {
            "root": printable(str(self.root)),
            "test_root": None if self.test_root is None else printable(str(self.test_root)),
            "layout": self.layout,
            "classes": [printable(name) for name in self.classes],
            "counts": {printable(k): v for k, v in self.counts.items()},
            "test_counts": None if self.test_counts is None else {printable(k): v for k, v in self.test_counts.items()},
            "unreadable": [{"path": rel(path), "reason": printable(reason)} for path, reason in self.unreadable],
            "excluded": [{"path": rel(path), "reason": printable(reason)} for path, reason in self.excluded],
            "hidden": [rel(path) for path in self.hidden],
            "duplicate_groups": [[rel(path) for path in group] for group in self.duplicate_groups],
            "label_conflicts": [[rel(path) for path in group] for group in self.label_conflicts],
            "test_leaks": [{"train": rel(train), "test": rel(test)} for train, test in self.test_leaks],
            "near_distance": self.near_distance,
            "near_duplicates": near(self.near_duplicates, "a", "b"),
            "near_conflicts": near(self.near_conflicts, "a", "b"),
            "near_leaks": near(self.near_leaks, "train", "test"),
            "val_leaks": near(self.val_leaks, "train", "val"),
            "tiny": [{"path": rel(path), "width": w, "height": h} for path, w, h in self.tiny],
            "imbalance_ratio": self.imbalance_ratio,
            "warnings": [printable(w) for w in self.warnings],
            "notes": [printable(n) for n in self.notes],
            "problems": self.problems(),
            "near_problems": [p for p in self.problems(near=True) if p not in self.problems()],
        }

    def summary_lines(self) -> list[str]:
        """The human report, one short line each; long lists are cut after MAX_LISTED entries."""
        show = self.display
        lines = [printable(f"train: {self.root} ({len(self.classes)} classes, {sum(self.counts.values())} images)")]
        if self.test_root is not None and self.test_counts is not None:
            lines.append(printable(
                f"test: {self.test_root} ({len(self.test_counts)} classes, {sum(self.test_counts.values())} images)"
            ))
        lines += [f"note: {printable(note)}" for note in self.notes]
        for name in self.classes:
            test_part = "" if self.test_counts is None else f" (test {self.test_counts.get(name, 0)})"
            lines.append(printable(f"  {name}: {self.counts[name]}{test_part}"))
        lines.append(f"imbalance ratio: {self.imbalance_ratio:.1f} (largest / smallest class)")

        lines.append(_count_phrase(len(self.unreadable), "unreadable or non-image file", "unreadable or non-image files"))
        lines += _listed(f"{show(path)}: {printable(reason)}" for path, reason in self.unreadable)
        if self.excluded:
            lines.append(_count_phrase(len(self.excluded), "file") + " left out by the exclude list")
            lines += _listed(show(path) for path, _ in self.excluded)
        lines.append(_count_phrase(len(self.hidden), "hidden file or folder", "hidden files or folders") + " (ignored)")
        lines += _listed(show(path) for path in self.hidden)
        lines.append(_duplicates_phrase(self.duplicate_groups))
        lines += _listed(" == ".join(show(path) for path in group) for group in self.duplicate_groups)
        lines.append(_count_phrase(len(self.label_conflicts), "label conflict") + " (same file in different classes)")
        lines += _listed(" == ".join(show(path) for path in group) for group in self.label_conflicts)
        lines += self._near_lines()
        if self.val_leaks:
            lines.append(_count_phrase(len(self.val_leaks), "train/val leak") + " (same or similar image in both)")
            lines += _listed(f"{show(a)} ~ {show(b)} (distance {d})" for a, b, d in self.val_leaks)
        if self.test_root is not None:
            lines.append(_count_phrase(len(self.test_leaks), "train/test leak") + " (same file in both)")
            lines += _listed(f"{show(train)} == {show(test)}" for train, test in self.test_leaks)
        lines.append(_count_phrase(len(self.tiny), "tiny image"))
        lines += _listed(f"{show(path)}: {w}x{h}" for path, w, h in self.tiny)
        lines += [f"warning: {printable(warning)}" for warning in self.warnings]
        lines += [f"problem: {problem}" for problem in self.problems()]
        lines += [f"check: {finding}" for finding in self.problems(near=True) if finding not in self.problems()]
        return lines

    def _near_lines(self) -> list[str]:
        if self.near_distance is None:
            return []
        show = self.display
        conflicts = set(self.near_conflicts)
        lines = [_count_phrase(len(self.near_duplicates), "near-duplicate pair")
                 + f" (resized or re-encoded copies: hash distance <= {self.near_distance} of 64 bits)"]
        lines += _listed(f"{show(a)} ~ {show(b)} (distance {d})" + (" [different classes]" if (a, b, d) in conflicts
                                                                    else "") for a, b, d in self.near_duplicates)
        if self.test_root is not None:
            lines.append(_count_phrase(len(self.near_leaks), "near-duplicate train/test leak") + " (similar image in both)")
            lines += _listed(f"{show(a)} ~ {show(b)} (distance {d})" for a, b, d in self.near_leaks)
        return lines

    def exclude_sections(self, near: bool = True) -> list[tuple[str, list[Path]]]:
        """What `write_exclude` lists, by reason: every file that should not be trained on.

        Near-duplicate sections come last and say to check them: distinct images that merely look
        alike (e.g. cells of one solar module) can hash within the distance.
        """
        sources = sorted({reason.removeprefix("excluded by ") for _, reason in self.excluded})
        sections = [
            # Kept, so that rewriting the list the doctor ran with does not bring those files back.
            (f"already excluded (by {', '.join(sources)})", sorted(path for path, _ in self.excluded)),
            ("unreadable: image files that do not decode", sorted(self.undecodable)),
            ("label conflicts: every copy of a file filed under more than one class",
             sorted({p for group in self.label_conflicts for p in group})),
            ("duplicates: every byte-identical copy but the first of each group",
             sorted(p for group in self.duplicate_groups for p in group[1:])),
            ("train/test leaks: the training copy of a file that is also in the test folder",
             sorted({a for a, _ in self.test_leaks})),
        ]
        if near:
            sections += [
                ("near-duplicate label conflicts (check these): similar images filed under different classes",
                 sorted({p for a, b, _ in self.near_conflicts for p in (a, b)})),
                ("near-duplicates (check these): every copy but the first of each group of similar images",
                 self._near_extras()),
                ("near-duplicate train/test leaks (check these): the training copy of an image like a test image",
                 sorted({a for a, _, _ in self.near_leaks})),
            ]
        return sections

    def _near_extras(self) -> list[Path]:
        """Copies (exact or near) join into groups; all but the first of each (by path) are extras."""
        items = sorted({p for group in self.duplicate_groups for p in group}
                       | {p for a, b, _ in self.near_duplicates for p in (a, b)})
        index = {path: i for i, path in enumerate(items)}
        pairs = [(index[g[0]], index[p]) for g in self.duplicate_groups for p in g[1:]]
        pairs += [(index[a], index[b]) for a, b, _ in self.near_duplicates]
        return sorted(p for group in connected_groups(items, pairs) for p in group[1:])

    def write_exclude(self, path: str | os.PathLike, near: bool = True) -> None:
        """Write the exclude list (paths relative to the data root) for `--exclude FILE`.

        `near=False` leaves the near-duplicate sections out. Refuses (one-line TransferlabError)
        to overwrite a file that is not an exclude list.
        """
        write_exclude_file(path, self.exclude_sections(near), self.root)


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
