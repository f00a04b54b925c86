"""Progress for fine-tuning that keeps stdout for results: bars on stderr, only on a terminal.

Lightning's TQDMProgressBar writes to stdout and names epochs from 0; a pipe or a log file
then fills with carriage-return bar frames between the result lines. Here the bars go to
stderr, are off when stderr is not a terminal, and say "stage 2 epoch 1/6".
"""

from __future__ import annotations

import contextlib
import sys

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf


def bars_enabled(progress: bool) -> bool:
    """Whether to draw bars: asked for, and stderr is a terminal (not a pipe or a log file)."""
    stream = sys.stderr
    return bool(progress) and stream is not None and hasattr(stream, "isatty") and stream.isatty()


class StderrProgressBar(TQDMProgressBar):
    """Lightning's tqdm bars on stderr, epochs counted from 1 (and out of the stage's maximum)."""

    def __init__(self, stage_label: str = "", refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate, leave=False)
        self.stage_label = stage_label

    # Lightning (2.6) builds every bar with file=sys.stdout, read when the bar is made:
    # pointing sys.stdout at stderr for that moment sends the bar there, and nothing else.
    def init_sanity_tqdm(self):
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_sanity_tqdm()

    def init_train_tqdm(self):
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_train_tqdm()

    def init_validation_tqdm(self):
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_validation_tqdm()

    def init_predict_tqdm(self):
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_predict_tqdm()

    def init_test_tqdm(self):
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_test_tqdm()

    def on_train_epoch_start(self, trainer, *_) -> None:
        # Lightning's own version first draws "Epoch 0" (counted from 0): a frame we replace.
        bar = self.train_progress_bar
        bar.reset(total=convert_inf(self.total_train_batches))
        bar.initial = 0
        prefix = f"{self.stage_label} " if self.stage_label else ""
        bar.set_description(f"{prefix}epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")


def progress_callbacks(progress: bool, stage_label: str = "") -> tuple[list, bool]:
    """(callbacks, enable_progress_bar) for a Trainer: our bar where bars are wanted, none otherwise."""
    if bars_enabled(progress):
        return [StderrProgressBar(stage_label)], True
    return [], False
