"""`run_search`: Optuna's TPE over fine-tune recipes; every trial is an ordinary fine-tune run.

The base recipe (--recipe, else the defaults) with each trial's values from SPACE.yaml runs
as `run_finetune` in <out>/trials/trial-NNNN. Each epoch's val_acc goes to Optuna's pruner
(optuna-integration's Lightning callback); a pruned run is marked "pruned" in its run.json.

The study lives in a storage: by default the SQLite file <out>/search.db, else --storage
(a database URL, e.g. postgresql://... shared by workers on several machines, or
journal:FILE). Workers beat a heartbeat into it while a trial runs: the trial of a killed
worker goes stale, is marked failed and retried with its parameters by whichever worker
notices first (Optuna's own mechanism), so the same command resumes a killed search. A
search ends when COMPLETE + PRUNED trials reach --trials; while the last trials run in other
workers, a worker waits for them (one may yet fail), so every worker ends with the whole
result and writes it: best_recipe.yaml, trials.csv, search.json and search.html.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from transferlab import __version__
from transferlab.atomic import write_json, write_text
from transferlab.errors import TransferlabError, one_line
from transferlab.features.extract import default_workers
from transferlab.finetune.recipe import load_recipe, preset_stages, resolve_stages
from transferlab.options import MAX_SEED, check_file, check_folder, check_int
from transferlab.pipelines.finetune import FinetuneConfig, run_finetune
from transferlab.pipelines.search_space import (
    PRUNERS,
    SEARCH_KIND,
    SEARCH_RECORD,
    SearchSpace,
    check_same_search,
    check_search_folder,
    check_study,
    load_space,
)
from transferlab.pipelines.search_storage import StorageSpec, open_study, storage_spec
from transferlab.pipelines.search_trials import GlobalEpochPruning, StaleTrial, TrialSeededTPE, trial_folder_name
from transferlab.pipelines.settings import apply_to_recipe, recipe_as_dict, value_label
from transferlab.report.search_report import trial_cells, trials_table, write_csv, write_search_report
from transferlab.runs import RunDir, check_apart
from transferlab.safe_yaml import dump_yaml

DONE = (TrialState.COMPLETE, TrialState.PRUNED)
# Trials skip the error grid (CAM per image) and the feature maps: seconds per trial that a
# search spends better on more trials; `finetune --recipe best_recipe.yaml` draws them.
TRIAL_REPORT = {"error_grid": 0, "embed": ""}


@dataclass
class SearchConfig:
    data: str
    out: str
    space: str
    recipe: str | None = None  # base recipe (default: the recipe defaults)
    trials: int = 20  # COMPLETE + PRUNED trials to reach
    timeout_s: float | None = None  # no trial starts after this (the running one finishes)
    storage: str | None = None  # database URL or journal:FILE; default <out>/search.db
    study_name: str = "transferlab"
    seed: int = 0  # the sampler's seed and every trial's recipe seed
    pruner: str = "median"
    test: str | None = None
    baseline: str | None = None
    exclude: str | None = None  # an exclude list (doctor --write-exclude), for every trial
    workers: int = field(default_factory=default_workers)
    progress: bool = True
    heartbeat_s: int = 20  # a running trial beats this often; silent for 3x as long = its worker died
    on_trial_end: Callable[[dict], None] | None = None  # a finished trial's row (see `trial_row`)
    on_note: Callable[[str], None] | None = None


@dataclass
class SearchResult:
    out: Path
    study_name: str
    storage: str  # as shown (password hidden)
    counts: dict[str, int]
    stopped_by: str  # "trials" or "timeout"
    best: dict | None  # number, value, params (labels), run_dir
    best_recipe: Path | None
    trials_csv: Path
    report: Path


def run_search(config: SearchConfig) -> SearchResult:
    _check_config(config)
    space = load_space(config.space)
    base = _base_recipe(config, space)
    out = Path(config.out)
    storage = storage_spec(config.storage, out)
    check_apart(out, (config.data, config.test))
    check_same_search(check_search_folder(out), out, config.study_name, storage.shown)
    out.mkdir(parents=True, exist_ok=True)
    _write_record(out, config, storage.shown, status="running")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own line per trial replaces Optuna's
    try:
        with warnings.catch_warnings():
            # Heartbeats, retries and the matplotlib plots are "experimental" in Optuna, stable for years.
            warnings.simplefilter("ignore", ExperimentalWarning)
            search = _Search(config, out, space, base, storage)
            stopped_by = search.run()
            return _finish(search, stopped_by)
    except Exception as exc:  # search.json must not say "running" for a search that stopped (Ctrl-C: run())
        _write_record(out, config, storage.shown, status="failed", error=one_line(exc))
        raise
    finally:
        optuna.logging.set_verbosity(verbosity)


def _check_config(config: SearchConfig) -> None:
    check_folder(config.data)
    check_folder(config.test, "test folder")
    check_file(config.space, "search space")
    check_file(config.recipe, "recipe")
    check_file(config.baseline, "baseline CSV")
    check_file(config.exclude, "exclude list")
    check_int("--trials", config.trials, 1, 100_000)
    check_int("--seed", config.seed, 0, MAX_SEED)
    check_int("--heartbeat", config.heartbeat_s, 1, 3600)
    if config.pruner not in PRUNERS:
        raise TransferlabError(f"--pruner must be one of {', '.join(PRUNERS)}, got {config.pruner!r}")
    if config.timeout_s is not None and not config.timeout_s > 0:
        raise TransferlabError(f"--timeout must be above 0, got {config.timeout_s}")
    if not config.study_name.strip() or len(config.study_name) > 500:
        raise TransferlabError("--study-name must be 1 to 500 characters")


def _base_recipe(config: SearchConfig, space: SearchSpace) -> dict:
    """The recipe as a dict, after every choice and both bounds of every range were tried on it
    (one line naming the space file and the value): no bad value waits for its trial to fail."""
    recipe = load_recipe(config.recipe)
    if recipe.processes != 1:
        raise TransferlabError(f"{config.recipe}: processes must be 1 in a search (each trial trains in one "
                               f"process: Optuna's pruning callback reports from one), got {recipe.processes}")
    base = recipe_as_dict(recipe)
    for dim in space.dimensions:
        for value in dim.probes:
            where = f"{space.path}: {dim.key}={value_label(value)}"
            _check_stages(apply_to_recipe(base, {dim.key: value}, config.seed, where), where)
    return base


# Enough stand-in block groups for any preset's number (from-block:K, gradual:N): the real
# backbone's count is checked as the trial starts; the name and the number's form are checked here.
_STAND_IN_GROUPS = [f"group{i}" for i in range(64)]


def _check_stages(recipe, where: str) -> None:
    try:
        if isinstance(recipe.stages, str):
            preset_stages(recipe.stages, _STAND_IN_GROUPS)
        else:
            resolve_stages(replace(recipe, lr=None), _STAND_IN_GROUPS)  # lr needs the real groups
    except TransferlabError as exc:
        raise TransferlabError(f"{where}: {exc}") from None


def _write_record(out: Path, config: SearchConfig, shown: str, status: str, **extra) -> None:
    settings = {"data": config.data, "space": config.space, "recipe": config.recipe, "trials": config.trials,
                "timeout_s": config.timeout_s, "seed": config.seed, "pruner": config.pruner,
                "test": config.test, "baseline": config.baseline, "exclude": config.exclude}
    write_json(out / SEARCH_RECORD, {"kind": SEARCH_KIND, "version": __version__, "study_name": config.study_name,
                                     "storage": shown, "status": status, "config": settings, **extra})


class _Surplus(Exception):
    """Two workers asked for the study's last trial at the same moment: the later one does not run."""


