"""Every member's class probabilities from an ensemble's own network, member by member, fast.

`transferlab ensemble` scores each member branch of the `EnsembleNetwork` it has just built
(resize, normalisation, the member's test-time augmentation, its model) on the validation
images. In torch fp32 that was the slowest step of `transferlab auto` (elpv, 3 probes with
flip: 247 of 420 s). The same branch exported to ONNX and compiled by OpenVINO *in fp32* ran
3.1-6.4x faster per branch on this project's CPUs (a whole elpv ensemble: 43 s against 113-129 s,
the same accuracy and macro F1; benchmarks/ensemble_scoring.py) and agrees with torch to float rounding (max abs difference
in probability ~1e-4; tests/test_ensemble.py): the same network at the same precision,
so the figures stay those of what predict and serve run. Not bf16: its probabilities differ by
up to 0.3, and the combination would be fitted on numbers the model never gives.

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


def _scorer(branch: MemberBranch, resolution: int, name: str, engine: str) -> tuple[Scorer, str]:
    """The branch's scorer under `engine`, and what runs it ("torch fp32" or "openvino fp32")."""
    if engine == "torch":
        return _torch_scorer(branch), "torch fp32"
    where = f"member {name}"
    try:
        return _openvino_scorer(branch, resolution, where), "openvino fp32"
    except Exception as exc:  # noqa: BLE001 - auto falls back to torch on any failure of the faster engine
        if engine == "openvino":
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("%s is scored in torch, not OpenVINO: %s", where, reason)
        return _torch_scorer(branch), "torch fp32"


def check_engine(network: EnsembleNetwork, names: list[str], engine: str) -> None:
    """Refuse an unknown engine, or --engine openvino where a member cannot run in it, before any work."""
    if engine not in ENGINES:
        raise TransferlabError(f"unknown engine '{engine}': choose from {', '.join(ENGINES)}")
    if engine == "openvino":
        for branch, name in zip(network.branches, names, strict=True):
            _check_compilable(branch, f"member {name}")


def score_members(network: EnsembleNetwork, names: list[str], engine: str,
                  batches: Callable[[], Iterable[torch.Tensor]]) -> tuple[list[np.ndarray], str]:
    """Each member's (n, C) float64 probabilities on the images `batches()` yields ([0, 1] floats
    at the ensemble's resolution; every call the same images in the same order), and what scored
    them ("openvino fp32", "torch fp32", or member by member where they differ).

    One member at a time: a compiled graph keeps its activations' buffers, and three at once took
    an elpv ensemble to 5.7 GB, so each is dropped before the next one is compiled."""
    check_engine(network, names, engine)
    members, used = [], []
    for branch, name in zip(network.branches, names, strict=True):
        outputs, score, what = [], None, "none (no images)"
        for x in batches():
            if score is None:
                score, what = _scorer(branch, int(x.shape[-1]), name, engine)
            outputs.append(score(x))
        del score  # its compiled graph and buffers go before the next member's are made
        members.append(outputs)
        used.append(what)
    distinct = list(dict.fromkeys(used))
    described = distinct[0] if len(distinct) == 1 else ", ".join(f"{n}: {u}" for n, u in zip(names, used))
    return [np.concatenate(outputs) for outputs in members if outputs], described
