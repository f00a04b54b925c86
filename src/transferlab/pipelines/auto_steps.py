"""The steps `run_auto` plans: rank, probe, fine-tune, test-time augmentation, ensemble.

Each step decides whether it fits the budget (logging why, with the estimate and what is
left), reuses a finished run folder of an earlier invocation, or runs the ordinary pipeline
into OUT/runs/<step>/ and reports what it measured.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transferlab import openvino_rt
from transferlab.atomic import write_json
from transferlab.data.layout import prepare_data
from transferlab.backbones import native_size
from transferlab.features.extract import default_engine
from transferlab.features.resolution import resolution_for, typical_short_side
from transferlab.finetune.recipe import Recipe
from transferlab.inference.predict import load_predictor
from transferlab.insight.transferability import rank_backbones
from transferlab.pipelines.auto_plan import (
    ENSEMBLE_COMPILED_PASSES,
    ENSEMBLE_VAL_PASSES,
    Budget,
    PlanLog,
    Throughput,
    seconds_text,
)
from transferlab.pipelines.ensemble import EnsembleConfig, run_ensemble
from transferlab.pipelines.finetune import FinetuneConfig, run_finetune
from transferlab.pipelines.finetune_state import STATE_FILE as FINETUNE_STATE
from transferlab.pipelines.probe import ProbeConfig, run_probe
from transferlab.report.metrics import classification_metrics
from transferlab.runs import read_json_object, read_predictions, run_status
from transferlab.safe_yaml import read_yaml_file

THROUGHPUT_FILE = "throughput.json"
# Greedy selection aims at accuracy itself; likelihood weights lean on the best-calibrated
# members instead (measured on heritage: benchmarks/ensemble_heritage.py).
ENSEMBLE_METHOD = "select"


@dataclass
class AutoContext:
    config: object  # pipelines.auto.AutoConfig
    out: Path
    budget: Budget
    log: PlanLog
    recipe_for: Callable[[str, int | None], Recipe]  # (backbone, resolution or None) -> recipe
    short_side: int | None = None  # median shorter side of the training images (set by rank_step)

    def run_dir(self, name: str) -> Path:
        return self.out / "runs" / name

    @property
    def cache(self) -> str:
        return str(self.out / "cache")

    def base_resolution(self, backbone: str) -> int:
        """A fine-tune's resolution unless told otherwise: the recipe's, else chosen from the images
        as the probe and the fine-tune choose it (needs `short_side`, set by rank_step)."""
        recipe = self.recipe_for(backbone, None)
        if recipe.resolution:
            return int(recipe.resolution)
        return resolution_for(self.short_side, native_size(backbone))[0]


@dataclass
class StepResult:
    label: str  # "probe tf_efficientnet_lite1"
    kind: str
    backbone: str
    run: Path
    val_accuracy: float
    val_macro_f1: float
    seconds: float
    tta: str = "none"
    resolution: int | None = None  # set for a fine-tune at the higher resolution only
    cost: float = 1.0  # pixel ratio to the resolution the ranking timed (the higher resolution's)
    extract_seconds: float = 0.0  # the run's feature extraction (metrics.json timings; probes only)


def _short(backbone: str) -> str:
    return backbone.replace("tf_efficientnet_", "")


def _finished(kind: str, backbone: str, run: Path) -> StepResult:
    metrics = read_json_object(run / "metrics.json", "run metrics")
    val, timings = metrics.get("val", {}), metrics.get("timings", {})
    extract = timings.get("extract", 0.0)
    return StepResult(f"{kind} {backbone}", kind, backbone, run, float(val["accuracy"]), float(val["macro_f1"]),
                      float(timings.get("total", 0.0)),
                      extract_seconds=float(extract) if isinstance(extract, (int, float)) else 0.0)


def rank_step(context: AutoContext) -> tuple[Throughput, list[str]]:
    """Time feature extraction of a subsample with every backbone; order them by LogME."""
    config, log = context.config, context.log
    saved = context.out / THROUGHPUT_FILE
    data = prepare_data(config.data, config.test, 0.2, config.seed, None)  # one line for a bad folder
    context.short_side = typical_short_side([sample.path for sample in data.split.train])
    n_val = len(data.split.val)
    n_all = len(data.split.train) + n_val
    if saved.is_file():  # a resumed auto: the first measurement stands (its features are cached now)
        record = read_json_object(saved, "auto throughput")
        log.add("rank", "reuse", "measured by the earlier invocation", ", ".join(record["order"]))
        return Throughput(record["seconds_per_image"], n_all, n_val, _scoring_passes()), list(record["order"])
    started = time.perf_counter()
    # Timed in PyTorch: fine-tunes run there, and every cost is counted in its passes; probes
    # extract with the faster engine, so their estimates err on the safe side, and the ensemble
    # scores compiled by OpenVINO where it can (fewer passes: _scoring_passes).
    result = rank_backbones(config.data, list(config.backbones), cache_dir=context.cache,
                            per_class=config.rank_per_class, seed=config.seed, progress=config.progress,
                            workers=config.workers, runs_root=str(context.out / "no-runs"), engine="torch")
    per_image = {r.backbone: max(r.extract_seconds, 1e-3) / max(r.images, 1) for r in result.rows}
    order = [r.backbone for r in result.ranked()]
    write_json(saved, {"seconds_per_image": per_image, "order": order,
                       "logme": {r.backbone: r.logme for r in result.rows}})
    figures = "; ".join(f"{r.backbone} LogME {r.logme:.3f}, {1 / per_image[r.backbone]:.0f} img/s at "
                        f"{r.resolution}px" for r in result.ranked())
    log.add("rank", "run", f"{len(result.rows)} backbones timed and ranked by LogME on {result.rows[0].images} "
            f"training images ({seconds_text(time.perf_counter() - started)}); {n_all} images in all", figures)
    return Throughput(per_image, n_all, n_val, _scoring_passes()), order


def _scoring_passes() -> float:
    """Passes per ensemble member and view: the ensemble scores in OpenVINO (fp32) where it can."""
    compiled = default_engine() != "torch" and openvino_rt.available()
    return ENSEMBLE_COMPILED_PASSES if compiled else ENSEMBLE_VAL_PASSES


def probe_speeds(context: AutoContext, throughput: Throughput, probes: list[StepResult]) -> Throughput:
    """`throughput` with the backbones' relative speeds from the probes' full extractions, which
    later estimates (fine-tunes, ensemble scoring) then use."""
    seconds = {p.backbone: p.extract_seconds for p in probes if p.extract_seconds > 0}
    adjusted = throughput.relative_to(seconds)
    if adjusted is not throughput:
        context.log.add("speeds", "note", "the backbones' relative speeds from the probes' extraction of every "
                        "image (the ranking timed a few batches each)",
                        ", ".join(f"{b} {1 / adjusted.seconds_per_image[b]:.0f} img/s (ranking "
                                  f"{1 / throughput.seconds_per_image[b]:.0f})" for b in seconds))
    return adjusted


def probe_step(context: AutoContext, throughput: Throughput, backbone: str) -> StepResult | None:
    config, budget, log = context.config, context.budget, context.log
    run = context.run_dir(f"probe-{_short(backbone)}")
    label = f"probe {backbone}"
    if run_status(run) == "complete":
        step = _finished("probe", backbone, run)
        log.add(label, "reuse", "finished by the earlier invocation", f"val accuracy {step.val_accuracy:.4f}")
        return step
    estimate = throughput.probe(backbone)
    if not budget.fits("probe", estimate):
        log.add(label, "skip", "does not fit", budget.shortfall("probe", estimate))
        return None
    started = time.perf_counter()
    run_probe(ProbeConfig(data=config.data, out=str(run), test=config.test, backbone=backbone, seed=config.seed,
                          baseline=config.baseline, baseline_partial=config.baseline_partial,
                          workers=config.workers, cache_dir=context.cache, embed="pca", progress=config.progress))
    measured = time.perf_counter() - started
    budget.learn("probe", estimate, measured)
    step = _finished("probe", backbone, run)
    log.add(label, "run", f"estimate {seconds_text(estimate)}, took {seconds_text(measured)}",
            f"val accuracy {step.val_accuracy:.4f}, macro F1 {step.val_macro_f1:.4f}")
    return step


def finetune_step(context: AutoContext, throughput: Throughput, backbone: str, reserve: float,
                  resolution: int | None = None, cost_factor: float = 1.0) -> StepResult | None:
    """The fast recipe on `backbone`, at `resolution` (None: chosen from the images); `cost_factor`
    scales the estimate (the pixel ratio of a higher resolution)."""
    config, budget, log = context.config, context.budget, context.log
    suffix = f"-{resolution}px" if resolution else ""
    run = context.run_dir(f"finetune-{_short(backbone)}{suffix}")
    label = f"fine-tune {backbone}" + (f" at {resolution} px" if resolution else "")
    status = run_status(run)
    if status == "complete":
        step = _finished("finetune", backbone, run)
        step.label, step.resolution, step.cost = label, resolution, cost_factor
        log.add(label, "reuse", "finished by the earlier invocation", f"val accuracy {step.val_accuracy:.4f}")
        return step
    estimate = throughput.finetune(backbone) * cost_factor
    if not budget.fits("finetune", estimate, reserve):
        log.add(label, "skip", "does not fit with room kept for the ensemble",
                budget.shortfall("finetune", estimate, reserve))
        return None
    resume = status is not None and (run / FINETUNE_STATE).is_file()
    started = time.perf_counter()
    run_finetune(FinetuneConfig(data=config.data, out=str(run), recipe=context.recipe_for(backbone, resolution),
                                test=config.test, baseline=config.baseline, baseline_partial=config.baseline_partial,
                                workers=config.workers, embed="pca", progress=config.progress), resume=resume)
    measured = time.perf_counter() - started
    budget.learn("finetune", estimate, measured)
    step = _finished("finetune", backbone, run)
    step.label, step.resolution, step.cost = label, resolution, cost_factor
    log.add(label, "run", ("resumed a killed run; " if resume else "") + f"fast cached-prefix recipe, estimate "
            f"{seconds_text(estimate)}, took {seconds_text(measured)}",
            f"val accuracy {step.val_accuracy:.4f}, macro F1 {step.val_macro_f1:.4f}")
    return step


def _val_rows(run: Path) -> tuple[list[str], list[str]]:
    rows = read_predictions(run, "val")
    return [r.path for r in rows], [r.true for r in rows]


def tta_step(context: AutoContext, throughput: Throughput, best: StepResult) -> StepResult | None:
    """Flip test-time augmentation on the best single run, scored on its validation images."""
    budget, log, label = context.budget, context.log, f"test-time augmentation (flip) on {best.label}"
    saved = context.out / "tta.json"
    estimate = throughput.views(best.backbone, 2, best.cost)
    if saved.is_file():
        record = read_json_object(saved, "auto tta")
    elif not budget.fits("ensemble", estimate):
        log.add(label, "skip", "does not fit", budget.shortfall("ensemble", estimate))
        return None
    else:
        paths, truth = _val_rows(best.run)
        predictor = load_predictor(best.run, tta="flip")
        classes = list(predictor.classes)
        predicted = [r.top[0][0] if r.top else "" for r in predictor.predict_paths(paths, top_k=1, batch_size=64)]
        known = [i for i, p in enumerate(predicted) if p]
        metrics = classification_metrics([classes.index(truth[i]) for i in known],
                                         [classes.index(predicted[i]) for i in known], classes)
        record = {"run": str(best.run), "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
        write_json(saved, record)
    step = StepResult(best.label + " + flip", best.kind, best.backbone, best.run, float(record["accuracy"]),
                      float(record["macro_f1"]), best.seconds, tta="flip", cost=best.cost)
    better = step.val_accuracy > best.val_accuracy
    log.add(label, "adopt" if better else "reject", "validation accuracy " + ("rises" if better else "does not rise"),
            f"{best.val_accuracy:.4f} -> {step.val_accuracy:.4f}; chosen on the validation images it is scored on")
    log.ablation.append(["+ test-time augmentation (flip)", f"{step.val_accuracy:.4f}", f"{step.val_macro_f1:.4f}",
                         f"on {best.label}; " + ("kept" if better else "not kept")])
    return step


ENSEMBLE_FEWEST = 3  # the smallest ensemble tried when the whole one does not fit


def _ensemble_that_fits(throughput: Throughput, budget: Budget,
                        steps: list[StepResult]) -> tuple[list[StepResult], float] | None:
    """(members, estimate) of the largest ensemble that fits: every run, else the best
    ENSEMBLE_FEWEST runs. Members are scored without flip: on heritage, flip on every member
    (adopted because it rose the best single run by one image) cost the ensemble 6-12 images
    of 2,026 out of fold (six runs: 0.9704 without, 0.9645 with; the two 160 px fine-tunes:
    0.9709 against 0.9674), and it doubles the scoring."""
    best_first = sorted(steps, key=lambda s: s.val_accuracy, reverse=True)
    options = [steps] + ([best_first[:ENSEMBLE_FEWEST]] if len(steps) > ENSEMBLE_FEWEST else [])
    for members in options:
        estimate = throughput.ensemble([s.backbone for s in members], [s.cost for s in members])
        if budget.fits("ensemble", estimate):
            return members, estimate
    return None


def ensemble_step(context: AutoContext, throughput: Throughput, steps: list[StepResult], best: StepResult,
                  tta: StepResult | None) -> StepResult | None:
    config, budget, log = context.config, context.budget, context.log
    if len(steps) < 2:
        log.add("ensemble", "skip", "one run only")
        return None
    run = context.run_dir("ensemble")
    single = tta if tta is not None and tta.val_accuracy > best.val_accuracy else best
    if run_status(run) != "complete":
        chosen = _ensemble_that_fits(throughput, budget, steps)
        if chosen is None:
            estimate = throughput.ensemble([s.backbone for s in steps], [s.cost for s in steps])
            log.add("ensemble", "skip", "does not fit, not even of the best few runs",
                    f"estimate {seconds_text(estimate * budget.scale('ensemble'))}, "
                    f"{seconds_text(budget.left())} left")
            return None
        steps, estimate = chosen
        started = time.perf_counter()
        run_ensemble(EnsembleConfig(runs=[str(s.run) for s in steps], out=str(run), method=ENSEMBLE_METHOD,
                                    test=config.test, baseline=config.baseline,
                                    baseline_partial=config.baseline_partial, seed=config.seed,
                                    tta=None, workers=config.workers, progress=config.progress))
        budget.learn("ensemble", estimate, time.perf_counter() - started)
    step = _finished("ensemble", "ensemble", run)
    table = json.loads((run / "metrics.json").read_text(encoding="utf-8"))["ensemble"]
    weights = ", ".join(f"{Path(m['run']).name} {m['weight']:.2f}" for m in table["members"])
    # What the run holds: an ensemble finished by an earlier version may hold flip on every member,
    # and predicts with it as it is.
    saved = read_yaml_file(run / "config.yaml", "ensemble config")
    settings = saved.get("ensemble") if isinstance(saved, dict) else None
    members_flipped = isinstance(settings, dict) and settings.get("tta") == "flip"
    better = step.val_accuracy > single.val_accuracy
    log.add(f"ensemble ({ENSEMBLE_METHOD})", "adopt" if better else "reject",
            f"{len(table['members'])} runs" + (", flip on every member" if members_flipped else "")
            + "; out-of-fold validation accuracy "
            + ("beats" if better else "does not beat") + f" the best single run ({single.label})",
            f"{single.val_accuracy:.4f} -> {step.val_accuracy:.4f}; weights {weights}")
    log.ablation.append([f"+ ensemble ({ENSEMBLE_METHOD})", f"{step.val_accuracy:.4f}", f"{step.val_macro_f1:.4f}",
                         f"{table['folds']}-fold cross-validated on validation; " + ("kept" if better else "not kept")])
    return step if better else None
