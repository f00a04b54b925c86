"""`run_study`: a study spec -> one ordinary run folder per variant x seed, then the comparison.

The study folder holds `study.json` (spec, plan, the state of every run, the summary),
`study.csv`, `study.html`, `plots/` and `runs/<variant>-seed<k>/`: probe or fine-tune runs
like any other (servable, comparable), each with a `variant.json` naming what it varies.

Re-running the same command continues a killed study: finished runs are skipped, a killed
fine-tune run resumes from its last checkpoint (a killed probe run starts again: probes
are short and their features are cached). A different spec in the same folder is refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from transferlab import __version__
from transferlab.atomic import write_json, write_text
from transferlab.errors import TransferlabError, one_line
from transferlab.features.extract import default_workers
from transferlab.insight.study_table import VariantRun, summarise_study, write_study_csv
from transferlab.options import check_file, check_folder
from transferlab.pipelines.finetune import FinetuneConfig, run_finetune
from transferlab.pipelines.finetune_state import STATE_FILE
from transferlab.pipelines.probe import ProbeConfig, run_probe
from transferlab.pipelines.settings import apply_to_probe, apply_to_recipe
from transferlab.pipelines.study_spec import StudySpec, Variant, base_recipe, base_values, check_variants, plan_variants
from transferlab.report.study_report import render_study_report
from transferlab.runs import check_apart, read_json_object, run_status
from transferlab.safe_yaml import dump_yaml

STUDY_FILE = "study.json"


@dataclass
class StudyConfig:
    spec: StudySpec
    out: str
    baseline_partial: bool = False
    exclude: str | None = None  # an exclude list (doctor --write-exclude), for every run
    workers: int = field(default_factory=default_workers)
    cache_dir: str | None = None  # probe feature cache; None: the user cache
    progress: bool = True  # each run's own progress bars
    command: str = ""  # the command line, shown in the report
    on_event: Callable[[str], None] | None = None  # one line per run started / finished / skipped


@dataclass
class StudyResult:
    out: Path
    summary: dict
    report: Path
    failed: list[str]  # "<run folder>: <error>" for runs that failed
    skipped: int  # runs finished by an earlier invocation


@dataclass
class _Plan:
    variants: list[Variant]
    runs: list[tuple[Variant, int]]  # (variant, seed), in the order they run


def run_study(config: StudyConfig) -> StudyResult:
    spec = config.spec
    check_folder(spec.data)
    check_folder(spec.test, "test folder")
    check_file(spec.baseline, "baseline CSV")
    check_file(config.exclude, "exclude list")
    variants = plan_variants(spec, base_values(spec))
    check_variants(spec, variants)  # every recipe valid before the first run
    plan = _Plan(variants, [(v, seed) for seed in spec.seeds for v in variants])
    out = Path(config.out)
    check_apart(out, (spec.data, spec.test))
    state = _open_study(out, spec, variants)
    try:
        finished, failed, skipped = _run_all(config, plan, out, state)
    except KeyboardInterrupt:
        _write_state(out, state, "interrupted")
        raise
    except BaseException as exc:
        _write_state(out, state, "failed", error=one_line(exc))
        raise
    orders = {f.key: f.values for f in spec.factors}  # plot points in the order the study lists them
    summary = summarise_study(finished, orders=orders) if finished else {}
    report = _write_outputs(config, out, state, summary, failed)
    _write_state(out, state, "failed" if failed and not finished else "complete", summary=summary)
    return StudyResult(out, summary, report, failed, skipped)


def _run_all(config: StudyConfig, plan: _Plan, out: Path, state: dict) -> tuple[list[VariantRun], list[str], int]:
    finished, failed, skipped = [], [], 0
    for number, (variant, seed) in enumerate(plan.runs, start=1):
        run_dir = out / "runs" / variant.folder(seed)
        where = f"[{number}/{len(plan.runs)}] {variant.label}, seed {seed}"
        record = state["runs"].setdefault(run_dir.name, {})
        if run_status(run_dir) == "complete":
            if not (run_dir / "variant.json").is_file():  # killed between the run's end and this note
                _write_variant(run_dir, out, variant, seed)
            skipped += 1
            _event(config, f"{where}: done earlier, kept")
        else:
            _event(config, f"{where}: running ({run_dir})")
            record.update(status="running", error=None)
            _write_state(out, state, "running")
            started = time.perf_counter()
            try:
                metrics = _run_one(config, variant, seed, run_dir)
            except TransferlabError as exc:  # this variant cannot run; the others still can
                record.update(status="failed", error=str(exc))
                failed.append(f"{run_dir}: {exc}")
                _event(config, f"{where}: failed: {exc}")
                continue
            _write_variant(run_dir, out, variant, seed)
            val = metrics.get("val", {})
            _event(config, f"{where}: val acc {val.get('accuracy', float('nan')):.4f}, macro F1 "
                           f"{val.get('macro_f1', float('nan')):.4f} ({time.perf_counter() - started:.0f} s)")
        record.update(status="complete", error=None)
        finished.append(VariantRun(variant=variant.label, settings=variant.settings, factor=variant.factor,
                                   value=variant.value, seed=seed, run_dir=run_dir, reference=variant.reference))
    return finished, failed, skipped


def _run_one(config: StudyConfig, variant: Variant, seed: int, run_dir: Path) -> dict:
    """One run of one variant: a probe, or a fine-tune (resumed when a killed one is there)."""
    spec = config.spec
    common = {"data": spec.data, "out": str(run_dir), "test": spec.test, "baseline": spec.baseline,
              "baseline_partial": config.baseline_partial, "exclude": config.exclude, "workers": config.workers,
              "embed": "pca", "progress": config.progress}
    if spec.mode == "probe":
        settings = apply_to_probe({}, {**spec.fixed, **variant.settings})
        return run_probe(ProbeConfig(**common, **settings, seed=seed, cache_dir=config.cache_dir)).metrics
    recipe = apply_to_recipe(base_recipe(spec), variant.settings, seed, f"variant {variant.label}")
    resume = (run_dir / STATE_FILE).is_file() and run_status(run_dir) != "complete"
    return run_finetune(FinetuneConfig(**common, recipe=recipe), resume=resume).metrics


def _write_variant(run_dir: Path, out: Path, variant: Variant, seed: int) -> None:
    """variant.json: what this run varies, for `compare` and for anyone opening the folder alone."""
    write_json(run_dir / "variant.json", {"study": out.name, "variant": variant.label, "settings": variant.settings,
                                          "factor": variant.factor, "value": variant.value, "seed": seed,
                                          "reference": variant.reference})


def _open_study(out: Path, spec: StudySpec, variants: list[Variant]) -> dict:
    """A new study folder, or the same study's folder again (resume); anything else is refused."""
    if out.is_symlink():
        raise TransferlabError(f"{out}: is a link; give the real folder as --out")
    if out.exists() and not out.is_dir():
        raise TransferlabError(f"{out}: exists and is not a folder; choose another --out")
    fresh = {"kind": "study", "version": __version__, "fingerprint": spec.fingerprint(), "spec": spec.to_dict(),
             "variants": [{"label": v.label, "settings": v.settings, "reference": v.reference,
                           "folders": [v.folder(s) for s in spec.seeds]} for v in variants],
             "runs": {}}
    if out.exists() and any(out.iterdir()):
        if not (out / STUDY_FILE).is_file():
            raise TransferlabError(f"{out}: folder is not empty and is not a study (no {STUDY_FILE}); "
                                   "choose a new or empty --out")
        old = read_json_object(out / STUDY_FILE, "study state")
        if old.get("kind") != "study" or old.get("fingerprint") != fresh["fingerprint"]:
            raise TransferlabError(f"{out}: holds a different study (its spec, data or seeds differ); "
                                   "re-run the same command to continue it, or choose a new --out")
        runs = old.get("runs") if isinstance(old.get("runs"), dict) else {}
        fresh["runs"] = {k: v for k, v in runs.items() if isinstance(v, dict)}
    out.mkdir(parents=True, exist_ok=True)
    _write_state(out, fresh, "running")
    return fresh


