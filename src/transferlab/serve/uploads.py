"""Uploads: a bounded streaming multipart reader, and image bytes -> the model's uint8 input.

The body is read chunk by chunk and refused (413) as soon as one file or the whole body
passes its limit, so an oversized upload is never buffered in full. Every refusal is an
`UploadError` carrying the HTTP status and a one-line reason for the JSON error body.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from transferlab.data.images import ImageDecodeError
from transferlab.features.extract import preprocess

# Multipart framing per part (boundary, Content-Disposition, Content-Type): generous, so a
# file of exactly the limit still fits in the body limit.
PART_OVERHEAD = 16 * 1024
# Text fields are not used by any endpoint; they are skipped, but bounded all the same.
MAX_TEXT_FIELD = 16 * 1024
MAX_EXTRA_PARTS = 8


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
    keep: bool = False


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB"


class _Collector:
    """python-multipart callbacks that keep the parts named `field`, each within `max_file_bytes`."""

    def __init__(self, field_name: str, max_file_bytes: int, max_files: int):
        self.field_name, self.max_file_bytes, self.max_files = field_name, max_file_bytes, max_files
        self.files: list[Upload] = []
        self.parts_seen = 0
        self.open_part = False
        self.ended = False
        self._part = _Part()
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
        self.parts_seen += 1
        if self.parts_seen > self.max_files + MAX_EXTRA_PARTS:
            raise UploadError(400, f"too many form parts (at most {self.max_files} files)")
        self._part = _Part()
        self.open_part = True

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._part.headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._part.headers.get(b"content-disposition", b""))
        self._part.name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._part.filename = None if filename is None else filename.decode("utf-8", "replace")
        self._part.keep = self._part.name == self.field_name
        if self._part.keep and len(self.files) >= self.max_files:
            raise UploadError(413, f"too many files: at most {self.max_files} per request")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        limit = self.max_file_bytes if part.keep else MAX_TEXT_FIELD
        if len(part.data) + (end - start) > limit:
            if part.keep:
                raise UploadError(413, f"file '{part.filename or part.name}' is larger than the limit "
                                       f"of {_mib(self.max_file_bytes)}")
            raise UploadError(400, f"form field '{part.name}' is too large")
        if part.keep:
            part.data += data[start:end]

    def on_part_end(self) -> None:
        self.open_part = False
        if self._part.keep:
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
    body_limit = max_files * (max_file_bytes + PART_OVERHEAD) + MAX_EXTRA_PARTS * (MAX_TEXT_FIELD + PART_OVERHEAD)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        # Refuse before reading a byte: the client said how much it would send.
        raise UploadError(413, f"request body of {_mib(int(declared))} is larger than the limit of {_mib(body_limit)}")

    collector = _Collector(field_name, max_file_bytes, max_files)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:
                raise UploadError(413, f"request body is larger than the limit of {_mib(body_limit)}")
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise UploadError(400, f"malformed multipart body: {exc}") from None
    if collector.open_part or not collector.ended:
        raise UploadError(400, "incomplete multipart body")
    if not collector.files:
        raise UploadError(422, f"no file in form field '{field_name}'")
    return collector.files


def _check_pixels(data: bytes) -> None:
    """Refuse decompression bombs from the header alone, before any pixel is decoded.

    `load_rgb` guards too, but with a process-wide warnings filter that is not thread-safe;
    uploads are decoded in a thread pool, so the size check is repeated here without it.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(413, "image has too many pixels (decompression bomb guard)") from None
    except Exception:  # noqa: BLE001
        return  # not identifiable: preprocess() says why, with the usual wording
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise UploadError(413, f"image of {width}x{height} pixels is larger than the limit of {limit} pixels "
                               "(decompression bomb guard)")


def decode_image(data: bytes, resolution: int, interpolation: str) -> np.ndarray:
    """Upload bytes -> uint8 (3, R, R), exactly as `transferlab predict` prepares a file."""
    if not data:
        raise UploadError(400, "empty file")
    _check_pixels(data)
    try:
        # PIL opens file objects as well as paths; the bytes never touch the disk.
        return preprocess(io.BytesIO(data), resolution, interpolation).numpy()  # type: ignore[arg-type]
    except ImageDecodeError as exc:
        reason = str(exc)
        if reason.startswith("not an image"):
            raise UploadError(415, f"unsupported file: {reason}") from None
        if "decompression bomb" in reason:
            raise UploadError(413, f"image refused: {reason}") from None
        raise UploadError(422, reason) from None  # "cannot decode: <why>"
