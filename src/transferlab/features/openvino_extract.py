"""The OpenVINO engine for feature extraction: the torch extractor's network, compiled for the CPU.

`openvino_extractor(torch_extractor)` exports the very `PooledFeatures` module the torch
extractor runs to ONNX (in memory, dynamic batch) and compiles it with OpenVINO at the
extractor's precision. The result has FeatureExtractor's surface, so `extract_with` decodes,
caches and skips images as it does for torch. Images are normalised by the same function
before the graph, and the graph is the same module, so only the arithmetic engine differs:
fp32 features agree with torch's to float rounding (tests/test_openvino_extract.py).

On the project's 2-core AVX512-BF16 machines OpenVINO bf16 ran EfficientNet-Lite 1.4-2.5x
faster than torch bf16 on real images, with the same probe accuracy (benchmarks/
extract_throughput.py --engines-only); export and compile take 1-3 s per extractor.

This module imports nothing from extract.py (the torch extractor is handed in), so
extract.py can hold the engine registry without an import cycle.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import replace

import numpy as np
import torch

from transferlab import openvino_rt
from transferlab.data.transforms import normalise
from transferlab.errors import TransferlabError

ENGINE = "openvino"
ONNX_OPSET = 17  # as inference/export.py: what the TorchScript exporter and OpenVINO both handle
# The batch traced by the exporter; the batch axis is dynamic, so any batch size runs.
_EXAMPLE_BATCH = 2


def export_onnx_bytes(network: torch.nn.Module, resolution: int, where: str) -> bytes:
    """`network` (normalised float images -> features) as ONNX bytes with a dynamic batch axis."""
    example = torch.zeros(_EXAMPLE_BATCH, 3, resolution, resolution)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter; parity with torch is tested instead
        try:
            # The TorchScript-based exporter (the project's choice: fast, needs no onnxscript).
            torch.onnx.export(network.eval(), (example,), buffer, dynamo=False, input_names=["images"],
                              output_names=["features"], opset_version=ONNX_OPSET,
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
        except Exception as exc:  # noqa: BLE001 - the exporter raises many unrelated types
            first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise TransferlabError(f"{where}: cannot export to ONNX for OpenVINO ({first})") from None
    return buffer.getvalue()


def openvino_identity(torch_extractor, precision: str) -> tuple:
    """(settings, cache key) of the OpenVINO extractor built on `torch_extractor` whose graph runs
    at `precision`: what names its features in the cache."""
    settings = replace(torch_extractor.settings, engine=ENGINE, precision=precision)
    return settings, torch_extractor.cache_key() | {"precision": precision, "engine": ENGINE}


class OpenVINOExtractor:
    """FeatureExtractor's surface (settings, name, interpolation, cache_key, calls) on a compiled graph.

    `settings` says what ran: engine "openvino" and the precision OpenVINO really used (bf16
    falls back to fp32 on a CPU without it), and the cache key carries both, so features of
    two engines or precisions never share a cache entry.
    """

    def __init__(self, torch_extractor, graph: openvino_rt.CompiledGraph):
        self.backbone = torch_extractor.backbone
        self.settings, self._key = openvino_identity(torch_extractor, graph.precision)
        self._graph = graph

    @property
    def name(self) -> str:
        return self.backbone.name

    @property
    def interpolation(self) -> str:
        return self.backbone.interpolation

    def cache_key(self) -> dict:
        return dict(self._key)

    def __call__(self, images_uint8: torch.Tensor) -> np.ndarray:
        # The same normalisation function as FeatureExtractor, in NCHW (what the graph takes).
        with torch.inference_mode():
            x = normalise(images_uint8, self.backbone.mean, self.backbone.std)
        return self._graph.run(x.numpy())

    def from_normalised(self, x: torch.Tensor) -> np.ndarray:
        """Features of float images normalised already (test-time augmentation's views)."""
        return self._graph.run(x.detach().float().contiguous().numpy())


def openvino_extractor(torch_extractor) -> OpenVINOExtractor:
    """The torch extractor's network compiled by OpenVINO; TransferlabError (one line) when it cannot be."""
    where = f"{torch_extractor.name}@{torch_extractor.settings.resolution}px"
    if not openvino_rt.available():
        raise TransferlabError("OpenVINO is not installed (pip install openvino)")
    data = export_onnx_bytes(torch_extractor.network, torch_extractor.settings.resolution, where)
    graph = openvino_rt.compile_onnx(data, precision=torch_extractor.settings.precision,
                                     threads=torch.get_num_threads(), where=where)
    return OpenVINOExtractor(torch_extractor, graph)
