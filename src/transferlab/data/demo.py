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
    with open(labels, encoding="utf-8") as handle:
        rows = [line.split() for line in handle if line.strip()]
    for relative, probability, *_ in rows:
        image = source / relative
        link = root / _class_for(float(probability)) / image.name
        if link.is_symlink() and link.resolve() == image.resolve():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(image)
    return root
