"""`run_ensemble`: several finished runs combined into one model, itself an ordinary run folder.

The members (probe and fine-tuned runs of the same classes, validated on the same images)
are copied into the new folder's model/members/, and the ensemble network is built from
those copies: what is scored is exactly what predict, serve and export will run. Every
member's probabilities on the shared validation images (and --test) come from that one
network; then the combination is fitted ("weighted", "stack") or not ("mean").

A fitted combination is never scored on the images it was fitted on: the validation figures
of "weighted" and "stack" are out of fold (k-fold cross-validation on the validation set),
and the weights kept are fitted on all of it. The report says so, and sets the ensemble
against every member scored on the same images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transferlab import openvino_rt
from transferlab.card import ModelCard
from transferlab.classifiers.ensemble_fit import (
    METHODS,
    Combination,
    combine,
    cross_validated,
    fit_combination,
)
from transferlab.data.folder import Sample, scan_folder
from transferlab.data.transforms import normalise
from transferlab.errors import TransferlabError
from transferlab.features.extract import ENGINES, default_engine, default_workers
from transferlab.finetune.data import load_images
from transferlab.inference.ensemble_network import EnsembleNetwork, load_ensemble
from transferlab.inference.member_scoring import check_engine, score_members
from transferlab.options import check_choice, check_file, check_folder, tta_mode
from transferlab.pipelines.ensemble_members import Members, copy_members, drop_members, open_members
from transferlab.pipelines.evaluation import SplitPredictions
from transferlab.pipelines.tail import RunEnd, RunResult, Timer, finish_run
from transferlab.report.baseline import check_baseline_classes, load_baseline
from transferlab.report.ensemble_report import members_html
from transferlab.report.metrics import classification_metrics
from transferlab.runs import OpenRun, RunDir, check_out_folder, read_json_object

# Images per scoring batch: each compiled member graph holds buffers for a whole batch of activations
# (with flip, twice that); 16 kept an elpv ensemble of three probes at 260 px near 2 GB, not the 5.7 of 64.
SCORE_BATCH = 16


@dataclass
class EnsembleConfig:
    runs: list[str]
    out: str
    method: str = "mean"  # one of classifiers.ensemble_fit.METHODS
    test: str | None = None
    baseline: str | None = None
    baseline_partial: bool = False
    folds: int = 5  # cross-validation folds on the validation set for a fitted method
    tta: str | None = None  # every member's test-time augmentation (None: each member's own)
    seed: int = 0
    # What scores the members: torch, openvino (fp32: the same figures, 2.6-3x faster) or auto.
    engine: str = field(default_factory=default_engine)
    workers: int = field(default_factory=default_workers)
    progress: bool = True
    error_grid: int = 12


def run_ensemble(config: EnsembleConfig) -> RunResult:
    check_choice("--method", config.method, METHODS)
    check_choice("--engine", config.engine, tuple(ENGINES))
    if config.engine == "openvino" and not openvino_rt.available():
        raise TransferlabError("--engine openvino: OpenVINO is not installed (pip install openvino); "
                               "use --engine torch or auto")
    config.tta = None if config.tta is None else tta_mode(config.tta)
    check_folder(config.test, "test folder")
    check_file(config.baseline, "baseline CSV")
    members = open_members(config.runs)  # every member checked against the others, before any writing
    check_out_folder(config.out, reads=[*config.runs, config.test, members.root])
    baseline = load_baseline(config.baseline) if config.baseline else None
    if baseline is not None:
        check_baseline_classes(baseline, members.classes, config.baseline, config.baseline_partial)
    test = scan_folder(config.test, classes=members.classes) if config.test else None
    run = RunDir(config.out)
    run.start("ensemble")
    with run.recording("ensemble"):
        return _ensemble(config, run, members, test, baseline)


def _ensemble(config: EnsembleConfig, run: RunDir, members: Members, test, baseline) -> RunResult:
    timer = Timer()
    copy_members(members, run.model_dir, config.tta)
    card = _card(members)
    # The card goes in now so the network loads from the copies; finish_run writes it again with the fit.
    card.write(run.model_dir)
    # Opened as it stands (the folder says "running" until the end): what is scored is the copies.
    network = load_ensemble(OpenRun(run.path, card)).network
    check_engine(network, list(members.names), config.engine)
    timer.lap("load")
    groups = {"val": members.val, **({"test": test.samples} if test is not None else {})}
    runs = [str(r.path) for r in members.runs]
    scored = {name: _score(network, samples, card, config, runs) for name, samples in groups.items()}
    timer.lap("score")
    val = scored["val"]
    combination = fit_combination(config.method, val.member_probs, val.labels, config.seed)
    val_probs, folds = cross_validated(config.method, val.member_probs, val.labels, config.folds, config.seed)
    timer.lap("fit")
    splits = [SplitPredictions("val", val.paths, val.labels, val_probs)]
    if "test" in scored:
        t = scored["test"]
        splits.append(SplitPredictions("test", t.paths, t.labels, combine(combination, t.member_probs)))
    table = _member_table(members, scored, splits, combination, folds)
    card = _card(members, combination)
    # A member of weight 0 changes no prediction: predict, serve and export need not load it.
    drop_members(run.model_dir, [n for n in members.names if n not in card.members])
    end = RunEnd(
        kind="ensemble", title=f"ensemble ({config.method}) of {len(card.members)}"
        + (f" (of {len(members.runs)} runs given)" if len(card.members) < len(members.runs) else ""),
        report_title=f"transferlab ensemble: {members.root.name}", classes=members.classes, splits=splits,
        skipped=[[str(p), r] for s in scored.values() for p, r in s.failures] + (
            [[str(s.path), s.reason] for s in test.skipped] if test is not None else []),
        notes=[], summary=_summary(config, members, scored, card, folds), config=_config(config, members, card),
        card=card, save_weights=lambda model_dir: None, seed=config.seed,
        cam_unavailable="an ensemble: `transferlab explain` shows each member's maps",
        baseline=baseline, baseline_name=config.baseline or "", extra_metrics={"ensemble": table},
        error_grid=config.error_grid, embed="", sections=[("Members and ensemble", members_html(table))],
    )
    return finish_run(run, end, timer)


@dataclass
class Scored:
    paths: list[Path]
    labels: np.ndarray
    member_probs: np.ndarray  # (M, n, C)
    failures: list[tuple[Path, str]]
    engine: str  # what scored the members (inference.member_scoring.score_members)


def _score(network: EnsembleNetwork, samples: list[Sample], card: ModelCard, config: EnsembleConfig,
           runs: list[str]) -> Scored:
    """Every member's probabilities for these images, through the ensemble's own member branches
    (`runs`: the members' own folders, for error messages)."""
    store = load_images(samples, card.resolution, card.interpolation, config.workers, config.progress,
                        desc="decoding")

    def batches():
        for start in range(0, len(store.images), SCORE_BATCH):
            yield normalise(store.images[start:start + SCORE_BATCH], card.mean, card.std)

    outputs, engine = score_members(network, list(card.members), runs, config.engine, batches)
    n_classes = len(card.classes)
    probs = np.stack(outputs) if outputs else np.zeros((len(card.members), 0, n_classes))
    # Rows renormalised in float64: float32 softmax sums drift by ~1e-7, the fit checks 1e-3.
    probs = probs / probs.sum(axis=2, keepdims=True)
    return Scored(list(store.paths), store.labels.numpy(), probs, list(store.failures), engine)


def _card(members: Members, combination: Combination | None = None) -> ModelCard:
    """The ensemble's card: with a fitted `combination`, over the members it uses only. The input
    resolution stays the largest member's, used or not: the figures were measured at it."""
    cards = [run.card for run in members.runs]
    largest = max(cards, key=lambda c: c.resolution)
    combination = combination or Combination("mean", np.full(len(cards), 1 / len(cards)))
    used = combination.used()
    backbones = ", ".join(dict.fromkeys(cards[i].backbone for i in used))
    return ModelCard(kind="ensemble", classes=list(members.classes), backbone=f"ensemble of {backbones}",
                     resolution=largest.resolution, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                     interpolation=largest.interpolation, weights_source="members", precision="fp32",
                     inference_precision="fp32", members=[members.names[i] for i in used],
                     combination=combination.of_used().to_dict())


def _accuracy(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    metrics = classification_metrics(labels, probs.argmax(axis=1), classes)
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}


def _unrounded(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(np.mean(probs.argmax(axis=1) == labels)) if len(labels) else 0.0


def _member_table(members: Members, scored: dict, splits: list[SplitPredictions], combination: Combination,
                  folds: int) -> dict:
    """Each member on the ensemble's images, its own run's figure, and the ensemble against the best."""
    rows = []
    for i, (run, name) in enumerate(zip(members.runs, members.names)):
        own = read_json_object(run.path / "metrics.json", "run metrics").get("val", {})
        row = {"member": name, "run": str(run.path), "kind": run.card.kind, "backbone": run.card.backbone,
               "resolution": run.card.resolution, "weight": float(combination.weights[i]),
               "own_val_accuracy": own.get("accuracy") if isinstance(own, dict) else None}
        for split in scored:
            row[split] = _accuracy(scored[split].labels, scored[split].member_probs[i], members.classes)
        rows.append(row)
    ensemble = {s.name: _accuracy(s.labels, s.probabilities, members.classes) for s in splits}
    best_index = max(range(len(rows)), key=lambda i: rows[i]["val"]["accuracy"])
    best = rows[best_index]
    # From the unrounded accuracies: 0.7188 - 0.7812 (the 4-digit figures of 23/32 and 25/32) is
    # 6.24 points, where the true difference of 2 images in 32 is 6.25.
    val = scored["val"]
    gain = _unrounded(val.labels, splits[0].probabilities) - _unrounded(val.labels, val.member_probs[best_index])
    return {"method": combination.method, "folds": folds, "members": rows, "ensemble": ensemble,
            "best_member": best["member"],
            "gain_over_best_member": round(gain, 6),
            "val_is": "out-of-fold" if folds else "the plain mean (nothing fitted)"}


def _summary(config: EnsembleConfig, members: Members, scored: dict, card: ModelCard, folds: int) -> dict:
    fitted = (f"{config.method}: fitted on the validation predictions; validation figures are {folds}-fold "
              "cross-validated on the validation set (never scored on the images fitted on)" if folds else
              "mean of the members' probabilities (nothing fitted)")
    return {
        "data": str(members.root), **({"test": str(config.test)} if config.test else {}),
        "members": "; ".join(f"{n}: {r.path} ({r.card.kind}, {r.card.backbone}, {r.card.resolution}px)"
                             for n, r in zip(members.names, members.runs)),
        "combination": fitted,
        **({"kept in the model": ", ".join(card.members) + " (the others have weight 0, so they change no prediction)"}
           if len(card.members) < len(members.names) else {}),
        "scored with": f"{scored['val'].engine} (each member's branch of the ensemble's network)",
        **({"test-time augmentation": f"{config.tta} on every member"} if config.tta else {}),
        "images": {name: len(s.labels) for name, s in scored.items()},
        "classes": len(members.classes),
    }


def _config(config: EnsembleConfig, members: Members, card: ModelCard) -> dict:
    """config.yaml: what `compare` reads of any run (data, backbone), then what made this one."""
    return {"data": str(members.root), "backbone": card.backbone,
            "ensemble": {"runs": [str(r.path) for r in members.runs], "method": config.method,
                         "folds": config.folds, "seed": config.seed, "test": config.test, "tta": config.tta,
                         "engine": config.engine,
                         "baseline": config.baseline}}
