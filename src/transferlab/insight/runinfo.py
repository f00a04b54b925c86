"""Read finished run folders (run.json, config.yaml, metrics.json) for comparisons and rankings.

Only what `compare` and `rank` need is read; a run folder that is missing, unfinished or
malformed raises TransferlabError naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from transferlab.errors import TransferlabError
from transferlab.runs import load_complete_run, read_json_object
from transferlab.safe_yaml import read_yaml_file, short_repr


@dataclass
class RunInfo:
    path: Path
    kind: str  # run.json "kind": "probe" (or "finetune" later)
    finished: str  # ISO timestamp from run.json, "" if absent
    config: dict
    metrics: dict

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def backbone(self) -> str:
        return str(self.config.get("backbone", "?"))

    @property
    def data_root(self) -> Path | None:
        # Probe runs keep it in config.yaml; fine-tuned runs keep a re-runnable recipe there
        # and the data in metrics.json's summary.
        data = self.config.get("data") or self.metrics.get("summary", {}).get("data")
        return resolve_folder(data) if data else None

    @property
    def evaluated_split(self) -> str:
        """'test' where the run had a test folder, else 'val': the split headline figures come from."""
        return "test" if isinstance(self.metrics.get("test"), dict) else "val"

    @property
    def method(self) -> str:
        if self.kind != "probe":
            return self.kind
        method = str(self.config.get("classifier", "?"))
        if self.config.get("grid"):
            method += " + grid"
        if self.config.get("ternary"):
            method += " + ternary"
        return method

    def split_metrics(self, split: str) -> dict:
        value = self.metrics.get(split)
        return value if isinstance(value, dict) else {}


def resolve_folder(path: str | os.PathLike) -> Path:
    """Absolute, symlink-free form of a folder path, so two spellings of one folder compare equal.

    Run configs store the path as the user typed it (often relative to where the command ran);
    it is resolved against the current directory, which is where `runs/` is looked for too.
    """
    return Path(path).expanduser().resolve()


# The config.yaml fields read here, and their types: checked once, so str() and int() of them
# later show what a run wrote, never a planted structure (or a 40 MB rendering of one).
_CONFIG_TYPES = {"backbone": (str,), "classifier": (str,), "data": (str, type(None)), "resolution": (int, type(None))}


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise TransferlabError(f"{path}: not found (is this a transferlab run folder?)")
    # Plain data only: anchors and aliases (a YAML bomb), special files and oversized ones are refused.
    data = read_yaml_file(path, "run config")
    if not isinstance(data, dict):
        raise TransferlabError(f"{path}: expected a mapping at the top level")
    for name, types in _CONFIG_TYPES.items():
        value = data.get(name)
        if name in data and (isinstance(value, bool) or not isinstance(value, types)):
            raise TransferlabError(f"{path}: field '{name}' has the wrong type ({short_repr(value)})")
    return data


def _read_json(path: Path) -> dict:
    return read_json_object(path, "run file")


def read_run(path: str | os.PathLike) -> RunInfo:
    """A complete run's kind, configuration and metrics."""
    run = load_complete_run(path)
    status = _read_json(run.path / "run.json")
    return RunInfo(
        path=run.path,
        kind=str(status.get("kind", "probe")),
        finished=str(status.get("finished", "")),
        config=_read_yaml(run.path / "config.yaml"),
        metrics=_read_json(run.path / "metrics.json"),
    )


def find_runs_for_data(data: str | os.PathLike, runs_root: str | os.PathLike = "runs") -> list[RunInfo]:
    """Complete runs under `runs_root` (one level down) whose config `data` is the same folder.

    Folders that are not finished runs are passed over silently: `runs/` also holds runs in
    progress and unrelated experiments.
    """
    root = Path(runs_root)
    if not root.is_dir():
        return []
    target = resolve_folder(data)
    found = []
    for candidate in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            info = read_run(candidate)
        except TransferlabError:
            continue
        if info.data_root == target:
            found.append(info)
    return found