def _write_state(out: Path, state: dict, status: str, **extra) -> None:
    state.update(status=status, **extra)
    write_json(out / STUDY_FILE, state)


def _write_outputs(config: StudyConfig, out: Path, state: dict, summary: dict, failed: list[str]) -> Path:
    spec = config.spec
    write_text(out / "study_spec.yaml", dump_yaml(_rerunnable_spec(spec)))
    if summary:
        write_study_csv(summary, out / "study.csv")
    notes = [f"failed: {line}" for line in failed]
    title = f"transferlab study: {spec.name or Path(spec.data).name}"
    return render_study_report(out, summary, title=title, command=config.command, notes=notes)


def _rerunnable_spec(spec: StudySpec) -> dict:
    """The spec as YAML that `transferlab study study_spec.yaml` runs again (absolute paths)."""
    data = spec.to_dict()
    # Named values where the names tell them apart (always, unless two labels were cut short alike).
    vary = {f["key"]: dict(zip(f["names"], f["values"])) if len(set(f["names"])) == len(f["names"]) else f["values"]
            for f in data.pop("factors")}
    data.pop("data", None)  # given on the command line, so one spec serves any folder
    return {k: v for k, v in {**data, "vary": vary}.items() if v not in (None, {}, "")}


def _event(config: StudyConfig, line: str) -> None:
    if config.on_event is not None:
        config.on_event(line)
