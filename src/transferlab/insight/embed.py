"""Feature-space maps of a run or an image folder (`transferlab embed`).

`embed_run` reads a run (its split, model settings and predictions): a probe's pooled
features, or a fine-tuned network's penultimate features (the head's input), both through
the feature cache; `embed_data` reads a plain image folder. Both hand the features to `embed`
(insight.feature_maps), re-exported here with its result type, and with `three_d` also write
the interactive 3-D view (insight.embed3d). What to draw and how to read features is one
settings object: `EmbedSettings`, or `FolderEmbedSettings` for a folder, which adds the
backbone and extraction settings a run already records.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from transferlab.atomic import write_json
from transferlab.backbones import Backbone, create_backbone
from transferlab.backbones.registry import DEFAULT_BACKBONE, state_digest
from transferlab.card import ModelCard
from transferlab.data.folder import Sample
from transferlab.data.layout import scan_data
from transferlab.data.split import load_split
from transferlab.errors import TransferlabError
from transferlab.features.extract import (
    ExtractionSettings,
    FeatureExtractor,
    default_workers,
    extract_with,
    make_extractor,
)
from transferlab.features.layers import DEFAULT_LAYERS, parse_layers
from transferlab.features.resolution import resolve_resolution
from transferlab.finetune.network import FinetuneNet, pooled_features
from transferlab.inference.finetune_predictor import load_finetune_net
from transferlab.insight.embed3d import FILE_NAME as HTML_3D
from transferlab.insight.embed3d import require_plotly, write_3d_view
from transferlab.insight.feature_maps import EmbedResult, embed  # embed: re-exported, as before the split
from transferlab.insight.map_methods import METHOD_TITLES, METHODS, check_methods  # noqa: F401  (re-exported)
from transferlab.insight.runinfo import read_run
from transferlab.insight.transferability import resolve_cache_root
from transferlab.precision import resolve_precision
from transferlab.runs import PredictionRow, open_run, read_predictions


@dataclass(frozen=True)
class EmbedSettings:
    """What `embed_run` draws and how it reads features; built once by the caller."""

    methods: tuple[str, ...] = METHODS
    seed: int = 0
    max_points: int = 5000
    n_outliers: int = 16
    cache_dir: str | os.PathLike | None = None  # None: the user cache; "": no cache
    batch_size: int = 64
    workers: int | None = None  # None: a default for this machine
    progress: bool = True
    three_d: bool = False  # also the interactive 3-D view (needs the optional extra "3d": plotly)

    def __post_init__(self) -> None:
        # Checked when built, before minutes of feature extraction rather than after them.
        object.__setattr__(self, "methods", check_methods(self.methods))
        if not isinstance(self.three_d, bool):
            raise TransferlabError(f"three_d must be true or false, got {self.three_d!r}")
        if self.three_d:
            require_plotly()
        for name, least in (("max_points", 1), ("n_outliers", 0), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise TransferlabError(f"{name} must be a whole number >= {least}, got {value!r}")


@dataclass(frozen=True)
class FolderEmbedSettings(EmbedSettings):
    """`embed_data`'s settings: a folder has no run to take the backbone and extraction from.

    The defaults match the probe's (layers, pooling, resolution rule, precision), so features
    a probe already extracted come from the cache and vice versa.
    """

    backbone: str = DEFAULT_BACKBONE
    weights: str | os.PathLike | None = None
    resolution: int | None = None  # None: chosen from the images, as the probe does
    layers: tuple[str, ...] | list[str] | str = DEFAULT_LAYERS
    pool: str = "avg"
    precision: str = "auto"
    per_class: int | None = None  # at most this many images per class (seeded choice)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "layers", parse_layers(self.layers))
        if self.per_class is not None and (isinstance(self.per_class, bool) or not isinstance(self.per_class, int)
                                           or self.per_class < 1):
            raise TransferlabError(f"per_class must be a whole number >= 1, got {self.per_class!r}")


@dataclass
class _Images:
    """Images to embed, with true and predicted class index (-1: no prediction) and split."""

    paths: list[Path]
    labels: list[int]
    predictions: list[int]
    splits: list[str]

    def only(self, keep: list[int]) -> _Images:
        return _Images(*([values[i] for i in keep] for values in (self.paths, self.labels, self.predictions,
                                                                     self.splits)))


# --------------------------------------------------------------------------- a probe run


def _read_predictions(run_dir: Path, index: dict[str, int]) -> list[PredictionRow]:
    """predictions.csv rows (read by the one checked reader), each naming the run's classes."""
    rows = read_predictions(run_dir, missing_ok=True)
    for number, row in enumerate(rows, start=2):
        unknown = [c for c in (row.true, row.predicted) if c not in index]
        if unknown or not row.path:
            problem = f"class {unknown[0][:60]!r} is not one of the run's classes" if unknown else "empty path"
            raise TransferlabError(f"{run_dir / 'predictions.csv'}: line {number}: {problem}")
    return rows


