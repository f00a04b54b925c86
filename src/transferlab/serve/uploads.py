"""Uploads: a bounded streaming multipart reader, and image bytes -> the model's uint8 input.

The body is read chunk by chunk and refused (413) as soon as one file or the whole body
passes its limit, so an oversized upload is never buffered in full; a part that is not a
file of the expected field is refused (422) from its headers. Every refusal is an
`UploadError` carrying the HTTP status and a one-line reason for the JSON error body.
Decoding never fails any other way: whatever PIL (or memory) does, it is an UploadError.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from transferlab.data.images import ACCEPTED_FORMATS, ImageDecodeError, check_aspect
from transferlab.data.transforms import preprocess
from transferlab.errors import one_line

# Multipart framing per part (boundary, Content-Disposition, Content-Type): generous, so a
# file of exactly the limit still fits in the body limit.
PART_OVERHEAD = 16 * 1024
# A part's own headers (Content-Disposition, Content-Type...) are small; more is not an upload.
MAX_PART_HEADERS = 8 * 1024
# Peak bytes per decoded pixel, by the mode PIL decodes to: the decoded image plus what
# load_rgb's conversion to RGB makes of it (PIL stores RGB as RGBX, 4 bytes). Peak RSS of
# decode_image with Pillow 13, images of 1000-3000 px a side: RGB 8, L and 1 6, P 10,
# CMYK 12, 16-bit 17, 32-bit and float 21-24 (numpy rescales them in float32), alpha 24
# (composited on white through RGBA copies); rounded up. tests/test_hostile_inputs.py
# checks the estimate against the measured peak.
_MODE_BYTES = {
    "1": 8, "L": 8, "RGB": 8, "YCbCr": 8, "LAB": 8, "HSV": 8, "P": 12, "CMYK": 12,
    "I;16": 18, "I;16L": 18, "I;16B": 18, "I;16N": 18, "I": 24, "F": 24,
    "RGBA": 24, "RGBa": 24, "LA": 24, "La": 24, "PA": 24,
}
_UNKNOWN_MODE_BYTES = max(_MODE_BYTES.values())
_FORMAT_EXTRA_BYTES = {"WEBP": 12}  # libwebp decodes into buffers of its own first: RGB peaks at 16-20
_RESIZED_BYTES = 8  # the resized image is RGB, about two copies of it

log = logging.getLogger("transferlab.serve")


class UploadError(Exception):
    """A request the server refuses: `status` is the HTTP code, the message says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upload:
    filename: str
    data: bytes


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


def mib(n: int) -> str:
    """A byte count for a message: KiB, MiB or GiB."""
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB"


class _Collector:
    """python-multipart callbacks that keep the file parts named `field`, each within `max_file_bytes`.

    The body may hold nothing else: any other field, or a text value in the file field, is
    refused (422) as soon as its headers are read, before its content is, so the OpenAPI
    schema (`additionalProperties: false`) says exactly what is accepted.
    """

    def __init__(self, field_name: str, max_file_bytes: int, max_files: int):
        self.field_name, self.max_file_bytes, self.max_files = field_name, max_file_bytes, max_files
        self.files: list[Upload] = []
        self.open_part = False
        self.ended = False
        self._part = _Part()
        self._header_bytes = 0
        self._header_name = bytearray()
        self._header_value = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end, "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._part = _Part()
        self._header_bytes = 0
        self.open_part = True

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_PART_HEADERS:
            raise UploadError(400, f"multipart part headers larger than {mib(MAX_PART_HEADERS)}")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._part.headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._part.headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if name != self.field_name:
            raise UploadError(422, f"unexpected form field '{name[:64]}': send the image(s) as file field "
                                   f"'{self.field_name}' and nothing else")
        if filename is None:
            raise UploadError(422, f"form field '{name}' is not a file (a multipart part with a filename)")
        if len(self.files) >= self.max_files:
            raise UploadError(422, f"too many files: at most {self.max_files} per request")
        self._part.name, self._part.filename = name, filename.decode("utf-8", "replace")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if len(part.data) + (end - start) > self.max_file_bytes:
            raise UploadError(413, f"file '{part.filename or part.name}' is larger than the limit "
                                   f"of {mib(self.max_file_bytes)}")
        part.data += data[start:end]

    def on_part_end(self) -> None:
        self.open_part = False
        self.files.append(Upload(self._part.filename or self._part.name, bytes(self._part.data)))

    def on_end(self) -> None:
        self.ended = True


