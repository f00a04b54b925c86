"""Predictions from a finished run folder, whatever kind of run made it.

`load_predictor(run)` rebuilds the model from `model/` alone (no pickle, no Lightning, no
matplotlib); `predict_paths`, `predict_images` classify files, PIL images or arrays.
"""

from __future__ import annotations

from pathlib import Path

from transferlab.inference.ensemble_network import EnsemblePredictor
from transferlab.inference.finetune_predictor import FinetunePredictor
from transferlab.inference.predictor import Prediction, Predictor
from transferlab.inference.probe_predictor import ProbePredictor
from transferlab.runs import open_run

PREDICTORS: dict[str, type[Predictor]] = {"probe": ProbePredictor, "finetune": FinetunePredictor,
                                          "ensemble": EnsemblePredictor}


def load_predictor(run_path: str | Path, tta: str | None = None) -> Predictor:
    """The right predictor for a run folder, chosen by its model card's kind; `tta`: a
    test-time augmentation mode to use instead of the card's."""
    return PREDICTORS[open_run(run_path).card.kind](run_path, tta=tta)


def predictions_csv(results: list[Prediction]) -> list[list]:
    """Rows for a CSV: path, predicted class, its probability, error, then top-k as class:p."""
    rows = []
    for r in results:
        best = r.top[0] if r.top else ("", float("nan"))
        rows.append([str(r.path), best[0], "" if r.error else f"{best[1]:.5f}", r.error or "",
                     " ".join(f"{c}:{p:.5f}" for c, p in r.top)])
    return rows


__all__ = ["PREDICTORS", "Prediction", "Predictor", "load_predictor", "predictions_csv"]
