"""Image transforms shared by every path: decode + resize + centre-crop to uint8, and normalise.

Extraction, fine-tuning, prediction, serving, CAM and export all go through these two
functions, so an image is prepared the same way everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transferlab.data.images import MAX_ASPECT_RATIO, ImageDecodeError, check_aspect, load_rgb

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def preprocess(path: Path, resolution: int, interpolation: str = "bicubic") -> torch.Tensor:
    """Decode, resize the shorter side to `resolution`, centre-crop: uint8 (3, R, R).

    Images more elongated than MAX_ASPECT_RATIO are refused (ImageDecodeError) before decoding,
    and the resized size is checked again, so no upload can make this allocate more than
    MAX_ASPECT_RATIO * R * R pixels.
    """
    image = load_rgb(path, draft_size=resolution, max_aspect=MAX_ASPECT_RATIO, keep_gray=True)
    return fit_square(image, resolution, interpolation)


def fit_square(image: Image.Image, resolution: int, interpolation: str = "bicubic") -> torch.Tensor:
    """An RGB (or L) PIL image -> uint8 (3, R, R): shorter side to R, centre crop (what `preprocess` does after decoding).

    A grayscale image is resized as one channel, then repeated: PIL resamples each channel
    alike, so the pixels are those of its RGB copy resized (tests/test_images.py).
    """
    width, height = image.size
    check_aspect(width, height)  # again after EXIF rotation and JPEG draft scaling
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    if size[0] * size[1] > MAX_ASPECT_RATIO * (resolution + 1) ** 2:
        raise ImageDecodeError(f"{width}x{height} px would resize to {size[0]}x{size[1]}: too large")
    image = image.resize(size, _RESAMPLE.get(interpolation, Image.Resampling.BILINEAR))
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = np.asarray(image, dtype=np.uint8)
    # A grayscale image's one channel, repeated (a new array); an RGB one copied (PIL's is read-only).
    pixels = np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels.copy()
    return torch.from_numpy(pixels).permute(2, 0, 1)


def normalise(images_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 (x - 255*mean) / (255*std): the one place this arithmetic lives."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    std_t = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return (images_uint8.float() - mean_t) / std_t