async def read_uploads(request: Request, field_name: str, max_file_bytes: int, max_files: int) -> list[Upload]:
    """The files in form field `field_name`, read with every limit enforced while streaming."""
    content_type = request.headers.get("content-type", "")
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise UploadError(415, f"send the image as multipart/form-data with a file field '{field_name}' "
                               f"(got Content-Type '{content_type or 'none'}')")
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadError(400, "multipart body without a boundary")
    body_limit = max_files * (max_file_bytes + PART_OVERHEAD)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        # Refuse before reading a byte: the client said how much it would send.
        raise UploadError(413, f"request body of {mib(int(declared))} is larger than the limit of {mib(body_limit)}")

    collector = _Collector(field_name, max_file_bytes, max_files)
    received = 0
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:
                raise UploadError(413, f"request body is larger than the limit of {mib(body_limit)}")
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise UploadError(400, f"malformed multipart body: {exc}") from None
    except ClientDisconnect:
        # Routine on the internet (a closed tab, a dropped link): one line, no traceback.
        client = request.client.host if request.client else "unknown client"
        log.warning("%s disconnected during an upload to %s after %d bytes", client, request.url.path, received)
        raise UploadError(400, "client disconnected during the upload") from None
    if collector.open_part or not collector.ended:
        raise UploadError(400, "incomplete multipart body")
    if not collector.files:
        raise UploadError(422, f"no file in form field '{field_name}'")
    return collector.files


def decode_cost(data: bytes, resolution: int) -> int:
    """Estimated peak bytes to decode and resize `data`, from its header alone (no pixel decoded).

    Refuses decompression bombs here too: `load_rgb` guards as well, but with a process-wide
    warnings filter that is not thread-safe, and uploads are decoded in a thread pool.
    An unidentifiable file costs nothing here: `decode_image` says why it is refused.
    """
    if not data:
        raise UploadError(400, "empty file")
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
            width, height = image.size
            if image.format == "JPEG":
                # As load_rgb does: the JPEG decoder downscales by up to 8 while decoding; this
                # only sets the size to be decoded, nothing is decoded yet.
                image.draft("RGB", (resolution, resolution))
            decoded_pixels = image.size[0] * image.size[1]
            per_pixel = _bytes_per_pixel(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(413, "image has too many pixels (decompression bomb guard)") from None
    except Exception:  # noqa: BLE001 - PIL raises many types on hostile headers
        return 0
    try:
        # The same shape rule as preprocess(), applied before any memory is reserved for it.
        check_aspect(width, height)
    except ImageDecodeError as exc:
        raise UploadError(422, str(exc)) from None
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise UploadError(413, f"image of {width}x{height} pixels is larger than the limit of {limit} pixels "
                               "(decompression bomb guard)")
    # The shorter side is resized to `resolution` before the centre crop, so the longer
    # side grows (or shrinks) with it.
    scale = resolution / min(width, height)
    resized = max(resolution, round(width * scale)) * max(resolution, round(height * scale))
    return per_pixel * decoded_pixels + _RESIZED_BYTES * resized


def _bytes_per_pixel(image: Image.Image) -> int:
    """Peak bytes per decoded pixel of this image (header only): its mode's, plus its format's extra."""
    mode = "RGBA" if image.mode == "P" and "transparency" in image.info else image.mode  # decoded as RGBA
    return _MODE_BYTES.get(mode, _UNKNOWN_MODE_BYTES) + _FORMAT_EXTRA_BYTES.get(image.format or "", 0)


# How a decoding failure is answered: the first reason prefix that matches wins.
_DECODE_REFUSALS = (("not an image", 415, "unsupported file: "), ("decompression bomb", 413, "image refused: "),
                    ("out of memory", 413, "image refused: "))


def decode_image(data: bytes, resolution: int, interpolation: str) -> np.ndarray:
    """Upload bytes -> uint8 (3, R, R), exactly as `transferlab predict` prepares a file.

    Every failure is an UploadError (4xx) about this one upload: a hostile file must not
    fail the request around it, let alone the server.
    """
    if not data:
        raise UploadError(400, "empty file")
    try:
        # PIL opens file objects as well as paths; the bytes never touch the disk.
        return preprocess(io.BytesIO(data), resolution, interpolation).numpy()  # type: ignore[arg-type]
    except ImageDecodeError as exc:
        reason = str(exc)
        for marker, status, prefix in _DECODE_REFUSALS:
            if marker in reason:
                raise UploadError(status, f"{prefix}{reason}") from None
        raise UploadError(422, reason) from None  # "cannot decode: <why>", "aspect ratio ... too extreme"
    except MemoryError:
        raise UploadError(413, "image too large to decode in this server's memory") from None
    except Exception as exc:  # noqa: BLE001 - PIL, numpy and torch raise many types on hostile data
        raise UploadError(422, f"cannot decode: {one_line(exc, limit=200, with_type=False)}") from None
