"""The probe: frozen backbone features + a classical classifier, evaluated and reported.

`run_probe(ProbeConfig(...))` is the library entry point behind `transferlab probe`.
"""

from __future__ import annotations

import html
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from transferlab.atomic import write_json, write_text
from transferlab.backbones import Backbone, create_backbone
from transferlab.backbones.registry import DEFAULT_BACKBONE
from transferlab.classifiers.heads import build_classifier, save_classifier
from transferlab.data.folder import FolderScan, Sample, scan_folder
from transferlab.data.split import save_split, stratified_split
from transferlab.error_analysis import confused_pairs_html, write_error_grid
from transferlab.errors import TransferlabError
from transferlab.features.cache import default_cache_root
from transferlab.features.extract import ExtractionSettings, default_workers, extract_features
from transferlab.features.layers import DEFAULT_LAYERS, parse_layers
from transferlab.features.resolution import choose_resolution
from transferlab.precision import resolve_precision
from transferlab.predict import ProbeParts
from transferlab.report.baseline import compare_to_baseline, load_baseline
from transferlab.report.errors import cluster_order, reorder
from transferlab.report.html import render_report
from transferlab.report.metrics import classification_metrics, classification_report_text
from transferlab.report.plots import plot_confusion_matrix, plot_per_class_f1
from transferlab.runs import RunDir


@dataclass
class ProbeConfig:
    data: str
    out: str
    test: str | None = None
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    classifier: str = "logreg"
    grid: bool = False
    ternary: bool = False
    layers: list[str] = field(default_factory=lambda: list(DEFAULT_LAYERS))
    pool: str = "avg"
    resolution: int | None = None  # None: chosen from the images
    precision: str = "auto"
    batch_size: int = 64
    workers: int = field(default_factory=default_workers)
    val_fraction: float = 0.2
    per_class: int | None = None
    seed: int = 0
    baseline: str | None = None
    cache_dir: str | None = None  # None: the user cache; "" disables caching
    error_grid: int = 12  # most confidently wrong images shown (with CAM); 0 skips
    progress: bool = True


@dataclass
class ProbeResult:
    run_dir: Path
    metrics: dict
    summary: dict
    warnings: list[str]
    baseline_table: str | None


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()
        self._phase_start = self._start

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings[phase] = round(now - self._phase_start, 3)
        self._phase_start = now

    def total(self) -> float:
        return round(time.perf_counter() - self._start, 3)


def _validate(config: ProbeConfig) -> None:
    if config.baseline is not None and not Path(config.baseline).is_file():
        raise TransferlabError(f"{config.baseline}: baseline CSV not found")
    if config.resolution is not None and config.resolution < 16:
        raise TransferlabError(f"resolution {config.resolution} is too small (minimum 16)")
    config.layers = list(parse_layers(config.layers))


