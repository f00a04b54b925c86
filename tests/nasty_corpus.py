"""A nasty image corpus: a learnable class-per-folder tree salted with every kind of bad file.

`build_corpus(root)` lays out the 3 generated classes of tests/conftest.py (8 images each)
plus one file or folder per kind in `KINDS`, and returns what it made and what each command
should make of it. Used by tests/test_nasty_corpus.py.

Roles (what `doctor` and `probe` must do with an entry):
  good   - a decodable image in a class folder: classified, never skipped;
  odd    - decodable but degenerate (1x20000): classified, or skipped with a reason;
  bad    - listed in skipped.csv / the doctor's report with a reason, never classified;
  hidden - tool litter (.DS_Store, __MACOSX): never a sample, and not reported as an error.
`decodes` says what `predict` and `serve` must do with the file's bytes on their own
(True: top classes; False: an error; None: either), independent of where it lies.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import CLASS_STYLES, bomb_png, draw_image, make_image_folder

CIRCLE, SQUARE, DOME = list(CLASS_STYLES)
EMPTY_CLASS = "zz empty class"
ONLY_BAD_CLASS = "zz only bad files"
# Declared pixels of the two bombs: above PIL's error threshold, and between warning and error.
BOMB_SIDE = 30_000
SMALL_BOMB_SIDE = 10_000


@dataclass(frozen=True)
class Entry:
    kind: str
    path: Path
    role: str  # good | odd | bad | hidden
    decodes: bool | None
    reason: str = ""  # regex the skip reason must match (case-insensitive); "" = any non-empty reason


@dataclass
class Corpus:
    root: Path
    classes: list[str]
    entries: list[Entry] = field(default_factory=list)
    base_images: list[Path] = field(default_factory=list)  # the plain generated images, all good
    empty_classes: list[str] = field(default_factory=list)  # class folders with no decodable image
    loop: Path | None = None  # a directory symlink to its own parent folder

    def role(self, role: str) -> list[Entry]:
        return [e for e in self.entries if e.role == role]

    def kinds(self) -> list[str]:
        return sorted({e.kind for e in self.entries} | {"empty-class-folder", "symlink-loop"})


@dataclass
class _Context:
    root: Path
    scratch: Path
    seed: int = 5000

    def picture(self, cls: str, size: int = 48) -> Image.Image:
        """A fresh drawing of class `cls` (same style as conftest's images), as an RGB image."""
        self.seed += 1
        colour, shape = CLASS_STYLES[cls]
        path = draw_image(self.scratch / f"{self.seed}.png", colour, shape, size=size, seed=self.seed)
        with Image.open(path) as image:
            return image.convert("RGB")

    def jpeg_bytes(self, cls: str, size: int = 96) -> bytes:
        path = self.scratch / f"{self.seed}.jpg"
        self.picture(cls, size).save(path, quality=90)
        return path.read_bytes()


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- builders: each writes one kind under ctx.root and returns its path -----------------------

def _cmyk_jpeg(ctx: _Context) -> Path:
    return _save(ctx.picture(CIRCLE).convert("CMYK"), ctx.root / CIRCLE / "cmyk.jpg")


def _gray16_png(ctx: _Context) -> Path:
    levels = np.asarray(ctx.picture(SQUARE).convert("L"), dtype=np.uint16) * 257
    image = Image.fromarray(levels)
    assert image.mode.startswith("I;16"), image.mode
    return _save(image, ctx.root / SQUARE / "gray16.png")


def _float_tiff(ctx: _Context) -> Path:
    values = np.asarray(ctx.picture(DOME).convert("L"), dtype=np.float32) / 255.0
    return _save(Image.fromarray(values, mode="F"), ctx.root / DOME / "float32.tif")


def _palette_transparent_png(ctx: _Context) -> Path:
    image = ctx.picture(CIRCLE).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _save(image, ctx.root / CIRCLE / "palette alpha.png", transparency=0)


def _la_png(ctx: _Context) -> Path:
    return _save(ctx.picture(SQUARE).convert("LA"), ctx.root / SQUARE / "gray alpha.png")


def _exif_rotated_jpeg(ctx: _Context) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    image = ctx.picture(DOME, size=64).crop((0, 8, 64, 56))  # 64x48: rotation changes the shape
    return _save(image, ctx.root / DOME / "rotated.jpg", exif=exif)


def _one_pixel(ctx: _Context) -> Path:
    return _save(Image.new("RGB", (1, 1), CLASS_STYLES[CIRCLE][0]), ctx.root / CIRCLE / "one pixel.png")


def _line(size: tuple[int, int], cls: str) -> Image.Image:
    return Image.new("RGB", size, CLASS_STYLES[cls][0])


def _tall(ctx: _Context) -> Path:
    return _save(_line((1, 20_000), DOME), ctx.root / DOME / "tall 1x20000.png")


def _wide(ctx: _Context) -> Path:
    return _save(_line((20_000, 1), CIRCLE), ctx.root / CIRCLE / "wide 20000x1.png")


def _animated_gif(ctx: _Context) -> Path:
    frames = [ctx.picture(SQUARE), ctx.picture(SQUARE)]
    return _save(frames[0], ctx.root / SQUARE / "animated.gif", save_all=True, append_images=frames[1:],
                 duration=100, loop=0)


def _multipage_tiff(ctx: _Context) -> Path:
    pages = [ctx.picture(DOME), ctx.picture(DOME)]
    return _save(pages[0], ctx.root / DOME / "pages.tiff", save_all=True, append_images=pages[1:])


def _webp(ctx: _Context) -> Path:
    return _save(ctx.picture(CIRCLE), ctx.root / CIRCLE / "picture.webp")


def _gray_jpeg(ctx: _Context) -> Path:
    return _save(ctx.picture(SQUARE).convert("L"), ctx.root / SQUARE / "grayscale.jpg")


def _large_solid_jpeg(ctx: _Context) -> Path:
    return _save(_line((4000, 3000), DOME), ctx.root / DOME / "large 4000x3000.jpg", quality=80)


def _duplicate(ctx: _Context) -> Path:
    source = ctx.root / CIRCLE / "img (0).jpg"
    return _write(ctx.root / CIRCLE / "img (0) copy.jpg", source.read_bytes())


def _non_utf8_name(ctx: _Context) -> Path:
    folder = os.fsencode(ctx.root / SQUARE)
    raw = os.path.join(folder, b"caf\xe9.jpg")  # Latin-1 e-acute: not valid UTF-8
    with open(raw, "wb") as handle:
        ctx.picture(SQUARE).save(handle, format="JPEG")
    return Path(os.fsdecode(raw))


def _non_utf8_broken(ctx: _Context) -> Path:
    raw = os.path.join(os.fsencode(ctx.root / DOME), b"r\xe9sum\xe9.png")  # Latin-1, and not a PNG either
    with open(raw, "wb") as handle:
        handle.write(b"%PDF-1.4 a CV saved under the wrong suffix")
    return Path(os.fsdecode(raw))


def _named(cls: str, name: str) -> Callable[[_Context], Path]:
    def build(ctx: _Context) -> Path:
        return _save(ctx.picture(cls), ctx.root / cls / name)
    return build


def _png_named_jpg(ctx: _Context) -> Path:
    return _save(ctx.picture(CIRCLE), ctx.root / CIRCLE / "really a png.jpg", format="PNG")


def _truncated_jpeg(ctx: _Context) -> Path:
    data = ctx.jpeg_bytes(CIRCLE)
    return _write(ctx.root / CIRCLE / "truncated.jpg", data[: len(data) // 2])


def _truncated_png(ctx: _Context) -> Path:
    path = _save(ctx.picture(SQUARE, size=96), ctx.root / SQUARE / "truncated.png")
    data = path.read_bytes()
    return _write(path, data[: len(data) // 2])


def _zero_byte(ctx: _Context) -> Path:
    return _write(ctx.root / DOME / "zero bytes.jpg", b"")


def _text_as_jpg(ctx: _Context) -> Path:
    return _write(ctx.root / CIRCLE / "actually text.jpg", b"Dear diary, this is not a JPEG.\n" * 20)


def _html_as_png(ctx: _Context) -> Path:
    page = b"<!DOCTYPE html><html><head><title>404</title></head><body>Not Found</body></html>\n"
    return _write(ctx.root / SQUARE / "download.png", page)


def _bomb(ctx: _Context) -> Path:
    return _write(ctx.root / DOME / "bomb 30000x30000.png", bomb_png(BOMB_SIDE, BOMB_SIDE))


def _small_bomb(ctx: _Context) -> Path:
    return _write(ctx.root / CIRCLE / "bomb 10000x10000.png", bomb_png(SMALL_BOMB_SIDE, SMALL_BOMB_SIDE))


def _dangling_symlink(ctx: _Context) -> Path:
    link = ctx.root / SQUARE / "moved away.jpg"
    link.symlink_to(ctx.root / "no such dir" / "gone.jpg")
    return link


def _text_file(ctx: _Context) -> Path:
    return _write(ctx.root / CIRCLE / "notes.txt", b"photographer: me\n")


def _csv_file(ctx: _Context) -> Path:
    return _write(ctx.root / SQUARE / "labels.csv", b"file,label\nimg (0).jpg,square\n")


def _top_level_image(ctx: _Context) -> Path:
    return _save(ctx.picture(DOME), ctx.root / "stray at top.jpg")


def _only_bad_text(ctx: _Context) -> Path:
    return _write(ctx.root / ONLY_BAD_CLASS / "broken.jpg", b"not an image")


def _only_bad_empty(ctx: _Context) -> Path:
    return _write(ctx.root / ONLY_BAD_CLASS / "empty.png", b"")


def _no_read_permission(ctx: _Context) -> Path:
    path = _save(ctx.picture(DOME), ctx.root / DOME / "locked.jpg")
    path.chmod(0)
    return path


def _ds_store(ctx: _Context) -> Path:
    _write(ctx.root / ".DS_Store", b"\x00\x00\x00\x01Bud1" + b"\x00" * 64)
    return _write(ctx.root / CIRCLE / ".DS_Store", b"\x00\x00\x00\x01Bud1" + b"\x00" * 64)


def _apple_double(ctx: _Context) -> Path:
    # AppleDouble header (magic 0x00051607): metadata macOS writes next to each copied file.
    return _write(ctx.root / SQUARE / "._img (0).jpg", b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"\x00" * 74)


def _macosx_folder(ctx: _Context) -> Path:
    return _write(ctx.root / "__MACOSX" / CIRCLE / "._img (1).png", b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"\0" * 74)


def _ipynb_checkpoints(ctx: _Context) -> Path:
    return _save(ctx.picture(DOME), ctx.root / DOME / ".ipynb_checkpoints" / "img (0)-checkpoint.png")


# kind -> (role, decodes, skip-reason pattern, builder); the order is the build order.
KINDS: dict[str, tuple[str, bool | None, str, Callable[[_Context], Path]]] = {
    "cmyk-jpeg": ("good", True, "", _cmyk_jpeg),
    "gray16-png": ("good", True, "", _gray16_png),
    "float-tiff": ("good", True, "", _float_tiff),
    "palette-transparent-png": ("good", True, "", _palette_transparent_png),
    "la-png": ("good", True, "", _la_png),
    "exif-rotated-jpeg": ("good", True, "", _exif_rotated_jpeg),
    "one-pixel": ("good", True, "", _one_pixel),
    "animated-gif": ("good", True, "", _animated_gif),
    "multipage-tiff": ("good", True, "", _multipage_tiff),
    "webp": ("good", True, "", _webp),
    "grayscale-jpeg": ("good", True, "", _gray_jpeg),
    "large-4000x3000-jpeg": ("good", True, "", _large_solid_jpeg),
    "byte-identical-duplicate": ("good", True, "", _duplicate),
    "non-utf8-name": ("good", True, "", _non_utf8_name),
    "emoji-name": ("good", True, "", _named(CIRCLE, "\U0001f600 smile.png")),
    "cjk-name": ("good", True, "", _named(SQUARE, "\u732b\u306e\u5199\u771f.jpg")),
    "combining-accent-name": ("good", True, "", _named(DOME, "cafe\u0301 cre\u0300me.png")),
    "spaces-and-quotes-name": ("good", True, "", _named(CIRCLE, "it's a \"quoted\",  name .jpg")),
    "newline-in-name": ("good", True, "", _named(SQUARE, "line\nbreak.png")),
    "uppercase-suffix": ("good", True, "", _named(DOME, "UPPER CASE.JPG")),
    "nested-subfolder": ("good", True, "", _named(SQUARE, "sub/deeper/nested.png")),
    "png-named-jpg": ("good", True, "", _png_named_jpg),
    "1x20000-png": ("odd", None, "", _tall),
    "20000x1-png": ("odd", None, "", _wide),
    "non-utf8-name-broken": ("bad", False, "", _non_utf8_broken),
    "truncated-jpeg": ("bad", False, "truncat|cannot decode|broken", _truncated_jpeg),
    "truncated-png": ("bad", False, "truncat|cannot decode|broken", _truncated_png),
    "zero-byte-file": ("bad", False, "empty|0 bytes", _zero_byte),
    "text-saved-as-jpg": ("bad", False, "", _text_as_jpg),
    "html-saved-as-png": ("bad", False, "", _html_as_png),
    "decompression-bomb-30000px": ("bad", False, "bomb|too many pixels", _bomb),
    "decompression-bomb-10000px": ("bad", False, "bomb|too many pixels", _small_bomb),
    "dangling-symlink": ("bad", None, "not found|no such file|dangling|broken link", _dangling_symlink),
    "txt-file": ("bad", False, "not an image", _text_file),
    "csv-file": ("bad", False, "not an image", _csv_file),
    "top-level-file": ("bad", True, "top level", _top_level_image),
    "only-bad-class-text": ("bad", False, "", _only_bad_text),
    "only-bad-class-empty": ("bad", False, "empty|0 bytes", _only_bad_empty),
    "no-read-permission": ("bad", None, "permission", _no_read_permission),
    "ds-store": ("hidden", False, "", _ds_store),
    "apple-double": ("hidden", False, "", _apple_double),
    "macosx-folder": ("hidden", False, "", _macosx_folder),
    "ipynb-checkpoints": ("hidden", True, "", _ipynb_checkpoints),
}


def can_deny_reading() -> bool:
    """chmod 0 stops nobody running as root, so that kind is only built for other users."""
    return os.geteuid() != 0


def build_corpus(root: Path, per_class: int = 8) -> Corpus:
    """Lay the corpus out under `root` (created) and describe it; scratch files go beside it."""
    make_image_folder(root, per_class=per_class)
    base = sorted(p for cls in CLASS_STYLES for p in (root / cls).iterdir())
    ctx = _Context(root, root.parent / f"{root.name}-scratch")
    ctx.scratch.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(root=root, classes=sorted([*CLASS_STYLES, EMPTY_CLASS, ONLY_BAD_CLASS]), base_images=base)
    for kind, (role, decodes, reason, build) in KINDS.items():
        if kind == "no-read-permission" and not can_deny_reading():
            continue
        corpus.entries.append(Entry(kind, build(ctx), role, decodes, reason))
    (root / EMPTY_CLASS).mkdir()
    corpus.empty_classes = [EMPTY_CLASS, ONLY_BAD_CLASS]
    corpus.loop = root / DOME / "loop to parent"
    corpus.loop.symlink_to(".", target_is_directory=True)  # resolves to DOME itself
    return corpus
