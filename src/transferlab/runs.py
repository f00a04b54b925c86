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
from pathlib import Path

import yaml

from transferlab import __version__
from transferlab.atomic import write_json, write_text
from transferlab.errors import TransferlabError

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
        """Clear an earlier run's artifacts and mark this one as running."""
        if self.path.exists() and not self.path.is_dir():
            raise TransferlabError(f"{self.path}: exists and is not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        for name in ARTIFACTS:
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        self.model_dir.mkdir()
        self.plots_dir.mkdir()
        self._started = time.time()
        write_json(self.path / "run.json", {"kind": kind, "status": "running", "version": __version__,
                                            "started": _iso(self._started)})

    def resume(self, kind: str) -> None:
        """Mark a killed run as running again, keeping what it wrote (checkpoints, logs)."""
        self._started = time.time()
        write_json(self.path / "run.json", {"kind": kind, "status": "running", "version": __version__,
                                            "started": _iso(self._started), "resumed": True})

    def finish(self, kind: str) -> None:
        write_json(self.path / "run.json", {"kind": kind, "status": "complete", "version": __version__,
                                            "started": _iso(self._started), "finished": _iso(time.time())})

    def write_config(self, config: dict) -> None:
        write_text(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))

    def write_csv(self, name: str, header: list[str], rows: list[list]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        writer.writerows(rows)
        write_text(self.path / name, buffer.getvalue())


def load_complete_run(path: str | Path) -> RunDir:
    """Open a finished run, or explain why it cannot be used."""
    run = RunDir(path)
    status_file = run.path / "run.json"
    if not status_file.is_file():
        raise TransferlabError(f"{run.path}: not a transferlab run folder (no run.json)")
    status = json.loads(status_file.read_text(encoding="utf-8")).get("status")
    if status != "complete":
        raise TransferlabError(f"{run.path}: run is not complete (status '{status}'); run it again")
    return run


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))
