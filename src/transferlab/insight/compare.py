"""Side-by-side comparison of finished runs: one row per run, per-class F1 over the union of classes."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from transferlab.errors import TransferlabError
from transferlab.insight.runinfo import RunInfo, read_run
from transferlab.insight.study_runs import read_variant_file
from transferlab.report.pages import write_page
from transferlab.report.text import text_table

# In the page's <head> (templates/compare.html): `compare` writes over an earlier page, never another
# file. Pages written before the generator tag are known by their title.
COMPARE_MARKERS = (b'<meta name="generator" content="transferlab compare">', b"<title>transferlab compare:")

MISSING = "-"


@dataclass
class CompareRow:
    run: str  # folder name (with its parent where two runs share a name)
    path: Path
    data: str
    backbone: str
    method: str
    resolution: int | None
    seconds: float | None  # the run's total time
    split: str  # "test" or "val": where accuracy and F1 come from
    accuracy: float | None
    macro_f1: float | None
    per_class: dict[str, float]  # class -> F1 on `split`
    beats: int | None  # classes with F1 above the baseline, when the run had one
    of: int | None
    variant: str | None = None  # the study variant the run belongs to (its variant.json), e.g. "augment=none"


@dataclass
class Comparison:
    rows: list[CompareRow]
    classes: list[str]  # union over the runs, in first-seen order
    warnings: list[str] = field(default_factory=list)

    def table_text(self) -> str:
        """The summary table, then per-class F1 (one column per run), then the warnings."""
        header = ["run", "backbone", "method", "px", "time s", "split", "accuracy", "macro F1", "beats"]
        body = [[r.run, r.backbone, r.method, _fmt(r.resolution), _fmt(r.seconds, 1), r.split, _fmt(r.accuracy, 4),
                 _fmt(r.macro_f1, 4), _beats(r)] for r in self.rows]
        if self.has_variants:  # runs of a study: which setting each one varied
            header.insert(1, "variant")
            for row, r in zip(body, self.rows):
                row.insert(1, r.variant or MISSING)
        class_header = ["class"] + [r.run for r in self.rows]
        class_body = [[name] + [_fmt(r.per_class.get(name), 4) for r in self.rows] for name in self.classes]
        table = text_table(header, body, left=4 if self.has_variants else 3)
        parts = [table, "", "per-class F1:", text_table(class_header, class_body, left=1)]
        parts += [f"warning: {w}" for w in self.warnings]
        return "\n".join(parts)

    @property
    def has_variants(self) -> bool:
        return any(r.variant is not None for r in self.rows)

    def to_dict(self) -> dict:
        return {
            "classes": list(self.classes),
            "warnings": list(self.warnings),
            "runs": [{**{k: v for k, v in vars(r).items() if k != "path"}, "path": str(r.path)} for r in self.rows],
        }

    def write_html(self, path: str | os.PathLike) -> Path:
        """A self-contained page: one sortable table (click a header), best value per column in bold."""
        columns = _columns(self)
        return write_page(
            path, "compare.html",
            title=f"transferlab compare: {len(self.rows)} runs",
            warnings=self.warnings,
            columns=[{"header": header, "numeric": header not in TEXT_COLUMNS} for header, _, _ in columns],
            rows=_html_rows(self, columns),
            runs=[(r.run, str(r.path)) for r in self.rows],
        )


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return MISSING
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def _beats(row: CompareRow) -> str:
    return MISSING if row.beats is None else f"{row.beats}/{row.of}"


# --------------------------------------------------------------------------- reading runs


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _row(info: RunInfo, name: str) -> CompareRow:
    split = info.evaluated_split
    result = info.split_metrics(split)
    per_class = {str(c): float(v["f1"]) for c, v in (result.get("per_class") or {}).items()
                 if isinstance(v, dict) and _number(v.get("f1")) is not None}
    baseline = info.metrics.get("baseline") if isinstance(info.metrics.get("baseline"), dict) else None
    timings = info.metrics.get("timings") if isinstance(info.metrics.get("timings"), dict) else {}
    resolution = info.config.get("resolution")
    return CompareRow(
        run=name,
        path=info.path,
        data=str(info.data_root) if info.data_root else MISSING,
        backbone=info.backbone,
        method=info.method,
        resolution=int(resolution) if isinstance(resolution, int) else None,
        seconds=_number(timings.get("total")),
        split=split,
        accuracy=_number(result.get("accuracy")),
        macro_f1=_number(result.get("macro_f1")),
        per_class=per_class,
        beats=int(baseline["beats"]) if baseline and "beats" in baseline else None,
        of=int(baseline["of"]) if baseline and "of" in baseline else None,
    )


def _names(infos: list[RunInfo]) -> list[str]:
    names = [i.path.name for i in infos]
    # Two runs called "lite0" in different folders stay apart by their parent folder.
    return [f"{i.path.parent.name}/{n}" if names.count(n) > 1 else n for i, n in zip(infos, names)]


def _warnings(rows: list[CompareRow], classes: list[str]) -> list[str]:
    warnings = []
    for row in rows:
        missing = [c for c in classes if c not in row.per_class]
        if missing:
            warnings.append(f"class sets differ: run '{row.run}' has no {', '.join(missing)} "
                            f"(shown as '{MISSING}')")
    if len({r.data for r in rows}) > 1:
        warnings.append("the runs are on different data folders: "
                        + "; ".join(f"{r.run}: {r.data}" for r in rows))
    if len({r.split for r in rows}) > 1:
        warnings.append("figures come from different splits: "
                        + ", ".join(f"{r.run}: {r.split}" for r in rows) + " (test where a run has one, else val)")
    return warnings


def compare_runs(run_dirs: list[str | os.PathLike]) -> Comparison:
    """Read each run's metrics.json and config.yaml into one comparison.

    Accuracy and F1 come from the test split where a run has one, else from val (the
    `split` column says which). Classes are the union over the runs; a warning names the
    classes each run lacks.
    """
    paths = list(dict.fromkeys(Path(p).resolve() for p in run_dirs))
    if not paths:
        raise TransferlabError("no runs to compare: give at least one run folder")
    infos = [read_run(p) for p in paths]
    rows = [_row(info, name) for info, name in zip(infos, _names(infos))]
    classes = list(dict.fromkeys(c for r in rows for c in r.per_class))
    variant_warnings = [_read_variant(row) for row in rows]
    return Comparison(rows, classes, _warnings(rows, classes) + [w for w in variant_warnings if w])


def _read_variant(row: CompareRow) -> str | None:
    """Fill row.variant from the run's variant.json; a bad file is a warning (the run still compares)."""
    try:
        variant = read_variant_file(row.path)
    except TransferlabError as exc:
        return f"{exc} (variant not shown)"
    row.variant = variant["variant"] if variant else None
    return None


