"""`run_prune`: smaller networks by cutting a backbone after block group k, one fine-tune per cut.

For each k of `--keep`, the backbone is cut after group k (`backbones.cut`), a new head goes
on the cut, and the recipe fine-tunes it (the cached-prefix path applies: the frozen lower
units are computed once). Each cut is an ordinary fine-tune run folder, servable and
exportable, whose model card records the cut. Then each network is measured on this CPU
(parameters, multiply-adds, median latency at batch 1 and 64) and set against its
validation accuracy: `prune.csv`, `prune.html` with the curve, the Pareto front marked.

The prune folder holds `prune.json` (what was asked, the state and figures of every cut),
`prune.csv`, `prune.html`, `plots/` and `runs/keep-<group>/`. Re-running the same command
skips finished cuts and resumes a killed one; adding cuts to --keep adds points to the same
curve; another recipe, backbone or data in the same folder is refused.

A recipe's stages name groups of the whole backbone ("blocks.6,neck,head"); on a cut
network a stage that names a group the cut removed trains instead as many groups, counted
from the top of what is left: "blocks.6,neck,head" becomes "blocks.3,blocks.4,head" on a
cut after blocks.4. Stages that name only groups still there, and stage presets (which
resolve against the cut network's own groups), stay as they are.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from transferlab import __version__
from transferlab.atomic import write_json, write_text
from transferlab.backbones.cut import cut_points, find_cut, kept_groups, meta_model
from transferlab.backbones.shape import block_groups
from transferlab.errors import TransferlabError, one_line
from transferlab.features.extract import default_workers
from transferlab.finetune.groups import expand_group_spec
from transferlab.finetune.recipe import Recipe, recipe_from_saved
from transferlab.inference.run_network import load_run_network
from transferlab.insight.latency import BATCHES, measure_cost
from transferlab.options import check_file, check_folder
from transferlab.pipelines.finetune import FinetuneConfig, run_finetune
from transferlab.pipelines.finetune_state import STATE_FILE
from transferlab.pipelines.prune_source import fingerprint_source, save_source_weights, source_state
from transferlab.pipelines.settings import slug
from transferlab.report.prune_report import CSV_COLUMNS, csv_rows, latency_ms, render_prune_report
from transferlab.runs import check_apart, read_json_object, run_status

PRUNE_FILE = "prune.json"


@dataclass
class PruneConfig:
    data: str
    out: str
    recipe: Recipe
    keep: list[str]  # block groups to cut after, as given (checked by `plan_cuts`)
    test: str | None = None
    baseline: str | None = None
    baseline_partial: bool = False
    exclude: str | None = None
    from_run: str | None = None  # start every cut from this fine-tuned run's backbone weights
    workers: int = field(default_factory=default_workers)
    progress: bool = True
    command: str = ""  # the command line, shown in the report
    on_event: Callable[[str], None] | None = None  # one line per cut started / finished / skipped
    latency_batches: tuple[int, ...] = BATCHES
    latency_repeats: dict[int, int] | None = None  # batch -> timed passes (None: insight.latency's)


@dataclass
class PruneResult:
    out: Path
    rows: list[dict]  # one per finished cut, input side first
    report: Path
    failed: list[str]  # "<run folder>: <error>"
    skipped: int  # cuts finished by an earlier invocation


@dataclass(frozen=True)
class Cut:
    group: str  # cut after this block group
    recipe: Recipe  # the recipe with its stages adapted to the groups left
    folder: str  # runs/<folder>


def parse_keep(text: str | list[str] | None) -> list[str]:
    """`--keep blocks.3,blocks.5` -> ["blocks.3", "blocks.5"] (duplicates dropped)."""
    items = text.split(",") if isinstance(text, str) else list(text or [])
    groups = list(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))
    if not groups:
        raise TransferlabError("--keep: give one or more block groups to cut after, e.g. --keep blocks.3,blocks.5 "
                               "(`transferlab prune --list-groups` names them)")
    return groups


def plan_cuts(recipe: Recipe, keep: list[str]) -> list[Cut]:
    """One Cut per group of `keep`, input side first; every name and stage checked before any training."""
    model = meta_model(recipe.backbone)  # one line for a backbone timm does not know
    groups = list(block_groups(model))
    for group in keep:
        find_cut(model, group, "--keep")
    ordered = [g for g in groups if g in keep]
    return [Cut(g, recipe_for_cut(recipe, groups, kept_groups(groups, g)), f"keep-{slug(g)}") for g in ordered]


def recipe_for_cut(recipe: Recipe, groups: list[str], kept: list[str]) -> Recipe:
    """`recipe` with each listed stage that trains a removed group retargeted to the top groups left."""
    if isinstance(recipe.stages, str):
        return recipe  # a preset resolves against the cut network's own groups
    stages = []
    for index, stage in enumerate(recipe.stages):
        train = stage.get("train", "head")
        trained = expand_group_spec(train, groups + ["head"]) if isinstance(train, (str, list)) else []
        if trained and not set(trained) <= set(kept) | {"head"}:
            n_groups = len([g for g in trained if g != "head"])
            retargeted = kept[-n_groups:] if n_groups else []
            stage = {**stage, "train": ",".join(retargeted + (["head"] if "head" in trained else []))}
        stages.append(stage)
    data = dataclasses.asdict(recipe) | {"stages": stages}
    return recipe_from_saved(data, f"recipe for a cut after {kept[-1]}")


def run_prune(config: PruneConfig) -> PruneResult:
    check_folder(config.data)
    check_folder(config.test, "test folder")
    check_file(config.baseline, "baseline CSV")
    check_file(config.exclude, "exclude list")
    config.recipe.validate()
    cuts = plan_cuts(config.recipe, config.keep)  # every --keep name and stage, before any image is read
    out = Path(config.out)
    source = source_state(config.from_run) if config.from_run is not None else None  # a pruned run: refused here
    check_apart(out, (config.data, config.test, config.from_run))
    state = _open_prune(out, _fingerprint(config), config.recipe.backbone)
    if source is not None:
        weights = save_source_weights(source, out)
        cuts = [dataclasses.replace(c, recipe=dataclasses.replace(c.recipe, weights=str(weights))) for c in cuts]
    try:
        failed, skipped = _run_cuts(config, cuts, out, state)
    except KeyboardInterrupt:
        _write_state(out, state, "interrupted")
        raise
    except BaseException as exc:
        _write_state(out, state, "failed", error=one_line(exc))
        raise
    rows = _rows(state, list(block_groups(meta_model(config.recipe.backbone))))
    report = _write_outputs(config, out, rows, failed)
    _write_state(out, state, "failed" if failed and not rows else "complete")
    return PruneResult(out, rows, report, failed, skipped)


def _run_cuts(config: PruneConfig, cuts: list[Cut], out: Path, state: dict) -> tuple[list[str], int]:
    failed, skipped = [], 0
    for number, cut in enumerate(cuts, start=1):
        run_dir = out / "runs" / cut.folder
        where = f"[{number}/{len(cuts)}] cut after {cut.group}"
        record = state["cuts"].setdefault(cut.group, {})
        if run_status(run_dir) == "complete" and _checked_row(record.get("row"), cut.group):
            record["row"]["run_dir"] = str(run_dir)  # where it is now (the folder may have moved)
            skipped += 1
            _event(config, f"{where}: done earlier, kept ({run_dir})")
            continue
        record.update(status="running", error=None, run_dir=str(run_dir))
        _write_state(out, state, "running")
        try:
            row = _run_one(config, cut, run_dir, where)
        except TransferlabError as exc:  # this cut cannot run; the others still can
            record.update(status="failed", error=str(exc))
            failed.append(f"{run_dir}: {exc}")
            _event(config, f"{where}: failed: {exc}")
            continue
        record.update(status="complete", row=row)
        _write_state(out, state, "running")
        _event(config, f"{where}: val acc {row['val_accuracy']:.4f}, {row['parameters']:,} parameters, "
                       f"{_ms(row, 1)} ms at batch 1, {_ms(row, 64)} ms at batch 64")
    return failed, skipped


def _run_one(config: PruneConfig, cut: Cut, run_dir: Path, where: str) -> dict:
    """Fine-tune one cut (resuming a killed run), then measure it: its row of the table."""
    started = time.perf_counter()
    if run_status(run_dir) != "complete":
        resume = (run_dir / STATE_FILE).is_file()
        _event(config, f"{where}: {'resuming' if resume else 'training'} ({run_dir})")
        finetune = FinetuneConfig(
            data=config.data, out=str(run_dir), recipe=cut.recipe, test=config.test, baseline=config.baseline,
            baseline_partial=config.baseline_partial, exclude=config.exclude, workers=config.workers,
            embed="pca", progress=config.progress, cut_after=cut.group,
            on_stage_end=lambda s: _event(config, f"{where}: stage {s['index']} ({s['train']}): {s['epochs_run']} "
                                                  f"epochs, best val acc {s['best_val_acc']:.4f}"))
        run_finetune(finetune, resume=resume)
    seconds = time.perf_counter() - started
    _event(config, f"{where}: measuring latency")
    return measure_run(run_dir, cut.group, config.latency_batches, config.latency_repeats) | {
        "train_seconds": round(seconds, 1)}


def measure_run(run_dir: Path, group: str, batches: tuple[int, ...] = BATCHES,
                repeats: dict[int, int] | None = None) -> dict:
    """A finished run's row: its size and speed (the network as predict and export rebuild it) and scores."""
    loaded = load_run_network(run_dir)
    cost = measure_cost(loaded.network, loaded.card.resolution, batches, repeats)
    metrics = read_json_object(Path(run_dir) / "metrics.json", "metrics")
    val, test = metrics.get("val") or {}, metrics.get("test") or {}
    return {
        "cut": group,
        "run_dir": str(run_dir),
        "parameters": cost.parameters,
        "backbone_parameters": sum(p.numel() for p in loaded.timm_model.parameters()),
        "multiply_adds": cost.multiply_adds,
        "resolution": cost.resolution,
        "threads": cost.threads,
        "latency": [dataclasses.asdict(entry) for entry in cost.latency],
        "val_accuracy": val.get("accuracy"),
        "val_macro_f1": val.get("macro_f1"),
        "test_accuracy": test.get("accuracy"),
    }


