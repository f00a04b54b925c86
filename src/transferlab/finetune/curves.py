"""Training curves from Lightning's CSV logs: loss and accuracy per epoch, stages marked."""

from __future__ import annotations

import csv
from pathlib import Path

from transferlab.plotting import plt
from transferlab.plotting import save_figure as _save

METRICS_FILE = "metrics.csv"


def stage_log_dir(logs_dir: Path, stage: int) -> Path:
    return logs_dir / f"stage{stage}" / "version_0"


def keep_partial_log(log_dir: Path) -> Path | None:
    """Before a resumed stage logs again: move its metrics.csv aside as metrics.partN.csv.

    Lightning's CSV logger deletes an existing metrics.csv when it opens the folder, which
    would lose the epochs logged before the kill. A rename is atomic, so a second kill
    loses nothing either.
    """
    current = log_dir / METRICS_FILE
    if not current.is_file():
        return None
    index = 1 + max((int(p.stem.removeprefix("metrics.part")) for p in log_dir.glob("metrics.part*.csv")
                     if p.stem.removeprefix("metrics.part").isdigit()), default=0)
    target = log_dir / f"metrics.part{index}.csv"
    current.replace(target)
    return target


def _log_files(log_dir: Path) -> list[Path]:
    """A stage's logs in the order they were written: parts from earlier processes, then the current."""
    parts = sorted((p for p in log_dir.glob("metrics.part*.csv") if p.stem.removeprefix("metrics.part").isdigit()),
                   key=lambda p: int(p.stem.removeprefix("metrics.part")))
    return parts + [p for p in (log_dir / METRICS_FILE,) if p.is_file()]


def read_epoch_metrics(logs_dir: Path, n_stages: int) -> list[dict]:
    """One row per epoch across stages: stage, epoch (global), train/val loss and accuracy.

    A resumed stage has several log files; an epoch logged in more than one (the epoch a
    kill interrupted, redone after the resume) keeps the later values.
    """
    rows: list[dict] = []
    for stage in range(1, n_stages + 1):
        per_epoch: dict[int, dict] = {}
        for path in _log_files(stage_log_dir(logs_dir, stage)):
            with open(path, newline="") as handle:
                for record in csv.DictReader(handle):
                    epoch = int(float(record.get("epoch") or 0))
                    entry = per_epoch.setdefault(epoch, {"stage": stage})
                    for key in ("train_loss_epoch", "train_acc", "val_loss", "val_acc", "elapsed_s"):
                        if record.get(key):
                            entry[key] = float(record[key])
        rows.extend(per_epoch[e] for e in sorted(per_epoch))
    for index, row in enumerate(rows):
        row["epoch"] = index + 1
    return rows


def plot_training_curves(logs_dir: Path, n_stages: int, out_png: Path) -> Path | None:
    rows = read_epoch_metrics(logs_dir, n_stages)
    if not rows:
        return None
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    try:
        epochs = [r["epoch"] for r in rows]
        for ax, keys, label in ((loss_ax, ("train_loss_epoch", "val_loss"), "loss"),
                                (acc_ax, ("train_acc", "val_acc"), "accuracy")):
            for key in keys:
                points = [(r["epoch"], r[key]) for r in rows if key in r]
                if points:
                    ax.plot(*zip(*points), marker="o", label=key.replace("_epoch", "").replace("_", " "))
            for previous, current in zip(rows, rows[1:]):
                if current["stage"] != previous["stage"]:
                    ax.axvline(current["epoch"] - 0.5, color="grey", linestyle="--", linewidth=1)
                    ax.text(current["epoch"] - 0.4, ax.get_ylim()[1], f"stage {current['stage']}", fontsize=7,
                            va="top", color="grey")
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.set_xticks(epochs)
            ax.legend(fontsize=8)
        fig.tight_layout()
        return _save(fig, out_png)
    finally:
        plt.close(fig)
