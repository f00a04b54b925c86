"""How big and how fast a network is on this CPU: parameters, multiply-adds, latency.

Multiply-adds come from torch's own `FlopCounterMode`, which counts a multiply-add as two
FLOPs in convolutions, linear layers and matrix products and leaves elementwise work
(activations, normalisation, pooling) out: the convention papers quote, halved to MACs.

Latency is the median of repeated timed forward passes after warm-up passes, at batch 1
(one request) and batch 64 (throughput), in fp32 under inference mode with torch's current
intra-op threads: what a CPU deployment of the exported network sees. The median, because
the machine may be shared and a few slow passes would drag a mean; the spread (lowest and
highest pass) is kept with it so a reader can see how steady the machine was.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

BATCHES = (1, 64)
# Timed passes per batch size: batch 1 is cheap and noisy, batch 64 dear and steadier.
REPEATS = {1: 21, 64: 5}
WARMUP = 2


@dataclass(frozen=True)
class Latency:
    batch: int
    median_ms: float
    min_ms: float
    max_ms: float
    repeats: int


@dataclass(frozen=True)
class Cost:
    parameters: int
    multiply_adds: int  # per image, at `resolution`
    resolution: int
    threads: int
    latency: list[Latency]

    def to_dict(self) -> dict:
        return asdict(self)

    def median_ms(self, batch: int) -> float | None:
        return next((entry.median_ms for entry in self.latency if entry.batch == batch), None)


def parameter_count(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def _example(batch: int, resolution: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, resolution, resolution, generator=generator)


def multiply_adds(network: nn.Module, resolution: int) -> int:
    """Multiply-adds of one forward pass of one (3, resolution, resolution) image."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        network(_example(1, resolution))
    return int(counter.get_total_flops() // 2)


def median_latency(network: nn.Module, batch: int, resolution: int, repeats: int, warmup: int = WARMUP) -> Latency:
    """Median wall time of `repeats` forward passes of a batch, after `warmup` untimed ones."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    images = _example(batch, resolution)
    times = []
    with torch.inference_mode():
        for index in range(warmup + repeats):
            started = time.perf_counter()
            network(images)
            if index >= warmup:
                times.append((time.perf_counter() - started) * 1000.0)
    return Latency(batch, statistics.median(times), min(times), max(times), repeats)


def measure_cost(network: nn.Module, resolution: int, batches: tuple[int, ...] = BATCHES,
                 repeats: dict[int, int] | None = None, warmup: int = WARMUP) -> Cost:
    """Parameters, multiply-adds and CPU latency of `network` (normalised float images -> outputs)."""
    network = network.float().eval()
    counts = {**REPEATS, **(repeats or {})}
    latency = [median_latency(network, batch, resolution, counts.get(batch, min(REPEATS.values())), warmup)
               for batch in batches]
    return Cost(parameters=parameter_count(network), multiply_adds=multiply_adds(network, resolution),
                resolution=resolution, threads=torch.get_num_threads(), latency=latency)
