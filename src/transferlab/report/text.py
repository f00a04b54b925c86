"""Plain-text tables for terminals and logs, drawn by rich."""

from __future__ import annotations

import io
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Wide enough that rich never wraps or truncates a cell: a table is read (and parsed) whole.
_UNLIMITED_WIDTH = 100_000


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1) -> str:
    """Columns two spaces apart, the first `left` aligned left and the rest (numbers) right.

    Cells are plain text: '[b]' or ':smile:' in a class name is printed as written, not as
    rich markup or an emoji. No colour codes and no trailing spaces, so the text can be
    piped, diffed and split on whitespace.
    """
    table = Table(box=None, pad_edge=False, padding=(0, 1), header_style="", show_edge=False)
    for i, name in enumerate(header):
        table.add_column(Text(name), justify="left" if i < left else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(Text(str(cell)) for cell in row))
    console = Console(file=io.StringIO(), width=_UNLIMITED_WIDTH, color_system=None, force_terminal=False,
                      legacy_windows=False, emoji=False, markup=False, highlight=False)
    with console.capture() as capture:
        console.print(table)
    return "\n".join(line.rstrip() for line in capture.get().splitlines())
