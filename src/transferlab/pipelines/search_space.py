"""A search's inputs, checked cheaply: SPACE.yaml (recipe key -> distribution), the search folder,
the study's storage, and how trials are cut short.

    lr: {type: float, low: 1e-4, high: 1e-2, log: true}      # or {type: log, low: ..., high: ...}
    weight_decay: {type: float, low: 0, high: 0.1}
    resolution: {type: int, low: 128, high: 224, step: 32}
    augment: {type: categorical, choices: [none, light, classic]}
    head: [[], [{type: dropout, p: 0.3}]]                     # a list is short for categorical
    stages.2.train: {type: categorical, choices: ["blocks.6,neck,head", "blocks.5-6,neck,head"]}

Keys are recipe keys or `stages.K.FIELD` (settings.check_key); every malformed entry is one
line naming the file and the key. This module imports neither torch nor Optuna at load time,
so the CLI checks all of it before its slow imports.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

from transferlab.errors import TransferlabError
from transferlab.finetune.values import finite_number
from transferlab.pipelines.settings import check_key, value_label
from transferlab.runs import read_json_object
from transferlab.safe_yaml import read_yaml_file, short_repr

SEARCH_RECORD = "search.json"  # written first: it marks a folder as a search's, safe to write into
SEARCH_KIND = "transferlab-search"

# A search trains every trial in one process: Optuna's pruning callback reports from one.
FORBIDDEN_KEYS = {"processes": "a search trains each trial in one process (pruning reports from one)"}
FIELDS = {
    "categorical": ("type", "choices"),
    "int": ("type", "low", "high", "step", "log"),
    "float": ("type", "low", "high", "step", "log"),
    "log": ("type", "low", "high"),
}
SCALARS = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class Dimension:
    """One searched key. Categorical choices keep two forms: `choices` (the values a recipe gets)
    and `labels` (what Optuna sees). Optuna's categorical choices must be None, bool, int, float
    or str: it stores them in its database as JSON and warns about anything else, and its
    plots and the trials table need a readable name. So a list or mapping choice (a head, an
    augmentation pipeline) goes to Optuna as its label, and comes back from it through
    `value_of`. Scalar choices are their own labels."""

    key: str
    kind: str  # categorical | int | float
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple = ()
    labels: tuple = ()
    # What to try against the recipe before the search starts: every choice, or both bounds.
    probes: tuple = field(default=(), compare=False)

    def suggest(self, trial):
        """This trial's value for the key (a real recipe value, not a label)."""
        if self.kind == "categorical":
            return self.value_of(trial.suggest_categorical(self.key, list(self.labels)))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def value_of(self, param):
        """The recipe value of a stored parameter (a label for categorical keys)."""
        if self.kind != "categorical":
            return param
        for label, choice in zip(self.labels, self.choices):
            # type() too: True == 1 and 1 == 1.0, but they are different choices.
            if type(label) is type(param) and label == param:
                return copy.deepcopy(choice)
        raise TransferlabError(f"{self.key}: the study holds {short_repr(param)}, which is not one of the "
                               f"space's choices")

    def label_of(self, param) -> str:
        return value_label(param) if self.kind == "categorical" else _number_label(param)

    def spec(self) -> dict:
        """The dimension as plain JSON data: what a study records to recognise its space."""
        if self.kind == "categorical":
            # The values, not only the labels: a label is shortened, two long heads may share its start.
            return {"key": self.key, "type": "categorical", "choices": _jsonable(list(self.choices)),
                    "labels": _jsonable(list(self.labels))}
        return {"key": self.key, "type": self.kind, "low": self.low, "high": self.high, "step": self.step,
                "log": self.log}


@dataclass(frozen=True)
class SearchSpace:
    path: str
    dimensions: tuple[Dimension, ...]

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    def suggest(self, trial) -> dict:
        return {d.key: d.suggest(trial) for d in self.dimensions}

    def values_of(self, params: dict) -> dict:
        """Recipe values of a trial's stored parameters (keys the trial lacks are left out)."""
        return {d.key: d.value_of(params[d.key]) for d in self.dimensions if d.key in params}

    def labels_of(self, params: dict) -> dict:
        return {d.key: d.label_of(params[d.key]) for d in self.dimensions if d.key in params}

    def spec(self) -> list[dict]:
        return [d.spec() for d in self.dimensions]


