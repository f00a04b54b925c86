"""OpenVINO on the CPU: compile an ONNX graph at fp32 or bf16, run it on numpy batches.

Why OpenVINO: on this project's 2-core AVX512 machines it ran the EfficientNet-Lite graphs
1.5x faster than ONNX Runtime in fp32 and 2-3x faster in bf16 (benchmarks/extract_throughput.py,
benchmarks/serve_load.py). Only the runtime is used, fed ONNX: never `openvino.convert_model`,
whose converter sends usage telemetry unless the user opted out.

Everything handed to `compile_onnx` is checked by `check_onnx_bytes` first: a bounded size and
no external-data references, so a hostile model.onnx in a run folder cannot make the runtime
read another file of the user's as its weights.

A graph compiled with `ImageInput` takes the uint8 images themselves and normalises them
inside OpenVINO (serving does this): the normalisation is fused into the first layer and runs
on OpenVINO's threads, instead of three numpy passes on the model thread, each of which has to
win the GIL back from the event loop and the decode threads. On the demo run under 16 clients
that was 160-170 against 150-165 requests/s in alternating runs (benchmarks/serve_load.py).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from transferlab.errors import TransferlabError

# What a precision name means to OpenVINO's CPU plugin (INFERENCE_PRECISION_HINT).
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}
# An exported EfficientNet-Lite2 is ~25 MB, an ensemble of 16 a few hundred: 2 GiB is
# protobuf's own limit, and nothing larger is read into memory.
MAX_ONNX_BYTES = 2 << 30


def _import_runtime():
    """`import openvino` without its model converter: the package's __init__ imports
    openvino.tools.ovc, which sends a usage event ("ov import") to Google Analytics unless the
    user has opted out. A None entry in sys.modules makes that one import fail (the package
    catches ImportError); it is removed again, so code that wants the converter can still import it."""
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    blocked = "openvino.tools.ovc" not in sys.modules
    if blocked:
        sys.modules["openvino.tools.ovc"] = None
    try:
        import openvino
    finally:
        if blocked and sys.modules.get("openvino.tools.ovc", 0) is None:
            del sys.modules["openvino.tools.ovc"]
    return openvino


def available() -> bool:
    try:
        _import_runtime()
    except ImportError:
        return False
    return True


def _require():
    try:
        return _import_runtime()
    except ImportError:
        raise TransferlabError("OpenVINO is not installed: `pip install openvino`, or use --engine torch") from None


@functools.cache
def _core():
    """The process's one OpenVINO Core. A Core per compile crashed processes that created and
    queried many of them (a segfault in this test suite; ultralytics/ultralytics#25864 saw the
    same after ~20 model loads); OpenVINO means one Core per application, and its methods are
    thread-safe."""
    return _require().Core()


def read_onnx_file(path: Path) -> bytes:
    """The bytes of an ONNX file from a run folder, bounded and checked (see check_onnx_bytes)."""
    try:
        size = path.stat().st_size
        if path.is_symlink() or not path.is_file():
            raise TransferlabError(f"{path}: not a regular file")
        if size > MAX_ONNX_BYTES:
            raise TransferlabError(f"{path}: {size} bytes, more than an exported model can be ({MAX_ONNX_BYTES})")
        data = path.read_bytes()
    except OSError as exc:
        raise TransferlabError(f"{path}: cannot read ({exc.strerror or exc})") from None
    check_onnx_bytes(data, str(path))
    return data


def check_onnx_bytes(data: bytes, where: str) -> None:
    """Refuse graphs that are not ONNX or that point at weights outside themselves."""
    import onnx  # local: serve's torch engine and extraction without OpenVINO do not need it

    if len(data) > MAX_ONNX_BYTES:
        raise TransferlabError(f"{where}: {len(data)} bytes, more than an exported model can be")
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf's errors have no common base worth naming
        raise TransferlabError(f"{where}: not an ONNX model ({type(exc).__name__})") from None
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for tensor in graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
                raise TransferlabError(f"{where}: tensor '{tensor.name[:80]}' keeps its data in another file; "
                                       "transferlab only loads self-contained models")
        for node in graph.node:
            for attribute in node.attribute:
                graphs.extend(attribute.graphs)
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                tensors = list(attribute.tensors) + ([attribute.t] if attribute.HasField("t") else [])
                if any(t.data_location == onnx.TensorProto.EXTERNAL or t.external_data for t in tensors):
                    raise TransferlabError(f"{where}: node '{node.name[:80]}' keeps its data in another file")


def precision_on_this_cpu(precision: str) -> str:
    """The precision `compile_onnx(..., precision)` will really run, told without compiling:
    bf16 only where the CPU plugin lists BF16 among its capabilities (tested to agree)."""
    if precision not in PRECISION_HINTS:
        raise TransferlabError(f"unknown precision '{precision}': choose from {', '.join(PRECISION_HINTS)}")
    if precision == "fp32":
        return "fp32"
    capabilities = _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "bf16" if "BF16" in capabilities else "fp32"


@dataclass(frozen=True)
class ImageInput:
    """Feed uint8 (B, 3, R, R) images; the graph computes (x - mean) / std in 0-255 units, the
    arithmetic of data.transforms.normalise (fp32 results agree to ~4e-6, tests/test_openvino_rt.py)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, mean, std) -> ImageInput:
        """From a card's or backbone's mean and std in 0-1 units."""
        return cls(tuple(255.0 * float(m) for m in mean), tuple(255.0 * float(s) for s in std))