def run_probe(config: ProbeConfig) -> ProbeResult:
    _validate(config)
    baseline = load_baseline(config.baseline) if config.baseline else None
    timer = _Timer()
    warnings: list[str] = []

    scan = scan_folder(config.data)
    split = stratified_split(scan, config.val_fraction, config.seed, config.per_class)
    warnings += split.warnings
    test_scan = scan_folder(config.test, classes=scan.classes) if config.test else None
    backbone = create_backbone(config.backbone, config.weights)
    resolution, resolution_reason = (
        (config.resolution, "set by the user")
        if config.resolution
        else choose_resolution([s.path for s in split.train], backbone.native_size)
    )
    settings = ExtractionSettings(
        resolution=resolution,
        layers=tuple(config.layers),
        pool=config.pool,
        batch_size=config.batch_size,
        workers=config.workers,
        precision=resolve_precision(config.precision),
    )
    run = RunDir(config.out)
    run.start("probe")
    save_split(split, run.path / "split.json", scan.root)
    timer.lap("scan")

    groups: dict[str, list[Sample]] = {"train": split.train, "val": split.val}
    if test_scan is not None:
        groups["test"] = test_scan.samples
    all_samples = [s for samples in groups.values() for s in samples]
    cache_root = None if config.cache_dir == "" else (config.cache_dir or default_cache_root())
    extraction = extract_features(backbone, [s.path for s in all_samples], settings, cache_root, config.progress)
    timer.lap("extract")

    features, labels, paths = _assemble(groups, extraction)
    skipped = [[str(p), r] for p, r in extraction.failures]
    skipped += [[str(s.path), s.reason] for sc in (scan, test_scan) if sc for s in sc.skipped]
    run.write_csv("skipped.csv", ["path", "reason"], skipped)
    if skipped:
        warnings.append(f"{len(skipped)} files skipped (listed in {run.path / 'skipped.csv'})")
    if len(set(labels["train"].tolist())) < 2:
        raise TransferlabError(f"{config.data}: fewer than 2 classes left with readable training images")

    classifier = build_classifier(config.classifier, config.seed, config.ternary, config.grid)
    classifier.fit(features["train"], labels["train"])
    timer.lap("fit")

    metrics: dict = {}
    prediction_rows = []
    baseline_table = None
    probabilities_by_split = {}
    for name in [g for g in groups if g != "train" and len(labels[g])]:
        probabilities = probabilities_by_split[name] = _probabilities(classifier, features[name], len(scan.classes))
        predicted = probabilities.argmax(axis=1)
        metrics[name] = classification_metrics(labels[name], predicted, scan.classes)
        write_text(run.path / f"classification_report_{name}.txt",
                   classification_report_text(labels[name], predicted, scan.classes))
        _plot_confusion(metrics[name]["confusion"], scan.classes, run.plots_dir / f"confusion_{name}.png",
                        f"{config.backbone} + {config.classifier} ({name})")
        for path, true, pred, probs in zip(paths[name], labels[name], predicted, probabilities):
            prediction_rows.append([str(path), name, scan.classes[true], scan.classes[pred]]
                                   + [f"{p:.5f}" for p in probs])
    if not metrics:
        raise TransferlabError(f"{config.data}: no validation images (every class has a single image)")
    evaluated = "test" if "test" in metrics else "val"
    if baseline is not None:
        comparison = compare_to_baseline(metrics[evaluated]["per_class"], baseline)
        metrics[evaluated]["baseline"] = comparison.to_dict()
        metrics["baseline"] = {"split": evaluated, **comparison.to_dict()}
        baseline_table = comparison.table_text()
        write_text(run.path / "baseline.txt", baseline_table + "\n")
        for side, names in (("baseline", comparison.missing_in_ours), ("data", comparison.missing_in_baseline)):
            if names:
                where = config.data if side == "baseline" else config.baseline
                warnings.append(f"classes in the {side} but not in {where}: {', '.join(names)}")
        plot_per_class_f1(metrics[evaluated]["per_class"], run.plots_dir / f"per_class_f1_{evaluated}.png", baseline)
    run.write_csv("predictions.csv", ["path", "split", "true", "predicted"] + [f"p_{c}" for c in scan.classes],
                  prediction_rows)
    timer.lap("evaluate")

    parts = ProbeParts({}, backbone, settings, classifier, scan.classes)
    pairs, pairs_html = confused_pairs_html(metrics[evaluated]["confusion"], scan.classes)
    metrics[evaluated]["confused_pairs"] = pairs
    sections = [(f"Most confused class pairs ({evaluated})", pairs_html)]
    if config.error_grid > 0:
        _, note = write_error_grid(parts, paths[evaluated], labels[evaluated], probabilities_by_split[evaluated],
                                   run.plots_dir / f"errors_{evaluated}.png", config.error_grid)
        sections.append((f"Error analysis ({evaluated})", f"<p>{html.escape(note)}; see plots/errors_{evaluated}.png.</p>"))
    timer.lap("errors")

    _save_model(run, backbone, classifier, settings, scan.classes)
    summary = {
        "data": str(scan.root),
        **({"test": str(test_scan.root)} if test_scan else {}),
        "backbone": f"{backbone.name} ({backbone.source} weights)",
        "classifier": config.classifier + (" + grid search" if config.grid else "")
        + (" + ternary features" if config.ternary else ""),
        "layers": ", ".join(config.layers) + f" ({config.pool} pooled, {features['train'].shape[1]} dims)",
        "resolution": f"{resolution}px ({resolution_reason})",
        "precision": settings.precision,
        "images": {g: int(len(labels[g])) for g in groups},
        "skipped": len(skipped),
        "features": f"{extraction.n_extracted} extracted, {extraction.n_cached} from cache"
        + (f" ({extraction.images_per_second:.0f} img/s)" if extraction.n_extracted else ""),
        "classes": len(scan.classes),
    }
    metrics["timings"] = timer.timings
    metrics["summary"] = summary
    metrics["warnings"] = warnings
    config_dict = asdict(config)
    config_dict["resolution"] = resolution
    config_dict["precision"] = settings.precision
    run.write_config(config_dict)
    write_json(run.path / "metrics.json", metrics)
    render_report(run.path, title=f"transferlab probe: {scan.root.name}", summary=summary, sections=sections)
    timer.lap("report")
    metrics["timings"]["total"] = timer.total()
    write_json(run.path / "metrics.json", metrics)
    run.finish("probe")
    return ProbeResult(run.path, metrics, summary, warnings, baseline_table)


