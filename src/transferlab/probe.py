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

from transferlab.atomic import atomic_path, write_json
from transferlab.backbones import Backbone, create_backbone
from transferlab.backbones.registry import DEFAULT_BACKBONE
from transferlab.classifiers.heads import CLASSIFIERS, build_classifier, save_classifier
from transferlab.data.folder import Sample
from transferlab.data.layout import PreparedData, prepare_data
from transferlab.data.split import save_split
from transferlab.errors import TransferlabError
from transferlab.evaluation import CamSource, SplitPredictions, evaluate_run
from transferlab.explain.cam import target_layer
from transferlab.features.cache import default_cache_root
from transferlab.features.extract import (
    ExtractionSettings,
    FeatureExtractor,
    default_workers,
    extract_features,
)
from transferlab.features.layers import DEFAULT_LAYERS, POOLS, parse_layers
from transferlab.features.resolution import choose_resolution
from transferlab.insight.embed import embed
from transferlab.network import build_probe_network
from transferlab.options import check_cache_dir, check_choice, check_file, check_folder, check_training_options
from transferlab.precision import INFERENCE_PRECISION, resolve_precision
from transferlab.predict import ProbeParts
from transferlab.report.baseline import check_baseline_classes, load_baseline
from transferlab.report.html import render_report
from transferlab.runs import RunDir, check_out_folder


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
    baseline_partial: bool = False  # compare the shared classes when the baseline names others too
    exclude: str | None = None  # an exclude list (doctor --write-exclude): files left out
    cache_dir: str | None = None  # None: the user cache; "" disables caching
    error_grid: int = 12  # most confidently wrong images shown (with CAM); 0 skips
    embed: str = "pca,tsne"  # feature maps of the evaluated split in the report; "" skips
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
    """Every option checked before the first image is read (the CLI ran the cheap ones already)."""
    check_folder(config.data)
    check_folder(config.test, "test folder")
    check_file(config.baseline, "baseline CSV")
    check_file(config.exclude, "exclude list")
    check_training_options(seed=config.seed, resolution=config.resolution, batch_size=config.batch_size,
                           workers=config.workers, val_fraction=config.val_fraction, per_class=config.per_class,
                           precision=config.precision)
    check_choice("--classifier", config.classifier, CLASSIFIERS)
    check_choice("--pool", config.pool, POOLS)
    check_cache_dir(config.cache_dir)
    check_out_folder(config.out)
    config.layers = list(parse_layers(config.layers))


@dataclass
class _Inputs:
    """What the probe works on, all checked before the run folder is touched."""

    data: PreparedData
    backbone: Backbone
    settings: ExtractionSettings
    resolution_reason: str
    baseline: dict[str, float] | None


def _prepare(config: ProbeConfig) -> _Inputs:
    _validate(config)
    baseline = load_baseline(config.baseline) if config.baseline else None
    data = prepare_data(config.data, config.test, config.val_fraction, config.seed, config.per_class,
                        exclude=config.exclude)
    if baseline is not None:
        check_baseline_classes(baseline, data.scan.classes, config.baseline, config.baseline_partial)
    split = data.split
    # Built once here only to refuse what cannot work (e.g. --grid with one image per class) before extraction.
    build_classifier(config.classifier, config.seed, config.ternary, config.grid, labels=[s.label for s in split.train])
    backbone = create_backbone(config.backbone, config.weights)
    resolution, reason = (
        (config.resolution, "set by the user")
        if config.resolution
        else choose_resolution([s.path for s in split.train], backbone.native_size)
    )
    settings = ExtractionSettings(resolution=resolution, layers=tuple(config.layers), pool=config.pool,
                                  batch_size=config.batch_size, workers=config.workers,
                                  precision=resolve_precision(config.precision))
    return _Inputs(data, backbone, settings, reason, baseline)


def run_probe(config: ProbeConfig) -> ProbeResult:
    inputs = _prepare(config)
    run = RunDir(config.out)
    run.start("probe")
    with run.recording("probe"):
        return _probe(config, run, inputs)


