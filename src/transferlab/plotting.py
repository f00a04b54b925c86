"""Matplotlib set up once for files (no display), and the one way a figure is saved.

Shared by every layer that draws (training curves, the LR range test, report plots, feature
maps): a low-level module, so drawing a training curve does not import the report stack.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

# Agg before pyplot: plots are drawn on servers and in CI, where no display exists.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from transferlab.atomic import atomic_path  # noqa: E402

DPI = 110
# Long class names would squeeze a plot to nothing; the full name is in the HTML tables.
LABEL_MAX_CHARS = 28


def literal(text: str) -> str:
    """Text that matplotlib draws as written (a pair of '$' would otherwise start mathtext)."""
    return str(text).replace("$", r"\$")


def label(name: str) -> str:
    text = str(name)
    if len(text) > LABEL_MAX_CHARS:
        text = text[: LABEL_MAX_CHARS - 1] + "…"
    return literal(text)


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write `fig` as a PNG, atomically (never a half-written plot under the final name)."""
    target = Path(path)
    with atomic_path(target) as tmp:
        # The temp name ends in .tmp, so the format must be given explicitly.
        fig.savefig(tmp, format="png", dpi=DPI)
    return target


__all__ = ["DPI", "label", "literal", "plt", "save_figure"]