def pareto_front(rows: list[dict], cost: Callable[[dict], float], score: str = "val_accuracy") -> list[bool]:
    """Whether each row is on the Pareto front: no other row costs no more and scores no less,
    being strictly better in one of the two."""
    points = [(cost(r), r.get(score)) for r in rows]
    marks = []
    for c, s in points:
        if c is None or s is None:
            marks.append(False)
            continue
        marks.append(not any(oc is not None and os_ is not None and oc <= c and os_ >= s and (oc < c or os_ > s)
                             for oc, os_ in points))
    return marks


def _ms(row: dict, batch: int) -> str:
    value = latency_ms(row, batch)
    return "-" if value is None else f"{value:.1f}"


def _checked_row(row, group: str) -> bool:
    """Whether a row read back from prune.json (hostile, like any file in the folder) has the figures
    the table and the curve use, of the right types; a row that has not is measured again."""
    def number(value, optional: bool = False) -> bool:
        if value is None:
            return optional
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not isinstance(row, dict) or row.get("cut") != group or not isinstance(row.get("run_dir"), str):
        return False
    latency = row.get("latency")
    return (all(isinstance(row.get(k), int) and not isinstance(row.get(k), bool) and row[k] >= 0
                for k in ("parameters", "backbone_parameters", "multiply_adds", "resolution", "threads"))
            and all(number(row.get(k), optional=True) for k in ("val_accuracy", "val_macro_f1", "test_accuracy",
                                                                  "train_seconds"))
            and isinstance(latency, list) and all(isinstance(e, dict) and isinstance(e.get("batch"), int)
                                                  and number(e.get("median_ms")) for e in latency))


