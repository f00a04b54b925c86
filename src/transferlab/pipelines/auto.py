"""`run_auto`: the best model this CPU can find for an image folder within a wall-clock budget.

The plan, each step only when its estimate (from throughput measured here, see
`auto_plan`) fits what is left of the budget:

1. rank: extract features of a subsample with every candidate backbone (timing this
   machine) and order the backbones by LogME;
2. probe the backbones in that order;
3. fine-tune the best one or two probed backbones with the fast cached-prefix recipe, and the
   best one again at a higher resolution (RESOLUTION_STEP) between the two; the second at
   whichever resolution did better;
4. test-time augmentation: flip on the best single run, kept when validation accuracy rises;
5. ensemble (greedy selection, cross-validated on validation) of every finished run, its members
   without flip, kept when its out-of-fold validation accuracy beats the best single run.

Every step is an ordinary run folder under OUT/runs/; OUT/plan.md logs each decision with
its reason and figure, and what each step contributed; OUT/auto.json holds the state, and
OUT/result.json names the chosen run, relative to OUT (a run folder predict, serve and export accept).
Re-running the same command after a kill keeps finished runs, resumes a killed fine-tune,
and counts the time already spent against the budget.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from transferlab.atomic import write_json
from transferlab.errors import TransferlabError
from transferlab.backbones import native_size
from transferlab.features.extract import default_workers
from transferlab.features.resolution import round_to_multiple
from transferlab.finetune.recipe import Recipe, recipe_from_saved
from transferlab.options import MAX_RESOLUTION, check_file, check_folder
from transferlab.pipelines.auto_plan import Budget, PlanLog, Throughput, seconds_text
from transferlab.pipelines.auto_steps import (
    ENSEMBLE_FEWEST,
    THROUGHPUT_FILE,
    AutoContext,
    StepResult,
    ensemble_step,
    finetune_step,
    probe_speeds,
    probe_step,
    rank_step,
    tta_step,
)
from transferlab.report.baseline import load_baseline
from transferlab.runs import check_apart, read_json_object

PACKAGED = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
STATE_FILE = "auto.json"
SAVE_EVERY_S = 5.0  # how often the time spent is written to auto.json while auto runs
RESOLUTION_STEP = 1.25  # the higher-resolution fine-tune: 128 -> 160 px, 224 -> 288 px
# The fast recipe (recipes/heritage-fast.yaml) without its backbone (each fine-tune sets that),
# with 12 epochs of the top group instead of 6: those epochs run on cached activations (about
# 9 s each for heritage at 160 px), and heritage lite1 at 160 px reached 0.9684 validation
# accuracy against 0.9640 with 6, for 52 s more. Unfreezing blocks.5 as well cost 4-8 min more
# and did not help (0.9654 at 128 px, 0.9635 at 160).
FAST_RECIPE = {
    "precision": "auto", "augment": "light", "augment_draws": 4, "label_smoothing": 0.1, "batch_size": 64,
    "head": [{"type": "dropout", "p": 0.2}],
    "stages": [{"train": "head", "epochs": 2, "lr": 0.003, "patience": 2},
               {"train": "blocks.6,neck,head", "epochs": 12, "lr": 0.001, "head_lr": 0.001, "patience": 3}],
}


@dataclass
class AutoConfig:
    data: str
    out: str
    budget_s: float = 20 * 60
    test: str | None = None
    baseline: str | None = None
    baseline_partial: bool = False
    backbones: tuple[str, ...] = PACKAGED
    recipe: dict = field(default_factory=lambda: dict(FAST_RECIPE))  # fine-tune recipe, less its backbone
    max_finetunes: int = 2
    rank_per_class: int = 20  # images per class the ranking step extracts (and times)
    seed: int = 0
    workers: int = field(default_factory=default_workers)
    progress: bool = True
    on_event: Callable[[str], None] | None = None


@dataclass
class AutoResult:
    out: Path
    chosen: Path  # the run folder to use
    val_accuracy: float
    plan: Path
    steps: list[StepResult]


def run_auto(config: AutoConfig) -> AutoResult:
    check_folder(config.data)
    check_folder(config.test, "test folder")
    check_file(config.baseline, "baseline CSV")
    recipe_for(config, config.backbones[0])  # a bad recipe is one line before any work
    if config.baseline:
        load_baseline(config.baseline)  # a malformed CSV too (its classes are checked by the first probe)
    out = Path(config.out)
    check_apart(out, (config.data, config.test))
    state = _open_state(out, config)
    budget = Budget(config.budget_s, spent=float(state.get("spent_s", 0.0)))
    log = PlanLog(out / "plan.md", f"transferlab auto: {Path(config.data).name}, budget "
                  f"{seconds_text(config.budget_s)}", echo=config.on_event)
    if state.get("spent_s"):
        log.add("resume", "note", "continuing a stopped auto: finished runs are kept",
                f"{seconds_text(state['spent_s'])} already spent")
    context = AutoContext(config=config, out=out, budget=budget, log=log,
                          recipe_for=lambda b, r=None: recipe_for(config, b, r))
    with SpentClock(out / STATE_FILE, state, budget):
        return _plan(context, state)


class SpentClock:
    """Writes the time spent into auto.json every SAVE_EVERY_S seconds and at the end: a kill -9,
    a SIGTERM (timeout, docker stop) or the OOM killer ends the process without a `finally`, and
    the same command must still count the time already spent."""

    def __init__(self, path: Path, state: dict, budget: Budget):
        self.path, self.state, self.budget = path, state, budget
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="auto-spent-clock", daemon=True)

    def _save(self) -> None:
        write_json(self.path, {**self.state, "spent_s": round(self.budget.used(), 3)})

    def _loop(self) -> None:
        while not self.stop.wait(SAVE_EVERY_S):
            self._save()

    def __enter__(self) -> SpentClock:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.state["spent_s"] = round(self.budget.used(), 3)
        self._save()


def _plan(context: AutoContext, state: dict) -> AutoResult:
    config, budget, log = context.config, context.budget, context.log
    throughput, order = rank_step(context)
    steps: list[StepResult] = []
    for backbone in order:
        step = probe_step(context, throughput, backbone)
        if step is not None:
            steps.append(step)
    if not steps:
        raise TransferlabError(f"budget {seconds_text(config.budget_s)}: not even one probe fits on this machine "
                               f"(one is estimated at {seconds_text(throughput.probe(order[0]))}); give a longer "
                               "--budget")
    _note_skipped(log, steps[0].run)
    probes = sorted(steps, key=lambda s: s.val_accuracy, reverse=True)
    log.ablation.append(["probe only (best of the probes)", f"{probes[0].val_accuracy:.4f}",
                         f"{probes[0].val_macro_f1:.4f}", probes[0].label])
    throughput = probe_speeds(context, throughput, probes)
    finetunes = _finetunes(context, throughput, probes)
    steps += finetunes
    best = max(steps, key=lambda s: s.val_accuracy)
    _ablation_finetunes(log, finetunes)
    tta = tta_step(context, throughput, best)
    ensemble = ensemble_step(context, throughput, steps, best, tta)
    chosen = ensemble or (tta if tta is not None and tta.val_accuracy > best.val_accuracy else best)
    # Relative to OUT: the folder can be moved or copied whole and still names its model.
    result = {"run": chosen.run.relative_to(context.out).as_posix(), "label": chosen.label,
              "val_accuracy": chosen.val_accuracy, "tta": chosen.tta, "seconds": round(budget.used(), 1),
              "budget_s": config.budget_s}
    write_json(context.out / "result.json", result)
    log.add("result", "note", f"the model to use is {chosen.run.resolve()}" + (f" with --tta {chosen.tta}" if
                                                                      chosen.tta != "none" else ""),
            f"val accuracy {chosen.val_accuracy:.4f}; {seconds_text(budget.used())} of "
            f"{seconds_text(config.budget_s)}")
    log.write()
    return AutoResult(context.out, chosen.run, chosen.val_accuracy, log.path, steps)


def _note_skipped(log: PlanLog, run: Path) -> None:
    """Files every step leaves out (unreadable, not images): said once, where the user reads the plan."""
    path = run / "skipped.csv"
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = sum(1 for _ in csv.reader(handle)) - 1
    except OSError:
        return
    if rows > 0:
        log.add("data", "note", f"{rows} file(s) left out of every step (unreadable or not images)",
                f"listed in {path}")


def _ablation_finetunes(log: PlanLog, finetunes: list[StepResult]) -> None:
    plain = [f for f in finetunes if f.resolution is None]
    if plain:
        top = max(plain, key=lambda s: s.val_accuracy)
        log.ablation.append(["+ fine-tune", f"{top.val_accuracy:.4f}", f"{top.val_macro_f1:.4f}", top.label])
    pairs = [(f, b) for f in finetunes if f.resolution is not None for b in plain if b.backbone == f.backbone]
    if pairs:
        step, base = pairs[0]
        verdict = "better" if step.val_accuracy > base.val_accuracy else "not better"
        log.ablation.append(["+ resolution", f"{step.val_accuracy:.4f}", f"{step.val_macro_f1:.4f}",
                             f"{step.label}: {verdict} than {base.label} ({base.val_accuracy:.4f}); "
                             "a member for the ensemble either way"])
    else:
        log.ablation.append(["+ resolution", "-", "-", "not run: see the decisions"])


def _finetunes(context: AutoContext, throughput: Throughput, probes: list[StepResult]) -> list[StepResult]:
    """The best probed backbone at the probe's resolution, then again at the higher resolution
    (RESOLUTION_STEP), then the next backbone at whichever of the two did better (falling back to
    the probe's when the higher does not fit); each only while it fits with room kept for the
    smallest ensemble it would join. A step that does not fit does not end the list: a smaller
    backbone's may still fit.

    The second backbone follows the first's resolution: on heritage (64 px images, 128 px from
    their size) lite1 reached 0.9684 at 160 px against 0.9590 at 128, and lite2 0.9640 at 160
    against 0.9585 at 128 (BENCHMARKS.md: finetune_heritage-resolution, auto_heritage-20m-order)."""
    done: list[StepResult] = []
    prefer_higher = False
    for probe in probes[: context.config.max_finetunes]:
        first = not done
        step = _finetune(context, throughput, probe.backbone, probes, done, higher=prefer_higher, fallback=True)
        if step is None:
            continue
        done.append(step)
        if first:
            higher = _finetune(context, throughput, probe.backbone, probes, done, higher=True, fallback=False)
            done += [higher] if higher is not None else []
            prefer_higher = higher is not None and higher.val_accuracy > step.val_accuracy
    return done


def _finetune(context: AutoContext, throughput: Throughput, backbone: str, probes: list[StepResult],
              done: list[StepResult], higher: bool, fallback: bool) -> StepResult | None:
    """`backbone` fine-tuned at the higher resolution (`higher`; its estimate scaled by the pixel
    ratio), then, with `fallback`, at the probe's: the first of these that fits."""
    base = context.base_resolution(backbone)
    options: list[tuple[int | None, float]] = []  # (resolution, pixel ratio); None: the probe's
    if higher:
        target = higher_resolution(base, native_size(backbone), context.short_side)
        if target is None:
            context.log.add(f"resolution for {backbone}", "skip", f"{base} px is already as large as the "
                            "backbone's native size and the images' own")
        else:
            options.append((target, (target / base) ** 2))
    if fallback:
        options.append((None, 1.0))
    for resolution, cost in options:
        # The smallest ensemble this run would join: itself, the fine-tunes before it, the best probes.
        members = ([(backbone, cost)] + [(s.backbone, s.cost) for s in done]
                   + [(p.backbone, p.cost) for p in probes])[:ENSEMBLE_FEWEST]
        reserve = throughput.ensemble([b for b, _ in members], [c for _, c in members])
        step = finetune_step(context, throughput, backbone, reserve, resolution=resolution, cost_factor=cost)
        if step is not None:
            return step
    return None


