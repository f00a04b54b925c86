"""Ranking backbones on an image folder before training anything (`transferlab rank`).

`rank_backbones` extracts each backbone's features of the folder's training split (filling
the cache a later probe reads), scores them with the estimates of `insight.estimates` (LogME,
LEEP, ImageNet task similarity), and, where probe runs on the same data exist, measures how
well each estimate ranks the probes' accuracy (Spearman's rho with an exact p-value).
The estimates are re-exported here, so `transferability.logme` etc. keep working.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from transferlab.backbones import REGISTRY, Backbone, create_backbone
from transferlab.data.layout import prepare_data
from transferlab.errors import TransferlabError
from transferlab.features.cache import default_cache_root
from transferlab.features.extract import (
    ENGINES,
    ExtractionSettings,
    default_engine,
    default_workers,
    extract_features,
)
from transferlab.features.layers import DEFAULT_LAYERS, stage_indices
from transferlab.features.resolution import resolve_resolution
from transferlab.insight.estimates import (  # noqa: F401  (re-exported: the public names of this module)
    IMAGENET_CLASSES,
    imagenet_label_names,
    imagenet_probabilities,
    leep,
    logme,
    task_similarity,
)
from transferlab.insight.runinfo import (
    RunInfo,
    find_runs_for_data,
    read_run,
    resolve_folder,
)
from transferlab.options import check_choice
from transferlab.precision import resolve_precision
from transferlab.report.text import text_table

# The probe's own layers are extracted (and the 'head' part used for the estimates), so the
# ranking fills exactly the cache entries a later `probe` with default settings reads.
RANK_LAYERS = DEFAULT_LAYERS
# Spearman's rho over fewer backbones than this is not computed at all.
MIN_BACKBONES_FOR_CORRELATION = 3
# Up to this many backbones the p-value is exact (all n! orderings), not scipy's t approximation.
EXACT_P_MAX_N = 8
ESTIMATES = ("logme", "leep", "task_similarity")
ESTIMATE_LABELS = {"logme": "LogME", "leep": "LEEP", "task_similarity": "ImageNet similarity"}


# --------------------------------------------------------------------------- ranking


@dataclass
class RankRow:
    backbone: str
    resolution: int
    resolution_reason: str
    images: int  # training images with features
    feature_dim: int  # width of the pooled 'head' features the estimates use
    logme: float
    leep: float | None  # None without an ImageNet head
    similarity: dict | None  # task_similarity(...) result, None without an ImageNet head
    seconds: float  # backbone load + features + estimates
    extract_seconds: float
    features: str  # "N extracted, M from cache"
    probe_accuracy: float | None = None  # val accuracy of a matching probe run
    probe_run: str | None = None
    engine: str = "torch"  # what extracted the features ("auto" resolved)

    @property
    def task_similarity(self) -> float | None:
        return self.similarity["mean_share"] if self.similarity else None

    def estimate(self, name: str) -> float | None:
        return getattr(self, name)


@dataclass
class RankResult:
    data: Path
    rows: list[RankRow]  # in the order the backbones were given
    correlations: dict[str, dict]  # estimate -> {"n", "spearman", "p_value"} or {"n", "reason"}
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def ranked(self) -> list[RankRow]:
        """Rows best first by LogME, the estimate defined for every backbone."""
        return sorted(self.rows, key=lambda r: r.logme, reverse=True)

    def table_text(self) -> str:
        header = ["#", "backbone", "px", "images", "LogME", "LEEP", "ImageNet sim", "probe val acc", "time s"]
        body = [
            [str(i), r.backbone, str(r.resolution), str(r.images), f"{r.logme:.4f}", _opt(r.leep, 4),
             _opt(r.task_similarity, 3), _opt(r.probe_accuracy, 4), f"{r.seconds:.1f}"]
            for i, r in enumerate(self.ranked(), start=1)
        ]
        lines = [text_table(header, body, left=2), ""]
        lines.append(self.correlation_text())
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def correlation_text(self) -> str:
        parts = []
        for name in ESTIMATES:
            c = self.correlations.get(name)
            if c is None:
                continue
            if c.get("spearman") is None:
                parts.append(f"{ESTIMATE_LABELS[name]}: not computed ({c['reason']})")
            else:
                parts.append(f"{ESTIMATE_LABELS[name]}: rho {c['spearman']:+.2f} (p {c['p_value']:.2f}, n {c['n']})")
        return "Spearman rank correlation with probe val accuracy: " + ("; ".join(parts) if parts else "none")

    def similarity_text(self) -> str:
        """Per backbone and class: the dominant ImageNet label and its share."""
        lines = []
        for r in self.rows:
            if not r.similarity:
                continue
            sim = r.similarity
            lines.append(f"{r.backbone}: mean share {sim['mean_share']:.3f}, overall {sim['overall_share']:.3f}, "
                         f"{sim['distinct_labels']} distinct labels for {len(sim['per_class'])} classes")
            for name, v in r.similarity["per_class"].items():
                lines.append(f"  {name}: {v['imagenet_label']} ({v['share']:.0%} of {v['images']})")
            for label, names in r.similarity["shared_labels"].items():
                lines.append(f"  shared label '{label}': {', '.join(names)}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"data": str(self.data), "rows": [asdict(r) for r in self.rows], "correlations": self.correlations,
                "notes": list(self.notes), "seconds": self.seconds}


def _opt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _check_names(names: list[str]) -> None:
    """Fail on an unknown name before minutes of extraction for the known ones."""
    for name in names:
        if name not in REGISTRY:
            import timm

            if not timm.is_model(name):
                create_backbone(name)  # raises the registry's TransferlabError with its suggestions


def _column_slice(backbone: Backbone, layers: tuple[str, ...], wanted: str) -> slice:
    """Where `wanted`'s pooled features sit in the concatenation of `layers`."""
    stages = iter(stage_indices(layers, len(backbone.stages)))
    start = 0
    for name in layers:
        width = backbone.num_features if name == "head" else int(backbone.stages[next(stages)]["num_chs"])
        if name == wanted:
            return slice(start, start + width)
        start += width
    raise ValueError(f"layer {wanted!r} not in {layers}")