def _run_images(run_dir: Path, classes: list[str]) -> _Images:
    """Every image of the run (train, val, test) with its true and predicted class index (-1: none)."""
    split = load_split(run_dir / "split.json")
    index = {name: i for i, name in enumerate(classes)}
    strangers = [c for c in split["classes"] if c not in index]
    if strangers:
        raise TransferlabError(f"{run_dir / 'split.json'}: class '{strangers[0]}' is not one of the run's classes")
    root = Path(split["root"])
    rows = _read_predictions(run_dir, index)
    # predictions.csv holds str(root / relative path), so rebuilt paths compare equal.
    predicted = {Path(row.path): index[row.predicted] for row in rows}
    images = _Images([], [], [], [])
    for name in ("train", "val"):
        for rel, class_name in split[name]:
            path = root / rel
            images.paths.append(path)
            images.labels.append(index[class_name])
            images.predictions.append(predicted.get(path, -1))
            images.splits.append(name)
    for row in rows:
        if row.split == "test":  # test images are not in split.json
            images.paths.append(Path(row.path))
            images.labels.append(index[row.true])
            images.predictions.append(index[row.predicted])
            images.splits.append("test")
    missing = [p for p in images.paths[:50] if not os.path.exists(p)]  # a hostile name: False, not a traceback
    if missing:
        raise TransferlabError(f"{run_dir}: the run's images are not where it recorded them (e.g. {missing[0]}); "
                               "run embed from the folder the probe ran in")
    return images


def _run_backbone(run_dir: Path, card: ModelCard, notes: list[str]) -> Backbone:
    # The run's own saved weights reproduce the exact network offline, whatever its source was,
    # and hash to the same weights id, so the features come from the probe's cache.
    saved = run_dir / "model" / "backbone.safetensors"
    backbone = create_backbone(card.backbone, saved if saved.is_file() else None)
    if card.weights_id and backbone.weights_id != card.weights_id:
        notes.append("the backbone's weights differ from the run's: features were extracted anew")
    return backbone


class PenultimateExtractor:
    """A fine-tuned network's penultimate features (the head's input: its pooled backbone
    features, what the run's own report maps), with FeatureExtractor's surface so that
    `extract_with` decodes, caches and skips images as it does for a probe."""

    def __init__(self, net: FinetuneNet, card: ModelCard, settings: ExtractionSettings):
        self.net = net.float().eval()
        self.card = card
        self.settings = settings
        self.name = card.backbone
        self.interpolation = card.interpolation
        self._weights = state_digest(net)

    def cache_key(self) -> dict:
        s = self.settings
        return {"features": "finetuned-penultimate", "backbone": self.name, "weights": self._weights,
                "resolution": s.resolution, "mean": self.card.mean, "std": self.card.std,
                "interpolation": self.interpolation, "precision": s.precision}

    def __call__(self, images_uint8: torch.Tensor):
        return pooled_features(self.net, images_uint8, self.settings.precision, batch_size=self.settings.batch_size)


def _probe_extractor(run_dir: Path, card: ModelCard, settings: EmbedSettings, notes: list[str]) -> FeatureExtractor:
    backbone = _run_backbone(run_dir, card, notes)
    # The run's engine, so its cached features are read, not extracted again. Older runs (no key)
    # and torch runs are torch; any other value, even a planted one, only asks for "auto".
    engine = "torch" if read_run(run_dir).config.get("engine", "torch") == "torch" else "auto"
    return make_extractor(backbone, replace(_run_extraction(card, card.layers, card.pool, settings), engine=engine))


def _finetune_extractor(run_dir: Path, card: ModelCard, settings: EmbedSettings,
                        notes: list[str]) -> PenultimateExtractor:
    net, card = load_finetune_net(run_dir)  # safetensors, checked against the card
    notes.append("penultimate features: the fine-tuned network's pooled backbone output (the head's input)")
    return PenultimateExtractor(net, card, _run_extraction(card, ("head",), "avg", settings))


def _run_extraction(card: ModelCard, layers, pool: str, settings: EmbedSettings) -> ExtractionSettings:
    return ExtractionSettings(resolution=card.resolution, layers=tuple(layers), pool=pool, precision=card.precision,
                              batch_size=settings.batch_size,
                              workers=default_workers() if settings.workers is None else settings.workers)


# Run kind -> what reads its features: a probe's pooled layers, a fine-tuned network's penultimate layer.
RUN_EXTRACTORS = {"probe": _probe_extractor, "finetune": _finetune_extractor}


