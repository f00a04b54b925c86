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
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from transferlab import __version__
from transferlab.atomic import write_json, write_text
from transferlab.card import MODEL_FILES, MODEL_KINDS, ModelCard
from transferlab.errors import TransferlabError, one_line
from transferlab.safe_yaml import dump_yaml

ARTIFACTS = (
    "run.json", "config.yaml", "split.json", "metrics.json", "predictions.csv", "skipped.csv",
    "classification_report_val.txt", "classification_report_test.txt",
    "baseline.txt", "report.html", "report.json", "model", "plots", "checkpoints", "logs", "finetune_state.json",
)


class RunPaths:
    """Where a run folder keeps its parts."""

    path: Path

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"


class RunDir(RunPaths):
    """A run folder being written: start, status, config, CSV files."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

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

    def mark_stopped(self, kind: str, status: str, reason: str) -> None:
        """Record why a run ended early (e.g. "pruned" by a search), replacing `recording`'s "failed"."""
        if status not in RUN_STATUSES or status in ("running", "complete"):
            raise ValueError(f"not a stopped status: {status}")
        try:
            started = read_json_object(self.path / "run.json", "run status").get("started")
        except TransferlabError:
            started = None
        write_json(self.path / "run.json", {"kind": kind, "status": status, "version": __version__,
                                            "started": started or _iso(time.time()),
                                            "stopped": _iso(time.time()), "reason": reason})

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
        write_text(self.path / "config.yaml", dump_yaml(config))  # never anchors: our own loader refuses them

    def write_csv(self, name: str, header: list[str], rows: list[list]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        writer.writerows(rows)
        write_text(self.path / name, buffer.getvalue())


def check_out_folder(path: str | Path, reads: Iterable[str | Path | None] = ()) -> None:
    """An output folder must be new, empty, or an earlier transferlab run, and apart from
    everything the command reads (`reads`: input runs, weight files; None is skipped).

    "A run" means its run.json reads as a transferlab status (a known kind and status), not
    merely that a file of that name exists; and a link is refused, since clearing the run's
    artifacts would then clear whatever folder it points at. An --out that is, holds or lies
    inside an input would be cleared before that input is read: `ensemble A B --out B` emptied
    run B and then failed for want of it.
    """
    folder = Path(path)
    check_apart(folder, reads)
    if folder.is_symlink():
        raise TransferlabError(f"{folder}: is a link (to {os.path.realpath(folder)}); give the real folder as --out")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise TransferlabError(f"{folder}: exists and is not a folder; choose another --out")
    if not any(folder.iterdir()) or _is_run_status(folder / "run.json"):
        return
    raise TransferlabError(f"{folder}: folder is not empty and is not a transferlab run (no valid run.json); "
                           "refusing to write into it: choose a new or empty --out")


def real_path(path: str | Path) -> Path:
    """Where a path the user gave really is: `~` expanded (as the readers expand it), links resolved."""
    return Path(os.path.realpath(Path(path).expanduser()))


def check_apart(folder: str | Path, reads: Iterable[str | Path | None]) -> None:
    """Refuse an output folder that is, holds or lies inside something the command reads: an input
    run or weights (cleared before they are read), or the image folder (a run's plots inside it
    would be scanned as images next time, and a folder inside a class folder becomes a class)."""
    folder = Path(folder)
    out = real_path(folder)
    for source in reads:
        if source is None or str(source) == "":
            continue
        read = real_path(source)
        if out == read or out in read.parents or read in out.parents:
            relation = "is" if out == read else "holds" if out in read.parents else "lies inside"
            raise TransferlabError(f"{folder}: --out {relation} {source}, which this command reads: choose an "
                                   "--out apart from its inputs (runs, weights, image folders)")


def check_output_folder(folder: str | Path, what: str, ours: Callable[[Path], bool],
                        reads: Iterable[str | Path | None] = ()) -> None:
    """A folder a command writes its own named files into (explain's overlays, embed's maps): new,
    empty, or holding only such files (`ours`), and apart from what it reads. Anything else there
    is a user's: same-named files would be replaced, and PNGs in an image folder become images."""
    folder = Path(folder)
    check_apart(folder, reads)
    if folder.is_symlink():
        raise TransferlabError(f"{folder}: is a link; give the real folder as --out")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise TransferlabError(f"{folder}: exists and is not a folder; choose another --out")
    foreign = next((p for p in folder.iterdir() if p.is_symlink() or not ours(p)), None)
    if foreign is not None:
        raise TransferlabError(f"{folder}: holds {foreign.name}, which {what} did not write; refusing to write "
                               "into it: choose a new or empty --out")


MEMBER_KINDS = ("probe", "finetune")  # what an ensemble may combine
MEMBER_NAME = re.compile(r"m[0-9]{2}")  # model/members/m00, m01, ...: no path can hide in it

# "pruned": a search stopped the run early on purpose (its trial could not beat the others).
RUN_STATUSES = ("running", "complete", "failed", "interrupted", "pruned")


def _is_run_status(path: Path) -> bool:
    try:
        status = read_json_object(path, "run status")
    except TransferlabError:
        return False
    return status.get("kind") in MODEL_KINDS and status.get("status") in RUN_STATUSES and "version" in status


# Run-folder JSON files are small; a larger one is a mistake or an attack (a sparse 8 GiB
# model.json passes is_file() and would be read whole).
MAX_JSON_BYTES = 64 * 1024 * 1024


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of `path`, never more than `limit` read (a hostile file may be any size): one line
    naming it when it is larger. OSError is the caller's to word."""
    with open(path, "rb") as handle:
        raw = handle.read(limit + 1)
    if len(raw) > limit:
        raise TransferlabError(f"{path}: {what} is larger than {limit >> 20} MiB")
    return raw


def read_json_object(path: Path, what: str) -> dict:
    """A JSON object from a run folder, or one line saying what is wrong with the file."""
    if not path.is_file():
        raise TransferlabError(f"{path}: {what} not found")
    try:
        value = json.loads(read_bounded(path, MAX_JSON_BYTES, what).decode("utf-8"))
    # ValueError: besides JSONDecodeError (and UnicodeDecodeError), an integer of more than
    # 4300 digits, which json.loads refuses with a plain ValueError.
    except (OSError, ValueError, RecursionError) as exc:
        raise TransferlabError(f"{path}: {what} is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise TransferlabError(f"{path}: {what} is not a JSON object")
    return value


def run_status(path: str | Path) -> str | None:
    """The status in a run folder's run.json ("complete", "running", ...), or None when unreadable."""
    try:
        status = read_json_object(Path(path) / "run.json", "run status").get("status")
    except TransferlabError:
        return None
    return status if isinstance(status, str) else None


def load_complete_run(path: str | Path) -> RunDir:
    """Open a finished run, or explain why it cannot be used."""
    run = RunDir(path)
    status_file = run.path / "run.json"
    if not status_file.is_file():
        raise TransferlabError(f"{run.path}: not a transferlab run folder (no run.json)" + _auto_hint(run.path))
    status = read_json_object(status_file, "run status").get("status")
    if status != "complete":
        raise TransferlabError(f"{run.path}: run is not complete (status '{status}'); run it again")
    return run


def _auto_hint(folder: Path) -> str:
    """For the folder `transferlab auto` writes (OUT/auto.json, OUT/result.json): the run it chose."""
    if not (folder / "auto.json").is_file():
        return ""
    try:
        result = read_json_object(folder / "result.json", "auto result")
    except TransferlabError:
        return "; it is a `transferlab auto` folder that has not finished: its runs are under runs/"
    run, tta = result.get("run"), result.get("tta")
    if not isinstance(run, str):
        return ""
    run = os.path.normpath(os.path.join(os.path.abspath(folder), run))  # relative to the folder (older: absolute)
    flag = f" with --tta {tta}" if isinstance(tta, str) and tta != "none" else ""
    return f"; it is a `transferlab auto` folder: the model it chose is {run[:300]!r}{flag[:40]}"


PREDICTION_COLUMNS = ("path", "split", "true", "predicted")
# predictions.csv holds one short row per image: 256 MiB is millions of images, not a real run.
MAX_PREDICTIONS_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)  # slots: a run of a million images is a million rows
class PredictionRow:
    path: str  # as the run saw the image: absolute, or relative to where it ran
    split: str
    true: str
    predicted: str


def iter_predictions(run_path: str | Path, split: str | None = None, missing_ok: bool = False
                     ) -> Iterator[PredictionRow]:
    """The run's predictions.csv, row by row (every split, or `split`'s): the one reader of that file.

    A run folder is hostile until checked: no more than MAX_PREDICTIONS_BYTES is read, and every
    row must hold the four columns; anything else is one line naming the file. With `missing_ok`,
    a run without the file gives no rows."""
    path = Path(run_path) / "predictions.csv"
    if not path.is_file():
        if missing_ok:
            return
        raise TransferlabError(f"{path}: predictions file not found")
    try:
        text = read_bounded(path, MAX_PREDICTIONS_BYTES, "predictions file").decode("utf-8")
        reader = csv.reader(io.StringIO(text, newline=""))
        del text
        header = next(reader, [])
        missing = [c for c in PREDICTION_COLUMNS if c not in header]
        if missing:
            raise TransferlabError(f"{path}: predictions file lacks the column(s) {', '.join(missing)}")
        columns = [header.index(c) for c in PREDICTION_COLUMNS]
        for row in reader:
            if not row:
                continue  # a blank line
            if len(row) <= max(columns):
                raise TransferlabError(f"{path}: line {reader.line_num} has {len(row)} columns")
            if split is None or row[columns[1]] == split:
                yield PredictionRow(*(row[i] for i in columns))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TransferlabError(f"{path}: predictions file is not readable CSV ({type(exc).__name__})") from None


def read_predictions(run_path: str | Path, split: str | None = None, missing_ok: bool = False
                     ) -> list[PredictionRow]:
    """Every row `iter_predictions` gives, as a list."""
    return list(iter_predictions(run_path, split, missing_ok))


def image_on_disk(run: RunPaths, name: str) -> Path | None:
    """A predictions.csv path as a file that exists, or None. Paths are as the run saw them:
    relative to where it ran, usually the folder holding runs/ (so that is tried too).
    os.path.isfile, not Path.is_file: a hostile name too long or unreadable is False, not a traceback."""
    return next((p for p in (Path(name), run.path.resolve().parent.parent / name) if os.path.isfile(p)), None)


@dataclass(frozen=True)
class OpenRun(RunPaths):
    """A finished run, opened for use: its folder and its checked model card."""

    path: Path
    card: ModelCard


def open_run(path: str | Path) -> OpenRun:
    """The one reader of run folders: a complete run with a valid model card, or one line why not."""
    run = load_complete_run(path)
    file = run.model_dir / "model.json"
    return OpenRun(run.path, ModelCard.from_dict(read_json_object(file, "model card"), str(file)))


def check_no_links(folder: Path, names: Iterable[str]) -> None:
    """`folder` and its `names` are no links: where transferlab writes (export into a run's model
    folder) or where only its own copies may be (an ensemble's members). Reading a run whose model
    files are links (DVC, git-annex) is allowed: it is no riskier than reading the run at all."""
    for target in (folder, *(folder / name for name in names)):
        if target.is_symlink():
            raise TransferlabError(f"{target}: is a link; a run's model folder holds only regular files")


@dataclass(frozen=True)
class OpenModel:
    """A model folder inside a run, opened for use: an ensemble's member (model/members/<name>/).

    It offers what the model loaders read of an OpenRun (`path` for messages, `card`,
    `model_dir`), so one loader serves a run and a member alike.
    """

    path: Path
    card: ModelCard
    model_dir: Path


def open_member(run: OpenRun, name: str) -> OpenModel:
    """Member `name` of an ensemble run, its card checked; a member is never itself an ensemble."""
    if not isinstance(name, str) or not MEMBER_NAME.fullmatch(name):
        raise TransferlabError(f"{run.model_dir / 'model.json'}: field 'members' holds {repr(name)[:60]}, "
                               "not a member name")
    members = run.model_dir / "members"
    folder = members / name
    if members.is_symlink() or folder.is_symlink() or not folder.is_dir():
        raise TransferlabError(f"{folder}: ensemble member folder missing (or a link)")
    # `transferlab ensemble` copies regular files only: a link would load a model from outside the run.
    check_no_links(folder, MODEL_FILES)
    file = folder / "model.json"
    card = ModelCard.from_dict(read_json_object(file, "model card"), str(file))
    if card.kind not in MEMBER_KINDS:
        raise TransferlabError(f"{file}: an ensemble member must be a probe or fine-tuned model, not '{card.kind}'")
    if card.classes != run.card.classes:
        raise TransferlabError(f"{file}: the member's classes differ from the ensemble's")
    return OpenModel(folder, card, folder)


def open_model(source: "str | Path | OpenRun | OpenModel") -> "OpenRun | OpenModel":
    """A run folder path, opened; an OpenRun or OpenModel, as it is."""
    return source if isinstance(source, (OpenRun, OpenModel)) else open_run(source)


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))