def resolve_cache_root(cache_dir: str | os.PathLike | None) -> str | os.PathLike | None:
    # Same convention as the probe: None is the user cache, "" disables caching.
    return None if cache_dir == "" else (cache_dir or default_cache_root())


def _rank_one(name: str, train_paths: list[Path], train_labels: np.ndarray, classes: list[str], *,
              resolution: int | str | None, settings: dict, cache_root, progress: bool, notes: list[str]) -> RankRow:
    start = time.perf_counter()
    backbone = create_backbone(name)
    res, reason = resolve_resolution(resolution or None, train_paths, backbone.native_size)
    extraction_settings = ExtractionSettings(resolution=res, layers=RANK_LAYERS, **settings)
    extraction = extract_features(backbone, train_paths, extraction_settings, cache_root, progress)
    if extraction.failures:
        notes.append(f"{name}: {len(extraction.failures)} unreadable training images left out")
    head = extraction.features[:, _column_slice(backbone, RANK_LAYERS, "head")]
    labels = train_labels[np.asarray(extraction.ok_indices, dtype=np.int64)]
    if len(np.unique(labels)) < 2:
        raise TransferlabError("fewer than 2 classes left with readable training images: nothing to rank")
    score = logme(head, labels)
    leep_score, similarity = None, None
    if backbone.has_imagenet_head:
        probs = imagenet_probabilities(backbone, head)
        leep_score = leep(probs, labels)
        similarity = task_similarity(probs, labels, classes)
    else:
        notes.append(f"{name}: no 1000-class ImageNet head, so no LEEP or ImageNet similarity")
    return RankRow(
        backbone=name, resolution=res, resolution_reason=reason, images=len(labels), feature_dim=head.shape[1],
        logme=score, leep=leep_score, similarity=similarity, seconds=round(time.perf_counter() - start, 3),
        extract_seconds=round(extraction.seconds, 3),
        features=f"{extraction.n_extracted} extracted, {extraction.n_cached} from cache",
        engine=extraction.settings.engine,
    )