@dataclass
class CompiledGraph:
    """One compiled graph: `run(batch)` -> its first output; `precision` is what the CPU runs;
    `takes_uint8`: batches are uint8 images (compiled with ImageInput), else normalised float32."""

    run: Callable[[np.ndarray], np.ndarray]
    precision: str
    takes_uint8: bool = False


def _with_image_input(ov, model, image_input: ImageInput):
    """`model` behind OpenVINO's pre-processing: uint8 NCHW in, converted and normalised inside."""
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NCHW"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).mean(list(image_input.mean)).scale(
        list(image_input.std))
    return ppp.build()


def compile_onnx(data: bytes, precision: str = "fp32", threads: int = 1, where: str = "model",
                 image_input: ImageInput | None = None) -> CompiledGraph:
    """Compile checked ONNX bytes for the CPU. bf16 where the CPU has it (else OpenVINO runs f32,
    and `precision` says so). Threads are not pinned to cores: on a machine shared with other
    work, a pinned thread waits for its one core instead of taking a free one. `image_input`:
    the graph takes uint8 images and normalises them itself (see ImageInput)."""
    if precision not in PRECISION_HINTS:
        raise TransferlabError(f"unknown precision '{precision}': choose from {', '.join(PRECISION_HINTS)}")
    check_onnx_bytes(data, where)
    ov = _require()
    core = _core()
    config = {
        "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
        "INFERENCE_NUM_THREADS": max(1, int(threads)),
        "PERFORMANCE_HINT": "LATENCY",  # one stream: batches come one at a time
        "ENABLE_CPU_PINNING": False,
    }
    try:
        model = core.read_model(data)
        if image_input is not None:
            model = _with_image_input(ov, model, image_input)
        compiled = core.compile_model(model, "CPU", config)
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses with C++ messages
        raise TransferlabError(f"{where}: OpenVINO cannot compile it: {str(exc).splitlines()[0][:200]}") from None
    actual = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
    request = compiled.create_infer_request()
    dtype = np.uint8 if image_input is not None else np.float32

    def run(batch: np.ndarray) -> np.ndarray:
        if dtype is np.uint8 and batch.dtype != np.uint8:  # a float batch would be cast, not refused
            raise TransferlabError(f"{where}: this graph takes uint8 images, not {batch.dtype}")
        # share_inputs: no copy of a contiguous batch; the output is copied out of the request.
        request.infer({0: np.ascontiguousarray(batch, dtype=dtype)}, share_inputs=True)
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    return CompiledGraph(run=run, precision="bf16" if ("bf16" in actual or "bfloat16" in actual) else "fp32",
                         takes_uint8=image_input is not None)
