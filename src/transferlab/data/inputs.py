"""Paths a user names on the command line: files as given, folders expanded to their images."""

from __future__ import annotations

from pathlib import Path

from transferlab.data.folder import is_hidden_name
from transferlab.data.images import is_image_path
from transferlab.errors import TransferlabError


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files as given, folders as every image below them (recursively, hidden ones left out).

    A missing path is an error before the model loads: one line naming it.
    """
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(
                # A dangling link stays in the list: predict then names it as not found.
                p for p in item.rglob("*")
                if (p.is_file() or (p.is_symlink() and not p.exists())) and is_image_path(p) and not any(is_hidden_name(part) for part in p.relative_to(item).parts)
            )
            if not found:
                raise TransferlabError(f"{item}: folder holds no image files")
            paths.extend(found)
        elif item.exists():
            paths.append(item)
        else:
            raise TransferlabError(f"{item}: file not found")
    return paths
