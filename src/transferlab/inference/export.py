"""Export a run as one file: normalised float images (N, 3, R, R) -> class probabilities.

The exported graph is `WithSoftmax(network)`: for a probe, backbone, pooled multi-layer
features and the folded logistic regression; for a fine-tuned run its network; for an
ensemble every member and their combination; with the test-time augmentation asked for.
Before the file gets its final name, its outputs are compared with PyTorch's on sample
inputs; beyond the tolerance the export fails and leaves nothing behind. It never writes
over a file but this run's own earlier export. `model/export.json` records the measured
difference, the file's sha256 and everything needed to feed the file (resolution,
interpolation, mean, std, classes).
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from transferlab.atomic import atomic_path, write_json
from transferlab.card import KIND_FILES, ModelCard
from transferlab.data.images import ImageDecodeError
from transferlab.data.transforms import normalise, preprocess
from transferlab.errors import TransferlabError
from transferlab.inference.openvino_check import openvino_check
from transferlab.inference.probe_network import WithSoftmax
from transferlab.inference.run_network import RunNetwork, load_run_network
from transferlab.options import check_output_file, tta_mode
from transferlab.runs import (
    RunDir,
    check_no_links,
    image_on_disk,
    load_complete_run,
    open_member,
    open_run,
    read_json_object,
    read_predictions,
)

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
# Sample inputs for the parity check: random batches of two sizes (so a batch axis frozen
# at export time is caught), then up to this many real images from the run's predictions.
RANDOM_BATCHES = (1, 3)
REAL_IMAGES = 4
SEED = 0


def _model_folders(run_path: str | Path) -> list[tuple[Path, str]]:
    """(folder, kind) of each model folder the run's loader reads: its own, and an ensemble's
    members as its card names them (checked by open_member: names, links, kinds)."""
    run = open_run(run_path)
    members = [open_member(run, name) for name in run.card.members] if run.card.kind == "ensemble" else []
    return [(run.model_dir, run.card.kind)] + [(m.model_dir, m.card.kind) for m in members]


def model_fingerprint(run_path: str | Path) -> str:
    """Hash of the files that define a run's model: names the model, detects stale exports.

    Only the files its kind's loader reads (card.KIND_FILES), of the members its card names:
    a stray file in a handed-over folder is never read. Same digest as before for probe and
    fine-tuned runs (same folder name, same files in the same order).
    """
    digest = hashlib.blake2b(digest_size=8)
    for folder, kind in _model_folders(run_path):
        digest.update(folder.name.encode())
        for name in KIND_FILES[kind]:
            file = folder / name
            if not file.is_file():
                continue
            try:
                with open(file, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(chunk)
            except OSError as exc:
                raise TransferlabError(f"{file}: cannot read ({type(exc).__name__})") from None
    return digest.hexdigest()


def _real_images(run: RunDir, card: ModelCard) -> torch.Tensor | None:
    """A few of the run's own images as uint8 (one per true class first), if they are still on disk."""
    rows = read_predictions(run.path, missing_ok=True)
    if not rows:
        return None
    by_class: dict[str, list[str]] = {}
    for row in rows:
        by_class.setdefault(row.true, []).append(row.path)
    # Round-robin over classes, so the sample is not four images of the largest class.
    ordered = [paths[i] for i in range(max(map(len, by_class.values()), default=0))
               for paths in by_class.values() if i < len(paths)]
    images = []
    for name in ordered:
        if len(images) == REAL_IMAGES:
            break
        path = image_on_disk(run, name)
        if path is None:
            continue
        try:
            images.append(preprocess(path, card.resolution, card.interpolation))
        except ImageDecodeError:
            continue
    return torch.stack(images) if images else None


def _sample_inputs(run: RunDir, card: ModelCard) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """The parity check's inputs twice over: as the exported graph takes them (random normalised
    floats, then the run's own images normalised) and as serving's OpenVINO graph takes them
    (random uint8 images, then the run's own); and how many of the run's own images there are."""
    resolution = card.resolution
    generator = torch.Generator().manual_seed(SEED)
    samples = [torch.randn(n, 3, resolution, resolution, generator=generator) for n in RANDOM_BATCHES]
    images = [torch.randint(0, 256, (n, 3, resolution, resolution), dtype=torch.uint8, generator=generator)
              for n in RANDOM_BATCHES]
    real = _real_images(run, card)
    if real is not None:
        samples.append(normalise(real, card.mean, card.std))
        images.append(real)
    return samples, images, 0 if real is None else len(real)


def _export_onnx(network: torch.nn.Module, example: torch.Tensor, path: Path) -> str:
    common = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": ONNX_OPSET}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; parity is what counts
        try:
            # The TorchScript-based exporter: fast, and needs no onnxscript.
            torch.onnx.export(network, (example,), str(path), dynamo=False,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **common)
            return f"torch.onnx.export(dynamo=False), opset {ONNX_OPSET}"
        except Exception as legacy_error:  # noqa: BLE001 - removed or failing in this torch: try the dynamo exporter
            try:
                batch = torch.export.Dim("batch", min=1, max=4096)
                torch.onnx.export(network, (example,), str(path), dynamo=True, external_data=False,
                                  dynamic_shapes={"x": {0: batch}}, **common)
            except Exception as dynamo_error:  # noqa: BLE001 - reported with the first error
                raise TransferlabError(
                    f"ONNX export failed: {legacy_error} (dynamo exporter: {dynamo_error})") from None
            return f"torch.onnx.export(dynamo=True), opset {ONNX_OPSET}"


