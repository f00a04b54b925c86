"""The end every run shares, whatever produced its probabilities.

A pipeline hands over a `RunEnd` (predictions per split, skipped files, notes, summary, the
model card and a function that writes the weights); `finish_run` writes skipped.csv,
evaluates (metrics, plots, baseline, error grids with CAM), maps the features, saves the
model, writes config.yaml, metrics.json and the report, and only then marks the run
complete. Probe and fine-tune runs therefore get the same files and the same report.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from transferlab.atomic import write_json
from transferlab.card import ModelCard
from transferlab.data.layout import PreparedData
from transferlab.insight.embed import embed
from transferlab.pipelines.evaluation import CamSource, SplitPredictions, evaluate_run
from transferlab.report.html import render_report, write_report_record
from transferlab.report.reproduce import reproduce_info
from transferlab.runs import RunDir


class Timer:
    """Wall time per phase of a run, for metrics.json's "timings"."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()
        self._phase_start = self._start

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings[phase] = round(self.timings.get(phase, 0.0) + now - self._phase_start, 3)
        self._phase_start = now

    def total(self) -> float:
        return round(time.perf_counter() - self._start, 3)


def data_summary(data: PreparedData) -> dict:
    """The report summary's data lines, the same for every run kind."""
    pre_split = " (pre-split: train/, val/ as given)" if data.layout == "pre-split" else ""
    return {"data": str(data.scan.root) + pre_split,
            **({"test": str(data.test_scan.root)} if data.test_scan else {})}


@dataclass
class RunEnd:
    """What a pipeline hands to `finish_run`."""

    kind: str  # "probe", "finetune" or "ensemble": run.json's kind
    title: str  # of the evaluation plots, e.g. "resnet50 + logreg"
    report_title: str  # of report.html
    classes: list[str]
    splits: list[SplitPredictions]  # val, then test when there is one
    skipped: list[list[str]]  # [path, reason] of every file left out
    notes: list[str]  # warnings gathered so far (layout, empty classes, split)
    summary: dict  # the report's summary table
    config: dict  # written as config.yaml: re-runnable as it is
    card: ModelCard
    save_weights: Callable[[Path], None]  # writes the weight files into model/
    seed: int = 0
    cam: CamSource | None = None
    cam_unavailable: str = ""
    baseline: dict[str, float] | None = None
    baseline_name: str = ""
    features: dict[str, np.ndarray] = field(default_factory=dict)  # per split: pooled features to map
    extra_metrics: dict = field(default_factory=dict)  # e.g. the fine-tune's stages
    error_grid: int = 12  # most confidently wrong images shown per split (with CAM); 0 skips
    embed: str = "pca,tsne"  # feature maps of the evaluated split; "" skips
    sections: list[tuple[str, str]] = field(default_factory=list)  # (title, HTML) the report shows first


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    summary: dict
    warnings: list[str]
    baseline_table: str | None


def finish_run(run: RunDir, end: RunEnd, timer: Timer) -> RunResult:
    warnings = list(end.notes)
    run.write_csv("skipped.csv", ["path", "reason"], end.skipped)
    if end.skipped:
        warnings.append(f"{len(end.skipped)} files skipped (listed in {run.path / 'skipped.csv'})")
    evaluation = evaluate_run(run, end.classes, end.splits, title=end.title, baseline=end.baseline,
                              baseline_name=end.baseline_name, cam=end.cam, cam_unavailable=end.cam_unavailable,
                              error_grid=end.error_grid)
    metrics = {**evaluation.metrics, **end.extra_metrics}
    evaluation.sections[:0] = end.sections
    warnings += evaluation.warnings
    timer.lap("evaluate")
    evaluated = end.splits[-1]
    if end.embed.strip() and evaluated.name in end.features:
        metrics["embedding"], section = _embed_section(end, run, evaluated)
        evaluation.sections.append(section)
        timer.lap("embed")

    end.save_weights(run.model_dir)
    end.card.write(run.model_dir)
    run.write_config(end.config)
    metrics["summary"], metrics["warnings"], metrics["timings"] = end.summary, warnings, timer.timings
    write_json(run.path / "metrics.json", metrics)  # the report reads it
    write_report_record(run.path, title=end.report_title, summary=end.summary, sections=evaluation.sections,
                        reproduce=reproduce_info(run.path))
    render_report(run.path)
    timer.lap("report")
    metrics["timings"] = {**timer.timings, "total": timer.total()}
    write_json(run.path / "metrics.json", metrics)
    run.finish(end.kind)
    return RunResult(run.path, metrics, end.summary, warnings, evaluation.baseline_table)


def _embed_section(end: RunEnd, run: RunDir, evaluated: SplitPredictions) -> tuple[dict, tuple[str, str]]:
    """Feature maps of the evaluated split for the report: metrics entry and HTML section."""
    methods = tuple(m.strip() for m in end.embed.split(",") if m.strip())
    mapped = embed(end.features[evaluated.name], evaluated.labels, end.classes,
                   evaluated.probabilities.argmax(axis=1), methods, end.seed, max_points=2000,
                   out_dir=run.plots_dir, paths=evaluated.paths, n_outliers=12,
                   title=f"{end.card.backbone} features ({evaluated.name})")
    entry = {"split": evaluated.name, "silhouette": mapped.silhouette, "silhouette_mean": mapped.silhouette_mean,
             "notes": mapped.notes}
    return entry, (f"Feature map and outliers ({evaluated.name})", f"<pre>{html.escape(mapped.summary_text())}</pre>")