# --------------------------------------------------------------------------- HTML

# Text columns: left-aligned, never 'best'. Every other column holds numbers.
TEXT_COLUMNS = ("run", "variant", "backbone", "method", "split")


def _columns(comparison: Comparison) -> list[tuple[str, bool | None, list]]:
    """(header, higher-is-better or None for no 'best', one value per row)."""
    rows = comparison.rows
    columns: list[tuple[str, bool | None, list]] = [
        ("run", None, [r.run for r in rows]),
        *([("variant", None, [r.variant or MISSING for r in rows])] if comparison.has_variants else []),
        ("backbone", None, [r.backbone for r in rows]),
        ("method", None, [r.method for r in rows]),
        ("px", None, [r.resolution for r in rows]),  # a setting, not a score: no 'best'
        ("time s", False, [r.seconds for r in rows]),
        ("split", None, [r.split for r in rows]),
        ("accuracy", True, [r.accuracy for r in rows]),
        ("macro F1", True, [r.macro_f1 for r in rows]),
        ("beats", True, [r.beats for r in rows]),
    ]
    columns += [(f"F1 {name}", True, [r.per_class.get(name) for r in rows]) for name in comparison.classes]
    return columns


def _best_rows(higher: bool | None, values: list) -> set[int]:
    present = [v for v in values if v is not None]
    if higher is None or len(set(present)) < 2:  # one value, or all equal: nothing stands out
        return set()
    target = max(present) if higher else min(present)
    return {i for i, v in enumerate(values) if v == target}


def _cell(value, header: str, best: bool, row: CompareRow) -> dict:
    if header in TEXT_COLUMNS:
        return {"numeric": False, "text": str(value)}
    if value is None:
        return {"numeric": True, "best": best, "value": "", "text": MISSING}
    text = _beats(row) if header == "beats" else _fmt(value, 1 if header == "time s" else 0 if header == "px" else 4)
    # data-v carries the raw number, so the page sorts by value and not by its rounded text.
    return {"numeric": True, "best": best, "value": value, "text": text}


def _html_rows(comparison: Comparison, columns: list[tuple[str, bool | None, list]]) -> list[list[dict]]:
    best = [_best_rows(higher, values) for _, higher, values in columns]
    return [[_cell(values[i], header, i in best_rows, row) for (header, _, values), best_rows in zip(columns, best)]
            for i, row in enumerate(comparison.rows)]