def load_space(path: str | Path) -> SearchSpace:
    """Read and check SPACE.yaml: one line naming the file and the key for any bad entry."""
    file = Path(path)
    data = read_yaml_file(file, "search space")
    if not isinstance(data, dict) or not data:
        raise TransferlabError(f"{file}: a search space is a mapping of recipe keys to distributions, "
                               "e.g. lr: {type: float, low: 1e-4, high: 1e-2, log: true}")
    return SearchSpace(str(file), tuple(_dimension(file, key, entry) for key, entry in data.items()))


def check_search_folder(path: str | Path) -> dict | None:
    """A search's --out is new, empty, or an earlier search (its search.json); returns that record.

    Anything else is refused in one line: the search writes trial folders and files into it,
    and a user's folder is never written over. A link is refused as `check_out_folder` does.
    """
    folder = Path(path)
    if folder.is_symlink():
        raise TransferlabError(f"{folder}: is a link; give the real folder as --out")
    if not folder.exists():
        return None
    if not folder.is_dir():
        raise TransferlabError(f"{folder}: exists and is not a folder; choose another --out")
    marker = folder / SEARCH_RECORD
    if not marker.is_file() or marker.is_symlink():
        if any(folder.iterdir()):
            raise TransferlabError(f"{folder}: folder is not empty and is not a transferlab search "
                                   f"(no {SEARCH_RECORD}); refusing to write into it: choose a new or empty --out")
        return None
    record = read_json_object(marker, "search record")
    if record.get("kind") != SEARCH_KIND:
        raise TransferlabError(f"{marker}: not a transferlab search record; choose a new or empty --out")
    return record


def _dimension(file: Path, key, entry) -> Dimension:
    where = f"{file}: {short_repr(key)}"
    if not isinstance(key, str) or len(key) > 100:
        raise TransferlabError(f"{where}: keys are recipe keys, e.g. lr or stages.2.train")
    if key in FORBIDDEN_KEYS:
        raise TransferlabError(f"{where}: cannot be searched: {FORBIDDEN_KEYS[key]}")
    try:
        check_key("finetune", key)
    except TransferlabError as exc:
        raise TransferlabError(f"{file}: {exc}") from None
    if isinstance(entry, list):
        entry = {"type": "categorical", "choices": entry}
    if not isinstance(entry, dict):
        raise TransferlabError(f"{where}: give a distribution, e.g. {{type: categorical, choices: [a, b]}} or "
                               f"{{type: float, low: 0, high: 0.1}}, got {short_repr(entry)}")
    kind = entry.get("type")
    if not isinstance(kind, str) or kind not in DIMENSION_TYPES:
        raise TransferlabError(f"{where}: type must be one of {', '.join(DIMENSION_TYPES)}, got {short_repr(kind)}")
    unknown = sorted(set(map(str, entry)) - set(FIELDS[kind]))
    if unknown:
        raise TransferlabError(f"{where}: a {kind} distribution has no field {short_repr(unknown[0])}; "
                               f"fields: {', '.join(FIELDS[kind])}")
    return DIMENSION_TYPES[kind](where, key, entry)


def _categorical(where: str, key: str, entry: dict) -> Dimension:
    choices = entry.get("choices")
    if not isinstance(choices, list) or not choices:
        raise TransferlabError(f"{where}: choices must be a non-empty list, got {short_repr(choices)}")
    seen = set()
    for choice in choices:
        try:
            canonical = _canonical(choice)
        except (TypeError, ValueError, RecursionError):
            raise TransferlabError(f"{where}: choice {short_repr(choice)} is not plain data") from None
        if canonical in seen:
            raise TransferlabError(f"{where}: choice {short_repr(choice)} is listed twice")
        seen.add(canonical)
    labels = _labels(choices)
    return Dimension(key, "categorical", choices=tuple(choices), labels=labels, probes=tuple(choices))


def _labels(choices: list) -> tuple:
    """Scalars stay as they are; lists and mappings become their readable label (unique)."""
    taken = {c for c in choices if isinstance(c, str)}
    labels = []
    for choice in choices:
        if isinstance(choice, SCALARS):
            labels.append(choice)
            continue
        label, n = value_label(choice), 2
        while label in taken:
            label, n = f"{value_label(choice)} #{n}", n + 1
        taken.add(label)
        labels.append(label)
    return tuple(labels)


