"""One forward pass per image: pooled features from several layers, concatenated.

Decoding and resizing run in DataLoader workers; the network runs in inference mode,
channels-last, optionally under bf16 autocast. Unreadable images are skipped and listed.
`extract_with` runs any extractor of the same surface (`FeatureExtractor`'s: settings, name,
interpolation, cache_key, a call on uint8 batches), e.g. a fine-tuned network's penultimate
features, with the same decoding, caching and skipping.

`ExtractionSettings.engine` chooses what runs the network (`ENGINES`): torch, OpenVINO (the
same network exported to ONNX and compiled; features/openvino_extract.py), or "auto":
OpenVINO where it is installed and compiles the network, else torch, with one log line saying why.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from transferlab.backbones import Backbone
from transferlab.data.images import ImageDecodeError, file_digest
from transferlab.data.transforms import normalise, preprocess
from transferlab.errors import TransferlabError
from transferlab.features.cache import FeatureCache
from transferlab.features.layers import DEFAULT_LAYERS, POOLS, pool, stage_indices
from transferlab import openvino_rt
from transferlab.features.openvino_extract import openvino_extractor, openvino_identity
from transferlab.options import MAX_RESOLUTION, MIN_RESOLUTION, check_int

PRECISIONS = ("fp32", "bf16")
log = logging.getLogger("transferlab.features")
# Rows extracted between two cache shards: what a killed run can lose at most.
SHARD_ROWS = 1024


def default_workers() -> int:
    """Decoding workers: none up to 2 cores, where a worker process only competes with the
    network for the same cores (benchmarks/extract_throughput.py: workers 0 beat workers 1
    in fp32 and bf16), then one per two cores, at most 4."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores // 2)


@dataclass(frozen=True)
class ExtractionSettings:
    resolution: int
    layers: tuple[str, ...] = DEFAULT_LAYERS
    pool: str = "avg"
    batch_size: int = 64
    workers: int = field(default_factory=default_workers)
    precision: str = "fp32"
    engine: str = "torch"  # a name in ENGINES; an extractor's own settings name the engine that ran

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise TransferlabError(f"unknown pooling '{self.pool}': choose from {', '.join(POOLS)}")
        if self.precision not in PRECISIONS:
            raise TransferlabError(f"unknown precision '{self.precision}': choose from {', '.join(PRECISIONS)}")
        if self.engine not in ENGINES:
            raise TransferlabError(f"unknown engine '{self.engine}': choose from {', '.join(ENGINES)}")
        check_int("resolution", self.resolution, MIN_RESOLUTION, MAX_RESOLUTION)
        if self.batch_size < 1:
            raise TransferlabError(f"batch size must be at least 1, got {self.batch_size}")


class ImageList(Dataset):
    def __init__(self, paths: list[Path], resolution: int, interpolation: str):
        self.paths, self.resolution, self.interpolation = paths, resolution, interpolation

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return preprocess(self.paths[index], self.resolution, self.interpolation), index, ""
        except ImageDecodeError as exc:
            return torch.zeros(3, self.resolution, self.resolution, dtype=torch.uint8), index, str(exc)


def collate_images(items):
    images, indices, errors = zip(*items)
    return torch.stack(images), list(indices), list(errors)


