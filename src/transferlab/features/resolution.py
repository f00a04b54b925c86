"""Pick the extraction resolution from the images themselves.

Upscaling a 64 px image to 224 px costs ~12x the compute of 64 px. Small images are
upscaled by a bounded factor (ImageNet features expect objects at roughly ImageNet scale),
large ones are capped at the backbone's native size.
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path

from transferlab.data.images import image_size

SMALL_IMAGE_UPSCALE = 2.0
MIN_RESOLUTION = 64


def round_to_multiple(value: float, multiple: int = 32) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def typical_short_side(paths: list[Path], sample: int = 200, seed: int = 0) -> int | None:
    """Median shorter side over a seeded sample of headers (pixels are not decoded)."""
    chosen = random.Random(seed).sample(paths, min(sample, len(paths)))
    sides = []
    for path in chosen:
        try:
            sides.append(min(image_size(path)))
        except Exception:  # unreadable files are reported by the extractor, not here
            continue
    return int(statistics.median(sides)) if sides else None


def resolve_resolution(requested: int | str | None, paths: list[Path], native_size: int) -> tuple[int, str]:
    """The one place a run's resolution is decided: (resolution, why).

    A number is the user's; "native" is the backbone's own size; None is chosen from the images.
    """
    if requested == "native":
        return native_size, f"native {native_size}px (asked for)"
    if requested is not None:
        return int(requested), "set by the user"
    return choose_resolution(paths, native_size)


def choose_resolution(paths: list[Path], native_size: int) -> tuple[int, str]:
    """Return (resolution, reason) for images at `paths` on a backbone of `native_size`."""
    return resolution_for(typical_short_side(paths), native_size)


def resolution_for(short: int | None, native_size: int) -> tuple[int, str]:
    """(resolution, reason) for images of median shorter side `short` (None: unknown)."""
    if short is None:
        return native_size, f"native {native_size}px (image sizes unknown)"
    if short >= native_size:
        return native_size, f"native {native_size}px (median shorter side {short}px)"
    resolution = min(native_size, max(MIN_RESOLUTION, round_to_multiple(short * SMALL_IMAGE_UPSCALE)))
    return resolution, (
        f"{resolution}px: median shorter side {short}px x{SMALL_IMAGE_UPSCALE:g}, "
        f"capped at native {native_size}px"
    )