def _probe(config: ProbeConfig, run: RunDir, inputs: _Inputs) -> ProbeResult:
    timer = _Timer()
    scan, split, test_scan, backbone, settings = (inputs.data.scan, inputs.data.split, inputs.data.test_scan,
                                                  inputs.backbone, inputs.settings)
    resolution, resolution_reason, baseline = settings.resolution, inputs.resolution_reason, inputs.baseline
    warnings: list[str] = list(inputs.data.notes)  # layout, empty classes, split warnings
    save_split(split, run.path / "split.json", inputs.data.root)
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
    skipped += [[str(s.path), s.reason] for s in inputs.data.skipped]
    run.write_csv("skipped.csv", ["path", "reason"], skipped)
    if skipped:
        warnings.append(f"{len(skipped)} files skipped (listed in {run.path / 'skipped.csv'})")
    if len(set(labels["train"].tolist())) < 2:
        raise TransferlabError(f"{config.data}: fewer than 2 classes left with readable training images")

    classifier = build_classifier(config.classifier, config.seed, config.ternary, config.grid, labels=labels["train"])
    classifier.fit(features["train"], labels["train"])
    timer.lap("fit")

    splits = [
        SplitPredictions(name, paths[name], labels[name], _probabilities(classifier, features[name], len(scan.classes)))
        for name in groups if name != "train"
    ]
    cam, cam_unavailable = _cam_source(backbone, settings, classifier, scan.classes)
    evaluation = evaluate_run(
        run, scan.classes, splits, title=f"{config.backbone} + {config.classifier}", baseline=baseline,
        baseline_name=config.baseline or "", cam=cam, cam_unavailable=cam_unavailable, error_grid=config.error_grid,
    )
    metrics = evaluation.metrics
    warnings += evaluation.warnings
    timer.lap("evaluate")
    if config.embed.strip():
        evaluated = splits[-1]
        metrics["embedding"], section = _embed_section(config, run, backbone.name, evaluated, features[evaluated.name],
                                                       scan.classes)
        evaluation.sections.append(section)
        timer.lap("embed")

    _save_model(run, backbone, classifier, settings, scan.classes)
    summary = {
        "data": str(scan.root) + (" (pre-split: train/, val/ as given)" if inputs.data.layout == "pre-split" else ""),
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
    render_report(run.path, title=f"transferlab probe: {scan.root.name}", summary=summary,
                  sections=evaluation.sections)
    timer.lap("report")
    metrics["timings"]["total"] = timer.total()
    write_json(run.path / "metrics.json", metrics)
    run.finish("probe")
    return ProbeResult(run.path, metrics, summary, warnings, evaluation.baseline_table)


def _embed_section(config: ProbeConfig, run: RunDir, backbone_name: str, evaluated: SplitPredictions,
                   features: np.ndarray, classes: list[str]) -> tuple[dict, tuple[str, str]]:
    """Feature maps of the evaluated split for the report: metrics entry and HTML section."""
    methods = tuple(m.strip() for m in config.embed.split(",") if m.strip())
    mapped = embed(features, evaluated.labels, classes, evaluated.probabilities.argmax(axis=1), methods,
                   config.seed, max_points=2000, out_dir=run.plots_dir, paths=evaluated.paths, n_outliers=12,
                   title=f"{backbone_name} features ({evaluated.name})")
    entry = {"split": evaluated.name, "silhouette": mapped.silhouette, "silhouette_mean": mapped.silhouette_mean,
             "notes": mapped.notes}
    return entry, (f"Feature map and outliers ({evaluated.name})", f"<pre>{html.escape(mapped.summary_text())}</pre>")


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


def _cam_source(backbone: Backbone, settings: ExtractionSettings, classifier, classes: list[str]):
    """The probe as one network for CAM, or why it is not one (a non-linear head)."""
    parts = ProbeParts({}, backbone, settings, classifier, classes)
    try:
        network = build_probe_network(parts)
    except TransferlabError as exc:
        return None, str(exc)
    normalise = FeatureExtractor(backbone, settings).normalise
    return CamSource(network, target_layer(backbone.model), normalise, settings.resolution,
                     backbone.interpolation), ""


def _probabilities(classifier, features: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba over all classes, with zero columns for classes absent from training."""
    known = classifier.predict_proba(features)
    full = np.zeros((len(features), n_classes), dtype=np.float64)
    full[:, classifier.classes_] = known
    return full


def _save_model(run: RunDir, backbone: Backbone, classifier, settings: ExtractionSettings, classes: list[str]) -> None:
    """Everything `predict` and `serve` need, with no pickle and no dependency on the data."""
    state = {k: v.contiguous() for k, v in backbone.model.state_dict().items()}
    with atomic_path(run.model_dir / "backbone.safetensors") as tmp:  # ordinary permissions, never half-written
        save_file(state, str(tmp))
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
            "inference_precision": INFERENCE_PRECISION,
            "mean": list(backbone.mean),
            "std": list(backbone.std),
            "interpolation": backbone.interpolation,
        },
    )