class PooledFeatures(nn.Module):
    """Normalised float images -> pooled features of the chosen layers, concatenated.

    Differentiable (no inference mode), so the same module serves extraction, ONNX
    export and class-activation maps.
    """

    def __init__(self, backbone: Backbone, layers: tuple[str, ...], pool_method: str):
        super().__init__()
        self.model = backbone.model
        self.layers = tuple(layers)
        self.pool_method = pool_method
        self.stage_idx = stage_indices(self.layers, len(backbone.stages))

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One (B, C, H, W) map per requested layer, in the requested order."""
        if not self.stage_idx:
            return [self.model.forward_features(x)]
        want_head = "head" in self.layers
        wanted = sorted(set(self.stage_idx))
        out = self.model.forward_intermediates(
            x, indices=wanted, intermediates_only=not want_head, stop_early=not want_head
        )
        final, intermediates = out if want_head else (None, out)
        # timm returns intermediates in forward order, i.e. sorted by stage index.
        by_index = dict(zip(wanted, intermediates))
        stage_iter = iter(self.stage_idx)
        return [final if name == "head" else by_index[next(stage_iter)] for name in self.layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([pool(m, self.pool_method) for m in self.feature_maps(x)], dim=1)


class FeatureExtractor:
    """Turns batches of uint8 images into concatenated pooled features for one backbone."""

    def __init__(self, backbone: Backbone, settings: ExtractionSettings):
        self.backbone = backbone
        self.settings = replace(settings, engine="torch")  # what runs here, whatever was asked
        backbone.model.eval().to(memory_format=torch.channels_last)
        self.network = PooledFeatures(backbone, settings.layers, settings.pool)

    @property
    def name(self) -> str:
        return self.backbone.name

    @property
    def interpolation(self) -> str:
        return self.backbone.interpolation

    def cache_key(self) -> dict:
        s = self.settings
        return {
            "backbone": self.backbone.name,
            "weights": self.backbone.weights_id,
            "layers": list(s.layers),
            "pool": s.pool,
            "resolution": s.resolution,
            "mean": self.backbone.mean,
            "std": self.backbone.std,
            "interpolation": self.backbone.interpolation,
            "precision": s.precision,
        }

    def normalise(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return normalise(images_uint8, self.backbone.mean, self.backbone.std).contiguous(
            memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, images_uint8: torch.Tensor) -> np.ndarray:
        return self.from_normalised(self.normalise(images_uint8))

    @torch.inference_mode()
    def from_normalised(self, x: torch.Tensor) -> np.ndarray:
        """Features of float images normalised already (test-time augmentation's views)."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.settings.precision == "bf16"):
            features = self.network(x)
        return features.float().numpy()


def _openvino(backbone: Backbone, settings: ExtractionSettings):
    return openvino_extractor(FeatureExtractor(backbone, settings))


def _auto(backbone: Backbone, settings: ExtractionSettings):
    """OpenVINO where it is installed and compiles this network (1.4-2.5x torch's speed on
    AVX512-BF16 CPUs), else torch: equal features in fp32 and the same probe accuracy in bf16,
    so a missing or failing OpenVINO costs speed, never the run."""
    try:
        return _openvino(backbone, settings)
    except Exception as exc:  # noqa: BLE001 - any failure of the faster engine falls back, never fails the run
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("feature extraction runs in torch, not OpenVINO: %s", reason)
        return FeatureExtractor(backbone, settings)


# Engine name -> factory(backbone, settings) -> an extractor with FeatureExtractor's surface.
ENGINES = {"torch": FeatureExtractor, "openvino": _openvino, "auto": _auto}


def default_engine() -> str:
    """The engine probes, rankings and ensemble scoring use unless told: $TRANSFERLAB_ENGINE (like
    TRANSFERLAB_CACHE, one setting for every command, e.g. `torch` in a test suite that compiles
    many tiny networks), else "auto"."""
    engine = os.environ.get("TRANSFERLAB_ENGINE", "").strip() or "auto"
    if engine not in ENGINES:
        raise TransferlabError(f"TRANSFERLAB_ENGINE={engine[:40]!r} is not an engine: choose from {', '.join(ENGINES)}")
    return engine


def make_extractor(backbone: Backbone, settings: ExtractionSettings):
    """The extractor of `settings.engine`; its `settings` name the engine and precision that run."""
    return ENGINES[settings.engine](backbone, settings)


@dataclass
class ExtractionResult:
    features: np.ndarray  # (n_ok, D) float32, rows in the order of ok_indices
    ok_indices: list[int]
    failures: list[tuple[Path, str]]
    n_cached: int
    n_extracted: int
    seconds: float
    cache_dir: Path | None
    settings: ExtractionSettings | None = None  # the extractor's: the engine and precision that ran

    @property
    def images_per_second(self) -> float:
        return self.n_extracted / self.seconds if self.n_extracted and self.seconds > 0 else 0.0


def _digests(paths: list[Path], progress: bool) -> tuple[list[str | None], dict[int, str]]:
    digests: list[str | None] = []
    unreadable: dict[int, str] = {}
    for i, path in enumerate(tqdm(paths, desc="hashing", unit="img", disable=not progress, leave=False)):
        try:
            digests.append(file_digest(path))
        except OSError as exc:
            digests.append(None)
            unreadable[i] = f"cannot read file: {exc.strerror or exc}"
    return digests, unreadable


@dataclass
class _Lookup:
    """`paths` looked up in one cache entry: their digests, what the entry holds, what it lacks."""

    key: dict
    cache: FeatureCache | None
    digests: list[str | None]
    unreadable: dict[int, str]  # index -> why the file could not be read
    rows: dict[str, np.ndarray]
    failures: dict[str, str]
    todo: dict[str, int]  # digest -> first index with it: identical files are extracted once

    @classmethod
    def of(cls, key: dict, paths: list[Path], cache_root, progress: bool, hashed=None) -> _Lookup:
        cache = FeatureCache(cache_root, key) if cache_root is not None else None
        digests, unreadable = hashed if hashed is not None else _digests(paths, progress)
        rows, failures = cache.load() if cache else ({}, {})
        todo: dict[str, int] = {}
        for i, digest in enumerate(digests):
            if digest is not None and digest not in rows and digest not in failures:
                todo.setdefault(digest, i)
        return cls(key, cache, digests, unreadable, rows, failures, todo)

    def result(self, paths: list[Path], settings: ExtractionSettings | None, start: float) -> ExtractionResult:
        rows, ok_indices, failures = [], [], []
        for i, digest in enumerate(self.digests):
            if digest is None:
                failures.append((paths[i], self.unreadable[i]))
            elif digest in self.failures:
                failures.append((paths[i], self.failures[digest]))
            else:
                rows.append(self.rows[digest])
                ok_indices.append(i)
        width = next(iter(self.rows.values())).shape[0] if self.rows else 0
        return ExtractionResult(
            features=np.stack(rows).astype(np.float32) if rows else np.zeros((0, width), np.float32),
            ok_indices=ok_indices, failures=failures,
            n_cached=len(paths) - len(self.todo) - len(self.unreadable), n_extracted=len(self.todo),
            seconds=time.perf_counter() - start, cache_dir=self.cache.directory if self.cache else None,
            settings=settings)


def _cached_openvino(backbone: Backbone, paths: list[Path], settings: ExtractionSettings, cache_root,
                     progress: bool) -> tuple[_Lookup | None, ExtractionSettings | None]:
    """The cache looked up under the name an OpenVINO extractor for `settings` would have, found
    without building one; (None, None) where `settings` would not build one (torch: building it
    costs nothing worth skipping)."""
    if cache_root is None or settings.engine not in ("openvino", "auto") or not openvino_rt.available():
        return None, None
    try:
        precision = openvino_rt.precision_on_this_cpu(settings.precision)
    except Exception:  # noqa: BLE001 - a shortcut only: building the extractor says what is wrong, or falls back
        return None, None
    named, key = openvino_identity(FeatureExtractor(backbone, settings), precision)
    return _Lookup.of(key, paths, cache_root, progress), named


def extract_features(
    backbone: Backbone,
    paths: list[Path],
    settings: ExtractionSettings,
    cache_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> ExtractionResult:
    """Features for every readable image in `paths`, from the cache where possible.

    When the cache holds every image already, no OpenVINO extractor is built: it exports and
    compiles its graph first, 1-3 s (twice in a probe: bf16 and fp32) spent on nothing."""
    start = time.perf_counter()
    found, named = _cached_openvino(backbone, paths, settings, cache_root, progress)
    if found is not None and not found.todo:
        return found.result(paths, named, start)
    extractor = make_extractor(backbone, settings)
    if found is not None and extractor.cache_key() == found.key:  # as expected: the lookup stands
        return _extract_into(extractor, paths, found, progress, start)
    hashed = (found.digests, found.unreadable) if found is not None else None
    return _extract_into(extractor, paths, _Lookup.of(extractor.cache_key(), paths, cache_root, progress, hashed),
                         progress, start)


def extract_with(
    extractor: FeatureExtractor,
    paths: list[Path],
    cache_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> ExtractionResult:
    """`extract_features` for any extractor with FeatureExtractor's surface; its cache_key keys the cache."""
    start = time.perf_counter()
    return _extract_into(extractor, paths, _Lookup.of(extractor.cache_key(), paths, cache_root, progress),
                         progress, start)


def _extract_into(extractor, paths: list[Path], found: _Lookup, progress: bool, start: float) -> ExtractionResult:
    new_rows, new_failures = _extract_missing(extractor, paths, found.todo, found.cache, progress)
    found.rows.update(new_rows)
    found.failures.update(new_failures)
    return found.result(paths, extractor.settings, start)


def _extract_missing(
    extractor: FeatureExtractor,
    paths: list[Path],
    todo: dict[str, int],
    cache: FeatureCache | None,
    progress: bool,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    rows: dict[str, np.ndarray] = {}
    failures: dict[str, str] = {}
    if not todo:
        return rows, failures
    digests = list(todo)
    todo_paths = [paths[todo[d]] for d in digests]
    settings = extractor.settings
    loader = DataLoader(
        ImageList(todo_paths, settings.resolution, extractor.interpolation),
        batch_size=settings.batch_size,
        num_workers=settings.workers,
        collate_fn=collate_images,
        persistent_workers=False,
    )
    pending_digests: list[str] = []
    pending_rows: list[np.ndarray] = []
    pending_failures: dict[str, str] = {}

    def flush() -> None:
        if cache is not None and (pending_digests or pending_failures):
            cache.add(pending_digests, np.stack(pending_rows) if pending_rows else np.zeros((0, 0)), pending_failures)
        pending_digests.clear()
        pending_rows.clear()
        pending_failures.clear()

    bar = tqdm(total=len(todo_paths), desc=f"features {extractor.name}@{settings.resolution}px",
               unit="img", disable=not progress)
    for images, indices, errors in loader:
        features = extractor(images)
        for row, index, error in zip(features, indices, errors):
            digest = digests[index]
            if error:
                failures[digest] = pending_failures[digest] = error
            else:
                rows[digest] = row
                pending_digests.append(digest)
                pending_rows.append(row)
        bar.update(len(indices))
        if len(pending_digests) >= SHARD_ROWS:
            flush()
    bar.close()
    flush()
    return rows, failures
