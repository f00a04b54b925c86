"""study.html: a study's self-contained page, drawn from the plain summary dict of
insight.study_table.summarise_study (this module reads no run folder).

One row per variant (mean ± sd over seeds), the paired test against the reference with the
noise level of the validation set, one plot per factor (inlined as data: URIs) and the
per-class F1. Values are escaped by the template; the page's CSP lets no script run.
"""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

from markupsafe import Markup

from transferlab.report.html import REPORT_CSP
from transferlab.report.pages import write_page
from transferlab.report.study_plots import plot_factor

STUDY_PAGE = "study.html"
DASH = "-"
VERDICT_CSS = {"better": "up", "worse": "down"}


def _pm(stats: dict | None, scale: float = 100.0, digits: int = 1, signed: bool = False) -> str:
    """'mean ± sd' (sd only from two seeds on)."""
    if not stats or stats.get("mean") is None:
        return DASH
    sign = "+" if signed else ""
    text = f"{stats['mean'] * scale:{sign}.{digits}f}"
    return text + (f" ± {stats['sd'] * scale:.{digits}f}" if stats.get("sd") is not None else "")


def _p_value(value: float | None) -> str:
    return DASH if value is None else f"{value:.3g}"


def _verdict(paired: dict | None, reference: bool) -> Markup | str:
    if reference:
        return Markup('<span class="muted">reference</span>')
    if not paired:
        return DASH
    return Markup('<span class="{}">{}</span>').format(VERDICT_CSS.get(paired["verdict"], "muted"),
                                                       paired["verdict"])


def _se(points: float | None) -> str:
    return DASH if points is None or math.isnan(points) else f"±{points:.1f}"  # NaN: no images


def _count(value) -> str:
    return DASH if value is None else f"{value:,}"


def _variant_row(entry: dict) -> list:
    paired = entry.get("paired") or {}
    beats = entry.get("beats")
    train = entry.get("train_per_class")
    return [
        entry["variant"], str(entry["n_seeds"]),
        _pm(entry["accuracy"]), _se(entry.get("se_points")), _pm(entry["macro_f1"]),
        _pm(paired.get("accuracy_diff"), signed=True), _pm(paired.get("macro_f1_diff"), signed=True),
        f"{paired['better']} / {paired['worse']}" if paired else DASH,
        _p_value(paired.get("p_value")), _verdict(entry.get("paired"), entry["reference"]),
        f"{_pm(beats, 1.0)} / {beats['of']}" if beats else DASH,
        _pm(entry.get("seconds"), 1.0), _count(entry.get("parameters")),
        DASH if not train else f"{train['mean']:.0f}",
    ]


VARIANT_HEADER = ["variant", "seeds", "accuracy %", "± SE (points)", "macro F1 %", "Δ accuracy (points)", "Δ macro F1 (points)",
                  "won / lost", "McNemar p", "verdict", "beats baseline", "time s", "parameters",
                  "train images / class"]


def _per_class_rows(summary: dict) -> list[list]:
    rows = []
    for name in summary.get("classes", []):
        cells = [_pm(entry["per_class_f1"].get(name), 1.0, 3) for entry in summary.get("variants", [])]
        rows.append([name] + cells)
    return rows


def _run_rows(summary: dict) -> list[list]:
    return [[entry["variant"], str(run["seed"]), _pm({"mean": run["accuracy"]}), _pm({"mean": run["macro_f1"]}),
             DASH if run["seconds"] is None else f"{run['seconds']:.1f}", run["run_dir"]]
            for entry in summary.get("variants", []) for run in entry["runs"]]


def _plot_name(factor: str, taken: set[str]) -> str:
    stem = "study_" + (re.sub(r"[^A-Za-z0-9._-]+", "-", factor).strip("-.")[:60] or "factor")
    name, index = stem + ".png", 2
    while name in taken:  # two keys that clean to the same name keep separate files
        name, index = f"{stem}-{index}.png", index + 1
    taken.add(name)
    return name


def _figures(out_dir: Path, summary: dict) -> list[dict]:
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    figures, taken = [], set()
    for plot in summary.get("plots", []):
        if not plot["points"]:
            continue
        png = plot_factor(plot, plots_dir / _plot_name(plot["factor"], taken))
        caption = f"Accuracy and macro F1 against {plot['factor']}"
        if plot["learning_curve"]:
            caption = ("Learning curve: accuracy and macro F1 against the training images per class the runs "
                       "actually had ('all' at the full count)")
        caption += " (other factors averaged)" if plot["averaged"] else ""
        figures.append({"data": base64.b64encode(png.read_bytes()).decode("ascii"), "caption": caption,
                        "file": f"plots/{png.name}"})
    return figures


def render_study_report(out_dir: Path, summary: dict, *, title: str, command: str, notes: list[str]) -> Path:
    """Write out_dir/study.html (and out_dir/plots/study_*.png); return the page's path.

    An empty summary ({}: no run finished) still gives a page, with the notes saying why.
    """
    out_dir = Path(out_dir)
    variants = summary.get("variants", [])
    noise = summary.get("noise")
    return write_page(
        out_dir / STUDY_PAGE, "study.html",
        title=title,
        csp=Markup(REPORT_CSP),
        command=command,
        notes=list(notes) + list(summary.get("notes") or []),
        split=summary.get("split", "val"),
        reference=summary.get("reference"),
        explanation=summary.get("explanation", ""),
        noise=noise["text"] if noise else "No reference variant: no noise level or paired test.",
        variant_header=VARIANT_HEADER,
        variant_numeric=[i for i, h in enumerate(VARIANT_HEADER) if h not in ("variant", "verdict")],
        variant_rows=[_variant_row(entry) for entry in variants],
        figures=_figures(out_dir, summary),
        class_header=["class"] + [entry["variant"] for entry in variants],
        class_rows=_per_class_rows(summary),
        run_rows=_run_rows(summary),
    )