def _bounds(where: str, entry: dict, number) -> tuple:
    if "low" not in entry or "high" not in entry:
        raise TransferlabError(f"{where}: give both low and high")
    low, high = number("low", entry["low"]), number("high", entry["high"])
    if not low < high:
        raise TransferlabError(f"{where}: low ({low}) must be below high ({high}); "
                               "for a fixed value set it in the recipe")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise TransferlabError(f"{where}: log must be true or false, got {short_repr(log)}")
    step = entry.get("step")
    if step is not None:
        step = number("step", step)
        if not step > 0:
            raise TransferlabError(f"{where}: step must be above 0, got {step}")
        if log:
            raise TransferlabError(f"{where}: step and log cannot be combined")
    if log and not low > 0:
        raise TransferlabError(f"{where}: a log distribution needs low above 0, got {low}")
    return low, high, step, log


def _float(where: str, key: str, entry: dict) -> Dimension:
    low, high, step, log = _bounds(where, entry, lambda name, v: finite_number(where, name, v))
    return Dimension(key, "float", low, high, step, log, probes=(low, high))


def _log(where: str, key: str, entry: dict) -> Dimension:
    return _float(where, key, {**entry, "type": "float", "log": True})


def _int(where: str, key: str, entry: dict) -> Dimension:
    def whole(name: str, value) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TransferlabError(f"{where}: {name} must be a whole number, got {short_repr(value)}")
        return value

    low, high, step, log = _bounds(where, entry, whole)
    # Optuna's last value is the highest low + k*step not above high.
    top = high if step is None else low + (high - low) // step * step
    return Dimension(key, "int", low, high, step, log, probes=(low, top))


# Distribution types as a space file names them -> their parser.
DIMENSION_TYPES = {"categorical": _categorical, "int": _int, "float": _float, "log": _log}


def _canonical(value) -> str:
    return type(value).__name__ + ":" + json.dumps(_jsonable(value), sort_keys=True)


def _jsonable(value):
    """Plain JSON data (a YAML date or set would not survive json.dumps)."""
    return json.loads(json.dumps(value, default=str))


def _number_label(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# --- the search folder, and the study a search continues ---------------------------------------


def check_same_search(record: dict | None, out: str | Path, study_name: str, shown: str) -> None:
    """An earlier search's folder continues that search only: its trial-NNNN folders are one study's."""
    if record is None:
        return
    for key, given in (("study_name", study_name), ("storage", shown)):
        if record.get(key) != given:
            raise TransferlabError(f"{Path(out) / SEARCH_RECORD}: this folder holds the search of "
                                   f"{key} {short_repr(record.get(key))}, not {short_repr(given)}; "
                                   "give the same one to continue it, or choose another --out")


def check_study(study, where: str, identity: dict) -> None:
    """A study continues only the search that began it: `identity` (space, base recipe, seed) is
    recorded in the study at its start and must match on every later start, in every worker."""
    from optuna.study import StudyDirection

    if study.direction != StudyDirection.MAXIMIZE:
        raise TransferlabError(f"{where} minimises; a transferlab search maximises accuracy: use another --study-name")
    want = _jsonable(identity)
    have = study.user_attrs.get("transferlab")
    if have is None:
        if study.get_trials(deepcopy=False):
            raise TransferlabError(f"{where} has trials that no transferlab search made: use another --study-name")
        study.set_user_attr("transferlab", want)
        return
    if not isinstance(have, dict):
        raise TransferlabError(f"{where}: its transferlab record is not a mapping")
    names = {"space": "search space", "recipe": "base recipe", "seed": "seed"}
    for part in want:
        if json.dumps(have.get(part), sort_keys=True) != json.dumps(want[part], sort_keys=True):
            raise TransferlabError(f"{where} was started with another {names.get(part, part)}; give the same one "
                                   "to continue it, or a new --study-name")


# --- pruners: how a search stops hopeless trials early ----------------------------------------
# Steps are epochs counted over the whole run (all stages). Short recipes have few epochs, so
# the median rule waits for a few finished trials and skips the first two epochs (the head
# alone) before it compares anything.


def _median():
    from optuna.pruners import MedianPruner

    return MedianPruner(n_startup_trials=3, n_warmup_steps=2)


def _halving():
    from optuna.pruners import SuccessiveHalvingPruner

    return SuccessiveHalvingPruner(min_resource="auto", reduction_factor=3)


def _no_pruning():
    from optuna.pruners import NopPruner

    return NopPruner()


PRUNERS = {"median": _median, "halving": _halving, "none": _no_pruning}
