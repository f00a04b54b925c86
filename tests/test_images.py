"""Tests for `transferlab.data.images`: every decode path on small images generated with PIL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.data import images as images_module
from transferlab.data.images import (
    ImageDecodeError,
    file_digest,
    image_size,
    is_image_path,
    load_rgb,
)


def _noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def _rgb_at(image: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    return tuple(int(v) for v in image.getpixel(xy))


# --- mode conversions ---------------------------------------------------------------------


def test_palette_without_transparency(tmp_path):
    image = Image.new("P", (4, 4), 0)
    palette = [0, 0, 0] * 256
    palette[3:6] = [200, 100, 50]
    image.putpalette(palette)
    image.putpixel((1, 1), 1)
    path = tmp_path / "palette.png"
    image.save(path)
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" not in check.info

    rgb = load_rgb(path)
    assert rgb.mode == "RGB"
    assert rgb.size == (4, 4)
    assert _rgb_at(rgb, (1, 1)) == (200, 100, 50)
    assert _rgb_at(rgb, (0, 0)) == (0, 0, 0)


def test_palette_with_transparency_composited_on_white(tmp_path):
    image = Image.new("P", (4, 4), 0)
    palette = [0, 0, 0] * 256
    palette[0:3] = [10, 20, 30]  # index 0: transparent
    palette[3:6] = [200, 100, 50]  # index 1: opaque
    image.putpalette(palette)
    image.putpixel((2, 2), 1)
    path = tmp_path / "palette_alpha.png"
    image.save(path, transparency=0)
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" in check.info

    rgb = load_rgb(path)
    assert rgb.mode == "RGB"
    assert _rgb_at(rgb, (0, 0)) == (255, 255, 255)
    assert _rgb_at(rgb, (2, 2)) == (200, 100, 50)


def test_palette_gif_with_transparency(tmp_path):
    image = Image.new("P", (4, 4), 0)
    palette = [0, 0, 0] * 256
    palette[3:6] = [0, 0, 255]
    image.putpalette(palette)
    image.putpixel((3, 3), 1)
    path = tmp_path / "anim.gif"
    image.save(path, transparency=0)
    rgb = load_rgb(path)
    assert rgb.mode == "RGB"
    assert _rgb_at(rgb, (0, 0)) == (255, 255, 255)
    assert _rgb_at(rgb, (3, 3)) == (0, 0, 255)


def test_rgba_transparent_pixel_becomes_white(tmp_path):
    image = Image.new("RGBA", (4, 4), (10, 20, 30, 0))  # fully transparent
    image.putpixel((1, 1), (200, 100, 50, 255))  # fully opaque
    image.putpixel((2, 2), (0, 0, 0, 128))  # half transparent black -> mid grey
    path = tmp_path / "rgba.png"
    image.save(path)

    rgb = load_rgb(path)
    assert rgb.mode == "RGB"
    assert _rgb_at(rgb, (0, 0)) == (255, 255, 255)
    assert _rgb_at(rgb, (1, 1)) == (200, 100, 50)
    grey = _rgb_at(rgb, (2, 2))
    assert all(120 <= v <= 135 for v in grey), grey


def test_la_transparent_pixel_becomes_white(tmp_path):
    image = Image.new("LA", (4, 4), (0, 0))
    image.putpixel((3, 0), (50, 255))
    path = tmp_path / "la.png"
    image.save(path)
    with Image.open(path) as check:
        assert check.mode == "LA"

    rgb = load_rgb(path)
    assert rgb.mode == "RGB"
    assert _rgb_at(rgb, (0, 0)) == (255, 255, 255)
    assert _rgb_at(rgb, (3, 0)) == (50, 50, 50)


def test_cmyk_to_rgb(tmp_path):
    image = Image.new("CMYK", (4, 4), (0, 0, 0, 0))  # no ink: white
    image.putpixel((1, 1), (255, 0, 0, 0))  # full cyan
    image.putpixel((2, 2), (0, 0, 0, 255))  # full black
    path = tmp_path / "cmyk.tif"
    image.save(path)
    with Image.open(path) as check:
        assert check.mode == "CMYK"

    rgb = load_rgb(path)
    assert rgb.mode == "RGB"
    assert _rgb_at(rgb, (0, 0)) == (255, 255, 255)
    assert _rgb_at(rgb, (1, 1)) == (0, 255, 255)
    assert _rgb_at(rgb, (2, 2)) == (0, 0, 0)


def test_cmyk_jpeg_to_rgb(tmp_path):
    image = Image.new("CMYK", (16, 16), (0, 0, 0, 0))
    path = tmp_path / "cmyk.jpg"
    image.save(path, quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    rgb = load_rgb(path)
    assert rgb.mode == "RGB"
    assert all(v >= 250 for v in _rgb_at(rgb, (8, 8)))


def test_16bit_grayscale_range_is_stretched(tmp_path):
    values = np.linspace(1000, 3000, 16 * 8).reshape(8, 16).astype(np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    path = tmp_path / "deep.png"
    image.save(path)
    with Image.open(path) as check:
        assert check.mode in ("I;16", "I")  # Pillow versions differ on 16-bit PNG

    rgb = load_rgb(path)
    assert rgb.mode == "RGB"
    array = np.asarray(rgb)
    # Stretched to the full 8-bit range, not clipped to 255 (what a naive convert does).
    assert array.min() == 0
    assert array.max() == 255
    assert np.all(array[..., 0] == array[..., 1]) and np.all(array[..., 1] == array[..., 2])
    # Monotonic: a brighter input stays brighter.
    flat = array[..., 0].ravel()
    assert np.all(np.diff(flat.astype(int)) >= 0)
    assert 100 <= int(flat[len(flat) // 2]) <= 155


def test_16bit_tiff_big_endian(tmp_path):
    values = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    path = tmp_path / "deep.tif"
    Image.fromarray(values).save(path)
    rgb = load_rgb(path)
    array = np.asarray(rgb)[..., 0]
    assert array[0, 0] == 0 and array[0, 1] == 255
    assert 120 <= array[1, 0] <= 135


def test_constant_16bit_image_does_not_divide_by_zero(tmp_path):
    path = tmp_path / "flat.png"
    Image.fromarray(np.full((4, 4), 4242, dtype=np.uint16)).save(path)
    array = np.asarray(load_rgb(path))
    assert array.shape == (4, 4, 3)
    assert np.all(array == 0)


def test_float_image_range_is_stretched(tmp_path):
    values = np.linspace(-1.0, 1.0, 32).reshape(4, 8).astype(np.float32)
    image = Image.fromarray(values)
    assert image.mode == "F"
    path = tmp_path / "float.tif"
    image.save(path)
    with Image.open(path) as check:
        assert check.mode == "F"

    rgb = load_rgb(path)
    assert rgb.mode == "RGB"
    array = np.asarray(rgb)[..., 0]
    assert array.min() == 0 and array.max() == 255
    assert array[0, 0] == 0 and array[-1, -1] == 255


def test_one_bit_image(tmp_path):
    image = Image.new("1", (8, 8), 0)
    image.putpixel((4, 4), 1)
    path = tmp_path / "bits.png"
    image.save(path)
    with Image.open(path) as check:
        assert check.mode == "1"

    rgb = load_rgb(path)
    assert rgb.mode == "RGB"
    assert _rgb_at(rgb, (0, 0)) == (0, 0, 0)
    assert _rgb_at(rgb, (4, 4)) == (255, 255, 255)


def test_grayscale_l_image(tmp_path):
    image = Image.new("L", (5, 3), 77)
    path = tmp_path / "grey.png"
    image.save(path)
    rgb = load_rgb(path)
    assert rgb.mode == "RGB"
    assert rgb.size == (5, 3)
    assert _rgb_at(rgb, (2, 1)) == (77, 77, 77)


def test_rgb_image_is_unchanged(tmp_path):
    image = _noise((6, 5))
    path = tmp_path / "rgb.png"
    image.save(path)
    rgb = load_rgb(path)
    assert rgb.mode == "RGB"
    assert np.array_equal(np.asarray(rgb), np.asarray(image))


# --- EXIF orientation ---------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    # A marker in the top-left corner of the stored pixels.
    for x in range(6):
        for y in range(6):
            image.putpixel((x, y), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    with Image.open(path) as check:
        assert check.size == (40, 20)
        assert check.getexif().get(0x0112) == 6

    rgb = load_rgb(path)
    assert rgb.size == (20, 40)  # width and height swapped
    # Orientation 6: the stored top-left corner is displayed at the top-right.
    assert min(_rgb_at(rgb, (17, 2))) > 200
    assert max(_rgb_at(rgb, (2, 2))) < 60


def test_exif_orientation_1_keeps_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 1
    path = tmp_path / "upright.jpg"
    Image.new("RGB", (40, 20)).save(path, exif=exif)
    assert load_rgb(path).size == (40, 20)


def test_draft_size_downscales_large_jpeg_but_not_below_request(tmp_path):
    path = tmp_path / "big.jpg"
    _noise((400, 400)).save(path)
    full = load_rgb(path)
    drafted = load_rgb(path, draft_size=100)
    assert full.size == (400, 400)
    assert 100 <= drafted.size[0] < 400 and 100 <= drafted.size[1] < 400
    assert drafted.mode == "RGB"


# --- failures -----------------------------------------------------------------------------


def test_truncated_jpeg_raises_with_reason(tmp_path):
    full = tmp_path / "full.jpg"
    _noise((128, 128)).save(full, quality=95)
    data = full.read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(ImageDecodeError) as info:
        load_rgb(path)
    message = str(info.value)
    assert message.strip()
    assert "cannot decode" in message or "truncated" in message


def test_zero_byte_file_raises_with_reason(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError) as info:
        load_rgb(path)
    assert "empty file (0 bytes)" in str(info.value)


def test_text_file_renamed_jpg_raises_with_reason(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n" * 20)
    with pytest.raises(ImageDecodeError) as info:
        load_rgb(path)
    assert "not an image" in str(info.value)


def test_missing_file_raises_with_reason(tmp_path):
    with pytest.raises(ImageDecodeError, match="not found"):
        load_rgb(tmp_path / "nope.png")


def test_decompression_bomb_error_above_twice_the_limit(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("RGB", (20, 20)).save(path)  # 400 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400 > 2 * 100: PIL raises
    with pytest.raises(ImageDecodeError) as info:
        load_rgb(path)
    assert "decompression bomb" in str(info.value)


def test_decompression_bomb_warning_is_an_error_too(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("RGB", (12, 12)).save(path)  # 144 pixels: above the limit, below twice it
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageDecodeError) as info:
        load_rgb(path)
    assert "decompression bomb" in str(info.value)


def test_module_sets_a_pixel_limit():
    assert Image.MAX_IMAGE_PIXELS is not None
    assert images_module.Image.MAX_IMAGE_PIXELS > 10_000_000


# --- helpers ------------------------------------------------------------------------------


def test_file_digest_equal_for_identical_bytes(tmp_path):
    a, b, c = tmp_path / "a.jpg", tmp_path / "sub dir (1)" / "b.png", tmp_path / "c.jpg"
    b.parent.mkdir()
    payload = bytes(range(256)) * 50
    a.write_bytes(payload)
    b.write_bytes(payload)
    c.write_bytes(payload[:-1] + b"\x00")

    digest = file_digest(a)
    assert digest == file_digest(b) == file_digest(str(b))
    assert digest != file_digest(c)
    assert len(digest) == 32 and all(ch in "0123456789abcdef" for ch in digest)


def test_file_digest_of_large_file_spans_chunks(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    payload = bytearray(3 * (1 << 20) + 7)
    a.write_bytes(bytes(payload))
    payload[-1] = 1  # differs only after the first chunks
    b.write_bytes(bytes(payload))
    assert file_digest(a) != file_digest(b)


def test_is_image_path_is_case_insensitive(tmp_path):
    assert is_image_path(tmp_path / "x.JPG")
    assert is_image_path(tmp_path / "x.tiff")
    assert is_image_path(tmp_path / "apse (1).jpeg")
    assert not is_image_path(tmp_path / "x.txt")
    assert not is_image_path(tmp_path / "jpg")


def test_image_size_reads_header(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (31, 17)).save(path)
    assert image_size(path) == (31, 17)


@pytest.mark.parametrize("mode", ["L", "1", "I;16"])
@pytest.mark.parametrize("size", [(300, 300), (97, 61), (40, 130)])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_a_grayscale_image_is_prepared_as_its_rgb_copy(tmp_path, mode, size, interpolation):
    # preprocess resizes a grayscale image as one channel and repeats it: the same pixels as
    # resizing its RGB copy, which is what every path did before (and does for colour images).
    from transferlab.data.transforms import fit_square, preprocess

    rng = np.random.default_rng(len(mode) + size[0])
    high = 65535 if mode == "I;16" else 255
    values = rng.integers(0, high + 1, size[::-1]).astype(np.uint16 if mode == "I;16" else np.uint8)
    image = Image.fromarray(values) if mode == "I;16" else Image.fromarray(values).convert(mode)
    path = tmp_path / "gray.png"
    image.save(path)
    assert load_rgb(path, keep_gray=True).mode == "L"  # the one-channel path is the one taken
    for resolution in (64, 224):
        gray = preprocess(path, resolution, interpolation)
        rgb = fit_square(load_rgb(path), resolution, interpolation)  # load_rgb alone converts to RGB
        assert gray.shape == rgb.shape == (3, resolution, resolution)
        assert gray.dtype == torch.uint8
        assert torch.equal(gray, rgb)
