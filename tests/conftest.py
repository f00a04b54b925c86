"""Shared fixtures: generated image folders and an isolated, offline environment."""

from __future__ import annotations

import os
import random
import struct
import zlib
from pathlib import Path

# Before anything imports huggingface_hub (it reads these once, at import): no test may
# reach a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFERLAB_OFFLINE"] = "1"
# Existing tests patch or expect the torch extractor (module-scoped fixtures run before the
# autouse one below, so this is set for the whole session too); the OpenVINO tests set theirs.
os.environ["TRANSFERLAB_ENGINE"] = "torch"

import pytest
from PIL import Image, ImageDraw

# Colours and shapes that a random-weight network still separates: the tests check the
# pipeline, not ImageNet features.
CLASS_STYLES = {
    "circle": ((220, 40, 40), "ellipse"),
    "square": ((40, 200, 60), "rectangle"),
    "dome(inner)": ((40, 60, 220), "polygon"),
}


@pytest.fixture(autouse=True)
def _offline_and_isolated(monkeypatch, tmp_path_factory):
    """No test may reach a hub, or share a feature cache with the user or another test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFERLAB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
    # Existing tests patch or expect the torch extractor; the OpenVINO tests set their engine.
    monkeypatch.setenv("TRANSFERLAB_ENGINE", "torch")


def draw_image(path: Path, colour: tuple[int, int, int], shape: str, size: int = 48, seed: int = 0) -> Path:
    rng = random.Random(seed)
    background = tuple(rng.randint(0, 60) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    jitter = rng.randint(-4, 4)
    box = (8 + jitter, 8 + jitter, size - 8 + jitter, size - 8 + jitter)
    if shape == "ellipse":
        draw.ellipse(box, fill=colour)
    elif shape == "rectangle":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(size // 2, 4 + jitter), (4, size - 4), (size - 4, size - 4)], fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def make_image_folder(root: Path, per_class: int = 8, classes: dict | None = None, size: int = 48) -> Path:
    """root/<class>/<name>.jpg|png, with a space and parentheses in some names, like real folders."""
    for c_index, (name, (colour, shape)) in enumerate((classes or CLASS_STYLES).items()):
        for i in range(per_class):
            suffix = ".png" if i % 2 else ".jpg"
            draw_image(root / name / f"img ({i}){suffix}", colour, shape, size=size, seed=c_index * 1000 + i)
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "data")


def bomb_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of any size, deflated row by row: a 30000x30000 one is ~110 KB
    and building it never holds more than one row of pixels."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