def embed_run(
    run_dir: str | os.PathLike,
    settings: EmbedSettings = EmbedSettings(),
    *,
    splits: tuple[str, ...] | None = None,
) -> EmbedResult:
    """Maps of a finished run's images, written to `run_dir/plots/embed_*`.

    A probe run's features come from the cache with its own backbone weights, layers, pooling,
    resolution and precision (model/model.json); a fine-tuned run's are its network's
    penultimate features. Predictions come from predictions.csv (the training images have
    none). `splits` limits the images, e.g. ("val",).
    """
    run = open_run(run_dir)
    card = run.card
    if card.kind not in RUN_EXTRACTORS:
        raise TransferlabError(f"{run.path}: an {card.kind} has no one feature space to map; embed one of its "
                               "member runs instead")
    classes = list(card.classes)
    images = _run_images(run.path, classes)
    if splits is not None:
        images = images.only([i for i, s in enumerate(images.splits) if s in splits])
        if not images.paths:
            raise TransferlabError(f"{run.path}: no images in split(s) {', '.join(splits)}")
    notes: list[str] = []
    extractor = RUN_EXTRACTORS[card.kind](run.path, card, settings, notes)
    kind = " fine-tuned" if card.kind == "finetune" else ""
    return _embed_extracted(extractor, images, classes, settings, notes, out_dir=run.plots_dir,
                            title=f"{run.path.name} ({card.backbone}{kind})")


# --------------------------------------------------------------------------- features, then maps


def _embed_extracted(extractor, images: _Images, classes: list[str], settings: EmbedSettings, notes: list[str], *,
                     out_dir: str | os.PathLike, title: str) -> EmbedResult:
    extraction = extract_with(extractor, images.paths, resolve_cache_root(settings.cache_dir), settings.progress)
    if extraction.failures:
        notes.append(f"{len(extraction.failures)} unreadable images left out")
    if not extraction.ok_indices:
        raise TransferlabError("no readable images to embed")
    ok = images.only(list(extraction.ok_indices))
    if extraction.n_extracted:
        notes.append(f"features: {extraction.n_extracted} extracted, {extraction.n_cached} from cache")
    result = embed(extraction.features, np.asarray(ok.labels), classes, predictions=np.asarray(ok.predictions),
                   methods=settings.methods, seed=settings.seed, max_points=settings.max_points,
                   out_dir=out_dir, paths=ok.paths, n_outliers=settings.n_outliers, title=title)
    result.notes[:0] = notes
    if settings.three_d:
        drawn = result.indices  # the maps' points (a seeded subset above max_points)
        page = write_3d_view(extraction.features[drawn], np.asarray(ok.labels)[drawn], classes,
                             Path(out_dir) / HTML_3D, predictions=np.asarray(ok.predictions)[drawn],
                             paths=[ok.paths[i] for i in drawn], splits=[ok.splits[i] for i in drawn],
                             title=title, seed=settings.seed)
        result.html = [page] + [p for p in result.html if Path(p) != page]
    write_json(Path(out_dir) / "embed.json", result.to_dict())
    return result


# --------------------------------------------------------------------------- an image folder


def _limit_per_class(samples: list[Sample], per_class: int | None, seed: int) -> list[Sample]:
    if per_class is None:
        return samples
    rng = random.Random(seed)
    kept: list[Sample] = []
    for label in sorted({s.label for s in samples}):
        group = sorted((s for s in samples if s.label == label), key=lambda s: str(s.path))
        rng.shuffle(group)
        kept.extend(group[:per_class])
    return kept


def embed_data(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: FolderEmbedSettings = FolderEmbedSettings(),
) -> EmbedResult:
    """Maps of an image folder (one subfolder per class) without a run: no predictions.

    Files go to `out_dir` (embed_*.png, embed.json, ...), as `embed` names them.
    """
    scan = scan_data(data_dir).data  # a pre-split folder's train/ and val/ are not classes
    samples = _limit_per_class(scan.samples, settings.per_class, settings.seed)
    model = create_backbone(settings.backbone, settings.weights)
    paths = [s.path for s in samples]
    resolution, _ = resolve_resolution(settings.resolution, paths, model.native_size)
    extraction = ExtractionSettings(resolution=resolution, layers=tuple(settings.layers), pool=settings.pool,
                                    precision=resolve_precision(settings.precision), batch_size=settings.batch_size,
                                    workers=default_workers() if settings.workers is None else settings.workers)
    notes = [f"{settings.backbone} at {resolution}px, layers {', '.join(extraction.layers)} ({settings.pool} pooled)"]
    # No run, so no predictions: -1 for every image.
    images = _Images(paths, [s.label for s in samples], [-1] * len(paths), ["data"] * len(paths))
    return _embed_extracted(FeatureExtractor(model, extraction), images, scan.classes, settings, notes,
                            out_dir=out_dir, title=f"{scan.root.name} ({settings.backbone})")
