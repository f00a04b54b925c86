"""prune.html and prune.csv: a prune's table and curve, drawn from the plain rows of
`pipelines.prune` (this module reads no run folder).

One row per cut: parameters, multiply-adds, median CPU latency at batch 1 and 64, validation
accuracy, and whether the cut is on the Pareto front (no other cut is both smaller and at
least as accurate). The curve (accuracy against parameters, and against latency at batch 1,
front joined) is inlined as a data: URI; the page's CSP lets no script run.
"""

from __future__ import annotations

import base64
from pathlib import Path

from markupsafe import Markup

from transferlab.plotting import label as _label
from transferlab.plotting import literal, plt, save_figure
from transferlab.report.html import REPORT_CSP
from transferlab.report.pages import write_page

PRUNE_PAGE = "prune.html"
CURVE_FILE = "prune_curve.png"
DASH = "-"
FRONT_COLOUR, OTHER_COLOUR = "#dd6b20", "#2b6cb0"
CSV_COLUMNS = ["cut", "parameters", "backbone_parameters", "multiply_adds", "resolution", "latency_ms_batch1",
               "latency_ms_batch64", "val_accuracy", "val_macro_f1", "test_accuracy", "pareto", "pareto_latency",
               "train_seconds", "run_dir"]
TABLE_HEADER = ["cut after", "parameters", "multiply-adds (M)", "latency batch 1 (ms)", "latency batch 64 (ms)",
                "val accuracy", "val macro F1", "test accuracy", "Pareto (parameters)", "Pareto (latency)",
                "train s", "run folder"]


def latency_ms(row: dict, batch: int) -> float | None:
    """The median latency of a row at `batch`, in milliseconds (None: not measured)."""
    entries = row.get("latency") if isinstance(row.get("latency"), list) else []
    return next((e.get("median_ms") for e in entries if isinstance(e, dict) and e.get("batch") == batch), None)


def csv_rows(rows: list[dict]) -> list[list]:
    def value(row: dict, column: str):
        if column.startswith("latency_ms_batch"):
            return latency_ms(row, int(column.removeprefix("latency_ms_batch")))
        return row.get(column)

    return [["" if value(row, c) is None else value(row, c) for c in CSV_COLUMNS] for row in rows]


def _number(value, digits: int = 4) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def _mark(on_front: bool) -> Markup | str:
    return Markup('<span class="up">front</span>') if on_front else DASH


def _table_row(row: dict) -> list:
    macs = row.get("multiply_adds")
    return [row["cut"], f"{row['parameters']:,}", DASH if macs is None else f"{macs / 1e6:,.1f}",
            _number(latency_ms(row, 1), 2), _number(latency_ms(row, 64), 1), _number(row.get("val_accuracy")),
            _number(row.get("val_macro_f1")), _number(row.get("test_accuracy")), _mark(row.get("pareto", False)),
            _mark(row.get("pareto_latency", False)), _number(row.get("train_seconds"), 0), row.get("run_dir", "")]


def _panel(ax, rows: list[dict], xs: list[float], front_key: str, x_label: str) -> None:
    ys = [row.get("val_accuracy") for row in rows]
    front = sorted((x, y) for x, y, row in zip(xs, ys, rows) if row.get(front_key) and x is not None)
    if front:
        ax.plot([x for x, _ in front], [y for _, y in front], color=FRONT_COLOUR, linewidth=1.5, marker="o",
                zorder=1, label="Pareto front")
    for x, y, row in zip(xs, ys, rows):
        if x is None or y is None:
            continue
        ax.scatter([x], [y], s=48, zorder=2, color=FRONT_COLOUR if row.get(front_key) else OTHER_COLOUR)
        ax.annotate(_label(row["cut"]), (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
    positive = [x for x in xs if x is not None and x > 0]
    if positive and max(positive) >= 10 * min(positive):  # a log axis helps only across decades
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    if front:
        ax.legend(loc="best", fontsize=8, frameon=False)


def plot_prune_curve(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Validation accuracy against parameters and against batch-1 latency, one point per cut."""
    if not rows:
        raise ValueError("no cut to plot")
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.2))
    try:
        _panel(axes[0], rows, [row.get("parameters") for row in rows], "pareto", "parameters")
        _panel(axes[1], rows, [latency_ms(row, 1) for row in rows], "pareto_latency",
               "CPU latency at batch 1, ms (median)")
        if title:
            fig.suptitle(literal(title))
        fig.tight_layout()
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def render_prune_report(out_dir: Path, rows: list[dict], *, title: str, command: str, notes: list[str]) -> Path:
    """Write out_dir/prune.html (and out_dir/plots/prune_curve.png); return the page's path.

    No finished cut still gives a page, with the notes saying why.
    """
    out_dir = Path(out_dir)
    figure = None
    if rows:
        png = plot_prune_curve(rows, out_dir / "plots" / CURVE_FILE, title)
        figure = {"data": base64.b64encode(png.read_bytes()).decode("ascii"), "file": f"plots/{CURVE_FILE}"}
    threads = sorted({row.get("threads") for row in rows if row.get("threads")})
    resolutions = sorted({row.get("resolution") for row in rows if row.get("resolution")})
    return write_page(
        out_dir / PRUNE_PAGE, "prune.html",
        title=title,
        csp=Markup(REPORT_CSP),
        command=command,
        notes=list(notes),
        header=TABLE_HEADER,
        numeric=list(range(1, 11)),
        rows=[_table_row(row) for row in rows],
        figure=figure,
        threads=", ".join(map(str, threads)) or DASH,
        resolution=", ".join(f"{r}px" for r in resolutions) or DASH,
    )
