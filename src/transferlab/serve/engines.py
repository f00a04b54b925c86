"""Inference engines for serving: PyTorch (any run); ONNX Runtime and OpenVINO (exported runs).

Both take the same uint8 (B, 3, R, R) batches that `preprocess` makes, so decoding,
resizing and cropping are shared; each engine normalises and runs its own model.
Nothing is unpickled: safetensors + skops for PyTorch, a self-contained ONNX protobuf
(size-bounded, no external-data references) for ONNX Runtime and OpenVINO.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from transferlab.card import ModelCard
from transferlab.errors import TransferlabError
from transferlab.inference.ensemble_network import check_ensemble
from transferlab.inference.export import INPUT_NAME, OUTPUT_NAME, file_sha256, model_fingerprint
from transferlab.inference.predict import load_predictor
from transferlab.openvino_rt import ImageInput, available, compile_onnx, read_onnx_file
from transferlab.options import tta_mode
from transferlab.runs import check_no_links, load_complete_run, open_run, read_json_object

class Predictor(Protocol):
    """What the server needs from a model: labels, input size, and uint8 batch -> probabilities."""

    engine: str
    model_id: str
    fingerprint: str
    classes: list[str]
    resolution: int
    interpolation: str
    tta: str  # test-time augmentation the model's predictions average over

    def predict_uint8(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, R, R) uint8 -> (B, n_classes) float32 probabilities."""
        ...


def model_card(run_path: Path) -> ModelCard:
    """model/model.json of a run to serve, checked by the one run reader (kind, classes, sizes)."""
    return open_run(run_path).card


def model_id(run_path: Path, fingerprint: str) -> str:
    """The run's folder name plus a hash of its model files: changes whenever the model does."""
    return f"{run_path.resolve().name}-{fingerprint}"


def read_export_record(model_dir: Path) -> dict:
    """model/export.json (one entry per exported format), or {} when nothing was exported."""
    path = model_dir / "export.json"
    if not path.is_file():
        return {}
    return read_json_object(path, "export record (run `transferlab export` again)")


def engine_differences(model_dir: Path, fingerprint: str) -> dict[str, float]:
    """Format -> max abs difference from PyTorch measured at export, for exports of this very model."""
    found = {}
    for fmt, entry in read_export_record(model_dir).items():
        if not isinstance(entry, dict) or entry.get("source_model") != fingerprint:
            continue  # stale: exported from an earlier model, its figure says nothing about this one
        diff = entry.get("max_abs_diff")
        if isinstance(diff, (int, float)) and not isinstance(diff, bool) and math.isfinite(diff) and diff >= 0:
            found[str(fmt)[:32]] = float(diff)
    return found


class TorchEngine:
    """The run's own model (probe or fine-tuned) in PyTorch, at the run's precision (fp32 or bf16)."""

    engine = "torch"

    def __init__(self, run_path: str | Path, tta: str | None = None):
        self._predictor = load_predictor(run_path, tta=tta)
        self.tta = self._predictor.tta
        path = Path(run_path)
        self.fingerprint = model_fingerprint(path)
        self.model_id = model_id(path, self.fingerprint)
        self.classes = list(self._predictor.classes)
        self.resolution = int(self._predictor.resolution)
        self.interpolation = self._predictor.interpolation

    def predict_uint8(self, batch: np.ndarray) -> np.ndarray:
        return self._predictor.predict_tensor(torch.from_numpy(batch)).astype(np.float32)


def exported_tta(record: dict) -> str:
    """The test-time augmentation an export record says its graph holds ("none" before modes existed)."""
    try:
        return tta_mode(record.get("tta"))
    except TransferlabError:
        return "unknown"


def onnx_model_path(run_path: str | Path, tta: str | None = None) -> Path:
    """model/model.onnx of a complete run, checked to be exported from the run's current model
    (and, when `tta` is given, with that test-time augmentation in its graph)."""
    run = load_complete_run(run_path)
    path = run.model_dir / "model.onnx"
    check_no_links(run.model_dir, ("model.onnx",))  # the file served is the run's own
    if not path.is_file():
        raise TransferlabError(
            f"{run.path}: no ONNX model ({path} is missing); run `transferlab export {run.path} --format onnx` first")
    record = read_export_record(run.model_dir).get("onnx")
    if not isinstance(record, dict) or record.get("source_model") != model_fingerprint(run.path):
        raise TransferlabError(
            f"{path} was not exported from this run's current model; "
            f"run `transferlab export {run.path} --format onnx` again")
    # The entry describes the file last exported (perhaps to an --out elsewhere): its sha256 is this
    # file's only when it names this file. Exports before this field have none.
    recorded = record.get("sha256") if _names(record, run.path, path) else None
    if recorded is not None and recorded != file_sha256(path):
        raise TransferlabError(
            f"{path} is not the file export.json describes (changed, damaged or exported elsewhere since); "
            f"run `transferlab export {run.path} --format onnx` again")
    if tta is not None and exported_tta(record) != tta_mode(tta):
        raise TransferlabError(
            f"{path} was exported with test-time augmentation '{exported_tta(record)}', not '{tta_mode(tta)}'; "
            f"run `transferlab export {run.path} --format onnx --tta {tta_mode(tta)}` to serve it that way")
    return path


def _names(record: dict, run_path: Path, path: Path) -> bool:
    file = record.get("file")
    return isinstance(file, str) and (run_path / file).resolve() == path.resolve()