def rank_backbones(
    data: str | os.PathLike,
    backbones: list[str],
    resolution: int | str | None = None,
    cache_dir: str | os.PathLike | None = None,
    per_class: int | None = None,
    seed: int = 0,
    progress: bool = True,
    probe_runs: list[Path] | tuple = (),
    *,
    val_fraction: float = 0.2,
    precision: str = "auto",
    engine: str | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    runs_root: str | os.PathLike = "runs",
) -> RankResult:
    """Estimate, for each backbone, how well it will transfer to the image folder `data`.

    Features of the training split (the probe's stratified split with the same seed,
    val_fraction and per_class) are extracted with the probe's layers, resolution rule,
    precision, engine and cache, so a later `probe` reads them from the cache. `resolution`: None
    chooses from the images as the probe does, an int fixes it, "native" uses each
    backbone's own pretraining size. LogME uses the
    avg-pooled 'head' features; LEEP and ImageNet similarity use the backbone's ImageNet
    classifier on them. Probe accuracies come from `probe_runs`, or else from complete runs
    under `runs_root` on the same folder; with measured accuracy for >= 3 backbones the
    Spearman rank correlation of each estimate with it is reported.
    """
    names = list(dict.fromkeys(backbones))
    if isinstance(resolution, str) and resolution != "native":
        raise TransferlabError(f"resolution must be a number of pixels or 'native', got '{resolution}'")
    if not names:
        raise TransferlabError("no backbones to rank: name at least one")
    engine = engine or default_engine()  # the probe's default, so the ranking fills the cache it reads
    check_choice("engine", engine, tuple(ENGINES))
    _check_names(names)
    start = time.perf_counter()
    # The probe's own split (layout, duplicates kept together), so probe runs on it compare.
    prepared = prepare_data(data, None, val_fraction, seed, per_class)
    scan, split = prepared.scan, prepared.split
    notes = list(prepared.notes)
    train_paths = [s.path for s in split.train]
    train_labels = np.asarray([s.label for s in split.train], dtype=np.int64)
    settings = {"pool": "avg", "batch_size": batch_size, "precision": resolve_precision(precision),
                "engine": engine, "workers": default_workers() if workers is None else workers}
    rows = [
        _rank_one(name, train_paths, train_labels, scan.classes, resolution=resolution, settings=settings,
                  cache_root=resolve_cache_root(cache_dir), progress=progress, notes=notes)
        for name in names
    ]
    runs = _probe_runs(scan.root, probe_runs, runs_root, notes)
    _attach_accuracies(rows, runs, split_key=(seed, val_fraction, per_class), notes=notes)
    correlations = correlate_with_accuracy(rows, notes)
    return RankResult(resolve_folder(scan.root), rows, correlations, notes, round(time.perf_counter() - start, 3))


def _probe_runs(data_root: Path, explicit: list[Path] | tuple, runs_root: str | os.PathLike,
                notes: list[str]) -> list[RunInfo]:
    target = resolve_folder(data_root)
    if explicit:
        runs = [read_run(p) for p in explicit]
        for run in runs:
            if run.data_root != target:
                notes.append(f"probe run {run.path} is on {run.data_root}, not {target}: its accuracy is used anyway")
    else:
        runs = find_runs_for_data(target, runs_root)
    return [r for r in runs if r.kind == "probe" and isinstance(r.split_metrics("val").get("accuracy"), (int, float))]


