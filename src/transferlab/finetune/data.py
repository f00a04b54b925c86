"""Training data held in memory: decoded once, augmented per draw, optionally pushed
through the frozen lower units once per draw.

For a 2-core CPU the decode is paid once per run (not once per epoch), and a stage whose
lower units are frozen trains on cached activations, so an epoch costs only the trained
upper units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from transferlab.data.folder import Sample
from transferlab.features.extract import ImageList, collate_images
from transferlab.finetune.progress import bars_enabled

# Above this, activations are not cached and the stage runs on images instead.
MAX_CACHE_BYTES = 6 * 1024**3


@dataclass
class ImageStore:
    images: torch.Tensor  # (N, 3, R, R) uint8
    labels: torch.Tensor  # (N,) int64
    paths: list[Path]
    failures: list[tuple[Path, str]]


FORWARD_BATCH = 32  # images per forward pass of the frozen units when caching their output


def load_images(samples: list[Sample], resolution: int, interpolation: str, workers: int,
                progress: bool, desc: str) -> ImageStore:
    loader = DataLoader(ImageList([s.path for s in samples], resolution, interpolation), batch_size=64,
                        num_workers=workers, collate_fn=collate_images)
    # Filled in place: a list of images stacked at the end held every image twice at the peak
    # (heritage at 128 px: 500 MB more).
    stacked = torch.empty((len(samples), 3, resolution, resolution), dtype=torch.uint8)
    labels, paths, failures = [], [], []
    for batch, indices, errors in tqdm(loader, desc=desc, unit="batch", disable=not bars_enabled(progress),
                                       leave=False):
        for image, index, error in zip(batch, indices, errors):
            if error:
                failures.append((samples[index].path, error))
            else:
                stacked[len(labels)] = image
                labels.append(samples[index].label)
                paths.append(samples[index].path)
    return ImageStore(stacked[:len(labels)], torch.tensor(labels, dtype=torch.int64), paths, failures)


@torch.inference_mode()
def cached_activations(net, store: ImageStore, level: int, augmentation, draw_seed: int | None,
                       precision: str, batch_size: int = 128, progress: bool = False,
                       desc: str = "caching") -> torch.Tensor:
    """Output of units [0, level) for every image, under one seeded augmentation draw.

    Stored in bf16 (half the memory of fp32); the trained units see it cast back to fp32.
    Written into one tensor as the batches come (chunks concatenated at the end held the draw twice).
    """
    if draw_seed is not None:
        torch.manual_seed(draw_seed)
    net.eval()
    out: torch.Tensor | None = None
    for start in tqdm(range(0, len(store.labels), batch_size), desc=desc, unit="batch",
                      disable=not bars_enabled(progress), leave=False):
        images = store.images[start:start + batch_size]
        if augmentation is not None:
            images = augmentation(images)  # a batch augmentation (augment.build_batch_augmentation)
        # The augmentation draws a whole batch (its random stream depends on the batch size);
        # the frozen units run FORWARD_BATCH images at a time: their activations are the
        # transient peak of caching (heritage, 128 px: 250 MB at 128 images).
        for offset in range(0, len(images), FORWARD_BATCH):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                chunk = net.forward_units(images[offset:offset + FORWARD_BATCH], 0, level).to(torch.bfloat16)
            if out is None:
                out = torch.empty((len(store.labels), *chunk.shape[1:]), dtype=torch.bfloat16)
            out[start + offset:start + offset + len(chunk)] = chunk
    if out is None:  # as torch.cat of no chunks did: training never starts without images
        raise ValueError("cached_activations of an empty image store")
    return out


def activation_bytes(net, store: ImageStore, level: int, draws: int) -> int:
    with torch.inference_mode():
        one = net.eval().forward_units(store.images[:1], 0, level)
    return one.numel() * 2 * len(store.labels) * draws


class DrawDataset(Dataset):
    """Cached activations of several augmentation draws; `epoch` picks the draw."""

    def __init__(self, draws: list[torch.Tensor], labels: torch.Tensor):
        self.draws, self.labels, self.epoch = draws, labels, 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.draws[self.epoch % len(self.draws)][index], self.labels[index]


def own_generator(seed: int) -> torch.Generator:
    """The generator to give every training and validation DataLoader.

    Each time a DataLoader makes an iterator it draws a base seed, from the global RNG unless
    it has a generator of its own. After a restore Lightning makes the first epoch's
    iterator before `on_train_epoch_start` reseeds the global RNG, in other epochs after it:
    that one extra draw shifted the dropout masks of the resumed run (measured: 0.2 points
    apart on Architectural Heritage). With its own generator a loader leaves the global
    stream alone. (Not under `processes > 1`: starting ddp_spawn's processes with a loader
    that holds a generator failed here with "ValueError: bad value(s) in fds_to_keep";
    there Lightning wraps the sampler in its own distributed one anyway, so exact resume
    is a single-process guarantee.)
    """
    return torch.Generator().manual_seed(seed)


def tensor_loader(tensors: torch.Tensor, labels: torch.Tensor, batch_size: int,
                  generator: torch.Generator | None = None) -> DataLoader:
    return DataLoader(TensorDataset(tensors, labels), batch_size=batch_size, shuffle=False, generator=generator)


def balanced_sample_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-sample weights that draw every class equally often (balance: sampler)."""
    counts = torch.bincount(labels).float().clamp(min=1)
    return (1.0 / counts)[labels]


def training_loader(dataset: Dataset, labels: torch.Tensor, batch_size: int, sampler_seed: int, balanced: bool,
                    generator: torch.Generator | None) -> DataLoader:
    """Batches in an order fixed by (sampler_seed, epoch), class-balanced draws if asked."""
    sampler = EpochSeededSampler(len(dataset), sampler_seed, balanced_sample_weights(labels) if balanced else None)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=len(dataset) > batch_size,
                      generator=generator)


class EpochSeededSampler(torch.utils.data.Sampler):
    """Shuffles (or draws by class weight) from a seed fixed per epoch.

    Lightning calls `set_epoch` before every epoch, so a run resumed at epoch k draws the
    same order as the uninterrupted run did: no RNG state has to survive a kill.
    """

    def __init__(self, n: int, seed: int, weights: torch.Tensor | None = None):
        self.n, self.seed, self.weights, self.epoch = n, seed, weights, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is None:
            return iter(torch.randperm(self.n, generator=generator).tolist())
        return iter(torch.multinomial(self.weights, self.n, replacement=True, generator=generator).tolist())