class ExportedEngine:
    """An engine on model/model.onnx (written by `export_run`): the card's labels and sizes; each
    subclass feeds its runtime the uint8 batch its own way."""

    engine = "exported"

    def __init__(self, run_path: str | Path, tta: str | None = None):
        path = Path(run_path)
        self.model_file = onnx_model_path(path, tta)
        self.record = read_export_record(path / "model").get("onnx", {})
        self.tta = exported_tta(self.record)
        self.card = card = model_card(path)
        self.fingerprint = model_fingerprint(path)
        self.model_id = model_id(path, self.fingerprint)
        self.classes = list(card.classes)
        self.resolution = card.resolution
        self.interpolation = card.interpolation

    def predict_uint8(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OnnxEngine(ExportedEngine):
    """ONNX Runtime on model/model.onnx, fp32, CPU."""

    engine = "onnx"

    def __init__(self, run_path: str | Path, threads: int | None = None, tta: str | None = None):
        import onnxruntime as ort  # local: the torch engine does not need it

        super().__init__(run_path, tta)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1  # one batch at a time: the micro-batcher serialises calls
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No spin-waiting between ops: the decode threads and the event loop need the same
        # cores, and on a busy machine a spinning pool measured ~1.5x slower.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        data = read_onnx_file(self.model_file)  # bounded, self-contained: no weights from other files
        self._session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        # float32 (x - 255*mean) / (255*std), as data.transforms.normalise computes it.
        self._mean = (np.asarray(self.card.mean, dtype=np.float32) * np.float32(255.0)).reshape(1, 3, 1, 1)
        self._std = (np.asarray(self.card.std, dtype=np.float32) * np.float32(255.0)).reshape(1, 3, 1, 1)

    def predict_uint8(self, batch: np.ndarray) -> np.ndarray:
        x = (batch.astype(np.float32) - self._mean) / self._std
        return self._session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].astype(np.float32, copy=False)


def openvino_record(run_path: str | Path, precision: str) -> dict:
    """The export's OpenVINO measurement for `precision`, refused in one line when it is missing
    or (bf16) when bf16 cost more accuracy than openvino_check allows."""
    run = Path(run_path)
    entry = read_export_record(run / "model").get("onnx", {})
    measured = entry.get("openvino") if isinstance(entry, dict) else None
    found = measured.get(precision) if isinstance(measured, dict) else None
    if not isinstance(found, dict):
        raise TransferlabError(f"{run}: the ONNX export has no OpenVINO {precision} check (exported before OpenVINO "
                               f"was installed, or by an older transferlab); run `transferlab export {run} --format onnx`")
    if found.get("passed") is not True:
        detail = found.get("reason") or (f"validation accuracy {found.get('accuracy_bf16')} in bf16 against "
                                         f"{found.get('accuracy_fp32')} in fp32" if precision == "bf16"
                                         else f"max abs difference {found.get('max_abs_diff')} from PyTorch")
        raise TransferlabError(f"{run}: OpenVINO {precision} failed its check at export ({str(detail)[:120]}); "
                               "serve with --engine openvino (fp32) or --engine onnx")
    return found


class OpenVinoEngine(ExportedEngine):
    """OpenVINO on model/model.onnx: fp32, or bf16 where the export's accuracy check allowed it.
    The graph takes the uint8 batch and normalises it itself (openvino_rt.ImageInput), as the
    export's OpenVINO check measured it (inference/openvino_check.py)."""

    def __init__(self, run_path: str | Path, precision: str = "fp32", threads: int | None = None,
                 tta: str | None = None):
        super().__init__(run_path, tta)
        self.engine = "openvino" if precision == "fp32" else f"openvino-{precision}"
        self.check = openvino_record(run_path, precision)
        graph = compile_onnx(read_onnx_file(self.model_file), precision, threads or torch.get_num_threads(),
                             where=str(self.model_file), image_input=ImageInput.of(self.card.mean, self.card.std))
        self.precision = graph.precision
        self._graph = graph

    def predict_uint8(self, batch: np.ndarray) -> np.ndarray:
        return self._graph.run(batch)


# Engine name -> (factory, what it needs from the export). One place to add an engine.
ENGINE_FACTORIES = {
    "torch": lambda run, tta: TorchEngine(run, tta=tta),
    "onnx": lambda run, tta: OnnxEngine(run, tta=tta),
    "openvino": lambda run, tta: OpenVinoEngine(run, "fp32", tta=tta),
    "openvino-bf16": lambda run, tta: OpenVinoEngine(run, "bf16", tta=tta),
}
ENGINES = tuple(ENGINE_FACTORIES)
ENGINE_PRECISIONS = {"openvino": "fp32", "openvino-bf16": "bf16"}


def check_engine(run_path: str | Path, engine: str, tta: str | None = None) -> None:
    """Cheap checks before start-up, so `serve` fails with one line instead of in the lifespan."""
    if engine not in ENGINES:
        raise TransferlabError(f"unknown engine '{engine}': choose from {', '.join(ENGINES)}")
    if tta is not None:
        tta_mode(tta)
    run = load_complete_run(run_path)
    if model_card(run.path).kind == "ensemble":
        check_ensemble(run.path)  # member cards and combination: a crafted member is one line, not a lifespan traceback
    if engine != "torch":
        onnx_model_path(run.path, tta)
    if engine in ENGINE_PRECISIONS:
        if not available():
            raise TransferlabError(f"--engine {engine} needs OpenVINO: `pip install openvino`, or use --engine onnx")
        openvino_record(run.path, ENGINE_PRECISIONS[engine])


def load_engine(run_path: str | Path, engine: str = "torch", tta: str | None = None) -> Predictor:
    """`tta`: test-time augmentation instead of the card's (torch) or the one the export must hold (onnx)."""
    check_engine(run_path, engine, tta)
    return ENGINE_FACTORIES[engine](run_path, tta)
