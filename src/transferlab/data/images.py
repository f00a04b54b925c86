"""Robust image decoding: any file PIL can read becomes an 8-bit RGB image.

Handles EXIF orientation, palette and alpha (composited on white), CMYK, 16-bit and
float grayscale. Failures raise `ImageDecodeError` with a short reason, so callers can
skip the file and list it instead of crashing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Suffixes we treat as images when scanning folders (lower case).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)

# The formats PIL may decode (Image.open(formats=...)): those of IMAGE_SUFFIXES (PPM also
# reads .pgm and .pbm). PIL would otherwise try each of its ~40 readers on hostile bytes,
# including rarely used ones (EPS hands the file to Ghostscript, when it is installed).
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")

# Refuse decompression bombs: PIL warns above MAX_IMAGE_PIXELS and raises above twice that;
# we turn the warning into an error too.
Image.MAX_IMAGE_PIXELS = 89_478_485
ImageFile.LOAD_TRUNCATED_IMAGES = False


# The widest shape we accept. preprocess() scales the *shorter* side to the model resolution,
# so a 1x20000 strip (121 bytes as PNG) would become 224x4,480,000 pixels: beyond this ratio
# an image is refused before its pixels are decoded. 16:1 still admits real panoramas.
MAX_ASPECT_RATIO = 16.0


class ImageDecodeError(Exception):
    """The file could not be decoded as an image; the message says why."""


def check_aspect(width: int, height: int, limit: float = MAX_ASPECT_RATIO) -> None:
    """Refuse degenerate shapes (0 px, or beyond `limit`:1) with a reason that names the size."""
    if width < 1 or height < 1:
        raise ImageDecodeError(f"empty image ({width}x{height} px)")
    if max(width, height) / min(width, height) > limit:
        raise ImageDecodeError(
            f"{width}x{height} px: aspect ratio beyond {limit:g}:1 (refused: resizing it would need "
            f"{max(width, height) / min(width, height):.0f}x the pixels of a square image)"
        )


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


class NotRegularFileError(OSError):
    """A path (links followed) that is a FIFO, a device, a socket or a folder: never read as data."""


_SPECIAL_KINDS = {stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFCHR: "a character device",
                  stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def special_file_reason(mode: int) -> str:
    """What a file of this st_mode that is not a regular file is, as a skip reason."""
    return f"not a regular file: {_SPECIAL_KINDS.get(stat.S_IFMT(mode), 'a special file')}"


def _check_regular(mode: int, path: str | Path) -> None:
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(errno.EINVAL, special_file_reason(mode), str(path))


def open_regular(path: str | Path) -> BinaryIO:
    """`path` opened for reading if it is a regular file once links are followed; else NotRegularFileError.

    A data folder entry `x.jpg -> /dev/zero` never ends and a FIFO named `x.png` blocks its
    reader forever. Checked before opening (opening a device can act on it), and again on
    the open file, non-blocking (a FIFO does not wait for a writer), so a swap in between
    is caught too.
    """
    _check_regular(os.stat(path).st_mode, path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        _check_regular(os.fstat(fd).st_mode, path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_digest(path: str | Path) -> str:
    """Content hash of a file (blake2b, 32 hex chars): keys the feature cache and finds duplicates.

    Raises OSError (NotRegularFileError for a FIFO, a device... its strerror says which).
    """
    digest = hashlib.blake2b(digest_size=16)
    with open_regular(path) as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _to_rgb(image: Image.Image, keep_gray: bool = False) -> Image.Image:
    mode = image.mode
    if mode == "RGB" or (keep_gray and mode == "L"):
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit or float data: stretch its own range into 8 bits rather than clipping.
        array = np.asarray(image, dtype=np.float32)
        low, high = float(array.min()), float(array.max())
        scaled = np.zeros_like(array) if high <= low else (array - low) / (high - low) * 255.0
        gray = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
        return gray if keep_gray else gray.convert("RGB")
    if keep_gray and mode == "1":
        return image.convert("L")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_rgb(path: str | Path | BinaryIO, draft_size: int | None = None, max_aspect: float | None = None,
             keep_gray: bool = False) -> Image.Image:
    """Decode `path` (or an open binary file) to an RGB PIL image with EXIF orientation applied.

    `draft_size` lets the JPEG decoder downscale by 2/4/8 while decoding (much faster for
    large photos) as long as the result stays at least that many pixels on each side.
    `max_aspect` refuses, from the header alone, images more elongated than that ratio.
    `keep_gray` leaves a grayscale image one channel (mode L) for a caller that resizes it
    first (`fit_square`): the same pixels as resizing its RGB copy, for a third of the work.
    Only ACCEPTED_FORMATS are decoded; a path that is not a regular file is refused unread.
    """
    try:
        with _open_source(path) as source:
            return _decode(source, draft_size, max_aspect, keep_gray)
    except ImageDecodeError:
        raise
    except MemoryError:
        raise ImageDecodeError("out of memory while decoding") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"too many pixels (decompression bomb guard): {exc}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not an image PIL can identify (accepted: {', '.join(ACCEPTED_FORMATS)})") from None
    except NotRegularFileError as exc:
        raise ImageDecodeError(exc.strerror) from None
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except PermissionError:
        raise ImageDecodeError("permission denied") from None
    except Exception as exc:  # noqa: BLE001 - PIL's format readers raise many types on corrupt data
        reason = str(exc) or type(exc).__name__
        raise ImageDecodeError(f"cannot decode: {reason}") from None


def _open_source(path: str | Path | BinaryIO) -> contextlib.AbstractContextManager:
    """A path opened by open_regular (refused if empty); a file object (an upload's bytes) as given."""
    if not isinstance(path, (str, Path)):
        return contextlib.nullcontext(path)
    handle = open_regular(path)
    if os.fstat(handle.fileno()).st_size == 0:
        handle.close()
        raise ImageDecodeError("empty file (0 bytes)")
    return handle


def _decode(source: BinaryIO, draft_size: int | None, max_aspect: float | None, keep_gray: bool) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source, formats=ACCEPTED_FORMATS) as image:
            if max_aspect is not None:
                check_aspect(*image.size, limit=max_aspect)
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image, keep_gray)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header only, without decoding pixels."""
    with open_regular(path) as handle, Image.open(handle, formats=ACCEPTED_FORMATS) as image:
        return image.size
