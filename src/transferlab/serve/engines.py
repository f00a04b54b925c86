"""Inference engines for serving: PyTorch (any run) and ONNX Runtime (exported runs).

Both take the same uint8 (B, 3, R, R) batches that `preprocess` makes, so decoding,
resizing and cropping are shared; each engine normalises and runs its own model.
Nothing is unpickled: safetensors + skops for PyTorch, an ONNX protobuf for ONNX Runtime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from transferlab.errors import TransferlabError
from transferlab.export import INPUT_NAME, OUTPUT_NAME, model_fingerprint
from transferlab.predict import load_predictor
from transferlab.runs import load_complete_run

ENGINES = ("torch", "onnx")


class Predictor(Protocol):
    """What the server needs from a model: labels, input size, and uint8 batch -> probabilities."""

    engine: str
    model_id: str
    classes: list[str]
    resolution: int
    interpolation: str

    def predict_uint8(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, R, R) uint8 -> (B, n_classes) float32 probabilities."""
        ...


def _model_meta(run_path: Path) -> dict:
    meta = json.loads((run_path / "model" / "model.json").read_text(encoding="utf-8"))
    if meta.get("kind") not in ("probe", "finetune"):
        raise TransferlabError(f"{run_path}: model kind '{meta.get('kind')}' cannot be served")
    return meta


def model_id(run_path: Path) -> str:
    """The run's folder name plus a hash of its model files: changes whenever the model does."""
    return f"{run_path.resolve().name}-{model_fingerprint(run_path)}"


class TorchEngine:
    """The run's own model (probe or fine-tuned) in PyTorch, at the run's precision (fp32 or bf16)."""

    engine = "torch"

    def __init__(self, run_path: str | Path):
        self._predictor = load_predictor(run_path)
        path = Path(run_path)
        self.model_id = model_id(path)
        self.classes = list(self._predictor.classes)
        self.resolution = int(self._predictor.resolution)
        self.interpolation = self._predictor.interpolation

    def predict_uint8(self, batch: np.ndarray) -> np.ndarray:
        return self._predictor.predict_tensor(torch.from_numpy(batch)).astype(np.float32)


def onnx_model_path(run_path: str | Path) -> Path:
    """model/model.onnx of a complete run, checked to be exported from the run's current model."""
    run = load_complete_run(run_path)
    path = run.model_dir / "model.onnx"
    if not path.is_file():
        raise TransferlabError(
            f"{run.path}: no ONNX model ({path} is missing); run `transferlab export {run.path} --format onnx` first")
    record_file = run.model_dir / "export.json"
    record = json.loads(record_file.read_text(encoding="utf-8")).get("onnx", {}) if record_file.is_file() else {}
    if record.get("source_model") != model_fingerprint(run.path):
        raise TransferlabError(
            f"{path} was not exported from this run's current model; "
            f"run `transferlab export {run.path} --format onnx` again")
    return path


class OnnxEngine:
    """ONNX Runtime on model/model.onnx (written by `export_run`), fp32, CPU."""

    engine = "onnx"

    def __init__(self, run_path: str | Path, threads: int | None = None):
        import onnxruntime as ort  # local: the torch engine does not need it

        path = Path(run_path)
        model_file = onnx_model_path(path)
        meta = _model_meta(path)
        self.model_id = model_id(path)
        self.classes = list(meta["classes"])
        self.resolution = int(meta["resolution"])
        self.interpolation = str(meta.get("interpolation", "bicubic"))
        # Same arithmetic as FeatureExtractor.normalise: float32 (x - 255*mean) / (255*std).
        self._mean = (np.asarray(meta["mean"], dtype=np.float32) * np.float32(255.0)).reshape(1, 3, 1, 1)
        self._std = (np.asarray(meta["std"], dtype=np.float32) * np.float32(255.0)).reshape(1, 3, 1, 1)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1  # one batch at a time: the micro-batcher serialises calls
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No spin-waiting between ops: the decode threads and the event loop need the same
        # cores, and on a busy machine a spinning pool measured ~1.5x slower.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])

    def predict_uint8(self, batch: np.ndarray) -> np.ndarray:
        x = (batch.astype(np.float32) - self._mean) / self._std
        return self._session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].astype(np.float32, copy=False)


def check_engine(run_path: str | Path, engine: str) -> None:
    """Cheap checks before start-up, so `serve` fails with one line instead of in the lifespan."""
    if engine not in ENGINES:
        raise TransferlabError(f"unknown engine '{engine}': choose from {', '.join(ENGINES)}")
    run = load_complete_run(run_path)
    _model_meta(run.path)
    if engine == "onnx":
        onnx_model_path(run.path)


def load_engine(run_path: str | Path, engine: str = "torch") -> Predictor:
    check_engine(run_path, engine)
    return TorchEngine(run_path) if engine == "torch" else OnnxEngine(run_path)
