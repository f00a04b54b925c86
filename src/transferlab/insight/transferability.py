"""Transferability estimates: which backbone will transfer best, before training anything.

- `logme`: LogME, the log of the maximum label evidence of a Bayesian linear model on the
  features (You et al., ICML 2021);
- `leep`: LEEP, the log expected empirical prediction of the source (ImageNet) classifier
  re-labelled to the target classes (Nguyen et al., ICML 2020);
- `task_similarity`: how consistently each target class falls on one ImageNet label.

`rank_backbones` computes them for several backbones on a folder's training split, and,
where probe runs on the same data exist, how well each estimate ranks the measured accuracy.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from timm.layers import SelectAdaptivePool2d

from transferlab.backbones import REGISTRY, Backbone, create_backbone
from transferlab.data.layout import prepare_data
from transferlab.errors import TransferlabError
from transferlab.features.cache import default_cache_root
from transferlab.features.extract import (
    ExtractionSettings,
    default_workers,
    extract_features,
)
from transferlab.features.layers import DEFAULT_LAYERS, stage_indices
from transferlab.features.resolution import choose_resolution
from transferlab.insight.runinfo import (
    RunInfo,
    find_runs_for_data,
    read_run,
    resolve_folder,
)
from transferlab.precision import resolve_precision

IMAGENET_CLASSES = 1000
# The probe's own layers are extracted (and the 'head' part used for the estimates), so the
# ranking fills exactly the cache entries a later `probe` with default settings reads.
RANK_LAYERS = DEFAULT_LAYERS
# Spearman's rho over fewer backbones than this is not computed at all.
MIN_BACKBONES_FOR_CORRELATION = 3
# Up to this many backbones the p-value is exact (all n! orderings), not scipy's t approximation.
EXACT_P_MAX_N = 8
ESTIMATES = ("logme", "leep", "task_similarity")
ESTIMATE_LABELS = {"logme": "LogME", "leep": "LEEP", "task_similarity": "ImageNet similarity"}


# --------------------------------------------------------------------------- LogME


def _svd(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and singular values of `features` (n x d), zero values dropped.

    With n > d the d x d Gram matrix is decomposed instead, as in the reference code:
    far cheaper for thousands of images with ~1000-dimensional features. The reference
    calls `svd` on it; the symmetric divide-and-conquer eigensolver gives the same
    decomposition of a positive semi-definite matrix about 3x faster (Gram of 1280-dim
    EfficientNet features, best of 3 on 2 shared cores: svd 4.1 s, eigh "evd" 1.3 s).
    """
    n, d = features.shape
    if n > d:
        eigenvalues, vectors = scipy.linalg.eigh(features.T @ features, driver="evd")
        order = np.argsort(eigenvalues)[::-1]  # descending, like svd
        singular = np.sqrt(np.clip(eigenvalues[order], 0.0, None))
        rank = int(np.sum(singular > 1e-10))
        singular, v = singular[:rank], vectors[:, order[:rank]]
        u = (features @ v) / singular
    else:
        u, singular, _ = np.linalg.svd(features, full_matrices=False)
    return u, singular


def _target_evidence(target: np.ndarray, u: np.ndarray, sigma: np.ndarray, n: int, d: int) -> float:
    """Maximum log evidence per sample of one regression target, by the fixed-point iteration."""
    x2 = (u.T @ target) ** 2  # squared projections of the target on the singular directions
    outside = target @ target - x2.sum()  # energy of the target outside the features' span
    alpha, beta = 1.0, 1.0
    for _ in range(11):  # the reference stops at 11 updates; it converges in a few
        t = alpha / beta
        gamma = (sigma / (sigma + t)).sum()
        m2 = (sigma * x2 / (t + sigma) ** 2).sum()
        res2 = (x2 / (1 + sigma / t) ** 2).sum() + outside
        alpha = gamma / (m2 + 1e-5)
        beta = (n - gamma) / (res2 + 1e-5)
        if abs(alpha / beta - t) / t <= 1e-3:
            break
    # Note, as in the reference: the log-determinant sums over the non-zero singular values only.
    evidence = (
        d / 2.0 * np.log(alpha)
        + n / 2.0 * np.log(beta)
        - 0.5 * np.sum(np.log(alpha + beta * sigma))
        - beta / 2.0 * res2
        - alpha / 2.0 * m2
        - n / 2.0 * np.log(2 * np.pi)
    )
    return float(evidence / n)


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME score of `features` (n x d) for integer class `labels` (n,); higher transfers better.

    LogME: K. You, Y. Liu, J. Wang, M. Long, "LogME: Practical Assessment of Pre-trained
    Models for Transfer Learning", ICML 2021 (http://proceedings.mlr.press/v139/you21b.html),
    with the fixed-point evidence maximisation of K. You et al., "Ranking and Tuning
    Pre-trained Models: A New Paradigm for Exploiting Model Hubs", JMLR 2022
    (arXiv:2110.10545), ported from the authors' reference code (github.com/thuml/LogME,
    `LogME._fit_fixed_point`): for each class a one-vs-rest 0/1 target is fitted by Bayesian
    linear regression on the features, the prior and noise precisions (alpha, beta) are set to
    maximise the evidence, and the per-sample log evidence is averaged over the classes.
    Computed in float64 on the raw (unstandardised) features, as in the reference. One
    deliberate difference: only the classes present in `labels` are scored (the reference
    scores every index up to the largest label, including absent ones).
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if f.ndim != 2 or f.shape[0] != y.shape[0]:
        raise TransferlabError(f"LogME needs features (n, d) and n labels; got {f.shape} and {y.shape[0]} labels")
    if f.shape[0] < 2 or not np.isfinite(f).all():
        raise TransferlabError("LogME needs at least 2 images with finite features")
    n, d = f.shape
    u, singular = _svd(f)
    if singular.size == 0:
        raise TransferlabError("LogME: the features are all zero")
    sigma = singular**2
    evidences = [_target_evidence((y == c).astype(np.float64), u, sigma, n, d) for c in np.unique(y)]
    return float(np.mean(evidences))