def _export_torchscript(network: torch.nn.Module, example: torch.Tensor, path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream but still what the issue asks
        with torch.no_grad():
            # No check_trace: the parity check below compares more inputs, at other batch sizes.
            traced = torch.jit.trace(network, example, check_trace=False)
        torch.jit.save(traced, str(path))
    return "torch.jit.trace"


def _run_onnx(path: Path):
    import onnxruntime as ort  # local: only export and the onnx engine need it

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]


def _run_torchscript(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: torch.Tensor) -> np.ndarray:
        # Plain interpretation: the profiling executor would re-optimise for every new shape.
        with torch.no_grad(), torch.jit.optimized_execution(False):
            return module(x).numpy()

    return run


def _max_abs_diff(run_exported, network: torch.nn.Module, samples: list[torch.Tensor]) -> float:
    worst = 0.0
    for x in samples:
        with torch.no_grad():
            expected = network(x).numpy()
        got = np.asarray(run_exported(x))
        if got.shape != expected.shape:
            return float("inf")
        worst = max(worst, float(np.abs(got.astype(np.float64) - expected).max()))
    return worst


def _exporter(fmt: str):
    """(write, load) for a format; looked up at call time so tests can swap either."""
    return (_export_onnx, _run_onnx) if fmt == "onnx" else (_export_torchscript, _run_torchscript)


def export_run(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None,
               tolerance: float = 1e-4, tta: str | None = None) -> Path:
    """Write the run's whole model as ONNX or TorchScript; returns the file's path.

    `tta`: test-time augmentation built into the graph (default: the card's), recorded in
    model/export.json so that serving checks it asked for the same.

    Raises TransferlabError (and writes nothing) for a run that is not a complete probe,
    a head that does not fold into a linear layer, or outputs that differ from PyTorch's
    by more than `tolerance` (max abs difference of the probabilities).
    """
    if fmt not in FORMATS:
        raise TransferlabError(f"unknown export format '{fmt}': choose from {', '.join(FORMATS)}")
    if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < float("inf")):
        raise TransferlabError(f"--tolerance must be a number of 0 or more, got {tolerance}")
    run = load_complete_run(run_dir)
    check_no_links(run.model_dir, ("export.json",))  # export writes there: never through a link
    target = _check_target(run, fmt, Path(out) if out is not None else run.model_dir / FORMATS[fmt])
    loaded = load_run_network(run.path)  # TransferlabError for probe heads that are not linear
    if not getattr(loaded.network, "exportable", True):
        raise TransferlabError(f"{run.path}: a member of this ensemble has a probe head that is not a logistic "
                               "regression; only those fold into an exported graph")
    mode = loaded.card.tta if tta is None else tta_mode(tta)
    if tta is not None and hasattr(loaded.network, "drop_member_tta"):
        loaded.network.drop_member_tta()  # an ensemble: --tta replaces each member's own mode
    network = WithSoftmax(loaded.network, mode).eval()
    resolution = loaded.card.resolution
    samples, images, n_real = _sample_inputs(run, loaded.card)
    export, load = _exporter(fmt)
    started = time.perf_counter()
    with atomic_path(target) as tmp:
        exporter = export(network, torch.randn(2, 3, resolution, resolution), tmp)
        diff = _max_abs_diff(load(tmp), network, samples)
        if not diff <= tolerance:  # also catches NaN
            raise TransferlabError(
                f"{run.path}: {fmt} export failed the parity check: max abs difference {diff:.3g} from PyTorch "
                f"exceeds the tolerance {tolerance:g}; nothing was written")
    check = {
        "exporter": exporter,
        "tta": mode,
        "max_abs_diff": diff,
        "tolerance": tolerance,
        "samples": {"random": sum(RANDOM_BATCHES), "images": n_real},
        "seconds": round(time.perf_counter() - started, 2),
    }
    if fmt == "onnx":
        measured = openvino_check(target, run, loaded.card, network, images, tolerance)
        if measured is not None:
            check["openvino"] = measured  # what `serve --engine openvino|openvino-bf16` checks for
    _record(run, fmt, target, check, loaded)
    return target


def _check_target(run: RunDir, fmt: str, target: Path) -> Path:
    """Where the export may go, checked before any work: a new file in an existing folder, or this
    run's own earlier export of `fmt` (its default file, or the one export.json names). Anything
    else that exists is a user's file, never written over; a link is refused, as it would write
    wherever it points."""
    return check_output_file(target, f"{fmt} export of this run", lambda f: f.resolve() in _earlier_exports(run, fmt))


def _earlier_exports(run: RunDir, fmt: str) -> set[Path]:
    own = {(run.model_dir / FORMATS[fmt]).resolve()}
    try:
        entry = read_json_object(run.model_dir / "export.json", "export record").get(fmt)
    except TransferlabError:
        return own
    if isinstance(entry, dict) and isinstance(entry.get("file"), str):
        own.add((run.path / entry["file"]).resolve())  # relative to the run, or absolute as written
    return own


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _record(run: RunDir, fmt: str, target: Path, check: dict, loaded: RunNetwork) -> None:
    """Merge this format's entry into model/export.json (one entry per format)."""
    path = run.model_dir / "export.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError:
        record = {}
    try:
        file_name = str(target.resolve().relative_to(run.path.resolve()))
    except ValueError:
        file_name = str(target.resolve())
    card = loaded.card
    record[fmt] = {
        "file": file_name,
        "sha256": file_sha256(target),  # serving checks the file it loads is this one
        "source_model": model_fingerprint(run.path),
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, card.resolution, card.resolution],
                  "dtype": "float32", "preprocess": "resize shorter side, centre crop, (x - 255*mean) / (255*std)",
                  "interpolation": card.interpolation, "mean": list(card.mean), "std": list(card.std)},
        "output": {"name": OUTPUT_NAME, "classes": list(card.classes)},
        **check,
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(path, record)
