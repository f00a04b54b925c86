"""The embedded demo data: solar-cell electroluminescence images from the `elpv-dataset` package.

The package ships 2,624 real 300x300 images and a labels file with a defect probability
(0, 1/3, 2/3, 1) per image. `prepare_elpv_folder` lays them out as a class-per-subfolder
tree of symbolic links, so the demo runs the same path as any user folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from transferlab.errors import TransferlabError

ELPV_CLASSES = {0.0: "functional", 0.3333: "possibly_defective", 0.6667: "likely_defective", 1.0: "defective"}


def _elpv_data_dir() -> Path:
    try:
        import elpv_dataset
    except ImportError:
        raise TransferlabError("the demo needs the 'elpv-dataset' package: pip install elpv-dataset") from None
    return Path(elpv_dataset.__file__).parent / "data"


def _class_for(probability: float) -> str:
    nearest = min(ELPV_CLASSES, key=lambda p: abs(p - probability))
    return ELPV_CLASSES[nearest]


def prepare_elpv_folder(dest: str | os.PathLike) -> Path:
    """Create (or refresh) `dest/<class>/<image>.png` links to the packaged images."""
    source = _elpv_data_dir()
    labels = source / "labels.csv"
    if not labels.is_file():
        raise TransferlabError(f"{labels}: elpv-dataset labels file not found; reinstall elpv-dataset")
    root = Path(dest)
    check_demo_folder(root)
    with open(labels, encoding="utf-8") as handle:
        rows = [line.split() for line in handle if line.strip()]
    for relative, probability, *_ in rows:
        image = source / relative
        link = root / _class_for(float(probability)) / image.name
        if link.is_symlink() and link.resolve() == image.resolve():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():  # an earlier demo's link (check_demo_folder let nothing else through)
            link.unlink()
        link.symlink_to(image)
    return root


def check_demo_folder(root: Path) -> None:
    """The demo lays out links in a new or empty folder, or refreshes its own earlier layout: class
    folders of links. Anything else there is a user's (real images, other classes) and is left
    alone: laying links over it would replace their files and add classes to their data."""
    if root.is_symlink():
        raise TransferlabError(f"{root}: is a link; give the real folder as --data-dir")
    if not root.exists():
        return
    if not root.is_dir():
        raise TransferlabError(f"{root}: exists and is not a folder; choose another --data-dir")
    for entry in root.iterdir():
        ours = entry.name in ELPV_CLASSES.values() and entry.is_dir() and not entry.is_symlink()
        foreign = entry if not ours else next((f for f in entry.iterdir() if not f.is_symlink()), None)
        if foreign is not None:
            raise TransferlabError(f"{root}: holds {foreign.name if foreign is entry else foreign}, which the demo "
                                   "did not lay out; choose a new or empty --data-dir")
