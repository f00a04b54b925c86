"""The probe: frozen backbone features + a classical classifier, evaluated and reported.

`run_probe(ProbeConfig(...))` is the library entry point behind `transferlab probe`. With
`from_run`, the features come from a fine-tuned run's network (its backbone, resolution and
preprocessing), e.g. to put a random forest or a linear SVM on fine-tuned features.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from transferlab.atomic import atomic_path
from transferlab.backbones import Backbone, create_backbone, weights_source_path
from transferlab.backbones.from_run import FinetunedSource, finetuned_backbone
from transferlab.backbones.registry import DEFAULT_BACKBONE
from transferlab.card import ModelCard
from transferlab.classifiers.heads import CLASSIFIERS, build_classifier, save_classifier
from transferlab.data.folder import Sample
from transferlab.data.layout import PreparedData, prepare_data
from transferlab.data.split import load_split, save_split
from transferlab.errors import TransferlabError
from transferlab.explain.cam import target_layer
from transferlab.features.cache import default_cache_root
from transferlab.features.extract import (
    ENGINES,
    ExtractionResult,
    ExtractionSettings,
    FeatureExtractor,
    default_engine,
    default_workers,
    extract_features,
)
from transferlab.features.layers import DEFAULT_LAYERS, POOLS, parse_layers
from transferlab.features.resolution import resolve_resolution
from transferlab.inference.probe_network import build_probe_network
from transferlab.inference.probe_predictor import ProbeParts
from transferlab.options import check_cache_dir, check_choice, check_file, check_folder, check_training_options
from transferlab.pipelines.evaluation import CamSource, SplitPredictions
from transferlab.pipelines.tail import RunEnd, RunResult, Timer, data_summary, finish_run
from transferlab.precision import INFERENCE_PRECISION, resolve_precision
from transferlab.report.baseline import check_baseline_classes, load_baseline
from transferlab.runs import RunDir, check_out_folder


@dataclass
class ProbeConfig:
    data: str
    out: str
    test: str | None = None
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    from_run: str | None = None  # a fine-tuned run: features from its network (backbone, resolution)
    classifier: str = "logreg"
    grid: bool = False
    ternary: bool = False
    layers: list[str] = field(default_factory=lambda: list(DEFAULT_LAYERS))
    pool: str = "avg"
    resolution: int | None = None  # None: chosen from the images
    precision: str = "auto"
    # What runs the backbone (features.extract.ENGINES); None: $TRANSFERLAB_ENGINE, else "auto":
    # OpenVINO where it is installed and compiles the network (faster on AVX512 CPUs, the same
    # probe accuracy: benchmarks/extract_throughput.py), else torch.
    engine: str | None = None
    batch_size: int = 64
    workers: int = field(default_factory=default_workers)
    val_fraction: float = 0.2
    per_class: int | None = None
    train_per_class: int | None = None  # at most N training images per class; validation unchanged
    seed: int = 0
    baseline: str | None = None
    baseline_partial: bool = False  # compare the shared classes when the baseline names others too
    exclude: str | None = None  # an exclude list (doctor --write-exclude): files left out
    cache_dir: str | None = None  # None: the user cache; "" disables caching
    error_grid: int = 12  # most confidently wrong images shown (with CAM); 0 skips
    embed: str = "pca,tsne"  # feature maps of the evaluated split in the report; "" skips
    progress: bool = True


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
    config.engine = config.engine or default_engine()
    check_choice("--engine", config.engine, tuple(ENGINES))
    check_cache_dir(config.cache_dir, config.data)
    check_out_folder(config.out,
                     reads=(config.from_run, weights_source_path(config.weights), config.data, config.test))
    config.layers = list(parse_layers(config.layers))
    if config.from_run is not None:
        check_folder(config.from_run, "fine-tuned run")
        if config.weights is not None:
            raise TransferlabError("give --from-run or --weights, not both: a fine-tuned run brings its own weights")


@dataclass
class _Inputs:
    """What the probe works on, all checked before the run folder is touched."""

    data: PreparedData
    backbone: Backbone
    settings: ExtractionSettings
    resolution_reason: str
    baseline: dict[str, float] | None
    source: FinetunedSource | None = None  # where the weights come from, with --from-run


def _prepare(config: ProbeConfig) -> _Inputs:
    _validate(config)
    baseline = load_baseline(config.baseline) if config.baseline else None
    data = prepare_data(config.data, config.test, config.val_fraction, config.seed, config.per_class,
                        exclude=config.exclude, train_per_class=config.train_per_class)
    if baseline is not None:
        check_baseline_classes(baseline, data.scan.classes, config.baseline, config.baseline_partial)
    split = data.split
    # Built once here only to refuse what cannot work (e.g. --grid with one image per class) before extraction.
    build_classifier(config.classifier, config.seed, config.ternary, config.grid, labels=[s.label for s in split.train])
    source = _finetuned_source(config) if config.from_run is not None else None
    backbone = source.backbone if source else create_backbone(config.backbone, config.weights)
    resolution, reason = resolve_resolution(config.resolution or (source.card.resolution if source else None),
                                            [s.path for s in split.train], backbone.native_size)
    if source and config.resolution is None:
        reason = "the fine-tuned run's resolution"
    settings = ExtractionSettings(resolution=resolution, layers=tuple(config.layers), pool=config.pool,
                                  batch_size=config.batch_size, workers=config.workers,
                                  precision=resolve_precision(config.precision), engine=config.engine)
    if source:
        data.notes.extend(_leak_notes(source, data))
    return _Inputs(data, backbone, settings, reason, baseline, source)


def _finetuned_source(config: ProbeConfig) -> FinetunedSource:
    """The fine-tuned run's backbone; its card names the architecture, so --backbone must agree or be left out."""
    source = finetuned_backbone(config.from_run)
    if config.backbone not in (DEFAULT_BACKBONE, source.card.backbone):
        raise TransferlabError(f"{source.run}: the run fine-tuned {source.card.backbone}, not --backbone "
                               f"{config.backbone}; leave --backbone out with --from-run")
    config.backbone = source.card.backbone  # config.yaml then names what really ran
    return source