def _attach_accuracies(rows: list[RankRow], runs: list[RunInfo], split_key: tuple, notes: list[str]) -> None:
    """Give each row the val accuracy of its backbone's probe run.

    Several runs of one backbone: prefer the one with the same split (seed, val fraction,
    per-class limit) as this ranking, then the most recently finished.
    """
    for row in rows:
        candidates = [r for r in runs if r.backbone == row.backbone]
        if not candidates:
            continue

        def preference(run: RunInfo) -> tuple:
            c = run.config
            same_split = (c.get("seed"), c.get("val_fraction"), c.get("per_class")) == split_key
            return (same_split, run.finished)

        chosen = max(candidates, key=preference)
        row.probe_accuracy = float(chosen.split_metrics("val")["accuracy"])
        row.probe_run = str(chosen.path)
        if len(candidates) > 1:
            notes.append(f"{row.backbone}: {len(candidates)} probe runs found; using {chosen.path}")


def correlate_with_accuracy(rows: list[RankRow], notes: list[str]) -> dict[str, dict]:
    """Spearman's rho of each estimate with the probe accuracy, over the rows that have both."""
    from scipy.stats import spearmanr

    measured = [r for r in rows if r.probe_accuracy is not None]
    if not measured:
        notes.append("no probe runs on this data were found (looked under runs/ unless probe_runs were given): "
                      "run the probe per backbone to compare the estimates with measured accuracy")
    result: dict[str, dict] = {}
    for name in ESTIMATES:
        pairs = [(r.estimate(name), r.probe_accuracy) for r in measured if r.estimate(name) is not None]
        if len(pairs) < MIN_BACKBONES_FOR_CORRELATION:
            result[name] = {"n": len(pairs), "spearman": None,
                            "reason": f"needs probe accuracy for >= {MIN_BACKBONES_FOR_CORRELATION} backbones, "
                                      f"have {len(pairs)}"}
            continue
        estimates, accuracies = zip(*pairs)
        if len(set(estimates)) == 1 or len(set(accuracies)) == 1:
            result[name] = {"n": len(pairs), "spearman": None, "reason": "constant values, no ranking to compare"}
            continue
        rho, p_value = spearmanr(estimates, accuracies)
        if len(pairs) <= EXACT_P_MAX_N:
            p_value = _exact_p_value(estimates, accuracies)
        result[name] = {"n": len(pairs), "spearman": float(rho), "p_value": float(p_value)}
    if any(c.get("spearman") is not None and c["n"] < 5 for c in result.values()):
        notes.append("with fewer than 5 backbones Spearman's rho takes only a few values (n=3: +-0.5, +-1) "
                     "and even a perfect ranking of 3 has an exact p-value of 0.33: a sanity check, not evidence")
    return result


def _exact_p_value(x, y) -> float:
    """Two-sided permutation p-value of Spearman's rho, over every ordering of `y`'s ranks.

    scipy's default t approximation reports p = 0 for a perfect ranking of 3 backbones;
    the exact value is 2/6. The statistic is |rho| with alternative 'greater', i.e. the share
    of orderings whose |rho| is at least the observed one; scipy's own 'two-sided' doubles
    the smaller tail, which differs when ties make the null distribution asymmetric.
    """
    from scipy.stats import permutation_test, rankdata

    rx, ry = rankdata(x), rankdata(y)
    cx = (rx - rx.mean()) / np.linalg.norm(rx - rx.mean())

    def abs_rho(ranks: np.ndarray, axis: int = -1) -> np.ndarray:
        # Spearman's rho is Pearson's r of the ranks; vectorised over all orderings at once.
        centred = ranks - ranks.mean(axis=axis, keepdims=True)
        return np.abs(np.sum(centred * cx, axis=axis) / np.linalg.norm(centred, axis=axis))

    # One sample with 'pairings': each ordering of y's ranks against x; n_resamples=inf
    # makes the test exact (all n! orderings, 40320 at n = 8).
    result = permutation_test((ry,), abs_rho, permutation_type="pairings", vectorized=True,
                              n_resamples=np.inf, alternative="greater")
    return float(result.pvalue)
