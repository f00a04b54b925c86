"""Every member's class probabilities from an ensemble's own network, member by member, fast.

`transferlab ensemble` scores each member branch of the `EnsembleNetwork` it has just built
(resize, normalisation, the member's test-time augmentation, its model) on the validation
images. In torch fp32 that was the slowest step of `transferlab auto` (elpv, 3 probes with
flip: 247 of 420 s). The same branch exported to ONNX and compiled by OpenVINO *in fp32* ran
3.1-6.4x faster per branch on this project's CPUs, and a whole elpv ensemble 2.6-3x
(benchmarks/ensemble_scoring.py: 40-43 s against 113-129 s, the same accuracy and macro F1). It
agrees with torch to float rounding (1e-7 to 1e-5 in probability; checked on every member's
first batch, PARITY_TOLERANCE): the same network at the same precision, so the figures are
those of what predict and serve run, up to an argmax tie that rounding can tip. Not bf16: its
probabilities differed by up to 0.37, and the combination would be fitted on numbers the model
never gives.

Engines as for feature extraction (`features.extract.ENGINES`): torch, openvino, or auto
(OpenVINO where it is installed and compiles the branch, else torch, with a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
import torch

from transferlab import openvino_rt
from transferlab.errors import TransferlabError
from transferlab.features.extract import ENGINES
from transferlab.features.openvino_extract import export_onnx_bytes
from transferlab.inference.ensemble_network import EnsembleNetwork, MemberBranch

log = logging.getLogger(__name__)

# (N, 3, R, R) float32 images in [0, 1] at the ensemble's resolution -> (N, C) float probabilities
Scorer = Callable[[torch.Tensor], np.ndarray]
Batches = Callable[[], Iterable[torch.Tensor]]  # each call yields the same images in the same order
# Largest difference in probability from torch accepted on the first batch. fp32 graphs agreed
# to ~1e-7 in tests and ~1e-5 on elpv; bf16 (which this never compiles) differed by up to 0.37.
PARITY_TOLERANCE = 1e-3
PARITY_IMAGES = 4  # checked in torch too: enough to see a wrong graph, little extra time or memory


def _torch_scorer(branch: MemberBranch) -> Scorer:
    def score(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return branch(x).double().numpy()

    return score


def _check_compilable(branch: MemberBranch, where: str) -> None:
    if not openvino_rt.available():
        raise TransferlabError("OpenVINO is not installed (pip install openvino), or use --engine torch")
    if not getattr(branch.probabilities, "exportable", True):
        raise TransferlabError(f"{where}: its classifier does not fold into a network, so OpenVINO cannot "
                               "compile it; use --engine torch or auto")


def _openvino_scorer(branch: MemberBranch, resolution: int, where: str) -> Scorer:
    _check_compilable(branch, where)
    data = export_onnx_bytes(branch, resolution, where)
    graph = openvino_rt.compile_onnx(data, precision="fp32", threads=torch.get_num_threads(), where=where)

    def score(x: torch.Tensor) -> np.ndarray:
        return graph.run(x.detach().float().contiguous().numpy()).astype(np.float64)

    return score


def _compiled_probabilities(branch: MemberBranch, where: str, batches: Batches) -> list[np.ndarray]:
    """The member's probabilities from its branch compiled by OpenVINO, checked against torch on
    the first batch: a CPU-plugin bug that compiles but computes wrongly (one refused to compile
    a resizing ensemble, ensemble_network.py) must not reach the fitted weights and figures."""
    images = iter(batches())
    first = next(images, None)
    if first is None:
        return []
    # Torch first, on a few images: its buffers are freed before the graph's are made.
    expected = _torch_scorer(branch)(first[:PARITY_IMAGES])
    score = _openvino_scorer(branch, int(first.shape[-1]), where)
    outputs = [score(first)]
    differs = float(np.abs(outputs[0][:PARITY_IMAGES] - expected).max())
    if differs > PARITY_TOLERANCE:
        raise TransferlabError(f"{where}: OpenVINO's probabilities differ from torch's by {differs:.1e} "
                               f"on the first images (more than {PARITY_TOLERANCE:g})")
    return outputs + [score(x) for x in images]


def _member_probabilities(branch: MemberBranch, where: str, engine: str,
                          batches: Batches) -> tuple[list[np.ndarray], str]:
    """(per-batch probabilities, what ran them): OpenVINO fp32 unless the engine is torch; under
    auto any failure of it (export, compile, a batch, the parity check) scores the member in torch."""
    if engine != "torch":
        try:
            return _compiled_probabilities(branch, where, batches), "openvino fp32"
        except Exception as exc:  # noqa: BLE001 - auto falls back to torch on any failure of the faster engine
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if engine == "openvino":
                if isinstance(exc, TransferlabError):
                    raise
                raise TransferlabError(f"{where}: OpenVINO failed: {reason[:200]}") from None
            log.warning("%s is scored in torch, not OpenVINO: %s", where, reason)
    score = _torch_scorer(branch)
    return [score(x) for x in batches()], "torch fp32"


def check_engine(network: EnsembleNetwork, names: list[str], engine: str) -> None:
    """Refuse an unknown engine, or --engine openvino where a member cannot run in it, before scoring."""
    if engine not in ENGINES:
        raise TransferlabError(f"unknown engine '{engine}': choose from {', '.join(ENGINES)}")
    if engine == "openvino":
        for branch, name in zip(network.branches, names, strict=True):
            _check_compilable(branch, f"member {name}")


def score_members(network: EnsembleNetwork, names: list[str], runs: list[str], engine: str,
                  batches: Batches) -> tuple[list[np.ndarray], str]:
    """Each member's (n, C) float64 probabilities on the images `batches()` yields ([0, 1] floats
    at the ensemble's resolution; every call the same images in the same order), and what scored
    them ("openvino fp32", "torch fp32", or member by member where they differ). `runs`: the
    members' own run folders, named in errors; `engine` was checked by `check_engine` before
    the images were decoded.

    One member at a time: a compiled graph keeps its activations' buffers, and three at once took
    an elpv ensemble to 5.7 GB, so each is dropped before the next one is compiled."""
    members, used = [], []
    for branch, name, run in zip(network.branches, names, runs, strict=True):
        outputs, what = _member_probabilities(branch, f"member {name} ({run})", engine, batches)
        members.append(outputs)
        used.append(what if outputs else "none (no images)")
    distinct = list(dict.fromkeys(used))
    described = distinct[0] if len(distinct) == 1 else ", ".join(f"{n}: {u}" for n, u in zip(names, used))
    return [np.concatenate(outputs) for outputs in members if outputs], described
