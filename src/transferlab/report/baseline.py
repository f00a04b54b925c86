"""Compare per-class F1 with a published baseline given as a CSV file (columns class,f1)."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from transferlab.errors import TransferlabError
from transferlab.report.text import text_table

REQUIRED_COLUMNS = ("class", "f1")
# How many names of each side an error message lists before "...".
NAMES_IN_MESSAGE = 5


@dataclass
class BaselineComparison:
    beats: int
    of: int
    rows: list[dict]  # per class: {"class", "ours", "baseline", "delta", "beats": bool}
    missing_in_ours: list[str] = field(default_factory=list)
    missing_in_baseline: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "beats": self.beats,
            "of": self.of,
            "per_class": {
                row["class"]: {"ours": row["ours"], "baseline": row["baseline"], "delta": row["delta"]}
                for row in self.rows
            },
            "missing_in_ours": list(self.missing_in_ours),
            "missing_in_baseline": list(self.missing_in_baseline),
        }

    def table_text(self) -> str:
        """An aligned table, one row per shared class, ending with 'beats N of M classes'."""
        header = ("class", "ours", "baseline", "delta", "")
        body = [_row_cells(row) for row in self.rows]
        return text_table(header, body, left=1) + f"\nbeats {self.beats} of {self.of} classes"


def _row_cells(row: dict) -> tuple[str, str, str, str, str]:
    mark = "*" if row["beats"] else ""  # this class beats the baseline
    return (row["class"], f"{row['ours']:.4f}", f"{row['baseline']:.4f}", f"{row['delta']:+.4f}", mark)


def _read_rows(path: Path) -> list[list[str]]:
    if not path.exists():
        raise TransferlabError(f"{path}: baseline file not found")
    if not path.is_file():
        raise TransferlabError(f"{path}: baseline is not a file")
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return list(csv.reader(handle))
    except UnicodeDecodeError as exc:
        raise TransferlabError(f"{path}: baseline is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise TransferlabError(f"{path}: baseline is not valid CSV ({exc})") from None


def _column_indices(path: Path, header: list[str]) -> tuple[int, int]:
    names = [cell.strip().lower() for cell in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        found = ", ".join(repr(c) for c in header) or "nothing"
        raise TransferlabError(
            f"{path}: baseline header lacks column(s) {', '.join(missing)} "
            f"(needs 'class,f1'; line 1 has {found})"
        )
    return names.index("class"), names.index("f1")


def _parse_f1(path: Path, line: int, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TransferlabError(f"{path}:{line}: f1 of class {name!r} is {text!r}, not a number") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        # A common slip is a percentage (85.3 instead of 0.853); say so.
        hint = " (write F1 as a fraction, e.g. 0.853 not 85.3)" if 1.0 < value <= 100.0 else ""
        raise TransferlabError(f"{path}:{line}: f1 of class {name!r} is {text}, outside [0, 1]{hint}")
    return value


def load_baseline(path: str | os.PathLike) -> dict[str, float]:
    """Read {class: f1} from a CSV with header columns class,f1 (other columns are ignored).

    Cells are stripped of surrounding spaces; blank lines are skipped. Any problem raises
    TransferlabError naming the file and the line.
    """
    csv_path = Path(path).expanduser()
    rows = _read_rows(csv_path)
    # csv.reader yields [] for blank lines; keep the 1-based line number for messages.
    numbered = [(i, row) for i, row in enumerate(rows, start=1) if any(cell.strip() for cell in row)]
    if not numbered:
        raise TransferlabError(f"{csv_path}: baseline file is empty (expected a header 'class,f1' and rows)")
    header_line, header = numbered[0]
    class_idx, f1_idx = _column_indices(csv_path, header)

    baseline: dict[str, float] = {}
    first_seen: dict[str, int] = {}
    for line, row in numbered[1:]:
        name = row[class_idx].strip() if class_idx < len(row) else ""
        if not name:
            raise TransferlabError(f"{csv_path}:{line}: empty class name")
        text = row[f1_idx].strip() if f1_idx < len(row) else ""
        if not text:
            raise TransferlabError(f"{csv_path}:{line}: class {name!r} has no f1 value")
        if name in baseline:
            first = first_seen[name]
            raise TransferlabError(f"{csv_path}:{line}: class {name!r} appears again (first on line {first})")
        baseline[name] = _parse_f1(csv_path, line, name, text)
        first_seen[name] = line
    if not baseline:
        raise TransferlabError(f"{csv_path}: baseline has a header (line {header_line}) but no class rows")
    return baseline


def _some_names(names: list[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(repr(n) for n in names[:NAMES_IN_MESSAGE])
    if len(names) > NAMES_IN_MESSAGE:
        shown += f", ... ({len(names)} in all)"
    return shown


def compare_to_baseline(per_class: dict, baseline: dict[str, float]) -> BaselineComparison:
    """Match classes by exact name; 'beats' means our F1 is strictly above the baseline's.

    Rows follow our class order. Raises TransferlabError if no class name is shared,
    which almost always means the baseline belongs to another dataset or naming.
    """
    ours_names = list(per_class)
    shared = [name for name in ours_names if name in baseline]
    if not shared:
        raise TransferlabError(
            "baseline shares no class name with this run "
            f"(ours: {_some_names(ours_names)}; baseline: {_some_names(list(baseline))})"
        )
    rows = []
    for name in shared:
        ours = float(per_class[name]["f1"])
        base = float(baseline[name])
        rows.append(
            {"class": name, "ours": ours, "baseline": base, "delta": round(ours - base, 4), "beats": ours > base}
        )
    return BaselineComparison(
        beats=sum(row["beats"] for row in rows),
        of=len(rows),
        rows=rows,
        missing_in_ours=[name for name in baseline if name not in per_class],
        missing_in_baseline=[name for name in ours_names if name not in baseline],
    )


def check_baseline_classes(baseline: dict[str, float], classes: list[str], source: str,
                           partial: bool = False) -> None:
    """Refuse, before any work, a baseline whose classes are not the data's.

    A partial match is an error unless `partial` is set: "beats 1 of 1" against a baseline
    of another naming reads like a result and is not one.
    """
    missing_in_baseline = [c for c in classes if c not in baseline]
    missing_in_data = [c for c in baseline if c not in classes]
    if not missing_in_baseline and not missing_in_data:
        return
    if len(missing_in_baseline) == len(classes):
        raise TransferlabError(f"{source}: baseline shares no class name with the data "
                               f"(data: {_some_names(classes)}; baseline: {_some_names(list(baseline))})")
    if not partial:
        raise TransferlabError(
            f"{source}: baseline classes differ from the data's (not in the baseline: "
            f"{_some_names(missing_in_baseline)}; not in the data: {_some_names(missing_in_data)}); "
            "fix the names, or pass --baseline-partial to compare the shared classes only"
        )