def _leak_notes(source: FinetunedSource, data: PreparedData) -> list[str]:
    """Validation or test images the fine-tuned network trained on make the probe's figures optimistic."""
    try:
        split = load_split(source.run / "split.json")
    except TransferlabError as exc:
        return [f"could not check which images the fine-tuned run trained on ({exc})"]
    root = os.path.realpath(split["root"])
    trained = {os.path.normpath(os.path.join(root, rel)) for rel, _ in split["train"]}
    evaluated = data.split.val + (data.test_scan.samples if data.test_scan is not None else [])
    seen = sum(os.path.realpath(s.path) in trained for s in evaluated)
    if not seen:
        return []
    return [(f"{seen} of the {len(evaluated)} validation/test images were in the fine-tuned run's training set "
             f"({source.run}): the figures are optimistic; use the run's own split (same data, seed and "
             "val_fraction)")]


def run_probe(config: ProbeConfig) -> RunResult:
    inputs = _prepare(config)
    run = RunDir(config.out)
    run.start("probe")
    with run.recording("probe"):
        return _probe(config, run, inputs)


def _probe(config: ProbeConfig, run: RunDir, inputs: _Inputs) -> RunResult:
    timer = Timer()
    data, backbone, settings = inputs.data, inputs.backbone, inputs.settings
    save_split(data.split, run.path / "split.json", data.root)
    timer.lap("scan")
    groups: dict[str, list[Sample]] = {"train": data.split.train, "val": data.split.val}
    if data.test_scan is not None:
        groups["test"] = data.test_scan.samples
    cache_root = None if config.cache_dir == "" else (config.cache_dir or default_cache_root())
    extracted = _extract_groups(backbone, groups, settings, cache_root, config.progress)
    settings = inputs.settings = extracted.settings or settings  # what ran: the engine "auto" chose, its precision
    timer.lap("extract")
    features, labels, paths = extracted.features, extracted.labels, extracted.paths
    if len(set(labels["train"].tolist())) < 2:
        raise TransferlabError(f"{config.data}: fewer than 2 classes left with readable training images")
    classifier = build_classifier(config.classifier, config.seed, config.ternary, config.grid, labels=labels["train"])
    classifier.fit(features["train"], labels["train"])
    timer.lap("fit")

    classes = data.scan.classes
    splits = [SplitPredictions(name, paths[name], labels[name], _probabilities(classifier, features[name], len(classes)))
              for name in groups if name != "train"]
    cam, cam_unavailable = _cam_source(backbone, settings, classifier, classes)
    skipped = [[str(p), r] for p, r in extracted.failures] + [[str(s.path), s.reason] for s in data.skipped]
    end = RunEnd(
        kind="probe", title=f"{config.backbone}{' fine-tuned' if inputs.source else ''} + {config.classifier}",
        report_title=f"transferlab probe: {data.scan.root.name}", classes=classes, splits=splits, skipped=skipped,
        notes=list(data.notes), summary=_summary(config, inputs, extracted, labels, features["train"].shape[1],
                                                 len(skipped)),
        config=asdict(config) | {"resolution": settings.resolution, "precision": settings.precision,
                                 "engine": settings.engine},
        card=_card(backbone, settings, classes, inputs.source),
        save_weights=partial(_save_weights, backbone, classifier), seed=config.seed, cam=cam,
        cam_unavailable=cam_unavailable, baseline=inputs.baseline, baseline_name=config.baseline or "",
        features=features, error_grid=config.error_grid, embed=config.embed,
    )
    return finish_run(run, end, timer)


