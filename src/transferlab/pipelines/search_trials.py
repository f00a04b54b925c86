"""The parts a search's trials are made of: a per-trial-seeded TPE sampler, the pruning
callback that counts epochs across stages, and the handler of a trial whose worker died."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
from optuna.samplers import BaseSampler, TPESampler
from optuna_integration import PyTorchLightningPruningCallback

from transferlab.errors import TransferlabError
from transferlab.runs import RunDir, read_json_object

MAX_RETRY = 3  # a trial whose worker dies this often is left failed


class TrialSeededTPE(BaseSampler):
    """TPE whose random draws for trial n come from (seed, n).

    One seeded TPESampler per process would give every worker the same draws, so two workers
    sharing a study would propose the same first trials. Seeding per trial number keeps a search
    reproducible (a resumed search proposes what an unbroken one would, given the same history)
    and makes workers differ. constant_liar: running trials count as bad, so concurrent workers
    do not pile onto one point.
    """

    def __init__(self, seed: int, n_startup_trials: int):
        self._seed, self._n_startup = seed, n_startup_trials
        self._tpe = self._make(0)

    def _make(self, number: int) -> TPESampler:
        seed = int(np.random.SeedSequence([self._seed, number]).generate_state(1)[0])
        return TPESampler(seed=seed, n_startup_trials=self._n_startup, constant_liar=True)

    def before_trial(self, study, trial) -> None:
        self._tpe = self._make(trial.number)
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._tpe.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._tpe.reseed_rng()


class GlobalEpochPruning(PyTorchLightningPruningCallback):
    """optuna-integration's callback, reporting val_acc at the run's epoch, not the stage's.

    It reports at `pl_module.current_epoch`, which restarts at 0 with every stage (each stage
    is a new Trainer): Optuna keeps only the first value reported for a step, so every stage
    after the first would be dropped, and the pruner would compare stage 2's epochs with the
    other trials' stage 1. A stand-in module carrying the epoch plus the earlier stages'
    epochs goes to the parent instead (it reads nothing else from the module).
    """

    def __init__(self, trial: optuna.Trial, offset: int, reports: list):
        super().__init__(trial, monitor="val_acc")
        self.offset, self.reports = offset, reports

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        epoch = self.offset + pl_module.current_epoch
        value = trainer.callback_metrics.get("val_acc")
        if value is not None:
            self.reports.append((epoch, float(value)))
        super().on_validation_end(trainer, SimpleNamespace(current_epoch=epoch))


class StaleTrial:
    """Called by Optuna (in whichever worker notices) for a trial whose worker stopped beating:
    its run folder, when it is ours, is marked interrupted, and the trial is queued again."""

    def __init__(self, trials_dir: Path):
        self.trials_dir = trials_dir
        self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)

    def __call__(self, study: optuna.Study, trial) -> None:
        # The folder comes from the trial number, never from a path stored in the (shared) database.
        folder = self.trials_dir / trial_folder_name(trial.number)
        try:
            status = read_json_object(folder / "run.json", "run status").get("status")
        except TransferlabError:
            status = None  # another machine's trial, or killed before its run began
        if status == "running" and not folder.is_symlink():
            RunDir(folder).mark_stopped("finetune", "interrupted", "its search worker stopped (no heartbeat); "
                                                                   "the trial was queued again")
        self._retry(study, trial)


def trial_folder_name(number: int) -> str:
    return f"trial-{number:04d}"
