"""What a study reads from one finished run folder, and the variant.json a study leaves in it.

A run folder is hostile input: every file is read with a size bound, every value is checked
for its type, and anything malformed is one TransferlabError line naming the file.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from transferlab.data.split import load_split
from transferlab.errors import TransferlabError
from transferlab.insight.runinfo import read_run
from transferlab.runs import read_json_object, read_predictions
from transferlab.safe_yaml import short_repr

VARIANT_FILE = "variant.json"
LABEL_MAX_CHARS = 120


@dataclass
class RunFigures:
    """One run's figures on one split (val by default)."""

    run_dir: Path
    kind: str  # "probe" or "finetune"
    split: str
    accuracy: float
    macro_f1: float
    per_class: dict[str, float]  # class -> F1; classes with no image in the split are left out
    beats: int | None  # classes above the baseline's F1 on this split, when the run had a baseline
    of: int | None
    seconds: float | None  # metrics.json timings.total
    parameters: int | None  # numbers in model/*.safetensors (weights and buffers)
    n_val: int  # images scored on `split`
    train_per_class: float | None  # mean training images per class (split.json)
    resolution: int | None  # the run's input size, where its config.yaml records one
    correct: dict[str, bool]  # image path -> predicted right, on `split`
    config: dict  # config.yaml as the run wrote it (checked to be a mapping): what each setting was

    def setting(self, key: str):
        """The run's value of a setting key, e.g. "classifier" or "stages.2.lr" (stages count from 1); None if absent."""
        value: object = self.config
        for part in key.split("."):
            if isinstance(value, dict):
                value = value.get(part)
            elif isinstance(value, list) and part.isdigit() and 1 <= int(part) <= len(value):
                value = value[int(part) - 1]
            else:
                return None
        return plain_value(value)


def plain_value(value, limit: int = 2000):
    """`value` when it is small JSON data (a summary goes into study.json); None otherwise.

    config.yaml is read as YAML, which also yields dates, sets and bytes, and may hold a
    megabyte of list: neither belongs in a study's summary.
    """
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None
    return value if len(text) <= limit else None


def finite(value) -> float | None:
    """A finite number as float; None for anything else (bool, text, NaN, a planted structure)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _score(metrics_file: Path, result: dict, key: str) -> float:
    value = finite(result.get(key))
    if value is None or not 0.0 <= value <= 1.0:
        raise TransferlabError(f"{metrics_file}: '{key}' must be a number from 0 to 1, "
                               f"got {short_repr(result.get(key))}")
    return value


def _per_class(metrics_file: Path, result: dict) -> dict[str, float]:
    per_class = result.get("per_class")
    if not isinstance(per_class, dict):
        raise TransferlabError(f"{metrics_file}: 'per_class' must be a mapping of class -> scores")
    absent = result.get("absent_classes")
    absent = set(absent) if isinstance(absent, list) and all(isinstance(a, str) for a in absent) else set()
    scores = {}
    for name, entry in per_class.items():
        if name in absent:  # no image of it in the split: no F1 to average (as macro_f1 does)
            continue
        if not isinstance(entry, dict):
            raise TransferlabError(f"{metrics_file}: per_class entry {short_repr(name)} is not a mapping")
        scores[str(name)] = _score(metrics_file, entry, "f1")
    return scores


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def count_parameters(model_dir: Path) -> int | None:
    """Numbers stored in model/*.safetensors, from the file headers only (no tensor is loaded).

    A probe saves its backbone there (its classical head is in classifier.skops and not
    counted); a fine-tuned run its whole network. None when the folder holds no such file.
    """
    if not model_dir.is_dir() or model_dir.is_symlink():
        return None
    files = sorted(p for p in model_dir.glob("*.safetensors") if p.is_file() and not p.is_symlink())
    if not files:
        return None
    total = 0
    for file in files:
        try:
            with safe_open(str(file), framework="numpy") as handle:
                for name in handle.keys():  # noqa: SIM118  (the handle is not iterable)
                    total += math.prod(handle.get_slice(name).get_shape())
        except (SafetensorError, OSError) as exc:
            raise TransferlabError(f"{file}: not a valid safetensors file ({str(exc).splitlines()[0][:120]})") \
                from None
    return total


def _train_per_class(run_dir: Path) -> float | None:
    """Mean training images per class, from split.json; None when the run has none."""
    path = run_dir / "split.json"
    if not path.is_file():
        return None
    split = load_split(path)  # bounded and checked: one line on anything malformed
    counts = Counter(label for _, label in split["train"])
    return sum(counts.values()) / len(split["classes"])


def read_correctness(run_path: Path, split: str) -> dict[str, bool]:
    """The run's predictions.csv rows of `split`: image path -> whether the prediction was right."""
    return {row.path: row.true == row.predicted for row in read_predictions(run_path, split)}


def read_run_figures(run_dir: str | os.PathLike, split: str = "val") -> RunFigures:
    """A complete run's figures on `split`, each checked; one line naming the file otherwise."""
    info = read_run(run_dir)  # complete runs only; run.json, config.yaml, metrics.json bounded and checked
    metrics_file = info.path / "metrics.json"
    result = info.metrics.get(split)
    if not isinstance(result, dict):
        raise TransferlabError(f"{metrics_file}: no '{split}' results")
    baseline = result.get("baseline") if isinstance(result.get("baseline"), dict) else {}
    timings = info.metrics.get("timings") if isinstance(info.metrics.get("timings"), dict) else {}
    n_val = _count(result.get("n"))
    if n_val is None or n_val == 0:
        raise TransferlabError(f"{metrics_file}: '{split}' must give 'n', the number of images scored")
    resolution = info.config.get("resolution")
    return RunFigures(
        run_dir=info.path, kind=info.kind, split=split,
        accuracy=_score(metrics_file, result, "accuracy"), macro_f1=_score(metrics_file, result, "macro_f1"),
        per_class=_per_class(metrics_file, result),
        beats=_count(baseline.get("beats")), of=_count(baseline.get("of")),
        seconds=finite(timings.get("total")),
        parameters=count_parameters(info.path / "model"),
        n_val=n_val,
        train_per_class=_train_per_class(info.path),
        resolution=resolution if isinstance(resolution, int) else None,
        correct=read_correctness(info.path, split),
        config=info.config,
    )


# --------------------------------------------------------------------------- variant.json


def printable(text: str, limit: int = LABEL_MAX_CHARS) -> str:
    """A label fit for a terminal table: no control characters, bounded length."""
    text = text if text.isprintable() else ascii(text)[1:-1]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_variant_file(run_dir: str | os.PathLike) -> dict | None:
    """variant.json of a study's run (None when the run has none), its fields checked.

    {"study": str, "variant": str, "settings": {key: value}, "seed": int, "reference": bool}
    """
    path = Path(run_dir) / VARIANT_FILE
    if not path.exists() and not path.is_symlink():
        return None
    data = read_json_object(path, "study variant file")
    checks = {"study": str, "variant": str, "settings": dict, "seed": int, "reference": bool}
    for key, kind in checks.items():
        value = data.get(key)
        if value is None and key != "variant":
            continue  # only the label is required: the rest is shown when present
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TransferlabError(f"{path}: '{key}' must be a JSON {kind.__name__}, got {short_repr(value)}")
    return {"study": printable(data.get("study") or ""), "variant": printable(data["variant"]),
            "settings": data.get("settings") or {}, "seed": data.get("seed"),
            "reference": bool(data.get("reference"))}
