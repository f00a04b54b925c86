"""The run folder: the one artifact every later step (report, predict, serve) reads.

runs/<name>/
  run.json          status ("running" until the very end, then "complete"), timestamps
  config.yaml       the resolved configuration
  split.json        which file went where, with the seed
  metrics.json      per split: accuracy, macro/weighted F1, per-class P/R/F1/support; timings
  predictions.csv   path, split, true, predicted, probability per class
  skipped.csv       files left out, with the reason
  model/            backbone.safetensors, classifier.skops, model.json (preprocessing, labels)
  report.html, plots/*.png
Every file is written atomically; stale artifacts of an earlier run are removed first,
so a killed run never looks complete.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from transferlab import __version__
from transferlab.atomic import write_json, write_text
from transferlab.errors import TransferlabError
from transferlab.options import MAX_RESOLUTION, MIN_RESOLUTION

ARTIFACTS = (
    "run.json", "config.yaml", "split.json", "metrics.json", "predictions.csv", "skipped.csv",
    "classification_report_val.txt", "classification_report_test.txt",
    "baseline.txt", "report.html", "model", "plots", "checkpoints", "logs", "finetune_state.json",
)


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    def start(self, kind: str) -> None:
        """Clear an earlier run's artifacts and mark this one as running.

        Refuses a folder that holds anything but an earlier run: clearing would delete a
        user's model/, logs/ or report.html that transferlab never wrote.
        """
        check_out_folder(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._started = time.time()
        # run.json first: from here on the folder is a run, whatever point a kill stops us at.
        self._write_status(kind, "running")
        for name in ARTIFACTS:
            target = self.path / name
            if name == "run.json":
                continue
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        self.model_dir.mkdir()
        self.plots_dir.mkdir()

    def resume(self, kind: str) -> None:
        """Mark a killed run as running again, keeping what it wrote (checkpoints, logs)."""
        self._started = time.time()
        self._write_status(kind, "running", resumed=True)

    def finish(self, kind: str) -> None:
        self._write_status(kind, "complete", finished=_iso(time.time()))

    def _write_status(self, kind: str, status: str, **extra) -> None:
        write_json(self.path / "run.json", {"kind": kind, "status": status, "version": __version__,
                                            "started": _iso(self._started), **extra})

    @contextmanager
    def recording(self, kind: str) -> Iterator["RunDir"]:
        """Around a run's work: an exception marks it `failed` (with the error), Ctrl-C
        `interrupted`, so no run that stopped early stays `running` or looks complete."""
        try:
            yield self
        except KeyboardInterrupt:
            self._write_status(kind, "interrupted", stopped=_iso(time.time()))
            raise
        except BaseException as exc:
            self._write_status(kind, "failed", stopped=_iso(time.time()), error=one_line(exc))
            raise

    def write_config(self, config: dict) -> None:
        write_text(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))

    def write_csv(self, name: str, header: list[str], rows: list[list]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        writer.writerows(rows)
        write_text(self.path / name, buffer.getvalue())


def check_out_folder(path: str | Path) -> None:
    """An output folder must be new, empty, or an earlier transferlab run (it has run.json)."""
    folder = Path(path)
    if folder.is_symlink() and not folder.exists():
        raise TransferlabError(f"{folder}: is a dangling link; choose another --out")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise TransferlabError(f"{folder}: exists and is not a folder; choose another --out")
    if (folder / "run.json").is_file() or not any(folder.iterdir()):
        return
    raise TransferlabError(f"{folder}: folder is not empty and is not a transferlab run (no run.json); "
                           "refusing to write into it: choose a new or empty --out")


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type (unless it is ours) and its message, newlines folded."""
    text = " ".join(str(exc).split())
    if isinstance(exc, TransferlabError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def read_json_object(path: Path, what: str) -> dict:
    """A JSON object from a run folder, or one line saying what is wrong with the file."""
    if not path.is_file():
        raise TransferlabError(f"{path}: {what} not found")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TransferlabError(f"{path}: {what} is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise TransferlabError(f"{path}: {what} is not a JSON object")
    return value


def load_complete_run(path: str | Path) -> RunDir:
    """Open a finished run, or explain why it cannot be used."""
    run = RunDir(path)
    status_file = run.path / "run.json"
    if not status_file.is_file():
        raise TransferlabError(f"{run.path}: not a transferlab run folder (no run.json)")
    status = read_json_object(status_file, "run status").get("status")
    if status != "complete":
        raise TransferlabError(f"{run.path}: run is not complete (status '{status}'); run it again")
    return run


MODEL_KINDS = ("probe", "finetune")
# model.json fields every kind needs, with the type each must have. A run folder is read as
# hostile: a wrong type here would otherwise surface as a traceback deep inside a loader.
_CARD_FIELDS = {"kind": str, "classes": list, "backbone": str, "resolution": int, "mean": list, "std": list}


def read_model_card(path: str | Path) -> dict:
    """model/model.json of a finished run, checked: kind, class names, resolution, mean/std."""
    run = load_complete_run(path)
    file = run.model_dir / "model.json"
    card = read_json_object(file, "model card")
    for key, kind in _CARD_FIELDS.items():
        value = card.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TransferlabError(f"{file}: field '{key}' is missing or not a {kind.__name__}")
    if card["kind"] not in MODEL_KINDS:
        raise TransferlabError(f"{file}: unknown model kind '{card['kind']}' (expected {' or '.join(MODEL_KINDS)})")
    classes = card["classes"]
    if len(classes) < 2 or not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes):
        raise TransferlabError(f"{file}: 'classes' must list at least 2 distinct class names")
    if not MIN_RESOLUTION <= card["resolution"] <= MAX_RESOLUTION:
        raise TransferlabError(f"{file}: resolution {card['resolution']} outside {MIN_RESOLUTION}..{MAX_RESOLUTION}")
    for key in ("mean", "std"):
        values = card[key]
        if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values) or \
                (key == "std" and min(values) <= 0):
            raise TransferlabError(f"{file}: '{key}' must be 3 numbers" + (" above 0" if key == "std" else ""))
    return card


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))
