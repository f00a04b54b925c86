"""A single self-contained report.html for a run folder: tables, embedded plots, no external assets."""

from __future__ import annotations

import base64
import csv
import json
import math
from collections.abc import Collection
from html import escape
from pathlib import Path

from transferlab import __version__
from transferlab.atomic import write_text
from transferlab.errors import TransferlabError
from transferlab.report.reproduce import reproduce_info

SPLITS = ("val", "test")
SKIPPED_ROWS_SHOWN = 200

# Inline so the page works offline and as an e-mail attachment.
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1a202c;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #e2e8f0; padding-bottom: .2em; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin-top: 1.2em; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { padding: .25em .7em; border-bottom: 1px solid #edf2f7; text-align: left; vertical-align: top; }
th { background: #f7fafc; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.up { color: #276749; } .down { color: #c53030; }
.muted { color: #718096; }
.headline { font-size: 1.05em; margin: .4em 0; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #e2e8f0; }
figcaption { color: #4a5568; font-size: .9em; margin-top: .3em; }
footer { margin-top: 3em; color: #a0aec0; font-size: .85em; }
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _num(value: object, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _e(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}" if math.isfinite(value) else _e(value)


def _table(header: list[str], rows: list[list[str]], numeric: Collection[int] = ()) -> str:
    """Cells must already be HTML-safe; `numeric` columns are right-aligned."""

    def cls(i: int) -> str:
        return ' class="num"' if i in numeric else ""

    head = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(header))
    body = "\n".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _load_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise TransferlabError(f"{path}: metrics file not found (run the probe first)")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TransferlabError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(metrics, dict):
        raise TransferlabError(f"{path}: expected a JSON object at the top level")
    return metrics


def _summary_value(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return _e(", ".join(str(v) for v in value))
    if isinstance(value, dict):
        return _e(json.dumps(value, ensure_ascii=False))
    if isinstance(value, float):
        # Settings such as a learning rate of 1e-5 must not print as 0.0000.
        return _e(f"{value:.6g}")
    return _e(value)


def _reproduce_section(reproduce: dict) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in (reproduce.get("versions") or {}).items())
    rows = [["command", f"<code>{_e(str(reproduce.get('command', '')))}</code>"],
            ["seed", _e(str(reproduce.get("seed")))], ["versions", _e(versions)]]
    return '<section id="reproduce">\n<h2>Reproduce</h2>\n' + _table(["", ""], rows) + "\n</section>"


def _summary_section(summary: dict) -> str:
    if not summary:
        return ""
    rows = [[_e(key), _summary_value(value)] for key, value in summary.items()]
    return '<section id="summary">\n<h2>Summary</h2>\n' + _table(["setting", "value"], rows) + "\n</section>"


def _delta_cell(delta: float) -> str:
    css = "up" if delta > 0 else "down" if delta < 0 else "muted"
    return f'<span class="{css}">{delta:+.4f}</span>'


def _baseline_cells(base: dict | None) -> list[str]:
    if not base:
        # A class the baseline does not report gets a dash rather than a made-up zero.
        return ['<span class="muted">—</span>'] * 2
    return [_num(base.get("baseline")), _delta_cell(float(base.get("delta", 0.0)))]


def _per_class_table(per_class: dict, baseline: dict | None) -> str:
    header = ["class", "precision", "recall", "F1", "support"]
    base_rows = (baseline or {}).get("per_class", {})
    if baseline is not None:
        header += ["baseline F1", "delta"]
    rows = []
    for name, scores in per_class.items():
        row = [_e(name)] + [_num(scores.get(key)) for key in ("precision", "recall", "f1", "support")]
        if baseline is not None:
            row += _baseline_cells(base_rows.get(name))
        rows.append(row)
    return _table(header, rows, numeric=set(range(1, len(header))))


def _baseline_lines(baseline: dict) -> str:
    parts = [f'<p class="headline">beats {int(baseline.get("beats", 0))} of {int(baseline.get("of", 0))} classes '
             "(F1 strictly above the baseline)</p>"]
    for key, label in (("missing_in_ours", "in the baseline but not in this run"),
                       ("missing_in_baseline", "in this run but not in the baseline")):
        names = baseline.get(key) or []
        if names:
            parts.append(f'<p class="muted">{len(names)} class(es) {label}: {_e(", ".join(map(str, names)))}</p>')
    return "\n".join(parts)


def _split_section(split: str, result: dict) -> str:
    labels = {"accuracy": "accuracy", "macro_f1": "macro F1", "weighted_f1": "weighted F1", "n": "images"}
    headline = " · ".join(f"{label} <b>{_num(result[key])}</b>" for key, label in labels.items() if key in result)
    baseline = result.get("baseline")
    parts = [f'<section id="split-{_e(split)}">', f"<h2>{_e(split)} split</h2>", f'<p class="headline">{headline}</p>']
    absent = result.get("absent_classes") or []
    if absent:
        parts.append(f'<p class="muted">No {_e(split)} images of {_e(", ".join(map(str, absent)))}: '
                     "left out of the macro averages.</p>")
    if isinstance(baseline, dict):
        parts.append(_baseline_lines(baseline))
    parts.append(_per_class_table(result.get("per_class", {}), baseline if isinstance(baseline, dict) else None))
    parts.append("</section>")
    return "\n".join(parts)


def _format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:04.1f} s"


def _timings_section(timings: dict) -> str:
    numeric = {k: float(v) for k, v in timings.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not numeric:
        return ""
    rows = [[_e(phase), _format_seconds(sec)] for phase, sec in numeric.items()]
    if "total" not in numeric:  # a caller-given total already covers the phases
        rows.append(["<b>total</b>", f"<b>{_format_seconds(sum(numeric.values()))}</b>"])
    return '<section id="timings">\n<h2>Timings</h2>\n' + _table(["phase", "time"], rows, numeric={1}) + "\n</section>"


def _caption(png: Path, plots_dir: Path) -> str:
    # "confusion_val.png" -> "confusion val"; sub-folders become part of the caption.
    stem = png.relative_to(plots_dir).with_suffix("").as_posix()
    return stem.replace("_", " ").replace("-", " ").replace("/", " / ")


def _plots_section(run_dir: Path) -> str:
    plots_dir = run_dir / "plots"
    if not plots_dir.is_dir():
        return ""
    pngs = sorted(p for p in plots_dir.rglob("*") if p.is_file() and p.suffix.lower() == ".png")
    figures = []
    for png in pngs:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        caption = _e(_caption(png, plots_dir))
        figures.append(f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
                       f"<figcaption>{caption}</figcaption></figure>")
    if not figures:
        return ""
    return '<section id="plots">\n<h2>Plots</h2>\n' + "\n".join(figures) + "\n</section>"


def _cell(row: list[str], index: int) -> str:
    return row[index] if index < len(row) else ""


def _skipped_section(run_dir: Path) -> str:
    path = run_dir / "skipped.csv"
    if not path.is_file():
        return ""
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        lines = [row for row in csv.reader(handle) if row]
    if len(lines) < 2:
        return ""
    header = [cell.strip().lower() for cell in lines[0]]
    # Expected columns path,reason; a file without that header still shows its first two columns.
    path_i = header.index("path") if "path" in header else 0
    reason_i = header.index("reason") if "reason" in header else 1
    records = lines[1:]
    shown = records[:SKIPPED_ROWS_SHOWN]
    rows = [[_e(_cell(r, path_i)), _e(_cell(r, reason_i))] for r in shown]
    note = f"{len(records)} file(s) were skipped"
    if len(records) > len(shown):
        note += f"; the first {len(shown)} are listed (all are in skipped.csv)"
    return ('<section id="skipped">\n<h2>Skipped files</h2>\n'
            f'<p class="muted">{_e(note)}.</p>\n' + _table(["path", "reason"], rows) + "\n</section>")


def _extra_sections(sections: list[tuple[str, str]]) -> str:
    # Bodies are trusted, already-escaped HTML from the caller; only headings are escaped here.
    return "\n".join(f"<section>\n<h2>{_e(heading)}</h2>\n{body}\n</section>" for heading, body in sections)


def render_report(
    run_dir: Path,
    *,
    title: str,
    summary: dict,
    sections: list[tuple[str, str]] | None = None,
    reproduce: dict | None = None,
) -> Path:
    """Write run_dir/report.html from metrics.json, plots/*.png and skipped.csv; return its path.

    `reproduce` (command, seed, versions) defaults to this process's command and the run's seed.
    """
    run_dir = Path(run_dir)
    reproduce = reproduce if reproduce is not None else reproduce_info(run_dir)
    metrics = _load_metrics(run_dir)
    split_parts = [_split_section(s, metrics[s]) for s in SPLITS if isinstance(metrics.get(s), dict)]
    timings = metrics.get("timings")
    body = [
        f"<h1>{_e(title)}</h1>",
        _summary_section(summary),
        *split_parts,
        _plots_section(run_dir),
        _timings_section(timings) if isinstance(timings, dict) else "",
        _skipped_section(run_dir),
        _extra_sections(sections or []),
        _reproduce_section(reproduce),
        f"<footer>transferlab {_e(__version__)}</footer>",
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body>\n</html>\n"
    )
    target = run_dir / "report.html"
    write_text(target, page)
    return target