def _rows(state: dict, groups: list[str]) -> list[dict]:
    """Every finished cut recorded in the folder (this invocation's and earlier ones), input side first,
    with its Pareto marks: by parameters, and by latency at batch 1."""
    finished = {g: r["row"] for g, r in state["cuts"].items() if r.get("status") == "complete"
                and _checked_row(r.get("row"), g)}
    rows = [dict(finished[g]) for g in groups if g in finished]
    for key, cost in (("pareto", lambda r: r.get("parameters")), ("pareto_latency", lambda r: latency_ms(r, 1))):
        for row, mark in zip(rows, pareto_front(rows, cost)):
            row[key] = mark
    return rows


def _fingerprint(config: PruneConfig) -> dict:
    """What a re-run into the same folder must share (the cuts may differ: they add points)."""
    def resolved(path: str | None) -> str | None:
        return str(Path(path).resolve()) if path else None

    recipe = json.loads(json.dumps(dataclasses.asdict(config.recipe)))  # as prune.json will hold it
    return {"data": resolved(config.data), "test": resolved(config.test), "baseline": resolved(config.baseline),
            "exclude": resolved(config.exclude), "recipe": recipe,
            "from_run": fingerprint_source(config.from_run) if config.from_run else None}


def _open_prune(out: Path, fingerprint: dict, backbone: str) -> dict:
    """A new prune folder, or the same prune's folder again (continue); anything else is refused."""
    if out.is_symlink():
        raise TransferlabError(f"{out}: is a link; give the real folder as --out")
    if out.exists() and not out.is_dir():
        raise TransferlabError(f"{out}: exists and is not a folder; choose another --out")
    fresh = {"kind": "prune", "version": __version__, "backbone": backbone, "fingerprint": fingerprint, "cuts": {}}
    if out.exists() and any(out.iterdir()):
        if not (out / PRUNE_FILE).is_file():
            raise TransferlabError(f"{out}: folder is not empty and is not a prune folder (no {PRUNE_FILE}); "
                                   "choose a new or empty --out")
        old = read_json_object(out / PRUNE_FILE, "prune state")
        if old.get("kind") != "prune" or old.get("fingerprint") != fingerprint:
            raise TransferlabError(f"{out}: holds a prune of another backbone, recipe or data; re-run the same "
                                   "command to continue it, or choose a new --out")
        cuts = old.get("cuts") if isinstance(old.get("cuts"), dict) else {}
        fresh["cuts"] = {k: v for k, v in cuts.items() if isinstance(k, str) and isinstance(v, dict)}
    out.mkdir(parents=True, exist_ok=True)
    _write_state(out, fresh, "running")
    return fresh


def _write_state(out: Path, state: dict, status: str, **extra) -> None:
    state.update(status=status, **extra)
    write_json(out / PRUNE_FILE, state)


def _write_outputs(config: PruneConfig, out: Path, rows: list[dict], failed: list[str]) -> Path:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_rows(rows))
    write_text(out / "prune.csv", buffer.getvalue())
    title = f"transferlab prune: {config.recipe.backbone} on {Path(config.data).name}"
    notes = [f"failed: {line}" for line in failed]
    return render_prune_report(out, rows, title=title, command=config.command, notes=notes)


def _event(config: PruneConfig, line: str) -> None:
    if config.on_event is not None:
        config.on_event(line)


def list_cut_points(backbone: str) -> list[str]:
    """The groups `backbone` (a timm architecture name) can be cut after, for --help and errors."""
    return cut_points(meta_model(backbone))