# --------------------------------------------------------------------------- LEEP


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP score of a source classifier's probabilities (n x Z) for target `labels` (n,).

    C. V. Nguyen, T. Hassner, M. Seeger, C. Archambeau, "LEEP: A New Measure to Evaluate
    Transferability of Learned Representations", ICML 2020 (arXiv:2002.12462): the empirical
    conditional P(y | z) is estimated from the soft source labels, and LEEP is the mean log
    probability that the resulting "expected empirical predictor" gives the true label.
    Always <= 0; closer to 0 transfers better.
    """
    theta = np.asarray(source_probs, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if theta.ndim != 2 or theta.shape[0] != y.shape[0] or theta.shape[0] == 0:
        raise TransferlabError(f"LEEP needs probabilities (n, Z) and n labels; got {theta.shape} and {y.shape[0]}")
    if (theta < 0).any() or not np.isfinite(theta).all():
        raise TransferlabError("LEEP needs non-negative, finite source probabilities")
    present, target = np.unique(y, return_inverse=True)
    n = theta.shape[0]
    joint = np.zeros((len(present), theta.shape[1]))
    np.add.at(joint, target, theta / n)  # P(y, z)
    marginal = joint.sum(axis=0, keepdims=True)  # P(z)
    # A source label no image gives mass to has no conditional; it contributes nothing anyway.
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)  # P(y | z)
    expected = theta @ conditional.T  # (n, classes): the EEP's probability of each target class
    return float(np.mean(np.log(np.maximum(expected[np.arange(n), target], 1e-300))))


# --------------------------------------------------------------------------- task similarity


def imagenet_label_names(count: int = IMAGENET_CLASSES) -> list[str]:
    """Readable ImageNet-1k class names from timm's bundled metadata (no network)."""
    if count == IMAGENET_CLASSES:
        try:
            from timm.data import ImageNetInfo

            info = ImageNetInfo()
            return [info.index_to_description(i) for i in range(count)]
        except (ImportError, AttributeError, OSError, ValueError):
            pass  # an older timm without the metadata: indices still identify the labels
    return [f"class {i}" for i in range(count)]


