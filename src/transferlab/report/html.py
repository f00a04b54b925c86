"""A single self-contained report.html for a run folder: tables, embedded plots, no external assets.

The page is the `report.html` Jinja2 template (report/templates); this module turns the run
folder's files into the template's values. Everything read from the folder is treated as
hostile: values are escaped by the template, only the pipeline's own section bodies are
kept as HTML, and the page's Content-Security-Policy lets no script run.
"""

from __future__ import annotations

import base64
import csv
import json
import math
from pathlib import Path

from markupsafe import Markup

from transferlab.atomic import write_json
from transferlab.errors import TransferlabError
from transferlab.report.pages import write_page
from transferlab.report.reproduce import reproduce_info
from transferlab.runs import read_json_object

SPLITS = ("val", "test")
SKIPPED_ROWS_SHOWN = 200
REPORT_RECORD = "report.json"
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DASH = Markup('<span class="muted">—</span>')


def _num(value: object, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def _dict(value: object) -> dict:
    # A hand-edited metrics.json may hold a list where a mapping belongs: show nothing, not a traceback.
    return value if isinstance(value, dict) else {}


def _load_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise TransferlabError(f"{path}: metrics file not found (run the probe first)")
    return read_json_object(path, "metrics file")


def _load_record(run_dir: Path) -> dict:
    """report.json as written by `write_report_record`, each field checked; {} when there is none."""
    path = run_dir / REPORT_RECORD
    if not path.is_file():
        return {}
    record = read_json_object(path, "report record")
    kinds = {"title": (str, "string"), "summary": (dict, "object"), "sections": (list, "list"),
             "reproduce": (dict, "object")}
    for key, (kind, name) in kinds.items():
        if record.get(key) is not None and not isinstance(record[key], kind):
            raise TransferlabError(f"{path}: '{key}' must be a JSON {name}")
    sections = record.get("sections") or []
    if not all(isinstance(s, list) and len(s) == 2 and all(isinstance(p, str) for p in s) for s in sections):
        raise TransferlabError(f"{path}: 'sections' must be a list of [heading, body] string pairs")
    return record


def _summary_value(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        # Settings such as a learning rate of 1e-5 must not print as 0.0000.
        return f"{value:.6g}"
    return str(value)


def _reproduce_rows(reproduce: dict) -> list[list]:
    versions = reproduce.get("versions") or {}
    if isinstance(versions, dict):
        versions = ", ".join(f"{name} {version}" for name, version in versions.items())
    return [["command", Markup("<code>{}</code>").format(str(reproduce.get("command", "")))],
            ["seed", str(reproduce.get("seed"))], ["versions", str(versions)]]


def _delta_cell(delta: float) -> Markup:
    css = "up" if delta > 0 else "down" if delta < 0 else "muted"
    return Markup('<span class="{}">{}</span>').format(css, f"{delta:+.4f}")


def _baseline_cells(base: object) -> list:
    if not isinstance(base, dict) or not base:
        # A class the baseline does not report gets a dash rather than a made-up zero.
        return [DASH, DASH]
    delta = base.get("delta", 0.0)
    return [_num(base.get("baseline")), _delta_cell(float(delta)) if isinstance(delta, (int, float)) else str(delta)]


def _per_class_table(per_class: dict, baseline: dict | None) -> dict:
    header = ["class", "precision", "recall", "F1", "support"]
    base_rows = _dict((baseline or {}).get("per_class"))
    if baseline is not None:
        header += ["baseline F1", "delta"]
    rows = []
    for name, scores in per_class.items():
        row = [name] + [_num(_dict(scores).get(key)) for key in ("precision", "recall", "f1", "support")]
        if baseline is not None:
            row += _baseline_cells(base_rows.get(name))
        rows.append(row)
    return {"header": header, "rows": rows, "numeric": set(range(1, len(header)))}


def _baseline_context(baseline: dict) -> dict:
    missing = []
    for key, where in (("missing_in_ours", "in the baseline but not in this run"),
                       ("missing_in_baseline", "in this run but not in the baseline")):
        names = baseline.get(key) or []
        if isinstance(names, list) and names:
            missing.append((len(names), where, [str(n) for n in names]))
    return {"beats": _num(baseline.get("beats", 0)), "of": _num(baseline.get("of", 0)), "missing": missing}


def _split_context(split: str, result: dict) -> dict:
    labels = {"accuracy": "accuracy", "macro_f1": "macro F1", "weighted_f1": "weighted F1", "n": "images"}
    baseline = result.get("baseline") if isinstance(result.get("baseline"), dict) else None
    absent = result.get("absent_classes") or []
    return {
        "name": split,
        "headline": [(label, _num(result[key])) for key, label in labels.items() if key in result],
        "absent": [str(a) for a in absent] if isinstance(absent, list) else [str(absent)],
        "baseline": _baseline_context(baseline) if baseline else None,
        "table": _per_class_table(_dict(result.get("per_class")), baseline),
    }


def _format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:04.1f} s"


def _timing_rows(timings: dict) -> list[list]:
    numeric = {k: float(v) for k, v in timings.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    rows: list[list] = [[phase, _format_seconds(sec)] for phase, sec in numeric.items()]
    if numeric and "total" not in numeric:  # a caller-given total already covers the phases
        rows.append([Markup("<b>total</b>"), Markup("<b>{}</b>").format(_format_seconds(sum(numeric.values())))])
    return rows


def _caption(png: Path, plots_dir: Path) -> str:
    # "confusion_val.png" -> "confusion val"; sub-folders become part of the caption.
    stem = png.relative_to(plots_dir).with_suffix("").as_posix()
    return stem.replace("_", " ").replace("-", " ").replace("/", " / ")


def _is_png(path: Path) -> bool:
    # A link could pull any readable file on this machine into a report that is then shared.
    if path.is_symlink() or not path.is_file() or path.suffix.lower() != ".png":
        return False
    with path.open("rb") as handle:
        return handle.read(len(PNG_MAGIC)) == PNG_MAGIC


def _figures(run_dir: Path) -> list[dict]:
    plots_dir = run_dir / "plots"
    if not plots_dir.is_dir() or plots_dir.is_symlink():
        return []
    pngs = sorted(p for p in plots_dir.rglob("*") if _is_png(p))
    return [{"data": base64.b64encode(png.read_bytes()).decode("ascii"), "caption": _caption(png, plots_dir)}
            for png in pngs]


def _cell(row: list[str], index: int) -> str:
    return row[index] if index < len(row) else ""


def _skipped(run_dir: Path) -> dict | None:
    path = run_dir / "skipped.csv"
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        lines = [row for row in csv.reader(handle) if row]
    if len(lines) < 2:
        return None
    header = [cell.strip().lower() for cell in lines[0]]
    # Expected columns path,reason; a file without that header still shows its first two columns.
    path_i = header.index("path") if "path" in header else 0
    reason_i = header.index("reason") if "reason" in header else 1
    records = lines[1:]
    shown = records[:SKIPPED_ROWS_SHOWN]
    note = f"{len(records)} file(s) were skipped"
    if len(records) > len(shown):
        note += f"; the first {len(shown)} are listed (all are in skipped.csv)"
    return {"note": note, "rows": [[_cell(r, path_i), _cell(r, reason_i)] for r in shown]}


def write_report_record(run_dir: Path, *, title: str, summary: dict, sections: list[tuple[str, str]],
                        reproduce: dict) -> None:
    """What the report shows beyond metrics.json and plots/, kept in the run so that
    `transferlab report RUN` rebuilds report.html from the folder alone."""
    write_json(Path(run_dir) / REPORT_RECORD, {"title": title, "summary": summary,
                                               "sections": [list(s) for s in sections], "reproduce": reproduce})


def render_report(
    run_dir: Path,
    *,
    title: str | None = None,
    summary: dict | None = None,
    sections: list[tuple[str, str]] | None = None,
    reproduce: dict | None = None,
) -> Path:
    """Write run_dir/report.html from metrics.json, plots/*.png, skipped.csv and report.json; return its path.

    Arguments given here win over the run's report.json (written by `write_report_record`).
    Section bodies are HTML the pipeline built (escaped already); headings are text.
    """
    run_dir = Path(run_dir)
    record = _load_record(run_dir)
    title = title if title is not None else str(record.get("title") or f"transferlab: {run_dir.name}")
    summary = summary if summary is not None else record.get("summary") or {}
    sections = sections if sections is not None else [tuple(s) for s in record.get("sections") or []]
    reproduce = reproduce if reproduce is not None else record.get("reproduce") or reproduce_info(run_dir)
    metrics = _load_metrics(run_dir)
    return write_page(
        run_dir / "report.html", "report.html",
        title=title,
        csp=Markup(REPORT_CSP),
        summary=[[key, _summary_value(value)] for key, value in summary.items()],
        splits=[_split_context(s, metrics[s]) for s in SPLITS if isinstance(metrics.get(s), dict)],
        figures=_figures(run_dir),
        timings=_timing_rows(_dict(metrics.get("timings"))),
        skipped=_skipped(run_dir),
        sections=[(heading, Markup(body)) for heading, body in sections],
        reproduce=_reproduce_rows(reproduce),
    )