def _plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    """Above 15 classes, order them so that mutually confused classes sit together."""
    if len(classes) > 15:
        confusion, classes = reorder(confusion, classes, cluster_order(confusion))
        title += ", clustered order"
    plot_confusion_matrix(confusion, classes, path, title=title)


def _assemble(groups: dict[str, list[Sample]], extraction) -> tuple[dict, dict, dict]:
    """Split the extracted rows back into their groups, dropping skipped images."""
    offsets, start = {}, 0
    for name, samples in groups.items():
        offsets[name] = (start, start + len(samples))
        start += len(samples)
    all_samples = [s for samples in groups.values() for s in samples]
    features, labels, paths = {}, {}, {}
    ok = np.asarray(extraction.ok_indices, dtype=np.int64)
    for name, (lo, hi) in offsets.items():
        mask = (ok >= lo) & (ok < hi)
        features[name] = extraction.features[mask]
        labels[name] = np.asarray([all_samples[i].label for i in ok[mask]], dtype=np.int64)
        paths[name] = [all_samples[i].path for i in ok[mask]]
    return features, labels, paths


def _probabilities(classifier, features: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba over all classes, with zero columns for classes absent from training."""
    known = classifier.predict_proba(features)
    full = np.zeros((len(features), n_classes), dtype=np.float64)
    full[:, classifier.classes_] = known
    return full


def _save_model(run: RunDir, backbone: Backbone, classifier, settings: ExtractionSettings, classes: list[str]) -> None:
    """Everything `predict` and `serve` need, with no pickle and no dependency on the data."""
    state = {k: v.contiguous() for k, v in backbone.model.state_dict().items()}
    tmp = run.model_dir / ".backbone.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(run.model_dir / "backbone.safetensors")
    save_classifier(classifier, run.model_dir / "classifier.skops")
    write_json(
        run.model_dir / "model.json",
        {
            "kind": "probe",
            "classes": classes,
            "backbone": backbone.name,
            "weights_source": backbone.source,
            "weights_id": backbone.weights_id,
            "resolution": settings.resolution,
            "layers": list(settings.layers),
            "pool": settings.pool,
            "precision": settings.precision,
            "mean": list(backbone.mean),
            "std": list(backbone.std),
            "interpolation": backbone.interpolation,
        },
    )