def _summary(config: ProbeConfig, inputs: _Inputs, extracted: _Extracted, labels: dict, dims: int,
             n_skipped: int) -> dict:
    data, backbone, settings = inputs.data, inputs.backbone, inputs.settings
    return {
        **data_summary(data),
        "backbone": _weights_line(backbone, inputs.source),
        "classifier": config.classifier + (" + grid search" if config.grid else "")
        + (" + ternary features" if config.ternary else ""),
        "layers": ", ".join(config.layers) + f" ({config.pool} pooled, {dims} dims)",
        "resolution": f"{settings.resolution}px ({inputs.resolution_reason})",
        "precision": settings.precision + ("" if extracted.eval_precision == settings.precision else
                                           f" (training features; scored on {extracted.eval_precision} features, "
                                           "as predict and serve compute them)"),
        "engine": settings.engine,
        "images": {g: int(len(v)) for g, v in labels.items()},
        "skipped": n_skipped,
        "features": f"{extracted.n_extracted} extracted, {extracted.n_cached} from cache"
        + (f" ({settings.engine}, {extracted.images_per_second:.0f} img/s)" if extracted.n_extracted else ""),
        "classes": len(data.scan.classes),
    }


def _weights_line(backbone: Backbone, source: FinetunedSource | None) -> str:
    if source is None:
        return f"{backbone.name} ({backbone.source} weights)"
    return f"{backbone.name} fine-tuned in run {source.run} (its network's backbone, weights {backbone.weights_id})"


@dataclass
class _Extracted:
    """Features, labels and paths per group (skipped images dropped), and how they were made."""

    features: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    paths: dict[str, list[Path]] = field(default_factory=dict)
    passes: list[ExtractionResult] = field(default_factory=list)  # training features' first
    eval_precision: str = INFERENCE_PRECISION

    @property
    def settings(self) -> ExtractionSettings | None:
        """Of the training features: the engine and precision that ran."""
        return self.passes[0].settings if self.passes else None

    @property
    def failures(self) -> list[tuple[Path, str]]:
        return [failure for extraction in self.passes for failure in extraction.failures]

    @property
    def n_extracted(self) -> int:
        return sum(extraction.n_extracted for extraction in self.passes)

    @property
    def n_cached(self) -> int:
        return sum(extraction.n_cached for extraction in self.passes)

    @property
    def images_per_second(self) -> float:
        seconds = sum(extraction.seconds for extraction in self.passes)
        return self.n_extracted / seconds if self.n_extracted and seconds > 0 else 0.0


def _extract_groups(backbone: Backbone, groups: dict[str, list[Sample]], settings: ExtractionSettings,
                    cache_root, progress: bool) -> _Extracted:
    """The head is fit on features at `settings.precision` (bf16 where the CPU is fast at it);
    the images the run is scored on get theirs at the inference precision, as predict, serve and
    export compute them (fp32 on every engine), so the report states what the saved model does.
    bf16 features differ from fp32 ones by a few percent: scoring the bf16 ones reported 0.7676
    validation accuracy on the demo data where `predict` gave 0.7467 (0.9344 against 0.9329 on
    heritage)."""
    scored = replace(settings, precision=INFERENCE_PRECISION)
    passes = [(groups, settings)] if scored == settings else [
        ({"train": groups["train"]}, settings), ({k: v for k, v in groups.items() if k != "train"}, scored)]
    out = _Extracted(eval_precision=scored.precision)
    for part, part_settings in passes:
        extraction = extract_features(backbone, [s.path for samples in part.values() for s in samples],
                                      part_settings, cache_root, progress)
        features, labels, paths = _assemble(part, extraction)
        out.features |= features
        out.labels |= labels
        out.paths |= paths
        out.passes.append(extraction)
    return out


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
    parts = ProbeParts(_card(backbone, settings, classes), backbone, settings, classifier, classes)
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


def _card(backbone: Backbone, settings: ExtractionSettings, classes: list[str],
          source: FinetunedSource | None = None) -> ModelCard:
    weights_source = f"{backbone.source} run {source.run}" if source else backbone.source
    return ModelCard(kind="probe", classes=list(classes), backbone=backbone.name, resolution=settings.resolution,
                     mean=backbone.mean, std=backbone.std, interpolation=backbone.interpolation,
                     weights_source=weights_source, weights_id=backbone.weights_id, precision=settings.precision,
                     inference_precision=INFERENCE_PRECISION, layers=list(settings.layers), pool=settings.pool)


def _save_weights(backbone: Backbone, classifier, model_dir: Path) -> None:
    """Everything `predict` and `serve` need besides the card, with no pickle and no dependency on the data."""
    state = {k: v.contiguous() for k, v in backbone.model.state_dict().items()}
    with atomic_path(model_dir / "backbone.safetensors") as tmp:  # ordinary permissions, never half-written
        save_file(state, str(tmp))
    save_classifier(classifier, model_dir / "classifier.skops")