class _Search:
    def __init__(self, config: SearchConfig, out: Path, space: SearchSpace, base: dict, storage: StorageSpec):
        self.config, self.out, self.space, self.base = config, out, space, base
        self.trials_dir = out / "trials"
        self.storage = storage
        sampler = TrialSeededTPE(config.seed, n_startup_trials=max(2, min(10, config.trials // 3)))
        self.study = open_study(storage, config.study_name, self._backend(storage), sampler, PRUNERS[config.pruner]())
        check_study(self.study, f"study {config.study_name!r} in {storage.shown}",
                    {"space": space.spec(), "recipe": base, "seed": config.seed})
        self.heartbeat = storage.kind == "rdb"  # journal storage keeps no heartbeat

    def _backend(self, storage: StorageSpec):
        if storage.kind == "journal":
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            # No heartbeat in journal storage: a killed worker's trial stays RUNNING (not retried).
            return lambda: JournalStorage(JournalFileBackend(storage.target))
        # SQLite locks the whole file per write: wait for the other worker instead of failing.
        engine = {"connect_args": {"timeout": 60}} if storage.is_sqlite else {}
        beat = self.config.heartbeat_s
        return lambda: optuna.storages.RDBStorage(storage.target, engine_kwargs=engine, heartbeat_interval=beat,
                                                  grace_period=3 * beat,
                                                  heartbeat_stale_trial_callback=StaleTrial(self.trials_dir))

    def counts(self) -> tuple[int, int]:
        trials = self.study.get_trials(deepcopy=False, states=(*DONE, TrialState.RUNNING))
        running = sum(t.state == TrialState.RUNNING for t in trials)
        return len(trials) - running, running

    def run(self) -> str:
        deadline = None if self.config.timeout_s is None else time.monotonic() + self.config.timeout_s
        noted = False
        while True:
            optuna.storages.fail_stale_trials(self.study)
            done, running = self.counts()
            if done >= self.config.trials:
                return "trials"
            if deadline is not None and time.monotonic() >= deadline:
                return "timeout"
            if self.heartbeat and done + running >= self.config.trials:
                # Only the other workers' trials are left: wait, one may yet fail or go stale.
                if not noted:
                    self._note(f"waiting for {running} trial(s) running in other workers")
                    noted = True
                left = self.config.heartbeat_s if deadline is None else max(0.1, deadline - time.monotonic())
                time.sleep(min(self.config.heartbeat_s, left))
                continue
            self.study.optimize(self.objective, n_trials=1, catch=(_Surplus,), callbacks=[self._ended])

    def _surplus(self, trial: optuna.Trial) -> bool:
        """Trials ahead of this one (done, or running and asked for earlier) fill the study already."""
        states = (*DONE, TrialState.RUNNING) if self.heartbeat else DONE
        ahead = [t for t in self.study.get_trials(deepcopy=False, states=states)
                 if t.state != TrialState.RUNNING or t.number < trial.number]
        return len(ahead) >= self.config.trials

    def objective(self, trial: optuna.Trial) -> float:
        folder = self.trials_dir / trial_folder_name(trial.number)
        # Set first: a retried trial arrives with the attributes of the one it retries.
        _set_attrs(trial, run_dir=str(folder), worker=f"{socket.gethostname()}:{os.getpid()}", epochs=0,
                   seconds=None, error=None)
        if self._surplus(trial):
            trial.set_user_attr("surplus", True)
            raise _Surplus(f"trial {trial.number} not run: the study has its {self.config.trials} trials")
        try:
            return self._train(trial, folder)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("error", one_line(exc))  # Optuna keeps no reason for a failed trial
            raise

    def _train(self, trial: optuna.Trial, folder: Path) -> float:
        started = time.perf_counter()
        recipe = apply_to_recipe(self.base, self.space.suggest(trial), self.config.seed, f"trial {trial.number}")
        if folder.exists() and (folder.is_symlink() or not folder.is_dir() or any(folder.iterdir())):
            raise TransferlabError(f"{folder}: exists already (from another study?); refusing to write over it")
        stage_epochs: list[int] = []
        reports: list[tuple[int, float]] = []
        config = FinetuneConfig(
            data=self.config.data, out=str(folder), recipe=recipe, test=self.config.test,
            baseline=self.config.baseline, exclude=self.config.exclude, workers=self.config.workers,
            progress=self.config.progress,
            on_stage_end=lambda outcome: stage_epochs.append(int(outcome["epochs_run"])),
            stage_callbacks=lambda index: [GlobalEpochPruning(trial, sum(stage_epochs[:index]), reports)],
            **TRIAL_REPORT,
        )
        try:
            result = run_finetune(config)
        except optuna.TrialPruned:
            last = f": val acc {reports[-1][1]:.4f}" if reports else ""
            RunDir(folder).mark_stopped("finetune", "pruned", f"pruned by the search after {len(reports)} "
                                                              f"epoch(s){last}")
            _set_attrs(trial, epochs=len(reports), seconds=round(time.perf_counter() - started, 1))
            raise
        except KeyboardInterrupt:
            # Ctrl-C kills a trial as SIGKILL does: the next run of the command retries it.
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise
        _set_attrs(trial, epochs=sum(stage_epochs), seconds=round(time.perf_counter() - started, 1))
        return float(result.metrics["val"]["accuracy"])

    def _ended(self, study: optuna.Study, trial) -> None:
        if trial.user_attrs.get("surplus") or self.config.on_trial_end is None:
            return
        self.config.on_trial_end(trial_row(self.space, trial))

    def _note(self, text: str) -> None:
        if self.config.on_note is not None:
            self.config.on_note(text)


def _set_attrs(trial: optuna.Trial, **attrs) -> None:
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


# --- the end: trials table, best recipe, record, report -----------------------------------


def trial_row(space: SearchSpace, trial) -> dict:
    """A trial as plain text cells (see `trial_cells`), with its parameters' labels."""
    return trial_cells(trial, space.labels_of(trial.params))


def _finish(search: _Search, stopped_by: str) -> SearchResult:
    study, space, out, config = search.study, search.space, search.out, search.config
    optuna.storages.fail_stale_trials(study)
    rows = [trial_row(space, t) for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]
    header, table = trials_table(rows, space.keys)
    trials_csv = write_csv(out / "trials.csv", header, table)
    counts = dict(sorted(Counter(row["state"] for row in rows).items()))
    best, best_yaml = _best(search)
    best_recipe = out / "best_recipe.yaml" if best_yaml else None
    if best_recipe is not None:
        write_text(best_recipe, best_yaml)
    summary = {"study": config.study_name, "storage": search.storage.shown, "data": config.data,
               "space": config.space, "base recipe": config.recipe or "(defaults)", "trials wanted": config.trials,
               "stopped by": stopped_by, "pruner": config.pruner, "seed": config.seed,
               "trials by state": ", ".join(f"{n} {state}" for state, n in counts.items())}
    report = write_search_report(out / "search.html", study=study, title=f"transferlab search: {config.study_name}",
                                 summary=summary, header=header, rows=table, best_recipe=best_yaml,
                                 plots_dir=out / "plots")
    files = {"trials_csv": trials_csv.name, "report": report.name,
             "best_recipe": best_recipe.name if best_recipe else None}
    _write_record(out, config, search.storage.shown, status="finished", stopped_by=stopped_by, counts=counts,
                  best=best, files=files)
    return SearchResult(out, config.study_name, search.storage.shown, counts, stopped_by, best, best_recipe,
                        trials_csv, report)


def _best(search: _Search) -> tuple[dict | None, str | None]:
    complete = search.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None, None
    trial = search.study.best_trial
    values = search.space.values_of(trial.params)
    recipe = apply_to_recipe(search.base, values, search.config.seed, f"best trial {trial.number}")
    best = {"number": trial.number, "value": trial.value, "params": search.space.labels_of(trial.params),
            "run_dir": trial_row(search.space, trial)["run_dir"]}
    header = (f"# transferlab search, study {search.config.study_name!r}: best of {len(complete)} complete trials,\n"
              f"# trial {trial.number}, val accuracy {trial.value:.4f}. Re-run: transferlab finetune DATA --recipe "
              "best_recipe.yaml\n")
    return best, header + dump_yaml(recipe_as_dict(recipe))