def task_similarity(source_probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """How consistently each target class maps onto one ImageNet label.

    Per class: the ImageNet label most of its images get as top-1 prediction ("dominant"),
    and the share of its images predicted as that label. `mean_share` averages the shares
    over the classes with images; `overall_share` is the share of all images whose top-1
    label is one of the dominant labels. `shared_labels` lists dominant labels claimed by
    more than one class: those classes look alike to the ImageNet classifier.
    """
    probs = np.asarray(source_probs)
    y = np.asarray(labels).reshape(-1)
    if probs.ndim != 2 or probs.shape[0] != y.shape[0] or probs.shape[0] == 0:
        raise TransferlabError(f"task similarity needs probabilities (n, Z) and n labels; got {probs.shape}")
    names = imagenet_label_names(probs.shape[1])
    top1 = probs.argmax(axis=1)
    per_class: dict[str, dict] = {}
    for index, name in enumerate(classes):
        mask = y == index
        if not mask.any():
            continue
        counts = np.bincount(top1[mask], minlength=probs.shape[1])
        dominant = int(counts.argmax())
        per_class[name] = {
            "imagenet_index": dominant,
            "imagenet_label": names[dominant],
            "share": float(counts[dominant] / mask.sum()),
            "images": int(mask.sum()),
        }
    dominant_set = {v["imagenet_index"] for v in per_class.values()}
    claimed: dict[str, list[str]] = {}
    for name, v in per_class.items():
        claimed.setdefault(v["imagenet_label"], []).append(name)
    return {
        "per_class": per_class,
        "mean_share": float(np.mean([v["share"] for v in per_class.values()])),
        "overall_share": float(np.isin(top1, list(dominant_set)).mean()),
        "shared_labels": {label: names_ for label, names_ in claimed.items() if len(names_) > 1},
        # Classes that all fall on one label are "consistent" but indistinguishable: count the labels.
        "distinct_labels": len(dominant_set),
    }


def imagenet_probabilities(backbone: Backbone, pooled_head_features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """ImageNet softmax (n x 1000, float64) from avg-pooled 'head' features, via the backbone's own head.

    The pooled vector is fed to timm's `forward_head` as a 1 x 1 map: average pooling of it is
    the identity, and whatever follows the pooling (classifier, a norm, a conv head) runs as in
    the full network, so the result equals the model's own prediction.
    """
    model = backbone.model
    if not backbone.has_imagenet_head:
        raise TransferlabError(
            f"backbone '{backbone.name}' has no 1000-class ImageNet classifier "
            f"(it has {getattr(model, 'num_classes', 0)} outputs): LEEP and task similarity need one"
        )
    pools = [m for m in model.modules() if isinstance(m, SelectAdaptivePool2d)]
    if len(pools) != 1 or pools[0].pool_type != "avg":
        raise TransferlabError(
            f"backbone '{backbone.name}' does not end in one global average pool: its ImageNet "
            "predictions cannot be computed from avg-pooled features"
        )
    features = np.asarray(pooled_head_features, dtype=np.float32)
    if features.ndim != 2 or features.shape[1] != backbone.num_features:
        raise TransferlabError(
            f"expected pooled 'head' features with {backbone.num_features} columns for '{backbone.name}', "
            f"got shape {features.shape}"
        )
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            batch = torch.from_numpy(features[start : start + batch_size])[:, :, None, None]
            chunks.append(model.forward_head(batch).double().numpy())
    logits = np.concatenate(chunks) if chunks else np.zeros((0, IMAGENET_CLASSES))
    logits -= logits.max(axis=1, keepdims=True)  # stable softmax
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


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
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
                 for row in [header, *body]]
        lines.append("")
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
    if resolution == "native":
        res, reason = backbone.native_size, f"native {backbone.native_size}px (asked for native)"
    elif resolution:
        res, reason = int(resolution), "set by the user"
    else:
        res, reason = choose_resolution(train_paths, backbone.native_size)
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
    batch_size: int = 64,
    workers: int | None = None,
    runs_root: str | os.PathLike = "runs",
) -> RankResult:
    """Estimate, for each backbone, how well it will transfer to the image folder `data`.

    Features of the training split (the probe's stratified split with the same seed,
    val_fraction and per_class) are extracted with the probe's layers, resolution rule,
    precision and cache, so a later `probe` reads them from the cache. `resolution`: None
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
    _check_names(names)
    start = time.perf_counter()
    # The probe's own split (layout, duplicates kept together), so probe runs on it compare.
    prepared = prepare_data(data, None, val_fraction, seed, per_class)
    scan, split = prepared.scan, prepared.split
    notes = list(prepared.notes)
    train_paths = [s.path for s in split.train]
    train_labels = np.asarray([s.label for s in split.train], dtype=np.int64)
    settings = {"pool": "avg", "batch_size": batch_size, "precision": resolve_precision(precision),
                "workers": default_workers() if workers is None else workers}
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
            p_value = _exact_p_value(estimates, accuracies, float(rho))
        result[name] = {"n": len(pairs), "spearman": float(rho), "p_value": float(p_value)}
    if any(c.get("spearman") is not None and c["n"] < 5 for c in result.values()):
        notes.append("with fewer than 5 backbones Spearman's rho takes only a few values (n=3: +-0.5, +-1) "
                     "and even a perfect ranking of 3 has an exact p-value of 0.33: a sanity check, not evidence")
    return result


def _exact_p_value(x, y, rho: float) -> float:
    """Two-sided permutation p-value of Spearman's rho, over every ordering of `y`'s ranks.

    scipy's default t approximation reports p = 0 for a perfect ranking of 3 backbones;
    the exact value is 2/6.
    """
    from itertools import permutations

    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    cx = (rx - rx.mean()) / np.linalg.norm(rx - rx.mean())
    hits = total = 0
    for order in permutations(ry):
        r = np.asarray(order) - ry.mean()
        total += 1
        hits += abs(float(cx @ r) / np.linalg.norm(r)) >= abs(rho) - 1e-12
    return hits / total