def higher_resolution(base: int, native: int, short_side: int | None) -> int | None:
    """RESOLUTION_STEP x `base` in multiples of 32, never above both the backbone's native size and
    the images' own (upsampling small images towards the native size helps; beyond both, nothing
    new is seen); None when that is no larger than `base`."""
    ceiling = max(native, short_side or 0)
    target = min(round_to_multiple(base * RESOLUTION_STEP), ceiling // 32 * 32, MAX_RESOLUTION)
    return target if target > base else None


def recipe_for(config: AutoConfig, backbone: str, resolution: int | None = None) -> Recipe:
    data = {**config.recipe, "backbone": backbone, "seed": config.seed}
    if resolution is not None:
        data["resolution"] = resolution
    recipe = recipe_from_saved(data, "auto recipe")
    recipe.validate("auto recipe")
    return recipe


def _fingerprint(config: AutoConfig) -> str:
    keys = {"data": str(Path(config.data).resolve()), "test": config.test, "baseline": config.baseline,
            "backbones": list(config.backbones), "recipe": config.recipe, "seed": config.seed,
            "budget_s": config.budget_s, "max_finetunes": config.max_finetunes}
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_spent(spent, path: Path) -> None:
    """The seconds an earlier invocation used: the budget counts them, so a number >= 0 that a float holds."""
    ok = isinstance(spent, (int, float)) and not isinstance(spent, bool)
    try:
        ok = ok and math.isfinite(spent) and spent >= 0
    except OverflowError:
        ok = False
    if not ok:
        raise TransferlabError(f"{path}: field 'spent_s' must be a number of seconds >= 0; give a new --out")


def _open_state(out: Path, config: AutoConfig) -> dict:
    """auto.json of an earlier run of the same command, or a fresh state; anything else is refused."""
    fingerprint = _fingerprint(config)
    path = out / STATE_FILE
    if out.is_symlink():  # resumed or new: writing through a link writes wherever it points
        raise TransferlabError(f"{out}: is a link; give the real folder as --out")
    if path.is_file():
        state = read_json_object(path, "auto state")
        if not (isinstance(state.get("fingerprint"), str) and isinstance(state.get("config"), dict)):
            raise TransferlabError(f"{path}: is not the state of a `transferlab auto` (no fingerprint and config); "
                                   "refusing to write into its folder: choose a new --out")
        if state.get("fingerprint") != fingerprint and not _started_a_run(out):
            return _fresh_state(out, config, fingerprint)  # e.g. a one-class folder, given again fixed
        if state.get("fingerprint") != fingerprint:
            raise TransferlabError(f"{out}: holds an auto run of another command (data, budget or settings); "
                                   "give a new --out")
        _check_spent(state.get("spent_s", 0.0), path)
        return state
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TransferlabError(f"{out}: exists and is not an auto folder; refusing to write into it: choose a new "
                               "--out")
    return _fresh_state(out, config, fingerprint)


def _started_a_run(out: Path) -> bool:
    """Whether an earlier auto in `out` got as far as a run folder (which a different command must
    not reuse); before that, it holds only the ranking's cache and notes, which any command may."""
    runs = out / "runs"
    return runs.is_symlink() or (runs.is_dir() and any(runs.iterdir()))


def _fresh_state(out: Path, config: AutoConfig, fingerprint: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    for stale in (THROUGHPUT_FILE, "tta.json"):  # the ranking of an earlier command's backbones
        if (out / stale).is_file() and not (out / stale).is_symlink():
            (out / stale).unlink()
    state = {"fingerprint": fingerprint, "config": dataclasses.asdict(config) | {"on_event": None},
             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "spent_s": 0.0}
    write_json(out / STATE_FILE, state)
    return state
